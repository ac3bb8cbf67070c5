"""Structure loss (nCoVSegNet Eq. 6-8) against a straightforward NumPy computation."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from nnunet_covid.training.structure_loss import DeepSupervisedStructureLoss, StructureLoss, structure_pixel_weights

torch.set_num_threads(1)


def reference_weights(g: np.ndarray, k: int = 31, lam: float = 5.0) -> np.ndarray:
    """w_ij = 1 + lam * |mean of g over the k x k window (zero padded, divided by k^2) - g_ij|, by explicit loops."""
    h, w = g.shape
    r = k // 2
    padded = np.zeros((h + 2 * r, w + 2 * r))
    padded[r:r + h, r:r + w] = g
    mean = np.empty((h, w))
    for i in range(h):
        for j in range(w):
            mean[i, j] = padded[i:i + k, j:j + k].sum() / (k * k)
    return 1 + lam * np.abs(mean - g)


def reference_head_loss(p: np.ndarray, g: np.ndarray, w: np.ndarray) -> float:
    """Weighted BCE + weighted Dice (smooth 1) for one image and class."""
    bce = -(g * np.log(p) + (1 - g) * np.log(1 - p))
    w_bce = (w * bce).sum() / w.sum()
    w_dice = 1 - (2 * (w * p * g).sum() + 1) / ((w * (p + g)).sum() + 1)
    return w_bce + w_dice


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=0, keepdims=True))
    return e / e.sum(axis=0, keepdims=True)


def blob_labels(rng, shape, num_classes):
    """Random label maps with compact blobs (so the window weights vary) plus some noise."""
    labels = np.zeros(shape, dtype=np.int64)
    yy, xx = np.mgrid[:shape[-2], :shape[-1]]
    for b in range(shape[0]):
        for c in range(1, num_classes):
            cy, cx, r = rng.integers(5, shape[-2] - 5), rng.integers(5, shape[-1] - 5), rng.integers(4, 10)
            labels[b][(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = c
    return labels


def test_pixel_weights_match_explicit_window_mean():
    rng = np.random.default_rng(0)
    g = blob_labels(rng, (1, 40, 36), 2)[0].astype(np.float64)
    ours = structure_pixel_weights(torch.from_numpy(g)[None, None].float())[0, 0].numpy()
    np.testing.assert_allclose(ours, reference_weights(g), rtol=1e-5, atol=1e-5)
    assert ours.max() > 2 and ours.min() == pytest.approx(1.0)  # boundary pixels are up-weighted


def test_binary_loss_matches_reference_and_weights_change_the_value():
    rng = np.random.default_rng(1)
    labels = blob_labels(rng, (2, 40, 36), 2)
    logits = rng.normal(0, 2, size=(2, 2, 40, 36))
    ours = StructureLoss()(torch.from_numpy(logits).float(), torch.from_numpy(labels)[:, None].float()).item()
    unweighted_ours = StructureLoss(weight_factor=0)(torch.from_numpy(logits).float(),
                                                     torch.from_numpy(labels)[:, None].float()).item()

    expected, expected_unweighted = [], []
    for b in range(2):
        p = 1 / (1 + np.exp(-(logits[b, 1] - logits[b, 0])))  # paper: sigmoid of one logit
        g = (labels[b] == 1).astype(np.float64)
        expected.append(reference_head_loss(p, g, reference_weights(g)))
        expected_unweighted.append(reference_head_loss(p, g, np.ones_like(g)))
    assert ours == pytest.approx(np.mean(expected), rel=1e-5)
    assert unweighted_ours == pytest.approx(np.mean(expected_unweighted), rel=1e-5)
    # the released code's BCE silently dropped the weights; ours must not
    assert abs(ours - unweighted_ours) > 0.01


def test_multiclass_loss_is_mean_of_one_vs_rest_softmax_losses():
    rng = np.random.default_rng(2)
    labels = blob_labels(rng, (2, 36, 40), 4)
    logits = rng.normal(0, 2, size=(2, 4, 36, 40))
    ours = StructureLoss()(torch.from_numpy(logits).float(), torch.from_numpy(labels)[:, None].float()).item()
    expected = []
    for b in range(2):
        p = softmax(logits[b])
        for c in range(1, 4):
            g = (labels[b] == c).astype(np.float64)
            expected.append(reference_head_loss(p[c], g, reference_weights(g)))
    assert ours == pytest.approx(np.mean(expected), rel=1e-5)


def test_region_loss_uses_independent_sigmoids():
    rng = np.random.default_rng(3)
    regions = (rng.random((1, 2, 32, 32)) > 0.6).astype(np.float64)
    logits = rng.normal(0, 2, size=(1, 2, 32, 32))
    ours = StructureLoss(use_regions=True)(torch.from_numpy(logits).float(), torch.from_numpy(regions).float()).item()
    expected = [reference_head_loss(1 / (1 + np.exp(-logits[0, c])), regions[0, c], reference_weights(regions[0, c]))
                for c in range(2)]
    assert ours == pytest.approx(np.mean(expected), rel=1e-5)


def test_ignore_label_pixels_do_not_contribute():
    rng = np.random.default_rng(4)
    labels = torch.from_numpy(blob_labels(rng, (1, 32, 32), 2))[:, None].float()
    labels[..., :8] = 2  # ignore label of a dataset with labels {0, 1} + ignore 2
    logits = torch.from_numpy(rng.normal(0, 2, size=(1, 2, 32, 32))).float()
    loss = StructureLoss(ignore_label=2)
    base = loss(logits, labels)
    changed_ignored, changed_valid = logits.clone(), logits.clone()
    changed_ignored[:, 1, :, :8] += 10  # (adding to all channels would leave the softmax unchanged)
    changed_valid[:, 1, :, 20:] += 10
    assert loss(changed_ignored, labels).item() == pytest.approx(base.item(), rel=1e-6)
    assert abs(loss(changed_valid, labels).item() - base.item()) > 1e-3


def test_saturated_logits_give_finite_loss_and_gradients():
    logits = torch.zeros(1, 2, 16, 16)
    logits[:, 1] = 200.0  # confidently wrong for the background pixels
    logits.requires_grad_(True)
    labels = torch.zeros(1, 1, 16, 16)
    labels[..., 4:8, 4:8] = 1
    value = StructureLoss()(logits, labels)
    value.backward()
    assert torch.isfinite(value) and value.item() > 50
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_deep_supervised_loss_is_the_sum_over_heads():
    rng = np.random.default_rng(5)
    labels = torch.from_numpy(blob_labels(rng, (2, 32, 32), 3))[:, None].float()
    heads = [torch.from_numpy(rng.normal(0, 2, size=(2, 3, 32, 32))).float() for _ in range(4)]
    single = StructureLoss()
    expected = sum(single(h, labels) for h in heads)
    # nnU-Net hands one (here identical, full-resolution) target per head
    summed = DeepSupervisedStructureLoss()(heads, [labels.clone() for _ in heads])
    assert summed.item() == pytest.approx(expected.item(), rel=1e-6)
    with pytest.raises(ValueError, match="full-resolution target"):
        DeepSupervisedStructureLoss()(heads, [labels] + [labels[..., ::2, ::2]] * 3)
