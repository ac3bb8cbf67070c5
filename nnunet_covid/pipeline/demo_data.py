"""The demo's raw downloads: miniature replicas of five public datasets' layouts, filled with synthetic cases.

Each ``write_<dataset>_layout(root, ...)`` writes the folder structure, file names, file formats and
label conventions of one public download (MSD Task06 Lung, StructSeg lung GTV, NSCLC-Radiomics DICOM
with PleThora masks, COVID-19-CT-Seg, the COVID-SemiSeg 2D slices) under ``root`` and returns the
folder that is passed to ``nnunet-covid convert <dataset> --input``. The demo and the tests convert
these layouts with the real converters, so the converters never see a hand-made nnU-Net folder.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from nnunet_covid.pipeline.synthetic_ct import SyntheticCase, make_case, make_covid_slice, window_to_uint8

SMALL_SHAPE = (24, 48, 48)

# COVID-19-CT-Seg (Ma et al. 2021): the 10 Coronacases and the 10 Radiopaedia cases as (k, id, s)
CORONACASES = tuple(f"coronacases_{i:03d}" for i in range(1, 11))
RADIOPAEDIA = ((4, 85506, 1), (7, 85703, 0), (10, 85902, 1), (10, 85902, 3), (14, 85914, 0),
               (27, 86410, 0), (29, 86490, 1), (29, 86491, 1), (36, 86526, 0), (40, 86625, 0))


def lesion_case(lesion: str, seed: int, shape: Sequence[int], **kwargs) -> SyntheticCase:
    """``make_case`` with a non-empty label: at small shapes a lesion can vanish (e.g. a tumour removed
    by the lobulation); then the next derived seed (``seed + 1000``, ...) is used, deterministically."""
    for attempt in range(20):
        case = make_case(lesion, seed + 1000 * attempt, shape=shape, **kwargs)
        if case.label.any():
            return case
    raise ValueError(f"no {lesion} lesion fits in shape {tuple(shape)}; use a larger shape")


def write_nifti(array: np.ndarray, path: Path, spacing_zyx: Sequence[float], origin_xyz=(0.0, 0.0, 0.0),
                 direction=None) -> None:
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(array)
    image.SetSpacing(tuple(float(s) for s in spacing_zyx[::-1]))
    image.SetOrigin(tuple(float(o) for o in origin_xyz))
    if direction is not None:
        image.SetDirection(tuple(float(d) for d in direction))
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path), useCompression=True)


def write_dicom_series(folder: str | Path, image_hu: np.ndarray, spacing_zyx: Sequence[float],
                       origin_xyz: Sequence[float] = (0.0, 0.0, 0.0), patient_id: str = "SYNTHETIC",
                       uid_seed: str = "0") -> list[Path]:
    """Write a (z, y, x) HU volume as an axial CT DICOM series (one file per slice) and return the files.

    Geometry: identity ImageOrientationPatient, slice ``k`` at ``origin_z + k * spacing_z``, pixels
    stored unsigned with RescaleIntercept -1024 as scanners do. InstanceNumber 1 is the top
    (highest z) slice and the file names follow InstanceNumber, so a reader must sort slices by
    ImagePositionPatient, not by file name. UIDs are derived from ``uid_seed`` (deterministic).
    """
    from pydicom.uid import CTImageStorage, generate_uid

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    nz, ny, nx = image_hu.shape
    study_uid = generate_uid(entropy_srcs=[uid_seed, "study"])
    series_uid = generate_uid(entropy_srcs=[uid_seed, "series"])
    frame_uid = generate_uid(entropy_srcs=[uid_seed, "frame"])
    stored = (np.asarray(image_hu, dtype=np.int32) + 1024).clip(0, 65535).astype(np.uint16)
    files = []
    for k in range(nz):
        instance = nz - k
        ds = dicom_dataset(CTImageStorage, generate_uid(entropy_srcs=[uid_seed, "slice", str(k)]), series_uid,
                            "CT", patient_id)
        ds.StudyInstanceUID = study_uid
        ds.FrameOfReferenceUID = frame_uid
        ds.PatientName = patient_id
        ds.SeriesNumber = 1
        ds.InstanceNumber = instance
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        z = float(origin_xyz[2]) + k * float(spacing_zyx[0])
        ds.ImagePositionPatient = [float(origin_xyz[0]), float(origin_xyz[1]), z]
        ds.SliceLocation = z
        ds.SliceThickness = float(spacing_zyx[0])
        ds.PixelSpacing = [float(spacing_zyx[1]), float(spacing_zyx[2])]
        ds.Rows, ds.Columns = ny, nx
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
        ds.PixelRepresentation = 0
        ds.RescaleIntercept = -1024
        ds.RescaleSlope = 1
        ds.PixelData = stored[k].tobytes()
        path = folder / f"1-{instance:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    return files


def dicom_dataset(sop_class_uid: str, sop_uid: str, series_uid: str, modality: str, patient_id: str):
    """A pydicom dataset with file meta (explicit VR little endian) and the identifying tags set."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class_uid
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class_uid
    ds.SOPInstanceUID = sop_uid
    ds.SeriesInstanceUID = series_uid
    ds.Modality = modality
    ds.PatientID = patient_id
    return ds


