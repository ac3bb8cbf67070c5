"""Shared fixtures.

``pretrained_setup`` (session scope) -> :class:`helpers.pretrained_setup.PretrainedSetup`: a tiny
pre-train/fine-tune workflow done once with the stock nnU-Net CLI, for every end-to-end trainer test.

Every test starts from seeded random number generators (Python, NumPy, torch; the seed is the CRC-32 of
the test's id, so a failure reproduces alone, in any order and on any xdist worker; training
subprocesses seed themselves). Under pytest-xdist (``-n 2 --dist loadgroup``) the tests that share a
module- or session-scoped fixture of ours are sent to one worker, so no expensive fixture (a planned
dataset, a trained checkpoint, the SLURM cluster) is computed twice.
"""
from __future__ import annotations

import random
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers.pretrained_setup import PretrainedSetup, build_pretrained_setup

TESTS = Path(__file__).resolve().parent


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
            if definition.scope in ("module", "session") and TESTS in source.parents:
                keys.append(name if definition.scope == "session" else f"{item.module.__name__}::{name}")
    return keys


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """One ``xdist_group`` per set of tests joined by shared fixtures (union-find over fixture keys)."""
    parent: dict[str, str] = {}

    def find(key: str) -> str:
        while parent.setdefault(key, key) != key:
            key = parent[key]
        return key

    item_keys = [(item, _shared_fixtures(item)) for item in items]
    for _, keys in item_keys:
        for key in keys[1:]:
            parent[find(key)] = find(keys[0])
    for item, keys in item_keys:
        if keys:
            item.add_marker(pytest.mark.xdist_group(find(keys[0]).replace("::", "-")))


@pytest.fixture(scope="session")
def pretrained_setup(tmp_path_factory) -> PretrainedSetup:
    return build_pretrained_setup(tmp_path_factory.mktemp("pretrained_setup"))
