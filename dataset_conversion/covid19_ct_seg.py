"""COVID-19-CT-Seg (Ma et al. 2021, 20 cases) -> nnU-Net raw dataset with the benchmark's 5-fold split.

Raw layout (the four Zenodo archives unpacked side by side under ``--input``):
``COVID-19-CT-Seg_20cases/`` (or ``--input`` itself) with ``coronacases_org_00N.nii.gz`` and
``radiopaedia_org_covid-19-pneumonia-{k}_{id}_{s}-dcm.nii.gz``; masks named by case id
(``coronacases_00N.nii.gz``, ``radiopaedia_{k}_{id}_{s}.nii.gz``) in ``Infection_Mask/``,
``Lung_Mask/`` and ``Lung_and_Infection_Mask/``. Case ids are the mask names.

``--target`` picks the mask folder and the output labels:
  infection            Infection_Mask           {background 0, infection 1}
  lungs                Lung_Mask                {background 0, left_lung 1, right_lung 2}
  lung-and-infection   Lung_and_Infection_Mask  {background 0, left_lung 1, right_lung 2, infection 3}

Intensities: the 10 Radiopaedia images are stored windowed to [-1250, 250] HU and rescaled to
[0, 255]; the 10 Coronacases are in HU. The benchmark applies the same [-1250, 250] window to
both, so every output image is int16 "windowed HU" in [-1250, 250]: Coronacases are clipped to
the window, Radiopaedia values v are mapped back by round(v * 1500 / 255 - 1250). nnU-Net's CT
normalisation then sees the same intensity scale for both sources. A Radiopaedia image with
values outside [0, 255] is rejected (it was not the published windowed file).

Split: all 20 cases go to imagesTr; splits_final.json holds the benchmark's 5 folds
(``BENCHMARK_FOLDS``): fold k trains on its 4 listed cases and validates on the other 16.

    nnunet-covid convert covid19-ct-seg --input COVID-19-CT-Seg --dataset-id 110 [--target infection]
"""
from __future__ import annotations

import re
from pathlib import Path

from dataset_conversion.common import CaseData, CaseJob, crop_settings, finish_dataset, open_dataset, run_cases
from nnunet_covid.core.errors import ConversionError
from dataset_conversion.nifti_cases import check_label_values, read_image

CLI_NAME = "covid19-ct-seg"
CLI_HELP = "COVID-19-CT-Seg 20 cases (infection and/or lungs, 3D CT) with the benchmark's 5-fold split"
WINDOW_HU = (-1250.0, 250.0)
SETTINGS = ("target",)
LOCATIONS = ()
IMAGES_FOLDER = "COVID-19-CT-Seg_20cases"
TARGETS = {
    # target: (mask folder, labels, default dataset name)
    "infection": ("Infection_Mask", {"background": 0, "infection": 1}, "COVID19CTSeg"),
    "lungs": ("Lung_Mask", {"background": 0, "left_lung": 1, "right_lung": 2}, "COVID19CTSegLungs"),
    "lung-and-infection": ("Lung_and_Infection_Mask",
                           {"background": 0, "left_lung": 1, "right_lung": 2, "infection": 3},
                           "COVID19CTSegLungInfection"),
}
BENCHMARK_FOLDS = (
    ("coronacases_007", "coronacases_008", "radiopaedia_36_86526_0", "radiopaedia_4_85506_1"),
    ("coronacases_004", "coronacases_009", "radiopaedia_14_85914_0", "radiopaedia_7_85703_0"),
    ("coronacases_001", "coronacases_010", "radiopaedia_10_85902_1", "radiopaedia_29_86491_1"),
    ("coronacases_003", "coronacases_005", "radiopaedia_27_86410_0", "radiopaedia_40_86625_0"),
    ("coronacases_002", "coronacases_006", "radiopaedia_10_85902_3", "radiopaedia_29_86490_1"),
)
_IMAGE_NAME = re.compile(r"^(?:coronacases_org_(?P<c>\d+)|radiopaedia_org_covid-19-pneumonia-(?P<r>\d+_\d+_\d+)-dcm)"
                         r"\.nii\.gz$")


def case_id_of(image_name: str) -> str | None:
    """The case id of an image file name, None for other files: ``coronacases_org_001.nii.gz`` ->
    ``coronacases_001``, ``radiopaedia_org_covid-19-pneumonia-4_85506_1-dcm.nii.gz`` -> ``radiopaedia_4_85506_1``."""
    match = _IMAGE_NAME.match(image_name)
    if match is None:
        return None
    return f"coronacases_{match['c']}" if match["c"] else f"radiopaedia_{match['r']}"


