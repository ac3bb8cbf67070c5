"""Test helper: nnU-Net's own ``verify_dataset_integrity`` on a converted raw dataset."""
from __future__ import annotations

import itertools
from pathlib import Path
from types import SimpleNamespace


class _InProcessPool:
    """Stands in for the spawn pool nnU-Net opens even for one process (saves a torch import per check)."""

    def __init__(self, processes=None):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def starmap(self, function, iterable):
        return list(itertools.starmap(function, iterable))


def verify_with_nnunet(folder: Path, capfd, monkeypatch) -> None:
    """Run nnU-Net's check in this process; its printed warnings (origin/direction mismatch) fail too."""
    from nnunetv2.experiment_planning import verify_dataset_integrity as module

    monkeypatch.setattr(module, "multiprocessing", SimpleNamespace(get_context=lambda method: SimpleNamespace(
        Pool=_InProcessPool)))
    capfd.readouterr()
    module.verify_dataset_integrity(str(folder), num_processes=1)
    out = capfd.readouterr().out
    assert "verify_dataset_integrity Done" in out
    assert "Warning" not in out and "Error" not in out, out
