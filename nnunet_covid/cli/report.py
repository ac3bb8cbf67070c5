"""The papers' tables, paired tests and box plots from a study folder (see :mod:`nnunet_covid.evaluation.report`)."""
from __future__ import annotations

import argparse
from pathlib import Path

from nnunet_covid.cli.quantify import LUNGS_HELP, lung_source
from nnunet_covid.core.errors import UsageError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("results", type=Path, help="study folder (from nnunet-covid study, e.g. studies/<name>)")
    parser.add_argument("-o", "--output", required=True, type=Path, help="folder for report.md, CSVs and box plots")
    parser.add_argument("--baseline", default=None, help="strategy to test against (default: the study's baseline)")
    burden = parser.add_argument_group("infection burden and pictures")
    burden.add_argument("--burden", action="store_true",
                        help="add the burden agreement of prediction and ground truth per strategy (mean absolute "
                             "difference in percentage points, Bland-Altman plot, CT category agreement)")
    burden.add_argument("--overlays", type=int, default=None, metavar="N",
                        help="draw the N worst and N best cases of each strategy by DSC into overlays/")
    burden.add_argument("--images", type=Path, default=None,
                        help="CT images <case>_0000<ending> (default: imagesTr/imagesTs beside each run's labels)")
    burden.add_argument("--lungs", type=lung_source, default=None, help=LUNGS_HELP)


def run(args: argparse.Namespace) -> int:
    from nnunet_covid.evaluation.report import build_report

    if args.overlays is not None and args.overlays < 1:
        raise UsageError(f"--overlays must be at least 1, got {args.overlays}")
    report = build_report(args.results, args.output, args.baseline)
    if args.burden or args.overlays:
        from nnunet_covid.evaluation.burden_report import study_burden

        study_burden(args.results, args.output, args.images, args.lungs, args.burden, args.overlays or 0)
    print(Path(report["report"]).read_text())
    print(f"written {report['report']} with per_fold.csv, summary.csv, statistics.csv, epoch_times.csv and box plots")
    return 0
