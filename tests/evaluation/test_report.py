"""`nnunet-covid report`: tables, statistics against scipy on matched cases, epoch times, box plots."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from nnunet_covid.cli import main
from nnunet_covid.evaluation import build_report
from nnunet_covid.evaluation.metrics import METRIC_NAMES

CASES = [f"case_{i:02d}" for i in range(8)]


def _rows(rng, cases, shift):
    rows = []
    for case in cases:
        values = {m: float(rng.uniform(0.5, 0.9)) for m in METRIC_NAMES}
        values["dsc"] = float(np.clip(0.6 + shift + rng.normal(0, 0.05), 0, 1))
        values["nsd"] = float(np.clip(0.65 + shift + rng.normal(0, 0.05), 0, 1))
        values["hd95"] = None if case == "case_03" else float(rng.uniform(2, 20))
        rows.append({"case": case, "label": 1, **values})
    return rows


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory):
    """Two folds; 'finetune' misses one case in fold 1; 'frozen' equals scratch exactly."""
    root = tmp_path_factory.mktemp("study")
    rng = np.random.default_rng(42)
    folds = {"0": CASES[:4], "1": CASES[4:]}
    data = {}
    for label, dir_name, shift in (("scratch", "scratch", 0.0), ("finetune[ml]", "finetune__ml", 0.03)):
        for fold, cases in folds.items():
            if label.startswith("finetune") and fold == "1":
                cases = cases[:-1]
            data[(label, fold)] = _rows(rng, cases, shift)
    for fold in folds:
        data[("frozen[ml]", fold)] = [dict(r) for r in data[("scratch", fold)]]
    manifest_runs = {}
    for (label, fold), rows in data.items():
        dir_name = label.replace("[", "__").rstrip("]")
        evaluation = root / "evaluation" / dir_name / f"fold_{fold}.json"
        evaluation.parent.mkdir(parents=True, exist_ok=True)
        evaluation.write_text(json.dumps({"cases": rows}))
        training = root / "runs" / dir_name / f"fold_{fold}"
        training.mkdir(parents=True)
        seconds = {"scratch": 200.0, "finetune[ml]": 190.0, "frozen[ml]": 150.0}[label] + float(fold)
        (training / "training_log_2026_1_1.txt").write_text(
            "".join(f"2026-01-01 epoch {e}\nEpoch time: {seconds + (e % 2) * 2:.2f} s\n" for e in range(4)))
        manifest_runs.setdefault(label, {})[fold] = {"evaluation": str(evaluation), "training_dir": str(training)}
    manifest = {"name": "tiny", "baseline": "scratch",
                "runs": [{"label": label, "folds": folds_} for label, folds_ in manifest_runs.items()]}
    (root / "study_manifest.json").write_text(json.dumps(manifest))
    return root, data


def _csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_report_cli_writes_tables_and_plots(study_dir, tmp_path, capsys):
    root, data = study_dir
    out = tmp_path / "report"
    assert main(["report", str(root), "-o", str(out)]) == 0
    for name in ("report.md", "per_fold.csv", "summary.csv", "statistics.csv", "epoch_times.csv"):
        assert (out / name).is_file()
    for metric in ("dsc", "nsd"):
        png = (out / f"boxplot_{metric}.png").read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    markdown = (out / "report.md").read_text()
    assert "| finetune[ml] |" in markdown and "Paired tests against scratch" in markdown
    assert "# Study report" in capsys.readouterr().out

    per_fold = {(r["strategy"], r["fold"], r["metric"]): r for r in _csv(out / "per_fold.csv")}
    scratch0 = [r["dsc"] for r in data[("scratch", "0")]]
    assert float(per_fold[("scratch", "0", "dsc")]["mean"]) == pytest.approx(np.mean(scratch0))
    assert float(per_fold[("scratch", "0", "dsc")]["std"]) == pytest.approx(np.std(scratch0))
    hd95 = [r["hd95"] for r in data[("scratch", "0")] if r["hd95"] is not None]
    assert int(per_fold[("scratch", "0", "hd95")]["n"]) == len(hd95) == 3

    summary = {(r["strategy"], r["metric"]): r for r in _csv(out / "summary.csv")}
    fold_means = [np.mean([r["nsd"] for r in data[("finetune[ml]", f)]]) for f in ("0", "1")]
    assert float(summary[("finetune[ml]", "nsd")]["fold_average"]) == pytest.approx(np.mean(fold_means))
    assert float(summary[("finetune[ml]", "nsd")]["fold_average_std"]) == pytest.approx(np.std(fold_means))
    assert int(summary[("finetune[ml]", "nsd")]["n_cases"]) == 7

    epochs = {(r["strategy"], r["fold"]): r for r in _csv(out / "epoch_times.csv")}
    assert float(epochs[("frozen[ml]", "1")]["seconds_per_epoch"]) == pytest.approx(152.0)
    assert int(epochs[("scratch", "0")]["epochs"]) == 4


def test_paired_statistics_match_scipy_on_matched_cases(study_dir, tmp_path):
    root, data = study_dir
    report = build_report(root, tmp_path / "r")
    assert report["baseline"] == "scratch"
    tests = {(s["strategy"], s["metric"]): s for s in report["statistics"]}
    for metric in ("dsc", "nsd"):
        ours, ref = [], []
        for fold in ("0", "1"):
            baseline = {r["case"]: r[metric] for r in data[("scratch", fold)]}
            for r in data[("finetune[ml]", fold)]:
                ours.append(r[metric])
                ref.append(baseline[r["case"]])
        assert len(ours) == 7  # the case finetune did not predict is not paired
        row = tests[("finetune[ml]", metric)]
        assert row["n_pairs"] == 7
        assert row["mean_difference"] == pytest.approx(np.mean(np.array(ours) - np.array(ref)))
        assert row["t_pvalue"] == pytest.approx(stats.ttest_rel(ours, ref).pvalue, rel=1e-9)
        assert row["wilcoxon_pvalue"] == pytest.approx(stats.wilcoxon(ours, ref).pvalue, rel=1e-9)
        identical = tests[("frozen[ml]", metric)]
        assert math.isnan(identical["t_pvalue"]) and math.isnan(identical["wilcoxon_pvalue"])
        assert identical["note"] == "all differences are zero"


def test_report_from_run_list_and_explicit_baseline(study_dir, tmp_path):
    root, data = study_dir
    runs = [{"label": label, "fold": fold, "evaluation": {"cases": rows}, "training_dir": None}
            for (label, fold), rows in data.items() if label != "frozen[ml]"]
    report = build_report(runs, tmp_path / "r2", baseline="finetune[ml]")
    assert [s["strategy"] for s in report["statistics"]] == ["scratch", "scratch"]
    assert report["epoch_times"] == []
    assert "| scratch | n/a | 0 |" in (tmp_path / "r2" / "report.md").read_text()


def test_missing_results_are_a_clear_error(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nowhere"), "-o", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty"), "-o", str(tmp_path / "o")]) == 2
    assert "no evaluated cases" in capsys.readouterr().err


def _relative_study(folder):
    """A study as `nnunet-covid study` writes it: manifest paths relative to the study folder."""
    study = folder / "study"
    runs = []
    for label, shift in (("scratch", 0.0), ("finetune", 0.1)):
        evaluation = study / "evaluation" / label / "fold_0.json"
        evaluation.parent.mkdir(parents=True)
        rng = np.random.default_rng(len(label))
        evaluation.write_text(json.dumps({"cases": _rows(rng, CASES, shift)}))
        runs.append({"label": label, "folds": {"0": {"evaluation": f"evaluation/{label}/fold_0.json"}}})
    (study / "study_manifest.json").write_text(json.dumps({"name": "s", "baseline": "scratch", "runs": runs}))
    return study


def _dsc_means(report) -> dict[str, float]:
    return {s["strategy"]: s["case_mean"] for s in report["summary"] if s["metric"] == "dsc"}


def test_a_copied_or_moved_study_reports_its_own_files(tmp_path, capsys):
    import shutil

    original = _relative_study(tmp_path / "a")
    copy = Path(shutil.copytree(original, tmp_path / "b" / "study"))
    changed = json.loads((copy / "evaluation" / "finetune" / "fold_0.json").read_text())
    for row in changed["cases"]:
        row["dsc"] = 0.25
    (copy / "evaluation" / "finetune" / "fold_0.json").write_text(json.dumps(changed))
    assert _dsc_means(build_report(copy, tmp_path / "r_copy"))["finetune"] == pytest.approx(0.25)
    assert _dsc_means(build_report(original, tmp_path / "r_orig"))["finetune"] != pytest.approx(0.25)
    moved = original.rename(tmp_path / "moved")
    assert _dsc_means(build_report(moved, tmp_path / "r_moved"))["finetune"] != pytest.approx(0.25)

    # an older manifest with absolute paths into the original folder is refused, never read from there
    manifest = json.loads((copy / "study_manifest.json").read_text())
    for run in manifest["runs"]:
        run["folds"]["0"]["evaluation"] = str(moved / run["folds"]["0"]["evaluation"])
    (copy / "study_manifest.json").write_text(json.dumps(manifest))
    assert main(["report", str(copy), "-o", str(tmp_path / "r_old")]) == 2
    assert "outside the study folder" in capsys.readouterr().err and not (tmp_path / "r_old").exists()
