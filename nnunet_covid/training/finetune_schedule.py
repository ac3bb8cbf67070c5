"""Fine-tuning recipes: heads first, linear warm-up, then the strategy's decay; parameter groups that join later.

Per epoch e of E (nnU-Net steps the scheduler once per epoch), with H heads-first epochs, W warm-up
epochs and the strategy's decay curve d(j, n) over the n = E - H - W epochs left:

    lr(e) = lr_heads * (e + 1) / H        for e < H            (only the segmentation heads train)
    lr(e) = d(0, n) * (e - H + 1) / W     for H <= e < H + W   (whole trainable network, linear warm-up)
    lr(e) = d(e - H - W, n)               for e >= H + W

d is nnU-Net's poly curve d(j, n) = lr0 (1 - j / n)^0.9 (:class:`PolyDecay`) or continual learning's
continued pre-training curve (:mod:`~nnunet_covid.training.continual_schedule`). H = W = 0 is nnU-Net's
``PolyLRScheduler``; H = 0, W = 50 is nnU-Net's ``nnUNetTrainer_warmup`` (``Lin_incr_LRScheduler``, then
``PolyLRScheduler_offset``), and with lr0 = 1e-3 nnssl's fine-tuning; H = 10, lr_heads = 5e-4, W = 50
is MultiTalent's.

A parameter group may join later (:mod:`~nnunet_covid.training.staged_parameters`): with keys
``join_epoch`` J and ``join_warmup_epochs`` U its rate is 0 before J and lr(e) * min(1, (e - J + 1) / U)
from J on (lr(e) when U = 0).

Recipe epoch counts are written for ``recipe_epochs`` (default 1000, nnU-Net's training length). A
training of E < ``recipe_epochs`` epochs (``_5epochs``, ``_tiny``, ``_demo`` variants) scales every count
c > 0 to max(1, round(c * E / recipe_epochs)); longer trainings keep them (:meth:`FineTuneRecipe.scaled`).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Callable, Mapping

import torch
from torch.optim.lr_scheduler import _LRScheduler

from nnunet_covid.core.errors import TrainerConfigError
from nnunet_covid.training.trainer_config import config_value

NNUNET_EPOCHS = 1000


@dataclass(frozen=True)
class FineTuneRecipe:
    """Epoch counts and rates of a recipe (trainer config keys of the same names; see the module docstring).

    ``unfreeze_after_epochs`` K (None: never): the strategy's frozen modules join training at epoch K, their
    rate warming up over ``unfreeze_warmup_epochs``.
    """

    warmup_epochs: int = 0
    heads_first_epochs: int = 0
    heads_first_lr: float = 5e-4
    unfreeze_after_epochs: int | None = None
    unfreeze_warmup_epochs: int = 0
    recipe_epochs: int = NNUNET_EPOCHS

    EPOCH_COUNTS = ("warmup_epochs", "heads_first_epochs", "unfreeze_after_epochs", "unfreeze_warmup_epochs")

    @classmethod
    def from_config(cls, config: Mapping, strategy: str) -> "FineTuneRecipe":
        values = {name: config_value(config, name, int, strategy, default=getattr(cls, name))
                  for name in ("warmup_epochs", "heads_first_epochs", "unfreeze_warmup_epochs", "recipe_epochs")}
        values["heads_first_lr"] = config_value(config, "heads_first_lr", float, strategy, default=cls.heads_first_lr)
        if config.get("unfreeze_after_epochs") is not None:
            values["unfreeze_after_epochs"] = config_value(config, "unfreeze_after_epochs", int, strategy)
        recipe = cls(**values)
        negative = [k for k, v in asdict(recipe).items() if v is not None and v < 0]
        if negative or recipe.recipe_epochs < 1 or recipe.heads_first_lr <= 0:
            raise TrainerConfigError(f"{strategy}.json: epoch counts must be >= 0 (recipe_epochs >= 1) and "
                                     f"heads_first_lr > 0, got {asdict(recipe)}")
        if recipe.unfreeze_after_epochs is not None and recipe.unfreeze_after_epochs < recipe.heads_first_epochs:
            raise TrainerConfigError(f"{strategy}.json: unfreeze_after_epochs ({recipe.unfreeze_after_epochs}) must "
                                     f"not come before the end of heads_first_epochs ({recipe.heads_first_epochs})")
        return recipe

    def scaled(self, num_epochs: int) -> "FineTuneRecipe":
        """The recipe for a training of ``num_epochs`` epochs: counts scaled when it is shorter than ``recipe_epochs``."""
        if num_epochs >= self.recipe_epochs:
            return self
        return replace(self, **{name: max(1, round(getattr(self, name) * num_epochs / self.recipe_epochs))
                                for name in self.EPOCH_COUNTS if getattr(self, name)})

    def describe(self) -> str:
        parts = []
        if self.heads_first_epochs:
            parts.append(f"segmentation heads alone for {self.heads_first_epochs} epochs (lr rising to "
                         f"{self.heads_first_lr:g})")
        if self.warmup_epochs:
            parts.append(f"{self.warmup_epochs} epochs of linear warm-up")
        if self.unfreeze_after_epochs is not None:
            parts.append(f"frozen modules join at epoch {self.unfreeze_after_epochs} (warm-up "
                         f"{self.unfreeze_warmup_epochs} epochs)")
        return ", ".join(parts) or "no warm-up"


class PolyDecay:
    """nnU-Net's poly curve d(j, n) = lr0 (1 - j / n)^exponent."""

    def __init__(self, initial_lr: float, exponent: float = 0.9):
        self.initial_lr, self.exponent = initial_lr, exponent

    def __call__(self, epoch: float, epochs: int) -> float:
        return self.initial_lr * (1 - epoch / epochs) ** self.exponent


