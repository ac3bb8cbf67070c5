"""The papers' segmentation metrics for one binary ground truth / prediction pair.

Overlap metrics from the confusion counts TP, FP, FN, TN over all voxels:
DSC = 2TP / (2TP + FP + FN); SEN = TP / (TP + FN); SPE = TN / (TN + FP); PPV = TP / (TP + FP);
VOE = 1 - TP / (TP + FP + FN); RVD = |(TP + FP) - (TP + FN)| / (TP + FN) (absolute, as the
nCoVSegNet tables report it); F1 = 2 PPV SEN / (PPV + SEN) (equals DSC); ACC = (TP + TN) / N.

Surface metrics follow Nikolov et al. exactly as DeepMind's ``surface-distance`` computes them
(see :mod:`nnunet_covid.evaluation.surface`): NSD at tolerance tau = (area of GT surfels within
tau of the predicted surface + area of predicted surfels within tau of the GT surface) /
(total GT + predicted surfel area). HD95 = the larger of the two directed, surfel-area-weighted
95th percentiles of surface distances (``surface_distance.compute_robust_hausdorff(d, 95)``;
not the pooled-distances percentile of MONAI/medpy).

Empty-mask policy (one rule, never 0/0): when a ratio's denominator is zero, the ratio is 1 if
ground truth and prediction are identical and 0 otherwise (e.g. both empty: DSC = NSD = SEN = PPV
= F1 = 1, VOE = 0). Distances have no value against an empty mask: HD95 is 0 when both are empty
and +inf when exactly one is; RVD with an empty ground truth is 0 if the prediction is empty too,
else +inf. Infinite values are written as ``null`` in JSON and left out of means (with a count).
"""
from __future__ import annotations

import math

import numpy as np

from nnunet_covid.evaluation.surface import directed_distances, extract_surface

METRIC_NAMES = ("dsc", "nsd", "sen", "spe", "ppv", "voe", "rvd", "f1", "acc", "hd95")


def _as_bool(mask) -> np.ndarray:
    mask = np.asarray(mask)
    return mask if mask.dtype == bool else mask != 0


def _ratio(numerator: float, denominator: float, identical: bool) -> float:
    if denominator == 0:
        return 1.0 if identical else 0.0
    return numerator / denominator


def _weighted_percentile(distances: np.ndarray, areas: np.ndarray, percent: float) -> float:
    """surface-distance's robust Hausdorff for one direction: sort by (distance, area), area-weighted."""
    if distances.size == 0:
        return math.inf
    order = np.lexsort((areas, distances))
    distances, areas = distances[order], areas[order]
    cumulative = np.cumsum(areas) / np.sum(areas)
    index = int(np.searchsorted(cumulative, percent / 100.0))
    return float(distances[min(index, distances.size - 1)])


def surface_metrics(gt: np.ndarray, pred: np.ndarray, spacing, tolerance_mm: float = 3.0,
                    slicewise: bool = False) -> tuple[float, float]:
    """(NSD at ``tolerance_mm``, HD95) of two boolean masks; the empty policy of this module applies.

    ``slicewise``: axis 0 indexes independent 2D slices (surfaces are 2D contours per slice,
    pooled over slices; a contour in a slice where the other mask has none counts as missed).
    """
    spacing = tuple(float(s) for s in spacing)
    gt_surface = extract_surface(gt, spacing, slicewise)
    pred_surface = extract_surface(pred, spacing, slicewise)
    if gt_surface.empty and pred_surface.empty:
        return 1.0, 0.0
    if gt_surface.empty or pred_surface.empty:
        return 0.0, math.inf
    gt_to_pred = directed_distances(gt_surface, pred_surface, spacing, slicewise)
    pred_to_gt = directed_distances(pred_surface, gt_surface, spacing, slicewise)
    overlap = (np.sum(gt_surface.areas[gt_to_pred <= tolerance_mm])
               + np.sum(pred_surface.areas[pred_to_gt <= tolerance_mm]))
    nsd = float(overlap / (np.sum(gt_surface.areas) + np.sum(pred_surface.areas)))
    hd95 = max(_weighted_percentile(gt_to_pred, gt_surface.areas, 95),
               _weighted_percentile(pred_to_gt, pred_surface.areas, 95))
    return nsd, hd95


def compute_metrics(gt: np.ndarray, pred: np.ndarray, spacing, tolerance_mm: float = 3.0,
                    slicewise: bool = False) -> dict[str, float]:
    """All metrics of :data:`METRIC_NAMES` for binary masks (any dtype, non-zero = foreground).

    ``spacing`` is in mm, in the arrays' axis order; 2D and 3D masks are supported.
    """
    gt, pred = _as_bool(gt), _as_bool(pred)
    if gt.shape != pred.shape:
        raise ValueError(f"ground truth shape {gt.shape} differs from prediction shape {pred.shape}")
    if gt.ndim not in (2, 3) or len(spacing) != gt.ndim:
        raise ValueError(f"need 2D or 3D masks with one spacing per axis, got shape {gt.shape} "
                         f"and spacing {tuple(spacing)}")
    if not all(float(s) > 0 for s in spacing):
        raise ValueError(f"spacing must be positive, got {tuple(spacing)}")
    if slicewise and gt.ndim != 3:
        raise ValueError("slicewise surface metrics need a 3D stack of slices")

    n_gt = int(np.count_nonzero(gt))
    n_pred = int(np.count_nonzero(pred))
    tp = int(np.count_nonzero(gt & pred))
    fp, fn = n_pred - tp, n_gt - tp
    tn = gt.size - tp - fp - fn
    identical = fp == 0 and fn == 0

    sen = _ratio(tp, tp + fn, identical)
    ppv = _ratio(tp, tp + fp, identical)
    if n_gt == 0:
        rvd = 0.0 if n_pred == 0 else math.inf
    else:
        rvd = abs(n_pred - n_gt) / n_gt
    nsd, hd95 = surface_metrics(gt, pred, spacing, tolerance_mm, slicewise)
    return {
        "dsc": _ratio(2 * tp, 2 * tp + fp + fn, identical),
        "nsd": nsd,
        "sen": sen,
        "spe": _ratio(tn, tn + fp, identical),
        "ppv": ppv,
        "voe": 1.0 - _ratio(tp, tp + fp + fn, identical),
        "rvd": rvd,
        "f1": _ratio(2 * ppv * sen, ppv + sen, identical),
        "acc": (tp + tn) / gt.size,
        "hd95": hd95,
    }
