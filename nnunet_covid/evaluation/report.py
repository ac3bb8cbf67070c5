"""The papers' tables from study results: per-fold mean ± std, averages, time per epoch, paired tests, box plots.

Input: a study folder written by ``nnunet-covid study`` (its ``study_manifest.json``, or only
``evaluation/<run>/fold_<k>.json``), or a list of runs ``{"label", "fold", "evaluation",
"training_dir"}`` from Python. Output folder: ``report.md`` and CSVs (``per_fold.csv``,
``summary.csv``, ``statistics.csv``, ``epoch_times.csv``) plus ``boxplot_dsc.png`` /
``boxplot_nsd.png``.

- Per fold: mean ± (population) std over that fold's test cases. "Average": mean ± std of the
  fold means (the papers' 5-fold mean). The all-metrics table pools every case of every fold.
- Statistics: each strategy against the baseline (default: the study's ``baseline``, else
  ``scratch``) on matched cases, i.e. the same (fold, case, label) scored for both: paired
  t-test (``scipy.stats.ttest_rel``) and Wilcoxon signed-rank test (``scipy.stats.wilcoxon``,
  zero differences dropped). When a test is undefined (fewer than 2 pairs, all differences
  zero, constant differences for the t-test) its p-value is NaN and the note column says why.
- Time per epoch: mean of the ``Epoch time: X s`` lines of nnU-Net's ``training_log_*.txt``.
"""
from __future__ import annotations

import json
import math
import os
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Iterable

import numpy as np

from nnunet_covid.core.atomic_io import atomic_write_text
from nnunet_covid.core.nnunet_conventions import training_epoch_times
from nnunet_covid.evaluation.evaluate import csv_text
from nnunet_covid.evaluation.metrics import METRIC_NAMES
from nnunet_covid.core.errors import EvaluationError

TABLE_METRICS = ("dsc", "nsd")
MANIFEST = "study_manifest.json"


def _run_label(dir_name: str) -> str:
    strategy, _, source = dir_name.partition("__")
    return f"{strategy}[{source}]" if source else strategy


def _manifest_path(value, key: str, study_dir: Path, manifest: Path) -> Path:
    """A path of the manifest: relative ones are relative to the study folder; absolute ones must lie inside it."""
    from nnunet_covid.core.output_paths import is_inside

    if not isinstance(value, str) or not value:
        raise EvaluationError(f"{manifest}: '{key}' must be a path, got {value!r}")
    path = Path(value)
    if path.is_absolute() and not is_inside(path, study_dir):
        raise EvaluationError(f"{manifest}: '{key}' {path} lies outside the study folder {study_dir} (a manifest "
                              f"written before the study was copied or moved); rewrite it with `nnunet-covid study "
                              f"GRID --workdir {study_dir} --print-commands`")
    return study_dir / path


def _read_manifest(manifest: Path, study_dir: Path) -> tuple[list[dict], str | None]:
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise EvaluationError(f"{manifest}: not a readable study manifest ({type(e).__name__}: {e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("runs"), list):
        raise EvaluationError(f"{manifest}: not a study manifest (expected an object with a 'runs' list)")
    baseline = data.get("baseline")
    if baseline is not None and not isinstance(baseline, str):
        raise EvaluationError(f"{manifest}: 'baseline' must be a strategy name, got {baseline!r}")
    runs = []
    for i, run in enumerate(data["runs"]):
        if not isinstance(run, dict) or not isinstance(run.get("label"), str) or not isinstance(run.get("folds"), dict):
            raise EvaluationError(f"{manifest}: runs[{i}] must be an object with a 'label' and a 'folds' object")
        for fold, files in run["folds"].items():
            if not isinstance(files, dict):
                raise EvaluationError(f"{manifest}: runs[{i}] fold {fold} must be an object of paths")
            runs.append({"label": run["label"], "fold": fold,
                         "evaluation": _manifest_path(files.get("evaluation"), "evaluation", study_dir, manifest),
                         "training_dir": _manifest_path(files["training_dir"], "training_dir", study_dir, manifest)
                         if files.get("training_dir") else None})
    return runs, baseline


def discover_runs(study_dir: Path) -> tuple[list[dict], str | None]:
    """Runs of a study folder (manifest first, else ``evaluation/<run>/fold_<k>.json``) and its baseline.

    Paths in the manifest are relative to the study folder, so a copied or moved study reports its own
    files; an absolute path outside the study folder (an old manifest of a copied study) is an error.
    """
    manifest = study_dir / MANIFEST
    if manifest.exists():
        return _read_manifest(manifest, study_dir)
    runs = [{"label": _run_label(path.parent.name), "fold": path.stem[len("fold_"):], "evaluation": path,
             "training_dir": None}
            for path in sorted((study_dir / "evaluation").glob("*/fold_*.json"))]
    return runs, None


def _number_or_none(value) -> bool:
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))


