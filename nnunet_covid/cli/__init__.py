"""The ``nnunet-covid`` command: argparse subcommands, one module each in this package.

Every subcommand module exposes ``add_arguments(parser)`` and ``run(args) -> int`` and keeps heavy
imports (torch, nnU-Net) inside ``run`` so that ``--help`` stays fast. Errors of the product
(:class:`~nnunet_covid.core.errors.NnunetCovidError`) are printed as one line with exit code 2; so is,
as a last resort, an operating-system error (a file that cannot be read or written) that no check
named first.
"""
from __future__ import annotations

import argparse
import importlib
import math
import sys

from nnunet_covid.core.errors import NnunetCovidError

# name -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("nnunet_covid.cli.demo", "run the synthetic end-to-end demo (pre-train, transfer, predict, evaluate)"),
    "ext-path": ("nnunet_covid.cli.ext_path", "print the folder to put in nnUNet_extTrainer"),
    "convert": ("nnunet_covid.cli.convert", "convert a raw public dataset into an nnU-Net raw dataset"),
    "uncrop": ("nnunet_covid.cli.uncrop", "paste predictions on a lung-cropped dataset back into the original geometry"),
    "evaluate": ("nnunet_covid.cli.evaluate", "score predictions against ground truth (DSC, NSD, HD95, ...)"),
    "quantify": ("nnunet_covid.cli.quantify", "infection burden per case (lesion and lung mL, percent of each lung, "
                                              "CT-0..CT-4) with overlay pictures"),
    "study": ("nnunet_covid.cli.study", "run or print every training/prediction/evaluation of a study grid"),
    "report": ("nnunet_covid.cli.report", "the papers' tables, paired tests and box plots from study results"),
}


def number(kind: type, minimum: float, above: bool = False):
    """An argparse type: a finite ``kind`` (int or float) >= ``minimum`` (> ``minimum`` with ``above``)."""
    what = "an integer" if kind is int else "a number"

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not math.isfinite(value) or value < minimum or (above and value == minimum):
            raise argparse.ArgumentTypeError(f"expected a finite {what[what.index(' ') + 1:]} "
                                             f"{'>' if above else '>='} {minimum:g}, got {text}")
        return value
    return parse


def build_parser() -> argparse.ArgumentParser:
    from nnunet_covid import __version__

    parser = argparse.ArgumentParser(
        prog="nnunet-covid",
        description="Transfer learning for COVID-19 / lung-lesion CT segmentation inside nnU-Net v2.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=help_text, description=(module.__doc__ or help_text).strip().splitlines()[0])
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except NnunetCovidError as e:
        print(f"nnunet-covid {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        where = " -> ".join(str(f) for f in (e.filename, e.filename2) if f is not None)
        print(f"nnunet-covid {args.command}: error: {where + ': ' if where else ''}{e.strerror or e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"nnunet-covid {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
