"""Infection burden per case (lesion and lung volumes, percent of each lung involved, CT-0..CT-4) with pictures.

See :mod:`nnunet_covid.evaluation.quantify` (inputs, outputs) and :mod:`nnunet_covid.evaluation.burden`
(definitions).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from nnunet_covid.core.output_paths import check_writable_folder


def lung_source(text: str) -> str | Path:
    """``--lungs``: ``auto``, ``labels`` or a folder of lung masks."""
    return text if text in ("auto", "labels") else Path(text)


LUNGS_HELP = ("'auto' (unsupervised lung mask of the CT), 'labels' (lung labels of the prediction) or a folder of "
              "lung masks <case><ending> (default: the prediction's lung labels when its dataset.json has some, "
              "else auto)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pred", required=True, type=Path, help="folder of predicted segmentations")
    parser.add_argument("--images", required=True, type=Path,
                        help="folder of the CT images in HU, <case>_0000<ending> (e.g. imagesTr / imagesTs)")
    parser.add_argument("--lungs", type=lung_source, default=None, help=LUNGS_HELP)
    parser.add_argument("--gt", type=Path, default=None,
                        help="folder of ground truths: their burden, the agreement, and both contours in the pictures")
    parser.add_argument("--no-pictures", action="store_true", help="write burden.csv/json only (no PNG, no index.html)")
    parser.add_argument("-o", "--output", required=True, type=Path,
                        help="output folder: burden.csv, burden.json, figures/<case>.png, index.html")


def run(args: argparse.Namespace) -> int:
    from nnunet_covid.evaluation.quantify import quantify_folders

    check_writable_folder(args.output, "-o")
    results = quantify_folders(args.pred, args.images, args.output, args.lungs, args.gt, not args.no_pictures,
                               progress=True)
    summary = results["summary"]
    categories = ", ".join(f"{name} {count}" for name, count in summary["ct_categories"].items())
    mean = summary["involvement_pct"]["mean"]
    print(f"{summary['n_cases']} case(s), lungs: {results['settings']['lungs']}; mean involvement "
          f"{'n/a' if mean is None else f'{mean:.1f} %'}; CT categories: {categories}")
    agreement = summary.get("agreement")
    if agreement and agreement["n_cases"]:
        print(f"against the ground truth: mean absolute difference {agreement['mean_abs_difference_pp']:.2f} pp, "
              f"same CT category in {agreement['category_agreement'] * 100:.0f} % of cases")
    written = ["burden.csv", "burden.json"] + ([] if args.no_pictures else ["figures/", "index.html"])
    print(f"written to {args.output}: {', '.join(written)}")
    return 0
