"""Fine-tuning recipes: each schedule against its formula (nnU-Net's own schedulers as the oracle where they exist),
epoch scaling for short trainings, parameter groups joining in the trainers, resuming, and DDP after a group joins."""
from __future__ import annotations

import json

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler
from nnunetv2.training.lr_scheduler.warmup import Lin_incr_LRScheduler, PolyLRScheduler_offset
from nnunetv2.training.nnUNetTrainer.variants.lr_schedule.nnUNetTrainer_warmup import nnUNetTrainer_warmup
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from nnunet_covid import training
from nnunet_covid.core.errors import TrainerConfigError
from nnunet_covid.pipeline.study import load_study
from nnunet_covid.training import (BodyFineTuneTrainer_headsfirst, FrozenEncoderTrainer_unfreeze,
                                   HybridEncoderTrainer_unfreeze, HybridEncoderTrainer_unfreeze_demo)
from nnunet_covid.training.continual_schedule import ContinuedPolyLRScheduler
from nnunet_covid.training.finetune_schedule import FineTuneLRScheduler, FineTuneRecipe, PolyDecay
from nnunet_covid.training.staged_parameters import rewrap_ddp
from nnunet_covid.training.trainer_config import load_trainer_config, trainer_configs_dir
from nnunet_covid.training.transfer_trainer import PretrainedTransferTrainer
from helpers.tiny_trainers import make_trainer, prepare_dirs, random_batch, tiny_plans, write_trained_checkpoint

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")
torch.set_num_threads(1)

DATASET = "Dataset955_RecipeTarget"
PLANS = tiny_plans(DATASET)


def _optimizer(groups: int = 1):
    return torch.optim.SGD([{"params": [nn.Parameter(torch.zeros(1))]} for _ in range(groups)], lr=1.0)


def _lrs(scheduler_class, *args, epochs=range(1000)):
    """Per-epoch lr that ``scheduler_class(optimizer, *args)`` sets, stepped as nnU-Net steps it."""
    optimizer = _optimizer()
    scheduler = scheduler_class(optimizer, *args)
    lrs = []
    for epoch in epochs:
        scheduler.step(epoch)
        lrs.append(optimizer.param_groups[0]["lr"])
    return lrs


def test_without_warmup_the_schedule_is_nnunets_poly():
    ours = _lrs(FineTuneLRScheduler, PolyDecay(0.01), 1000)
    assert ours == pytest.approx(_lrs(PolyLRScheduler, 0.01, 1000), rel=1e-12, abs=1e-15)


def test_linear_warmup_then_poly_is_nnunets_nnUNetTrainer_warmup():
    """nnU-Net's nnUNetTrainer_warmup: Lin_incr_LRScheduler for 50 epochs, then PolyLRScheduler_offset."""
    ours = _lrs(FineTuneLRScheduler, PolyDecay(0.01), 1000, 50)
    reference = _lrs(Lin_incr_LRScheduler, 0.01, 50, epochs=range(50)) + \
        _lrs(PolyLRScheduler_offset, 0.01, 1000, 50, epochs=range(50, 1000))
    assert ours == pytest.approx(reference, rel=1e-12, abs=1e-15)
    assert ours[0] == pytest.approx(0.01 / 50) and ours[49] == ours[50] == pytest.approx(0.01)
    nnssl = _lrs(FineTuneLRScheduler, PolyDecay(1e-3), 1000, 50)  # nnssl: the same shape from 1e-3
    assert nnssl == pytest.approx([lr / 10 for lr in ours], rel=1e-12, abs=1e-16)


