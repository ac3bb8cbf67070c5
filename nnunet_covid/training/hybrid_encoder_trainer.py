"""Hybrid-encoder transfer (Wang et al., REFERENCE 1.2) as an nnU-Net trainer: ``HybridEncoderTrainer``.

Network: :class:`~nnunet_covid.architectures.hybrid_encoder_unet.HybridEncoderUNet` built from the
plans' ``PlainConvUNet`` arguments (``HybridResidualEncoderUNet`` for ResEnc plans) — a fresh dedicated encoder (trained), the pre-trained adapted
encoder (frozen, eval mode, no stored activations), Selective Fusion (r = ``fusion_reduction``) at
every skip level and the bottleneck, one decoder initialised from the pre-trained decoder
(``decoder_init`` in ``trainer_configs/hybrid_encoder.json``: "pretrained" or "random").

How the pre-trained plain U-Net gets in, for every nnU-Net entry point:

- fresh training: ``initialize()`` builds the plans' *plain* U-Net, so nnU-Net's stock
  ``-pretrained_weights`` loader (which demands every key of the network) fills it; without the flag
  the base class loads the convention checkpoint into it (``nnUNet_covid_pretrained`` or the
  ``"pretrained"`` entry of the config). Once the weights are in place
  (:meth:`on_pretrained_weights_loaded`, before the data loaders start) the plain network is
  converted: encoder -> adapted encoder, decoder -> decoder, fresh dedicated encoder and fusions;
  the optimizer and poly schedule are rebuilt over the trainable parameters and torch.compile /
  DDP wrapping is re-applied as in ``nnUNetTrainer.initialize``;
- ``--c`` / ``--val`` / ``--val_best``: :meth:`load_checkpoint` converts the (still plain) network
  to the hybrid architecture before restoring the hybrid checkpoint and optimizer state;
- ``nnUNetv2_predict``: :meth:`build_network_architecture` (static) returns the hybrid network,
  deep supervision off, and the checkpoint loads strictly.

``fusion_reduction`` and ``fusion_min_channels`` are class attributes, not config entries: they fix
parameter shapes, and ``nnUNetv2_predict`` rebuilds the network from the trainer class alone.
"""
from __future__ import annotations

import os

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from nnunet_covid.architectures.hybrid_encoder_unet import (DECODER_INITS, DEDICATED_ENCODER_INITS,
                                                            HybridUNetBase, hybrid_state_from_plain_unet)
from nnunet_covid.training.pretrained_weights import (SEG_LAYER_KEYS, LoadReport, PretrainedTransferTrainer,
                                                      PretrainedWeightsError, load_pretrained_state,
                                                      read_checkpoint, strip_wrapper_prefixes, unwrap_network)
from nnunet_covid.training.short_variants import FiveEpochs, Tiny
from nnunet_covid.training.trainer_config import TrainerConfigError

__all__ = ["HybridEncoderTrainer", "HybridEncoderTrainer_5epochs", "HybridEncoderTrainer_tiny"]

HYBRID_OF = {"PlainConvUNet": "nnunet_covid.architectures.hybrid_encoder_unet.HybridEncoderUNet",
             "ResidualEncoderUNet": "nnunet_covid.architectures.hybrid_encoder_unet.HybridResidualEncoderUNet"}


def load_plain_unet_into_hybrid(hybrid: nn.Module, checkpoint_or_state, decoder_init: str = "pretrained",
                                dedicated_encoder_init: str = "random") -> LoadReport:
    """Fill ``hybrid`` (a hybrid U-Net, possibly wrapped) from a plain U-Net checkpoint or state dict.

    The adapted encoder always comes from the checkpoint's ``encoder.*``; the decoder from ``decoder.*``
    when ``decoder_init == "pretrained"`` (segmentation heads only where their shape matches); the
    dedicated encoder stays fresh unless ``dedicated_encoder_init == "pretrained"``; fusions stay fresh.
    Missing keys or shape mismatches raise ONE :class:`PretrainedWeightsError` listing them all.
    """
    if isinstance(checkpoint_or_state, (str, os.PathLike)):
        checkpoint_or_state = read_checkpoint(checkpoint_or_state)
    source = checkpoint_or_state.get("_path", "a plain U-Net state dict")
    weights = strip_wrapper_prefixes(checkpoint_or_state.get("network_weights", checkpoint_or_state))
    mapped = hybrid_state_from_plain_unet(weights, decoder_init, dedicated_encoder_init)
    skip = ["fusions."]
    if dedicated_encoder_init != "pretrained":
        skip += ["dedicated_encoder.", "decoder.encoder."]
    if decoder_init != "pretrained":
        skip += ["decoder."]
    try:
        return load_pretrained_state(hybrid, {"network_weights": mapped, "_path": source}, skip=skip,
                                     optional=SEG_LAYER_KEYS)
    except PretrainedWeightsError as e:
        raise PretrainedWeightsError(f"{e}\n  (hybrid keys adapted_encoder.* are read from the checkpoint's encoder.*"
                                     ", decoder.* from its decoder.*: a plain U-Net checkpoint of the same plans is "
                                     "expected)") from None


