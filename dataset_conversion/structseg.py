"""StructSeg 2019 Task 4 (lung gross tumour volume, 50 cases) -> nnU-Net raw dataset.

Raw layout: ``Lung_GTV/<n>/data.nii.gz`` (CT) and ``Lung_GTV/<n>/label.nii.gz`` (0 background,
1 GTV), ``n`` = 1..50. ``--input`` is the ``Lung_GTV`` folder or its parent. Output case ids
``gtv_NNN`` (``n`` zero-padded), labels {background 0, GTV 1}, all in imagesTr/labelsTr; no split
is defined (nnU-Net's own 5-fold split applies).

    nnunet-covid convert structseg-lung-gtv --input Lung_GTV --dataset-id 103
"""
from __future__ import annotations

from pathlib import Path

from dataset_conversion.common import crop_settings, open_dataset
from nnunet_covid.core.errors import ConversionError
from dataset_conversion.nifti_cases import convert_labelled_nifti_cases

CLI_NAME = "structseg-lung-gtv"
CLI_HELP = "StructSeg 2019 Task 4 lung GTV (3D CT)"
DEFAULT_NAME = "StructSegGTV"
LABELS = {"background": 0, "GTV": 1}
SETTINGS = ()  # the converter has no options of its own
LOCATIONS = ()


def find_cases(input_dir: Path) -> list[tuple[str, Path, Path]]:
    """(case id, data.nii.gz, label.nii.gz) for every numbered case folder, in numeric order."""
    task = input_dir / "Lung_GTV" if (input_dir / "Lung_GTV").is_dir() else input_dir
    folders = sorted((p for p in task.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))
    if not folders:
        raise ConversionError(f"{task} holds no numbered case folders (expected Lung_GTV/<n>/data.nii.gz)")
    return [(f"gtv_{int(p.name):03d}", p / "data.nii.gz", p / "label.nii.gz") for p in folders]


def convert_structseg_lung_gtv(input_dir, dataset_id: int, name: str = DEFAULT_NAME, output_root=None,
                               num_processes: int = 1, crop_lung: bool = False, crop_margin_mm: float | None = None,
                               overwrite: bool = False) -> Path:
    """Convert StructSeg Lung_GTV; returns the dataset folder (ConversionError listing failed cases at the end)."""
    crop = crop_settings(crop_lung, crop_margin_mm)
    cases = find_cases(Path(input_dir))
    folder = open_dataset(dataset_id, name, output_root, CLI_NAME, crop, overwrite)
    return convert_labelled_nifti_cases(folder, cases, LABELS, CLI_NAME, num_processes, **crop,
                                        description="StructSeg 2019 lung gross tumour volume")


def add_arguments(parser) -> None:
    """No dataset-specific flags."""


CONVERT = convert_structseg_lung_gtv
