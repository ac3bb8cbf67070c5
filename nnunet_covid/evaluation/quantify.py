"""Burden figures and pictures for folders of predictions (``nnunet-covid quantify``), per case and summarised.

Inputs, matched by case identifier in any format nnU-Net reads:

- ``pred_dir/<case><ending>``: the predictions (also ``uncrop``'s output, on the original grid);
- ``images_dir/<case>_0000<ending>``: the CT (channel 0, in HU) on the prediction's grid;
- lungs (``lungs``): ``"labels"``, lung labels of the prediction (names containing ``lung``, sided by
  ``left``/``right``, e.g. COVID-19-CT-Seg's left_lung 1, right_lung 2, infection 3); a folder of
  lung masks ``<case><ending>`` (sided by its dataset.json's label names, else any non-zero voxel);
  or ``"auto"``, the unsupervised mask of :mod:`~nnunet_covid.evaluation.lungs`. Default: the
  prediction's lung labels when its dataset.json has them, else ``auto``;
- ``gt_dir`` (optional): ground truths; their burden is computed with their own lung labels if they have
  some, else with the prediction's whole lungs (lung labels) or the same lung mask (folder, auto).

Labels come from the dataset.json beside the predictions (or beside the images, e.g. ``$nnUNet_raw/
DatasetXXX``): every foreground label that is not a lung is a lesion class. Without one, every
non-zero label is a lesion.

Outputs in the output folder: ``burden.csv`` and ``burden.json`` (per case, see
:mod:`~nnunet_covid.evaluation.burden`; ``gt_`` columns for the ground truth; the JSON adds the
settings and a summary with the CT categories and, with ground truth, the agreement), and unless
``pictures`` is off ``figures/<case>.png`` (:mod:`~nnunet_covid.evaluation.overlays`) with
``index.html``. Missing images, lung masks or ground truths, and any geometry mismatch with the
prediction, are errors naming the case and file.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from nnunet_covid.core.atomic_io import atomic_write_json, atomic_write_text
from nnunet_covid.core.errors import EvaluationError
from nnunet_covid.evaluation.burden import burden_agreement, case_burden, category_counts
from nnunet_covid.evaluation.evaluate import csv_text
from nnunet_covid.evaluation.segmentation_io import (
    Segmentation,
    check_label_values,
    check_same_geometry,
    dataset_json_near,
    file_ending_of,
    list_cases,
    read_segmentation,
    reader_for,
)

IMAGE_CHANNEL = "_0000"
FIGURES = "figures"
BURDEN_COLUMNS = ("lesion_ml", "n_lesions", "largest_lesion_ml", "lung_ml", "right_lung_ml", "left_lung_ml",
                  "involvement_pct", "right_involvement_pct", "left_involvement_pct", "ct_category",
                  "lesion_outside_lung_mask_ml")
GT_COLUMNS = ("lesion_ml", "involvement_pct", "right_involvement_pct", "left_involvement_pct", "ct_category")


@dataclass(frozen=True)
class LabelRoles:
    """What each label value of a label map is: lesion classes (name -> value) and lung labels."""

    lesions: dict[str, int]
    right: tuple[int, ...] = ()
    left: tuple[int, ...] = ()
    unsided: tuple[int, ...] = ()
    ignored: tuple[int, ...] = ()  # dataset.json's ``ignore`` label: neither lesion nor lung

    @property
    def has_lungs(self) -> bool:
        return bool(self.right or self.left or self.unsided)

    @property
    def allowed(self) -> set[int]:
        return {0, *self.lesions.values(), *self.right, *self.left, *self.unsided, *self.ignored}


def label_roles(dataset_json: dict | None, where: str) -> LabelRoles | None:
    """Roles from dataset.json's ``labels`` (module doc); None without a dataset.json."""
    if not dataset_json or "labels" not in dataset_json:
        return None
    lesions, sides = {}, {"right": [], "left": [], "unsided": [], "ignored": []}
    for name, value in dataset_json["labels"].items():
        if name == "background":
            continue
        if not isinstance(value, int):
            raise EvaluationError(f"{where}: dataset.json defines region {name}={value}; burden needs plain labels")
        lowered = name.lower()
        if name == "ignore":
            sides["ignored"].append(value)
        elif "lung" in lowered:
            side = "left" if "left" in lowered else "right" if "right" in lowered else "unsided"
            sides[side].append(value)
        else:
            lesions[name] = value
    return LabelRoles(lesions, *(tuple(sides[k]) for k in ("right", "left", "unsided", "ignored")))


