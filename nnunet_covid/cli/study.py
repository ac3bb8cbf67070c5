"""Run or print every step of a study grid (strategies x pre-trained sources x folds), resumable.

See :mod:`nnunet_covid.pipeline.study` for the steps and the grid format.
"""
from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("study", type=Path, help="study grid, e.g. trainer_configs/<study>.json")
    parser.add_argument("--folds", type=int, nargs="+", default=None, help="subset of the study's folds")
    parser.add_argument("--workdir", type=Path, default=None, help="study folder (default ./studies/<name>)")
    parser.add_argument("--device", choices=("cuda", "cpu", "mps"), default=None,
                        help="passed to nnUNetv2_train/predict as -device (default: nnU-Net's, cuda); with cpu, "
                             "nnU-Net's worker counts are lowered and torch.compile is off unless set in the environment")
    parser.add_argument("-np", "--num-processes", type=int, default=1,
                        help="processes for planning/preprocessing and evaluation (default 1)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--dry-run", action="store_true", help="list every step with its status; run nothing")
    mode.add_argument("--print-commands", action="store_true",
                      help="print the pending steps as shell lines, in dependency order, one per line")


def run(args: argparse.Namespace) -> int:
    from nnunet_covid.pipeline.study import execute, load_study, plan_study, step_status, write_manifest

    study = load_study(args.study)
    study_dir = args.workdir or Path("studies") / study["name"]
    steps, runs = plan_study(study, study_dir, args.folds, args.device, args.num_processes)
    if args.dry_run:
        for i, step in enumerate(steps, 1):
            print(f"[{i:>3}] {step_status(step):<13} {step.kind:<9} {step.title}")
        pending = sum(step_status(s) == "pending" for s in steps)
        print(f"{len(steps)} steps, {sum(s.is_done() for s in steps)} done, {pending} to run")
        return 0
    write_manifest(study, study_dir, runs)
    if args.print_commands:
        for step in steps:
            if step_status(step) == "pending":
                print(step.shell_line())
        return 0
    executed = execute(steps)
    print(f"study {study['name']}: {executed} step(s) run, all {len(steps)} done; results in {study_dir}")
    return 0
