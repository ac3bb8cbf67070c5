"""Finding, pairing and reading ground-truth / predicted segmentations with nnU-Net's readers.

Any format nnU-Net reads works (NIfTI, NRRD, MHA, GIPL, TIFF, PNG/BMP): the reader class comes
from ``nnunetv2.imageio.reader_writer_registry`` (honouring ``overwrite_image_reader_writer`` of a
``dataset.json`` beside the files). Spacing is returned in the array's axis order.

Every ground-truth case needs a prediction unless the caller opts in to scoring a missing one as an
empty prediction or to scoring the predicted cases only (:func:`pair_cases`); label maps must hold
whole-number values from the dataset's labels (:func:`check_label_values`: a 0/255 mask or a
probability map is an error naming the case, never a silent score of 0).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
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


MISSING_POLICIES = ("error", "empty", "skip")


def _is_label_value(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_dataset_json(data, path: Path) -> dict:
    if not isinstance(data, dict):
        raise EvaluationError(f"{path}: not a dataset.json (a JSON object), got {type(data).__name__}")
    labels = data.get("labels")
    if labels is not None and not (isinstance(labels, dict) and all(
            _is_label_value(v) or (isinstance(v, list) and all(map(_is_label_value, v))) for v in labels.values())):
        raise EvaluationError(f"{path}: 'labels' must map names to label values >= 0, got {labels!r}")
    for key in ("file_ending", "overwrite_image_reader_writer"):
        if key in data and not isinstance(data[key], str):
            raise EvaluationError(f"{path}: '{key}' must be text, got {data[key]!r}")
    return data


def dataset_json_near(*folders: Path) -> dict | None:
    """The first ``dataset.json`` in, or in the parent of, one of ``folders`` (in order); None if there is none."""
    for folder in folders:
        for candidate in (folder / "dataset.json", folder.parent / "dataset.json"):
            if candidate.is_file():
                try:
                    return _check_dataset_json(json.loads(candidate.read_text(encoding="utf-8")), candidate)
                except (json.JSONDecodeError, UnicodeDecodeError) as e:
                    raise EvaluationError(f"{candidate}: not valid JSON ({e})") from None
                except OSError as e:
                    raise EvaluationError(f"{candidate}: cannot be read ({e.strerror})") from None
    return None


def _entries(folder: Path) -> list[Path]:
    try:
        return sorted(folder.iterdir())
    except OSError as e:
        raise EvaluationError(f"cannot list folder {folder}: {e.strerror}") from None


def file_ending_of(folder: Path, dataset_json: dict | None) -> str:
    """``dataset.json``'s file ending, else the most common supported ending among the files."""
    if dataset_json and "file_ending" in dataset_json:
        return dataset_json["file_ending"]
    counts: dict[str, int] = {}
    for path in _entries(folder):
        ending = next((e for e in supported_file_endings() if path.name.lower().endswith(e)), None)
        if ending and path.is_file():
            counts[ending] = counts.get(ending, 0) + 1
    if not counts:
        raise EvaluationError(f"{folder}: no segmentation files in a format nnU-Net reads "
                              f"({', '.join(supported_file_endings())})")
    return max(counts, key=counts.get)


def list_cases(folder: Path, file_ending: str) -> dict[str, Path]:
    """Case identifier -> file, for every file of ``folder`` with ``file_ending``."""
    return {p.name[: -len(file_ending)]: p for p in _entries(folder)
            if p.is_file() and p.name.endswith(file_ending) and not p.name.startswith(".")}


def _listed(cases, limit: int = 10) -> str:
    cases = sorted(cases)
    return ", ".join(cases[:limit]) + (f" ... ({len(cases)} in all)" if len(cases) > limit else "")


@dataclass
class CasePairs:
    """Ground truth matched with predictions: ``pairs`` are (case, ground truth, prediction or None = empty)."""

    pairs: list[tuple[str, Path, Path | None]]
    file_ending: str
    dataset_json: dict | None
    n_ground_truth: int
    scored_empty: list[str] = field(default_factory=list)  # no prediction, scored as an empty one
    left_out: list[str] = field(default_factory=list)  # no prediction, not scored