def test_heads_first_then_whole_network_warmup_follows_multitalent():
    lr0, heads_lr, h, w, e_total = 0.01, 5e-4, 10, 50, 1000
    ours = _lrs(FineTuneLRScheduler, PolyDecay(lr0), e_total, w, h, heads_lr)
    for e, lr in enumerate(ours):
        if e < h:
            expected = heads_lr * (e + 1) / h
        elif e < h + w:
            expected = lr0 * (e - h + 1) / w
        else:
            expected = lr0 * (1 - (e - h - w) / (e_total - h - w)) ** 0.9
        assert lr == pytest.approx(expected, rel=1e-12, abs=1e-15), e
    assert ours[h - 1] == pytest.approx(heads_lr) and ours[h] == pytest.approx(lr0 / w)
    assert ours[h + w - 1] == ours[h + w] == pytest.approx(lr0)


def test_continual_warmup_rises_to_the_resumed_rate_then_continues_the_pretraining_curve():
    lr0, e_pre, r, w, e_ft = 0.01, 1000, 500.0, 5, 105
    ours = _lrs(ContinuedPolyLRScheduler, lr0, e_pre, r, e_ft, 0.9, w, epochs=range(e_ft))

    def pretraining_lr(epoch):
        return _lrs(PolyLRScheduler, lr0, e_pre, epochs=[epoch])[0]

    resumed = pretraining_lr(r)
    for e in range(w):
        assert ours[e] == pytest.approx(resumed * (e + 1) / w, rel=1e-12)
    for e in range(w, e_ft):
        assert ours[e] == pytest.approx(pretraining_lr(r + (e - w) * (e_pre - r) / (e_ft - w)), rel=1e-12)


def test_a_group_that_joins_later_has_no_rate_then_warms_up():
    optimizer = _optimizer(2)
    optimizer.param_groups[1].update(join_epoch=250, join_warmup_epochs=50)
    scheduler = FineTuneLRScheduler(optimizer, PolyDecay(0.01), 1000)
    for epoch in (0, 249, 250, 251, 299, 300, 999):
        scheduler.step(epoch)
        base, joined = (g["lr"] for g in optimizer.param_groups)
        assert base == pytest.approx(0.01 * (1 - epoch / 1000) ** 0.9)
        assert joined == pytest.approx(0.0 if epoch < 250 else base * min(1.0, (epoch - 249) / 50)), epoch


@pytest.mark.parametrize("epochs, expected", [
    (1000, (50, 10, 250, 50)), (1500, (50, 10, 250, 50)),  # at least the recipe's length: unchanged
    (100, (5, 1, 25, 5)),  # 10 x shorter: every count / 10, at least 1
    (13, (1, 1, 3, 1)),  # the _demo variants
    (1, (1, 1, 1, 1)),  # the _tiny variants
])
def test_recipe_epochs_scale_down_for_shorter_trainings(epochs, expected):
    recipe = FineTuneRecipe(warmup_epochs=50, heads_first_epochs=10, unfreeze_after_epochs=250, unfreeze_warmup_epochs=50)
    scaled = recipe.scaled(epochs)
    assert (scaled.warmup_epochs, scaled.heads_first_epochs, scaled.unfreeze_after_epochs,
            scaled.unfreeze_warmup_epochs) == expected
    assert FineTuneRecipe().scaled(epochs) == FineTuneRecipe()  # zero stays zero, None stays None


def test_recipe_config_errors_name_the_file(monkeypatch, tmp_path):
    monkeypatch.setenv("nnUNet_covid_trainer_configs", str(tmp_path))
    (tmp_path / "body_finetune.json").write_text(json.dumps({"recipes": {"warmup": {"warmup_epochs": 50}}}))
    with pytest.raises(TrainerConfigError, match="body_finetune.json has no recipe 'headsfirst'.*recipes: warmup"):
        load_trainer_config("body_finetune", "headsfirst")
    assert load_trainer_config("body_finetune", "warmup")["warmup_epochs"] == 50
    with pytest.raises(TrainerConfigError, match="x.json: unfreeze_after_epochs \\(5\\) must not come before"):
        FineTuneRecipe.from_config({"heads_first_epochs": 10, "unfreeze_after_epochs": 5}, "x")
    with pytest.raises(TrainerConfigError, match="x.json: 'warmup_epochs' must be int"):
        FineTuneRecipe.from_config({"warmup_epochs": "50"}, "x")


