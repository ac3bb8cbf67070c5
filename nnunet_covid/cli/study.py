"""Run, print or submit to SLURM every step of a study grid (strategies x pre-trained sources x folds), resumable.

See :mod:`nnunet_covid.pipeline.study` for the steps and the grid format and
:mod:`nnunet_covid.pipeline.slurm` for the SLURM jobs.
"""
from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

SLURM_SETTINGS = ("partition", "cpus_per_task", "mem", "time", "account", "sbatch_option")


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {number}")
    return number


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("study", type=Path, help="study grid, e.g. trainer_configs/<study>.json")
    parser.add_argument("--folds", type=int, nargs="+", default=None, help="subset of the study's folds")
    parser.add_argument("--workdir", type=Path, default=None, help="study folder (default ./studies/<name>)")
    parser.add_argument("--device", choices=("cuda", "cpu", "mps"), default=None,
                        help="passed to nnUNetv2_train/predict as -device (default: nnU-Net's, cuda); with cpu, "
                             "nnU-Net's worker counts are lowered and torch.compile is off unless set in the environment")
    parser.add_argument("-np", "--num-processes", type=int, default=1,
                        help="processes for planning/preprocessing and evaluation (default 1)")
    parser.add_argument("--gpus-per-job", type=_positive, default=None, metavar="N",
                        help="GPUs per training (cuda only): N > 1 trains with nnUNetv2_train ... -num_gpus N "
                             "(nnU-Net's DDP); with --slurm each training job requests N GPUs (default 1)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--dry-run", action="store_true",
                      help="list every step with its status; run nothing (with --slurm: write and print the sbatch "
                           "scripts, submit nothing)")
    mode.add_argument("--print-commands", action="store_true",
                      help="print the pending steps as shell lines, in dependency order, one per line")
    mode.add_argument("--status", action="store_true",
                      help="every step's status beside the SLURM state of its job (squeue, else sacct)")
    slurm = parser.add_argument_group("SLURM", "submit the pending steps as dependent batch jobs (job arrays for "
                                               "the folds of a run); a rerun submits only what is missing")
    slurm.add_argument("--slurm", action="store_true", help="submit to SLURM instead of running here")
    slurm.add_argument("--partition", help="#SBATCH --partition")
    slurm.add_argument("--cpus-per-task", type=_positive, help="#SBATCH --cpus-per-task")
    slurm.add_argument("--mem", help="#SBATCH --mem, e.g. 64G")
    slurm.add_argument("--time", help="#SBATCH --time, e.g. 2-00:00:00")
    slurm.add_argument("--account", help="#SBATCH --account")
    slurm.add_argument("--sbatch-option", action="append", default=[], metavar="LINE",
                       help="a further sbatch option for every job: qos=long or --sbatch-option=--qos=long "
                            "(repeatable)")


def _check_modes(args: argparse.Namespace) -> None:
    from nnunet_covid.core.errors import UsageError

    if args.slurm and args.print_commands:
        raise UsageError("--slurm submits the steps; --print-commands prints them: use one")
    given = [f"--{name.replace('_', '-')}" for name in SLURM_SETTINGS if getattr(args, name)]
    if given and not args.slurm:
        raise UsageError(f"{', '.join(given)}: SLURM settings, used with --slurm only")


def _print_status(steps, study_dir: Path) -> None:
    from nnunet_covid.pipeline.slurm import step_states
    from nnunet_covid.pipeline.study import step_status

    states = step_states(steps, study_dir)
    for i, step in enumerate(steps, 1):
        job = "job {} {}".format(*states[step.name]) if step.name in states else "not submitted"
        print(f"[{i:>3}] {step_status(step):<13} {step.kind:<9} {step.title:<48} {job}")
    counts = Counter(state for _, state in states.values())
    in_slurm = ", ".join(f"{n} {state}" for state, n in sorted(counts.items())) or "no job submitted"
    print(f"{len(steps)} steps, {sum(s.is_done() for s in steps)} done; SLURM jobs: {in_slurm}")


def _submit(args: argparse.Namespace, study: dict, steps, study_dir: Path) -> None:
    from nnunet_covid.pipeline.slurm import SlurmOptions, check_extra_option, submit_study

    options = SlurmOptions(partition=args.partition, cpus_per_task=args.cpus_per_task, mem=args.mem, time=args.time,
                           account=args.account, extra=tuple(check_extra_option(o) for o in args.sbatch_option))
    jobs = submit_study(steps, study_dir, study["name"], options, dry_run=args.dry_run)
    if args.dry_run:
        for job in jobs:
            after = f" after {', '.join(job.dependencies)}" if job.dependencies else ""
            print(f"# ---- {job.script}: {len(job.steps)} step(s){after}")
            print(job.script.read_text(), end="")
        print(f"{len(jobs)} sbatch script(s) written for {sum(len(j.steps) for j in jobs)} step(s); nothing submitted")
        return
    done = sum(s.is_done() for s in steps)
    print(f"study {study['name']}: {len(jobs)} job(s) submitted for {sum(len(j.steps) for j in jobs)} step(s), "
          f"{done} of {len(steps)} steps done; `nnunet-covid study {args.study} --status` shows their states")


def run(args: argparse.Namespace) -> int:
    from nnunet_covid.pipeline.study import execute, load_study, plan_study, step_status, write_manifest

    _check_modes(args)
    study = load_study(args.study)
    study_dir = args.workdir or Path("studies") / study["name"]
    steps, runs = plan_study(study, study_dir, args.folds, args.device, args.num_processes,
                             num_gpus=args.gpus_per_job)
    if args.status:
        _print_status(steps, study_dir)
        return 0
    if args.dry_run and not args.slurm:
        for i, step in enumerate(steps, 1):
            print(f"[{i:>3}] {step_status(step):<13} {step.kind:<9} {step.title}")
        pending = sum(step_status(s) == "pending" for s in steps)
        print(f"{len(steps)} steps, {sum(s.is_done() for s in steps)} done, {pending} to run")
        return 0
    if not args.dry_run:
        write_manifest(study, study_dir, runs)
    if args.slurm:
        _submit(args, study, steps, study_dir)
        return 0
    if args.print_commands:
        for step in steps:
            if step_status(step) == "pending":
                print(step.shell_line())
        return 0
    executed = execute(steps)
    print(f"study {study['name']}: {executed} step(s) run, all {len(steps)} done; results in {study_dir}")
    return 0
