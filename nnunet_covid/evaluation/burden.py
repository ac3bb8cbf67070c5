"""Infection burden of one segmented CT: lesion and lung volumes, involvement per lung, CT-0..CT-4.

Definitions (one case, a label map and the aerated lungs split into right and left):

- volume of a mask = number of voxels x voxel volume (product of the spacing, mm^3 / 1000 = mL);
- lesion = every lesion label (per class too: e.g. ground-glass, consolidation); lesions are counted
  as connected components with full (26-) connectivity;
- lung = aerated lungs + lesion voxels outside them (consolidation is not aerated, so the aerated
  mask leaves it out); such a voxel belongs to the nearer lung, as do the lung's own unsplit voxels;
- involvement of a lung = its lesion volume / its lung volume x 100 (percent of each lung and of both);
- CT category (MosMedData): CT-0 no lesion voxel, CT-1 below 25 %, CT-2 25 to below 50 %, CT-3 50 to
  below 75 %, CT-4 75 % or more of both lungs involved.

Agreement of predicted with ground-truth burden (:func:`burden_agreement`): mean absolute and mean
(bias) difference of the involvement in percentage points, Bland-Altman limits of agreement
(bias ± 1.96 SD, population SD), and the share of cases with the same CT category.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

CATEGORIES = ("CT-0", "CT-1", "CT-2", "CT-3", "CT-4")
CATEGORY_BOUNDS_PCT = (25.0, 50.0, 75.0)


def ct_category(involvement_pct: float | None, lesion_voxels: int) -> str | None:
    """MosMedData's category of a case (module doc); None when the lungs are empty and there is no lesion."""
    if lesion_voxels == 0:
        return CATEGORIES[0]
    if involvement_pct is None:
        return None
    return CATEGORIES[1 + sum(involvement_pct >= bound for bound in CATEGORY_BOUNDS_PCT)]


def _percent(part: int, whole: int) -> float | None:
    return 100.0 * part / whole if whole else None


def lesion_components(lesion: np.ndarray) -> tuple[int, int]:
    """(number of 26-connected lesions, voxels of the largest one)."""
    from scipy import ndimage

    if not lesion.any():
        return 0, 0
    labels, count = ndimage.label(lesion, structure=np.ones((3,) * lesion.ndim, dtype=bool))
    return int(count), int(np.bincount(labels.ravel())[1:].max())


def whole_lungs(lesion: np.ndarray, right: np.ndarray, left: np.ndarray, spacing) -> tuple[np.ndarray, np.ndarray]:
    """(right, left) lungs: the aerated lungs plus the lesion voxels outside them, each to the nearer lung."""
    from nnunet_covid.evaluation.lungs import assign_to_nearer

    to_right, to_left = assign_to_nearer(lesion & ~right & ~left, right, left, spacing)
    return right | to_right, left | to_left


def case_burden(labels: np.ndarray, lesion_classes: dict[str, int], right: np.ndarray, left: np.ndarray,
                spacing: Sequence[float]) -> dict:
    """Burden figures of one label map (module doc); ``right``/``left`` are the aerated lungs (boolean).

    ``lesion_classes`` maps class names to label values; the result holds ``lesion_ml_<name>`` per class.
    """
    ml = float(np.prod(np.asarray(spacing, dtype=float))) / 1000.0
    lesion = np.isin(labels, list(lesion_classes.values()))
    outside = lesion & ~right & ~left
    right, left = whole_lungs(lesion, right, left, spacing)
    n_lesions, largest = lesion_components(lesion)
    voxels = {"lesion": int(lesion.sum()), "right": int(right.sum()), "left": int(left.sum()),
              "lesion_right": int((lesion & right).sum()), "lesion_left": int((lesion & left).sum())}
    lung = voxels["right"] + voxels["left"]
    involvement = _percent(voxels["lesion"], lung)
    return {
        "lesion_ml": voxels["lesion"] * ml,
        **{f"lesion_ml_{name}": int((labels == value).sum()) * ml for name, value in lesion_classes.items()},
        "n_lesions": n_lesions,
        "largest_lesion_ml": largest * ml,
        "lung_ml": lung * ml,
        "right_lung_ml": voxels["right"] * ml,
        "left_lung_ml": voxels["left"] * ml,
        "involvement_pct": involvement,
        "right_involvement_pct": _percent(voxels["lesion_right"], voxels["right"]),
        "left_involvement_pct": _percent(voxels["lesion_left"], voxels["left"]),
        "ct_category": ct_category(involvement, voxels["lesion"]),
        "lesion_outside_lung_mask_ml": int(outside.sum()) * ml,
        "voxel_ml": ml,
    }


def burden_agreement(predicted: Sequence[dict], reference: Sequence[dict]) -> dict:
    """Agreement of predicted with reference (ground-truth) burden of the same cases, in the same order.

    JSON-ready: a figure without any case to compute it from is None.
    """
    pairs = [(p["involvement_pct"], r["involvement_pct"]) for p, r in zip(predicted, reference)
             if p["involvement_pct"] is not None and r["involvement_pct"] is not None]
    differences = np.array([p - r for p, r in pairs], dtype=np.float64)
    categories = [(p["ct_category"], r["ct_category"]) for p, r in zip(predicted, reference)
                  if p["ct_category"] is not None and r["ct_category"] is not None]
    confusion = {r: {p: sum(1 for pc, rc in categories if pc == p and rc == r) for p in CATEGORIES}
                 for r in CATEGORIES}
    bias = float(differences.mean()) if differences.size else None
    sd = float(differences.std()) if differences.size else None
    return {
        "n_cases": len(pairs),
        "mean_abs_difference_pp": float(np.abs(differences).mean()) if differences.size else None,
        "mean_difference_pp": bias,
        "sd_difference_pp": sd,
        "limits_of_agreement_pp": [bias - 1.96 * sd, bias + 1.96 * sd] if differences.size else [None, None],
        "category_agreement": (sum(p == r for p, r in categories) / len(categories)) if categories else None,
        "n_categorised": len(categories),
        "category_confusion": confusion,  # reference category -> predicted category -> cases
    }


def category_counts(rows: Sequence[dict], key: str = "ct_category") -> dict[str, int]:
    """Cases per CT category (categories in order; None counted as ``n/a`` when present)."""
    counts = {c: sum(1 for r in rows if r.get(key) == c) for c in CATEGORIES}
    missing = sum(1 for r in rows if r.get(key) is None)
    return {**counts, **({"n/a": missing} if missing else {})}
