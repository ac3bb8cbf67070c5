"""Real-data 2D benchmark: 5-fold cross-validation on the 50 COVID-SemiSeg slices, with and without lung restriction.

    python benchmarks/bench_semiseg_2d.py [--semiseg ../shared/data/covid-semiseg-2d] [--lidc ../shared/data/lidc-idri]
        [--test-dir DIR] [--workdir semiseg_2d_bench] [--full] [--device cpu|cuda] [--folds 0 1 2 3 4]
        [-np 2] [--out benchmarks/results]

1. Converts the slices (``nnunet-covid convert covid-semiseg-2d -d 120``; ``--test-dir``, a folder of the same
   layout ``Imgs/*.jpg``, ``GT/*.png``, becomes imagesTs/labelsTs) and the LIDC-IDRI pre-training source
   (``convert lidc-idri --crop-lung -d 121``: only LIDC-IDRI-0001 is in ../shared; on a GPU give the whole
   collection) into ``<workdir>/nnUNet_raw``.
2. Runs the study grid with ``nnunet-covid study``: ``trainer_configs/semiseg_2d_benchmark_cpu.json`` (CPU-sized
   networks, the ``_bench2d`` schedule; under 30 minutes on 2 cores) or, with ``--full``,
   ``semiseg_2d_benchmark.json`` (the full models; a GPU). Planning, pre-training on LIDC-IDRI, 5 folds x
   strategies, nnU-Net's final validation of each fold (its 10 held-out slices), evaluation, report.
3. Scores every fold's validation predictions again after lung restriction (``evaluate --restrict-to-lungs
   auto``: :mod:`nnunet_covid.evaluation.lung_restriction`).
4. With ``--test-dir``: each strategy's 5 fold models predict the external slices as one ensemble
   (``nnUNetv2_predict -f 0 1 2 3 4``), scored per image with and without lung restriction, and per patient
   when the slices are named ``<patient>_<index>``. The MedSeg slices carry no patient ids: per image only.
5. Writes ``<out>/semiseg_2d_<grid>.{json,md}``: per strategy the metrics over the images (each of the 50
   scored once, by the fold that held it out; mean over images as in Inf-Net's protocol), the mean of the
   fold means, the lung-restricted DSC with the images it changed, a Wilcoxon signed-rank test against
   the baseline on the same images, and the wall time of each phase.

Everything runs in ``--workdir`` and resumes where it stopped (converters and the study skip finished work).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
TARGET_ID, LIDC_ID, LIDC_NAME = 120, 121, "LIDCIDRI2DBench"
GRIDS = {False: REPO / "trainer_configs" / "semiseg_2d_benchmark_cpu.json",
         True: REPO / "trainer_configs" / "semiseg_2d_benchmark.json"}
METRICS = ("dsc", "nsd", "sen", "spe", "ppv", "hd95")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--semiseg", type=Path, default=SHARED / "covid-semiseg-2d",
                        help="the COVID-SemiSeg folder holding train/Imgs and train/GT")
    parser.add_argument("--lidc", type=Path, default=SHARED / "lidc-idri", help="LIDC-IDRI patients (DICOM + XML)")
    parser.add_argument("--test-dir", type=Path, default=None, help="external test slices: DIR/Imgs/*.jpg, DIR/GT/*.png")
    parser.add_argument("--workdir", type=Path, default=Path("semiseg_2d_bench"))
    parser.add_argument("--full", action="store_true", help="the full-size grid (a GPU) instead of the CPU-sized one")
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda with --full, else cpu")
    parser.add_argument("--folds", type=int, nargs="+", default=None, help="a subset of the 5 folds")
    parser.add_argument("-np", "--num-processes", type=int, default=1, help="processes for conversion and planning")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args(argv)
    args.device = args.device or ("cuda" if args.full else "cpu")
    return args


def environment(workdir: Path, device: str) -> dict[str, str]:
    from nnunet_covid.core.nnunet_commands import nnunet_environment

    return nnunet_environment(workdir.resolve(), device)


def convert(args: argparse.Namespace, env: dict[str, str], logs: Path) -> None:
    from nnunet_covid.core.nnunet_commands import nnunet_tool, run_nnunet

    tool = nnunet_tool("nnunet-covid")
    test = ["--test-dir", str(args.test_dir)] if args.test_dir else []
    run_nnunet([tool, "convert", "covid-semiseg-2d", "-i", str(args.semiseg), "-d", str(TARGET_ID), *test], env,
               logs / "convert_semiseg.log")
    run_nnunet([tool, "convert", "lidc-idri", "-i", str(args.lidc), "-d", str(LIDC_ID), "--name", LIDC_NAME,
                "--crop-lung", "-np", str(args.num_processes)], env, logs / "convert_lidc.log")


def run_grid(grid: Path, study_dir: Path, args: argparse.Namespace, env: dict[str, str]) -> None:
    import subprocess

    from nnunet_covid.core.nnunet_commands import nnunet_tool

    folds = ["--folds", *map(str, args.folds)] if args.folds else []
    subprocess.run([nnunet_tool("nnunet-covid"), "study", str(grid), "--workdir", str(study_dir), "--device",
                    args.device, "-np", str(args.num_processes), *folds], env=env, check=True)


def study_runs(study_dir: Path) -> list[dict]:
    """Per (run, fold): label, run folder name, fold, evaluation file, training folder (from the study's manifest)."""
    from nnunet_covid.evaluation.report import discover_runs

    runs, _ = discover_runs(study_dir)
    return [{**run, "run": Path(run["evaluation"]).parent.name} for run in runs]


def restricted_evaluations(study_dir: Path, raw: Path, runs: list[dict]) -> None:
    """Every fold's validation predictions scored after lung restriction -> ``evaluation_lungs/<run>/fold_<k>.json``."""
    from nnunet_covid.evaluation.evaluate import evaluate_folders

    for run in runs:
        out = study_dir / "evaluation_lungs" / run["run"] / f"fold_{run['fold']}.json"
        if out.is_file() and out.stat().st_mtime >= Path(run["evaluation"]).stat().st_mtime:
            continue
        evaluate_folders(raw / "labelsTr", Path(run["training_dir"]) / "validation", labels=[1], output_file=out,
                         missing="skip", restrict_to_lungs="auto", images_dir=raw / "imagesTr")


def external_test(study_dir: Path, raw: Path, runs: list[dict], args: argparse.Namespace, env: dict[str, str],
                  study: dict) -> dict[str, dict]:
    """Each strategy's fold models predict imagesTs as an ensemble; scored with and without lung restriction."""
    from nnunet_covid.core.nnunet_commands import nnunet_tool, run_nnunet
    from nnunet_covid.evaluation.evaluate import evaluate_folders

    target, results = study["target"], {}
    patient_ids = json.loads((raw / "dataset.json").read_text()).get("patient_ids", False)
    by_run: dict[str, list[dict]] = defaultdict(list)
    for run in runs:
        by_run[run["run"]].append(run)
    for name, folds in by_run.items():
        first = Path(folds[0]["training_dir"])  # <root>/<dataset>/<trainer>__<plans>__<configuration>/fold_k
        trainer = first.parent.name.split("__")[0]
        predictions = study_dir / "external_test" / name
        if not (predictions / ".complete").is_file():
            tta = ["--disable_tta"] if not args.full else []
            run_nnunet([nnunet_tool("nnUNetv2_predict"), "-i", str(raw / "imagesTs"), "-o", str(predictions),
                        "-d", raw.name, "-c", target["configuration"], "-p", target["plans"], "-tr", trainer,
                        "-f", *[str(r["fold"]) for r in folds], "-device", args.device, "-npp", "0", "-nps", "0",
                        *tta], {**env, "nnUNet_results": str(first.parents[2])}, study_dir / "logs" /
                       f"external_test_{name}.log")
            (predictions / ".complete").touch()
        scores = {}
        for key, restrict, per_patient in (("per_image", None, False), ("per_image_lungs", "auto", False),
                                           ("per_patient", None, True)):
            if per_patient and not patient_ids:
                continue
            scores[key] = evaluate_folders(raw / "labelsTs", predictions, labels=[1], per_patient_2d=per_patient,
                                           output_file=study_dir / "evaluation_external" / name / f"{key}.json",
                                           restrict_to_lungs=restrict, images_dir=raw / "imagesTs")
        results[name] = scores
    return results


def _cases(evaluation: Path) -> dict[str, dict]:
    return {row["case"]: row for row in json.loads(evaluation.read_text())["cases"] if row["label"] == 1}


def _mean_std(values) -> tuple[float, float]:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return (float(np.mean(finite)), float(np.std(finite))) if finite else (math.nan, math.nan)


def summarise(study_dir: Path, runs: list[dict], baseline: str) -> dict[str, dict]:
    """Per run: metrics over every held-out image, fold means, lung restriction's effect, test against the baseline."""
    from nnunet_covid.core.nnunet_conventions import training_epoch_times
    from nnunet_covid.evaluation.report import paired_tests

    per_image: dict[str, dict[str, dict]] = defaultdict(dict)
    restricted: dict[str, dict[str, dict]] = defaultdict(dict)
    fold_dsc: dict[str, list[float]] = defaultdict(list)
    epochs: dict[str, list[float]] = defaultdict(list)
    for run in runs:
        cases = _cases(Path(run["evaluation"]))
        per_image[run["run"]].update(cases)
        restricted[run["run"]].update(_cases(study_dir / "evaluation_lungs" / run["run"] / f"fold_{run['fold']}.json"))
        fold_dsc[run["run"]].append(float(np.mean([c["dsc"] for c in cases.values()])))
        epochs[run["run"]] += training_epoch_times(run["training_dir"])
    summary = {}
    for name, cases in per_image.items():
        order = sorted(cases)
        raw_dsc = np.array([cases[c]["dsc"] for c in order])
        lung_dsc = np.array([restricted[name][c]["dsc"] for c in order])
        entry = {"images": len(order), "folds": len(fold_dsc[name]),
                 "fold_mean_dsc": _mean_std(fold_dsc[name]),
                 "metrics": {m: _mean_std([cases[c][m] for c in order]) for m in METRICS},
                 "lungs": {m: _mean_std([restricted[name][c][m] for c in order]) for m in METRICS},
                 "lungs_better": int((lung_dsc > raw_dsc + 1e-9).sum()),
                 "lungs_worse": int((lung_dsc < raw_dsc - 1e-9).sum()),
                 "lungs_test": paired_tests(lung_dsc - raw_dsc),
                 "seconds_per_epoch": float(np.mean(epochs[name])) if epochs[name] else math.nan,
                 "epochs": len(epochs[name])}
        if baseline in per_image and name != baseline:
            base = per_image[baseline]
            common = [c for c in order if c in base]
            entry["vs_baseline"] = paired_tests(np.array([cases[c]["dsc"] - base[c]["dsc"] for c in common]))
        summary[name] = entry
    return summary


def _f(pair) -> str:
    mean, std = pair
    return "n/a" if math.isnan(mean) else f"{mean:.3f} ± {std:.3f}"


def _p(test: dict | None) -> str:
    if not test:
        return "(baseline)"
    p = test["wilcoxon_pvalue"]
    return f"{test['mean_difference']:+.3f} (p {p:.2g})" if not math.isnan(p) else test["note"]


def markdown(summary: dict, external: dict, meta: dict) -> str:
    from nnunet_covid.evaluation.report import markdown_table

    lines = [f"# {meta['grid']}", "", f"`{meta['command']}`", "",
             f"Device {meta['device']}; wall time {meta['seconds']['total']:.0f} s "
             f"({', '.join(f'{k} {v:.0f} s' for k, v in meta['seconds'].items() if k != 'total')}).", "",
             "Cross-validation, per image (each slice scored once, by the fold that held it out; mean ± std over "
             "images). Lung-restricted: lesion components less than half inside the automatic lung mask removed.", ""]
    body = [[name, str(s["images"]), _f(s["metrics"]["dsc"]), _f(s["fold_mean_dsc"]), _f(s["metrics"]["sen"]),
             _f(s["metrics"]["spe"]), _f(s["metrics"]["ppv"]), _f(s["metrics"]["nsd"]), _p(s.get("vs_baseline")),
             _f(s["lungs"]["dsc"]), _f(s["lungs"]["ppv"]),
             f"{s['lungs']['dsc'][0] - s['metrics']['dsc'][0]:+.3f} ({s['lungs_better']} up / {s['lungs_worse']} down, "
             f"p {s['lungs_test']['wilcoxon_pvalue']:.2g})", f"{s['seconds_per_epoch']:.1f}"]
            for name, s in summary.items()]
    lines.append(markdown_table(["strategy", "images", "DSC", "DSC (mean of fold means)", "SEN", "SPE", "PPV",
                                 "NSD@3px", "ΔDSC vs baseline (Wilcoxon)", "DSC, lung-restricted",
                                 "PPV, lung-restricted", "restriction: ΔDSC (images changed)", "s/epoch"], body))
    if external:
        lines += ["", "External test set (ensemble of the fold models):", ""]
        body = []
        for name, scores in external.items():
            row = [name, str(scores["per_image"]["coverage"]["scored_cases"])]
            row += [_f((scores[k]["summary"]["dsc"]["mean"], scores[k]["summary"]["dsc"]["std"])) if k in scores
                    else "n/a (no patient ids)" for k in ("per_image", "per_image_lungs", "per_patient")]
            body.append(row)
        lines.append(markdown_table(["strategy", "images", "DSC per image", "DSC per image, lung-restricted",
                                     "DSC per patient"], body))
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    from nnunet_covid.core.atomic_io import atomic_write_text
    from nnunet_covid.pipeline.study import load_study

    args = parse_args(argv)
    grid = GRIDS[args.full]
    study = load_study(grid)
    workdir = args.workdir.resolve()
    study_dir = workdir / "studies" / study["name"]
    env = environment(workdir, args.device)
    os.environ.update({k: env[k] for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")})
    seconds, start = {}, time.time()
    convert(args, env, workdir / "logs")
    seconds["convert"] = time.time() - start
    run_grid(grid, study_dir, args, env)
    seconds["study"] = time.time() - start - sum(seconds.values())
    raw = Path(env["nnUNet_raw"]) / next(p.name for p in Path(env["nnUNet_raw"]).glob(f"Dataset{TARGET_ID:03d}_*"))
    runs = study_runs(study_dir)
    restricted_evaluations(study_dir, raw, runs)
    seconds["lung_restriction"] = time.time() - start - sum(seconds.values())
    external = external_test(study_dir, raw, runs, args, env, study) if args.test_dir else {}
    if external:
        seconds["external_test"] = time.time() - start - sum(seconds.values())
    seconds["total"] = time.time() - start
    summary = summarise(study_dir, runs, study.get("baseline"))
    command = "python benchmarks/bench_semiseg_2d.py " + " ".join(
        (["--full"] if args.full else []) + (["--test-dir", str(args.test_dir)] if args.test_dir else [])
        + (["--folds", *map(str, args.folds)] if args.folds else []) + ["--device", args.device])
    meta = {"grid": study["name"], "command": command, "device": args.device, "seconds": seconds,
            "study_dir": str(study_dir)}
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"semiseg_2d_{study['name']}"
    atomic_write_text(stem.with_suffix(".json"), json.dumps(
        {"meta": meta, "cross_validation": summary,
         "external_test": {k: {key: v["summary"] for key, v in s.items()} for k, s in external.items()}},
        indent=2, default=lambda v: None))
    text = markdown(summary, external, meta)
    atomic_write_text(stem.with_suffix(".md"), text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
