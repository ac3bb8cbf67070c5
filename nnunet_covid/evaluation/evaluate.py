"""Score predicted segmentations against ground truth with the papers' metrics (JSON + CSV).

Every ground-truth case in ``--gt`` is matched by case identifier to its prediction in ``--pred``
(a missing prediction is an error unless ``--missing-as-empty`` or ``--predicted-only``; the
results state how many cases were scored of how many); each label of ``--labels`` is scored as a
binary mask (DSC, NSD@tau, SEN, SPE, PPV, VOE, |RVD|, F1, ACC, HD95; see
:mod:`nnunet_covid.evaluation.metrics` for definitions and the empty-mask policy). Label maps with
values that are not labels of the dataset (0/255 masks, probabilities, NaN) are errors naming the case.
``--per-patient-2d`` stacks 2D slices named ``<patient>_<index>`` per patient before scoring
(as nCoVSegNet reports its metrics); surface metrics then use per-slice contours. A dataset.json that
says ``"patient_ids": false`` (COVID-SemiSeg: anonymous slices) refuses it; without it every image is
a case, scored alone and averaged over images (Inf-Net's protocol for 2D slices).
``--restrict-to-lungs`` scores the predictions after lung-restricted post-processing
(:mod:`~nnunet_covid.evaluation.lung_restriction`).
"""
from __future__ import annotations

import csv
import io
import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from nnunet_covid.core.atomic_io import atomic_write_text
from nnunet_covid.evaluation.lung_restriction import MIN_INSIDE, SOURCES, case_lungs, check_min_inside, restrict_to_lungs
from nnunet_covid.evaluation.metrics import METRIC_NAMES, compute_metrics
from nnunet_covid.core.errors import EvaluationError, UsageError
from nnunet_covid.evaluation.segmentation_io import (
    Segmentation,
    allowed_label_values,
    check_label_values,
    check_same_geometry,
    list_cases,
    pair_cases,
    patient_of_slice,
    read_segmentation,
    reader_for,
)

HD95_DEFINITION = ("max of the two directed, surfel-area-weighted 95th percentiles of surface distances "
                   "(surface-distance compute_robust_hausdorff)")
EMPTY_POLICY = ("zero-denominator ratios are 1 if ground truth and prediction are identical, else 0; "
                "hd95 is 0 if both are empty and inf (null) if exactly one is; rvd is inf (null) for an empty "
                "ground truth with a non-empty prediction")


def _score(case: str, gt: np.ndarray, pred: np.ndarray, spacing, labels: Sequence[int], tolerance_mm: float,
           slicewise: bool) -> list[dict]:
    rows = []
    for label in labels:
        metrics = compute_metrics(gt == label, pred == label, spacing, tolerance_mm, slicewise=slicewise)
        rows.append({"case": case, "label": int(label), **metrics})
    return rows


def _read_labels(reader, path: Path, case: str, what: str, allowed: set[int]) -> Segmentation:
    segmentation = read_segmentation(reader, path, case)
    check_label_values(case, what, path, segmentation.array, allowed)
    return segmentation


def _restricted(slice_case: str, pred: Segmentation, restriction: dict, file_ending: str, dataset_json,
                info: dict) -> Segmentation:
    """``pred`` after lung restriction; records the slice's lesion pixels before and removed, and its lung share."""
    lungs = case_lungs(slice_case, pred, restriction["lungs"], restriction["images"].get(slice_case),
                       restriction["masks"].get(slice_case), file_ending, dataset_json)
    array, removed = restrict_to_lungs(pred.array, lungs, restriction["min_inside"])
    info[slice_case] = {"predicted_lesion_pixels": int(np.count_nonzero(pred.array)), "removed_lesion_pixels": removed,
                        "lung_share": float(lungs.mean())}
    return Segmentation(array, pred.spacing, pred.origin, pred.direction)


