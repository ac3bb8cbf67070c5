"""The base of every transfer trainer: pre-trained weights in, frozen parts out, one report of what was loaded.

Two ways to give a transfer trainer its pre-trained weights:

- the stock flag ``nnUNetv2_train ... -pretrained_weights PATH``: nnU-Net reads the file and hands its
  tensors, without the segmentation heads, to this trainer's loader
  (:mod:`~nnunet_covid.training.stock_pretrained_weights` says how); nnU-Net's ``torch.load`` has no
  ``map_location``, so a checkpoint saved on a GPU needs a GPU there;
- by convention, without the flag: ``$nnUNet_covid_pretrained`` or the ``"pretrained"`` entry of
  ``trainer_configs/<strategy>.json`` (:func:`~nnunet_covid.training.checkpoints.resolve_pretrained_checkpoint`),
  read onto the CPU; the segmentation head is copied when its shape matches (same label count).

Either way :meth:`PretrainedTransferTrainer.load_pretrained` maps the tensors onto the network
(:meth:`~PretrainedTransferTrainer.load_into_network`, which the hybrid trainer overrides) under the
config's :class:`~nnunet_covid.training.checkpoints.LoadPolicy` (other input channels, partial loads of
other plans, encoder-only checkpoints), logs the :class:`~nnunet_covid.training.checkpoints.LoadReport`,
runs :meth:`~PretrainedTransferTrainer.on_pretrained_weights_loaded` and writes
``<fold>/pretrained_source.json``. The network is built once, in ``initialize()``, with the
architecture it trains and predicts with. Resumed runs (``--c`` with a checkpoint) and ``--val``
restore their own checkpoint and load nothing.

Config keys used here (``trainer_configs/<strategy>.json``, with the entry ``"recipes": {<recipe>: {...}}``
of the class's ``recipe`` laid over them): ``initial_lr`` (optional, else nnU-Net's 1e-2);
``frozen_modules`` (optional, dotted sub-module names of the network, e.g. ``["encoder"]``): their
parameters get ``requires_grad=False``, get no rate, and the modules stay in ``eval()`` during
training (frozen normalisation statistics; nnU-Net's InstanceNorm keeps none, BatchNorm would);
``decoder_init`` (``"pretrained"``, default, or ``"random"``: the decoder keeps its initialisation);
the load policy's ``partial_load``, ``min_encoder_fraction``, ``input_channel_adaptation``; the
recipe's ``warmup_epochs``, ``heads_first_epochs``, ``heads_first_lr``, ``unfreeze_after_epochs``,
``unfreeze_warmup_epochs``, ``recipe_epochs`` (:mod:`~nnunet_covid.training.finetune_schedule`).

DDP (``-num_gpus N``): parameters are frozen or held back before nnU-Net wraps the network in DDP
(DDP ignores them); when a held-back group joins training the trainer wraps the module in DDP again
(:mod:`~nnunet_covid.training.staged_parameters`). Every rank loads the same checkpoint into its
unwrapped module, and only rank 0 writes ``pretrained_source.json``.
"""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Mapping

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from torch import nn

from nnunet_covid.architectures.hybrid_encoder_unet import DECODER_INITS
from nnunet_covid.core.errors import TrainerConfigError
from nnunet_covid.training.checkpoints import (PROVENANCE_FILE, LoadPolicy, LoadReport, load_state, read_checkpoint,
                                               resolve_pretrained_checkpoint, write_provenance)
from nnunet_covid.training.finetune_schedule import FineTuneLRScheduler, FineTuneRecipe, PolyDecay
from nnunet_covid.training.network_wrapping import unwrap_network
from nnunet_covid.training.staged_parameters import join_due_groups, parameter_groups, rewrap_ddp
from nnunet_covid.training.stock_pretrained_weights import PretrainedWeightsInbox
from nnunet_covid.training.trainer_config import config_value, load_trainer_config

__all__ = ["PretrainedTransferTrainer"]

STOCK_FLAG_SOURCE = "-pretrained_weights (nnU-Net's flag)"
STOCK_FLAG_HEAD_REASON = "segmentation head: nnU-Net's -pretrained_weights never transfers it"


