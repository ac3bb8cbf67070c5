"""Hybrid-encoder U-Net (Wang et al., "Does Non-COVID19 Lung Lesion Help?"): two encoders, Selective Fusion, one decoder.

``HybridEncoderUNet`` takes the keyword arguments of dynamic-network-architectures' ``PlainConvUNet``
(so nnU-Net plans build it unchanged) and holds

- ``dedicated_encoder``: a ``PlainConvEncoder``, freshly initialised and trained;
- ``adapted_encoder``: a ``PlainConvEncoder`` of identical architecture holding the pre-trained
  encoder; frozen (``requires_grad`` False, always in eval mode, run under ``torch.no_grad()`` so
  none of its activations are kept for backward);
- ``fusions``: one :class:`SelectiveFusion` per encoder stage, i.e. at every skip level and at the
  bottleneck. The paper fuses "at the end of the encoder"; a U-Net decoder also reads every skip, so
  every feature map the decoder consumes is a fusion of both encoders;
- ``decoder``: the ``UNetDecoder`` of ``PlainConvUNet``, built on the dedicated encoder (which it
  keeps as ``decoder.encoder``, as in ``PlainConvUNet``), exposing ``decoder.deep_supervision``.
  All deep-supervision heads exist whatever the flag, so nnU-Net's predictor loads strictly.

:func:`hybrid_state_from_plain_unet` maps a plain U-Net state dict (``encoder.*``, ``decoder.*``)
onto the hybrid's names.
"""
from __future__ import annotations

from typing import Mapping

import torch
from dynamic_network_architectures.building_blocks.plain_conv_encoder import PlainConvEncoder
from dynamic_network_architectures.building_blocks.unet_decoder import UNetDecoder
from dynamic_network_architectures.initialization.weight_init import InitWeights_He
from torch import nn

from nnunet_covid.architectures.selective_fusion import SelectiveFusion

__all__ = ["HybridEncoderUNet", "hybrid_state_from_plain_unet", "DECODER_INITS", "DEDICATED_ENCODER_INITS"]

DECODER_INITS = ("pretrained", "random")
DEDICATED_ENCODER_INITS = ("random", "pretrained")


class HybridEncoderUNet(nn.Module):
    """Dedicated (trained) + adapted (frozen) ``PlainConvEncoder`` fused per stage, shared ``UNetDecoder``.

    Arguments are those of ``PlainConvUNet`` plus ``fusion_reduction`` (r of Selective Fusion) and
    ``fusion_min_channels`` (its lower bound on the squeezed width).
    """

    def __init__(self, input_channels: int, n_stages: int, features_per_stage, conv_op, kernel_sizes, strides,
                 n_conv_per_stage, num_classes: int, n_conv_per_stage_decoder, conv_bias: bool = False,
                 norm_op=None, norm_op_kwargs: dict | None = None, dropout_op=None,
                 dropout_op_kwargs: dict | None = None, nonlin=None, nonlin_kwargs: dict | None = None,
                 deep_supervision: bool = False, nonlin_first: bool = False, fusion_reduction: int = 16,
                 fusion_min_channels: int = 8):
        super().__init__()
        if isinstance(n_conv_per_stage, int):
            n_conv_per_stage = [n_conv_per_stage] * n_stages
        if isinstance(n_conv_per_stage_decoder, int):
            n_conv_per_stage_decoder = [n_conv_per_stage_decoder] * (n_stages - 1)
        encoder_args = (input_channels, n_stages, features_per_stage, conv_op, kernel_sizes, strides, n_conv_per_stage,
                        conv_bias, norm_op, norm_op_kwargs, dropout_op, dropout_op_kwargs, nonlin, nonlin_kwargs)
        self.dedicated_encoder = PlainConvEncoder(*encoder_args, return_skips=True, nonlin_first=nonlin_first)
        self.adapted_encoder = PlainConvEncoder(*encoder_args, return_skips=True, nonlin_first=nonlin_first)
        self.adapted_encoder.requires_grad_(False)
        self.fusions = nn.ModuleList(SelectiveFusion(c, fusion_reduction, fusion_min_channels)
                                     for c in self.dedicated_encoder.output_channels)
        self.decoder = UNetDecoder(self.dedicated_encoder, num_classes, n_conv_per_stage_decoder, deep_supervision,
                                   nonlin_first=nonlin_first)
        self.adapted_encoder.eval()

    def train(self, mode: bool = True) -> "HybridEncoderUNet":
        """Like ``nn.Module.train`` but the adapted encoder stays in eval mode (frozen statistics, no dropout)."""
        super().train(mode)
        self.adapted_encoder.eval()
        return self

    def forward(self, x: torch.Tensor):
        with torch.no_grad():
            adapted_skips = self.adapted_encoder(x)
        dedicated_skips = self.dedicated_encoder(x)
        fused = [fusion(d, a) for fusion, d, a in zip(self.fusions, dedicated_skips, adapted_skips)]
        return self.decoder(fused)

    @staticmethod
    def initialize(module: nn.Module) -> None:
        """He initialisation of convolutions, as ``PlainConvUNet.initialize`` (nnU-Net applies it to fresh networks)."""
        InitWeights_He(1e-2)(module)


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