def read_label_map(folder: Folder, case: str, what: str, roles: LabelRoles | None) -> tuple[Segmentation, LabelRoles]:
    """Read a case's label map and check its values: the dataset.json's labels (``roles``), else any integer,
    each then a lesion class ``label_<value>``; NaN, fractions (probabilities) and unknown labels are errors."""
    segmentation = folder.read(case)
    array = segmentation.array
    if roles is None:
        integral = bool(np.isfinite(array).all() and (array == np.round(array)).all())
        values = [int(v) for v in np.unique(array) if v != 0] if integral else []
        roles = LabelRoles({f"label_{v}": v for v in values} if values else {"label_1": 1})
    check_label_values(case, what, folder.files[case], array, roles.allowed)
    return segmentation, roles


@dataclass(frozen=True)
class Folder:
    """A folder of cases in one format, with the dataset.json that describes it (if any)."""

    path: Path
    file_ending: str
    dataset_json: dict | None
    files: dict[str, Path] = field(default_factory=dict)

    @classmethod
    def open(cls, path, what: str, *json_folders: Path) -> "Folder":
        path = Path(path)
        if not path.is_dir():
            raise EvaluationError(f"{what} folder {path} does not exist")
        dataset_json = dataset_json_near(path, *json_folders)
        ending = file_ending_of(path, dataset_json)
        return cls(path, ending, dataset_json, list_cases(path, ending))

    def read(self, case: str, key: str | None = None) -> Segmentation:
        path = self.files[key or case]
        return read_segmentation(reader_for(self.file_ending, path, self.dataset_json), path, case)

    def reader(self, case: str):
        return reader_for(self.file_ending, self.files[case], self.dataset_json)


def check_3d(case: str, segmentation: Segmentation, path: Path) -> None:
    if segmentation.array.ndim != 3:
        raise EvaluationError(f"case {case}: {path} is {segmentation.array.ndim}D; burden needs 3D CT volumes")


def _sided(labels: np.ndarray, roles: LabelRoles, spacing, axes) -> tuple[np.ndarray, np.ndarray]:
    """(right, left) aerated lungs from lung labels; unsided lung voxels are split or go to the nearer side."""
    from nnunet_covid.evaluation.lungs import assign_to_nearer, split_left_right

    right, left = np.isin(labels, roles.right), np.isin(labels, roles.left)
    unsided = np.isin(labels, roles.unsided)
    if not unsided.any():
        return right, left
    if right.any() or left.any():
        to_right, to_left = assign_to_nearer(unsided, right, left, spacing)
        return right | to_right, left | to_left
    return split_left_right(unsided, spacing, axes)


@dataclass
class CaseInput:
    """Files of one case and how its lungs are found (``labels``, ``auto`` or a lung-mask folder)."""

    case: str
    prediction: Folder
    images: Folder
    lungs: str | Folder
    gt: Folder | None = None


@dataclass
class CaseResult:
    """A case read and measured: its row (figures), arrays for its picture."""

    row: dict
    image: np.ndarray
    labels: np.ndarray
    lesion_classes: dict[str, int]
    lungs: np.ndarray
    spacing: tuple
    axes: np.ndarray
    gt_lesion: np.ndarray | None


def _some_lung(case: str, sides: tuple[np.ndarray, np.ndarray], path: Path) -> tuple[np.ndarray, np.ndarray]:
    if not (sides[0].any() or sides[1].any()):
        raise EvaluationError(f"case {case}: {path} has no lung voxel; burden needs the lungs")
    return sides


