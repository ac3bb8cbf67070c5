"""Shared fixtures.

``pretrained_setup`` (session scope) -> :class:`PretrainedSetup`: a tiny pre-train/fine-tune workflow
done once with the stock nnU-Net CLI, for every end-to-end trainer test:

- ``root``: folder holding ``nnUNet_raw``, ``nnUNet_preprocessed``, ``nnUNet_results`` and ``logs``;
- ``env``: the subprocess environment for nnU-Net commands (those three folders, one process/thread
  per pool, ``nnUNet_compile=false``, ``nnUNet_extTrainer`` pointing at our trainers);
- ``pretrain_dataset`` ``Dataset901_TinyMultiLesion``: built with ``nnunet-covid convert multilesion
  --labels per-source`` from 2 synthetic tumour cases (label 1 ``TinyTumour``) and 2 synthetic
  effusion cases (label 2 ``TinyEffusion``); ``case_sources`` in its dataset.json;
- ``target_dataset`` ``Dataset902_TinyCovid``: 5 synthetic COVID cases (label 1 ``lesion``), so
  fold 0 trains on 4 cases and validates on 1 (the paper's 4 training cases per fold);
- both preprocessed for ``configuration`` ``3d_fullres`` with the target's ``plans`` ``nnUNetPlans``
  (both planned, the target's plans moved onto the pre-train dataset, then preprocessed: nnU-Net's
  pre-training workflow; ``--no_pp`` planning of the pre-train dataset instead of
  ``nnUNetv2_extract_fingerprint`` because only planning copies dataset.json into nnUNet_preprocessed
  in 2.8.1), so the networks match except the segmentation head (3 vs 2 classes);
- ``checkpoint``: ``fold_all/checkpoint_final.pth`` of ``pretrain_trainer``
  (``MultiLesionPretrainTrainer_tiny``) on the pre-train dataset;
- ``run(tool, *args, log=name, extra_env=None)``: runs an nnU-Net console script with ``env``
  (updated by ``extra_env``; log in ``root/logs/<name>.log``; raises ``CommandFailed`` with the log
  tail) and returns seconds taken;
- ``results(dataset, trainer, fold)``: the fold folder of a training;
- ``predict(dataset, trainer, fold, output, log)``: ``nnUNetv2_predict`` of the target's first case
  (``predict_input/TinyCovid_000_0000.nii.gz``) into ``output``; returns the predicted file.

Volumes are 16 x 32 x 32 voxels; the whole setup takes about a minute on 2 CPU cores.

Every test starts from seeded random number generators (Python, NumPy, torch; the seed is the CRC-32 of
the test's id, so a failure reproduces alone, in any order and on any xdist worker; training
subprocesses seed themselves). Under pytest-xdist (``-n 2 --dist loadgroup``) the tests that share a
module- or session-scoped fixture of ours are sent to one worker, so no expensive fixture (a planned
dataset, a trained checkpoint, the SLURM cluster) is computed twice.
"""
from __future__ import annotations

import json
import random
import shutil
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch

CONFIGURATION = "3d_fullres"
PLANS = "nnUNetPlans"
SHAPE = (16, 32, 32)
SPACING = (5.0, 2.0, 2.0)
PREDICT_INPUT = "predict_input"
PREDICT_CASE = "TinyCovid_000"


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


@dataclass
class PretrainedSetup:
    root: Path
    env: dict[str, str]
    pretrain_dataset: str
    target_dataset: str
    configuration: str
    plans: str
    pretrain_trainer: str
    checkpoint: Path
    run: Callable[..., float]

    def results(self, dataset: str, trainer: str, fold) -> Path:
        return Path(self.env["nnUNet_results"]) / dataset / f"{trainer}__{self.plans}__{self.configuration}" / f"fold_{fold}"

    def predict(self, dataset: str, trainer: str, fold, output: Path, log: str) -> Path:
        """``nnUNetv2_predict`` (sequential, no TTA) of the target's first case; returns the predicted file."""
        self.run("nnUNetv2_predict", "-i", self.root / PREDICT_INPUT, "-o", output, "-d", dataset, "-c",
                 self.configuration, "-p", self.plans, "-tr", trainer, "-f", fold, "-device", "cpu", "-npp", 0,
                 "-nps", 0, "--disable_tta", log=log)
        return output / f"{PREDICT_CASE}.nii.gz"


