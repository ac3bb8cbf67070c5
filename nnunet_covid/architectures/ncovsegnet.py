"""nCoVSegNet (Liu et al., "Exploiting shared knowledge from non-COVID lesions for
annotation-efficient COVID-19 CT lung infection segmentation", MedIA 2021), 2D.

Encoder: timm's ResNet with Bottleneck blocks (ResNet50: 3, 4, 6, 3 blocks, 256/512/1024/2048
channels at strides 4/8/16/32) with an ECA unit in every bottleneck (after ``bn3``, before the
residual add). Decoder: GCA1-4 (GCA4 without the 7x7 branch), DAF3(GCA4, GCA3),
DAF2(DAF3, GCA2), DAF1(DAF2, GCA1), and four 1x1 heads on DAF1, DAF2, DAF3 and GCA4, each
bilinearly upsampled to the input size as in the paper (Eq. 5).

nnU-Net contract: with ``decoder.deep_supervision`` on, ``forward`` returns the list
[DAF1, DAF2, DAF3, GCA4] logits, all at input resolution; off, only the DAF1 logits. All head
parameters exist in both modes (strict checkpoint loading), and the heads are named
``decoder.seg_layers`` so ``nnUNetv2_train -pretrained_weights`` re-initialises them when the
class count changes. Inputs whose sides are not multiples of 32 are zero-padded (split evenly
between both borders) and the logits cropped back, so any input size works.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from timm.models.resnet import Bottleneck, ResNet
from torch import nn
from torch.nn import functional as F

from nnunet_covid.architectures.ncovsegnet_modules import DAF, GCA, eca_layer_factory

__all__ = ["NCoVSegNet", "NCoVSegNetDecoder"]

OUTPUT_STRIDE = 32


class NCoVSegNetDecoder(nn.Module):
    """GCA and DAF modules plus the four segmentation heads; ``deep_supervision`` selects the output."""

    def __init__(self, encoder_channels: Sequence[int], num_classes: int, deep_supervision: bool):
        super().__init__()
        c1, c2, c3, c4 = encoder_channels
        g1, g2, g3, g4 = (c // 2 for c in encoder_channels)  # released mapping 256->128 ... 2048->1024
        self.deep_supervision = deep_supervision
        self.gca1 = GCA(c1, g1)
        self.gca2 = GCA(c2, g2)
        self.gca3 = GCA(c3, g3)
        self.gca4 = GCA(c4, g4, kernel_sizes=(3, 5))
        self.daf3 = DAF(g4, g3)
        self.daf2 = DAF(g3, g2)
        self.daf1 = DAF(g2, g1)
        # order = nnU-Net deep-supervision order: highest resolution first
        self.seg_layers = nn.ModuleList(nn.Conv2d(c, num_classes, 1) for c in (g1, g2, g3, g4))

    def forward(self, features: Sequence[torch.Tensor], output_size: Sequence[int]):
        f1, f2, f3, f4 = features
        gca4 = self.gca4(f4)
        daf3 = self.daf3(gca4, self.gca3(f3))
        daf2 = self.daf2(daf3, self.gca2(f2))
        daf1 = self.daf1(daf2, self.gca1(f1))
        levels = (daf1, daf2, daf3, gca4) if self.deep_supervision else (daf1,)
        logits = [F.interpolate(head(x), size=tuple(output_size), mode="bilinear", align_corners=False)
                  for head, x in zip(self.seg_layers, levels)]
        return logits if self.deep_supervision else logits[0]


class NCoVSegNet(nn.Module):
    """nCoVSegNet for ``input_channels``-channel 2D images and ``num_classes`` output channels.

    Defaults give the paper's network (ResNet50-ECA encoder). ``encoder_depths`` (blocks per
    stage), ``encoder_widths`` (bottleneck widths; stage outputs are 4x these) and
    ``stem_width`` scale it down for tests and CPU demos; ImageNet ResNet50 weights only fit the
    defaults. ``eca_kernel_size=None`` chooses the ECA kernel from the channel count as in the
    ECA paper; an int fixes it (3 = nCoVSegNet's released code).
    """

    def __init__(self, input_channels: int, num_classes: int, deep_supervision: bool = False,
                 encoder_depths: Sequence[int] = (3, 4, 6, 3),
                 encoder_widths: Sequence[int] = (64, 128, 256, 512),
                 stem_width: int = 64, eca_kernel_size: Optional[int] = None):
        super().__init__()
        if len(encoder_depths) != 4 or len(encoder_widths) != 4:
            raise ValueError("NCoVSegNet needs exactly four encoder stages "
                             f"(got depths {tuple(encoder_depths)}, widths {tuple(encoder_widths)})")
        self.encoder = ResNet(
            Bottleneck, tuple(encoder_depths), num_classes=0, in_chans=input_channels, global_pool="",
            channels=tuple(encoder_widths), stem_width=stem_width,
            block_args=dict(attn_layer=eca_layer_factory(eca_kernel_size)),
        )
        encoder_channels = [w * Bottleneck.expansion for w in encoder_widths]
        self.decoder = NCoVSegNetDecoder(encoder_channels, num_classes, deep_supervision)

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The four ResNet stage outputs at strides 4, 8, 16 and 32."""
        e = self.encoder
        x = e.maxpool(e.act1(e.bn1(e.conv1(x))))
        features = []
        for stage in (e.layer1, e.layer2, e.layer3, e.layer4):
            x = stage(x)
            features.append(x)
        return features

    def forward(self, x: torch.Tensor):
        if x.ndim != 4:
            raise ValueError(f"NCoVSegNet is 2D and expects (batch, channels, y, x) input, got shape {tuple(x.shape)}")
        size = x.shape[2:]
        pad = [(-s) % OUTPUT_STRIDE for s in size]
        if any(pad):
            # F.pad order: (x_before, x_after, y_before, y_after)
            x = F.pad(x, (pad[1] // 2, pad[1] - pad[1] // 2, pad[0] // 2, pad[0] - pad[0] // 2))
        out = self.decoder(self.encode(x), x.shape[2:])
        if not any(pad):
            return out
        crop = (slice(None), slice(None), slice(pad[0] // 2, pad[0] // 2 + size[0]),
                slice(pad[1] // 2, pad[1] // 2 + size[1]))
        return [o[crop] for o in out] if isinstance(out, list) else out[crop]
