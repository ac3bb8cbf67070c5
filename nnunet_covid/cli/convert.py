"""Convert a raw public dataset into an nnU-Net v2 raw dataset (``nnunet-covid convert <dataset> ...``).

Every module of :data:`dataset_conversion.CONVERTER_MODULES` contributes one sub-subcommand: it
exposes ``CLI_NAME`` (the sub-subcommand), ``CLI_HELP`` (one line), ``add_arguments(parser)`` for its
dataset-specific flags, whose destinations are keyword arguments of its ``CONVERT`` function, and
``CONVERT`` (``convert_<name>``). The common flags (--input, --dataset-id, --name, --num-processes,
--crop-lung, --crop-margin, --output-root, --overwrite) are added here. Converter modules keep heavy imports
(SimpleITK, nnU-Net) inside functions so that ``--help`` stays fast.
"""
from __future__ import annotations

import argparse
import importlib
from pathlib import Path

from dataset_conversion import CONVERTER_MODULES
from nnunet_covid.cli import number
from nnunet_covid.core.errors import UsageError


def _dataset_id(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"dataset id must be an integer, got {text!r}") from None
    if not 1 <= value <= 999:
        raise argparse.ArgumentTypeError(f"dataset id must be in 1..999, got {value}")
    return value


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags every converter shares."""
    parser.add_argument("--input", "-i", required=True, type=Path, metavar="RAW",
                        help="folder of the raw dataset as downloaded")
    parser.add_argument("--dataset-id", "-d", required=True, type=_dataset_id, metavar="N",
                        help="nnU-Net dataset id (1-999); writes DatasetNNN_<Name>")
    parser.add_argument("--name", default=None, help="dataset name (default: the converter's)")
    parser.add_argument("--num-processes", "-np", type=number(int, 1), default=1, metavar="P",
                        help="cases converted in parallel (default 1)")
    parser.add_argument("--crop-lung", action="store_true",
                        help="crop every case to its lungs' bounding box (Liao et al. 2019 lung mask); "
                             "boxes go to crop_boxes.json for `nnunet-covid uncrop`")
    parser.add_argument("--crop-margin", type=number(float, 0), default=None, metavar="MM",
                        help="margin around the lung bounding box in mm, >= 0 (default 10; needs --crop-lung)")
    parser.add_argument("--output-root", "-o", type=Path, default=None,
                        help="raw-data root to write into (default: $nnUNet_raw)")
    parser.add_argument("--overwrite", action="store_true",
                        help="delete and rebuild the dataset folder when it was converted before (needed to change "
                             "its settings, which are recorded in conversion_settings.json)")


def common_kwargs(args: argparse.Namespace) -> dict:
    """The keyword arguments every ``convert_<name>`` function accepts, from the common flags."""
    kwargs = dict(input_dir=args.input, dataset_id=args.dataset_id, output_root=args.output_root,
                  num_processes=args.num_processes, crop_lung=args.crop_lung, crop_margin_mm=args.crop_margin,
                  overwrite=args.overwrite)
    if args.name is not None:
        kwargs["name"] = args.name
    return kwargs


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="dataset", metavar="DATASET", required=True)
    for module_name in CONVERTER_MODULES:
        module = importlib.import_module(module_name)
        p = sub.add_parser(module.CLI_NAME, help=module.CLI_HELP, description=module.CLI_HELP)
        add_common_arguments(p)
        common = {action.dest for action in p._actions}
        module.add_arguments(p)
        specific = tuple(action.dest for action in p._actions if action.dest not in common)
        p.set_defaults(_convert=module.CONVERT, _specific=specific)


def run(args: argparse.Namespace) -> int:
    if not args.input.is_dir():
        raise UsageError(f"input folder {args.input} is not a folder" if args.input.exists()
                         else f"input folder {args.input} does not exist")
    if args.crop_margin is not None and not args.crop_lung:
        raise UsageError("--crop-margin needs --crop-lung")
    folder = args._convert(**common_kwargs(args), **{name: getattr(args, name) for name in args._specific})
    print(f"wrote {folder}")
    return 0
