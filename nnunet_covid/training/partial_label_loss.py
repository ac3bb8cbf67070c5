"""Marginal Dice + cross-entropy for partially labelled multi-source data (Shi et al., MedIA 2021).

A case of a source that annotates the foreground labels A has a target in {0} ∪ A, where 0 means
"none of A" (an effusion in a tumour dataset is 0 there). The marginal loss therefore merges the
predicted probabilities of every label the case's source does not annotate into background before
the loss:

    p'_0 = p_0 + sum_{c not in A} p_c,     p'_c = p_c (c in A),     p'_c = 0 (c not in A, c > 0)

and applies nnU-Net's Dice + CE to p' (CE = -log p'_target; soft Dice over the annotated foreground
labels only: per case, or with batch Dice summed over the cases that annotate the label). Predicting
an unannotated label where the target says 0 costs nothing. With every label annotated the loss
equals nnU-Net's ``DC_and_CE_loss`` (MemoryEfficientSoftDiceLoss, do_bg=False, smooth 1e-5).

The per-case annotation mask (``annotated``, bool (batch, classes)) is set by the trainer before each
step; nnU-Net's ``DeepSupervisionWrapper`` reuses it for every output scale.
"""
from __future__ import annotations

import torch
from nnunetv2.utilities.ddp_allgather import AllGatherGrad
from torch import nn

from nnunet_covid.core.errors import PartialLabelError


class MarginalDiceCELoss(nn.Module):
    """nnU-Net's Dice + CE on marginal probabilities p' (module docstring); ``self.annotated`` selects labels per case."""

    def __init__(self, batch_dice: bool, smooth: float = 1e-5, weight_ce: float = 1.0, weight_dice: float = 1.0,
                 ddp: bool = False):
        super().__init__()
        self.batch_dice, self.smooth, self.ddp = batch_dice, smooth, ddp
        self.weight_ce, self.weight_dice = weight_ce, weight_dice
        self.annotated: torch.Tensor | None = None

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        n, c = logits.shape[:2]
        annotated = (torch.ones(n, c, dtype=torch.bool) if self.annotated is None else self.annotated.bool())
        if annotated.shape != (n, c):
            raise ValueError(f"annotation mask of shape {tuple(annotated.shape)} for logits {tuple(logits.shape)}")
        annotated = annotated.to(logits.device).clone()
        annotated[:, 0] = True
        spatial = (1,) * (logits.ndim - 2)
        labels = target[:, 0].long()
        if not annotated.gather(1, labels.reshape(n, -1)).all():
            raise PartialLabelError("target contains labels its case's source does not annotate "
                                    f"(annotated per case: {annotated.int().tolist()})")

        log_p = torch.log_softmax(logits.float(), 1)
        merged_into_background = ~annotated
        merged_into_background[:, 0] = True
        log_background = torch.logsumexp(log_p.masked_fill(~merged_into_background.view(n, c, *spatial), -torch.inf),
                                         1, keepdim=True)
        log_marginal = torch.cat([log_background,
                                  log_p[:, 1:].masked_fill(~annotated[:, 1:].view(n, c - 1, *spatial), -torch.inf)], 1)

        ce = -log_marginal.gather(1, labels[:, None]).mean()
        dice = self._soft_dice(log_marginal[:, 1:].exp(), labels, annotated[:, 1:])
        return self.weight_ce * ce + self.weight_dice * dice

    def _soft_dice(self, probs: torch.Tensor, labels: torch.Tensor, annotated: torch.Tensor) -> torch.Tensor:
        """-(mean soft Dice) over annotated (case, label) pairs; nnU-Net's MemoryEfficientSoftDiceLoss formula."""
        axes = tuple(range(2, probs.ndim))
        with torch.no_grad():
            onehot = torch.zeros((labels.shape[0], probs.shape[1] + 1, *labels.shape[1:]), device=probs.device,
                                 dtype=probs.dtype).scatter_(1, labels[:, None], 1)[:, 1:]
        weight = annotated.to(probs.dtype)
        intersect = (probs * onehot).sum(axes) * weight
        sum_pred = probs.sum(axes) * weight
        sum_gt = onehot.sum(axes) * weight
        if self.batch_dice:  # sums over the cases annotating each label (and over DDP workers, like nnU-Net)
            intersect, sum_pred, sum_gt, weight = intersect.sum(0), sum_pred.sum(0), sum_gt.sum(0), weight.sum(0)
            if self.ddp:
                intersect, sum_pred, sum_gt, weight = (AllGatherGrad.apply(t).sum(0) for t in (intersect, sum_pred,
                                                                                             sum_gt, weight))
        dc = (2 * intersect + self.smooth) / torch.clip(sum_gt + sum_pred + self.smooth, 1e-8)
        valid = weight > 0
        if not valid.any():
            return probs.sum() * 0
        return -dc[valid].mean()