class FineTuneLRScheduler(_LRScheduler):
    """The recipe's lr(e) (module docstring) for every parameter group, stepped per epoch as nnU-Net's schedulers."""

    def __init__(self, optimizer: torch.optim.Optimizer, decay: Callable[[float, int], float], num_epochs: int,
                 warmup_epochs: int = 0, heads_first_epochs: int = 0, heads_first_lr: float = 0.0):
        if num_epochs < 1:
            raise ValueError(f"fine-tuning epochs must be >= 1, got {num_epochs}")
        self.decay, self.num_epochs = decay, num_epochs
        self.warmup_epochs, self.heads_first_epochs, self.heads_first_lr = warmup_epochs, heads_first_epochs, heads_first_lr
        self.decay_epochs = max(1, num_epochs - heads_first_epochs - warmup_epochs)
        self.ctr = 0
        super().__init__(optimizer, -1)

    def lr_at(self, epoch: float) -> float:
        """lr(e) of the module docstring."""
        h, w = self.heads_first_epochs, self.warmup_epochs
        if epoch < h:
            return self.heads_first_lr * (epoch + 1) / h
        if epoch < h + w:
            return self.decay(0, self.decay_epochs) * (epoch - h + 1) / w
        return self.decay(epoch - h - w, self.decay_epochs)

    def group_lr(self, group: Mapping, epoch: float) -> float:
        """lr of a parameter group: 0 before its ``join_epoch``, then lr(e) ramped over its ``join_warmup_epochs``."""
        join, ramp = group.get("join_epoch", 0), group.get("join_warmup_epochs", 0)
        if epoch < join:
            return 0.0
        return self.lr_at(epoch) * (min(1.0, (epoch - join + 1) / ramp) if ramp else 1.0)

    def step(self, current_step=None):
        if current_step is None or current_step == -1:
            current_step = self.ctr
            self.ctr += 1
        for group in self.optimizer.param_groups:
            group["lr"] = self.group_lr(group, current_step)
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]
