"""NSCLC pleural effusion (PleThora masks on NSCLC-Radiomics CTs) -> nnU-Net raw dataset.

Raw layout under ``--input`` (as TCIA downloads the two collections):

- ``Effusions/LUNG1-XXX/LUNG1-XXX_effusion_{first,second}_reviewer.nii.gz``: PleThora masks (78 patients);
  every patient folder here defines a case (id ``LUNG1-XXX``);
- ``NSCLC-Radiomics/LUNG1-XXX/<study>/<series>/*.dcm`` (or ``--ct-root``): the patient's DICOM
  series; the CT is the series whose Modality is CT (RTSTRUCT/SEG series are ignored; with
  several CT series the one with the most slices is used).

The masks are stored in a different voxel orientation from the DICOM-derived CT, so each reviewer
mask is resampled onto the CT grid in physical space (SimpleITK, nearest neighbour, identity
transform) and its alignment is verified; any failed check is a ConversionError naming the case:

1. the mask's physical bounding box must overlap the CT's field of view;
2. the resampled mask volume (mL) must be within ``VOLUME_TOLERANCE`` of the original one (no part
   of the mask fell outside the CT, no grid mix-up);
3. the median CT value under a non-empty resampled mask must lie in ``FLUID_HU_RANGE`` (pleural
   fluid; a mirrored or shifted mask lands on lung or air instead).

``--crop-lung`` is refused: the Liao et al. lung mask keeps aerated lung (< -600 HU) only, so the
crop box ends at the fluid level and cuts dependent effusions off (measured on synthetic cases:
~20 % of the effusion voxels lost).

``--reviewer first|second|union`` (default union): which reviewer's mask is the label; union takes
the voxel-wise union of the reviewers present (at least one must be). Labels {background 0,
effusion 1}; all cases in imagesTr/labelsTr, no split defined.

    nnunet-covid convert nsclc-effusion --input PleThora --dataset-id 104 [--reviewer union]
"""
from __future__ import annotations

from pathlib import Path

from dataset_conversion.common import CaseData, CaseJob, crop_settings, finish_dataset, open_dataset, run_cases
from dataset_conversion.input_files import walk_files
from nnunet_covid.core.errors import ConversionError
from dataset_conversion.nifti_cases import read_image

CLI_NAME = "nsclc-effusion"
CLI_HELP = "NSCLC-Radiomics CTs with PleThora pleural effusion masks (3D CT, DICOM + NIfTI)"
DEFAULT_NAME = "NSCLCEffusion"
LABELS = {"background": 0, "effusion": 1}
REVIEWERS = ("first", "second")
VOLUME_TOLERANCE = 0.10  # relative
FLUID_HU_RANGE = (-200.0, 200.0)
SETTINGS = ("reviewer",)
LOCATIONS = ("ct_root",)


def reviewer_mask_path(effusion_dir: Path, patient: str, reviewer: str) -> Path:
    return effusion_dir / patient / f"{patient}_effusion_{reviewer}_reviewer.nii.gz"


def find_ct_series(patient_dir: Path, case_id: str) -> Path:
    """The folder of the patient's CT series, chosen by the DICOM Modality tag (most slices wins)."""
    from dataset_conversion.dicom_series import series_info

    if not patient_dir.is_dir():
        raise ConversionError(f"case {case_id}: no DICOM folder {patient_dir}")
    folders = sorted({p.parent for p in walk_files(patient_dir)})
    ct_series = [info for info in map(series_info, folders) if info is not None and info.modality == "CT"]
    if not ct_series:
        raise ConversionError(f"case {case_id}: no DICOM series with Modality CT under {patient_dir}")
    return max(ct_series, key=lambda info: (info.num_files, str(info.folder))).folder


def physical_bounds(image):
    """(min corner, max corner) of the image's voxel centres in physical space (mm)."""
    import itertools

    import numpy as np

    size = image.GetSize()
    corners = [image.TransformContinuousIndexToPhysicalPoint([float(c) for c in corner])
               for corner in itertools.product(*[(0, n - 1) for n in size])]
    corners = np.asarray(corners)
    return corners.min(axis=0), corners.max(axis=0)


