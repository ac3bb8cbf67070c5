"""LIDC-IDRI (DICOM CT series + reader XML) -> nnU-Net dataset of CTs in HU with consensus nodule masks.

Every CT series under ``--input`` (TCIA layout ``LIDC-IDRI-XXXX/<study>/<series>/*.dcm`` with the
series' ``NNN.xml`` next to the slices, or XMLs in ``--xml-dir``, matched by SeriesInstanceUid)
becomes one case named after its patient id (``LIDC-IDRI-0001``; ``LIDC-IDRI-0001_2`` for a
patient's second CT series). The label is the union of the nodules' consensus masks (see
:mod:`dataset_conversion.lidc_xml`): label 1 = nodule. ``nodules.csv`` lists every kept nodule
(case, nodule, readers, annotations, volume in mm^3, median malignancy). Patient folders and files
may be symbolic links (followed). A series folder whose headers cannot be read fails as its own case.
"""
from __future__ import annotations

import argparse
import csv
import io
from pathlib import Path

from nnunet_covid.core.atomic_io import atomic_write_text
from dataset_conversion.common import CaseData, CaseJob, crop_settings, finish_dataset, open_dataset, run_cases
from dataset_conversion.input_files import walk_files
from nnunet_covid.core.errors import ConversionError

CLI_NAME = "lidc-idri"
CLI_HELP = "LIDC-IDRI DICOM series + reader XML -> CT (HU) with consensus nodule masks"
DEFAULT_NAME = "LIDCIDRI"
LABELS = {"background": 0, "nodule": 1}
NODULE_CSV = "nodules.csv"
CSV_COLUMNS = ("case", "nodule", "readers", "annotations", "volume_mm3", "median_malignancy")
SETTINGS = ("consensus_level", "min_readers", "keep_small_nodules")  # recorded; xml_dir only says where files are
LOCATIONS = ("xml_dir",)


def _xml_series_uid(path: Path) -> str | None:
    from dataset_conversion.lidc_xml import parse_lidc_xml

    try:
        return parse_lidc_xml(path).series_uid
    except ConversionError:
        return None  # not an LIDC read message (or broken): reported when a series needs it


def _patient_of(folder: Path) -> str:
    return next((p for p in folder.parts if p.upper().startswith("LIDC-IDRI-")), folder.name)


def lidc_jobs(input_dir: str | Path, xml_dir: str | Path | None, options: dict) -> list[CaseJob]:
    """One job per CT series below ``input_dir``: the series folder, its XML file(s) and the consensus ``options``.

    A folder whose DICOM headers cannot be read becomes a failing job named after its patient folder,
    so that it fails alone.
    """
    from dataset_conversion.dicom_series import DicomSeriesError, series_info

    input_dir = Path(input_dir)
    series, broken = [], []
    for folder in sorted({p.parent for p in walk_files(input_dir, (".dcm",))}):
        try:
            info = series_info(folder)
        except DicomSeriesError as e:
            broken.append((folder, str(e)))
            continue
        if info is not None and info.modality in ("CT", ""):
            series.append(info)
    if not series and not broken:
        raise ConversionError(f"{input_dir}: no CT DICOM series found (expected LIDC-IDRI-XXXX/<study>/<series>/*.dcm)")
    xml_candidates = [p for s in series for p in sorted(s.folder.glob("*.xml"))]
    if xml_dir is not None:
        xml_candidates += list(walk_files(xml_dir, (".xml",)))
    xml_by_series: dict[str, list[Path]] = {}
    for path in xml_candidates:
        uid = _xml_series_uid(path)
        if uid is not None and path not in xml_by_series.get(uid, []):
            xml_by_series.setdefault(uid, []).append(path)
    by_patient: dict[str, list] = {}
    for info in series:
        by_patient.setdefault(info.patient_id or _patient_of(info.folder), []).append(info)
    jobs = []
    for patient, infos in sorted(by_patient.items()):
        for k, info in enumerate(sorted(infos, key=lambda i: i.series_uid)):
            case_id = patient if k == 0 else f"{patient}_{k + 1}"
            # an unparseable XML in the series folder is handed on so that the case fails with its parse error
            xmls = xml_by_series.get(info.series_uid) or [p for p in info.folder.glob("*.xml")
                                                          if _xml_series_uid(p) is None]
            jobs.append(CaseJob(case_id, load_lidc_case, (str(info.folder), [str(x) for x in xmls], case_id), options))
    taken = {job.case_id for job in jobs}
    for folder, message in broken:
        patient = _patient_of(folder)
        case_id = patient if patient not in taken else f"{patient}_{folder.name}"
        taken.add(case_id)
        jobs.append(CaseJob.failing(case_id, f"case {case_id}: {message}"))
    return jobs