def _write_synthetic(raw: Path, dataset_id: int, name: str, lesion: str, n: int, seed: int) -> Path:
    from nnunet_covid.pipeline.synthetic_ct import make_case, write_nnunet_dataset

    cases = [make_case(lesion, seed + i, shape=SHAPE, spacing=SPACING) for i in range(n)]
    return write_nnunet_dataset(raw, dataset_id, name, cases)


@pytest.fixture(scope="session")
def pretrained_setup(tmp_path_factory) -> PretrainedSetup:
    from dataset_conversion.multilesion import convert_multilesion
    from nnunet_covid.core.nnunet_commands import nnunet_environment, nnunet_tool, run_nnunet

    root = tmp_path_factory.mktemp("pretrained_setup")
    env = nnunet_environment(root, "cpu", {"OMP_NUM_THREADS": "1", "nnUNet_def_n_proc": "1", "nnUNet_n_proc_DA": "1",
                                            "nnUNet_compile": "false"})
    raw = Path(env["nnUNet_raw"])

    def run(tool: str, *args, log: str, extra_env: dict[str, str] | None = None) -> float:
        return run_nnunet([nnunet_tool(tool), *map(str, args)], {**env, **(extra_env or {})},
                          root / "logs" / f"{log}.log", report=lambda _: None)

    tumour = _write_synthetic(raw, 911, "TinyTumour", "tumour", 2, seed=0)
    effusion = _write_synthetic(raw, 912, "TinyEffusion", "effusion", 2, seed=10)
    target = _write_synthetic(raw, 902, "TinyCovid", "covid", 5, seed=20)
    (root / PREDICT_INPUT).mkdir()
    shutil.copy(target / "imagesTr" / f"{PREDICT_CASE}_0000.nii.gz", root / PREDICT_INPUT)
    pretrain = convert_multilesion(raw, 901, name="TinyMultiLesion", output_root=raw,
                                   sources=[tumour.name, effusion.name], labels="per-source")
    assert "case_sources" in json.loads((pretrain / "dataset.json").read_text())

    # plan both (fingerprints, dataset.json copies), give the pre-train dataset the target's plans, preprocess both
    run("nnUNetv2_plan_and_preprocess", "-d", 902, 901, "-c", CONFIGURATION, "-np", 1, "-npfp", 1,
        "--verify_dataset_integrity", "--no_pp", log="plan")
    run("nnUNetv2_move_plans_between_datasets", "-s", 902, "-t", 901, "-sp", PLANS, "-tp", PLANS, log="move_plans")
    run("nnUNetv2_preprocess", "-d", 902, 901, "-c", CONFIGURATION, "-plans_name", PLANS, "-np", 1, log="preprocess")

    trainer = "MultiLesionPretrainTrainer_tiny"
    run("nnUNetv2_train", 901, CONFIGURATION, "all", "-tr", trainer, "-p", PLANS, "-device", "cpu", log="pretrain")
    setup = PretrainedSetup(root=root, env=env, pretrain_dataset=pretrain.name, target_dataset="Dataset902_TinyCovid",
                            configuration=CONFIGURATION, plans=PLANS, pretrain_trainer=trainer, checkpoint=Path(),
                            run=run)
    setup.checkpoint = setup.results(pretrain.name, trainer, "all") / "checkpoint_final.pth"
    assert setup.checkpoint.is_file(), f"pre-training wrote no checkpoint; see {root / 'logs' / 'pretrain.log'}"
    return setup
