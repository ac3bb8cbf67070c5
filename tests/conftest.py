"""Shared fixtures.

``pretrained_setup`` (session scope) -> :class:`helpers.pretrained_setup.PretrainedSetup`: a tiny
pre-train/fine-tune workflow done once with the stock nnU-Net CLI, for every end-to-end trainer test.

Every test starts from seeded random number generators (Python, NumPy, torch; the seed is the CRC-32 of
the test's id, so a failure reproduces alone, in any order and on any xdist worker; training
subprocesses seed themselves). Under pytest-xdist (``-n 2 --dist loadgroup``) the tests that share a
module- or session-scoped fixture of ours are sent to one worker, so no expensive fixture (a planned
dataset, a trained checkpoint, the SLURM cluster) is computed twice; ``pretrained_setup`` is instead built
once per run behind a file lock and used by both workers, so its many slow tests spread over both.
"""
from __future__ import annotations

import contextlib
import os
import random
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from filelock import FileLock

from helpers.pretrained_setup import PretrainedSetup, build_pretrained_setup

TESTS = Path(__file__).resolve().parent
WORKER_SHARED = {"pretrained_setup"}  # built once per run and shared by every xdist worker


@pytest.fixture(autouse=True)
def seeded(request) -> int:
    """Seeds Python, NumPy and torch with the CRC-32 of the test's id; returns the seed."""
    seed = zlib.crc32(request.node.nodeid.encode())
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return seed


def _shared_fixtures(item: pytest.Item) -> list[str]:
    """Keys of the module- and session-scoped fixtures of tests/ that ``item`` uses."""
    keys = []
    for name in item.fixturenames:
        for definition in getattr(item, "_fixtureinfo").name2fixturedefs.get(name, ()):
            source = Path(getattr(definition.func, "__code__").co_filename).resolve()
            if name in WORKER_SHARED or definition.scope not in ("module", "session"):
                continue
            if TESTS in source.parents:
                keys.append(name if definition.scope == "session" else f"{item.module.__name__}::{name}")
    return keys


def pytest_configure(config):
    if hasattr(config.option, "loadscopereorder"):  # keep the order below: xdist re-sorts units by test count
        config.option.loadscopereorder = False


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """One ``xdist_group`` per set of tests joined by shared fixtures (union-find over fixture keys), and the
    order the workers take them in: first one unit that builds the worker-shared setup, while the other worker
    runs the slow units that do not need it; then the other slow units; the quick ones last, so they fill both
    workers up to the end instead of one worker finishing alone a slow test taken late."""
    parent: dict[str, str] = {}

    def find(key: str) -> str:
        while parent.setdefault(key, key) != key:
            key = parent[key]
        return key

    item_keys = [(item, _shared_fixtures(item)) for item in items]
    for _, keys in item_keys:
        for key in keys[1:]:
            parent[find(key)] = find(keys[0])
    units: dict[str, list[pytest.Item]] = {}
    for item, keys in item_keys:
        if keys:
            item.add_marker(pytest.mark.xdist_group(find(keys[0]).replace("::", "-")))
        units.setdefault(find(keys[0]) if keys else item.nodeid, []).append(item)

    def slow(unit: list[pytest.Item]) -> bool:
        return any(item.get_closest_marker("slow") for item in unit)

    def shared(unit: list[pytest.Item]) -> bool:
        return any(WORKER_SHARED & set(item.fixturenames) for item in unit)

    ordered = sorted(units.values(), key=lambda unit: (not slow(unit), shared(unit), -len(unit)))
    builder = next((unit for unit in ordered if slow(unit) and shared(unit)), None)
    if builder is not None:
        ordered.remove(builder)
        ordered.insert(0, builder)
    items[:] = [item for unit in ordered for item in unit]


@pytest.fixture(scope="session")
def pretrained_setup(tmp_path_factory) -> Iterator[PretrainedSetup]:
    """Built once per run: under xdist the first worker to ask builds it while holding a file lock, the others
    wait for it and use the same folders (the xdist way to share a session fixture). Tests add trainings in
    folders of their own, so it may be used by every worker at once. Each worker runs its nnU-Net commands
    through a fork server of its own (``setup.server``)."""
    if "PYTEST_XDIST_WORKER" not in os.environ:  # one process
        root, lock = tmp_path_factory.mktemp("pretrained_setup"), contextlib.nullcontext()
    else:
        root = tmp_path_factory.getbasetemp().parent / "pretrained_setup"
        lock = FileLock(f"{root}.lock")
    with lock:
        built = (root / "ready").is_file()
        if not built and root.is_dir() and any(root.iterdir()):
            pytest.fail(f"pretrained_setup: building it failed on another worker; see {root / 'logs'}")
        root.mkdir(exist_ok=True)
        setup = PretrainedSetup.at(root)
        if not built:
            try:
                build_pretrained_setup(setup)
            except BaseException:
                setup.close()
                raise
            (root / "ready").touch()
    yield setup
    setup.close()
