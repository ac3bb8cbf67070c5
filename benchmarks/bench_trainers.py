"""Training-step cost of the transfer trainers against nnUNetTrainer on the same plans and patch (CPU).

Target (issue 4): FrozenEncoderTrainer <= 0.8x the baseline step time (paper: 148 s vs 206 s per
epoch, 0.72x). ContinualLearningTrainer and BodyFineTuneTrainer train the same network as the
baseline and should cost the same (1.0x); the hybrid encoder has its own benchmark
(bench_hybrid_encoder.py).

The measurement is bench_hybrid_encoder's: a synthetic dataset planned and preprocessed once with
the stock CLI; every measurement in a fresh process (``measure_trainer``: nnU-Net's ``initialize``,
i.e. the trainer's own optimizer and frozen parts, then ``train_step`` on a random batch of the
plans' batch and patch size, one torch thread), trainers alternating over ``--rounds``; step time =
median of all timed steps, peak memory = extra ``ru_maxrss`` during the steps (median over rounds).

    python benchmarks/bench_trainers.py [--shape 32 96 96] [--rounds 2] [--steps 4]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_hybrid_encoder import prepare_dataset  # noqa: E402

BASELINE = "nnUNetTrainer"
TRAINERS = (BASELINE, "ContinualLearningTrainer", "BodyFineTuneTrainer", "FrozenEncoderTrainer")
WORKER = Path(__file__).resolve().parent / "bench_hybrid_encoder.py"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", type=int, nargs=3, default=(32, 96, 96), help="synthetic volume shape (z y x)")
    parser.add_argument("--cases", type=int, default=2)
    parser.add_argument("--dataset", type=Path, help="existing preprocessed dataset folder (skips the synthetic one)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench_trainers_") as tmp:
        dataset = args.dataset or prepare_dataset(Path(tmp), tuple(args.shape), args.cases)
        env = {**os.environ, "nnUNet_preprocessed": str(dataset.parent), "nnUNet_results": str(Path(tmp) / "results"),
               "nnUNet_compile": "false", "OMP_NUM_THREADS": "1"}
        runs: dict[str, list[dict]] = {name: [] for name in TRAINERS}
        for _ in range(args.rounds):
            for name in TRAINERS:
                out = subprocess.run([sys.executable, str(WORKER), "--worker", name, "--worker-dataset", str(dataset),
                                      "--warmup", str(args.warmup), "--steps", str(args.steps)],
                                     env=env, capture_output=True, text=True)
                if out.returncode != 0:
                    sys.exit(f"{name} measurement failed:\n{out.stderr[-3000:]}")
                runs[name].append(json.loads(out.stdout.strip().splitlines()[-1]))

    summary = {name: {"step": statistics.median(t for r in results for t in r["step_times"]),
                      "peak": statistics.median(r["peak_extra_bytes"] for r in results),
                      "params": results[0]["parameters"], "trainable": results[0]["trainable_parameters"]}
               for name, results in runs.items()}
    first = runs[BASELINE][0]
    print(f"plans: 3d_fullres, patch {first['patch_size']}, batch {first['batch_size']}, features "
          f"{first['features_per_stage']}; {args.rounds} rounds x {args.steps} timed steps, 1 torch thread, CPU\n")
    print("| trainer | step time (s) | x baseline | peak extra RSS (MiB) | x baseline | parameters (trainable) |")
    print("|---|---|---|---|---|---|")
    base = summary[BASELINE]
    for name, s in summary.items():
        print(f"| {name} | {s['step']:.3f} | {s['step'] / base['step']:.2f} | {s['peak'] / 2**20:.0f} | "
              f"{s['peak'] / base['peak']:.2f} | {s['params']:,} ({s['trainable']:,}) |")


if __name__ == "__main__":
    main()
