"""Finding, pairing and reading ground-truth / predicted segmentations with nnU-Net's readers.

Any format nnU-Net reads works (NIfTI, NRRD, MHA, GIPL, TIFF, PNG/BMP): the reader class comes
from ``nnunetv2.imageio.reader_writer_registry`` (honouring ``overwrite_image_reader_writer`` of a
``dataset.json`` beside the files). Spacing is returned in the array's axis order.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nnunet_covid.core.errors import EvaluationError


@dataclass(frozen=True)
class Segmentation:
    """A label map without nnU-Net's channel axis; 2D images are 2D arrays."""

    array: np.ndarray
    spacing: tuple[float, ...]
    origin: tuple[float, ...] | None
    direction: tuple[float, ...] | None


def supported_file_endings() -> list[str]:
    from nnunetv2.imageio.reader_writer_registry import LIST_OF_IO_CLASSES

    endings = {e.lower() for io_class in LIST_OF_IO_CLASSES for e in io_class.supported_file_endings}
    return sorted(endings, key=len, reverse=True)  # ".nii.gz" before ".gz"-like shorter endings


def dataset_json_near(*folders: Path) -> dict | None:
    """The first ``dataset.json`` in, or in the parent of, one of ``folders`` (in order); None if there is none."""
    for folder in folders:
        for candidate in (folder / "dataset.json", folder.parent / "dataset.json"):
            if candidate.is_file():
                try:
                    return json.loads(candidate.read_text())
                except json.JSONDecodeError as e:
                    raise EvaluationError(f"{candidate}: not valid JSON ({e})") from None
    return None


def file_ending_of(folder: Path, dataset_json: dict | None) -> str:
    """``dataset.json``'s file ending, else the most common supported ending among the files."""
    if dataset_json and "file_ending" in dataset_json:
        return dataset_json["file_ending"]
    counts: dict[str, int] = {}
    for path in folder.iterdir():
        ending = next((e for e in supported_file_endings() if path.name.lower().endswith(e)), None)
        if ending and path.is_file():
            counts[ending] = counts.get(ending, 0) + 1
    if not counts:
        raise EvaluationError(f"{folder}: no segmentation files in a format nnU-Net reads "
                              f"({', '.join(supported_file_endings())})")
    return max(counts, key=counts.get)


def list_cases(folder: Path, file_ending: str) -> dict[str, Path]:
    """Case identifier -> file, for every file of ``folder`` with ``file_ending``."""
    return {p.name[: -len(file_ending)]: p for p in sorted(folder.iterdir())
            if p.is_file() and p.name.endswith(file_ending) and not p.name.startswith(".")}


def pair_cases(gt_dir: Path, pred_dir: Path) -> tuple[list[tuple[str, Path, Path]], str, dict | None]:
    """(case, ground truth file, prediction file) for every prediction; a prediction without ground truth is an error.

    Also returns the file ending and the dataset.json found beside the predictions or ground truths.
    """
    for folder, what in ((gt_dir, "ground-truth"), (pred_dir, "prediction")):
        if not folder.is_dir():
            raise EvaluationError(f"{what} folder {folder} does not exist")
    dataset_json = dataset_json_near(pred_dir, gt_dir)
    file_ending = file_ending_of(gt_dir, dataset_json)
    gt_files = list_cases(gt_dir, file_ending)
    pred_files = list_cases(pred_dir, file_ending)
    if not pred_files:
        raise EvaluationError(f"{pred_dir}: no predictions ending in {file_ending}")
    missing = sorted(set(pred_files) - set(gt_files))
    if missing:
        raise EvaluationError(f"no ground truth in {gt_dir} for case(s) {', '.join(missing[:5])}"
                              + (" ..." if len(missing) > 5 else ""))
    return [(case, gt_files[case], pred_files[case]) for case in sorted(pred_files)], file_ending, dataset_json


def reader_for(file_ending: str, example_file: Path, dataset_json: dict | None):
    """An nnU-Net reader/writer instance able to read ``example_file``."""
    from nnunetv2.imageio.reader_writer_registry import (
        determine_reader_writer_from_dataset_json,
        determine_reader_writer_from_file_ending,
    )

    try:
        if dataset_json and "overwrite_image_reader_writer" in dataset_json:
            io_class = determine_reader_writer_from_dataset_json(
                {**dataset_json, "file_ending": file_ending}, str(example_file), verbose=False)
        else:
            io_class = determine_reader_writer_from_file_ending(file_ending, str(example_file), verbose=False)
    except RuntimeError:
        raise EvaluationError(f"{example_file}: no nnU-Net reader can open this file") from None
    return io_class()


def read_segmentation(reader, path: Path, case: str) -> Segmentation:
    try:
        seg, properties = reader.read_seg(str(path))
    except Exception as e:  # readers raise anything from AssertionError to ITK errors
        raise EvaluationError(f"case {case}: cannot read {path} ({type(e).__name__}: {e})") from None
    array = np.asarray(seg)[0]
    spacing = tuple(float(s) for s in properties["spacing"])
    if array.ndim == 3 and array.shape[0] == 1:  # nnU-Net's 2D images: (1, y, x) with spacing (999.., sy, sx)
        array, spacing = array[0], spacing[1:]
    sitk_stuff = properties.get("sitk_stuff")
    nib_stuff = properties.get("nibabel_stuff")
    origin = direction = None
    if sitk_stuff:
        origin, direction = tuple(sitk_stuff["origin"]), tuple(sitk_stuff["direction"])
    elif nib_stuff:
        affine = np.asarray(nib_stuff.get("reoriented_affine", nib_stuff.get("original_affine")))
        origin, direction = tuple(affine[:3, 3]), tuple(affine[:3, :3].ravel())
    return Segmentation(array, spacing, origin, direction)


def check_same_geometry(case: str, gt: Segmentation, pred: Segmentation, reference: str = "ground truth") -> None:
    """Raise EvaluationError naming ``case`` unless shape, spacing, origin and direction agree.

    ``reference`` names what ``gt`` is in the message (the ground truth, the image, a lung mask).
    """
    problems = []
    if gt.array.shape != pred.array.shape:
        problems.append(f"shape {pred.array.shape} vs {gt.array.shape}")
    elif not np.allclose(gt.spacing, pred.spacing, rtol=1e-4, atol=1e-6):
        problems.append(f"spacing {pred.spacing} vs {gt.spacing}")
    if gt.origin is not None and pred.origin is not None and not np.allclose(gt.origin, pred.origin, atol=1e-3):
        problems.append(f"origin {pred.origin} vs {gt.origin}")
    if gt.direction is not None and pred.direction is not None and \
            not np.allclose(gt.direction, pred.direction, atol=1e-4):
        problems.append(f"direction {pred.direction} vs {gt.direction}")
    if problems:
        raise EvaluationError(f"case {case}: prediction geometry differs from its {reference}: "
                              + "; ".join(problems) + f" (prediction vs {reference})")


_SLICE_ID = re.compile(r"^(?P<patient>.+?)_(?P<index>\d+)$")


def patient_of_slice(case: str) -> tuple[str, int]:
    """``<patient>_<slice index>`` -> (patient, index); the naming the 2D slice datasets use."""
    match = _SLICE_ID.match(case)
    if not match:
        raise EvaluationError(f"case {case}: --per-patient-2d needs slice identifiers '<patient>_<slice index>'")
    return match["patient"], int(match["index"])
