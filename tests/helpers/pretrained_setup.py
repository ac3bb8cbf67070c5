"""The tiny pre-train/fine-tune workflow behind the ``pretrained_setup`` fixture (tests/conftest.py).

:func:`build_pretrained_setup` runs it once with the stock nnU-Net CLI into a :class:`PretrainedSetup`:

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
  tail) and returns seconds taken; through ``server``, the setup's
  :class:`helpers.nnunet_fork_server.NnunetForkServer`, so it skips the seconds a fresh process spends
  importing nnU-Net (``close()`` stops the server);
- ``results(dataset, trainer, fold)``: the fold folder of a training;
- ``predict(dataset, trainer, fold, output, log)``: ``nnUNetv2_predict`` of the target's first case
  (``predict_input/TinyCovid_000_0000.nii.gz``) into ``output``; returns the predicted file.

Volumes are 16 x 32 x 32 voxels; the whole setup takes about a minute on 2 CPU cores.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from helpers.nnunet_fork_server import NnunetForkServer

CONFIGURATION = "3d_fullres"
PLANS = "nnUNetPlans"
SHAPE = (16, 32, 32)
SPACING = (5.0, 2.0, 2.0)
PREDICT_INPUT = "predict_input"
PREDICT_CASE = "TinyCovid_000"
PRETRAIN_DATASET = "Dataset901_TinyMultiLesion"
TARGET_DATASET = "Dataset902_TinyCovid"
PRETRAIN_TRAINER = "MultiLesionPretrainTrainer_tiny"


@dataclass
class PretrainedSetup:
    root: Path
    env: dict[str, str]
    server: NnunetForkServer
    pretrain_dataset: str = PRETRAIN_DATASET
    target_dataset: str = TARGET_DATASET
    configuration: str = CONFIGURATION
    plans: str = PLANS
    pretrain_trainer: str = PRETRAIN_TRAINER

    @classmethod
    def at(cls, root: Path) -> PretrainedSetup:
        """The setup whose folders are (or will be) under ``root``, with its fork server started."""
        from nnunet_covid.core.nnunet_commands import nnunet_environment

        env = nnunet_environment(root, "cpu", {"OMP_NUM_THREADS": "1", "nnUNet_def_n_proc": "1",
                                               "nnUNet_n_proc_DA": "1", "nnUNet_compile": "false"})
        return cls(root=root, env=env, server=NnunetForkServer(env))

    def close(self) -> None:
        self.server.close()

    @property
    def checkpoint(self) -> Path:
        return self.results(self.pretrain_dataset, self.pretrain_trainer, "all") / "checkpoint_final.pth"

    def run(self, tool: str, *args, log: str, extra_env: dict[str, str] | None = None) -> float:
        from nnunet_covid.core.nnunet_commands import run_nnunet

        return run_nnunet(self.server.command(tool, *map(str, args)), {**self.env, **(extra_env or {})},
                          self.root / "logs" / f"{log}.log", report=lambda _: None)

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


def _write_default_splits(preprocessed: Path) -> None:
    """splits_final.json as nnU-Net's ``do_split`` would create it on the first fold-0 training (sorted case ids,
    seed 12345, 5 folds), written here so that trainings started at once on several workers never race to
    create it."""
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
    from nnunetv2.utilities.crossval_split import generate_crossval_split

    data = preprocessed / f"{PLANS}_{CONFIGURATION}"
    identifiers = sorted(infer_dataset_class(str(data)).get_identifiers(str(data)))
    splits = generate_crossval_split(identifiers, seed=12345, n_splits=5)
    (preprocessed / "splits_final.json").write_text(json.dumps(splits, indent=4))


def build_pretrained_setup(setup: PretrainedSetup) -> None:
    """Converts, plans, preprocesses and pre-trains under ``setup.root`` (holding only the empty nnU-Net folders)."""
    from dataset_conversion.multilesion import convert_multilesion

    root = setup.root
    raw = Path(setup.env["nnUNet_raw"])
    tumour = _write_synthetic(raw, 911, "TinyTumour", "tumour", 2, seed=0)
    effusion = _write_synthetic(raw, 912, "TinyEffusion", "effusion", 2, seed=10)
    target = _write_synthetic(raw, 902, "TinyCovid", "covid", 5, seed=20)
    (root / PREDICT_INPUT).mkdir()
    shutil.copy(target / "imagesTr" / f"{PREDICT_CASE}_0000.nii.gz", root / PREDICT_INPUT)
    pretrain = convert_multilesion(raw, 901, name="TinyMultiLesion", output_root=raw,
                                   sources=[tumour.name, effusion.name], labels="per-source")
    assert pretrain.name == PRETRAIN_DATASET and target.name == TARGET_DATASET
    assert "case_sources" in json.loads((pretrain / "dataset.json").read_text())

    # plan both (fingerprints, dataset.json copies), give the pre-train dataset the target's plans, preprocess both
    setup.run("nnUNetv2_plan_and_preprocess", "-d", 902, 901, "-c", CONFIGURATION, "-np", 1, "-npfp", 1,
              "--verify_dataset_integrity", "--no_pp", log="plan")
    setup.run("nnUNetv2_move_plans_between_datasets", "-s", 902, "-t", 901, "-sp", PLANS, "-tp", PLANS,
              log="move_plans")
    setup.run("nnUNetv2_preprocess", "-d", 902, 901, "-c", CONFIGURATION, "-plans_name", PLANS, "-np", 1,
              log="preprocess")
    _write_default_splits(Path(setup.env["nnUNet_preprocessed"]) / TARGET_DATASET)
    setup.run("nnUNetv2_train", 901, CONFIGURATION, "all", "-tr", PRETRAIN_TRAINER, "-p", PLANS, "-device", "cpu",
              log="pretrain")
    assert setup.checkpoint.is_file(), f"pre-training wrote no checkpoint; see {root / 'logs' / 'pretrain.log'}"
