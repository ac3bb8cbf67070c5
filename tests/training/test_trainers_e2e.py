"""End to end with the stock nnU-Net CLI on tiny synthetic data: pre-train -> transfer strategy -> predict.

Uses the session fixture ``pretrained_setup`` (tests/helpers/pretrained_setup.py): plans shared between the
multi-lesion pre-train dataset (3 classes) and the COVID target (2 classes), and a pre-trained
``MultiLesionPretrainTrainer_tiny`` checkpoint. Each strategy gets its pre-trained weights in a
different documented way (environment variable, trainer config entry, stock ``-pretrained_weights``).
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch

pytestmark = [pytest.mark.filterwarnings("ignore::FutureWarning"), pytest.mark.slow, pytest.mark.e2e]


def _checkpoint(path):
    return torch.load(path, map_location="cpu", weights_only=False)


def _check_prediction(path, labels):
    assert path.is_file(), f"nnUNetv2_predict wrote no {path}"
    prediction = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    assert prediction.shape == (16, 32, 32)
    assert set(np.unique(prediction).tolist()) <= set(labels)


def test_multilesion_pretraining_is_source_balanced_and_predicts(pretrained_setup, tmp_path):
    setup = pretrained_setup
    log = (setup.root / "logs" / "pretrain.log").read_text()
    assert "source-balanced sampling over {'TinyEffusion': 2, 'TinyTumour': 2}" in log
    weights = _checkpoint(setup.checkpoint)["network_weights"]
    assert weights["decoder.seg_layers.0.weight"].shape[0] == 3  # background, tumour, effusion
    _check_prediction(setup.predict(setup.pretrain_dataset, setup.pretrain_trainer, "all", tmp_path,
                                    "predict_pretrain"), {0, 1, 2})


def test_partial_label_pretraining_trains_and_predicts(pretrained_setup, tmp_path):
    setup = pretrained_setup
    trainer = "MultiLesionPartialLabelTrainer_tiny"
    setup.run("nnUNetv2_train", setup.pretrain_dataset, setup.configuration, "all", "-tr", trainer, "-device", "cpu",
              log="partial_label")
    logging = _checkpoint(setup.results(setup.pretrain_dataset, trainer, "all") / "checkpoint_final.pth")["logging"]
    assert np.isfinite(logging["train_losses"]).all() and np.isfinite(logging["val_losses"]).all()
    _check_prediction(setup.predict(setup.pretrain_dataset, trainer, "all", tmp_path, "predict_partial"), {0, 1, 2})


def test_continual_learning_by_environment_variable_resumes_with_its_schedule(pretrained_setup, tmp_path):
    setup = pretrained_setup
    trainer = "ContinualLearningTrainer_tiny"
    env = {"nnUNet_covid_pretrained": str(setup.checkpoint)}
    setup.run("nnUNetv2_train", setup.target_dataset, setup.configuration, 0, "-tr", trainer, "-device", "cpu",
              log="continual", extra_env=env)
    fold = setup.results(setup.target_dataset, trainer, 0)
    record = json.loads((fold / "pretrained_source.json").read_text())
    assert record["pretrained"] == str(setup.checkpoint)
    # the pre-training ran 1 epoch from lr 0.01 (its checkpoint log); resume at half of it
    assert record["pretraining_epochs"] == 1 and record["pretraining_initial_lr"] == pytest.approx(0.01)
    lrs = _checkpoint(fold / "checkpoint_final.pth")["logging"]["lrs"]
    assert lrs[0] == pytest.approx(0.01 * (1 - 0.5 / 1) ** 0.9)

    setup.run("nnUNetv2_train", setup.target_dataset, setup.configuration, 0, "-tr", trainer, "-device", "cpu", "--c",
              log="continual_resume", extra_env={"nnUNet_covid_pretrained": "/nonexistent/checkpoint.pth"})
    resumed_log = (setup.root / "logs" / "continual_resume.log").read_text()
    assert "pre-trained weights:" not in resumed_log  # resuming restores its own checkpoint, loads nothing
    assert _checkpoint(fold / "checkpoint_final.pth")["logging"]["lrs"] == lrs
    _check_prediction(setup.predict(setup.target_dataset, trainer, 0, tmp_path, "predict_continual"), {0, 1})


def test_body_finetune_with_stock_pretrained_weights_flag_and_val(pretrained_setup, tmp_path):
    setup = pretrained_setup
    trainer = "BodyFineTuneTrainer_tiny"
    # a broken convention path proves the stock flag's weights are used, not the convention
    setup.run("nnUNetv2_train", setup.target_dataset, setup.configuration, 0, "-tr", trainer, "-device", "cpu",
              "-pretrained_weights", setup.checkpoint, log="body_finetune",
              extra_env={"nnUNet_covid_pretrained": "/nonexistent/checkpoint.pth"})
    fold = setup.results(setup.target_dataset, trainer, 0)
    record = json.loads((fold / "pretrained_source.json").read_text())
    assert record["pretrained"].startswith("-pretrained_weights")
    assert _checkpoint(fold / "checkpoint_final.pth")["logging"]["lrs"][0] == pytest.approx(1e-3)  # body_finetune.json

    setup.run("nnUNetv2_train", setup.target_dataset, setup.configuration, 0, "-tr", trainer, "-device", "cpu", "--val",
              log="body_finetune_val")
    summary = json.loads((fold / "validation" / "summary.json").read_text())
    assert "mean" in summary and "1" in summary["mean"]
    _check_prediction(setup.predict(setup.target_dataset, trainer, 0, tmp_path, "predict_body"), {0, 1})


def test_frozen_encoder_by_trainer_config_keeps_the_pretrained_encoder(pretrained_setup, tmp_path):
    setup = pretrained_setup
    trainer = "FrozenEncoderTrainer_tiny"
    configs = tmp_path / "configs"
    configs.mkdir()
    (configs / "frozen_encoder.json").write_text(json.dumps({
        "pretrained": {"dataset": 901, "trainer": setup.pretrain_trainer, "plans": setup.plans,
                       "configuration": setup.configuration, "fold": "all"},
        "initial_lr": 0.01, "frozen_modules": ["encoder"]}))
    setup.run("nnUNetv2_train", setup.target_dataset, setup.configuration, 0, "-tr", trainer, "-device", "cpu",
              log="frozen_encoder", extra_env={"nnUNet_covid_trainer_configs": str(configs)})
    fold = setup.results(setup.target_dataset, trainer, 0)
    assert json.loads((fold / "pretrained_source.json").read_text())["pretrained"] == str(setup.checkpoint)

    pretrained = _checkpoint(setup.checkpoint)["network_weights"]
    finetuned = _checkpoint(fold / "checkpoint_final.pth")["network_weights"]
    encoder = [k for k in finetuned if k.startswith("encoder.")]
    decoder = [k for k in finetuned if k.startswith("decoder.stages.") and k.endswith("weight")]
    assert encoder and decoder
    assert all(torch.equal(finetuned[k], pretrained[k]) for k in encoder)
    assert all(not torch.equal(finetuned[k], pretrained[k]) for k in decoder)
    _check_prediction(setup.predict(setup.target_dataset, trainer, 0, tmp_path, "predict_frozen"), {0, 1})