def _evaluate_case(job: tuple) -> tuple[list[dict], dict]:
    """Worker: read one case (or one patient's slices), check values and geometry, score every label.

    A missing prediction (None) is scored as an empty one on the ground truth's grid. With a lung
    restriction the prediction is restricted first; returns (rows, per-slice restriction figures).
    """
    case, pairs, labels, tolerance_mm, file_ending, dataset_json, per_patient, allowed, restriction = job
    reader = reader_for(file_ending, pairs[0][1], dataset_json)
    gts, preds, info = [], [], {}
    for slice_case, gt_file, pred_file in pairs:
        gt = _read_labels(reader, gt_file, slice_case, "ground truth", allowed)
        if pred_file is None:
            pred = Segmentation(np.zeros_like(gt.array), gt.spacing, gt.origin, gt.direction)
        else:
            pred = _read_labels(reader, pred_file, slice_case, "prediction", allowed)
            check_same_geometry(slice_case, gt, pred)
            if restriction is not None:
                pred = _restricted(slice_case, pred, restriction, file_ending, dataset_json, info)
        gts.append(gt)
        preds.append(pred)
    if not per_patient:
        return _score(case, gts[0].array, preds[0].array, gts[0].spacing, labels, tolerance_mm, False), info
    if any(g.array.ndim != 2 or g.array.shape != gts[0].array.shape for g in gts):
        shapes = sorted({g.array.shape for g in gts})
        raise EvaluationError(f"patient {case}: --per-patient-2d needs 2D slices of one size, got shapes {shapes}")
    gt_stack = np.stack([g.array for g in gts])
    pred_stack = np.stack([p.array for p in preds])
    return _score(case, gt_stack, pred_stack, (1.0, *gts[0].spacing), labels, tolerance_mm, True), info


def _jobs(pairs, labels, tolerance_mm, file_ending, dataset_json, per_patient, allowed, restriction) -> list[tuple]:
    if not per_patient:
        return [(case, [(case, g, p)], labels, tolerance_mm, file_ending, dataset_json, False, allowed, restriction)
                for case, g, p in pairs]
    if dataset_json is not None and dataset_json.get("patient_ids") is False:
        raise EvaluationError("--per-patient-2d: the dataset.json beside the files says its case ids carry no patient "
                              "ids (\"patient_ids\": false, e.g. COVID-SemiSeg's anonymous slices); score per image "
                              "without --per-patient-2d")
    patients: dict[str, list] = defaultdict(list)
    for case, g, p in pairs:
        patient, index = patient_of_slice(case)
        patients[patient].append((index, (case, g, p)))
    return [(patient, [item for _, item in sorted(slices)], labels, tolerance_mm, file_ending, dataset_json, True,
             allowed, restriction) for patient, slices in sorted(patients.items())]


IMAGE_CHANNEL = "_0000"  # nnU-Net's first image channel


def lung_restriction(lungs, images_dir, pairs, file_ending: str, min_inside: float = MIN_INSIDE) -> dict:
    """What the workers need to restrict every predicted case to its lungs, after checking that the files exist.

    ``lungs``: ``"auto"`` (the lungs of ``images_dir/<case>_0000<ending>``) or a folder of lung masks
    ``<case><ending>``.
    """
    min_inside = check_min_inside(min_inside)
    auto = isinstance(lungs, str) and lungs in SOURCES
    folder = Path(images_dir) if auto else Path(lungs)
    if auto and images_dir is None:
        raise UsageError("--restrict-to-lungs auto needs the images the predictions were made from (--images)")
    if not folder.is_dir():
        raise EvaluationError(f"{'image' if auto else 'lung mask'} folder {folder} for --restrict-to-lungs "
                              + ("is not a folder" if folder.exists() else "does not exist"))
    files = list_cases(folder, file_ending)
    suffix = IMAGE_CHANNEL if auto else ""
    missing = [case for case, _, pred in pairs if pred is not None and case + suffix not in files]
    if missing:
        raise EvaluationError(f"--restrict-to-lungs: no {'image' if auto else 'lung mask'} "
                              f"{missing[0]}{suffix}{file_ending} in {folder}"
                              + (f" (and {len(missing) - 1} more cases)" if len(missing) > 1 else ""))
    found = {case: files[case + suffix] for case, _, pred in pairs if pred is not None}
    return {"lungs": "auto" if auto else str(folder), "images": found if auto else {}, "masks": {} if auto else found,
            "min_inside": min_inside, "folder": str(folder)}


