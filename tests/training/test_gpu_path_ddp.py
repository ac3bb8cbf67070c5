"""DDP (``nnUNetv2_train -num_gpus N``) on the CPU: 2 processes over gloo; one step equals a single-process step.

nnU-Net assumes CUDA under DDP (NCCL, ``device_ids=[rank]``): the worker processes join their own gloo
process group, keep the trainer on the CPU and let nnU-Net's ``initialize`` wrap the network in a CPU
DDP. Everything else is the trainers' own code: batch split per rank, frozen parameters outside DDP's
reduction, the hybrid's no-grad adapted encoder, the marginal loss's all-gathered batch Dice, the
pre-trained weights loaded into the unwrapped module on every rank, source-balanced sampling per rank.

Equivalence: one ``train_step`` of each rank on its half of a global batch of 2 must give the weights of
one single-process ``train_step`` on the whole batch: max absolute difference <= 1e-5. The bound holds on
any CPU: everything runs in float32 and DDP only sums the same per-sample gradients in another order
(all-reduce of two halves instead of one batch sum), which moves a gradient entry by a few float32
roundings (2**-24 each) of the magnitudes summed, about 1e-7 of them. The first SGD step of these trainers
(nnU-Net's SGD, momentum buffer starting at the gradient, lr <= 1e-2) changes a weight by lr times its
gradient, so the weights differ by about lr * 1e-7 * |gradient|, orders of magnitude below the bound; a DDP mistake (an unreduced, or
twice-reduced, gradient; a frozen weight updated) moves weights by lr times a whole gradient, 1e-4 to 1e-2.
"""
from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from nnunet_covid.training.network_wrapping import unwrap_network

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

torch.set_num_threads(1)