def test_shipped_grid_compares_every_recipe_variant_with_the_papers_strategies():
    study = load_study(trainer_configs_dir() / "finetune_recipes_covid19_ct_seg.json")
    trainers = [s["trainer"] for s in study["strategies"]]
    transfer = {name: getattr(training, name) for name in training.__all__
                if issubclass(getattr(training, name), PretrainedTransferTrainer)}
    recipes = {name for name, cls in transfer.items() if cls.recipe and not name.endswith(("_tiny", "_demo"))}
    papers = {"nnUNetTrainer", "ContinualLearningTrainer", "BodyFineTuneTrainer", "FrozenEncoderTrainer",
              "HybridEncoderTrainer"}
    assert set(trainers) == recipes | papers | {nnUNetTrainer_warmup.__name__}
    for name in recipes:  # each variant's recipe exists in its strategy's config
        assert load_trainer_config(transfer[name].strategy, transfer[name].recipe)
    assert study["baseline"] == "scratch"


# ------------------------------------------------------------------------------------------ in the trainers
@pytest.fixture
def dirs(tmp_path, monkeypatch):
    return prepare_dirs(tmp_path, monkeypatch, DATASET)


def _start_epoch(trainer, epoch):
    trainer.current_epoch = epoch
    trainer.on_train_epoch_start()


def _changed_after_a_step(trainer, parameters, seed=0):
    before = [p.detach().clone() for p in parameters]
    trainer.train_step(random_batch(trainer, seed))
    return [not torch.equal(b, p) for b, p in zip(before, parameters)]


def test_heads_first_trains_the_heads_alone_then_the_whole_network(dirs):
    trainer = make_trainer(BodyFineTuneTrainer_headsfirst, PLANS)
    network = trainer.network
    heads, body = (list(g["params"]) for g in trainer.optimizer.param_groups)
    assert [g["name"] for g in trainer.optimizer.param_groups] == ["heads", "body"]
    assert {id(p) for p in heads} == {id(p) for p in network.decoder.seg_layers.parameters()}
    full_resolution_head = list(network.decoder.seg_layers[-1].parameters())

    _start_epoch(trainer, 0)
    assert [g["lr"] for g in trainer.optimizer.param_groups] == pytest.approx([5e-4 / 10, 0.0])
    assert all(_changed_after_a_step(trainer, full_resolution_head))
    assert not any(_changed_after_a_step(trainer, body))
    _start_epoch(trainer, 10)
    assert all(p.requires_grad for p in body)
    assert [g["lr"] for g in trainer.optimizer.param_groups] == pytest.approx([0.01 / 50] * 2)
    weights = [p for p in body if p.ndim > 1]
    assert all(_changed_after_a_step(trainer, weights))
    log = open(trainer.log_file).read()
    assert "epoch 10: parameter groups body (62 tensors) join training" in log
    assert "Current learning rate: 0.0002" in log  # nnU-Net's own log line: lr0 / 50


