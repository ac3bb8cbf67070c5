"""Transfer strategies of Wang et al. (REFERENCE 1.2) as nnU-Net trainers on a pre-trained model.

Each reads ``trainer_configs/<strategy>.json`` and gets its pre-trained weights through
:class:`~nnunet_covid.training.transfer_trainer.PretrainedTransferTrainer` (``-pretrained_weights``
or the documented convention).

- :class:`ContinualLearningTrainer` (``continual_learning.json``): all weights trainable; the
  pre-training's poly schedule continues from ``resume_fraction`` of its epochs
  (:mod:`~nnunet_covid.training.continual_schedule`). lr0 and E_pre come from the pre-training
  checkpoint's log (first logged lr, epochs trained) when it was found by convention, else from
  ``pretraining_initial_lr`` / ``pretraining_epochs``. SGD momentum restarts (fresh optimizer).
- :class:`BodyFineTuneTrainer` (``body_finetune.json``): all weights from the pre-trained model,
  fresh SGD and poly schedule from ``initial_lr`` (1e-3).
- :class:`FrozenEncoderTrainer` (``frozen_encoder.json``): the pre-trained encoder frozen
  (``frozen_modules: ["encoder"]``), only the decoder (incl. segmentation heads) trains.

Their short variants (``_5epochs``, ``_tiny``, ``_demo``) and fine-tuning recipe variants (``_warmup``,
``_headsfirst``, ``_unfreeze``: the ``"recipes"`` of each config, see
:mod:`~nnunet_covid.training.finetune_schedule`) are in :mod:`~nnunet_covid.training.variants`.
"""
from __future__ import annotations

import json

import torch

from nnunet_covid.core.errors import TrainerConfigError
from nnunet_covid.training.continual_schedule import ContinuedPolyLRScheduler
from nnunet_covid.training.trainer_config import config_value
from nnunet_covid.training.transfer_trainer import PretrainedTransferTrainer

__all__ = ["ContinualLearningTrainer", "BodyFineTuneTrainer", "FrozenEncoderTrainer"]


class ContinualLearningTrainer(PretrainedTransferTrainer):
    """Keep training the pre-trained model on the target task along the pre-training's decaying poly curve."""

    strategy = "continual_learning"

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        config = self.transfer_config
        self.pretraining_initial_lr = config_value(config, "pretraining_initial_lr", float, self.strategy)
        self.pretraining_epochs = config_value(config, "pretraining_epochs", int, self.strategy)
        self.resume_fraction = config_value(config, "resume_fraction", float, self.strategy)
        if not 0 <= self.resume_fraction < 1:
            raise TrainerConfigError(f"{self.strategy}.json: resume_fraction must lie in [0, 1), got "
                                     f"{self.resume_fraction}")
        self.schedule_source = f"{self.strategy}.json"

    def build_lr_scheduler(self, optimizer: torch.optim.Optimizer) -> ContinuedPolyLRScheduler:
        """The continued pre-training curve, after the recipe's heads-first and warm-up epochs (if any)."""
        recipe = self.finetune_recipe.scaled(self.num_epochs)
        return ContinuedPolyLRScheduler(optimizer, self.pretraining_initial_lr, self.pretraining_epochs,
                                        self.resume_fraction * self.pretraining_epochs, self.num_epochs,
                                        warmup_epochs=recipe.warmup_epochs,
                                        heads_first_epochs=recipe.heads_first_epochs,
                                        heads_first_lr=recipe.heads_first_lr)

    def set_pretraining_schedule(self, initial_lr: float, epochs: int, source: str) -> None:
        """Use the pre-training's ``initial_lr`` and ``epochs`` for the continued schedule."""
        self.pretraining_initial_lr, self.pretraining_epochs, self.schedule_source = float(initial_lr), int(epochs), source
        self.lr_scheduler = self.build_lr_scheduler(self.optimizer)

    def on_pretrained_weights_loaded(self, checkpoint: dict | None) -> None:
        lrs = (checkpoint or {}).get("logging", {}).get("lrs") or []
        epochs = (checkpoint or {}).get("current_epoch", 0)
        if lrs and epochs > 0:
            self.set_pretraining_schedule(lrs[0], epochs, f"pre-training checkpoint log {checkpoint['_path']}")
        self.print_to_log_file(
            f"continual schedule: pre-training lr0 {self.pretraining_initial_lr}, {self.pretraining_epochs} epochs "
            f"({self.schedule_source}); resuming at epoch {self.lr_scheduler.resume_epoch:g} "
            f"(lr {self.lr_scheduler.decay(0, self.lr_scheduler.decay_epochs):.6g})")

    def provenance(self) -> dict:
        return {**super().provenance(), "pretraining_initial_lr": self.pretraining_initial_lr,
                "pretraining_epochs": self.pretraining_epochs, "resume_fraction": self.resume_fraction,
                "schedule_source": self.schedule_source}

    def load_checkpoint(self, filename_or_checkpoint) -> None:
        """Resuming (``--c``/``--val``) restores the schedule recorded in ``pretrained_source.json`` at the start."""
        super().load_checkpoint(filename_or_checkpoint)
        record = self.provenance_file()
        if record.is_file():
            saved = json.loads(record.read_text())
            self.resume_fraction = saved["resume_fraction"]
            self.set_pretraining_schedule(saved["pretraining_initial_lr"], saved["pretraining_epochs"],
                                          saved["schedule_source"])


class BodyFineTuneTrainer(PretrainedTransferTrainer):
    """All weights initialised from the pre-trained model, all trainable, fresh optimizer and poly schedule."""

    strategy = "body_finetune"


class FrozenEncoderTrainer(PretrainedTransferTrainer):
    """Pre-trained lesion representations: the pre-trained encoder is frozen, only the decoder trains."""

    strategy = "frozen_encoder"

