"""Metrics: hand-computable values, agreement with DeepMind's surface-distance, empty-mask policy."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from scipy import ndimage

from nnunet_covid.evaluation.metrics import METRIC_NAMES, compute_metrics, surface_metrics
from nnunet_covid.evaluation.surface import extract_surface, surfel_area_table


@pytest.fixture(scope="module")
def sd():
    """surface-distance 0.1 as the oracle; it still uses NumPy-1 aliases removed in NumPy 2."""
    surface_distance = pytest.importorskip("surface_distance")
    patch = pytest.MonkeyPatch()
    for name, value in (("Inf", np.inf), ("NaN", np.nan)):
        if not hasattr(np, name):
            patch.setattr(np, name, value, raising=False)
    yield surface_distance
    patch.undo()


def _oracle(sd, gt, pred, spacing, tau):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        d = sd.compute_surface_distances(gt, pred, spacing)
    return sd.compute_surface_dice_at_tolerance(d, tau), sd.compute_robust_hausdorff(d, 95)


def test_overlap_metrics_of_shifted_cubes():
    gt = np.zeros((20, 20, 20), bool)
    pred = np.zeros_like(gt)
    gt[0:10, 5:15, 5:15] = True
    pred[2:12, 5:15, 5:15] = True  # TP 800, FP 200, FN 200, TN 6800
    m = compute_metrics(gt, pred, (1.0, 1.0, 1.0))
    assert set(m) == set(METRIC_NAMES)
    assert m["dsc"] == pytest.approx(0.8)
    assert m["sen"] == pytest.approx(0.8)
    assert m["ppv"] == pytest.approx(0.8)
    assert m["f1"] == pytest.approx(0.8)
    assert m["spe"] == pytest.approx(6800 / 7000)
    assert m["voe"] == pytest.approx(1 - 800 / 1200)
    assert m["rvd"] == 0.0
    assert m["acc"] == pytest.approx(7600 / 8000)
    grown = gt.copy()
    grown[10:13, 5:15, 5:15] = True  # 1300 voxels vs 1000
    assert compute_metrics(gt, grown, (1.0, 1.0, 1.0))["rvd"] == pytest.approx(0.3)


def test_cube_surface_area_is_marching_cubes_area():
    """n^3 cube, unit spacing: faces 1 per corner, edges sqrt(2)/2, vertices sqrt(3)/8."""
    n = 6
    mask = np.zeros((10, 10, 10), bool)
    mask[2:2 + n, 2:2 + n, 2:2 + n] = True
    surface = extract_surface(mask, (1.0, 1.0, 1.0))
    expected = 6 * (n - 1) ** 2 + 12 * (n - 1) * math.sqrt(2) / 2 + 8 * math.sqrt(3) / 8
    assert surface.areas.sum() == pytest.approx(expected)
    assert surface.corners.shape == (6 * (n - 1) ** 2 + 12 * (n - 1) + 8, 3)


def test_shifted_square_nsd_by_hand():
    """10x10 pixel squares, spacing (1, 2), shifted 5 rows, tau 3 (derivation in the comments).

    GT contour: top/bottom 9 points of length 2, left/right 9 of length 1, 4 corners of
    length d = sqrt(5)/2. Within 3 mm of the shifted square: left/right rows 2..9 (8 + 8),
    bottom columns 1 and 9 (2 x 2) and the two bottom corners; symmetric the other way.
    """
    gt = np.zeros((30, 14), bool)
    pred = np.zeros_like(gt)
    gt[5:15, 2:12] = True
    pred[10:20, 2:12] = True
    d = math.sqrt(5) / 2
    nsd, _ = surface_metrics(gt, pred, (1.0, 2.0), 3.0)
    assert nsd == pytest.approx((8 + 8 + 4 + 2 * d) / (54 + 4 * d))


def test_shift_within_tolerance_gives_nsd_one_and_hd95_the_shift():
    gt = np.zeros((12, 30, 30), bool)
    gt[2:6, 4:26, 4:26] = True
    pred = np.roll(gt, 2, axis=0)
    nsd, hd95 = surface_metrics(gt, pred, (1.5, 0.8, 0.8), 3.0)
    assert nsd == 1.0
    assert hd95 == pytest.approx(3.0)
    m = compute_metrics(gt, gt, (1.5, 0.8, 0.8))
    assert m["nsd"] == 1.0 and m["hd95"] == 0.0 and m["dsc"] == 1.0


def test_contour_length_table_matches_oracle(sd):
    for spacing in [(0.7, 1.3), (2.0, 0.5)]:
        np.testing.assert_allclose(surfel_area_table(spacing),
                                   sd.lookup_tables.create_table_neighbour_code_to_contour_length(spacing),
                                   atol=1e-12)
    spacing = (0.7, 1.3, 2.9)
    np.testing.assert_allclose(surfel_area_table(spacing),
                               sd.lookup_tables.create_table_neighbour_code_to_surface_area(spacing), atol=1e-12)


def _random_pair(rng, ndim):
    shape = tuple(int(s) for s in rng.integers(6, 28, ndim))
    smooth = rng.uniform(0.8, 2.0)
    gt = ndimage.gaussian_filter(rng.random(shape), smooth) > 0.5
    pred = ndimage.gaussian_filter(rng.random(shape), smooth) > 0.5
    choice = rng.integers(4)
    if choice == 0:
        pred = np.roll(gt, int(rng.integers(-2, 3)), axis=0)
    elif choice == 1:  # foreground on the array border
        gt[0] = True
        pred[..., -1] = True
    elif choice == 2:
        pred = ndimage.binary_dilation(gt)
    return gt, pred


@pytest.mark.parametrize("ndim", [2, 3])
def test_agrees_with_surface_distance_on_random_anisotropic_cases(sd, ndim):
    rng = np.random.default_rng(ndim)
    for _ in range(25):
        gt, pred = _random_pair(rng, ndim)
        spacing = tuple(float(s) for s in rng.uniform(0.3, 3.0, ndim))
        tau = float(rng.choice([1.0, 2.0, 3.0, rng.uniform(0.2, 5.0)]))
        if not (gt.any() and pred.any()):
            continue
        ref_nsd, ref_hd = _oracle(sd, gt, pred, spacing, tau)
        nsd, hd95 = surface_metrics(gt, pred, spacing, tau)
        assert abs(nsd - ref_nsd) <= 1e-6
        assert abs(hd95 - ref_hd) <= 1e-6


def test_slicewise_equals_pooled_per_slice_oracle(sd):
    rng = np.random.default_rng(7)
    gt = ndimage.gaussian_filter(rng.random((6, 24, 20)), (0, 1.5, 1.5)) > 0.5
    pred = ndimage.gaussian_filter(rng.random((6, 24, 20)), (0, 1.5, 1.5)) > 0.5
    gt[1] = False  # prediction only
    pred[2] = False  # ground truth only
    gt[3] = pred[3] = False  # neither
    spacing = (999.0, 0.9, 1.7)
    parts = {k: [] for k in ("distances_gt_to_pred", "distances_pred_to_gt", "surfel_areas_gt", "surfel_areas_pred")}
    for z in range(gt.shape[0]):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            d = sd.compute_surface_distances(gt[z], pred[z], spacing[1:])
        for key in parts:
            parts[key].append(d[key])
    pooled = {key: np.concatenate(v) for key, v in parts.items()}
    for a, b in (("distances_gt_to_pred", "surfel_areas_gt"), ("distances_pred_to_gt", "surfel_areas_pred")):
        order = np.lexsort((pooled[b], pooled[a]))
        pooled[a], pooled[b] = pooled[a][order], pooled[b][order]
    nsd, hd95 = surface_metrics(gt, pred, spacing, 2.0, slicewise=True)
    assert nsd == pytest.approx(sd.compute_surface_dice_at_tolerance(pooled, 2.0), abs=1e-9)
    assert hd95 == pytest.approx(sd.compute_robust_hausdorff(pooled, 95), abs=1e-9)


def test_empty_mask_policy_never_divides_by_zero():
    empty = np.zeros((5, 6, 7), bool)
    lesion = empty.copy()
    lesion[1:3, 2:4, 2:5] = True
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no 0/0 RuntimeWarning anywhere
        both = compute_metrics(empty, empty, (1.0, 1.0, 1.0))
        missed = compute_metrics(lesion, empty, (1.0, 1.0, 1.0))
        spurious = compute_metrics(empty, lesion, (1.0, 1.0, 1.0))
    assert both == {"dsc": 1.0, "nsd": 1.0, "sen": 1.0, "spe": 1.0, "ppv": 1.0, "voe": 0.0, "rvd": 0.0,
                    "f1": 1.0, "acc": 1.0, "hd95": 0.0}
    for m in (missed, spurious):
        assert m["dsc"] == m["nsd"] == m["sen"] == m["ppv"] == m["f1"] == 0.0
        assert m["voe"] == 1.0 and math.isinf(m["hd95"])
    assert missed["rvd"] == 1.0 and math.isinf(spurious["rvd"])
    assert missed["spe"] == 1.0 and spurious["spe"] == pytest.approx(1 - 12 / 210)


def test_bad_input_is_rejected_with_a_clear_message():
    with pytest.raises(ValueError, match="shape"):
        compute_metrics(np.zeros((3, 4)), np.zeros((4, 3)), (1, 1))
    with pytest.raises(ValueError, match="spacing"):
        compute_metrics(np.zeros((3, 4)), np.zeros((3, 4)), (1, 1, 1))
