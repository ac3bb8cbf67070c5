"""Run the end-to-end demo on built-in synthetic data: convert, plan, pre-train, transfer, predict, evaluate.

See :mod:`nnunet_covid.pipeline.demo`.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from nnunet_covid.core.errors import UsageError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workdir", type=Path, default=Path("nnunet_covid_demo"),
                        help="folder for raw data, nnU-Net folders, logs and results (default: ./nnunet_covid_demo); "
                             "rerunning with the same folder resumes")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="device for training/inference")
    parser.add_argument("--quick", action="store_true", help="smoke run: smaller data, 1-epoch schedules")


def run(args: argparse.Namespace) -> int:
    from nnunet_covid.pipeline.demo import PRESETS, Demo

    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise UsageError("--device cuda was given but torch sees no CUDA device; use --device cpu")
    if args.workdir.exists() and not args.workdir.is_dir():
        raise UsageError(f"--workdir {args.workdir}: exists and is not a folder")
    try:
        args.workdir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"--workdir {args.workdir}: cannot create the folder ({e.strerror})") from None
    Demo(args.workdir, args.device, PRESETS["quick" if args.quick else "default"]).run()
    return 0
