"""nnU-Net v2's naming conventions, spelled out once.

- datasets: ``DatasetXXX_Name`` folders, found by id in the nnU-Net roots (:func:`dataset_name`);
- trainings: ``$nnUNet_results/<dataset>/<trainer>__<plans>__<configuration>/fold_<fold>``
  (:func:`training_folder`, with nnU-Net's own ``convert_trainer_plans_config_to_identifier``);
- logs: the ``Epoch time: X s`` lines of ``training_log_*.txt`` (:func:`epoch_times`);
- trainer discovery: the ``nnUNet_extTrainer`` folder that re-exports our trainers (:func:`ext_trainer_dir`).

The roots are passed explicitly wherever a caller works with other roots than its own environment's
(a study keeps one ``nnUNet_results`` per pre-trained source); nnU-Net's own helpers read them once
at import time.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Iterable

from nnunet_covid.core.errors import NnunetCovidError

NNUNET_ROOTS = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")
_DATASET_FOLDER = re.compile(r"^Dataset(\d{3})_(.+)$")
_EPOCH_TIME = re.compile(r"Epoch time: ([0-9.]+) s")


def dataset_folder_name(dataset_id: int, name: str) -> str:
    """``DatasetXXX_Name``."""
    return f"Dataset{int(dataset_id):03d}_{name}"


def parse_dataset_folder_name(folder_name: str) -> tuple[int, str] | None:
    """(id, name) of a ``DatasetXXX_Name`` folder name, None for anything else."""
    match = _DATASET_FOLDER.match(folder_name)
    return (int(match[1]), match[2]) if match else None


def dataset_name(dataset: int | str, roots: Iterable[str | os.PathLike] | None = None) -> str:
    """nnU-Net's ``DatasetXXX_Name`` for a name or an id; an id is looked up in ``roots``.

    ``roots`` defaults to the folders of ``nnUNet_raw``, ``nnUNet_preprocessed`` and ``nnUNet_results``
    in the environment. One matching name must exist (several different ones are an error, as in nnU-Net).
    """
    text = str(dataset)
    if text.startswith("Dataset"):
        return text
    try:
        dataset_id = int(text)
    except ValueError:
        raise NnunetCovidError(f"dataset {text!r} is neither an id nor a DatasetXXX_Name folder name") from None
    if roots is None:
        roots = [os.environ[k] for k in NNUNET_ROOTS if os.environ.get(k)]
    prefix = f"Dataset{dataset_id:03d}_"
    names = sorted({p.name for root in roots if Path(root).is_dir() for p in Path(root).iterdir()
                    if p.is_dir() and p.name.startswith(prefix)})
    if len(names) != 1:
        where = ", ".join(str(r) for r in roots) or "no nnU-Net folder (nnUNet_raw etc. are not set)"
        found = f"several: {', '.join(names)}" if names else "none"
        raise NnunetCovidError(f"dataset {dataset_id}: no unique {prefix}* folder in {where} ({found})")
    return names[0]


def training_folder(results_root: str | os.PathLike, dataset: str, trainer: str, plans: str,
                    configuration: str, fold: int | str | None = None) -> Path:
    """``<results_root>/<dataset>/<trainer>__<plans>__<configuration>[/fold_<fold>]``."""
    from nnunetv2.utilities.file_path_utilities import convert_trainer_plans_config_to_identifier

    folder = Path(results_root) / dataset / convert_trainer_plans_config_to_identifier(trainer, plans, configuration)
    return folder if fold is None else folder / f"fold_{fold}"


def epoch_times(log_text: str) -> list[float]:
    """The ``Epoch time: X s`` values nnU-Net logs after each epoch."""
    return [float(value) for value in _EPOCH_TIME.findall(log_text)]


def training_epoch_times(fold_folder: str | os.PathLike) -> list[float]:
    """Every epoch time of the ``training_log_*.txt`` files of one training fold folder (empty when none)."""
    folder = Path(fold_folder)
    if not folder.is_dir():
        return []
    return [t for log in sorted(folder.glob("training_log_*.txt")) for t in epoch_times(log.read_text(errors="replace"))]


def ext_trainer_dir() -> str:
    """The folder for ``nnUNet_extTrainer``: one module re-exporting ``nnunet_covid.training`` (one class identity)."""
    return str(Path(__file__).resolve().parents[1] / "nnunet_ext")
