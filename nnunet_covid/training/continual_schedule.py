"""The continual-learning learning-rate schedule: the pre-training's poly curve, resumed part-way (Wang et al.).

Pre-training uses nnU-Net's poly schedule lr_pre(e) = lr0 * (1 - e / E_pre)^0.9. Continual learning
does not restart at lr0: fine-tuning epoch j of E_ft uses

    lr(j) = lr_pre(r + j * (E_pre - r) / E_ft),    r = resume_fraction * E_pre,

so the first fine-tuning epoch gets exactly the pre-training schedule's value at epoch r and the
rate decays along the same curve to 0 at the end of fine-tuning. With a warm-up recipe
(:mod:`~nnunet_covid.training.finetune_schedule`) this curve is the decay d(j, n) over the n epochs left
after the heads-first and warm-up epochs, and the warm-up rises to lr_pre(r).
"""
from __future__ import annotations

import torch

from nnunet_covid.training.finetune_schedule import FineTuneLRScheduler


class ContinuedPolyDecay:
    """d(j, n) = lr_pre(r + j (E_pre - r) / n): the pre-training's poly curve from epoch r, spread over n epochs."""

    def __init__(self, pretraining_initial_lr: float, pretraining_epochs: int, resume_epoch: float,
                 exponent: float = 0.9):
        self.initial_lr, self.pretraining_epochs, self.resume_epoch = pretraining_initial_lr, pretraining_epochs, resume_epoch
        self.exponent = exponent

    def pretraining_epoch(self, epoch: float, epochs: int) -> float:
        """The pre-training epoch whose rate fine-tuning epoch ``epoch`` of ``epochs`` uses."""
        return self.resume_epoch + epoch * (self.pretraining_epochs - self.resume_epoch) / epochs

    def __call__(self, epoch: float, epochs: int) -> float:
        return self.initial_lr * (1 - self.pretraining_epoch(epoch, epochs) / self.pretraining_epochs) ** self.exponent


class ContinuedPolyLRScheduler(FineTuneLRScheduler):
    """:class:`~nnunet_covid.training.finetune_schedule.FineTuneLRScheduler` whose decay continues the pre-training."""

    def __init__(self, optimizer: torch.optim.Optimizer, pretraining_initial_lr: float, pretraining_epochs: int,
                 resume_epoch: float, finetune_epochs: int, exponent: float = 0.9, warmup_epochs: int = 0,
                 heads_first_epochs: int = 0, heads_first_lr: float = 0.0):
        if not 0 <= resume_epoch < pretraining_epochs:
            raise ValueError(f"resume epoch {resume_epoch} must lie in [0, {pretraining_epochs}) (pre-training epochs)")
        self.resume_epoch = float(resume_epoch)
        super().__init__(optimizer, ContinuedPolyDecay(pretraining_initial_lr, pretraining_epochs, self.resume_epoch,
                                                       exponent),
                         finetune_epochs, warmup_epochs, heads_first_epochs, heads_first_lr)
