"""Load ImageNet ResNet50 weights from a local file into NCoVSegNet's encoder (no download).

The file is named by the environment variable ``nnUNet_covid_imagenet_resnet50``. Accepted: a
torchvision ``resnet50`` state dict (``torch.save(model.state_dict(), path)``), a timm
``resnet50`` checkpoint (``.pth``/``.bin`` state dict or ``.safetensors``), or either wrapped in a
``{"state_dict": ...}`` / ``{"model": ...}`` container; a ``module.`` prefix is stripped. Both
libraries name ResNet parameters alike (``conv1.weight``, ``bn1.running_mean``,
``layer1.0.conv1.weight``, ...), and so does timm's ResNet used as NCoVSegNet's encoder.

The first convolution is adapted from RGB with timm's ``adapt_input_conv``: for one input channel
the three RGB kernels are summed (a grey image replicated to RGB gives the same response); for C
channels the RGB kernels are tiled and scaled by 3/C. The ECA convolutions do not exist in a
plain ResNet50 and stay randomly initialised; the classifier (``fc.*``) is not used.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import torch
from timm.models._manipulate import adapt_input_conv
from torch import nn

from nnunet_covid.core.errors import CheckpointError
from nnunet_covid.training.checkpoints import LoadReport

__all__ = ["IMAGENET_WEIGHTS_ENV", "imagenet_weights_path", "read_resnet_state_dict", "load_imagenet_resnet_weights"]

IMAGENET_WEIGHTS_ENV = "nnUNet_covid_imagenet_resnet50"
_CONTAINER_KEYS = ("state_dict", "model", "model_state", "network_weights")


def imagenet_weights_path() -> Optional[Path]:
    """The path in ``nnUNet_covid_imagenet_resnet50``, or None when unset/empty; errors if it does not exist."""
    value = os.environ.get(IMAGENET_WEIGHTS_ENV, "").strip()
    if not value:
        return None
    path = Path(value).expanduser()
    if not path.is_file():
        raise CheckpointError(f"{IMAGENET_WEIGHTS_ENV}={value}: no such file")
    return path


def read_resnet_state_dict(path: Path | str) -> dict[str, torch.Tensor]:
    """Read a torchvision/timm ResNet state dict from ``path`` onto the CPU (tensors only, no pickled code)."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any reader failure is reported as one message naming the file
        raise CheckpointError(f"{path}: cannot be read as a PyTorch/safetensors weight file ({e})") from e
    for key in _CONTAINER_KEYS:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: expected a state dict of tensors (torchvision/timm ResNet50)")
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_imagenet_resnet_weights(encoder: nn.Module, path: Path | str) -> LoadReport:
    """Copy matching ResNet tensors from ``path`` into ``encoder`` (NCoVSegNet's timm ResNet) in place."""
    state = read_resnet_state_dict(path)
    own = encoder.state_dict()
    report = LoadReport(source=f"ImageNet ResNet50 file {path}")
    to_load = {}
    for key, value in state.items():
        if key not in own:
            report.unused[key] = "not in the nCoVSegNet encoder"
            continue
        target_shape = own[key].shape
        if key == "conv1.weight" and value.ndim == 4 and value.shape[1] != target_shape[1]:
            report.adapted[key] = f"RGB kernels adapted to {target_shape[1]} input channel(s) (timm adapt_input_conv)"
            value = adapt_input_conv(target_shape[1], value)
        if value.shape != target_shape:
            raise CheckpointError(
                f"{path}: tensor {key} has shape {tuple(value.shape)} but the encoder needs {tuple(target_shape)} "
                "(ImageNet ResNet50 weights fit only the default NCoVSegNet encoder)")
        to_load[key] = value
    if not to_load:
        raise CheckpointError(f"{path}: none of its keys is a ResNet key (conv1.weight, layer1.0.conv1.weight, ...)")
    encoder.load_state_dict(to_load, strict=False)
    report.loaded = sorted(to_load)
    report.reinitialised = {k: "not in the ImageNet file (ECA units)" for k in sorted(own) if k not in to_load}
    return report
