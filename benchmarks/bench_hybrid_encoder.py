"""Training-step cost of HybridEncoderTrainer against nnUNetTrainer on the same plans and patch (CPU).

Target (issue 4): hybrid step time <= 1.3x and peak memory <= 1.3x the baseline's.

A synthetic chest-CT dataset (``--cases`` volumes of ``--shape``) is planned and preprocessed once
with the stock nnU-Net CLI (``3d_fullres``; or pass ``--dataset`` to use an existing preprocessed
one). Each measurement runs in its own process, baseline and hybrid alternating (``--rounds``):
the trainer is built and initialised as nnU-Net does (weight values do not affect cost), then ``trainer.train_step``
(forward, Dice+CE with deep supervision, backward, gradient clipping, SGD step) runs on a random
batch of the plans' batch and patch size: ``--warmup`` untimed steps, then ``--steps`` timed ones.

- step time: median over all timed steps of all rounds (one torch thread);
- peak memory: ``ru_maxrss`` at the end minus the process RSS right before the first step, i.e.
  the extra resident memory of training steps (activations, gradients, optimizer state);
  median over rounds; also the whole process's ``ru_maxrss`` (imports, weights of both encoders);
- activation bytes: bytes of the distinct tensors autograd saves for backward in one forward +
  loss (``torch.autograd.graph.saved_tensors_hooks``), a load-independent view of the same.

    python benchmarks/bench_hybrid_encoder.py [--shape 32 96 96] [--rounds 2] [--steps 4]

:func:`measure_trainer` is the per-trainer measurement, usable from other benchmarks.
"""
from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

BASELINE, HYBRID = "nnUNetTrainer", "HybridEncoderTrainer"
DATASET_ID, DATASET_NAME = 990, "BenchHybrid"


def current_rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def saved_activation_bytes(trainer, batch: dict) -> int:
    """Bytes of the distinct tensors autograd keeps for backward in one forward + loss of ``trainer``."""
    import torch

    storages: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = trainer.loss(trainer.network(batch["data"]), batch["target"])
    del loss
    return sum(storages.values())


def measure_trainer(trainer_name: str, preprocessed_dataset: Path, configuration: str = "3d_fullres",
                    plans: str = "nnUNetPlans", warmup: int = 1, steps: int = 4, device: str = "cpu") -> dict:
    """Step times (s) and peak extra memory (bytes) of ``trainer_name``'s ``train_step``; run it in a fresh process.

    On the CPU: one torch thread, memory = extra ``ru_maxrss`` during the steps (the high-water mark is
    per process), plus the saved-activation bytes. On CUDA the trainer runs as nnU-Net runs it there:
    torch.compile (unless ``nnUNet_compile`` says otherwise) and fp16 autocast with a GradScaler; times
    are synchronised, memory = peak ``torch.cuda.max_memory_allocated`` minus the memory held before the
    first step (weights, optimizer state).
    """
    import torch
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    import nnunet_covid.training as ours

    cuda = device.startswith("cuda")
    if not cuda:
        torch.set_num_threads(1)
    torch.manual_seed(0)
    cls = nnUNetTrainer if trainer_name == BASELINE else getattr(ours, trainer_name)
    plans_dict = {**json.loads((preprocessed_dataset / f"{plans}.json").read_text()), "continue_training": False}
    dataset_json = json.loads((preprocessed_dataset / "dataset.json").read_text())
    trainer = cls(plans_dict, configuration, 0, dataset_json, torch.device(device))
    trainer.initialize()
    trainer.network.train()
    patch = trainer.configuration_manager.patch_size
    data = torch.randn(trainer.batch_size, trainer.num_input_channels, *patch, device=trainer.device)
    with torch.no_grad():
        outputs = trainer.network(data)
    outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
    target = [torch.randint(0, trainer.label_manager.num_segmentation_heads, (trainer.batch_size, 1, *o.shape[2:]),
                            device=trainer.device).float() for o in outputs]
    cases = sorted(dataset_json.get("case_sources", {})) or ["case"]  # the partial-label loss masks labels per case
    keys = [cases[i % len(cases)] for i in range(trainer.batch_size)]
    if hasattr(trainer, "annotated_mask"):  # a case's target holds only the labels its source annotates
        annotated = trainer.annotated_mask(keys).to(trainer.device)
        target = [torch.where(annotated.gather(1, t.long().flatten(1)).view_as(t), t, 0) for t in target]
    batch = {"data": data, "target": target if len(target) > 1 else target[0], "keys": keys}
    del outputs
    compiled = trainer._do_i_compile()  # what nnU-Net decided in initialize()
    activation_bytes = None if compiled else saved_activation_bytes(trainer, batch)
    if cuda:
        torch.cuda.synchronize()
        held = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    rss_before = current_rss_bytes()
    times = []
    for i in range(warmup + steps):
        start = time.perf_counter()
        trainer.train_step(batch)
        if cuda:
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    if cuda:
        peak = torch.cuda.max_memory_allocated()
        peak_extra = peak - held
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        peak_extra = peak - rss_before
    return {"trainer": trainer_name, "device": device, "compiled": compiled, "amp": cuda, "step_times": times,
            "peak_extra_bytes": peak_extra, "peak_bytes": peak, "activation_bytes": activation_bytes,
            "patch_size": list(patch), "batch_size": trainer.batch_size,
            "features_per_stage": trainer.configuration_manager.network_arch_init_kwargs.get("features_per_stage"),
            "trainable_parameters": sum(p.numel() for p in trainer.network.parameters() if p.requires_grad),
            "parameters": sum(p.numel() for p in trainer.network.parameters())}


