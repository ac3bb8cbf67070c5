"""Hybrid-encoder U-Net (Wang et al., "Does Non-COVID19 Lung Lesion Help?"): two encoders, Selective Fusion, one decoder.

``HybridEncoderUNet`` takes the keyword arguments of dynamic-network-architectures' ``PlainConvUNet``
(so nnU-Net plans build it unchanged; ``HybridResidualEncoderUNet`` those of ``ResidualEncoderUNet``,
the ResEnc presets) and holds

- ``dedicated_encoder``: the U-Net's encoder (``PlainConvEncoder``/``ResidualEncoder``), freshly
  initialised and trained;
- ``adapted_encoder``: an encoder of identical architecture holding the pre-trained
  encoder; frozen (``requires_grad`` False, always in eval mode, run under ``torch.no_grad()`` so
  none of its activations are kept for backward) until :meth:`HybridUNetBase.set_adapted_encoder_trainable`
  lets it train (a fine-tuning recipe that unfreezes it after some epochs);
- ``fusions``: one :class:`SelectiveFusion` per encoder stage, i.e. at every skip level and at the
  bottleneck. The paper fuses "at the end of the encoder"; a U-Net decoder also reads every skip, so
  every feature map the decoder consumes is a fusion of both encoders;
- ``decoder``: the ``UNetDecoder`` of both U-Nets, built on the dedicated encoder (which it
  keeps as ``decoder.encoder``, as the plain U-Nets do), exposing ``decoder.deep_supervision``.
  All deep-supervision heads exist whatever the flag, so nnU-Net's predictor loads strictly.

:func:`hybrid_state_from_plain_unet` maps a plain U-Net (either kind) state dict (``encoder.*``, ``decoder.*``)
onto the hybrid's names.
"""
from __future__ import annotations

from typing import Mapping

import torch
from dynamic_network_architectures.architectures.unet import PlainConvUNet, ResidualEncoderUNet
from dynamic_network_architectures.building_blocks.plain_conv_encoder import PlainConvEncoder
from dynamic_network_architectures.building_blocks.residual import BasicBlockD
from dynamic_network_architectures.building_blocks.residual_encoders import ResidualEncoder
from dynamic_network_architectures.building_blocks.unet_decoder import UNetDecoder
from torch import nn

from nnunet_covid.architectures.selective_fusion import SelectiveFusion

__all__ = ["HybridUNetBase", "HybridEncoderUNet", "HybridResidualEncoderUNet", "hybrid_state_from_plain_unet",
           "DECODER_INITS", "DEDICATED_ENCODER_INITS"]

DECODER_INITS = ("pretrained", "random")
DEDICATED_ENCODER_INITS = ("random", "pretrained")


class HybridUNetBase(nn.Module):
    """Two encoders of one architecture fused per stage by :class:`SelectiveFusion`, decoded by one ``UNetDecoder``.

    ``dedicated``: trained; ``adapted``: frozen (no gradients, eval mode, run under ``torch.no_grad()``).
    Subclasses build the two encoders from plans keyword arguments.
    """

    def __init__(self, dedicated: nn.Module, adapted: nn.Module, num_classes: int, n_conv_per_stage_decoder,
                 deep_supervision: bool, nonlin_first: bool, fusion_reduction: int, fusion_min_channels: int):
        super().__init__()
        self.dedicated_encoder = dedicated
        self.adapted_encoder = adapted
        self.adapted_encoder.requires_grad_(False)
        self.fusions = nn.ModuleList(SelectiveFusion(c, fusion_reduction, fusion_min_channels)
                                     for c in dedicated.output_channels)
        self.decoder = UNetDecoder(dedicated, num_classes, n_conv_per_stage_decoder, deep_supervision,
                                   nonlin_first=nonlin_first)
        self.adapted_encoder_trainable = False
        self.adapted_encoder.eval()

    def set_adapted_encoder_trainable(self, trainable: bool) -> None:
        """Unfreeze (or freeze again) the adapted encoder: gradients, its activations kept, train mode with the rest."""
        self.adapted_encoder_trainable = trainable
        self.adapted_encoder.requires_grad_(trainable)
        self.adapted_encoder.train(self.training and trainable)

    def train(self, mode: bool = True) -> "HybridUNetBase":
        """Like ``nn.Module.train`` but a frozen adapted encoder stays in eval mode (frozen statistics, no dropout)."""
        super().train(mode)
        if not self.adapted_encoder_trainable:
            self.adapted_encoder.eval()
        return self

    def forward(self, x: torch.Tensor):
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.adapted_encoder_trainable):
            adapted_skips = self.adapted_encoder(x)
        dedicated_skips = self.dedicated_encoder(x)
        fused = [fusion(d, a) for fusion, d, a in zip(self.fusions, dedicated_skips, adapted_skips)]
        return self.decoder(fused)


