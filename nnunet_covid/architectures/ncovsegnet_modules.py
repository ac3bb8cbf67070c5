"""Building blocks of nCoVSegNet (Liu et al., MedIA 2021): ECA factory, GCA and DAF modules.

The ResNet bottlenecks themselves come from timm; this module only adds what the paper
defines on top of them.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
from timm.layers import EcaModule
from torch import nn


def eca_layer_factory(kernel_size: Optional[int] = None) -> Callable[..., nn.Module]:
    """Return the ``attn_layer`` that timm's Bottleneck places after ``bn3``, before the residual add.

    ``kernel_size=None`` (default) follows the ECA paper (Wang et al., CVPR 2020, Eq. 12):
    k = |(log2(C) + 1) / 2|_odd, at least 3, i.e. 5 for the 256/512/1024-channel stages
    and 7 for the 2048-channel stage of ResNet50. An int fixes k for every block (3
    reproduces nCoVSegNet's released code).
    """
    if kernel_size is None:
        return EcaModule

    def fixed_kernel_eca(channels: int, **kwargs) -> nn.Module:
        return EcaModule(None, kernel_size=kernel_size, **kwargs)

    return fixed_kernel_eca


class ConvBN(nn.Sequential):
    """Conv (no bias) + BatchNorm: the "basic convolution unit" of the GCA and DAF modules."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, padding=0, dilation: int = 1):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding, dilation=dilation, bias=False),
            nn.BatchNorm2d(out_channels),
        )


class GCA(nn.Module):
    """Global context-aware module (Eq. 1).

    Branch 0 is a 1x1 conv; branch (n, d) is 1x1 -> 1xn -> nx1 -> 3x3 with dilation d, for
    (n, d) in ``kernel_sizes`` (paper: 3, 5, 7; GCA4 drops 7). The branches are
    concatenated and fused by a 3x3 conv; a 1x1 conv of the input is added as residual
    and the sum goes through ReLU.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_sizes: tuple[int, ...] = (3, 5, 7)):
        super().__init__()
        self.branch0 = ConvBN(in_channels, out_channels, 1)
        self.branches = nn.ModuleList(
            nn.Sequential(
                ConvBN(in_channels, out_channels, 1),
                ConvBN(out_channels, out_channels, (1, n), padding=(0, n // 2)),
                ConvBN(out_channels, out_channels, (n, 1), padding=(n // 2, 0)),
                ConvBN(out_channels, out_channels, 3, padding=n, dilation=n),
            )
            for n in kernel_sizes
        )
        self.fuse = ConvBN(out_channels * (1 + len(kernel_sizes)), out_channels, 3, padding=1)
        self.residual = ConvBN(in_channels, out_channels, 1)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = [self.branch0(x)] + [b(x) for b in self.branches]
        return self.relu(self.fuse(torch.cat(branches, dim=1)) + self.residual(x))


class DAF(nn.Module):
    """Dual-attention fusion module (Eq. 2-4) joining a deeper ("upper") and a shallower ("lower") feature.

    up  = 4x4 stride-2 transposed conv of the upper feature to the lower feature's channels;
    CA  = sigmoid(1x1 conv(global average pool(upper)))          (Eq. 2, channel attention)
    SA  = sigmoid(max over channels of up)                        (Eq. 3, spatial attention)
    out = ReLU(BN(up) + (BN(3x3 conv(lower)) * CA * SA))           (Eq. 4)

    The paper derives SA and the upsampled term from the same transposed convolution; SA
    is taken before the BN.
    """

    def __init__(self, upper_channels: int, lower_channels: int):
        super().__init__()
        self.upsample = nn.ConvTranspose2d(upper_channels, lower_channels, 4, stride=2, padding=1, bias=False)
        self.upsample_bn = nn.BatchNorm2d(lower_channels)
        self.channel_attention = nn.Conv2d(upper_channels, lower_channels, 1)
        self.lower_conv = ConvBN(lower_channels, lower_channels, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, upper: torch.Tensor, lower: torch.Tensor) -> torch.Tensor:
        up = self.upsample(upper)
        ca = torch.sigmoid(self.channel_attention(upper.mean(dim=(2, 3), keepdim=True)))
        sa = torch.sigmoid(up.amax(dim=1, keepdim=True))
        return self.relu(self.upsample_bn(up) + self.lower_conv(lower) * ca * sa)
