"""The papers' tables, paired tests and box plots from a study folder (see :mod:`nnunet_covid.evaluation.report`)."""
from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("results", type=Path, help="study folder (from nnunet-covid study, e.g. studies/<name>)")
    parser.add_argument("-o", "--output", required=True, type=Path, help="folder for report.md, CSVs and box plots")
    parser.add_argument("--baseline", default=None, help="strategy to test against (default: the study's baseline)")


def run(args: argparse.Namespace) -> int:
    from nnunet_covid.evaluation.report import build_report

    report = build_report(args.results, args.output, args.baseline)
    print(Path(report["report"]).read_text())
    print(f"written {report['report']} with per_fold.csv, summary.csv, statistics.csv, epoch_times.csv and box plots")
    return 0