class HybridEncoderUNet(HybridUNetBase):
    """Hybrid of ``PlainConvUNet``: its arguments plus ``fusion_reduction`` (r) and ``fusion_min_channels``."""

    def __init__(self, input_channels: int, n_stages: int, features_per_stage, conv_op, kernel_sizes, strides,
                 n_conv_per_stage, num_classes: int, n_conv_per_stage_decoder, conv_bias: bool = False,
                 norm_op=None, norm_op_kwargs: dict | None = None, dropout_op=None,
                 dropout_op_kwargs: dict | None = None, nonlin=None, nonlin_kwargs: dict | None = None,
                 deep_supervision: bool = False, nonlin_first: bool = False, fusion_reduction: int = 16,
                 fusion_min_channels: int = 8):
        if isinstance(n_conv_per_stage, int):
            n_conv_per_stage = [n_conv_per_stage] * n_stages
        if isinstance(n_conv_per_stage_decoder, int):
            n_conv_per_stage_decoder = [n_conv_per_stage_decoder] * (n_stages - 1)
        dedicated, adapted = (PlainConvEncoder(input_channels, n_stages, features_per_stage, conv_op, kernel_sizes,
                                               strides, n_conv_per_stage, conv_bias, norm_op, norm_op_kwargs,
                                               dropout_op, dropout_op_kwargs, nonlin, nonlin_kwargs,
                                               return_skips=True, nonlin_first=nonlin_first) for _ in range(2))
        super().__init__(dedicated, adapted, num_classes, n_conv_per_stage_decoder, deep_supervision, nonlin_first,
                         fusion_reduction, fusion_min_channels)

    initialize = staticmethod(PlainConvUNet.initialize)


class HybridResidualEncoderUNet(HybridUNetBase):
    """Hybrid of ``ResidualEncoderUNet`` (nnU-Net ResEnc plans): its arguments plus the fusion settings."""

    def __init__(self, input_channels: int, n_stages: int, features_per_stage, conv_op, kernel_sizes, strides,
                 n_blocks_per_stage, num_classes: int, n_conv_per_stage_decoder, conv_bias: bool = False,
                 norm_op=None, norm_op_kwargs: dict | None = None, dropout_op=None,
                 dropout_op_kwargs: dict | None = None, nonlin=None, nonlin_kwargs: dict | None = None,
                 deep_supervision: bool = False, block=BasicBlockD, bottleneck_channels=None,
                 stem_channels: int | None = None, fusion_reduction: int = 16, fusion_min_channels: int = 8):
        if isinstance(n_blocks_per_stage, int):
            n_blocks_per_stage = [n_blocks_per_stage] * n_stages
        if isinstance(n_conv_per_stage_decoder, int):
            n_conv_per_stage_decoder = [n_conv_per_stage_decoder] * (n_stages - 1)
        dedicated, adapted = (ResidualEncoder(input_channels, n_stages, features_per_stage, conv_op, kernel_sizes,
                                              strides, n_blocks_per_stage, conv_bias, norm_op, norm_op_kwargs,
                                              dropout_op, dropout_op_kwargs, nonlin, nonlin_kwargs, block,
                                              bottleneck_channels, return_skips=True, disable_default_stem=False,
                                              stem_channels=stem_channels) for _ in range(2))
        super().__init__(dedicated, adapted, num_classes, n_conv_per_stage_decoder, deep_supervision, False,
                         fusion_reduction, fusion_min_channels)

    initialize = staticmethod(ResidualEncoderUNet.initialize)


def hybrid_state_from_plain_unet(plain_state: Mapping[str, torch.Tensor], decoder_init: str = "pretrained",
                                 dedicated_encoder_init: str = "random") -> dict[str, torch.Tensor]:
    """Hybrid state-dict entries taken from a plain U-Net state dict (``PlainConvUNet`` key names).

    ``encoder.*`` -> ``adapted_encoder.*``; with ``decoder_init="pretrained"`` ``decoder.*`` -> ``decoder.*``
    (the decoder's own layers incl. segmentation heads; ``decoder.encoder.*``, the plain network's
    reference to its encoder, is not copied: in the hybrid it is the dedicated encoder); with
    ``dedicated_encoder_init="pretrained"`` also ``encoder.*`` -> ``dedicated_encoder.*`` and
    ``decoder.encoder.*``. Keys not returned (fusions, and the parts chosen "random") keep their
    initialisation. Shapes are not checked here; the loader checks them against the network.
    """
    if decoder_init not in DECODER_INITS:
        raise ValueError(f"decoder_init must be one of {DECODER_INITS}, got {decoder_init!r}")
    if dedicated_encoder_init not in DEDICATED_ENCODER_INITS:
        raise ValueError(f"dedicated_encoder_init must be one of {DEDICATED_ENCODER_INITS}, got "
                         f"{dedicated_encoder_init!r}")
    targets = ["adapted_encoder."]
    if dedicated_encoder_init == "pretrained":
        targets += ["dedicated_encoder.", "decoder.encoder."]
    hybrid = {}
    for key, value in plain_state.items():
        if key.startswith("encoder."):
            rest = key[len("encoder."):]
            hybrid.update({target + rest: value for target in targets})
        elif key.startswith("decoder.") and not key.startswith("decoder.encoder.") and decoder_init == "pretrained":
            hybrid[key] = value
    return hybrid
