"""Print the folder to put in ``nnUNet_extTrainer`` so the stock nnU-Net CLI finds our trainers.

Usage: ``export nnUNet_extTrainer=$(nnunet-covid ext-path)``
"""
from __future__ import annotations

import argparse

from nnunet_covid.core.nnunet_conventions import ext_trainer_dir


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--export", action="store_true",
                        help="print a shell line 'export nnUNet_extTrainer=...' instead of the bare path")


def run(args: argparse.Namespace) -> int:
    path = ext_trainer_dir()
    print(f"export nnUNet_extTrainer={path}" if args.export else path)
    return 0