def _aerated_lungs(job: CaseInput, prediction: Segmentation, image: Segmentation, roles: LabelRoles, axes,
                   cache: dict | None = None):
    """(right, left) aerated lungs; ``cache`` keeps the last case's image-based lungs (auto, folder) for
    the next prediction of the same case."""
    if job.lungs == "labels":
        return _labelled_lungs(job, prediction, roles, axes)
    key = (str(job.images.files[job.case + IMAGE_CHANNEL]), str(job.lungs if isinstance(job.lungs, str)
                                                                else job.lungs.path))
    if cache is not None and key in cache:
        return cache[key]
    lungs = _image_lungs(job, prediction, image, axes)
    if cache is not None:
        cache.clear()
        cache[key] = lungs
    return lungs


def _labelled_lungs(job: CaseInput, prediction: Segmentation, roles: LabelRoles, axes):
    case = job.case
    if not roles.has_lungs:
        raise EvaluationError(f"case {case}: the prediction's dataset.json has no lung label; use lungs 'auto' "
                              f"or a folder of lung masks")
    return _some_lung(case, _sided(prediction.array, roles, prediction.spacing, axes), job.prediction.files[case])


def _image_lungs(job: CaseInput, prediction: Segmentation, image: Segmentation, axes):
    from nnunet_covid.evaluation.lungs import auto_lung_mask, split_left_right

    case, spacing = job.case, prediction.spacing
    if job.lungs == "auto":
        mask = auto_lung_mask(image.array, spacing)
        if not mask.any():
            raise EvaluationError(f"case {case}: the automatic lung mask found no lungs in "
                                  f"{job.images.files[case + IMAGE_CHANNEL]} (is it a chest CT in HU?); "
                                  f"pass a folder of lung masks")
        return split_left_right(mask, spacing, axes)
    folder = job.lungs
    lung_roles = label_roles(folder.dataset_json, str(folder.path))
    lungs, _ = read_label_map(folder, case, "lung mask", lung_roles)
    check_same_geometry(case, lungs, prediction, reference="lung mask", reference_file=folder.files[case])
    if lung_roles is None or not lung_roles.has_lungs:
        sides = split_left_right(lungs.array > 0, spacing, axes)
    else:
        sides = _sided(lungs.array, lung_roles, spacing, axes)
    return _some_lung(case, sides, folder.files[case])


def measure_case(job: CaseInput, lung_cache: dict | None = None) -> CaseResult:
    """Read one case's files, check them against the prediction, and compute its burden (and its ground truth's).

    ``lung_cache`` (a dict kept by the caller) reuses the lungs of the same image for the next prediction.
    """
    from nnunet_covid.evaluation.burden import whole_lungs
    from nnunet_covid.evaluation.lungs import lps_axes

    case, pred_folder = job.case, job.prediction
    pred_path = pred_folder.files[case]
    image_key = case + IMAGE_CHANNEL
    json_roles = label_roles(pred_folder.dataset_json, str(pred_path))
    prediction, roles = read_label_map(pred_folder, case, "prediction", json_roles)
    check_3d(case, prediction, pred_path)
    image = job.images.read(case, image_key)
    check_same_geometry(case, image, prediction, reference="image", reference_file=job.images.files[image_key])
    axes = lps_axes(prediction.direction, pred_folder.reader(case))
    right, left = _aerated_lungs(job, prediction, image, roles, axes, lung_cache)
    spacing = prediction.spacing
    burden = case_burden(prediction.array, roles.lesions, right, left, spacing)
    source = job.lungs if isinstance(job.lungs, str) else f"folder {job.lungs.path}"
    row = {"case": case, "lung_source": source, **burden}
    lesion = np.isin(prediction.array, list(roles.lesions.values()))
    whole_right, whole_left = whole_lungs(lesion, right, left, spacing)
    gt_lesion = None
    if job.gt is not None:
        gt, gt_roles = read_label_map(job.gt, case, "ground truth",
                                      label_roles(job.gt.dataset_json, str(job.gt.path)) or json_roles)
        check_same_geometry(case, gt, prediction, reference_file=job.gt.files[case])
        if gt_roles.has_lungs:
            gt_right, gt_left = _some_lung(case, _sided(gt.array, gt_roles, spacing, axes), job.gt.files[case])
        elif job.lungs == "labels":
            gt_right, gt_left = whole_right, whole_left
        else:
            gt_right, gt_left = right, left
        gt_burden = case_burden(gt.array, gt_roles.lesions, gt_right, gt_left, spacing)
        row.update({f"gt_{k}": v for k, v in gt_burden.items() if k != "voxel_ml"})
        difference = None if None in (burden["involvement_pct"], gt_burden["involvement_pct"]) else \
            burden["involvement_pct"] - gt_burden["involvement_pct"]
        row["involvement_difference_pp"] = difference
        gt_lesion = np.isin(gt.array, list(gt_roles.lesions.values()))
    return CaseResult(row, image.array, prediction.array, roles.lesions, whole_right | whole_left, spacing, axes,
                      gt_lesion)


