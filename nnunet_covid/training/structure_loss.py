"""nCoVSegNet's structure loss (Liu et al. 2021, Eq. 6-8): pixel-weighted BCE + pixel-weighted Dice.

Pixel weight (Eq. 6-7, window and factor as in F3Net): w_ij = 1 + lambda * alpha_ij with
alpha_ij = | mean of g over the k x k window centred on (i, j) - g_ij |, k = 31, lambda = 5; the
window mean is an average pool with zero padding counted in the denominator (F3Net).
Per image and class (Eq. 8):
    L_wBCE  = sum(w * BCE(p, g)) / sum(w)
    L_wDice = 1 - (2 * sum(w * p * g) + 1) / (sum(w * (p + g)) + 1)
and the loss is the mean of L_wBCE + L_wDice over images and scored classes; the sum over the
four deep-supervision heads (Eq. 5) is ``DeepSupervisedStructureLoss``. Unlike the released code
(whose BCE call passes the legacy ``reduce='none'`` flag and therefore returns the unweighted
mean), the pixel weights really enter the BCE term.

Classes. The paper is binary with one sigmoid output. nnU-Net label training gives C >= 2
softmax channels; the loss is applied one-vs-rest to the softmax probability of every
foreground class (background is implied by the softmax). For C = 2 this is exactly the paper's
loss with the logit z_fg - z_bg, since softmax(z)_fg = sigmoid(z_fg - z_bg). Region training
(nnU-Net ``regions``) uses an independent sigmoid per region channel, again exactly the paper's
loss per region. Pixels with nnU-Net's ignore label get weight 0 in both terms.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["StructureLoss", "DeepSupervisedStructureLoss", "structure_pixel_weights", "weighted_bce_dice"]


def structure_pixel_weights(target: torch.Tensor, kernel_size: int = 31, weight_factor: float = 5.0) -> torch.Tensor:
    """w = 1 + weight_factor * |avg_pool_k(g) - g| for a (b, c, y, x) float one-hot/binary target (Eq. 6-7)."""
    # separable box filter: identical to a k x k average pool with zero padding, 2k instead of k^2 operations
    half = kernel_size // 2
    local_mean = F.avg_pool2d(target, (kernel_size, 1), stride=1, padding=(half, 0), count_include_pad=True)
    local_mean = F.avg_pool2d(local_mean, (1, kernel_size), stride=1, padding=(0, half), count_include_pad=True)
    return 1 + weight_factor * (local_mean - target).abs()


def weighted_bce_dice(log_p: torch.Tensor, log_1mp: torch.Tensor, target: torch.Tensor,
                      weights: torch.Tensor) -> torch.Tensor:
    """Mean over (b, c) of weighted BCE + weighted Dice (Eq. 8), from log p and log(1 - p).

    Taking the log-probabilities (not p) keeps the BCE finite for saturated logits.
    """
    bce = -(target * log_p + (1 - target) * log_1mp)
    w_bce = (weights * bce).sum(dim=(2, 3)) / weights.sum(dim=(2, 3)).clamp_min(1e-8)
    p = log_p.exp()
    intersection = (weights * p * target).sum(dim=(2, 3))
    total = (weights * (p + target)).sum(dim=(2, 3))
    w_dice = 1 - (2 * intersection + 1) / (total + 1)
    return (w_bce + w_dice).mean()


def _softmax_foreground_log_probs(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """log p_c and log(1 - p_c) of the softmax for the foreground channels c = 1..C-1."""
    lse = torch.logsumexp(logits, dim=1, keepdim=True)
    log_rest = [torch.logsumexp(torch.cat([logits[:, :c], logits[:, c + 1:]], dim=1), dim=1, keepdim=True)
                for c in range(1, logits.shape[1])]
    return logits[:, 1:] - lse, torch.cat(log_rest, dim=1) - lse


class StructureLoss(nn.Module):
    """Structure loss for one output head, taking nnU-Net's targets.

    ``use_regions=False``: ``target`` is the (b, 1, y, x) label map and ``logits`` the softmax
    logits of all C classes; foreground classes 1..C-1 are scored. ``use_regions=True``:
    ``target`` is the (b, R, y, x) region map (plus a trailing ignore channel when
    ``ignore_label`` is set) and every region channel is scored with a sigmoid.
    """

    def __init__(self, use_regions: bool = False, ignore_label: Optional[int] = None,
                 kernel_size: int = 31, weight_factor: float = 5.0):
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"the structure-loss window must have an odd size, got {kernel_size}")
        self.use_regions = use_regions
        self.ignore_label = ignore_label
        self.kernel_size = kernel_size
        self.weight_factor = weight_factor

    def scored_target(self, target: torch.Tensor, num_channels: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(binary target per scored class, pixel weights) from nnU-Net's target; ignored pixels get weight 0."""
        valid = None
        if self.use_regions:
            if self.ignore_label is not None:
                valid = 1 - target[:, -1:].float()
                target = target[:, :-1]
            target = target.float()
        else:
            labels = target[:, 0].long()
            if self.ignore_label is not None:
                is_valid = labels != self.ignore_label
                valid = is_valid[:, None].float()
                labels = torch.where(is_valid, labels, 0)
            target = torch.stack([labels == c for c in range(1, num_channels)], dim=1).float()
        weights = structure_pixel_weights(target, self.kernel_size, self.weight_factor)
        if valid is not None:
            weights = weights * valid
            target = target * valid
        return target, weights

    def head_loss(self, logits: torch.Tensor, target: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """Eq. 8 for one head, given ``scored_target``'s output."""
        logits = logits.float()
        if self.use_regions:
            log_p, log_1mp = F.logsigmoid(logits), F.logsigmoid(-logits)
        else:
            log_p, log_1mp = _softmax_foreground_log_probs(logits)
        return weighted_bce_dice(log_p, log_1mp, target, weights)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.head_loss(logits, *self.scored_target(target, logits.shape[1]))


class DeepSupervisedStructureLoss(StructureLoss):
    """Eq. 5: the sum of the structure loss over all heads, every head at the target's resolution.

    nnU-Net hands one target per head; nCoVSegNet's heads are all upsampled to the input size, so
    the targets are identical and the one-hot targets and pixel weights are computed once.
    """

    def forward(self, outputs: Sequence[torch.Tensor], targets: Sequence[torch.Tensor]) -> torch.Tensor:
        if len(outputs) != len(targets) or any(t.shape != targets[0].shape or o.shape[2:] != targets[0].shape[2:]
                                               for o, t in zip(outputs, targets)):
            raise ValueError("every head needs a full-resolution target: got outputs "
                             f"{[tuple(o.shape) for o in outputs]} and targets {[tuple(t.shape) for t in targets]}")
        target, weights = self.scored_target(targets[0], outputs[0].shape[1])
        return sum(self.head_loss(o, target, weights) for o in outputs)