def benchmark_splits(case_ids) -> list[dict[str, list[str]]]:
    """nnU-Net splits_final.json entries: per fold the 4 benchmark training cases and the other cases."""
    ids = sorted(case_ids)
    return [{"train": sorted(fold), "val": [c for c in ids if c not in fold]} for fold in BENCHMARK_FOLDS]


def to_windowed_hu(image, case_id: str):
    """The image as int16 windowed HU in WINDOW_HU (see the module docstring for both sources)."""
    import numpy as np
    import SimpleITK as sitk

    low, high = WINDOW_HU
    values = sitk.GetArrayFromImage(image).astype(np.float32)
    if case_id.startswith("radiopaedia"):
        if values.min() < 0 or values.max() > 255:
            raise ConversionError(f"case {case_id}: Radiopaedia image values span "
                                  f"[{values.min():g}, {values.max():g}], expected the published [0, 255] "
                                  f"windowed intensities")
        hu = values * (high - low) / 255.0 + low
    else:
        hu = np.clip(values, low, high)
    out = sitk.GetImageFromArray(np.round(hu).astype(np.int16))
    out.CopyInformation(image)
    return out


def load_case(case_id: str, image_file: str, mask_file: str, target: str) -> CaseData:
    """Loader: windowed image + the target's mask, values checked."""
    mask_folder, labels, _ = TARGETS[target]
    image = to_windowed_hu(read_image(image_file, case_id, "image"), case_id)
    label = read_image(mask_file, case_id, f"{mask_folder} mask")
    check_label_values(label, case_id, labels.values(), mask_file)
    return CaseData(images=[image], label=label)


def find_cases(input_dir: Path, target: str) -> list[tuple[str, Path, Path]]:
    """(case id, image, mask) for every recognised image file, sorted by case id."""
    image_dir = input_dir / IMAGES_FOLDER if (input_dir / IMAGES_FOLDER).is_dir() else input_dir
    mask_dir = input_dir / TARGETS[target][0]
    if not mask_dir.is_dir():
        raise ConversionError(f"{input_dir} has no {TARGETS[target][0]}/ folder (needed for --target {target})")
    cases = sorted((case_id_of(p.name), p) for p in image_dir.glob("*.nii.gz") if case_id_of(p.name))
    if not cases:
        raise ConversionError(f"{image_dir} holds no coronacases_org_*.nii.gz / radiopaedia_org_*-dcm.nii.gz images")
    return [(case_id, image, mask_dir / f"{case_id}.nii.gz") for case_id, image in cases]


def convert_covid19_ct_seg(input_dir, dataset_id: int, name: str | None = None, output_root=None,
                           num_processes: int = 1, crop_lung: bool = False, crop_margin_mm: float | None = None,
                           target: str = "infection", overwrite: bool = False) -> Path:
    """Convert COVID-19-CT-Seg for ``target``; returns the dataset folder (ConversionError on failed cases)."""
    if target not in TARGETS:
        raise ConversionError(f"unknown target {target!r}; choose one of {', '.join(TARGETS)}")
    mask_folder, labels, default_name = TARGETS[target]
    crop = crop_settings(crop_lung, crop_margin_mm)
    cases = find_cases(Path(input_dir), target)
    missing = sorted({c for fold in BENCHMARK_FOLDS for c in fold} - {c[0] for c in cases})
    if missing:
        print(f"warning: benchmark cases missing from {input_dir}: {', '.join(missing)}; "
              f"splits_final.json will list only the cases present")
    folder = open_dataset(dataset_id, name or default_name, output_root, CLI_NAME, {**crop, "target": target},
                          overwrite)
    jobs = [CaseJob(case_id, load_case, (case_id, str(image), str(mask), target)) for case_id, image, mask in cases]
    summary = run_cases(folder, jobs, num_processes, desc=CLI_NAME, **crop)
    return finish_dataset(folder, {0: "CT"}, labels, summary, splits=benchmark_splits(c[0] for c in cases),
                          target=target, intensity_window_hu=list(WINDOW_HU),
                          description=f"COVID-19-CT-Seg {mask_folder}; images int16 HU windowed to "
                                      f"[{WINDOW_HU[0]:g}, {WINDOW_HU[1]:g}] (Radiopaedia [0,255] mapped back)")


def add_arguments(parser) -> None:
    parser.add_argument("--target", choices=tuple(TARGETS), default="infection",
                        help="which masks to convert (default infection)")


CONVERT = convert_covid19_ct_seg