def figure_title(row: dict) -> str:
    """One line for a case figure: predicted (and ground-truth) lesion volume, involvement and category."""
    def part(prefix: str) -> str:
        pct = row.get(f"{prefix}involvement_pct")
        return (f"lesion {row[f'{prefix}lesion_ml']:.1f} mL, {'n/a' if pct is None else f'{pct:.1f} %'} of lungs, "
                f"{row[f'{prefix}ct_category'] or 'n/a'}")
    if "gt_lesion_ml" not in row:
        return f"{row['case']}: {part('')}"
    return f"{row['case']}: predicted {part('')} | ground truth {part('gt_')}"


def draw_case(result: CaseResult, path: Path) -> Path:
    from nnunet_covid.evaluation.overlays import case_figure

    return case_figure(path, result.image, result.lungs, result.labels, result.lesion_classes, result.spacing,
                       result.axes, figure_title(result.row), result.gt_lesion)


def _quantify_case(job: CaseInput, figure: Path | None) -> dict:
    """Measure one case and, with a figure path, draw it; returns its row."""
    result = measure_case(job)
    if figure is not None:
        draw_case(result, figure)
        result.row["figure"] = figure.name
    return result.row


def summarise(rows: Sequence[dict], with_gt: bool) -> dict:
    """CT categories, involvement statistics and (with ground truth) the agreement of predicted with true burden."""
    involvement = [r["involvement_pct"] for r in rows if r["involvement_pct"] is not None]
    summary = {"n_cases": len(rows), "ct_categories": category_counts(rows),
               "involvement_pct": {"mean": float(np.mean(involvement)) if involvement else None,
                                   "median": float(np.median(involvement)) if involvement else None,
                                   "max": float(np.max(involvement)) if involvement else None},
               "lesion_ml_total": float(sum(r["lesion_ml"] for r in rows))}
    if with_gt:
        predicted = [{"involvement_pct": r["involvement_pct"], "ct_category": r["ct_category"]} for r in rows]
        reference = [{"involvement_pct": r["gt_involvement_pct"], "ct_category": r["gt_ct_category"]} for r in rows]
        summary["gt_ct_categories"] = category_counts(rows, "gt_ct_category")
        summary["agreement"] = burden_agreement(predicted, reference)
    return summary


def row_columns(rows: Sequence[dict]) -> list[str]:
    """CSV columns: case, lung source, every per-class volume and burden figure, ground-truth columns, figure."""
    classes = list(dict.fromkeys(k for r in rows for k in r if k.startswith("lesion_ml_")))
    gt_classes = list(dict.fromkeys(k for r in rows for k in r if k.startswith("gt_lesion_ml_")))
    columns = ["case", "lung_source", "lesion_ml", *classes, *BURDEN_COLUMNS[1:]]
    if any("gt_lesion_ml" in r for r in rows):
        columns += [f"gt_{c}" for c in GT_COLUMNS[:1]] + gt_classes + [f"gt_{c}" for c in GT_COLUMNS[1:]]
        columns += ["involvement_difference_pp"]
    if any("figure" in r for r in rows):
        columns.append("figure")
    return columns