class HybridEncoderTrainer(PretrainedTransferTrainer):
    """Dedicated (fresh) + adapted (pre-trained, frozen) encoder with Selective Fusion; see the module docstring."""

    strategy = "hybrid_encoder"
    fusion_reduction = 16
    fusion_min_channels = 8

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.decoder_init = self.transfer_config.get("decoder_init", "pretrained")
        self.dedicated_encoder_init = self.transfer_config.get("dedicated_encoder_init", "random")
        if self.decoder_init not in DECODER_INITS:
            raise TrainerConfigError(f"{self.strategy}.json: 'decoder_init' must be one of {DECODER_INITS}, got "
                                     f"{self.decoder_init!r}")
        if self.dedicated_encoder_init not in DEDICATED_ENCODER_INITS:
            raise TrainerConfigError(f"{self.strategy}.json: 'dedicated_encoder_init' must be one of "
                                     f"{DEDICATED_ENCODER_INITS}, got {self.dedicated_encoder_init!r}")

    @classmethod
    def build_network_architecture(cls, plans_manager: PlansManager, configuration_manager: ConfigurationManager,
                                   num_input_channels: int, num_output_channels: int,
                                   enable_deep_supervision: bool = True) -> nn.Module:
        """The hybrid of the plans' U-Net (``PlainConvUNet`` or ``ResidualEncoderUNet``), same arguments; also used by
        ``nnUNetv2_predict``."""
        arch = configuration_manager.network_arch_class_name
        hybrid_class = HYBRID_OF.get(arch.split(".")[-1])
        if hybrid_class is None:
            raise PretrainedWeightsError(f"{cls.__name__} supports plans whose network is one of {sorted(HYBRID_OF)}; "
                                         f"configuration '{configuration_manager.data_identifier}' uses {arch}")
        kwargs = {**configuration_manager.network_arch_init_kwargs, "fusion_reduction": cls.fusion_reduction,
                  "fusion_min_channels": cls.fusion_min_channels}
        return get_network_from_plans(hybrid_class, kwargs, configuration_manager.network_arch_init_kwargs_req_import,
                                      num_input_channels, num_output_channels, allow_init=True,
                                      deep_supervision=enable_deep_supervision)

    def initialize(self):
        """nnU-Net's ``initialize`` with the plans' plain U-Net as ``self.network`` (the stock loader's target)."""
        self.build_network_architecture = nnUNetTrainer.build_network_architecture  # instance attribute, this call only
        try:
            super().initialize()
        finally:
            del self.build_network_architecture

    def is_hybrid(self) -> bool:
        return isinstance(unwrap_network(self.network), HybridUNetBase)

    def convert_to_hybrid(self) -> LoadReport:
        """Replace the plain network by the hybrid one filled from it; rebuild optimizer, schedule and wrappers."""
        plain = unwrap_network(self.network)
        hybrid = self.build_network_architecture(self.plans_manager, self.configuration_manager,
                                                 self.num_input_channels, self.label_manager.num_segmentation_heads,
                                                 self.enable_deep_supervision).to(self.device)
        report = load_plain_unet_into_hybrid(hybrid, plain.state_dict(), self.decoder_init,
                                             self.dedicated_encoder_init)
        if self._do_i_compile():
            hybrid = torch.compile(hybrid)
        self.network = hybrid
        self.optimizer, self.lr_scheduler = self.configure_optimizers()
        if self.is_ddp:
            self.network = DistributedDataParallel(torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.network),
                                                   device_ids=[self.local_rank])
        return report

    def frozen_modules(self) -> list[nn.Module]:
        """The configured frozen modules of the hybrid network; none while the plain network is a placeholder."""
        return super().frozen_modules() if self.is_hybrid() else []

    def on_pretrained_weights_loaded(self, checkpoint: dict | None) -> None:
        report = self.convert_to_hybrid()
        trainable = sum(p.numel() for p in self.network.parameters() if p.requires_grad)
        total = sum(p.numel() for p in self.network.parameters())
        self.print_to_log_file(
            f"hybrid encoder: adapted encoder and {'decoder' if self.decoder_init == 'pretrained' else 'no decoder'} "
            f"from the pre-trained U-Net ({len(report.loaded)} tensors; fresh: {report.reinitialised or 'none'}), "
            f"dedicated encoder {self.dedicated_encoder_init}, Selective Fusion r={self.fusion_reduction}; "
            f"{trainable}/{total} parameters trainable")

    def load_checkpoint(self, filename_or_checkpoint) -> None:
        """Restore a hybrid checkpoint (``--c``, ``--val``): switch to the hybrid architecture first."""
        if not self.was_initialized:
            self.initialize()
        if not self.is_hybrid():
            self.convert_to_hybrid()
        super().load_checkpoint(filename_or_checkpoint)

    def provenance(self) -> dict:
        return {**super().provenance(), "decoder_init": self.decoder_init,
                "dedicated_encoder_init": self.dedicated_encoder_init, "fusion_reduction": self.fusion_reduction,
                "fusion_min_channels": self.fusion_min_channels}


class HybridEncoderTrainer_5epochs(FiveEpochs, HybridEncoderTrainer):
    pass


class HybridEncoderTrainer_tiny(Tiny, HybridEncoderTrainer):
    pass
