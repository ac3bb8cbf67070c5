"""The wrappers nnU-Net puts around a network (torch.compile, SyncBatchNorm + DDP) and the way back out."""
from __future__ import annotations

from torch import nn
from torch._dynamo import OptimizedModule
from torch.nn.parallel import DistributedDataParallel


def unwrap_network(network: nn.Module) -> nn.Module:
    """The plain module inside DDP and/or ``torch.compile`` wrappers (in either order)."""
    while isinstance(network, (DistributedDataParallel, OptimizedModule)):
        network = network.module if isinstance(network, DistributedDataParallel) else network._orig_mod
    return network
