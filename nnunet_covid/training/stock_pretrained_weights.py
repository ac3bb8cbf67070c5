"""How nnU-Net's ``-pretrained_weights`` reaches our own loader (nnU-Net 2.8.1 offers no hook for it).

``nnUNetv2_train ... -pretrained_weights F`` calls ``trainer.initialize()`` and then nnU-Net's
``load_pretrained_weights(trainer.network, F)``, which demands that every key of the network's state
dict except ``.seg_layers.`` exists in F with the same shape, and then calls
``network.load_state_dict``. That rules out what transfer needs (a hybrid network whose keys differ
from a plain U-Net checkpoint, other label or channel counts, partial loads) and reports nothing.

The trainer is the only object both sides see. Between ``initialize()`` and the start of training a
transfer trainer's ``network`` attribute is a :class:`PretrainedWeightsInbox` around the real
network: its ``state_dict()`` is empty but claims to contain every key, so nnU-Net's check passes and
nnU-Net hands over every tensor of F except the segmentation heads; its ``load_state_dict`` passes
them on to the trainer's loader, which maps, checks and reports them. Every other attribute and the
call itself go to the real network. Training, ``--c``, ``--val`` and prediction never see the inbox.
"""
from __future__ import annotations

from typing import Callable, Mapping

import torch
from torch import nn


class _EveryKey:
    def __contains__(self, key) -> bool:
        return True


class _ClaimsEveryKey(dict):
    """An empty state dict whose ``keys()`` contain every key; ``update`` fills it like a dict."""

    def keys(self):
        return _EveryKey()


class PretrainedWeightsInbox:
    """Stands in for ``network`` while the trainer waits for pre-trained weights (see the module docstring)."""

    def __init__(self, network: nn.Module, deliver: Callable[[Mapping[str, torch.Tensor]], None]):
        object.__setattr__(self, "_network", network)
        object.__setattr__(self, "_deliver", deliver)

    def state_dict(self, *args, **kwargs) -> dict:
        return _ClaimsEveryKey()

    def load_state_dict(self, state_dict: Mapping[str, torch.Tensor], strict: bool = True, assign: bool = False):
        self._deliver(dict(state_dict))
        return nn.modules.module._IncompatibleKeys([], [])

    def __call__(self, *args, **kwargs):
        return self._network(*args, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self._network, name)

    def __setattr__(self, name: str, value) -> None:
        setattr(self._network, name, value)
