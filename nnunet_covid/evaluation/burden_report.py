"""Burden and pictures added to ``evaluate`` and ``report`` outputs.

- :func:`evaluation_overlays` (``evaluate --overlays N``): case figures (ground truth and prediction,
  :mod:`~nnunet_covid.evaluation.overlays`) of the N worst and N best cases by DSC (mean over the
  scored labels), with ``overlays/index.html``.
- :func:`study_burden` (``report --burden`` / ``--overlays N``): for every run of a study, the burden
  of each evaluated prediction and of its ground truth (:mod:`~nnunet_covid.evaluation.quantify`);
  per strategy the agreement (mean absolute difference of the involvement in percentage points, bias
  and 95 % limits of agreement, same CT category), a Bland-Altman plot, and the worst / best cases'
  figures; a section appended to ``report.md``.
- :func:`median_case_figure`: the figure of a strategy's median case by DSC (a representative picture,
  not the best one).

The CT images are the ground truth's nnU-Net sibling folder (``labelsTr`` -> ``imagesTr``) unless given.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Sequence

import numpy as np

from nnunet_covid.core.atomic_io import atomic_write_text
from nnunet_covid.core.errors import EvaluationError
from nnunet_covid.evaluation.burden import CATEGORIES, burden_agreement
from nnunet_covid.evaluation.evaluate import csv_text
from nnunet_covid.evaluation.quantify import case_inputs, draw_case, measure_case

OVERLAYS = "overlays"
SECTION_MARK = "<!-- infection burden -->"
SUMMARY_COLUMNS = ("case", "dsc", "lesion_ml", "gt_lesion_ml", "involvement_pct", "gt_involvement_pct",
                   "ct_category", "gt_ct_category")


def images_beside(gt_dir: Path, images_dir: Path | None = None) -> Path:
    """``images_dir`` if given, else nnU-Net's image folder beside a label folder (labelsTr -> imagesTr)."""
    if images_dir is not None:
        return Path(images_dir)
    gt_dir = Path(gt_dir)
    if not gt_dir.name.startswith("labels"):
        raise EvaluationError(f"{gt_dir}: cannot tell where its CT images are (not an nnU-Net labels folder); "
                              f"pass the image folder")
    return gt_dir.with_name("images" + gt_dir.name[len("labels"):])


def mean_dsc_per_case(rows: Sequence[dict]) -> dict[str, float]:
    """Case -> DSC averaged over its scored labels."""
    per_case: dict[str, list[float]] = {}
    for row in rows:
        if row.get("dsc") is not None and math.isfinite(row["dsc"]):
            per_case.setdefault(row["case"], []).append(row["dsc"])
    return {case: float(np.mean(values)) for case, values in per_case.items()}


def worst_and_best(scores: dict[str, float], n: int) -> tuple[list[str], list[str]]:
    """The ``n`` lowest-scoring cases (worst first) and the ``n`` highest (best first), never the same case twice."""
    ranked = sorted(scores, key=lambda case: (scores[case], case))
    worst = ranked[:n]
    best = [case for case in reversed(ranked) if case not in worst][:n]
    return worst, best


def _picture_sections(sections: list[tuple[str, list]], out_dir: Path, scores: dict[str, dict[str, float]],
                      title: str, intro: str) -> Path:
    """Measure and draw each section's case inputs into ``out_dir/<section slug>/``; write the index page."""
    from nnunet_covid.evaluation.overlays import index_page

    cache: dict = {}
    pages = []
    for heading, jobs in sections:
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", heading).strip("_")
        rows, figures = [], {}
        for job in jobs:
            result = measure_case(job, cache)
            figures[job.case] = draw_case(result, out_dir / slug / f"{job.case}.png")
            rows.append({**result.row, "dsc": scores[heading].get(job.case)})
        pages.append({"heading": heading, "columns": list(SUMMARY_COLUMNS), "rows": rows, "figures": figures})
    return index_page(out_dir / "index.html", title, intro, pages)


def evaluation_overlays(results: dict, images_dir=None, n: int = 3, lungs: str | Path | None = None,
                        out_dir=None) -> Path:
    """Figures of the ``n`` worst and best cases of an :func:`~nnunet_covid.evaluation.evaluate_folders` result."""
    settings = results["settings"]
    if settings.get("per_patient_2d"):
        raise EvaluationError("--overlays needs 3D cases; it cannot be combined with --per-patient-2d")
    gt_dir, pred_dir = Path(settings["gt_dir"]), Path(settings["pred_dir"])
    images_dir = images_beside(gt_dir, images_dir)
    scores = mean_dsc_per_case(results["cases"])
    worst, best = worst_and_best(scores, n)
    jobs = {job.case: job for job in case_inputs(pred_dir, images_dir, lungs, gt_dir) if job.case in scores}
    sections = [(f"worst {len(worst)} by DSC", [jobs[c] for c in worst]),
                (f"best {len(best)} by DSC", [jobs[c] for c in best])]
    return _picture_sections(sections, Path(out_dir), {heading: scores for heading, _ in sections},
                             "Worst and best cases", f"Predictions {pred_dir} against {gt_dir}; "
                             f"DSC averaged over labels {settings.get('labels')}.")