def prepare_dataset(root: Path, shape: tuple[int, ...], cases: int) -> Path:
    """Plan and preprocess a synthetic COVID dataset under ``root`` with the stock CLI; its preprocessed folder."""
    from nnunet_covid.core.nnunet_commands import nnunet_environment, nnunet_tool, run_nnunet
    from nnunet_covid.pipeline.synthetic_ct import make_case, write_nnunet_dataset

    env = nnunet_environment(root)
    write_nnunet_dataset(Path(env["nnUNet_raw"]), DATASET_ID, DATASET_NAME,
                         [make_case("covid", seed, shape=shape) for seed in range(cases)])
    run_nnunet([nnunet_tool("nnUNetv2_plan_and_preprocess"), "-d", str(DATASET_ID), "-c", "3d_fullres", "-np", "1"],
               env, root / "plan.log", report=lambda _: None)
    return Path(env["nnUNet_preprocessed"]) / f"Dataset{DATASET_ID:03d}_{DATASET_NAME}"


def run_worker(args) -> None:
    os.environ.setdefault("nnUNet_results", tempfile.mkdtemp(prefix="bench_hybrid_results_"))
    os.environ.setdefault("nnUNet_preprocessed", str(Path(args.worker_dataset).parent))
    print(json.dumps(measure_trainer(args.worker, Path(args.worker_dataset), warmup=args.warmup, steps=args.steps)))


def add_measurement_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every side-by-side trainer benchmark takes."""
    parser.add_argument("--shape", type=int, nargs=3, default=(32, 96, 96), help="synthetic volume shape (z y x)")
    parser.add_argument("--cases", type=int, default=2)
    parser.add_argument("--dataset", type=Path, help="existing preprocessed dataset folder (skips the synthetic one)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=4)


def measure_side_by_side(trainers: tuple[str, ...], args: argparse.Namespace) -> dict[str, list[dict]]:
    """``measure_trainer`` results per trainer: each in a fresh process, the trainers alternating over the rounds."""
    with tempfile.TemporaryDirectory(prefix="bench_trainers_") as tmp:
        dataset = args.dataset or prepare_dataset(Path(tmp), tuple(args.shape), args.cases)
        env = {**os.environ, "nnUNet_preprocessed": str(dataset.parent), "nnUNet_results": str(Path(tmp) / "results"),
               "nnUNet_compile": "false"}
        runs: dict[str, list[dict]] = {name: [] for name in trainers}
        for _ in range(args.rounds):
            for name in trainers:
                out = subprocess.run([sys.executable, __file__, "--worker", name, "--worker-dataset", str(dataset),
                                      "--warmup", str(args.warmup), "--steps", str(args.steps)],
                                     env=env, capture_output=True, text=True)
                if out.returncode != 0:
                    sys.exit(f"{name} measurement failed:\n{out.stderr[-3000:]}")
                runs[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
    return runs


def summarise(runs: dict[str, list[dict]]) -> dict[str, dict]:
    """Per trainer: median step time, median peak extra / total RSS, activation bytes and parameter counts."""
    return {name: {"step": statistics.median(t for r in results for t in r["step_times"]),
                   "peak": statistics.median(r["peak_extra_bytes"] for r in results),
                   "total": statistics.median(r["peak_bytes"] for r in results),
                   "act": results[0]["activation_bytes"] or 0, "params": results[0]["parameters"],
                   "trainable": results[0]["trainable_parameters"]}
            for name, results in runs.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_measurement_arguments(parser)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--worker-dataset", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return run_worker(args)

    runs = measure_side_by_side((BASELINE, HYBRID), args)
    summary = summarise(runs)
    first = runs[BASELINE][0]
    print(f"plans: 3d_fullres, patch {first['patch_size']}, batch {first['batch_size']}, features "
          f"{first['features_per_stage']}; {args.rounds} rounds x {args.steps} timed steps, 1 torch thread\n")
    print("| trainer | step time (s) | peak extra RSS (MiB) | peak RSS of the process (MiB) | saved activations (MiB) "
          "| parameters (trainable) |")
    print("|---|---|---|---|---|---|")
    for name, s in summary.items():
        print(f"| {name} | {s['step']:.3f} | {s['peak'] / 2**20:.0f} | {s['total'] / 2**20:.0f} | {s['act'] / 2**20:.0f} | "
              f"{s['params']:,} ({s['trainable']:,}) |")
    base, hyb = summary[BASELINE], summary[HYBRID]
    print(f"| ratio hybrid / baseline | {hyb['step'] / base['step']:.2f}x | {hyb['peak'] / base['peak']:.2f}x | "
          f"{hyb['total'] / base['total']:.2f}x | {hyb['act'] / base['act']:.2f}x | |")


if __name__ == "__main__":
    main()