def resample_mask_onto_ct(mask, ct, case_id: str, what: str):
    """The binary mask on the CT grid (nearest neighbour in physical space), with the alignment checks."""
    import numpy as np
    import SimpleITK as sitk

    binary = sitk.Cast(sitk.NotEqual(mask, 0), sitk.sitkUInt8)
    mask_lo, mask_hi = physical_bounds(binary)
    ct_lo, ct_hi = physical_bounds(ct)
    if np.any(mask_hi < ct_lo) or np.any(mask_lo > ct_hi):
        raise ConversionError(f"case {case_id}: {what} (physical extent {np.round(mask_lo, 1)}.."
                              f"{np.round(mask_hi, 1)} mm) does not overlap the CT's field of view "
                              f"({np.round(ct_lo, 1)}..{np.round(ct_hi, 1)} mm)")
    resampled = sitk.Resample(binary, ct, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    volume_before = sitk.GetArrayViewFromImage(binary).sum() * np.prod(binary.GetSpacing()) / 1000.0
    volume_after = sitk.GetArrayViewFromImage(resampled).sum() * np.prod(ct.GetSpacing()) / 1000.0
    if abs(volume_after - volume_before) > VOLUME_TOLERANCE * volume_before:
        raise ConversionError(f"case {case_id}: {what} volume changed from {volume_before:.1f} mL to "
                              f"{volume_after:.1f} mL when resampled onto the CT (more than "
                              f"{VOLUME_TOLERANCE:.0%}): mask and CT do not cover the same region")
    if volume_after > 0:
        hu = sitk.GetArrayViewFromImage(ct)[sitk.GetArrayViewFromImage(resampled) > 0]
        median = float(np.median(hu))
        if not FLUID_HU_RANGE[0] <= median <= FLUID_HU_RANGE[1]:
            raise ConversionError(f"case {case_id}: {what} is misaligned with the CT: the median CT value under "
                                  f"it is {median:.0f} HU, outside the pleural-fluid range "
                                  f"[{FLUID_HU_RANGE[0]:g}, {FLUID_HU_RANGE[1]:g}] HU")
    return resampled


def load_case(case_id: str, ct_dir: str, mask_files: tuple[str, ...], reviewer: str) -> CaseData:
    """Loader: the CT series and the chosen reviewer mask(s) resampled onto it (union when several)."""
    import SimpleITK as sitk

    from dataset_conversion.dicom_series import read_dicom_series

    ct, _ = read_dicom_series(find_ct_series(Path(ct_dir), case_id))
    label = None
    used = []
    for mask_file in mask_files:
        if not Path(mask_file).is_file():
            continue
        what = Path(mask_file).name
        resampled = resample_mask_onto_ct(read_image(mask_file, case_id, "effusion mask"), ct, case_id, what)
        label = resampled if label is None else sitk.Or(label, resampled)
        used.append(what)
    if label is None:
        raise ConversionError(f"case {case_id}: no {reviewer} reviewer effusion mask "
                              f"({', '.join(Path(f).name for f in mask_files)} missing)")
    return CaseData(images=[ct], label=label, info={"masks": used})


def find_cases(input_dir: Path, ct_root: Path | None, reviewer: str) -> list[tuple[str, Path, tuple[Path, ...]]]:
    """(case id, patient DICOM folder, reviewer mask files) for every patient in Effusions/."""
    effusion_dir = input_dir / "Effusions"
    if not effusion_dir.is_dir():
        raise ConversionError(f"{input_dir} has no Effusions/ folder (PleThora masks)")
    ct_root = ct_root if ct_root is not None else input_dir / "NSCLC-Radiomics"
    if not ct_root.is_dir():
        raise ConversionError(f"CT folder {ct_root} does not exist (NSCLC-Radiomics DICOM; see --ct-root)")
    patients = sorted(p.name for p in effusion_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not patients:
        raise ConversionError(f"{effusion_dir} holds no LUNG1-XXX patient folders")
    reviewers = REVIEWERS if reviewer == "union" else (reviewer,)
    return [(p, ct_root / p, tuple(reviewer_mask_path(effusion_dir, p, r) for r in reviewers)) for p in patients]


def convert_nsclc_effusion(input_dir, dataset_id: int, name: str = DEFAULT_NAME, output_root=None,
                           num_processes: int = 1, crop_lung: bool = False, crop_margin_mm: float | None = None,
                           reviewer: str = "union", ct_root=None, overwrite: bool = False) -> Path:
    """Convert PleThora + NSCLC-Radiomics; returns the dataset folder (ConversionError on failed cases)."""
    if crop_lung:
        raise ConversionError("--crop-lung would cut pleural effusions off: the lung mask it crops to excludes "
                              "fluid; convert nsclc-effusion without it")
    if reviewer not in (*REVIEWERS, "union"):
        raise ConversionError(f"unknown reviewer {reviewer!r}; choose first, second or union")
    cases = find_cases(Path(input_dir), None if ct_root is None else Path(ct_root), reviewer)
    folder = open_dataset(dataset_id, name, output_root, CLI_NAME,
                          {**crop_settings(crop_lung, crop_margin_mm), "reviewer": reviewer}, overwrite)
    jobs = [CaseJob(case_id, load_case, (case_id, str(ct_dir), tuple(str(m) for m in masks), reviewer))
            for case_id, ct_dir, masks in cases]
    summary = run_cases(folder, jobs, num_processes, desc=CLI_NAME)
    return finish_dataset(folder, {0: "CT"}, LABELS, summary, reviewer=reviewer,
                          description=f"NSCLC-Radiomics CT with PleThora pleural effusion masks ({reviewer} reviewer)")


def add_arguments(parser) -> None:
    parser.add_argument("--reviewer", choices=(*REVIEWERS, "union"), default="union",
                        help="effusion mask to use: first or second reviewer, or their union (default)")
    parser.add_argument("--ct-root", type=Path, default=None,
                        help="NSCLC-Radiomics DICOM folder holding LUNG1-XXX/ (default: <input>/NSCLC-Radiomics)")


CONVERT = convert_nsclc_effusion
