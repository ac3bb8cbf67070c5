"""MosMedData COVID19_1110 (the 50 CT-1 studies with infection masks) -> nnU-Net raw dataset.

Raw layout: ``studies/CT-{0..4}/study_XXXX.nii.gz`` and ``masks/study_XXXX_mask.nii.gz`` (binary,
present only for CT-1 study_0255..study_0304). ``--input`` is the ``COVID19_1110`` folder or its
parent. Every mask defines a case (id ``study_XXXX``); its image must be in ``studies/CT-1``.
Labels {background 0, infection 1}.

Train/test split (the nCoVSegNet paper's 40/10; the paper gives no list): the sorted case ids are
sampled with ``random.Random(split_seed).sample(ids, round(0.2 * len(ids)))`` as test cases
(imagesTs/labelsTs), the rest go to imagesTr/labelsTr (nnU-Net's own 5-fold split applies to them).
With the default seed 0 and the 50 real cases the test set is study_0257, 0271, 0274, 0279, 0280,
0281, 0285, 0286, 0287, 0303 (also stored as ``test_cases`` in dataset.json).

    nnunet-covid convert mosmed --input COVID19_1110 --dataset-id 105 [--split-seed 0]
"""
from __future__ import annotations

import random
from pathlib import Path

from dataset_conversion.common import crop_settings, open_dataset
from nnunet_covid.core.errors import ConversionError
from dataset_conversion.nifti_cases import convert_labelled_nifti_cases

CLI_NAME = "mosmed"
CLI_HELP = "MosMedData COVID19_1110 CT-1 studies with infection masks (3D CT)"
DEFAULT_NAME = "MosMed"
LABELS = {"background": 0, "infection": 1}
TEST_FRACTION = 0.2
MASK_SUFFIX = "_mask.nii.gz"
SETTINGS = ("split_seed",)
LOCATIONS = ()


def find_cases(input_dir: Path) -> list[tuple[str, Path, Path]]:
    """(case id, image, mask) for every mask file, sorted by id."""
    top = input_dir / "COVID19_1110" if (input_dir / "COVID19_1110").is_dir() else input_dir
    masks = sorted(p for p in (top / "masks").glob(f"study_*{MASK_SUFFIX}") if not p.name.startswith("."))
    if not masks:
        raise ConversionError(f"{top} holds no masks/study_XXXX{MASK_SUFFIX} files (is it MosMedData COVID19_1110?)")
    cases = []
    for mask in masks:
        case_id = mask.name[:-len(MASK_SUFFIX)]
        cases.append((case_id, top / "studies" / "CT-1" / f"{case_id}.nii.gz", mask))
    return cases


def held_out_case_ids(case_ids: list[str], split_seed: int) -> set[str]:
    """The documented 80/20 split: a seeded sample of the sorted ids (10 of the 50 real cases)."""
    ids = sorted(case_ids)
    return set(random.Random(split_seed).sample(ids, round(TEST_FRACTION * len(ids))))


def convert_mosmed(input_dir, dataset_id: int, name: str = DEFAULT_NAME, output_root=None, num_processes: int = 1,
                   crop_lung: bool = False, crop_margin_mm: float | None = None, split_seed: int = 0,
                   overwrite: bool = False) -> Path:
    """Convert MosMedData; returns the dataset folder (ConversionError listing failed cases at the end)."""
    if not isinstance(split_seed, int) or isinstance(split_seed, bool):
        raise ConversionError(f"split seed must be an integer, got {split_seed!r}")
    crop = crop_settings(crop_lung, crop_margin_mm)
    cases = find_cases(Path(input_dir))
    test_ids = held_out_case_ids([c[0] for c in cases], split_seed)
    folder = open_dataset(dataset_id, name, output_root, CLI_NAME, {**crop, "split_seed": split_seed}, overwrite)
    return convert_labelled_nifti_cases(folder, cases, LABELS, CLI_NAME, num_processes, **crop,
                                        test_ids=test_ids, test_cases=sorted(test_ids), split_seed=split_seed,
                                        description="MosMedData COVID19_1110 CT-1 infection masks; test split: "
                                                    "random.Random(split_seed).sample(sorted ids, 20%)")


def add_arguments(parser) -> None:
    parser.add_argument("--split-seed", type=int, default=0,
                        help="seed of the 80/20 train/test split (default 0: the documented 10 test cases)")


CONVERT = convert_mosmed