def _case_rows(evaluation, where: str) -> list[dict]:
    """The per-case rows of one evaluation result, checked (case, label and every metric as a number or null)."""
    if not isinstance(evaluation, dict) or not isinstance(evaluation.get("cases"), list):
        raise EvaluationError(f"{where}: not an evaluation result (expected an object with a 'cases' list, as "
                              f"`nnunet-covid evaluate` writes)")
    for i, case in enumerate(evaluation["cases"]):
        if not isinstance(case, dict) or not isinstance(case.get("case"), str) or isinstance(case.get("label"), bool) \
                or not isinstance(case.get("label"), int):
            raise EvaluationError(f"{where}: cases[{i}] needs a 'case' name and an integer 'label'")
        bad = [m for m in METRIC_NAMES if not _number_or_none(case.get(m, "missing"))]
        if bad:
            raise EvaluationError(f"{where}: case {case['case']} has no number for {', '.join(bad)}")
    return evaluation["cases"]


def _load_rows(runs: Iterable[dict]) -> tuple[list[dict], list[str]]:
    """Per-case rows tagged with strategy label and fold; runs whose evaluation is missing are listed."""
    rows, missing = [], []
    for run in runs:
        evaluation, where = run["evaluation"], f"{run['label']} fold {run['fold']}"
        if isinstance(evaluation, (str, Path)):
            where = str(evaluation)
            if not Path(evaluation).is_file():
                missing.append(f"{run['label']} fold {run['fold']}")
                continue
            try:
                evaluation = json.loads(Path(evaluation).read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
                raise EvaluationError(f"{run['evaluation']}: not a readable evaluation result "
                                      f"({type(e).__name__}: {e})") from None
        for case in _case_rows(evaluation, where):
            rows.append({**case, "strategy": run["label"], "fold": str(run["fold"])})
    return rows, missing


def _finite(values) -> np.ndarray:
    return np.array([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)


def _mean_std(values) -> tuple[float, float, int]:
    finite = _finite(values)
    if finite.size == 0:
        return math.nan, math.nan, 0
    return float(finite.mean()), float(finite.std()), int(finite.size)


def paired_tests(differences: np.ndarray) -> dict:
    """Paired t-test and Wilcoxon signed-rank p-values of strategy - baseline differences."""
    from scipy import stats

    result = {"n_pairs": int(differences.size), "mean_difference": float(differences.mean()) if differences.size else math.nan,
              "t_statistic": math.nan, "t_pvalue": math.nan, "wilcoxon_statistic": math.nan,
              "wilcoxon_pvalue": math.nan, "note": ""}
    if differences.size < 2:
        result["note"] = "fewer than 2 matched cases"
        return result
    if not np.any(differences):
        result["note"] = "all differences are zero"
        return result
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # small-sample / ties warnings; the values are what scipy gives
        if np.ptp(differences) == 0:
            result["note"] = "constant differences: t-test undefined"
        else:
            t = stats.ttest_rel(differences, np.zeros_like(differences))
            result["t_statistic"], result["t_pvalue"] = float(t.statistic), float(t.pvalue)
        w = stats.wilcoxon(differences)
        result["wilcoxon_statistic"], result["wilcoxon_pvalue"] = float(w.statistic), float(w.pvalue)
    return result


def _epoch_times(runs: list[dict]) -> dict[str, dict[str, list[float]]]:
    times: dict[str, dict[str, list[float]]] = defaultdict(dict)
    for run in runs:
        folder = run.get("training_dir")
        values = training_epoch_times(folder) if folder is not None else []
        if values:
            times[run["label"]][str(run["fold"])] = values
    return times


def _fmt(mean: float, std: float) -> str:
    return "n/a" if math.isnan(mean) else f"{mean:.4f} ± {std:.4f}"


def _fmt_p(p: float) -> str:
    return "n/a" if math.isnan(p) else f"{p:.3g}"


def markdown_table(header: list[str], body: list[list[str]]) -> str:
    """A Markdown table of ``header`` and the rows of ``body`` (cells already formatted)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines)


def _box_plot(rows: list[dict], strategies: list[str], metric: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = [_finite(r[metric] for r in rows if r["strategy"] == s) for s in strategies]
    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(strategies), 4.2))
    ax.boxplot(data, showmeans=True)
    ax.set_xticks(range(1, len(strategies) + 1), strategies, rotation=20, ha="right")
    ax.set_ylabel(metric.upper())
    ax.set_title(f"{metric.upper()} per test case")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)


def build_report(results, out_dir, baseline: str | None = None) -> dict:
    """Write the report for ``results`` (study folder or list of run dicts) into ``out_dir``; returns its tables.

    Run dicts: ``{"label": "body_finetune[multilesion]", "fold": 0, "evaluation": <evaluate_folders
    result or its JSON path>, "training_dir": <nnU-Net fold folder with training_log_*.txt> or None}``.
    """
    from nnunet_covid.core.output_paths import check_writable_folder

    check_writable_folder(out_dir, "report folder")
    if isinstance(results, (str, Path)):
        study_dir = Path(results)
        if not study_dir.is_dir():
            raise EvaluationError(f"study results folder {study_dir} " + ("is not a folder" if study_dir.exists()
                                                                          else "does not exist"))
        runs, study_baseline = discover_runs(study_dir)
    else:
        runs, study_baseline = list(results), None
    rows, missing = _load_rows(runs)
    if not rows:
        raise EvaluationError(f"no evaluated cases in {results if isinstance(results, (str, Path)) else 'the runs'}"
                              + (f" (missing: {', '.join(missing)})" if missing else ""))
    strategies = list(dict.fromkeys(r["strategy"] for r in rows))
    folds = sorted({r["fold"] for r in rows}, key=lambda f: (len(f), f))
    baseline = baseline or study_baseline or ("scratch" if "scratch" in strategies else strategies[0])
    if baseline not in strategies:
        raise EvaluationError(f"baseline '{baseline}' has no evaluated cases (strategies: {', '.join(strategies)})")

    per_fold, summary = [], []
    for strategy in strategies:
        mine = [r for r in rows if r["strategy"] == strategy]
        for metric in METRIC_NAMES:
            fold_means = []
            for fold in folds:
                mean, std, n = _mean_std(r[metric] for r in mine if r["fold"] == fold)
                if n:
                    per_fold.append({"strategy": strategy, "fold": fold, "metric": metric, "mean": mean, "std": std,
                                     "n": n})
                    fold_means.append(mean)
            case_mean, case_std, n_cases = _mean_std(r[metric] for r in mine)
            summary.append({"strategy": strategy, "metric": metric,
                            "fold_average": float(np.mean(fold_means)) if fold_means else math.nan,
                            "fold_average_std": float(np.std(fold_means)) if fold_means else math.nan,
                            "n_folds": len(fold_means), "case_mean": case_mean, "case_std": case_std,
                            "n_cases": n_cases})

    statistics = []
    for strategy in strategies:
        if strategy == baseline:
            continue
        for metric in TABLE_METRICS:
            ref = {(r["fold"], r["case"], r["label"]): r[metric] for r in rows if r["strategy"] == baseline}
            pairs = [(r[metric], ref[(r["fold"], r["case"], r["label"])]) for r in rows
                     if r["strategy"] == strategy and (r["fold"], r["case"], r["label"]) in ref]
            pairs = [(a, b) for a, b in pairs if a is not None and b is not None and math.isfinite(a) and math.isfinite(b)]
            differences = np.array([a - b for a, b in pairs], dtype=np.float64)
            statistics.append({"strategy": strategy, "baseline": baseline, "metric": metric, **paired_tests(differences)})

    times = _epoch_times(runs)
    epoch_rows = [{"strategy": s, "fold": f, "seconds_per_epoch": float(np.mean(v)), "epochs": len(v)}
                  for s in strategies for f, v in sorted(times.get(s, {}).items())]

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "per_fold.csv", csv_text(per_fold, ["strategy", "fold", "metric", "mean", "std", "n"]))
    atomic_write_text(out_dir / "summary.csv", csv_text(summary, ["strategy", "metric", "fold_average", "fold_average_std",
                                                       "n_folds", "case_mean", "case_std", "n_cases"]))
    atomic_write_text(out_dir / "statistics.csv", csv_text(statistics, ["strategy", "baseline", "metric", "n_pairs",
                                                             "mean_difference", "t_statistic", "t_pvalue",
                                                             "wilcoxon_statistic", "wilcoxon_pvalue", "note"]))
    atomic_write_text(out_dir / "epoch_times.csv", csv_text(epoch_rows, ["strategy", "fold", "seconds_per_epoch", "epochs"]))
    for metric in TABLE_METRICS:
        _box_plot(rows, strategies, metric, out_dir / f"boxplot_{metric}.png")

    sections = ["# Study report", ""]
    if missing:
        sections += [f"Not evaluated yet (left out): {', '.join(missing)}.", ""]
    lookup = {(p["strategy"], p["fold"], p["metric"]): p for p in per_fold}
    averages = {(s["strategy"], s["metric"]): s for s in summary}
    for metric in TABLE_METRICS:
        body = []
        for strategy in strategies:
            cells = [_fmt(lookup[(strategy, f, metric)]["mean"], lookup[(strategy, f, metric)]["std"])
                     if (strategy, f, metric) in lookup else "–" for f in folds]
            average = averages[(strategy, metric)]
            body.append([strategy, *cells, _fmt(average["fold_average"], average["fold_average_std"])])
        sections += [f"## {metric.upper()} per fold (mean ± std over test cases) and average of the fold means", "",
                     markdown_table(["strategy", *[f"fold {f}" for f in folds], "average"], body), ""]
    body = [[s, *[_fmt(averages[(s, m)]["case_mean"], averages[(s, m)]["case_std"]) for m in METRIC_NAMES]]
            for s in strategies]
    sections += ["## All metrics (mean ± std over all test cases of all folds)", "",
                 markdown_table(["strategy", *[m.upper() for m in METRIC_NAMES]], body), ""]
    body = [[s["strategy"], s["metric"].upper(), str(s["n_pairs"]),
             "n/a" if math.isnan(s["mean_difference"]) else f"{s['mean_difference']:+.4f}",
             _fmt_p(s["t_pvalue"]), _fmt_p(s["wilcoxon_pvalue"]), s["note"]] for s in statistics]
    sections += [f"## Paired tests against {baseline} (matched cases)", "",
                 markdown_table(["strategy", "metric", "pairs", "mean difference", "paired t-test p",
                                  "Wilcoxon p", "note"], body), ""]
    body = []
    for strategy in strategies:
        values = [t for fold_times in times.get(strategy, {}).values() for t in fold_times]
        body.append([strategy, f"{np.mean(values):.1f}" if values else "n/a", str(len(values))])
    sections += ["## Time per epoch (nnU-Net training logs)", "",
                 markdown_table(["strategy", "s/epoch", "epochs"], body), "",
                 "![DSC](boxplot_dsc.png) ![NSD](boxplot_nsd.png)", ""]
    atomic_write_text(out_dir / "report.md", "\n".join(sections))
    return {"baseline": baseline, "strategies": strategies, "folds": folds, "per_fold": per_fold,
            "summary": summary, "statistics": statistics, "epoch_times": epoch_rows, "missing": missing,
            "report": str(out_dir / "report.md")}