def _write_non_image_dicom(path: Path, modality: str, patient_id: str, uid_seed: str) -> None:
    """A pixel-less DICOM object (e.g. the RTSTRUCT series next to an NSCLC-Radiomics CT)."""
    from pydicom.uid import RTStructureSetStorage, generate_uid

    ds = dicom_dataset(RTStructureSetStorage, generate_uid(entropy_srcs=[uid_seed, modality]),
                        generate_uid(entropy_srcs=[uid_seed, modality, "series"]), modality, patient_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def write_msd_lung_layout(root: str | Path, n_cases: int = 3, seed: int = 0,
                          shape: Sequence[int] = SMALL_SHAPE) -> Path:
    """MSD ``Task06_Lung``: imagesTr/labelsTr/imagesTs ``lung_XXX.nii.gz`` + the MSD dataset.json.

    Like the real archive, case numbers have gaps (lung_001, lung_003, ...) and every NIfTI has an
    AppleDouble ``._`` twin (macOS metadata, not an image) that converters must ignore.
    """
    task = Path(root) / "Task06_Lung"
    numbers = [1 + 2 * i for i in range(n_cases + 1)]
    training, test = [], []
    for i, number in enumerate(numbers):
        case = lesion_case("tumour", seed + i, shape=shape)
        name = f"lung_{number:03d}.nii.gz"
        if i < n_cases:
            write_nifti(case.image, task / "imagesTr" / name, case.spacing)
            write_nifti(case.label, task / "labelsTr" / name, case.spacing)
            training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
            for sub in ("imagesTr", "labelsTr"):
                (task / sub / f"._{name}").write_bytes(b"\x00\x05\x16\x07AppleDouble")
        else:
            write_nifti(case.image, task / "imagesTs" / name, case.spacing)
            test.append(f"./imagesTs/{name}")
    (task / "dataset.json").write_text(json.dumps({
        "name": "Lung", "description": "Lung and tumour segmentation", "tensorImageSize": "3D",
        "modality": {"0": "CT"}, "labels": {"0": "background", "1": "cancer"},
        "numTraining": len(training), "numTest": len(test), "training": training, "test": test,
    }, indent=2))
    return task


def write_structseg_layout(root: str | Path, n_cases: int = 3, seed: int = 0,
                           shape: Sequence[int] = SMALL_SHAPE) -> Path:
    """StructSeg 2019 Task 4 ``Lung_GTV/<n>/data.nii.gz`` + ``label.nii.gz`` (label 1 = GTV), n = 1, 2, ..."""
    task = Path(root) / "Lung_GTV"
    for n in range(1, n_cases + 1):
        case = lesion_case("tumour", seed + 100 + n, shape=shape)
        write_nifti(case.image, task / str(n) / "data.nii.gz", case.spacing)
        write_nifti(case.label, task / str(n) / "label.nii.gz", case.spacing)
    return task


def plethora_mask_geometry(case: SyntheticCase, ct_origin_xyz: Sequence[float]):
    """(mask array, origin, direction) of ``case.label`` stored flipped in x and y (RAS-like voxel order).

    The direction cosines diag(-1, -1, 1) and the moved origin keep every voxel at the same physical
    position as the CT voxel it annotates, so only resampling in physical space aligns it.
    """
    nz, ny, nx = case.label.shape
    sz, sy, sx = case.spacing
    origin = (ct_origin_xyz[0] + (nx - 1) * sx, ct_origin_xyz[1] + (ny - 1) * sy, ct_origin_xyz[2])
    direction = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)
    return case.label[:, ::-1, ::-1], origin, direction


