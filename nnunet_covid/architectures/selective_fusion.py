"""Selective Fusion of two feature maps (Wang et al., "Does Non-COVID19 Lung Lesion Help?", SK-Net style).

Equations (REFERENCE 1.2), for a dedicated feature map ``X_de`` and an adapted one ``X_ad`` of
shape (B, C, *spatial), 2D or 3D:

    X_f  = X_de + X_ad                                  (fuse)
    s    = GAP(X_f)                                     (squeeze: global average pool, s in R^C)
    z    = LeakyReLU(IN(W s)),  W in R^{C' x C}         (compact feature, C' = max(C // r, L))
    a, b = softmax([A z, B z]) per channel,  A, B in R^{C x C'}
    X_sf = a * X_de + b * X_ad                          (select: a + b = 1 for every channel)

Choices the paper leaves open, fixed here:

- ``C' = max(C // r, min_channels)``: SK-Net's lower bound L. nnU-Net stages start at 32 channels,
  so ``C // 16`` would be 2; ``min_channels = 8`` (SK-Net uses L = 32 for ImageNet-width networks,
  which would exceed C at nnU-Net's first stages).
- "IN" on the pooled vector: instance norm over the spatial extent of a (B, C', 1, 1, 1) map is
  degenerate (every value equals its own mean, so the output is the bias alone and the attention
  would ignore the input). The vector ``W s`` is therefore normalised per sample over its C'
  features, i.e. instance norm of the C' values of one sample, with a learnt per-feature affine
  transform — ``nn.LayerNorm(C')``. Like IN (and unlike SK-Net's BN) it is independent of the batch.
- W, A and B are linear maps without bias (bias before a normalisation is redundant; A, B are
  plain matrices in the equations). LeakyReLU slope 0.01 as in nnU-Net.
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["SelectiveFusion"]


class SelectiveFusion(nn.Module):
    """Channel-wise soft selection between a dedicated and an adapted feature map (see module docstring).

    ``forward(x_dedicated, x_adapted)`` takes two tensors of identical shape (B, C, ...) with any
    number of spatial dimensions and returns ``a * x_dedicated + b * x_adapted``.
    :meth:`fusion_weights` returns ``(a, b)`` of shape (B, C).
    """

    def __init__(self, channels: int, reduction: int = 16, min_channels: int = 8, negative_slope: float = 1e-2):
        super().__init__()
        if channels < 1 or reduction < 1 or min_channels < 1:
            raise ValueError(f"SelectiveFusion needs positive channels/reduction/min_channels, got "
                             f"{channels}/{reduction}/{min_channels}")
        self.channels = channels
        self.hidden_channels = max(channels // reduction, min_channels)
        self.squeeze = nn.Linear(channels, self.hidden_channels, bias=False)  # W
        self.norm = nn.LayerNorm(self.hidden_channels)  # "IN" of the pooled vector, per sample
        self.nonlin = nn.LeakyReLU(negative_slope)
        self.select_dedicated = nn.Linear(self.hidden_channels, channels, bias=False)  # A
        self.select_adapted = nn.Linear(self.hidden_channels, channels, bias=False)  # B

    def fusion_weights(self, x_dedicated: torch.Tensor, x_adapted: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(a, b)``, each (B, C), with ``a + b = 1`` per sample and channel."""
        if x_dedicated.shape != x_adapted.shape:
            raise ValueError(f"SelectiveFusion inputs differ in shape: {tuple(x_dedicated.shape)} vs "
                             f"{tuple(x_adapted.shape)}")
        if x_dedicated.shape[1] != self.channels:
            raise ValueError(f"SelectiveFusion built for {self.channels} channels got {x_dedicated.shape[1]}")
        fused = x_dedicated + x_adapted
        pooled = fused.mean(dim=tuple(range(2, fused.ndim)))
        z = self.nonlin(self.norm(self.squeeze(pooled)))
        logits = torch.stack((self.select_dedicated(z), self.select_adapted(z)), dim=1)
        weights = torch.softmax(logits, dim=1)
        return weights[:, 0], weights[:, 1]

    def forward(self, x_dedicated: torch.Tensor, x_adapted: torch.Tensor) -> torch.Tensor:
        a, b = self.fusion_weights(x_dedicated, x_adapted)
        broadcast = (*a.shape, *([1] * (x_dedicated.ndim - 2)))
        return a.view(broadcast) * x_dedicated + b.view(broadcast) * x_adapted
