"""NCoVSegNetTrainer on the 50 real COVID-SemiSeg slices: setup, nnU-Net pipeline, overfit, stock prediction.

Needs ../shared/data/covid-semiseg-2d (skipped with a reason when absent). The dataset is
converted with the project's converter and planned/preprocessed by nnU-Net once per module.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from batchgenerators.utilities.file_and_folder_operations import load_json

from nnunet_covid.core.nnunet_conventions import ext_trainer_dir
from nnunet_covid.training import (NCoVSegNetTrainer, NCoVSegNetTrainerSmall, NCoVSegNetTrainerFinetune)
from nnunet_covid.training.imagenet_weights import IMAGENET_WEIGHTS_ENV
from helpers import SHARED_DATA

torch.set_num_threads(1)

SEMISEG = SHARED_DATA / "covid-semiseg-2d"
DATASET_ID = 951
DATASET_NAME = "NCoVSemiSegTest"
# The overfit runs until the training slices reach OVERFIT_DICE, within OVERFIT_MAX_EPOCHS. A fixed epoch count
# is not a property of the trainer: its float32 trajectory differs between CPUs (oneDNN kernels, summation
# order), and near 0.8 the Dice moves up and down by a few thousandths from one epoch to the next: after a fixed
# 18 epochs it was 0.7999 on one machine; another passed 0.8 at epoch 13 and 15 in two runs. 40 epochs leave
# twice the usual need, while a trainer that does not learn (a wrong loss, target or optimiser) stays far below
# 0.8 at any epoch.
OVERFIT_DICE = 0.8
OVERFIT_MAX_EPOCHS = 40
OVERFIT_FIRST_CHECK = 12  # the Dice is measured after every epoch from here on
OVERFIT_BATCH = 5


@pytest.fixture(scope="module")
def nnunet_dirs(tmp_path_factory):
    """Converted, planned and preprocessed COVID-SemiSeg (binary) as nnU-Net dataset 951."""
    if not SEMISEG.is_dir():
        pytest.skip(f"real COVID-SemiSeg slices not found at {SEMISEG} (../shared is absent)")
    from dataset_conversion.covid_semiseg_2d import convert_covid_semiseg_2d
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (extract_fingerprints, plan_experiments,
                                                                       preprocess)

    root = tmp_path_factory.mktemp("ncovsegnet_nnunet")
    env = {"nnUNet_raw": root / "raw", "nnUNet_preprocessed": root / "preprocessed",
           "nnUNet_results": root / "results", "nnUNet_def_n_proc": 1, "nnUNet_n_proc_DA": 1,
           "nnUNet_extTrainer": ext_trainer_dir(), "nnUNet_compile": "false"}
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, str(value))
        mp.delenv(IMAGENET_WEIGHTS_ENV, raising=False)
        raw = convert_covid_semiseg_2d(SEMISEG, DATASET_ID, name=DATASET_NAME, progress=False)
        extract_fingerprints([DATASET_ID], num_processes=1, check_dataset_integrity=True, verbose=False,
                             show_progress_bar=False)
        plan_experiments([DATASET_ID])
        preprocess([DATASET_ID], configurations=("2d",), num_processes=(1,), show_progress_bar=False)
        yield {"root": root, "raw": raw, "preprocessed": root / "preprocessed" / raw.name, "env": env, "mp": mp}


def make_trainer(dirs, trainer_class, patch_size=None):
    plans = load_json(dirs["preprocessed"] / "nnUNetPlans.json")
    if patch_size is not None:
        plans["configurations"]["2d"]["patch_size"] = patch_size
    plans["continue_training"] = False
    dataset_json = load_json(dirs["preprocessed"] / "dataset.json")
    return trainer_class(plans, "2d", "all", dataset_json, device=torch.device("cpu"))


def test_trainer_hyperparameters_and_patch_rounding(nnunet_dirs):
    planned = load_json(nnunet_dirs["preprocessed"] / "nnUNetPlans.json")["configurations"]["2d"]["patch_size"]
    trainer = make_trainer(nnunet_dirs, NCoVSegNetTrainer)
    assert trainer.configuration_manager.patch_size == [int(np.ceil(s / 32) * 32) for s in planned]
    assert (trainer.initial_lr, trainer.num_epochs, trainer.weight_decay) == (1e-4, 100, 0.0)
    assert trainer._get_deep_supervision_scales() == [[1.0, 1.0]] * 4
    with pytest.warns(UserWarning, match="starts from random initialisation"):
        trainer._load_imagenet_encoder()  # no nnUNet_covid_imagenet_resnet50 here
    finetune = make_trainer(nnunet_dirs, NCoVSegNetTrainerFinetune, patch_size=[100, 70])
    assert (finetune.initial_lr, finetune.num_epochs) == (5e-5, 50)
    # rounded up to the encoder stride, also in the plans that are saved next to the model for inference
    assert finetune.configuration_manager.patch_size == [128, 96]
    assert finetune.plans_manager.plans["configurations"]["2d"]["patch_size"] == [128, 96]


def test_trainer_loads_imagenet_weights_and_builds_paper_optimiser(nnunet_dirs, tmp_path):
    import torchvision

    weights = tmp_path / "resnet50.pth"
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), weights)
    nnunet_dirs["mp"].setenv(IMAGENET_WEIGHTS_ENV, str(weights))
    try:
        trainer = make_trainer(nnunet_dirs, NCoVSegNetTrainer)
        trainer.initialize()
    finally:
        nnunet_dirs["mp"].delenv(IMAGENET_WEIGHTS_ENV)
    log = Path(trainer.log_file).read_text()
    assert f"weights from ImageNet ResNet50 file {weights}: 318 tensors loaded (1 of them adapted)" in log
    assert "adapted conv1.weight: RGB kernels adapted to 1 input channel(s)" in log
    torch.testing.assert_close(trainer.network.encoder.layer4[2].conv3.weight.detach(),
                               torch.load(weights)["layer4.2.conv3.weight"])
    assert isinstance(trainer.optimizer, torch.optim.Adam)
    lrs = []
    for epoch in (0, 49, 50, 99):
        trainer.lr_scheduler.step(epoch)
        lrs.append(trainer.optimizer.param_groups[0]["lr"])
    assert lrs == pytest.approx([1e-4, 1e-4, 1e-5, 1e-5])  # x0.1 once, at half of the epochs


def load_training_slices(trainer):
    """(image, label) tensors of every preprocessed training slice, as (1, 1, y, x)."""
    dataset = trainer.dataset_class(trainer.preprocessed_dataset_folder, None)
    slices = []
    for key in sorted(dataset.identifiers):
        data, seg, _, _ = dataset.load_case(key)
        slices.append((torch.from_numpy(np.asarray(data[:, 0]))[None].float(),
                       torch.from_numpy(np.asarray(seg[:, 0]))[None].float()))
    return slices


def centre_fit(x: torch.Tensor, size) -> torch.Tensor:
    """Centre-crop or zero-pad the last two axes of ``x`` to ``size``."""
    for axis, target in zip((2, 3), size):
        excess = x.shape[axis] - target
        if excess > 0:
            x = x.narrow(axis, excess // 2, target)
        elif excess < 0:
            pad = [0, 0, 0, 0]
            pad[(3 - axis) * 2:(3 - axis) * 2 + 2] = [-excess // 2, -excess - (-excess // 2)]
            x = torch.nn.functional.pad(x, pad)
    return x


def foreground_dice(network, slices) -> float:
    network.eval()
    tp = fp = fn = 0
    with torch.no_grad():
        for image, label in slices:
            prediction = network(image).argmax(1, keepdim=True) == 1
            truth = label == 1
            tp += (prediction & truth).sum().item()
            fp += (prediction & ~truth).sum().item()
            fn += (~prediction & truth).sum().item()
    network.train()
    return 2 * tp / (2 * tp + fp + fn)


@pytest.mark.slow
@pytest.mark.e2e
def test_overfit_real_slices_then_predict_with_stock_nnunet(nnunet_dirs, tmp_path):
    torch.manual_seed(0)
    trainer = make_trainer(nnunet_dirs, NCoVSegNetTrainerSmall)
    trainer.on_train_start()  # initialize, nnU-Net dataloaders with augmentation, plans copied for inference

    # one step through nnU-Net's augmentation pipeline: four full-resolution targets, one per head
    batch = next(trainer.dataloader_train)
    patch = tuple(trainer.configuration_manager.patch_size)
    assert batch["data"].shape[2:] == patch
    assert [tuple(t.shape[2:]) for t in batch["target"]] == [patch] * 4
    trainer.on_train_epoch_start()
    assert np.isfinite(trainer.train_step(batch)["loss"])

    # overfit check: the trainer's own train_step on the 50 slices, no augmentation; batches of slices of
    # similar size, zero-padded to the largest of the batch (the network pads to a multiple of 32 itself)
    slices = load_training_slices(trainer)
    assert len(slices) == 50
    by_size = sorted(range(len(slices)), key=lambda i: slices[i][0].shape[2] * slices[i][0].shape[3])
    batches = []
    for chunk in np.array_split(by_size, len(slices) // OVERFIT_BATCH):
        size = [max(slices[i][0].shape[axis] for i in chunk) for axis in (2, 3)]
        batches.append((torch.cat([centre_fit(slices[i][0], size) for i in chunk]),
                        torch.cat([centre_fit(slices[i][1], size) for i in chunk])))
    rng = np.random.default_rng(0)
    epoch_losses, dices = [], []
    while len(epoch_losses) < OVERFIT_MAX_EPOCHS and not (dices and dices[-1] > OVERFIT_DICE):
        losses = [trainer.train_step({"data": batches[b][0], "target": [batches[b][1]] * 4})["loss"]
                  for b in rng.permutation(len(batches))]
        epoch_losses.append(float(np.mean(losses)))
        if len(epoch_losses) >= OVERFIT_FIRST_CHECK:
            trainer.set_deep_supervision_enabled(False)
            dices.append(foreground_dice(trainer.network, slices))
            trainer.set_deep_supervision_enabled(True)
    print(f"overfit: Dice {dices[-1]:.4f} after {len(epoch_losses)} epochs; losses {epoch_losses}")
    assert dices[-1] > OVERFIT_DICE, (dices, epoch_losses)
    assert epoch_losses[-1] < 0.6 * epoch_losses[0], epoch_losses
    trainer.on_train_end()  # writes checkpoint_final.pth, stops the dataloaders

    # stock nnUNetv2_predict finds the trainer through nnUNet_extTrainer and rebuilds the network
    images = sorted((nnunet_dirs["raw"] / "imagesTr").glob("*_0000.png"))[:4]
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for image in images:
        (inputs / image.name).symlink_to(image)
    out = tmp_path / "predictions"
    env = {**os.environ, **{k: str(v) for k, v in nnunet_dirs["env"].items()}, "OMP_NUM_THREADS": "1"}
    cmd = [str(Path(sys.executable).parent / "nnUNetv2_predict"), "-i", str(inputs), "-o", str(out),
           "-d", str(DATASET_ID), "-c", "2d", "-f", "all", "-tr", "NCoVSegNetTrainerSmall",
           "-chk", "checkpoint_final.pth", "-device", "cpu", "--disable_tta", "-npp", "1", "-nps", "1"]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]

    from PIL import Image
    tp = fp = fn = 0
    for image in images:
        case = image.name.removesuffix("_0000.png")
        predicted = np.asarray(Image.open(out / f"{case}.png")) == 1
        truth = np.asarray(Image.open(nnunet_dirs["raw"] / "labelsTr" / f"{case}.png")) == 1
        assert predicted.shape == truth.shape
        tp, fp, fn = tp + (predicted & truth).sum(), fp + (predicted & ~truth).sum(), fn + (~predicted & truth).sum()
    stock_dice = 2 * tp / (2 * tp + fp + fn)
    print(f"stock nnUNetv2_predict: Dice {stock_dice:.4f} on {len(images)} training slices")
    assert stock_dice > 0.7