def write_nsclc_effusion_layout(root: str | Path, n_cases: int = 3, seed: int = 0,
                                shape: Sequence[int] = SMALL_SHAPE) -> Path:
    """PleThora effusion masks + NSCLC-Radiomics CTs as TCIA downloads them, under ``root``.

    - ``NSCLC-Radiomics/LUNG1-XXX/<study>/<series>/1-NNN.dcm``: the CT series, plus an RTSTRUCT
      series folder next to it (the converter must pick the series whose Modality is CT);
    - ``Effusions/LUNG1-XXX/LUNG1-XXX_effusion_{first,second}_reviewer.nii.gz``: masks stored in a
      different voxel orientation from the DICOM-derived CT (see ``plethora_mask_geometry``). The
      first reviewer omits the top effusion slice, the second the bottom one, so their union is
      the synthetic case's full label.
    """
    root = Path(root)
    origin = (-170.0, -170.0, -120.0)
    for i in range(1, n_cases + 1):
        patient = f"LUNG1-{i:03d}"
        case = lesion_case("effusion", seed + 200 + i, shape=shape)
        study = root / "NSCLC-Radiomics" / patient / f"01-01-2000-StudyID-NA-{10000 + i}"
        write_dicom_series(study / f"0.000000-NA-{20000 + i}", case.image, case.spacing, origin,
                           patient_id=patient, uid_seed=f"{patient}-{seed}")
        _write_non_image_dicom(study / f"3.000000-NA-{30000 + i}" / "1-1.dcm", "RTSTRUCT", patient,
                               uid_seed=f"{patient}-{seed}")
        mask, mask_origin, direction = plethora_mask_geometry(case, origin)
        fluid_slices = np.nonzero(mask.any(axis=(1, 2)))[0]
        for reviewer, dropped in (("first", fluid_slices.min()), ("second", fluid_slices.max())):
            reviewed = mask.copy()
            reviewed[dropped] = 0
            write_nifti(reviewed, root / "Effusions" / patient / f"{patient}_effusion_{reviewer}_reviewer.nii.gz",
                         case.spacing, mask_origin, direction)
    return root


def covid19_ct_seg_names() -> list[tuple[str, str]]:
    """(image file name, case id = mask file stem) of the 20 COVID-19-CT-Seg cases."""
    names = [(f"coronacases_org_{c[-3:]}.nii.gz", c) for c in CORONACASES]
    names += [(f"radiopaedia_org_covid-19-pneumonia-{k}_{i}_{s}-dcm.nii.gz", f"radiopaedia_{k}_{i}_{s}")
              for k, i, s in RADIOPAEDIA]
    return names


def write_covid19_ct_seg_layout(root: str | Path, seed: int = 0, shape: Sequence[int] = SMALL_SHAPE) -> Path:
    """COVID-19-CT-Seg (20 cases) with the real file names, as unpacked from its four Zenodo archives.

    ``COVID-19-CT-Seg_20cases/`` holds the images: Coronacases in HU (int16), Radiopaedia windowed
    to [-1250, 250] and rescaled to [0, 255]. ``Infection_Mask`` (1 infection), ``Lung_Mask``
    (1 left lung, 2 right lung) and ``Lung_and_Infection_Mask`` (1 left, 2 right, 3 infection) hold
    the masks named by case id.
    """
    root = Path(root)
    for i, (image_name, case_id) in enumerate(covid19_ct_seg_names()):
        case = lesion_case("covid", seed + 400 + i, shape=shape)
        image = case.image if case_id.startswith("coronacases") else window_to_uint8(case.image)
        write_nifti(image, root / "COVID-19-CT-Seg_20cases" / image_name, case.spacing)
        infection = (case.label > 0).astype(np.uint8)
        # synthetic lungs: 1 = patient's right lung, 2 = left lung; the benchmark: 1 left, 2 right
        lungs = np.select([case.lungs == 2, case.lungs == 1], [1, 2], 0).astype(np.uint8)
        combined = np.where(infection > 0, 3, lungs).astype(np.uint8)
        for folder, mask in (("Infection_Mask", infection), ("Lung_Mask", lungs),
                             ("Lung_and_Infection_Mask", combined)):
            write_nifti(mask, root / folder / f"{case_id}.nii.gz", case.spacing)
    return root


def write_covid_semiseg_2d_layout(root: str | Path, n_slices: int = 4, seed: int = 0, size: int = 64) -> Path:
    """COVID-SemiSeg 2D (Inf-Net's MedSeg slices): ``train/{Imgs/N.jpg, GT/N.png}`` (masks 0/255) and
    ``train-multiclass/{Imgs,GT,Prior}`` (masks 0 / 1 ground-glass / 2 consolidation as a palette PNG;
    Prior is the binary 0/255 mask). Images are windowed grayscale JPEGs; slice N uses seed ``seed + N``.
    """
    from PIL import Image

    top = Path(root) / "covid-semiseg-2d"
    for folder in ("train/Imgs", "train/GT", "train-multiclass/Imgs", "train-multiclass/GT", "train-multiclass/Prior"):
        (top / folder).mkdir(parents=True, exist_ok=True)
    for n in range(n_slices):
        image, classes = make_covid_slice(seed + n, size=size, multiclass=True)
        binary = ((classes > 0) * 255).astype(np.uint8)
        for folder in ("train", "train-multiclass"):
            Image.fromarray(image, mode="L").save(top / folder / "Imgs" / f"{n}.jpg", quality=95)
        Image.fromarray(binary, mode="L").save(top / "train" / "GT" / f"{n}.png")
        Image.fromarray(binary, mode="L").save(top / "train-multiclass" / "Prior" / f"{n}.png")
        palette = Image.fromarray(classes, mode="P")
        palette.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * (253 * 3))
        palette.save(top / "train-multiclass" / "GT" / f"{n}.png")
    return top
