"""The continual-learning learning-rate schedule: the pre-training's poly curve, resumed part-way (Wang et al.).

Pre-training uses nnU-Net's poly schedule lr_pre(e) = lr0 * (1 - e / E_pre)^0.9. Continual learning
does not restart at lr0: fine-tuning epoch j of E_ft uses

    lr(j) = lr_pre(r + j * (E_pre - r) / E_ft),    r = resume_fraction * E_pre,

so the first fine-tuning epoch gets exactly the pre-training schedule's value at epoch r and the
rate decays along the same curve to 0 at the end of fine-tuning.
"""
from __future__ import annotations

import torch
from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler


class ContinuedPolyLRScheduler(PolyLRScheduler):
    """nnU-Net's ``PolyLRScheduler`` over the pre-training epochs, with fine-tuning epochs mapped onto ``[r, E_pre]``."""

    def __init__(self, optimizer: torch.optim.Optimizer, pretraining_initial_lr: float, pretraining_epochs: int,
                 resume_epoch: float, finetune_epochs: int, exponent: float = 0.9):
        if not 0 <= resume_epoch < pretraining_epochs:
            raise ValueError(f"resume epoch {resume_epoch} must lie in [0, {pretraining_epochs}) (pre-training epochs)")
        if finetune_epochs < 1:
            raise ValueError(f"fine-tuning epochs must be >= 1, got {finetune_epochs}")
        self.resume_epoch = float(resume_epoch)
        self.finetune_epochs = finetune_epochs
        super().__init__(optimizer, pretraining_initial_lr, pretraining_epochs, exponent)

    def pretraining_epoch(self, finetune_epoch: float) -> float:
        """The pre-training epoch whose learning rate fine-tuning epoch ``finetune_epoch`` uses."""
        return self.resume_epoch + finetune_epoch * (self.max_steps - self.resume_epoch) / self.finetune_epochs

    def lr_at(self, finetune_epoch: float) -> float:
        """lr of fine-tuning epoch ``finetune_epoch``: lr_pre at :meth:`pretraining_epoch`."""
        return self.initial_lr * (1 - self.pretraining_epoch(finetune_epoch) / self.max_steps) ** self.exponent

    def step(self, current_step=None):
        if current_step is None or current_step == -1:
            current_step = self.ctr
            self.ctr += 1
        super().step(self.pretraining_epoch(current_step))