def write_index(out_dir: Path, rows: Sequence[dict], title: str, intro: str) -> Path:
    """``index.html``: the per-case table and every figure."""
    from nnunet_covid.evaluation.overlays import index_page

    columns = [c for c in row_columns(rows) if c not in ("lung_source", "figure")]
    figures = {r["case"]: out_dir / FIGURES / r["figure"] for r in rows if r.get("figure")}
    return index_page(out_dir / "index.html", title, intro,
                      [{"heading": "cases", "columns": columns, "rows": rows, "figures": figures}])


def case_inputs(pred_dir, images_dir, lungs: str | Path | None = None, gt_dir=None) -> list[CaseInput]:
    """One :class:`CaseInput` per prediction, after checking that the folders exist and every case has its files."""
    prediction = Folder.open(pred_dir, "prediction", Path(images_dir))
    images = Folder.open(images_dir, "image")
    if not prediction.files:
        raise EvaluationError(f"{prediction.path}: no predictions ending in {prediction.file_ending}")
    if lungs is None:
        roles = label_roles(prediction.dataset_json, str(prediction.path))
        lungs = "labels" if roles is not None and roles.has_lungs else "auto"
    if not isinstance(lungs, str) or lungs not in ("labels", "auto"):
        lungs = Folder.open(lungs, "lung mask")
    gt = Folder.open(gt_dir, "ground-truth") if gt_dir is not None else None
    jobs = []
    for case in sorted(prediction.files):
        if case + IMAGE_CHANNEL not in images.files:
            raise EvaluationError(f"case {case}: no image {case}{IMAGE_CHANNEL}{images.file_ending} in {images.path} "
                                  f"for prediction {prediction.files[case]}")
        for folder, what in ((lungs, "lung mask"), (gt, "ground truth")):
            if isinstance(folder, Folder) and case not in folder.files:
                raise EvaluationError(f"case {case}: no {what} {case}{folder.file_ending} in {folder.path}")
        jobs.append(CaseInput(case, prediction, images, lungs, gt))
    return jobs


def quantify_folders(pred_dir, images_dir, output_dir, lungs: str | Path | None = None, gt_dir=None,
                     pictures: bool = True, progress: bool = False) -> dict:
    """Burden of every prediction (module doc) into ``output_dir``; returns ``{"settings", "cases", "summary"}``."""
    from tqdm import tqdm

    output_dir = Path(output_dir)
    jobs = case_inputs(pred_dir, images_dir, lungs, gt_dir)
    with tqdm(jobs, desc="quantifying", unit="case", disable=not progress) as bar:  # closed before an error prints
        rows = [_quantify_case(job, output_dir / FIGURES / f"{job.case}.png" if pictures else None) for job in bar]
    lung_source = jobs[0].lungs if isinstance(jobs[0].lungs, str) else str(jobs[0].lungs.path)
    results = {
        "settings": {"pred_dir": str(pred_dir), "images_dir": str(images_dir), "lungs": lung_source,
                     "gt_dir": None if gt_dir is None else str(gt_dir),
                     "ct_categories": "MosMedData: CT-0 no lesion, CT-1 < 25 %, CT-2 25-50 %, CT-3 50-75 %, "
                                      "CT-4 >= 75 % of both lungs involved (lower bounds inclusive)",
                     "lesions": "26-connected components; lesion voxels outside the aerated-lung mask count as lung"},
        "cases": rows,
        "summary": summarise(rows, gt_dir is not None),
    }
    atomic_write_text(output_dir / "burden.csv", csv_text(rows, row_columns(rows)))
    if pictures:
        write_index(output_dir, rows, "Infection burden",
                    f"{len(rows)} case(s) from {pred_dir}; lungs: {lung_source}.")
    atomic_write_json(output_dir / "burden.json", results)  # last: its presence means complete
    return results
