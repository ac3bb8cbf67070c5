"""Fine-tuning from checkpoints that do not match the target network, each written by nnU-Net training.

Source checkpoints come from nnU-Net's own ``nnUNetTrainer``: two SGD steps on tiny hand-written plans,
saved by its ``save_checkpoint`` (tests/helpers/tiny_trainers.py): plans of another dataset, a 2-channel dataset,
residual-encoder (ResEnc) plans. Every test asserts the load report (``pretrained_source.json`` and the
training log) and that training then runs (optimizer steps in-process); the last one runs the stock
``nnUNetv2_train -pretrained_weights`` on the tiny pre-train/fine-tune setup of tests/helpers/pretrained_setup.py.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from nnunetv2.run.load_pretrained_weights import load_pretrained_weights
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from torch.nn.parallel import DistributedDataParallel

from nnunet_covid.architectures import HybridResidualEncoderUNet
from nnunet_covid.core.errors import CheckpointError
from nnunet_covid.training import BodyFineTuneTrainer, FrozenEncoderTrainer, HybridEncoderTrainer
from nnunet_covid.training.checkpoints import tensor_aliases
from nnunet_covid.training.trainer_config import trainer_configs_dir
from helpers.tiny_trainers import (make_trainer, plain_arch, prepare_dirs, random_batch, resenc_arch, tiny_plans,
                           write_trained_checkpoint)

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")
torch.set_num_threads(1)

TARGET, OTHER, TWO_CHANNEL = "Dataset960_FineTuneTarget", "Dataset961_OtherPlans", "Dataset962_TwoChannel"
RESENC_SOURCE, RESENC_TARGET = "Dataset963_ResEncSource", "Dataset964_ResEncTarget"
FIRST_CONV = "encoder.stages.0.0.convs.0.conv.weight"
ENCODER_ONLY = "the checkpoint holds no 'decoder' tensors (encoder-only checkpoint)"


@pytest.fixture
def dirs(tmp_path, monkeypatch):
    return prepare_dirs(tmp_path, monkeypatch, TARGET, OTHER, TWO_CHANNEL, RESENC_SOURCE, RESENC_TARGET)


@pytest.fixture
def configs(tmp_path, monkeypatch):
    """``edit(strategy, **keys)`` changes a copy of the shipped trainer configs (``nnUNet_covid_trainer_configs``)."""
    folder = tmp_path / "configs"
    shutil.copytree(trainer_configs_dir(), folder)
    monkeypatch.setenv("nnUNet_covid_trainer_configs", str(folder))

    def edit(strategy: str, **keys) -> Path:
        path = folder / f"{strategy}.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), **keys}))
        return folder

    return edit


def _weights(path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)["network_weights"]


def _finetune(cls, plans, checkpoint, monkeypatch, channels=1):
    """A 2-class fine-tuning trainer given ``checkpoint`` by the convention (``nnUNet_covid_pretrained``)."""
    monkeypatch.setenv("nnUNet_covid_pretrained", str(checkpoint))
    trainer = make_trainer(cls, plans, 2, channels)
    trainer.ensure_pretrained_weights()
    return trainer


def _report(trainer) -> dict:
    report = json.loads(trainer.provenance_file().read_text())["load_report"]
    assert f"pre-trained weights: {report['source']}" in Path(trainer.log_file).read_text()  # and in the log
    return report


def _trains(trainer) -> None:
    """Two optimizer steps: finite losses; every trainable weight of the decoder stages changes."""
    stages = [p for p in trainer.unwrapped_network.decoder.stages.parameters() if p.requires_grad and p.ndim > 1]
    before = [p.detach().clone() for p in stages]
    trainer.on_train_epoch_start()
    losses = [trainer.train_step(random_batch(trainer, seed))["loss"] for seed in range(2)]
    assert np.isfinite(losses).all()
    assert stages and all(not torch.equal(b, p) for b, p in zip(before, stages))


def _assert_loaded(network, report, weights, rename=lambda key: key):
    state = network.state_dict()
    assert report["loaded"]
    for key in report["loaded"]:
        if key not in report["adapted"]:
            assert torch.equal(state[key], weights[rename(key)]), key


def test_checkpoint_of_other_plans_loads_what_fits_when_partial_load_is_on(dirs, configs, monkeypatch):
    target = tiny_plans(TARGET)  # stage 0 kernel 1x3x3
    other = write_trained_checkpoint(dirs / "other_plans.pth", tiny_plans(OTHER, plain_arch(kernel_sizes=[[3, 3, 3]] * 4)),
                                     num_classes=3)
    with pytest.raises(CheckpointError) as error:
        _finetune(BodyFineTuneTrainer, target, other, monkeypatch)
    assert (f"shape mismatch: {FIRST_CONV}: checkpoint (8, 1, 3, 3, 3) vs network (8, 1, 1, 3, 3)" in str(error.value)
            and '"partial_load": true in body_finetune.json' in str(error.value))

    configs("body_finetune", partial_load=True)
    trainer = _finetune(BodyFineTuneTrainer, target, other, monkeypatch)
    report, weights = _report(trainer), _weights(other)
    network = trainer.unwrapped_network
    state = network.state_dict()
    _assert_loaded(network, report, weights)
    # every tensor whose shape differs is re-initialised and says so; nothing else is
    mismatched = {k for k in tensor_aliases(network) if weights[k].shape != state[k].shape}
    assert set(report["reinitialised"]) == mismatched
    assert {k for k in mismatched if ".seg_layers." not in k} == {
        f"encoder.stages.0.0.convs.{i}.conv.weight" for i in (0, 1)} | {
        f"decoder.stages.2.convs.{i}.conv.weight" for i in (0, 1)}
    assert report["reinitialised"][FIRST_CONV] == ("shape mismatch (partial load): checkpoint (8, 1, 3, 3, 3) vs "
                                                   "network (8, 1, 1, 3, 3)")
    assert 0.99 < report["encoder_fraction"] < 1
    assert report["unused"][FIRST_CONV] == "not loaded: does not fit its network tensor (re-initialised)"
    assert report["per_module"]["encoder.stages"] == {"loaded": 30, "reinitialised": 2}
    _trains(trainer)

    # another bottleneck width: most of the encoder does not fit, below min_encoder_fraction
    narrow = write_trained_checkpoint(dirs / "narrow.pth", tiny_plans(OTHER, plain_arch(features_per_stage=[8, 16, 32, 48])),
                                      num_classes=3)
    with pytest.raises(CheckpointError, match=r"only 2\d\.\d% of the encoder's weights of PlainConvUNet fit, below "
                                              r"min_encoder_fraction 0.9 in body_finetune.json"):
        _finetune(BodyFineTuneTrainer, target, narrow, monkeypatch)


def test_two_channel_checkpoint_into_a_ct_target_averages_the_first_convolution(dirs, monkeypatch):
    checkpoint = write_trained_checkpoint(dirs / "two_channel.pth", tiny_plans(TWO_CHANNEL, channels=2), num_classes=2,
                                          channels=2)
    trainer = _finetune(BodyFineTuneTrainer, tiny_plans(TARGET), checkpoint, monkeypatch)
    report, weights = _report(trainer), _weights(checkpoint)
    assert report["adapted"] == {FIRST_CONV: "input channels 2 -> 1: averaged over the checkpoint's channels, "
                                             "scaled by 2/1"}
    assert not report["reinitialised"] and FIRST_CONV in report["loaded"]  # same label count: the heads load too
    adapted = trainer.unwrapped_network.get_parameter(FIRST_CONV)
    torch.testing.assert_close(adapted, weights[FIRST_CONV].sum(dim=1, keepdim=True))
    x = torch.randn(1, 1, 4, 8, 8)  # a CT image gives the response the checkpoint gave to it in both channels
    torch.testing.assert_close(F.conv3d(x, adapted), F.conv3d(torch.cat([x, x], 1), weights[FIRST_CONV]))
    _assert_loaded(trainer.unwrapped_network, report, weights)
    _trains(trainer)


def test_ct_checkpoint_into_a_two_channel_target_repeats_or_refuses(dirs, configs, monkeypatch):
    checkpoint = write_trained_checkpoint(dirs / "ct.pth", tiny_plans(OTHER), num_classes=3)
    weights, two_channel = _weights(checkpoint), tiny_plans(TWO_CHANNEL, channels=2)
    configs("frozen_encoder", input_channel_adaptation="repeat")
    trainer = make_trainer(FrozenEncoderTrainer, two_channel, 2, 2)
    load_pretrained_weights(trainer.network, str(checkpoint))  # nnU-Net's own -pretrained_weights code path
    report = _report(trainer)
    assert report["source"].startswith("-pretrained_weights")
    assert report["adapted"] == {FIRST_CONV: "input channels 1 -> 2: repeated (channel i from channel i mod 1), "
                                             "scaled by 1/2"}
    assert set(report["reinitialised"]) == {k for k in weights if ".seg_layers." in k}
    torch.testing.assert_close(trainer.unwrapped_network.get_parameter(FIRST_CONV), weights[FIRST_CONV].repeat(1, 2, 1, 1, 1) / 2)
    _assert_loaded(trainer.unwrapped_network, report, weights)
    _trains(trainer)  # the frozen encoder keeps the adapted weights
    assert torch.equal(trainer.unwrapped_network.get_parameter(FIRST_CONV), weights[FIRST_CONV].repeat(1, 2, 1, 1, 1) / 2)

    configs("frozen_encoder", input_channel_adaptation="refuse")
    with pytest.raises(CheckpointError, match=rf"shape mismatch: {FIRST_CONV}: checkpoint \(8, 1, 1, 3, 3\) vs "
                                              r"network \(8, 2, 1, 3, 3\)"):
        _finetune(FrozenEncoderTrainer, two_channel, checkpoint, monkeypatch, channels=2)


def test_encoder_only_state_dicts_and_a_checkpoint_whose_decoder_does_not_fit(dirs, configs, monkeypatch):
    full = _weights(write_trained_checkpoint(dirs / "full.pth", tiny_plans(OTHER), num_classes=3))
    encoder = {k: v for k, v in full.items() if k.startswith("encoder.")}
    torch.save(encoder, dirs / "encoder_keys.pth")  # encoder.* of the network only
    torch.save({"state_dict": {k[len("encoder."):]: v for k, v in encoder.items()}}, dirs / "encoder_module.pth")
    for name, note in (("encoder_keys.pth", None), ("encoder_module.pth", "an encoder's own state dict")):
        trainer = _finetune(FrozenEncoderTrainer, tiny_plans(TARGET), dirs / name, monkeypatch)
        report = _report(trainer)
        assert report["encoder_fraction"] == 1.0 and not report["unused"]
        assert all(k.startswith("encoder.") for k in report["loaded"])
        decoder = [k for k in tensor_aliases(trainer.unwrapped_network) if k.startswith("decoder.")]
        assert set(report["reinitialised"]) == set(decoder)
        assert {r for k, r in report["reinitialised"].items() if ".seg_layers." not in k} == {ENCODER_ONLY}
        assert any(note in n for n in report["notes"]) if note else not report["notes"]
        _assert_loaded(trainer.unwrapped_network, report, full)
        _trains(trainer)

    # an nnU-Net checkpoint with one convolution per decoder stage: its decoder does not fit ours (two)
    shallow = write_trained_checkpoint(dirs / "shallow_decoder.pth",
                                       tiny_plans(OTHER, plain_arch(n_conv_per_stage_decoder=[1, 1, 1])), num_classes=2)
    with pytest.raises(CheckpointError, match="missing in checkpoint: decoder.stages.0.convs.1.conv.weight"):
        _finetune(FrozenEncoderTrainer, tiny_plans(TARGET), shallow, monkeypatch)
    configs("frozen_encoder", decoder_init="random")
    trainer = _finetune(FrozenEncoderTrainer, tiny_plans(TARGET), shallow, monkeypatch)
    report = _report(trainer)
    assert report["encoder_fraction"] == 1.0 and not report["reinitialised"]
    assert set(report["skipped"]) == {k for k in tensor_aliases(trainer.unwrapped_network) if k.startswith("decoder.")}
    assert report["unused"]["decoder.stages.0.convs.0.conv.weight"] == ("not loaded: the strategy keeps its network "
                                                                        "tensor fresh")
    _trains(trainer)


def test_residual_encoder_checkpoint_into_resenc_plans_and_into_the_hybrid(dirs, monkeypatch):
    # another dataset's ResEnc plans with one more residual block in the last stage
    checkpoint = write_trained_checkpoint(dirs / "resenc.pth", tiny_plans(RESENC_SOURCE, resenc_arch(
        n_blocks_per_stage=[1, 2, 2, 3])), num_classes=3)
    weights, target = _weights(checkpoint), tiny_plans(RESENC_TARGET, resenc_arch())
    body = _finetune(BodyFineTuneTrainer, target, checkpoint, monkeypatch)
    report = _report(body)
    assert report["encoder_fraction"] == 1.0
    assert set(report["reinitialised"]) == {k for k in weights if ".seg_layers." in k}  # 3 vs 2 classes
    assert report["unused"] and all(k.startswith("encoder.stages.3.blocks.2.") or ".seg_layers." in k
                                    for k in report["unused"])
    assert report["unused"]["encoder.stages.3.blocks.2.conv1.conv.weight"] == "not a tensor of this network"
    _assert_loaded(body.unwrapped_network, report, weights)
    _trains(body)

    hybrid = _finetune(HybridEncoderTrainer, target, checkpoint, monkeypatch)
    network = hybrid.unwrapped_network
    assert isinstance(network, HybridResidualEncoderUNet)
    report = _report(hybrid)
    assert report["encoder_fraction"] == 1.0  # of the adapted encoder
    assert all(k.startswith(("adapted_encoder.", "decoder.")) for k in report["loaded"])
    assert {r for r in report["skipped"].values()} == {"kept fresh by the strategy"}
    assert {k.split(".")[0] for k in report["skipped"]} == {"dedicated_encoder", "fusions"}
    assert "encoder.stages.3.blocks.2.conv1.conv.weight" in report["unused"]
    _assert_loaded(network, report, weights, rename=lambda k: k.replace("adapted_encoder.", "encoder.", 1))
    adapted = {k: v.clone() for k, v in network.adapted_encoder.state_dict().items()}
    _trains(hybrid)
    assert all(torch.equal(v, network.adapted_encoder.state_dict()[k]) for k, v in adapted.items())


def test_checkpoint_saved_under_ddp_and_torch_compile(dirs, monkeypatch, tmp_path):
    source = make_trainer(nnUNetTrainer, tiny_plans(OTHER), 3)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'process_group'}", rank=0, world_size=1)
    try:  # the state dict of nnU-Net's network as DDP(torch.compile(network)) holds it
        state = DistributedDataParallel(torch.compile(source.network)).state_dict()
    finally:
        dist.destroy_process_group()
    assert all(k.startswith("module._orig_mod.") for k in state)
    torch.save({"network_weights": state}, dirs / "ddp_compiled.pth")
    plain = {k[len("module._orig_mod."):]: v for k, v in state.items()}

    trainer = _finetune(BodyFineTuneTrainer, tiny_plans(TARGET), dirs / "ddp_compiled.pth", monkeypatch)
    report = _report(trainer)
    assert report["notes"] == [f"{len(state)} checkpoint keys carried DDP/torch.compile prefixes ('module.', "
                               "'_orig_mod.'): stripped"]
    assert report["encoder_fraction"] == 1.0 and set(report["reinitialised"]) == {k for k in plain if ".seg_layers." in k}
    _assert_loaded(trainer.unwrapped_network, report, plain)

    stock = make_trainer(BodyFineTuneTrainer, tiny_plans(TARGET))
    load_pretrained_weights(stock.network, str(dirs / "ddp_compiled.pth"))  # the stock flag passes the keys as saved
    assert _report(stock)["loaded"] == [k for k in report["loaded"] if ".seg_layers." not in k]
    _trains(stock)


@pytest.mark.slow
@pytest.mark.e2e
def test_stock_flag_with_a_ddp_checkpoint_of_other_plans_then_heads_first_training(pretrained_setup, tmp_path,
                                                                                   monkeypatch):
    """``nnUNetv2_train -pretrained_weights`` + ``BodyFineTuneTrainer_headsfirst_tiny``: a partial load of another
    plan's checkpoint saved with DDP's ``module.`` prefix, reported; the one epoch trains the heads alone."""
    s = pretrained_setup
    preprocessed = Path(s.env["nnUNet_preprocessed"])
    for key in ("nnUNet_raw", "nnUNet_preprocessed"):
        monkeypatch.setenv(key, s.env[key])
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "source_results"))
    plans = {**json.loads((preprocessed / s.target_dataset / f"{s.plans}.json").read_text()), "continue_training": False}
    kernels = plans["configurations"][s.configuration]["architecture"]["arch_kwargs"]["kernel_sizes"]
    kernels[0] = [1, 3, 3] if kernels[0] != [1, 3, 3] else [3, 3, 3]  # other plans: another stage-0 kernel
    source = write_trained_checkpoint(tmp_path / "other_plans.pth", plans, num_classes=3)
    checkpoint = torch.load(source, weights_only=False)
    checkpoint["network_weights"] = {"module." + k: v for k, v in checkpoint["network_weights"].items()}
    torch.save(checkpoint, tmp_path / "other_plans_ddp.pth")

    folder = tmp_path / "configs"
    shutil.copytree(trainer_configs_dir(), folder)
    config = json.loads((folder / "body_finetune.json").read_text())
    (folder / "body_finetune.json").write_text(json.dumps({**config, "partial_load": True}))
    trainer = "BodyFineTuneTrainer_headsfirst_tiny"
    s.run("nnUNetv2_train", s.target_dataset, s.configuration, 0, "-tr", trainer, "-device", "cpu",
          "-pretrained_weights", tmp_path / "other_plans_ddp.pth", log="headsfirst_partial",
          extra_env={"nnUNet_covid_trainer_configs": str(folder)})
    fold = s.results(s.target_dataset, trainer, 0)
    record = json.loads((fold / "pretrained_source.json").read_text())
    assert record["recipe"] == "headsfirst" and record["load_policy"]["partial_load"] is True
    assert record["finetune_recipe"]["heads_first_epochs"] == 1  # 10 of 1000 epochs, scaled to the 1-epoch run
    report = record["load_report"]
    assert report["source"].startswith("-pretrained_weights") and "stripped" in report["notes"][0]
    assert report["reinitialised"][FIRST_CONV].startswith("shape mismatch (partial load)")
    assert {r for k, r in report["reinitialised"].items() if ".seg_layers." in k} == {
        "segmentation head: nnU-Net's -pretrained_weights never transfers it"}
    assert 0.9 < report["encoder_fraction"] < 1

    log = next(fold.glob("training_log_*.txt")).read_text()
    assert "parameter groups: heads (" in log and "re-initialised (shape mismatch (partial load)" in log
    final = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert final["logging"]["lrs"][0] == pytest.approx(5e-4)  # heads lr reached in the single heads-first epoch
    pretrained = _weights(source)
    for key in report["loaded"]:  # the body is held back during the heads-first epoch
        assert torch.equal(final["network_weights"][key], pretrained[key]), key