def _finite(values: Iterable[float]) -> list[float]:
    return [v for v in values if v is not None and math.isfinite(v)]


def summarize(rows: list[dict]) -> dict:
    """Per metric: mean and (population) std over the finite values, ``n`` used and ``n_excluded`` (inf)."""
    summary = {}
    for name in METRIC_NAMES:
        values = [r[name] for r in rows]
        finite = _finite(values)
        summary[name] = {
            "mean": float(np.mean(finite)) if finite else None,
            "std": float(np.std(finite)) if finite else None,
            "n": len(finite),
            "n_excluded": len(values) - len(finite),
        }
    return summary


def _json_safe(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def csv_text(rows: list[dict], columns: Sequence[str]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in columns})
    return buffer.getvalue()


def output_paths(output_file: Path) -> dict[str, Path]:
    """The JSON file and the two CSV files written beside it."""
    output_file = Path(output_file)
    stem = output_file.name[: -len(".json")] if output_file.name.endswith(".json") else output_file.name
    return {"json": output_file, "per_case_csv": output_file.with_name(f"{stem}_per_case.csv"),
            "summary_csv": output_file.with_name(f"{stem}_summary.csv")}


def check_output_file(output_file: Path) -> None:
    """Raise UsageError unless the results file (and its CSVs beside it) can be written; nothing is created."""
    from nnunet_covid.core.output_paths import check_writable_folder

    output_file = Path(output_file)
    for path in output_paths(output_file).values():
        if path.exists() and not path.is_file():
            raise UsageError(f"-o: {path} exists and is not a file")
    check_writable_folder(output_file.parent, "-o: the folder")


def write_results(results: dict, output_file: Path) -> dict[str, Path]:
    paths = output_paths(output_file)
    summary_rows = [{"label": label, "metric": name, **stats}
                    for label, per_metric in [("all", results["summary"]), *results["summary_per_label"].items()]
                    for name, stats in per_metric.items()]
    try:
        atomic_write_text(paths["per_case_csv"], csv_text(_json_safe(results["cases"]), ["case", "label", *METRIC_NAMES]))
        atomic_write_text(paths["summary_csv"], csv_text(summary_rows, ["label", "metric", "mean", "std", "n",
                                                                        "n_excluded"]))
        atomic_write_text(paths["json"], json.dumps(_json_safe(results), indent=2))  # last: its presence means complete
    except OSError as e:
        raise EvaluationError(f"cannot write the results to {output_file.parent}: {e.strerror or e}") from None
    return paths


def default_labels(dataset_json: dict | None) -> list[int]:
    """Foreground labels of ``dataset.json`` (background and ignore left out), else [1]."""
    if not dataset_json or "labels" not in dataset_json:
        return [1]
    labels = []
    for name, value in dataset_json["labels"].items():
        if name in ("background", "ignore"):
            continue
        if not isinstance(value, int):
            raise EvaluationError(f"dataset.json defines region {name}={value}; pass --labels explicitly")
        labels.append(value)
    return sorted(labels) or [1]


def check_options(labels: Sequence[int] | None, tolerance_mm: float, num_processes: int) -> None:
    """Raise UsageError for a tolerance that is not a finite positive number of mm, < 1 process, or a label < 1."""
    if not isinstance(tolerance_mm, (int, float)) or isinstance(tolerance_mm, bool) or not math.isfinite(tolerance_mm) \
            or tolerance_mm <= 0:
        raise UsageError(f"--tolerance-mm must be a finite number of mm > 0, got {tolerance_mm}")
    if not isinstance(num_processes, int) or num_processes < 1:
        raise UsageError(f"-np must be at least 1, got {num_processes}")
    bad = [l for l in labels or () if not isinstance(l, (int, np.integer)) or isinstance(l, bool) or l < 1]
    if bad:
        raise UsageError(f"--labels must be foreground label values >= 1, got {bad}")


