"""torch.compile as nnU-Net uses it on a GPU, forced on for every trainer: train, --c, --val, stock predict.

The ``_tinycompiled`` variants (tests/helpers/compiled_trainers) return True from ``_do_i_compile``; see their
module for the compile backend. Targets and the pre-trained checkpoint come from the shared
``pretrained_setup`` fixture (3d_fullres, 16 x 32 x 32); nCoVSegNet runs on a tiny synthetic 2D slice set.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from nnunet_covid.core.nnunet_conventions import ext_trainer_dir
from helpers import COMPILED_TRAINERS

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

torch.set_num_threads(1)

SLICES_ID = 903


def compiled_env() -> dict[str, str]:
    return {"nnUNet_extTrainer": os.pathsep.join([ext_trainer_dir(), str(COMPILED_TRAINERS)])}


@pytest.fixture(scope="module")
def slices_2d(pretrained_setup):
    """A tiny synthetic 2D slice set (6 slices of 64 x 64) converted and planned for nnU-Net's 2d configuration."""
    from dataset_conversion.covid_semiseg_2d import convert_covid_semiseg_2d
    from nnunet_covid.pipeline.demo_data import write_covid_semiseg_2d_layout

    s = pretrained_setup
    raw = write_covid_semiseg_2d_layout(s.root / "slices_download", n_slices=6, seed=7, size=64)
    folder = convert_covid_semiseg_2d(raw, SLICES_ID, name="TinySlices", output_root=s.env["nnUNet_raw"],
                                      progress=False)
    s.run("nnUNetv2_plan_and_preprocess", "-d", SLICES_ID, "-c", "2d", "-np", 1, "-npfp", 1, log="plan_slices")
    inputs = s.root / "slices_input"
    inputs.mkdir(exist_ok=True)
    first = sorted((folder / "imagesTr").glob("*_0000.png"))[0]
    shutil.copy(first, inputs)
    return folder.name, inputs, first.name.removesuffix("_0000.png")


# (trainer, dataset: "pretrain" | "target" | "2d", pre-trained weights: None | "flag" | "convention")
CASES = [
    ("MultiLesionPretrainTrainer_tinycompiled", "pretrain", None),
    ("MultiLesionPartialLabelTrainer_tinycompiled", "pretrain", None),
    ("ContinualLearningTrainer_tinycompiled", "target", "flag"),
    ("BodyFineTuneTrainer_tinycompiled", "target", "convention"),
    ("FrozenEncoderTrainer_tinycompiled", "target", "flag"),
    ("HybridEncoderTrainer_tinycompiled", "target", "flag"),
    ("NCoVSegNetTrainerSmall_tinycompiled", "2d", None),
]


def compiled_checkpoint(setup) -> Path:
    """The pre-trained checkpoint as a compiled (and DDP-wrapped) network's own state dict would name its keys."""
    path = setup.root / "compiled_style_checkpoint.pth"
    if not path.is_file():
        checkpoint = torch.load(setup.checkpoint, map_location="cpu", weights_only=False)
        checkpoint["network_weights"] = {f"module._orig_mod.{k}": v for k, v in checkpoint["network_weights"].items()}
        torch.save(checkpoint, path)
    return path


@pytest.mark.parametrize("trainer, dataset, pretrained", CASES, ids=[c[0] for c in CASES])
def test_compiled_training_continue_validation_and_stock_prediction(pretrained_setup, request, trainer, dataset,
                                                                   pretrained, tmp_path):
    s = pretrained_setup
    if dataset == "2d":  # asked for here only, so the 3D cases are free to run on any worker
        dataset_name, inputs, case = request.getfixturevalue("slices_2d")
        configuration, ending = "2d", ".png"
    else:
        dataset_name = s.pretrain_dataset if dataset == "pretrain" else s.target_dataset
        inputs, case, configuration, ending = s.root / "predict_input", "TinyCovid_000", s.configuration, ".nii.gz"
    fold = "all" if dataset == "pretrain" else 0  # pre-training trains on fold all (4 cases: no 5-fold split)
    base = ["nnUNetv2_train", dataset_name, configuration, fold, "-tr", trainer, "-p", s.plans, "-device", "cpu"]
    extra = []
    env = compiled_env()
    if pretrained == "flag":
        extra = ["-pretrained_weights", s.checkpoint]
    elif pretrained == "convention":
        env["nnUNet_covid_pretrained"] = str(compiled_checkpoint(s))
    s.run(*base, *extra, log=f"{trainer}_train", extra_env=env)
    results = Path(s.env["nnUNet_results"]) / dataset_name / f"{trainer}__{s.plans}__{configuration}" / f"fold_{fold}"
    log = "".join(p.read_text() for p in results.glob("training_log_*.txt"))
    assert "Using torch.compile" in log
    final = results / "checkpoint_final.pth"
    weights = torch.load(final, map_location="cpu", weights_only=False)["network_weights"]
    assert not any(k.startswith(("_orig_mod.", "module.")) for k in weights)  # nnU-Net saves the unwrapped network
    if pretrained:
        record = json.loads((results / "pretrained_source.json").read_text())
        assert record["load_report"]["loaded"]
        if pretrained == "convention":  # the compiled-style checkpoint loaded like the plain one, head included
            plain = torch.load(s.checkpoint, map_location="cpu", weights_only=False)["network_weights"]
            assert ".seg_layers." in " ".join(record["load_report"]["loaded"]) or record["load_report"]["reinitialised"]
            assert set(record["load_report"]["loaded"]) <= set(plain)

    s.run(*base, "--c", log=f"{trainer}_continue", extra_env=env)  # finished run: restored, nothing retrained
    restored = torch.load(final, map_location="cpu", weights_only=False)["network_weights"]
    assert restored.keys() == weights.keys() and all(torch.equal(restored[k], weights[k]) for k in weights)
    s.run(*base, "--val", log=f"{trainer}_val", extra_env=env)
    assert (results / "validation" / "summary.json").is_file()

    out = tmp_path / "predicted"
    s.run("nnUNetv2_predict", "-i", inputs, "-o", out, "-d", dataset_name, "-c", configuration, "-p", s.plans,
          "-tr", trainer, "-f", fold, "-device", "cpu", "-npp", 0, "-nps", 0, "--disable_tta",
          log=f"{trainer}_predict", extra_env={**env, "nnUNet_compile": "true"})
    predicted = out / f"{case}{ending}"
    assert predicted.is_file()
    values = np.unique(sitk.GetArrayFromImage(sitk.ReadImage(str(predicted))))
    labels = json.loads((Path(s.env["nnUNet_raw"]) / dataset_name / "dataset.json").read_text())["labels"]
    assert set(values.tolist()) <= set(labels.values())
