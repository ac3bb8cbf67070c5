"""Worker processes that never outlive the process that started them.

Pools pass :func:`die_with_parent` as their initializer with ``(os.getpid(),)``: on Linux the kernel
then sends SIGKILL to a worker as soon as its parent exits for whatever reason (SIGTERM, SIGKILL,
a crash), via ``prctl(PR_SET_PDEATHSIG)``; a worker whose parent is already gone exits at once.
"""
from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent(parent_pid: int) -> None:
    """Pool initializer: be killed when ``parent_pid`` exits (Linux); exit now if it already has."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        except (OSError, AttributeError):  # no prctl in this libc: the parent check below still applies
            pass
    if os.getppid() != parent_pid:
        os._exit(1)
