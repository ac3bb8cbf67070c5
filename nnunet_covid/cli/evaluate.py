"""Score predicted segmentations against ground truth with the papers' metrics (JSON + CSV).

See :mod:`nnunet_covid.evaluation.evaluate` for the matching of cases, the metrics and their policies.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from nnunet_covid.core.errors import UsageError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--gt", required=True, type=Path, help="folder of ground-truth segmentations")
    parser.add_argument("--pred", required=True, type=Path, help="folder of predicted segmentations (same names)")
    parser.add_argument("--labels", type=int, nargs="+", default=None,
                        help="label values to score, each as a binary mask (default: dataset.json's labels, else 1)")
    parser.add_argument("--tolerance-mm", type=float, default=3.0, help="NSD tolerance tau in mm (default 3)")
    parser.add_argument("--per-patient-2d", action="store_true",
                        help="stack 2D slices '<patient>_<index>' per patient before scoring (nCoVSegNet)")
    parser.add_argument("-np", "--num-processes", type=int, default=None,
                        help="worker processes (default: nnUNet_def_n_proc or nnU-Net's default)")
    parser.add_argument("-o", "--output", required=True, type=Path,
                        help="results .json file, or a folder that receives metrics.json; CSVs are written beside it")


def run(args: argparse.Namespace) -> int:
    from nnunet_covid.evaluation.evaluate import evaluate_folders, output_paths

    if args.tolerance_mm <= 0:
        raise UsageError(f"--tolerance-mm must be positive, got {args.tolerance_mm}")
    output = args.output if args.output.suffix == ".json" else args.output / "metrics.json"
    num_processes = args.num_processes
    if num_processes is None:
        from nnunetv2.configuration import default_num_processes
        num_processes = default_num_processes
    results = evaluate_folders(args.gt, args.pred, args.labels, args.tolerance_mm, num_processes, output,
                               args.per_patient_2d, progress=True)
    summary = results["summary"]
    print(f"{len(results['cases'])} case-label pairs; " + ", ".join(
        f"{name.upper()} {summary[name]['mean']:.4f} ± {summary[name]['std']:.4f}"
        for name in ("dsc", "nsd") if summary[name]["mean"] is not None))
    paths = output_paths(output)
    print(f"written {paths['json']}, {paths['per_case_csv'].name}, {paths['summary_csv'].name}")
    return 0
