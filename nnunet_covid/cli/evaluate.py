"""Score predicted segmentations against ground truth with the papers' metrics (JSON + CSV).

See :mod:`nnunet_covid.evaluation.evaluate` for the matching of cases, the metrics and their policies.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from nnunet_covid.cli import number
from nnunet_covid.cli.quantify import LUNGS_HELP, lung_source
from nnunet_covid.core.errors import UsageError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--gt", required=True, type=Path, help="folder of ground-truth segmentations")
    parser.add_argument("--pred", required=True, type=Path, help="folder of predicted segmentations (same names)")
    parser.add_argument("--labels", type=number(int, 1), nargs="+", default=None,
                        help="label values to score, each as a binary mask (default: dataset.json's labels, else 1)")
    parser.add_argument("--tolerance-mm", type=number(float, 0, above=True), default=3.0, help="NSD tolerance tau in mm (default 3)")
    parser.add_argument("--per-patient-2d", action="store_true",
                        help="stack 2D slices '<patient>_<index>' per patient before scoring (nCoVSegNet); without "
                             "it every 2D slice is a case, averaged over images (Inf-Net)")
    parser.add_argument("--restrict-to-lungs", type=lung_restriction_source, default=None, metavar="auto|DIR",
                        help="score the predictions after removing lesions outside the lungs: 'auto' finds the lungs "
                             "in the images (--images; 2D windowed slices or 3D CT in HU), or a folder of lung masks "
                             "<case><ending>")
    parser.add_argument("--min-inside-lungs", type=number(float, 0, above=True), default=None, metavar="SHARE",
                        help="with --restrict-to-lungs: a lesion component is kept when at least this share of its "
                             "pixels lies in the lungs (default 0.5, at most 1)")
    missing = parser.add_mutually_exclusive_group()
    missing.add_argument("--missing-as-empty", action="store_true",
                         help="score a ground-truth case without prediction as an empty prediction "
                              "(default: such cases are an error listing them)")
    missing.add_argument("--predicted-only", action="store_true",
                         help="score only the cases that have a prediction, e.g. one fold's validation cases against "
                              "the whole labelsTr (the ground-truth cases left out are counted in the results)")
    parser.add_argument("-np", "--num-processes", type=number(int, 1), default=None,
                        help="worker processes (default: nnUNet_def_n_proc or nnU-Net's default)")
    parser.add_argument("-o", "--output", required=True, type=Path,
                        help="results .json file, or a folder that receives metrics.json; CSVs are written beside it")
    pictures = parser.add_argument_group("pictures of the worst and best cases")
    pictures.add_argument("--overlays", type=number(int, 1), default=None, metavar="N",
                          help="draw the N worst and N best cases by DSC (CT, lungs, ground-truth and predicted "
                               "contours) into overlays/ beside the results, with overlays/index.html")
    pictures.add_argument("--images", type=Path, default=None,
                          help="images <case>_0000<ending> for --overlays and --restrict-to-lungs auto (default: "
                               "imagesTr/imagesTs beside --gt)")
    pictures.add_argument("--lungs", type=lung_source, default=None, help="lungs for --overlays: " + LUNGS_HELP)


def lung_restriction_source(text: str) -> str | Path:
    """``--restrict-to-lungs``: ``auto`` or a folder of lung masks."""
    return text if text == "auto" else Path(text)


def run(args: argparse.Namespace) -> int:
    from nnunet_covid.evaluation.evaluate import evaluate_folders, output_paths
    from nnunet_covid.evaluation.lung_restriction import MIN_INSIDE

    if args.output.suffix == ".json":
        output = args.output
    elif args.output.exists() and not args.output.is_dir():
        raise UsageError(f"-o {args.output} exists and is not a folder (give a folder or a .json file name)")
    else:
        output = args.output / "metrics.json"
    if args.overlays:
        check_overlay_options(args)
    num_processes = args.num_processes
    if num_processes is None:
        from nnunetv2.configuration import default_num_processes
        num_processes = default_num_processes
    missing = "empty" if args.missing_as_empty else "skip" if args.predicted_only else "error"
    if args.min_inside_lungs is not None and args.restrict_to_lungs is None:
        raise UsageError("--min-inside-lungs needs --restrict-to-lungs")
    images = None
    if args.restrict_to_lungs == "auto":
        from nnunet_covid.evaluation.burden_report import images_beside
        images = images_beside(args.gt, args.images)
    results = evaluate_folders(args.gt, args.pred, args.labels, args.tolerance_mm, num_processes, output,
                               args.per_patient_2d, progress=True, missing=missing,
                               restrict_to_lungs=args.restrict_to_lungs, images_dir=images,
                               min_inside=MIN_INSIDE if args.min_inside_lungs is None else args.min_inside_lungs)
    coverage, summary = results["coverage"], results["summary"]
    notes = [f"{len(coverage['scored_as_empty'])} without prediction scored as empty"] if coverage["scored_as_empty"] \
        else [f"{len(coverage['left_out'])} without prediction left out"] if coverage["left_out"] else []
    print(f"scored {coverage['scored_cases']} of {coverage['ground_truth_cases']} ground-truth cases"
          + (f" ({notes[0]})" if notes else ""))
    if "lung_restriction" in results:
        restricted = results["lung_restriction"].values()
        changed = sum(1 for r in restricted if r["removed_lesion_pixels"])
        print(f"lung restriction: removed {sum(r['removed_lesion_pixels'] for r in restricted)} of "
              f"{sum(r['predicted_lesion_pixels'] for r in restricted)} predicted lesion pixels "
              f"(in {changed} of {len(restricted)} predictions)")
    print(f"{len(results['cases'])} case-label pairs; " + ", ".join(
        f"{name.upper()} {summary[name]['mean']:.4f} ± {summary[name]['std']:.4f}"
        for name in ("dsc", "nsd") if summary[name]["mean"] is not None))
    paths = output_paths(output)
    print(f"written {paths['json']}, {paths['per_case_csv'].name}, {paths['summary_csv'].name}")
    if args.overlays:
        from nnunet_covid.evaluation.burden_report import evaluation_overlays

        index = evaluation_overlays(results, args.images, args.overlays, args.lungs, output.parent / "overlays")
        print(f"written the worst and best cases' pictures: {index}")
    return 0


def check_overlay_options(args: argparse.Namespace) -> None:
    """--overlays needs 3D cases and their CT images (checked before anything is scored)."""
    from nnunet_covid.evaluation.burden_report import images_beside

    if args.per_patient_2d:
        raise UsageError("--overlays needs 3D cases; it cannot be combined with --per-patient-2d")
    images = images_beside(args.gt, args.images)
    if not images.is_dir():
        raise UsageError(f"--overlays: no CT image folder {images}" + ("" if args.images else "; pass --images"))