class PretrainedTransferTrainer(nnUNetTrainer):
    """Base of every transfer trainer (see the module docstring).

    Subclasses set ``strategy`` (the name of their ``trainer_configs/<strategy>.json``, available as
    ``self.transfer_config``), variants ``recipe`` (a key of its ``"recipes"``), and may override
    :meth:`load_into_network`, :meth:`on_pretrained_weights_loaded`, :meth:`build_lr_scheduler`,
    :meth:`on_unfreeze` and :meth:`provenance`.
    """

    strategy: str = ""
    recipe: str = ""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.transfer_config = load_trainer_config(self.strategy, self.recipe)
        self.initial_lr = config_value(self.transfer_config, "initial_lr", float, self.strategy, self.initial_lr)
        self.frozen_module_names: list[str] = list(self.transfer_config.get("frozen_modules", []))
        self.decoder_init = self.transfer_config.get("decoder_init", "pretrained")
        if self.decoder_init not in DECODER_INITS:
            raise TrainerConfigError(f"{self.strategy}.json: 'decoder_init' must be one of {DECODER_INITS}, got "
                                     f"{self.decoder_init!r}")
        self.load_policy = LoadPolicy.from_config(self.transfer_config, self.strategy)
        self.finetune_recipe = FineTuneRecipe.from_config(self.transfer_config, self.strategy)
        self.modules_unfrozen = False
        self.pretrained_source: str | None = None
        self.load_report: LoadReport | None = None
        self._restoring_checkpoint = False

    # --- the network, and the inbox nnU-Net's -pretrained_weights writes into (stock_pretrained_weights.py)
    @property
    def network(self):
        network = self.__dict__.get("_network")
        if self.__dict__.get("_awaiting_pretrained_weights"):
            return PretrainedWeightsInbox(network, self._receive_stock_weights)
        return network

    @network.setter
    def network(self, value) -> None:
        self.__dict__["_network"] = value

    @property
    def unwrapped_network(self) -> nn.Module:
        """The network inside nnU-Net's torch.compile / DDP wrappers."""
        return unwrap_network(self.__dict__["_network"])

    def initialize(self):
        super().initialize()
        self._awaiting_pretrained_weights = not self._restoring_checkpoint

    def load_checkpoint(self, filename_or_checkpoint) -> None:
        self._restoring_checkpoint = True
        self._awaiting_pretrained_weights = False
        super().load_checkpoint(filename_or_checkpoint)

    def on_train_start(self):
        if not self.was_initialized:
            self.initialize()
        self.ensure_pretrained_weights()
        super().on_train_start()

    # --- loading
    def ensure_pretrained_weights(self) -> None:
        """Load the convention checkpoint unless weights already came (``-pretrained_weights``, ``--c``, ``--val``)."""
        if not self.__dict__.get("_awaiting_pretrained_weights"):
            return
        checkpoint = read_checkpoint(resolve_pretrained_checkpoint(self.strategy, self.transfer_config))
        self.load_pretrained(checkpoint["network_weights"], checkpoint["_path"], checkpoint)

    def _receive_stock_weights(self, weights: Mapping[str, torch.Tensor]) -> None:
        self.load_pretrained(weights, STOCK_FLAG_SOURCE, None)

    def load_pretrained(self, weights: Mapping[str, torch.Tensor], source: str, checkpoint: dict | None) -> LoadReport:
        """Load ``weights`` into the network, log and record the report, run the hook. ``checkpoint`` is the whole
        checkpoint when it was read by convention (None for the stock flag, which passes only tensors)."""
        self._awaiting_pretrained_weights = False
        report = self.load_into_network(weights, source)
        if source == STOCK_FLAG_SOURCE:
            report.reinitialised.update({k: STOCK_FLAG_HEAD_REASON for k in report.reinitialised if ".seg_layers." in k})
        self.pretrained_source, self.load_report = source, report
        self.print_to_log_file(f"pre-trained weights: {source}\n{report.summary()}")
        self.on_pretrained_weights_loaded(checkpoint)
        self.write_provenance()
        return report

    def load_into_network(self, weights: Mapping[str, torch.Tensor], source: str) -> LoadReport:
        """Copy ``weights`` into the network under the load policy (same key names; heads only where their shape
        matches; the decoder kept fresh with ``decoder_init: random``)."""
        skip = ["decoder."] if self.decoder_init == "random" else []
        return load_state(self.unwrapped_network, weights, source, skip=skip, policy=self.load_policy)

    def on_pretrained_weights_loaded(self, checkpoint: dict | None) -> None:
        """Hook after the pre-trained weights are in place; ``checkpoint`` is None when the stock flag gave them."""

    def provenance(self) -> dict:
        """What ``pretrained_source.json`` records; subclasses add their settings."""
        return {"trainer": self.__class__.__name__, "strategy": self.strategy, "recipe": self.recipe or None,
                "pretrained": self.pretrained_source, "decoder_init": self.decoder_init,
                "load_policy": self.load_policy.to_json(),
                "finetune_recipe": asdict(self.finetune_recipe.scaled(self.num_epochs)),
                "load_report": self.load_report.to_json() if self.load_report else None}

    def write_provenance(self) -> None:
        if self.local_rank == 0:
            write_provenance(self.output_folder, self.provenance())

    # --- freezing and optimisation
    def frozen_modules(self) -> list[nn.Module]:
        """The configured frozen sub-modules of the (unwrapped) network."""
        module = self.unwrapped_network
        found = []
        for name in self.frozen_module_names:
            try:
                found.append(module.get_submodule(name))
            except AttributeError:
                raise TrainerConfigError(f"{self.strategy}.json: frozen module '{name}' does not exist in "
                                         f"{type(module).__name__}") from None
        return found

    def configure_optimizers(self):
        """nnU-Net's SGD (Nesterov 0.99) over the recipe's parameter groups: frozen modules get no gradients and are
        in no group unless the recipe unfreezes them; groups that join later are held back until their epoch."""
        for frozen in self.frozen_modules():
            frozen.requires_grad_(False)
        recipe = self.finetune_recipe.scaled(self.num_epochs)
        groups = parameter_groups(self.unwrapped_network, self.frozen_modules(), recipe)
        optimizer = torch.optim.SGD(groups, self.initial_lr, weight_decay=self.weight_decay, momentum=0.99,
                                    nesterov=True)
        self.print_to_log_file(
            f"fine-tuning recipe {self.recipe or '(none)'} over {self.num_epochs} epochs: {recipe.describe()}; "
            "parameter groups: " + ", ".join(f"{g['name']} ({len(g['params'])} tensors, from epoch {g['join_epoch']})"
                                             for g in groups))
        return optimizer, self.build_lr_scheduler(optimizer)

    def build_lr_scheduler(self, optimizer: torch.optim.Optimizer):
        """The recipe's warm-up, then nnU-Net's poly decay from ``self.initial_lr``
        (:class:`~nnunet_covid.training.finetune_schedule.FineTuneLRScheduler`)."""
        recipe = self.finetune_recipe.scaled(self.num_epochs)
        return FineTuneLRScheduler(optimizer, PolyDecay(self.initial_lr), self.num_epochs, recipe.warmup_epochs,
                                   recipe.heads_first_epochs, recipe.heads_first_lr)

    def on_train_epoch_start(self):
        self.join_due_parameters()
        super().on_train_epoch_start()  # network.train(), lr of this epoch
        if not self.modules_unfrozen:
            for frozen in self.frozen_modules():
                frozen.eval()

    def join_due_parameters(self) -> None:
        """Let the held-back parameter groups whose epoch has come train; under DDP wrap the module again."""
        joined = join_due_groups(self.optimizer, self.current_epoch)
        if not joined:
            return
        if any(g["name"] == "unfrozen" for g in joined):
            self.on_unfreeze()
        if self.is_ddp:
            self.network = rewrap_ddp(self.network)
        self.print_to_log_file(f"epoch {self.current_epoch}: parameter groups " +
                               ", ".join(f"{g['name']} ({len(g['params'])} tensors)" for g in joined) +
                               " join training" + (" (DDP wrapper rebuilt)" if self.is_ddp else ""))

    def on_unfreeze(self) -> None:
        """The frozen modules train from now on (train mode); the hybrid also lets its adapted encoder keep gradients."""
        self.modules_unfrozen = True

    def provenance_file(self) -> Path:
        return Path(self.output_folder) / PROVENANCE_FILE
