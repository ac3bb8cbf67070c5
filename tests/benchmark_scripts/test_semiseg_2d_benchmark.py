"""The real-data 2D benchmark's parts: the converter's test folder and patient ids, both study grids as planned
steps, the CPU-sized U-Net, and the benchmark script's per-image summary (the benchmark itself: benchmarks/)."""
from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from dataset_conversion.covid_semiseg_2d import convert_covid_semiseg_2d
from nnunet_covid.cli import main
from nnunet_covid.core.errors import ConversionError
from nnunet_covid.evaluation.metrics import METRIC_NAMES
from nnunet_covid.pipeline.demo_data import write_covid_semiseg_2d_layout
from helpers import REPO_ROOT

GRIDS = [REPO_ROOT / "trainer_configs" / "semiseg_2d_benchmark.json", REPO_ROOT / "trainer_configs" / "semiseg_2d_benchmark_cpu.json"]


@pytest.fixture
def raw_env(monkeypatch, tmp_path):
    for name in ("raw", "preprocessed", "results"):
        (tmp_path / name).mkdir()
        monkeypatch.setenv(f"nnUNet_{name}", str(tmp_path / name))
    monkeypatch.setenv("nnUNet_def_n_proc", "1")
    return tmp_path


def test_test_dir_becomes_imagests_and_slices_without_patient_ids_say_so(raw_env, capsys):
    src = write_covid_semiseg_2d_layout(raw_env / "src", n_slices=2, seed=1)
    external = write_covid_semiseg_2d_layout(raw_env / "ext", n_slices=3, seed=7) / "train"
    assert main(["convert", "covid-semiseg-2d", "-i", str(src), "-d", "61", "--test-dir", str(external)]) == 0
    folder = raw_env / "raw" / "Dataset061_COVIDSemiSeg2D"
    assert sorted(p.name for p in (folder / "imagesTs").iterdir()) == [f"semiseg_test_{i:03d}_0000.png" for i in range(3)]
    assert sorted(p.name for p in (folder / "labelsTs").iterdir()) == [f"semiseg_test_{i:03d}.png" for i in range(3)]
    dataset_json = json.loads((folder / "dataset.json").read_text())
    assert dataset_json["numTraining"] == 2 and dataset_json["patient_ids"] is False
    # slices named <patient>_<index> carry patient ids
    named = raw_env / "named" / "train"
    shutil.copytree(src / "train", named)
    for sub, ending in (("Imgs", ".jpg"), ("GT", ".png")):
        for i in range(2):
            (named / sub / f"{i}{ending}").rename(named / sub / f"p{i}_{i + 4}{ending}")
    assert json.loads((convert_covid_semiseg_2d(named.parent, 62, progress=False) / "dataset.json").read_text())[
        "patient_ids"] is True
    with pytest.raises(ConversionError, match="--test-dir .* does not exist"):
        convert_covid_semiseg_2d(src, 63, test_dir=raw_env / "nowhere", progress=False)
    (src / "test").symlink_to(external)
    with pytest.raises(ConversionError, match="own test/ folder; --test-dir"):
        convert_covid_semiseg_2d(src, 63, test_dir=external, progress=False)


@pytest.mark.parametrize("grid", GRIDS, ids=lambda p: p.stem)
def test_grid_plans_cross_validation_with_lidc_pretraining(grid, raw_env):
    from nnunet_covid import training
    from nnunet_covid.pipeline.study import PRETRAINED_CHECKPOINT_ENV, load_study, plan_study

    for name in ("Dataset120_COVIDSemiSeg2D", "Dataset121_LIDCIDRI2DBench"):
        (raw_env / "raw" / name).mkdir()
    study = load_study(grid)
    steps, runs = plan_study(study, raw_env / "study", device="cpu")
    kinds = [s.kind for s in steps]
    assert {k: kinds.count(k) for k in set(kinds)} == {"prepare": 2, "pretrain": 2, "train": 20, "predict": 20,
                                                       "evaluate": 20, "report": 1}
    assert [r.label for r in runs] == ["nnunet_2d", "body_finetune[lidc_unet]", "ncovsegnet",
                                       "ncovsegnet_lidc[lidc_ncovsegnet]"]
    trainers = {s["trainer"] for s in study["strategies"]} | {s["trainer"] for s in study["pretrained_sources"].values()}
    assert all(hasattr(training, t) or t == "nnUNetTrainer" for t in trainers)
    by_name = {s.name: s for s in steps}
    body = by_name["train_body_finetune__lidc_unet_fold3"]
    assert body.env[PRETRAINED_CHECKPOINT_ENV].endswith(
        f"Dataset121_LIDCIDRI2DBench/{study['pretrained_sources']['lidc_unet']['trainer']}__nnUNetPlans__2d/"
        "fold_all/checkpoint_final.pth")
    ncov = by_name["train_ncovsegnet_lidc__lidc_ncovsegnet_fold0"].commands[0]
    assert ncov[ncov.index("-pretrained_weights") + 1].endswith("fold_all/checkpoint_final.pth")
    assert "--predicted-only" in by_name["evaluate_ncovsegnet_fold4"].commands[0]
    source_prepare = by_name["prepare_Dataset121_LIDCIDRI2DBench"].commands
    assert [c[0].rsplit("/", 1)[-1] for c in source_prepare] == [
        "nnUNetv2_plan_and_preprocess", "nnUNetv2_move_plans_between_datasets", "nnUNetv2_preprocess"]


