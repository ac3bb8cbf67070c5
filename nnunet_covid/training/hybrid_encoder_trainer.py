"""Hybrid-encoder transfer (Wang et al., REFERENCE 1.2) as an nnU-Net trainer: ``HybridEncoderTrainer``.

Network: :class:`~nnunet_covid.architectures.hybrid_encoder_unet.HybridEncoderUNet` built from the
plans' ``PlainConvUNet`` arguments (``HybridResidualEncoderUNet`` for ResEnc plans) — a fresh dedicated
encoder (trained), the pre-trained adapted encoder (frozen, eval mode, no stored activations),
Selective Fusion (r = ``fusion_reduction``) at every skip level and the bottleneck, one decoder
initialised from the pre-trained decoder (``decoder_init`` in ``trainer_configs/hybrid_encoder.json``:
"pretrained" or "random").

The trainer builds the hybrid network in ``initialize()`` — the same network ``nnUNetv2_predict``
rebuilds with :meth:`HybridEncoderTrainer.build_network_architecture` — and never changes it. The
pre-trained *plain* U-Net checkpoint (``PlainConvUNet`` for plain plans, ``ResidualEncoderUNet`` for ResEnc
plans; stock ``-pretrained_weights`` or the convention, see :mod:`~nnunet_covid.training.transfer_trainer`)
is mapped onto it by :func:`load_plain_unet_into_hybrid`: ``encoder.*`` -> ``adapted_encoder.*``,
``decoder.*`` -> ``decoder.*``, under the config's load policy (input channels, partial loads, an
encoder-only checkpoint). With an unfreezing recipe the adapted encoder trains from epoch K on
(:meth:`HybridEncoderTrainer.on_unfreeze`). ``--c`` and ``--val`` restore the hybrid checkpoint directly.

``fusion_reduction`` and ``fusion_min_channels`` are class attributes, not config entries: they fix
parameter shapes, and ``nnUNetv2_predict`` rebuilds the network from the trainer class alone.
"""
from __future__ import annotations

import os
from typing import Mapping

import torch
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager
from torch import nn

from nnunet_covid.architectures.hybrid_encoder_unet import DEDICATED_ENCODER_INITS, hybrid_state_from_plain_unet
from nnunet_covid.core.errors import CheckpointError, TrainerConfigError
from nnunet_covid.training.checkpoints import LoadPolicy, LoadReport, load_state, normalise_state_dict, read_checkpoint
from nnunet_covid.training.transfer_trainer import PretrainedTransferTrainer

__all__ = ["HybridEncoderTrainer"]

HYBRID_OF = {"PlainConvUNet": "nnunet_covid.architectures.hybrid_encoder_unet.HybridEncoderUNet",
             "ResidualEncoderUNet": "nnunet_covid.architectures.hybrid_encoder_unet.HybridResidualEncoderUNet"}


def load_plain_unet_into_hybrid(hybrid: nn.Module, checkpoint_or_state, decoder_init: str = "pretrained",
                                dedicated_encoder_init: str = "random", source: str | None = None,
                                policy: LoadPolicy = LoadPolicy()) -> LoadReport:
    """Fill ``hybrid`` (a hybrid U-Net, possibly wrapped) from a plain U-Net checkpoint or state dict.

    The adapted encoder always comes from the checkpoint's ``encoder.*``; the decoder from ``decoder.*``
    when ``decoder_init == "pretrained"`` (segmentation heads only where their shape matches; re-initialised
    when the checkpoint holds no decoder); the dedicated encoder stays fresh unless
    ``dedicated_encoder_init == "pretrained"``; fusions stay fresh. Tensors that do not fit raise ONE
    :class:`CheckpointError` listing them all, unless ``policy`` allows a partial load.
    """
    if isinstance(checkpoint_or_state, (str, os.PathLike)):
        checkpoint_or_state = read_checkpoint(checkpoint_or_state)
    source = source or checkpoint_or_state.get("_path", "a plain U-Net state dict")
    weights, notes = normalise_state_dict(checkpoint_or_state.get("network_weights", checkpoint_or_state))
    mapped = hybrid_state_from_plain_unet(weights, decoder_init, dedicated_encoder_init)
    skip = ["fusions."]
    if dedicated_encoder_init != "pretrained":
        skip += ["dedicated_encoder.", "decoder.encoder."]
    if decoder_init != "pretrained":
        skip += ["decoder."]
    try:
        report = load_state(hybrid, mapped, source, skip=skip, policy=policy, encoder_prefix="adapted_encoder.",
                            notes=notes)
    except CheckpointError as e:
        raise CheckpointError(f"{e}\n  (hybrid keys adapted_encoder.* are read from the checkpoint's encoder.*"
                              ", decoder.* from its decoder.*)") from None
    # checkpoint names of the mapped tensors that did not load (decoder.encoder.* repeats encoder.*)
    mapped_back = {"encoder." + k[len("adapted_encoder."):] if k.startswith("adapted_encoder.") else k: reason
                   for k, reason in report.unused.items()}
    report.unused = {k: mapped_back.get(k, "not mapped onto the hybrid network") for k in weights
                     if k in mapped_back or k not in mapped and not k.startswith(("encoder.", "decoder.encoder."))}
    return report


class HybridEncoderTrainer(PretrainedTransferTrainer):
    """Dedicated (fresh) + adapted (pre-trained, frozen) encoder with Selective Fusion; see the module docstring."""

    strategy = "hybrid_encoder"
    fusion_reduction = 16
    fusion_min_channels = 8

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.dedicated_encoder_init = self.transfer_config.get("dedicated_encoder_init", "random")
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
            raise TrainerConfigError(f"{cls.__name__} supports plans whose network is one of {sorted(HYBRID_OF)}; "
                                     f"configuration '{configuration_manager.data_identifier}' uses {arch}")
        kwargs = {**configuration_manager.network_arch_init_kwargs, "fusion_reduction": cls.fusion_reduction,
                  "fusion_min_channels": cls.fusion_min_channels}
        return get_network_from_plans(hybrid_class, kwargs, configuration_manager.network_arch_init_kwargs_req_import,
                                      num_input_channels, num_output_channels, allow_init=True,
                                      deep_supervision=enable_deep_supervision)

    def load_into_network(self, weights: Mapping[str, torch.Tensor], source: str) -> LoadReport:
        """The plain U-Net checkpoint mapped onto the hybrid network (:func:`load_plain_unet_into_hybrid`)."""
        return load_plain_unet_into_hybrid(self.unwrapped_network, weights, self.decoder_init,
                                           self.dedicated_encoder_init, source, self.load_policy)

    def on_unfreeze(self) -> None:
        """The adapted encoder trains from now on: gradients through it, train mode (the architecture's switch)."""
        super().on_unfreeze()
        self.unwrapped_network.set_adapted_encoder_trainable(True)

    def on_pretrained_weights_loaded(self, checkpoint: dict | None) -> None:
        network = self.unwrapped_network
        trainable = sum(p.numel() for p in network.parameters() if p.requires_grad)
        total = sum(p.numel() for p in network.parameters())
        self.print_to_log_file(
            f"hybrid encoder: adapted encoder and {'decoder' if self.decoder_init == 'pretrained' else 'no decoder'} "
            f"from the pre-trained U-Net, dedicated encoder {self.dedicated_encoder_init}, Selective Fusion "
            f"r={self.fusion_reduction}; {trainable}/{total} parameters trainable")

    def provenance(self) -> dict:
        return {**super().provenance(), "dedicated_encoder_init": self.dedicated_encoder_init, "fusion_reduction": self.fusion_reduction,
                "fusion_min_channels": self.fusion_min_channels}