def _study_runs(results) -> list[dict]:
    from nnunet_covid.evaluation.report import discover_runs

    return discover_runs(Path(results))[0] if isinstance(results, (str, Path)) else list(results)


def median_case_figure(results, strategy: str, out_dir, images_dir=None,
                       lungs: str | Path | None = None) -> tuple[str, Path]:
    """Draw the case of ``strategy`` (a run label) with the median DSC of all its cases into
    ``out_dir/median_case_<case>.png`` -> (case, figure)."""
    candidates = []
    for run in _study_runs(results):
        evaluation = _run_evaluation(run) if run["label"] == strategy else None
        if evaluation is not None:
            candidates += [(score, case, evaluation) for case, score in mean_dsc_per_case(evaluation["cases"]).items()]
    if not candidates:
        raise EvaluationError(f"no evaluated case of {strategy} in {results}")
    _, case, evaluation = sorted(candidates, key=lambda c: (c[0], c[1]))[(len(candidates) - 1) // 2]
    settings = evaluation["settings"]
    gt_dir = Path(settings["gt_dir"])
    job = next(j for j in case_inputs(Path(settings["pred_dir"]), images_beside(gt_dir, images_dir), lungs, gt_dir)
               if j.case == case)
    return case, draw_case(measure_case(job), Path(out_dir) / f"median_case_{case}.png")


def _run_evaluation(run: dict) -> dict | None:
    evaluation = run["evaluation"]
    if isinstance(evaluation, (str, Path)):
        if not Path(evaluation).is_file():
            return None
        evaluation = json.loads(Path(evaluation).read_text(encoding="utf-8"))
    settings = evaluation.get("settings", {}) if isinstance(evaluation, dict) else {}
    if not settings.get("gt_dir") or not settings.get("pred_dir"):
        raise EvaluationError(f"{run['evaluation'] if isinstance(run['evaluation'], (str, Path)) else run['label']}: "
                              f"the evaluation result names no gt_dir/pred_dir; burden needs the segmentations")
    return evaluation


def _number(value, digits: int = 1, sign: bool = False) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


def _markdown(agreement_rows: list[dict], overlays: int) -> str:
    from nnunet_covid.evaluation.report import markdown_table

    lines = [SECTION_MARK]
    if agreement_rows:
        body = [[r["strategy"], str(r["n_cases"]), _number(r["predicted_involvement_pct"]),
                 _number(r["gt_involvement_pct"]), _number(r["mean_abs_difference_pp"], 2),
                 _number(r["mean_difference_pp"], 2, True),
                 f"{_number(r['loa_low_pp'], 1, True)} / {_number(r['loa_high_pp'], 1, True)}",
                 "n/a" if not r["n_categorised"] else f"{r['category_agreement'] * 100:.0f} %",
                 r["predicted_categories"]] for r in agreement_rows]
        lines += ["## Infection burden: prediction against ground truth", "",
                  "Percent of both lungs involved (lesions counted as lung), per case, compared between each "
                  "prediction and its ground truth; CT category by MosMedData (CT-0 none, CT-1 < 25 %, CT-2 25-50 %, "
                  "CT-3 50-75 %, CT-4 >= 75 %). Per case: `burden_per_case.csv`.", "",
                  markdown_table(["strategy", "cases", "predicted % (mean)", "ground truth % (mean)",
                                  "mean abs difference (pp)", "bias (pp)", "95 % limits (pp)", "same CT category",
                                  "predicted categories"], body), "", "![Bland-Altman](bland_altman.png)", ""]
    if overlays:
        lines += ["## Worst and best cases", "",
                  f"Pictures of the {overlays} worst and best cases of each strategy by DSC: "
                  f"[{OVERLAYS}/index.html]({OVERLAYS}/index.html).", ""]
    return "\n".join(lines)


def append_to_report(report_md: Path, section: str) -> None:
    """Append ``section`` to ``report.md``, replacing a section appended before (reruns stay idempotent)."""
    text = report_md.read_text(encoding="utf-8")
    text = text.split(SECTION_MARK)[0].rstrip("\n")
    atomic_write_text(report_md, text + "\n\n" + section)


def study_burden(results, out_dir, images_dir=None, lungs: str | Path | None = None, burden: bool = True,
                 overlays: int = 0) -> dict:
    """Burden agreement and/or worst/best pictures of a study (module doc) into ``out_dir`` (the report folder).

    ``results``: a study folder or run dicts as for :func:`~nnunet_covid.evaluation.report.build_report`.
    Returns ``{"agreement": [per strategy], "cases": [per case], "overlays": index path or None}``.
    """
    from nnunet_covid.evaluation.overlays import bland_altman_figure

    out_dir = Path(out_dir)
    per_run = []
    for run in _study_runs(results):
        evaluation = _run_evaluation(run)
        if evaluation is None:
            continue
        settings = evaluation["settings"]
        gt_dir, pred_dir = Path(settings["gt_dir"]), Path(settings["pred_dir"])
        scores = mean_dsc_per_case(evaluation["cases"])
        jobs = {job.case: job for job in case_inputs(pred_dir, images_beside(gt_dir, images_dir), lungs, gt_dir)
                if job.case in scores}
        per_run.append((run, scores, jobs))
    if not per_run:
        raise EvaluationError(f"no evaluated run in {results if isinstance(results, (str, Path)) else 'the runs'}")
    strategies = list(dict.fromkeys(run["label"] for run, _, _ in per_run))
    case_rows: list[dict] = []
    if burden:
        cache: dict = {}
        order = sorted({(str(job.images.path), case) for _, _, jobs in per_run for case, job in jobs.items()})
        for _, case in order:  # case-major: each image's lungs are computed once for all strategies
            for run, scores, jobs in per_run:
                if case in jobs:
                    row = measure_case(jobs[case], cache).row
                    case_rows.append({"strategy": run["label"], "fold": str(run["fold"]), "dsc": scores[case], **row})
    agreement_rows = []
    for strategy in strategies if burden else []:
        mine = [r for r in case_rows if r["strategy"] == strategy]
        agreement = burden_agreement(mine, [{"involvement_pct": r["gt_involvement_pct"],
                                             "ct_category": r["gt_ct_category"]} for r in mine])
        predicted = [r["involvement_pct"] for r in mine if r["involvement_pct"] is not None]
        truth = [r["gt_involvement_pct"] for r in mine if r["gt_involvement_pct"] is not None]
        counts = {c: sum(r["ct_category"] == c for r in mine) for c in CATEGORIES}
        agreement_rows.append({
            "strategy": strategy, "n_cases": agreement["n_cases"],
            "predicted_involvement_pct": float(np.mean(predicted)) if predicted else None,
            "gt_involvement_pct": float(np.mean(truth)) if truth else None,
            "mean_abs_difference_pp": agreement["mean_abs_difference_pp"],
            "mean_difference_pp": agreement["mean_difference_pp"], "sd_difference_pp": agreement["sd_difference_pp"],
            "loa_low_pp": agreement["limits_of_agreement_pp"][0], "loa_high_pp": agreement["limits_of_agreement_pp"][1],
            "category_agreement": agreement["category_agreement"], "n_categorised": agreement["n_categorised"],
            "predicted_categories": ", ".join(f"{c} {n}" for c, n in counts.items() if n) or "none"})
    if burden:
        columns = ["strategy", "fold", "case", "dsc", "lesion_ml", "gt_lesion_ml", "lung_ml", "involvement_pct",
                   "gt_involvement_pct", "involvement_difference_pp", "ct_category", "gt_ct_category",
                   "right_involvement_pct", "left_involvement_pct", "lung_source"]
        atomic_write_text(out_dir / "burden_per_case.csv", csv_text(case_rows, columns))
        atomic_write_text(out_dir / "burden_agreement.csv", csv_text(agreement_rows, list(agreement_rows[0])))
        pairs = {s: ([r["involvement_pct"] for r in case_rows if r["strategy"] == s and r["gt_involvement_pct"]
                      is not None and r["involvement_pct"] is not None],
                     [r["gt_involvement_pct"] for r in case_rows if r["strategy"] == s and r["gt_involvement_pct"]
                      is not None and r["involvement_pct"] is not None]) for s in strategies}
        bland_altman_figure(out_dir / "bland_altman.png", pairs)
    index = None
    if overlays:
        sections, scores_by_section = [], {}
        for strategy in strategies:
            scores = {c: s for run, run_scores, _ in per_run if run["label"] == strategy for c, s in run_scores.items()}
            jobs = {c: j for run, _, run_jobs in per_run if run["label"] == strategy for c, j in run_jobs.items()}
            worst, best = worst_and_best(scores, overlays)
            for kind, cases in (("worst", worst), ("best", best)):
                heading = f"{strategy}: {kind} {len(cases)} by DSC"
                sections.append((heading, [jobs[c] for c in cases]))
                scores_by_section[heading] = scores
        index = _picture_sections(sections, out_dir / OVERLAYS, scores_by_section, "Worst and best cases per strategy",
                                  "Ground truth (green) and prediction (red) contours, prediction filled.")
    if (out_dir / "report.md").is_file() and (burden or overlays):
        append_to_report(out_dir / "report.md", _markdown(agreement_rows, overlays))
    return {"agreement": agreement_rows, "cases": case_rows, "overlays": None if index is None else str(index)}
