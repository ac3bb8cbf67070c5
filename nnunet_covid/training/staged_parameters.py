"""Which parameters train when: optimizer parameter groups that join training later, and DDP after they join.

A fine-tuning recipe (:class:`~nnunet_covid.training.finetune_schedule.FineTuneRecipe`) splits the
trainable parameters into groups (:func:`parameter_groups`):

- ``"network"`` (joins at epoch 0), or with heads first ``"heads"`` (the segmentation heads, epoch 0) and
  ``"body"`` (the rest, epoch H);
- ``"unfrozen"``: the strategy's frozen modules, when the recipe unfreezes them (epoch K, its rate warming
  up over ``unfreeze_warmup_epochs``).

Every group is in the optimizer from the start, so the optimizer state in a checkpoint has the same groups
whatever the epoch (``--c`` restores it unchanged). Until its epoch a group's parameters have
``requires_grad=False`` and rate 0; SGD skips parameters without gradients (no momentum, no weight decay).
:func:`join_due_groups` lets them train at their epoch.

DDP: ``DistributedDataParallel`` all-reduces the gradients of the parameters that required gradients when
it wrapped the network; a parameter that joins later would train unsynchronised on every rank. After a
group joins under DDP, :func:`rewrap_ddp` removes the old wrapper's autograd hooks and wraps the same
module again: DDP registers the joined parameters and broadcasts rank 0's weights; every rank joins at the
same epoch, so the collective calls match.
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from nnunet_covid.core.errors import TrainerConfigError
from nnunet_covid.training.finetune_schedule import FineTuneRecipe

HEAD_KEYS = (".seg_layers.",)


def parameter_groups(network: nn.Module, frozen: Iterable[nn.Module], recipe: FineTuneRecipe) -> list[dict]:
    """Optimizer parameter groups of ``network`` (unwrapped) for ``recipe``; see the module docstring.

    ``frozen`` modules never train unless the recipe unfreezes them; parameters that already do not require
    gradients (e.g. the hybrid's adapted encoder) count as frozen. Groups that join later are held back
    (``requires_grad=False``) here.
    """
    frozen_ids = {id(p) for module in frozen for p in module.parameters()}
    named = list(network.named_parameters())
    free = [(n, p) for n, p in named if p.requires_grad and id(p) not in frozen_ids]
    if recipe.heads_first_epochs:
        heads = [p for n, p in free if any(k in n for k in HEAD_KEYS)]
        if not heads:
            raise TrainerConfigError(f"heads first: {type(network).__name__} has no segmentation heads "
                                     f"({HEAD_KEYS}) outside its frozen modules")
        groups = [{"name": "heads", "params": heads},
                  {"name": "body", "params": [p for n, p in free if not any(k in n for k in HEAD_KEYS)],
                   "join_epoch": recipe.heads_first_epochs}]
    else:
        groups = [{"name": "network", "params": [p for _, p in free]}]
    if recipe.unfreeze_after_epochs is not None:
        groups.append({"name": "unfrozen", "params": [p for _, p in named if id(p) in frozen_ids or not p.requires_grad],
                       "join_epoch": recipe.unfreeze_after_epochs, "join_warmup_epochs": recipe.unfreeze_warmup_epochs})
    groups = [{"join_epoch": 0, "join_warmup_epochs": 0, **g} for g in groups if g["params"]]
    for group in groups:
        if group["join_epoch"] > 0:
            for p in group["params"]:
                p.requires_grad_(False)
    return groups


def join_due_groups(optimizer: torch.optim.Optimizer, epoch: int) -> list[dict]:
    """Let the held-back groups whose ``join_epoch`` has come train (``requires_grad``); returns those that joined."""
    joined = []
    for group in optimizer.param_groups:
        if group.get("join_epoch", 0) <= epoch and any(not p.requires_grad for p in group["params"]):
            for p in group["params"]:
                p.requires_grad_(True)
            joined.append(group)
    return joined


def rewrap_ddp(network: DistributedDataParallel) -> DistributedDataParallel:
    """The module of ``network`` wrapped in a new DDP that registers every parameter now requiring gradients."""
    network._remove_autograd_hooks()
    for hook in getattr(network, "_accum_grad_hooks", []):
        hook.remove()
    return DistributedDataParallel(network.module, device_ids=network.device_ids, process_group=network.process_group)
