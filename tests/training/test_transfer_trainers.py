"""Transfer trainers in-process: weight loading (stock flag vs convention), freezing, schedules, source sampling.

Trainers are built from a small hand-written 3d_fullres plan (tests/helpers/tiny_trainers.py: PlainConvUNet
[8, 16, 32, 64], patch 16 x 32 x 32) and stepped on random batches; the "pre-trained" checkpoint is an
nnU-Net-format checkpoint of a 3-class network of the same plan.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from nnunetv2.run.load_pretrained_weights import load_pretrained_weights
from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_covid.core.errors import CheckpointError, DatasetMetadataError, TrainerConfigError
from nnunet_covid.training import checkpoints as pw
from nnunet_covid.training.checkpoints import load_pretrained_state
from nnunet_covid.training.multilesion_trainers import (MultiLesionPartialLabelTrainer, load_case_sources,
                                                        source_balanced_identifiers)
from nnunet_covid.training.trainer_config import load_trainer_config
from nnunet_covid.training.transfer_trainers import (BodyFineTuneTrainer, ContinualLearningTrainer,
                                                     FrozenEncoderTrainer)
from helpers.tiny_trainers import make_trainer, prepare_dirs, random_batch, tiny_plans

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")
torch.set_num_threads(1)

DATASET = "Dataset950_UnitTarget"
LOWEST_HEAD = "seg_layers.0."  # nnU-Net gives the lowest-resolution output weight 0: it never gets a gradient
PLANS = tiny_plans(DATASET)


@pytest.fixture
def nnunet_dirs(tmp_path, monkeypatch):
    return prepare_dirs(tmp_path, monkeypatch, DATASET)


def _trainer(cls, num_classes: int = 2, **dataset_json_extra):
    return make_trainer(cls, PLANS, num_classes, **dataset_json_extra)


@pytest.fixture
def pretrained_checkpoint(nnunet_dirs):
    """An nnU-Net checkpoint of a 3-class network, 'pre-trained' for 4 epochs from lr 0.01."""
    source = _trainer(nnUNetTrainer, num_classes=3)
    path = nnunet_dirs / "pretrained.pth"
    torch.save({"network_weights": source.network.state_dict(), "current_epoch": 4,
                "logging": {"lrs": [0.01, 0.0077, 0.0054, 0.0029]}}, path)
    return path


def _snapshot(module):
    return {k: v.detach().clone() for k, v in module.named_parameters()}


def test_frozen_encoder_stays_bitwise_unchanged_while_the_decoder_trains(pretrained_checkpoint, monkeypatch):
    monkeypatch.setenv(pw.PRETRAINED_CHECKPOINT_ENV, str(pretrained_checkpoint))
    trainer = _trainer(FrozenEncoderTrainer)
    trainer.ensure_pretrained_weights()
    network = trainer.network
    pretrained = torch.load(pretrained_checkpoint, weights_only=False)["network_weights"]
    encoder_before, decoder_before = _snapshot(network.encoder), _snapshot(network.decoder)
    assert all(torch.equal(v, pretrained["encoder." + k]) for k, v in encoder_before.items())

    optimised = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert not optimised & {id(p) for p in network.encoder.parameters()}
    decoder_own = [p for n, p in network.decoder.named_parameters() if not n.startswith("encoder.")]
    assert {id(p) for p in decoder_own} == optimised
    assert all(not p.requires_grad for p in network.encoder.parameters())
    assert 0.25 < sum(p.numel() for p in decoder_own) / sum(p.numel() for p in network.parameters()) < 0.75

    trainer.on_train_epoch_start()
    assert not network.encoder.training and network.decoder.stages.training
    for step in range(2):
        trainer.train_step(random_batch(trainer, step))
    assert all(torch.equal(v, network.encoder.get_parameter(k)) for k, v in encoder_before.items())
    changed = [k for k, v in decoder_before.items()
               if not k.startswith("encoder.") and not torch.equal(v, network.decoder.get_parameter(k))]
    # every decoder weight trains except the lowest-resolution head (weight 0 in nnU-Net's deep supervision)
    assert set(changed) == {k for k in decoder_before if not k.startswith(("encoder.", LOWEST_HEAD))}


def test_body_finetune_trains_every_weight_with_its_configured_lr(pretrained_checkpoint, monkeypatch):
    monkeypatch.setenv(pw.PRETRAINED_CHECKPOINT_ENV, str(pretrained_checkpoint))
    trainer = _trainer(BodyFineTuneTrainer)
    trainer.ensure_pretrained_weights()
    assert sum(len(g["params"]) for g in trainer.optimizer.param_groups) == len(list(trainer.network.parameters()))
    trainer.on_train_epoch_start()
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(load_trainer_config("body_finetune")["initial_lr"])
    before = _snapshot(trainer.network)
    trainer.train_step(random_batch(trainer))
    unchanged = [k for k, v in before.items() if torch.equal(v, trainer.network.get_parameter(k))]
    assert unchanged == ["decoder." + LOWEST_HEAD + "weight", "decoder." + LOWEST_HEAD + "bias"]


def test_convention_loads_everything_but_a_head_of_another_label_count(pretrained_checkpoint, monkeypatch):
    monkeypatch.setenv(pw.PRETRAINED_CHECKPOINT_ENV, str(pretrained_checkpoint))
    pretrained = torch.load(pretrained_checkpoint, weights_only=False)["network_weights"]
    for num_classes, head_copied in ((2, False), (3, True)):
        trainer = _trainer(BodyFineTuneTrainer, num_classes=num_classes)
        trainer.ensure_pretrained_weights()
        state = trainer.network.state_dict()
        for key, value in state.items():
            if ".seg_layers." in key:
                assert torch.equal(value, pretrained[key]) == head_copied, key
            else:
                assert torch.equal(value, pretrained[key]), key
        record = json.loads(open(f"{trainer.output_folder}/pretrained_source.json").read())
        assert record["pretrained"] == str(pretrained_checkpoint)


def test_stock_pretrained_weights_flag_is_detected_and_not_overridden(pretrained_checkpoint, monkeypatch):
    monkeypatch.setenv(pw.PRETRAINED_CHECKPOINT_ENV, "/nonexistent/checkpoint.pth")  # would fail if used
    trainer = _trainer(BodyFineTuneTrainer)
    load_pretrained_weights(trainer.network, str(pretrained_checkpoint))  # what nnUNetv2_train -pretrained_weights does
    loaded = _snapshot(trainer.network)
    trainer.ensure_pretrained_weights()
    assert trainer.pretrained_source.startswith("-pretrained_weights")
    assert all(torch.equal(v, trainer.network.get_parameter(k)) for k, v in loaded.items())


def test_missing_convention_checkpoint_names_what_was_looked_for(nnunet_dirs, monkeypatch, tmp_path):
    configs = tmp_path / "configs"
    configs.mkdir()
    (configs / "body_finetune.json").write_text(json.dumps({"pretrained": {
        "dataset": "Dataset100_MultiLesion", "trainer": "MultiLesionPretrainTrainer", "plans": "nnUNetPlans",
        "configuration": "3d_fullres", "fold": "all"}, "initial_lr": 0.001}))
    monkeypatch.setenv("nnUNet_covid_trainer_configs", str(configs))
    trainer = _trainer(BodyFineTuneTrainer)
    expected = (nnunet_dirs / "nnUNet_results" / "Dataset100_MultiLesion" /
                "MultiLesionPretrainTrainer__nnUNetPlans__3d_fullres" / "fold_all" / "checkpoint_final.pth")
    with pytest.raises(CheckpointError) as error:
        trainer.ensure_pretrained_weights()
    assert str(expected) in str(error.value) and "-pretrained_weights" in str(error.value)
    monkeypatch.setenv(pw.PRETRAINED_CHECKPOINT_ENV, str(tmp_path / "missing.pth"))
    with pytest.raises(CheckpointError, match="missing.pth: no such checkpoint file"):
        trainer.ensure_pretrained_weights()


def test_incompatible_checkpoint_lists_every_missing_key_and_shape_mismatch(pretrained_checkpoint, nnunet_dirs):
    trainer = _trainer(BodyFineTuneTrainer)
    weights = torch.load(pretrained_checkpoint, weights_only=False)["network_weights"]
    for alias in ("conv.weight", "all_modules.0.weight"):  # every name of the tensor, else it loads from the other
        del weights[f"decoder.stages.0.convs.0.{alias}"]
    weights["encoder.stages.3.0.convs.1.conv.bias"] = torch.zeros(5)
    broken = nnunet_dirs / "broken.pth"
    torch.save({"network_weights": {"module." + k: v for k, v in weights.items()}}, broken)  # DDP prefix stripped
    with pytest.raises(CheckpointError) as error:
        load_pretrained_state(trainer.unwrapped_network, broken)
    message = str(error.value)
    assert "missing in checkpoint: decoder.stages.0.convs.0.conv.weight" in message
    assert "shape mismatch: encoder.stages.3.0.convs.1.conv.bias: checkpoint (5,) vs network (64,)" in message
    assert "partial_load" in message.splitlines()[-1]  # how to load what fits
    assert message.count("\n") == 3  # one header line, exactly the two problems, the hint


def test_checkpoints_are_read_onto_the_cpu(pretrained_checkpoint, monkeypatch):
    calls = []
    real_load = torch.load

    def recording_load(*args, **kwargs):
        calls.append(kwargs.get("map_location"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", recording_load)
    pw.read_checkpoint(pretrained_checkpoint)
    assert calls == ["cpu"]


def test_continual_first_epoch_lr_equals_the_pretraining_schedule(pretrained_checkpoint, monkeypatch):
    def reference(lr0, epochs, epoch):
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        PolyLRScheduler(optimizer, lr0, epochs).step(epoch)
        return optimizer.param_groups[0]["lr"]

    # by convention: lr0 and epochs from the checkpoint's log (0.01, 4 epochs); resume at half
    monkeypatch.setenv(pw.PRETRAINED_CHECKPOINT_ENV, str(pretrained_checkpoint))
    trainer = _trainer(ContinualLearningTrainer)
    trainer.ensure_pretrained_weights()
    trainer.on_train_epoch_start()
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(reference(0.01, 4, 2), rel=1e-12)

    # stock flag: the checkpoint is not seen, continual_learning.json gives lr0 0.01 over 1000 epochs, resume 0.5
    monkeypatch.setenv(pw.PRETRAINED_CHECKPOINT_ENV, "/nonexistent.pth")
    trainer = _trainer(ContinualLearningTrainer)
    load_pretrained_weights(trainer.network, str(pretrained_checkpoint))
    trainer.ensure_pretrained_weights()
    trainer.on_train_epoch_start()
    config = load_trainer_config("continual_learning")
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(
        reference(config["pretraining_initial_lr"], config["pretraining_epochs"],
                  config["resume_fraction"] * config["pretraining_epochs"]), rel=1e-12)


def test_trainer_config_lookup_and_errors(monkeypatch, tmp_path):
    assert load_trainer_config("frozen_encoder")["frozen_modules"] == ["encoder"]
    monkeypatch.setenv("nnUNet_covid_trainer_configs", str(tmp_path))
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(TrainerConfigError, match="broken.json is not valid JSON"):
        load_trainer_config("broken")
    with pytest.raises(TrainerConfigError, match="frozen_encoder.json not found"):
        load_trainer_config("frozen_encoder")
    monkeypatch.setenv("nnUNet_covid_trainer_configs", str(tmp_path / "nope"))
    with pytest.raises(TrainerConfigError, match="is not a folder"):
        load_trainer_config("frozen_encoder")


def test_source_balanced_sampling_probabilities():
    case_ids = ["a1", "a2", "b1", "b2", "b3", "c1"]
    sources = ["A", "A", "B", "B", "B", "C"]
    identifiers = source_balanced_identifiers(case_ids, sources)
    counts = {c: int((identifiers == c).sum()) for c in case_ids}
    total = len(identifiers)
    expected = {"a1": 1 / 6, "a2": 1 / 6, "b1": 1 / 9, "b2": 1 / 9, "b3": 1 / 9, "c1": 1 / 3}
    assert {c: n / total for c, n in counts.items()} == pytest.approx(expected, rel=1e-12)


def test_partial_label_trainer_masks_per_case_and_metadata_errors(nnunet_dirs):
    case_sources = {"T_1": {"source": "T", "annotated_labels": [1]}, "E_1": {"source": "E", "annotated_labels": [2]}}
    trainer = _trainer(MultiLesionPartialLabelTrainer, num_classes=3, case_sources=case_sources)
    mask = trainer.annotated_mask(np.array(["E_1", "T_1"]))
    assert mask.tolist() == [[True, False, True], [True, True, False]]
    assert trainer.marginal_loss is trainer.loss.loss  # inside nnU-Net's deep-supervision wrapper

    raw = nnunet_dirs / "nnUNet_raw" / "Dataset951_X"
    with pytest.raises(DatasetMetadataError, match="no per-case source metadata"):
        load_case_sources({}, "Dataset951_X")
    raw.mkdir()
    (raw / "case_sources.json").write_text(json.dumps(case_sources))
    assert load_case_sources({}, "Dataset951_X") == case_sources