def pair_cases(gt_dir: Path, pred_dir: Path, missing: str = "error") -> CasePairs:
    """Match every ground-truth case with its prediction; a prediction without ground truth is an error.

    A ground-truth case without prediction is an error listing those cases (``missing="error"``), is
    scored as an empty prediction (``"empty"``), or is left out (``"skip"``: e.g. one fold's validation
    predictions against the whole labelsTr). The dataset.json beside the predictions or ground truths
    (if any) gives the file ending.
    """
    if missing not in MISSING_POLICIES:
        raise ValueError(f"missing must be one of {MISSING_POLICIES}, got {missing!r}")
    for folder, what in ((gt_dir, "ground-truth"), (pred_dir, "prediction")):
        if not folder.is_dir():
            raise EvaluationError(f"{what} folder {folder} " + ("is not a folder" if folder.exists()
                                                                 else "does not exist"))
    if gt_dir.resolve() == pred_dir.resolve():
        raise EvaluationError(f"--gt and --pred are the same folder {gt_dir}: every score would be perfect")
    dataset_json = dataset_json_near(pred_dir, gt_dir)
    file_ending = file_ending_of(gt_dir, dataset_json)
    gt_files = list_cases(gt_dir, file_ending)
    pred_files = list_cases(pred_dir, file_ending)
    if not gt_files:
        raise EvaluationError(f"{gt_dir}: no ground truth ending in {file_ending}")
    if not pred_files and missing != "empty":
        raise EvaluationError(f"{pred_dir}: no predictions ending in {file_ending}")
    stray = set(pred_files) - set(gt_files)
    if stray:
        raise EvaluationError(f"no ground truth in {gt_dir} for case(s) {_listed(stray, 5)}")
    unpredicted = sorted(set(gt_files) - set(pred_files))
    if unpredicted and missing == "error":
        raise EvaluationError(f"{len(unpredicted)} of {len(gt_files)} ground-truth case(s) have no prediction in "
                              f"{pred_dir}: {_listed(unpredicted)}; pass --missing-as-empty to score them as empty "
                              f"predictions, or --predicted-only to score only the predicted cases")
    scored = sorted(gt_files) if missing == "empty" else sorted(pred_files)
    pairs = [(case, gt_files[case], pred_files.get(case)) for case in scored]
    return CasePairs(pairs, file_ending, dataset_json, len(gt_files),
                     scored_empty=unpredicted if missing == "empty" else [],
                     left_out=unpredicted if missing == "skip" else [])


def allowed_label_values(dataset_json: dict | None, labels) -> set[int]:
    """The values a label map may hold: 0 and the dataset.json's labels, or without one the scored ``labels``.

    A scored label that the dataset.json does not define is an error (it would score two empty masks).
    """
    if not dataset_json or not isinstance(dataset_json.get("labels"), dict):
        return {0, *(int(v) for v in labels)}
    allowed = {0}
    for value in dataset_json["labels"].values():
        allowed.update(value if isinstance(value, list) else [value])
    unknown = sorted(set(int(v) for v in labels) - allowed)
    if unknown:
        raise EvaluationError(f"--labels {unknown} are not labels of the dataset.json beside the files "
                              f"({dataset_json['labels']})")
    return allowed


def check_label_values(case: str, what: str, path: Path, array: np.ndarray, allowed: set[int]) -> None:
    """Raise EvaluationError naming ``case`` when ``array`` holds NaN/Inf, fractions or values outside ``allowed``."""
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise EvaluationError(f"case {case}: {what} {path} holds NaN/infinite values")
        fractional = array != np.round(array)
        if fractional.any():
            examples = ", ".join(f"{v:g}" for v in np.unique(array[fractional])[:3])
            raise EvaluationError(f"case {case}: {what} {path} holds non-integer values ({examples}, ...): a "
                                  f"probability map? Threshold it into label values first")
    values = np.unique(array)
    unexpected = [v for v in values.tolist() if int(v) not in allowed]
    if unexpected:
        raise EvaluationError(f"case {case}: {what} {path} holds values {[int(v) for v in unexpected[:10]]} that "
                              f"are not labels of this dataset {sorted(allowed)} (a 0/255 mask?); give every "
                              f"label with --labels or put the dataset's dataset.json beside the ground truth")


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
    """One label map read by nnU-Net's ``reader``; NaN/infinite values stored in a NIfTI file are an error
    (SimpleITK would read them as 0)."""
    from dataset_conversion.nifti_cases import nonfinite_voxels

    try:
        seg, properties = reader.read_seg(str(path))
        nonfinite = nonfinite_voxels(path) if np.issubdtype(np.asarray(seg).dtype, np.floating) else 0
    except Exception as e:  # readers raise anything from AssertionError to ITK errors
        reason = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise EvaluationError(f"case {case}: cannot read {path} ({reason})") from None
    if nonfinite:
        raise EvaluationError(f"case {case}: {path} holds {nonfinite} NaN/infinite value(s)")
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


def check_same_geometry(case: str, gt: Segmentation, pred: Segmentation, reference: str = "ground truth",
                        reference_file: Path | None = None) -> None:
    """Raise EvaluationError naming ``case`` unless shape, spacing, origin and direction agree.

    ``reference`` names what ``gt`` is in the message (the ground truth, the image, a lung mask), and
    ``reference_file`` its file.
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
        raise EvaluationError(f"case {case}: prediction geometry differs from its {reference}"
                              + (f" {reference_file}: " if reference_file else ": ")
                              + "; ".join(problems) + f" (prediction vs {reference})")


_SLICE_ID = re.compile(r"^(?P<patient>.+?)_(?P<index>\d+)$")


def patient_of_slice(case: str) -> tuple[str, int]:
    """``<patient>_<slice index>`` -> (patient, index); the naming the 2D slice datasets use."""
    match = _SLICE_ID.match(case)
    if not match:
        raise EvaluationError(f"case {case}: --per-patient-2d needs slice identifiers '<patient>_<slice index>'")
    return match["patient"], int(match["index"])