def evaluate_folders(gt_dir, pred_dir, labels: Sequence[int] | None = None, tolerance_mm: float = 3.0,
                     num_processes: int = 1, output_file=None, per_patient_2d: bool = False,
                     progress: bool = False, missing: str = "error", restrict_to_lungs=None, images_dir=None,
                     min_inside: float = MIN_INSIDE) -> dict:
    """Score every ground-truth case of ``gt_dir`` against its prediction in ``pred_dir``; returns (and optionally
    writes) the results.

    ``missing`` says what a ground-truth case without prediction is: an error listing those cases
    (``"error"``), an empty prediction (``"empty"``) or left out (``"skip"``). Returns ``{"cases":
    [{"case", "label", <metrics>}...], "summary": {metric: {"mean", "std", "n", "n_excluded"}} (over all
    cases and labels), "summary_per_label": {label: {...}}, "coverage": {"ground_truth_cases",
    "scored_cases", "scored_as_empty", "left_out"}, "settings": {...}}``. With ``output_file``
    (``.json``) also writes ``<stem>_per_case.csv`` and ``<stem>_summary.csv`` beside it. Raises
    :class:`EvaluationError` naming the case for unreadable files, missing ground truth, label values
    that are not the dataset's or geometry mismatch. Infinite values (HD95 against an empty mask) are
    ``inf`` here, ``null`` in JSON.

    ``restrict_to_lungs`` (``"auto"`` with ``images_dir``, or a folder of lung masks) scores every
    prediction after removing its lesion components less than ``min_inside`` inside the lungs; the results
    then hold ``"lung_restriction"``: per case the predicted and removed lesion pixels and the lung share.
    """
    check_options(labels, tolerance_mm, num_processes)
    if output_file is not None:
        check_output_file(Path(output_file))
    gt_dir, pred_dir = Path(gt_dir), Path(pred_dir)
    matched = pair_cases(gt_dir, pred_dir, missing)
    dataset_json, file_ending = matched.dataset_json, matched.file_ending
    labels = [int(l) for l in labels] if labels else default_labels(dataset_json)
    allowed = allowed_label_values(dataset_json, labels)
    restriction = None if restrict_to_lungs is None else lung_restriction(
        restrict_to_lungs, images_dir, matched.pairs, file_ending, min_inside)
    jobs = _jobs(matched.pairs, labels, float(tolerance_mm), file_ending, dataset_json, per_patient_2d, allowed,
                 restriction)
    rows: list[dict] = []
    restricted: dict[str, dict] = {}
    from tqdm import tqdm

    with tqdm(total=len(jobs), desc="evaluating", unit="case", disable=not progress) as bar:
        if num_processes <= 1 or len(jobs) == 1:
            for job in jobs:
                case_rows, info = _evaluate_case(job)
                rows.extend(case_rows)
                restricted.update(info)
                bar.update()
        else:
            import multiprocessing
            import os

            from nnunet_covid.core.worker_processes import die_with_parent

            with multiprocessing.get_context("spawn").Pool(min(num_processes, len(jobs)), initializer=die_with_parent,
                                                           initargs=(os.getpid(),)) as pool:
                for case_rows, info in pool.imap(_evaluate_case, jobs):
                    rows.extend(case_rows)
                    restricted.update(info)
                    bar.update()
    results = {
        "settings": {"gt_dir": str(gt_dir), "pred_dir": str(pred_dir), "labels": labels,
                     "tolerance_mm": float(tolerance_mm), "per_patient_2d": per_patient_2d, "missing": missing,
                     "file_ending": file_ending, "hd95": HD95_DEFINITION, "empty_policy": EMPTY_POLICY,
                     "std": "population standard deviation over cases with finite values",
                     "restrict_to_lungs": None if restriction is None else {
                         "lungs": restriction["lungs"], "folder": restriction["folder"],
                         "min_inside": restriction["min_inside"]}},
        "coverage": {"ground_truth_cases": matched.n_ground_truth, "scored_cases": len(matched.pairs),
                     "scored_as_empty": matched.scored_empty, "left_out": matched.left_out},
        "cases": rows,
        "summary": summarize(rows),
        "summary_per_label": {str(label): summarize([r for r in rows if r["label"] == label]) for label in labels},
    }
    if restriction is not None:
        results["lung_restriction"] = dict(sorted(restricted.items()))
    if output_file is not None:
        write_results(results, Path(output_file))
    return results