def test_unfreezing_the_encoder_after_k_epochs_and_resuming_after_it(dirs, tmp_path, monkeypatch):
    pretrained = write_trained_checkpoint(tmp_path / "pretrained.pth", PLANS, num_classes=3)
    monkeypatch.setenv("nnUNet_covid_pretrained", str(pretrained))
    trainer = make_trainer(FrozenEncoderTrainer_unfreeze, PLANS)
    trainer.ensure_pretrained_weights()
    encoder = list(trainer.network.encoder.parameters())
    groups = trainer.optimizer.param_groups
    assert [(g["name"], g["join_epoch"], g["join_warmup_epochs"]) for g in groups] == [("network", 0, 0),
                                                                                       ("unfrozen", 250, 50)]
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in encoder}

    _start_epoch(trainer, 249)
    assert not trainer.network.encoder.training and not any(p.requires_grad for p in encoder)
    assert groups[1]["lr"] == 0.0
    assert not any(_changed_after_a_step(trainer, encoder))
    _start_epoch(trainer, 250)
    assert trainer.network.encoder.training and all(p.requires_grad for p in encoder)
    poly = 0.01 * (1 - 250 / 1000) ** 0.9
    assert [g["lr"] for g in groups] == pytest.approx([poly, poly / 50])
    assert all(_changed_after_a_step(trainer, [p for p in encoder if p.ndim > 1]))

    trainer.save_checkpoint(str(tmp_path / "latest.pth"))  # nnU-Net's own checkpoint: epoch 251 next
    resumed = make_trainer(FrozenEncoderTrainer_unfreeze, PLANS)
    resumed.load_checkpoint(str(tmp_path / "latest.pth"))  # the optimizer state has the same groups
    assert resumed.current_epoch == 251 and not any(p.requires_grad for p in resumed.network.encoder.parameters())
    resumed.on_train_epoch_start()
    assert all(p.requires_grad for p in resumed.network.encoder.parameters())
    assert resumed.optimizer.param_groups[1]["lr"] == pytest.approx(0.01 * (1 - 251 / 1000) ** 0.9 * 2 / 50)


def test_hybrid_adapted_encoder_trains_after_unfreezing(dirs):
    trainer = make_trainer(HybridEncoderTrainer_unfreeze, PLANS)
    network = trainer.network
    adapted = [p for p in network.adapted_encoder.parameters() if p.ndim > 1]
    _start_epoch(trainer, 249)
    assert not any(_changed_after_a_step(trainer, adapted))
    _start_epoch(trainer, 250)
    assert network.adapted_encoder_trainable and network.adapted_encoder.training
    assert all(_changed_after_a_step(trainer, adapted))

    demo = make_trainer(HybridEncoderTrainer_unfreeze_demo, PLANS)  # 13 epochs: K = round(250 * 13 / 1000)
    assert demo.optimizer.param_groups[-1]["join_epoch"] == 3
    assert demo.provenance()["finetune_recipe"] == {"warmup_epochs": 0, "heads_first_epochs": 0, "heads_first_lr": 5e-4,
                                                    "unfreeze_after_epochs": 3, "unfreeze_warmup_epochs": 1,
                                                    "recipe_epochs": 1000}


# ----------------------------------------------------------------------------------------------------- DDP
def _ddp_worker(rank: int, init_file: str, results: str):
    """Rank ``rank`` of 2 (gloo, CPU): a layer frozen when DDP wrapped the model joins training; its gradients after a
    backward pass through the old wrapper, then through the rebuilt one, go to ``results``."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 1))
    model[0].requires_grad_(False)
    ddp = DistributedDataParallel(model)
    model[0].requires_grad_(True)  # the group joins training
    data = torch.full((2, 4), float(rank + 1))  # different data on each rank
    grads = {}
    for name in ("old wrapper", "rewrapped"):
        if name == "rewrapped":
            ddp = rewrap_ddp(ddp)
        model.zero_grad()
        ddp(data).sum().backward()
        grads[name] = model[0].weight.grad.clone()
    torch.save(grads, f"{results}.{rank}")
    dist.destroy_process_group()


def test_parameters_that_join_later_are_synchronised_only_after_rewrapping_ddp(tmp_path):
    results = str(tmp_path / "grads")
    # fork: the ranks reuse this process's imports (spawn would import nnU-Net again in each, ~10 s)
    mp.start_processes(_ddp_worker, args=(str(tmp_path / "init"), results), nprocs=2, start_method="fork")
    ranks = [torch.load(f"{results}.{rank}") for rank in range(2)]
    assert not torch.equal(ranks[0]["old wrapper"], ranks[1]["old wrapper"])  # DDP never registered the layer
    assert torch.equal(ranks[0]["rewrapped"], ranks[1]["rewrapped"])  # all-reduced (averaged) across the ranks
    assert torch.allclose(ranks[0]["rewrapped"], (ranks[0]["old wrapper"] + ranks[1]["old wrapper"]) / 2)
