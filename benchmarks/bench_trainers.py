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
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_hybrid_encoder import BASELINE, add_measurement_arguments, measure_side_by_side, summarise  # noqa: E402

TRAINERS = (BASELINE, "ContinualLearningTrainer", "BodyFineTuneTrainer", "FrozenEncoderTrainer")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_measurement_arguments(parser)
    args = parser.parse_args()

    runs = measure_side_by_side(TRAINERS, args)
    summary = summarise(runs)
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
