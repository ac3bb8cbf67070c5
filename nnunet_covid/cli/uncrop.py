"""Paste predictions made on a lung-cropped dataset back into the original image geometry.

Usage: ``nnunet-covid uncrop --pred PRED_DIR --raw-dataset $nnUNet_raw/DatasetNNN_Name -o OUT_DIR``
(see :mod:`dataset_conversion.uncrop`).
"""
from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pred", required=True, type=Path, help="folder of predictions on the cropped images")
    parser.add_argument("--raw-dataset", required=True, type=Path,
                        help="the cropped raw dataset folder (holds crop_boxes.json)")
    parser.add_argument("-o", "--output", required=True, type=Path, help="output folder for the uncropped predictions")


def run(args: argparse.Namespace) -> int:
    from dataset_conversion.uncrop import uncrop_folder

    written = uncrop_folder(args.pred, args.raw_dataset, args.output)
    print(f"wrote {len(written)} uncropped prediction(s) to {args.output}")
    return 0
