"""Raw layouts only the tests need (LIDC-IDRI DICOM + reader XML, MosMedData), beside the demo's own in
:mod:`nnunet_covid.pipeline.demo_data`, filled with the same synthetic cases."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from nnunet_covid.pipeline.demo_data import SMALL_SHAPE, lesion_case, write_dicom_series, write_nifti
from nnunet_covid.pipeline.synthetic_ct import SyntheticCase, make_case


def write_mosmed_layout(root: str | Path, n_cases: int = 5, seed: int = 0,
                        shape: Sequence[int] = SMALL_SHAPE) -> Path:
    """MosMedData ``COVID19_1110``: ``studies/CT-{0,1}/study_XXXX.nii.gz`` and ``masks/study_XXXX_mask.nii.gz``.

    ``n_cases`` masked CT-1 studies from study_0255 on (as in the real data), plus one CT-0 study and
    one CT-1 study without a mask, which converters must leave out. Slices are 8 mm thick.
    """
    top = Path(root) / "COVID19_1110"
    spacing = (8.0, 340.0 / shape[1], 340.0 / shape[2])
    for i in range(n_cases + 1):
        number = 255 + i
        case = lesion_case("covid", seed + 300 + i, shape=shape, spacing=spacing)
        write_nifti(case.image, top / "studies" / "CT-1" / f"study_{number:04d}.nii.gz", case.spacing)
        if i < n_cases:
            write_nifti(case.label, top / "masks" / f"study_{number:04d}_mask.nii.gz", case.spacing)
    healthy = make_case("covid", seed + 299, shape=shape, spacing=spacing)
    write_nifti(healthy.image, top / "studies" / "CT-0" / "study_0001.nii.gz", healthy.spacing)
    return top


def lidc_outline(component: np.ndarray) -> np.ndarray:
    """Ordered (row, column) outline of one 2D component, drawn just outside it as LIDC readers do.

    The outline runs through the pixels 4-adjacent to the component, so that the pixels strictly
    inside the closed polygon, minus the outline itself, are exactly the component.
    """
    from scipy import ndimage
    from skimage import measure

    ring = ndimage.binary_dilation(component, structure=ndimage.generate_binary_structure(2, 1))
    contour = max(measure.find_contours(np.pad(ring, 1).astype(float), 0.999), key=len)
    points = np.round(contour).astype(int) - 1
    points = points[np.r_[True, (np.diff(points, axis=0) != 0).any(axis=1)]]
    return points[:-1] if len(points) > 1 and (points[0] == points[-1]).all() else points


def _lidc_rois(parent, mask3d: np.ndarray, sop_uids, z_positions, inclusion: bool) -> None:
    from xml.etree import ElementTree as ET

    from scipy import ndimage

    for k in np.nonzero(mask3d.any(axis=(1, 2)))[0]:
        components, n = ndimage.label(mask3d[k])
        for c in range(1, n + 1):
            roi = ET.SubElement(parent, "roi")
            ET.SubElement(roi, "imageZposition").text = f"{z_positions[k]:.6f} "
            ET.SubElement(roi, "imageSOP_UID").text = sop_uids[k]
            ET.SubElement(roi, "inclusion").text = "TRUE" if inclusion else "FALSE"
            for row, col in lidc_outline(components == c):
                edge = ET.SubElement(roi, "edgeMap")
                ET.SubElement(edge, "xCoord").text = str(col)
                ET.SubElement(edge, "yCoord").text = str(row)


def write_lidc_xml(path: str | Path, series_uid: str, sop_uids: Sequence[str], z_positions: Sequence[float],
                   readers: Sequence[Sequence[dict]], non_nodules: Sequence[tuple[int, int, int]] = ()) -> Path:
    """An LIDC ``LidcReadMessage`` XML (namespace http://www.nih.gov) with one readingSession per reader.

    Each reader's annotation is a dict with ``id`` and either ``mask`` (a (z, y, x) boolean volume:
    one inclusion ROI per slice component, outline just outside it) plus optional ``malignancy`` and
    ``exclusions`` (a volume written as inclusion=FALSE ROIs), or ``point`` (k, row, col) for a
    nodule < 3 mm (no characteristics). ``non_nodules`` (k, row, col) go to the first session.
    """
    from xml.etree import ElementTree as ET

    root = ET.Element("LidcReadMessage", {"uid": f"{series_uid}.0", "xmlns": "http://www.nih.gov"})
    header = ET.SubElement(root, "ResponseHeader")
    ET.SubElement(header, "Version").text = "1.8.1"
    ET.SubElement(header, "SeriesInstanceUid").text = series_uid
    for reader, reader_annotations in enumerate(readers):
        session = ET.SubElement(root, "readingSession")
        ET.SubElement(session, "annotationVersion").text = "3.12"
        ET.SubElement(session, "servicingRadiologistID").text = f"reader{reader + 1}"
        for ann in reader_annotations:
            nodule = ET.SubElement(session, "unblindedReadNodule")
            ET.SubElement(nodule, "noduleID").text = ann["id"]
            if "point" in ann:
                k, row, col = ann["point"]
                roi = ET.SubElement(nodule, "roi")
                ET.SubElement(roi, "imageZposition").text = f"{z_positions[k]:.6f}"
                ET.SubElement(roi, "imageSOP_UID").text = sop_uids[k]
                ET.SubElement(roi, "inclusion").text = "TRUE"
                edge = ET.SubElement(roi, "edgeMap")
                ET.SubElement(edge, "xCoord").text = str(col)
                ET.SubElement(edge, "yCoord").text = str(row)
                continue
            chars = ET.SubElement(nodule, "characteristics")
            for name, value in (("subtlety", 4), ("internalStructure", 1), ("calcification", 6), ("sphericity", 4),
                                ("margin", 4), ("lobulation", 2), ("spiculation", 1), ("texture", 5),
                                ("malignancy", ann.get("malignancy", 3))):
                ET.SubElement(chars, name).text = str(value)
            _lidc_rois(nodule, ann["mask"], sop_uids, z_positions, inclusion=True)
            if ann.get("exclusions") is not None:
                _lidc_rois(nodule, ann["exclusions"], sop_uids, z_positions, inclusion=False)
        if reader == 0:
            for j, (k, row, col) in enumerate(non_nodules):
                non = ET.SubElement(session, "nonNodule")
                ET.SubElement(non, "nonNoduleID").text = f"Non-nodule {j + 1}"
                ET.SubElement(non, "imageZposition").text = f"{z_positions[k]:.6f}"
                ET.SubElement(non, "imageSOP_UID").text = sop_uids[k]
                locus = ET.SubElement(non, "locus")
                ET.SubElement(locus, "xCoord").text = str(col)
                ET.SubElement(locus, "yCoord").text = str(row)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ET.ElementTree(root).write(path, encoding="UTF-8", xml_declaration=True)
    return path


LIDC_SHAPE = (24, 96, 96)
LIDC_SPACING = (2.5, 0.9, 0.9)


def write_lidc_case(root: str | Path, case_number: int, seed: int = 0, shape: Sequence[int] = LIDC_SHAPE,
                    spacing: Sequence[float] = LIDC_SPACING) -> tuple[Path, SyntheticCase]:
    """One LIDC-IDRI patient as TCIA ships it: ``LIDC-IDRI-NNNN/<study UID>/<series UID>/*.dcm + NNN.xml``.

    The CT is ``make_case("nodule", seed + case_number, ...)``. Four readers: readers 1 and 2 outline
    every nodule exactly, reader 3 one pixel wider in-plane, reader 4 marks only a < 3 mm nodule
    (a single point) and reader 1 also a non-nodule; malignancy 3, 4, 5 (median 4). So the 50 %
    consensus of each nodule's three annotations is exactly ``case.label``. Returns (series folder, case).
    """
    import pydicom
    from scipy import ndimage

    patient = f"LIDC-IDRI-{case_number:04d}"
    case = make_case("nodule", seed + case_number, shape=shape, spacing=spacing)
    origin = (-0.5 * shape[2] * spacing[2], -0.5 * shape[1] * spacing[1], -300.0)
    staging = Path(root) / patient / "staging"
    files = write_dicom_series(staging, case.image, case.spacing, origin, patient_id=patient,
                               uid_seed=f"lidc-{seed}-{case_number}")
    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    series = Path(root) / patient / headers[0].StudyInstanceUID / headers[0].SeriesInstanceUID
    series.parent.mkdir(parents=True, exist_ok=True)
    staging.rename(series)
    sop_uids = [str(h.SOPInstanceUID) for h in headers]
    z_positions = [float(h.ImagePositionPatient[2]) for h in headers]
    nodules, n = ndimage.label(case.label > 0)
    wider = ndimage.binary_dilation(case.label > 0, structure=np.array([[[0, 0, 0], [0, 0, 0], [0, 0, 0]],
                                                                        [[0, 1, 0], [1, 1, 1], [0, 1, 0]],
                                                                        [[0, 0, 0], [0, 0, 0], [0, 0, 0]]], bool))
    readers = [[{"id": f"Nodule {i:03d}", "mask": (nodules == i) if r < 2 else wider & ndimage.binary_dilation(
                 nodules == i, structure=np.ones((1, 3, 3), bool), iterations=2), "malignancy": 3 + r}
                for i in range(1, n + 1)] for r in range(3)]
    free = np.argwhere(ndimage.binary_erosion(case.lungs > 0, iterations=3) & ~ndimage.binary_dilation(
        case.label > 0, iterations=3))
    rng = np.random.default_rng(seed + case_number)
    small, non_nodule = (tuple(int(v) for v in free[rng.integers(len(free))]) for _ in range(2))
    readers.append([{"id": "IL057_127364", "point": small}])
    write_lidc_xml(series / f"{case_number:03d}.xml", str(headers[0].SeriesInstanceUID), sop_uids, z_positions,
                   readers, non_nodules=[non_nodule])
    return series, case


def write_lidc_layout(root: str | Path, n_cases: int = 2, seed: int = 0, shape: Sequence[int] = LIDC_SHAPE,
                      spacing: Sequence[float] = LIDC_SPACING) -> Path:
    """LIDC-IDRI patients 1..``n_cases`` (see :func:`write_lidc_case`) under ``root/LIDC-IDRI``."""
    top = Path(root) / "LIDC-IDRI"
    for number in range(1, n_cases + 1):
        write_lidc_case(top, number, seed, shape, spacing)
    return top