TOLERANCE = 1e-5
# (trainer, dataset: "pretrain" | "target", batch Dice)
CASES = [
    ("FrozenEncoderTrainer", "target", False),
    ("HybridEncoderTrainer", "target", False),
    ("ContinualLearningTrainer", "target", False),
    ("MultiLesionPartialLabelTrainer", "pretrain", True),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _trainer(name: str, preprocessed: Path, batch_dice: bool, ddp: bool):
    import nnunet_covid.training as training

    plans = json.loads((preprocessed / "nnUNetPlans.json").read_text())
    plans["configurations"]["3d_fullres"]["batch_dice"] = batch_dice
    plans["continue_training"] = False
    dataset_json = json.loads((preprocessed / "dataset.json").read_text())
    torch.manual_seed(0)
    fold = "all" if "case_sources" in dataset_json else 0  # pre-training datasets train on fold all
    trainer = getattr(training, name)(plans, "3d_fullres", fold, dataset_json, torch.device("cpu"))
    if ddp:  # nnU-Net moved it to cuda:<rank>; this test runs DDP on the CPU
        trainer.device, trainer.grad_scaler = torch.device("cpu"), None
    trainer.initialize()
    if hasattr(trainer, "ensure_pretrained_weights"):
        trainer.ensure_pretrained_weights()
    return trainer


def _global_batch(trainer, keys: list[str]) -> dict:
    generator = torch.Generator().manual_seed(1)
    patch = trainer.configuration_manager.patch_size
    num_classes = trainer.label_manager.num_segmentation_heads
    data = torch.randn((2, 1, *patch), generator=generator)
    target = torch.randint(0, num_classes, (2, 1, *patch), generator=generator)
    if hasattr(trainer, "annotated_mask"):  # each case only holds the labels its source annotates
        annotated = trainer.annotated_mask(keys)
        target = torch.where(annotated.gather(1, target.flatten(1)).view_as(target), target, 0)
    targets = [torch.nn.functional.interpolate(target.float(), scale_factor=tuple(scale), mode="nearest")
               for scale in trainer._get_deep_supervision_scales()]
    return {"data": data, "target": targets, "keys": keys}


def _rank_batch(batch: dict, rank: int) -> dict:
    return {"data": batch["data"][rank:rank + 1], "target": [t[rank:rank + 1] for t in batch["target"]],
            "keys": batch["keys"][rank:rank + 1]}


def _step(trainer, batch: dict) -> dict[str, torch.Tensor]:
    trainer.on_train_epoch_start()
    trainer.train_step(batch)
    return {k: v.detach().clone() for k, v in unwrap_network(trainer.network).state_dict().items()}


def _keys(preprocessed: Path) -> list[str]:
    """Two training cases: one per source for the multi-lesion set, else the first two."""
    dataset_json = json.loads((preprocessed / "dataset.json").read_text())
    sources = dataset_json.get("case_sources")
    if sources:
        by_source = {}
        for case, meta in sorted(sources.items()):
            by_source.setdefault(meta["source"], case)
        return sorted(by_source.values())[:2]
    return ["a", "b"]


def _worker(rank: int, world: int, port: int, env: dict, out: str) -> None:
    os.environ.update(env)
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    import nnunetv2.training.nnUNetTrainer.nnUNetTrainer as nnunet_trainer_module
    from torch.nn.parallel import DistributedDataParallel

    # nnU-Net wraps with device_ids=[rank] (a CUDA module); a CPU module takes none
    nnunet_trainer_module.DDP = lambda module, device_ids=None: DistributedDataParallel(module)
    results = {}
    try:
        for name, dataset, batch_dice in CASES:
            preprocessed = Path(env[f"_preprocessed_{dataset}"])
            trainer = _trainer(name, preprocessed, batch_dice, ddp=True)
            assert trainer.is_ddp and trainer.batch_size == 1
            assert type(trainer.network).__name__ == "DistributedDataParallel"
            batch = _global_batch(trainer, _keys(preprocessed))
            results[name] = {"state": _step(trainer, _rank_batch(batch, rank))}
            if hasattr(trainer, "case_sources"):
                tr, _ = trainer.get_tr_and_val_datasets()
                results[name]["identifiers"] = list(map(str, tr.identifiers))
            dist.barrier()
        torch.save(results, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ddp_results(pretrained_setup, tmp_path_factory):
    s = pretrained_setup
    out = tmp_path_factory.mktemp("ddp")
    preprocessed = Path(s.env["nnUNet_preprocessed"])
    env = {k: s.env[k] for k in ("nnUNet_raw", "nnUNet_preprocessed")}
    env.update({"nnUNet_results": str(out / "results"), "nnUNet_covid_pretrained": str(s.checkpoint),
                "nnUNet_n_proc_DA": "1", "nnUNet_def_n_proc": "1", "nnUNet_compile": "false",
                "_preprocessed_target": str(preprocessed / s.target_dataset),
                "_preprocessed_pretrain": str(preprocessed / s.pretrain_dataset)})
    mp.spawn(_worker, args=(2, _free_port(), env, str(out)), nprocs=2, join=True)
    ranks = [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)]
    return env, ranks


@pytest.mark.parametrize("name, dataset, batch_dice", CASES, ids=[c[0] for c in CASES])
def test_ddp_step_equals_single_process_step(ddp_results, name, dataset, batch_dice, monkeypatch):
    env, ranks = ddp_results
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    preprocessed = Path(env[f"_preprocessed_{dataset}"])
    trainer = _trainer(name, preprocessed, batch_dice, ddp=False)
    assert not trainer.is_ddp and trainer.batch_size == 2
    before = {k: v.clone() for k, v in unwrap_network(trainer.network).state_dict().items()}
    single = _step(trainer, _global_batch(trainer, _keys(preprocessed)))
    rank0, rank1 = ranks[0][name]["state"], ranks[1][name]["state"]
    assert single.keys() == rank0.keys()
    moved = [k for k in single if not torch.equal(single[k], before[k])]
    assert moved, "the step changed nothing: the comparison would be empty"
    for key, value in single.items():
        assert torch.equal(rank0[key], rank1[key]), f"ranks disagree on {key}"
        difference = (rank0[key].float() - value.float()).abs().max().item() if value.numel() else 0.0
        assert difference <= TOLERANCE, f"{key}: DDP vs single process differ by {difference}"
    for module in trainer.frozen_modules() if hasattr(trainer, "frozen_modules") else []:
        for key, value in module.state_dict().items():  # frozen parts did not move in either run
            prefix = next(n for n, m in unwrap_network(trainer.network).named_modules() if m is module)
            assert torch.equal(rank0[f"{prefix}.{key}"], before[f"{prefix}.{key}"])
    if "identifiers" in ranks[0][name]:  # every rank samples from the same source-balanced identifiers
        tr, _ = trainer.get_tr_and_val_datasets()
        assert ranks[0][name]["identifiers"] == ranks[1][name]["identifiers"] == list(map(str, tr.identifiers))