def test_narrow_unet_is_the_planned_unet_at_a_quarter_width():
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager

    from nnunet_covid.training import nnUNetTrainerNarrow_bench2d

    kwargs = {"n_stages": 4, "features_per_stage": [32, 64, 128, 256], "conv_op": "torch.nn.modules.conv.Conv2d",
              "kernel_sizes": [[3, 3]] * 4, "strides": [[1, 1]] + [[2, 2]] * 3, "n_conv_per_stage": [2] * 4,
              "n_conv_per_stage_decoder": [2] * 3, "conv_bias": True,
              "norm_op": "torch.nn.modules.instancenorm.InstanceNorm2d", "norm_op_kwargs": {"eps": 1e-5, "affine": True},
              "dropout_op": None, "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU",
              "nonlin_kwargs": {"inplace": True}}
    manager = ConfigurationManager({"architecture": {
        "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet", "arch_kwargs": kwargs,
        "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]}})
    full = nnUNetTrainer.build_network_architecture(None, manager, 1, 2, True)
    narrow = nnUNetTrainerNarrow_bench2d.build_network_architecture(None, manager, 1, 2, False)
    assert narrow.encoder.output_channels == [8, 16, 32, 64]
    assert full.encoder.output_channels == [32, 64, 128, 256]
    assert manager.network_arch_init_kwargs["features_per_stage"] == [32, 64, 128, 256]  # the plans are unchanged
    assert narrow.decoder.deep_supervision is False
    n_full, n_narrow = (sum(p.numel() for p in net.parameters()) for net in (full, narrow))
    assert 12 < n_full / n_narrow < 17


def _bench():
    spec = importlib.util.spec_from_file_location("bench_semiseg_2d", REPO_ROOT / "benchmarks" / "bench_semiseg_2d.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _evaluation(path: Path, dsc: dict[str, float]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [{"case": case, "label": 1, **{m: value for m in METRIC_NAMES}} for case, value in dsc.items()]
    path.write_text(json.dumps({"cases": rows}))


def test_bench_summary_pools_the_held_out_images_of_every_fold(tmp_path):
    bench = _bench()
    study = tmp_path / "study"
    dsc = {"base": [{"a": 0.5, "b": 0.7}, {"c": 0.6, "d": 0.2}], "other": [{"a": 0.6, "b": 0.9}, {"c": 0.7, "d": 0.5}]}
    lungs = {"base": [{"a": 0.6, "b": 0.7}, {"c": 0.6, "d": 0.1}], "other": [{"a": 0.6, "b": 0.9}, {"c": 0.8, "d": 0.5}]}
    runs = []
    for name in dsc:
        for fold in (0, 1):
            evaluation = study / "evaluation" / name / f"fold_{fold}.json"
            _evaluation(evaluation, dsc[name][fold])
            _evaluation(study / "evaluation_lungs" / name / f"fold_{fold}.json", lungs[name][fold])
            training = study / "runs" / name / f"fold_{fold}"
            training.mkdir(parents=True)
            (training / "training_log_1.txt").write_text("Epoch time: 2.0 s\nEpoch time: 4.0 s\n")
            runs.append({"label": name, "fold": str(fold), "evaluation": evaluation, "training_dir": training,
                         "run": name})
    summary = bench.summarise(study, runs, "base")
    base, other = summary["base"], summary["other"]
    assert base["images"] == 4 and base["folds"] == 2
    assert base["metrics"]["dsc"] == pytest.approx((0.5, np.std([0.5, 0.7, 0.6, 0.2])))
    assert base["fold_mean_dsc"] == pytest.approx((0.5, 0.1))
    assert base["lungs"]["dsc"][0] == pytest.approx(0.5) and (base["lungs_better"], base["lungs_worse"]) == (1, 1)
    assert (other["lungs_better"], other["lungs_worse"]) == (1, 0)
    assert other["vs_baseline"]["mean_difference"] == pytest.approx(0.175) and "vs_baseline" not in base
    assert base["seconds_per_epoch"] == pytest.approx(3.0) and base["epochs"] == 4
    text = bench.markdown(summary, {}, {"grid": "g", "command": "python x", "device": "cpu",
                                        "seconds": {"study": 10.0, "total": 12.0}})
    assert "| other | 4 | 0.675 ± 0.148 |" in text and "+0.175" in text
