"""MSD Task06_Lung (lung cancer, 63 labelled cases) -> nnU-Net raw dataset.

Raw layout (Medical Segmentation Decathlon download): ``Task06_Lung/imagesTr/lung_XXX.nii.gz``,
``labelsTr/lung_XXX.nii.gz`` (0 background, 1 cancer), ``imagesTs/`` (no labels) and dataset.json.
``--input`` is the ``Task06_Lung`` folder or its parent. AppleDouble ``._*`` files shipped in the
archive are ignored. Output: the labelled cases in imagesTr/labelsTr with their MSD ids
(``lung_001``), labels {background 0, tumour 1}; the unlabelled MSD test images are not converted
(nothing to train or evaluate on). No split is defined: nnU-Net's own 5-fold split applies.

    nnunet-covid convert msd-lung --input Task06_Lung --dataset-id 102
"""
from __future__ import annotations

from pathlib import Path

from dataset_conversion.common import NIFTI, crop_settings, open_dataset
from nnunet_covid.core.errors import ConversionError
from dataset_conversion.nifti_cases import convert_labelled_nifti_cases

CLI_NAME = "msd-lung"
CLI_HELP = "MSD Task06_Lung (lung tumour, 3D CT)"
DEFAULT_NAME = "MSDLung"
LABELS = {"background": 0, "tumour": 1}
SETTINGS = ()  # the converter has no options of its own
LOCATIONS = ()


def find_task_folder(input_dir: Path) -> Path:
    """The folder holding imagesTr/labelsTr: ``input_dir`` itself or its ``Task06_Lung`` subfolder."""
    for candidate in (input_dir, input_dir / "Task06_Lung"):
        if (candidate / "imagesTr").is_dir():
            return candidate
    raise ConversionError(f"{input_dir} is not an MSD Task06_Lung folder (no imagesTr/ in it or in Task06_Lung/)")


def find_cases(task: Path) -> list[tuple[str, Path, Path]]:
    """(case id, image, label) for every training image; the label may be missing (reported per case)."""
    images = sorted(p for p in (task / "imagesTr").glob(f"*{NIFTI}") if not p.name.startswith("."))
    if not images:
        raise ConversionError(f"{task / 'imagesTr'} holds no {NIFTI} images")
    return [(p.name[:-len(NIFTI)], p, task / "labelsTr" / p.name) for p in images]


def convert_msd_lung(input_dir, dataset_id: int, name: str = DEFAULT_NAME, output_root=None, num_processes: int = 1,
                     crop_lung: bool = False, crop_margin_mm: float | None = None, overwrite: bool = False) -> Path:
    """Convert MSD Task06_Lung; returns the dataset folder (ConversionError listing failed cases at the end)."""
    crop = crop_settings(crop_lung, crop_margin_mm)
    cases = find_cases(find_task_folder(Path(input_dir)))
    folder = open_dataset(dataset_id, name, output_root, CLI_NAME, crop, overwrite)
    return convert_labelled_nifti_cases(folder, cases, LABELS, CLI_NAME, num_processes, **crop,
                                        description="MSD Task06_Lung lung tumour")


def add_arguments(parser) -> None:
    """No dataset-specific flags."""


CONVERT = convert_msd_lung