def load_lidc_case(series_folder: str, xml_paths: list[str], case_id: str, consensus_level: float = 0.5,
                   min_readers: int = 1, keep_small_nodules: bool = False) -> CaseData:
    """Read one series and its XML(s); build the consensus label and the per-nodule rows."""
    import numpy as np
    import SimpleITK as sitk

    from dataset_conversion.dicom_series import read_dicom_series
    from dataset_conversion.lidc_xml import SliceLocator, annotation_mask, consensus, group_annotations, parse_lidc_xml

    if not xml_paths:
        raise ConversionError(f"case {case_id}: no reader XML for the series in {series_folder}")
    try:
        image, sop_uids = read_dicom_series(series_folder)
    except ConversionError as e:
        raise ConversionError(f"case {case_id}: {e}") from None
    readings = [parse_lidc_xml(p) for p in xml_paths]
    annotations = [a for r in readings for a in r.annotations if keep_small_nodules or not a.is_small]
    spacing_zyx = np.asarray(image.GetSpacing()[::-1], dtype=float)
    shape = image.GetSize()[::-1]
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    z_positions = image.GetOrigin()[2] + np.arange(shape[0]) * spacing_zyx[0] * direction[2, 2]
    locate = SliceLocator(sop_uids, z_positions, case_id)
    label = np.zeros(shape, dtype=np.uint8)
    rows, warnings = [], []
    for group in group_annotations(annotations, locate, spacing_zyx):
        members = [annotations[i] for i in group]
        readers = len({a.reader for a in members})
        if readers < min_readers:
            continue
        nodule = consensus([annotation_mask(a, locate, shape) for a in members], consensus_level)
        region = tuple(slice(a, b) for a, b in zip(nodule.start, nodule.stop))
        label[region] |= nodule.mask.astype(np.uint8)
        malignancy = [a.malignancy for a in members if a.malignancy is not None]
        rows.append({"case": case_id, "nodule": len(rows) + 1, "readers": readers, "annotations": len(members),
                     "volume_mm3": round(float(nodule.mask.sum() * np.prod(spacing_zyx)), 2),
                     "median_malignancy": float(np.median(malignancy)) if malignancy else None})
    if not rows:
        warnings.append(f"case {case_id}: no nodule annotation kept (readers: {sum(r.num_readers for r in readings)}, "
                        f"XML: {', '.join(Path(p).name for p in xml_paths)}); writing an empty mask")
    label_image = sitk.GetImageFromArray(label)
    label_image.CopyInformation(image)
    return CaseData(images=[image], label=label_image, info={"nodules": rows, "warnings": warnings})


def nodule_table(results: dict[str, dict]) -> str:
    """CSV text of the per-nodule rows of all converted cases."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for case_id in sorted(results):
        for row in results[case_id].get("nodules", []):
            writer.writerow({k: ("" if row[k] is None else row[k]) for k in CSV_COLUMNS})
    return out.getvalue()


def convert_lidc_idri(input_dir: str | Path, dataset_id: int, name: str = DEFAULT_NAME,
                      output_root: str | Path | None = None, num_processes: int = 1, crop_lung: bool = False,
                      crop_margin_mm: float | None = None, consensus_level: float = 0.5, min_readers: int = 1,
                      keep_small_nodules: bool = False, xml_dir: str | Path | None = None,
                      progress: bool = True, overwrite: bool = False) -> Path:
    """Convert every LIDC CT series below ``input_dir`` and return the dataset folder."""
    if not (isinstance(consensus_level, (int, float)) and 0.0 < consensus_level <= 1.0):
        raise ConversionError(f"consensus level must be in (0, 1], got {consensus_level}")
    if not (isinstance(min_readers, int) and 1 <= min_readers <= 4):
        raise ConversionError(f"min readers must be 1..4 (LIDC has four readers), got {min_readers}")
    if xml_dir is not None and not Path(xml_dir).is_dir():
        raise ConversionError(f"--xml-dir {xml_dir} is not a folder" if Path(xml_dir).exists()
                              else f"--xml-dir {xml_dir} does not exist")
    crop = crop_settings(crop_lung, crop_margin_mm)
    options = dict(consensus_level=float(consensus_level), min_readers=min_readers,
                   keep_small_nodules=bool(keep_small_nodules))
    jobs = lidc_jobs(input_dir, xml_dir, options)
    folder = open_dataset(dataset_id, name, output_root, CLI_NAME, {**crop, **options}, overwrite)
    summary = run_cases(folder, jobs, num_processes, desc=f"{CLI_NAME} -> {folder.name}", progress=progress, **crop)
    for case_id in summary.converted:
        for warning in summary.results[case_id].get("warnings", []):
            print(f"warning: {warning}")
    atomic_write_text(folder / NODULE_CSV, nodule_table(summary.results))
    return finish_dataset(folder, {0: "CT"}, LABELS, summary, reference="Armato et al., Med Phys 2011; TCIA LIDC-IDRI",
                          license="CC BY 3.0 (TCIA LIDC-IDRI)",
                          description=f"LIDC-IDRI nodules, {consensus_level:g} consensus, >= {min_readers} reader(s)")


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a fraction in (0, 1], got {text}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--consensus-level", type=_fraction, default=0.5,
                        help="keep a voxel when at least this fraction of a nodule's annotations include it (0.5)")
    parser.add_argument("--min-readers", type=int, choices=range(1, 5), default=1,
                        help="drop nodules marked by fewer readers (default 1)")
    parser.add_argument("--keep-small-nodules", action="store_true",
                        help="also mark nodules < 3 mm (single points; skipped by default)")
    parser.add_argument("--xml-dir", type=Path, default=None,
                        help="folder with the LIDC XML files when they are not next to the DICOM slices")


CONVERT = convert_lidc_idri
