"""Burden and pictures added to evaluate (--overlays) and report (--burden, --overlays)."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from nnunet_covid.cli import main
from nnunet_covid.evaluation.burden_report import median_case_figure
from nnunet_covid.evaluation.evaluate import evaluate_folders
from nnunet_covid.evaluation.quantify import quantify_folders
from nnunet_covid.pipeline.demo_data import write_nifti
from nnunet_covid.pipeline.synthetic_ct import make_case

SHAPE = (24, 64, 64)


def _raw_dataset(root: Path, n: int = 3) -> Path:
    """``root/Dataset001_Burden`` with imagesTr, labelsTr and dataset.json (infection 1)."""
    folder = root / "Dataset001_Burden"
    for i in range(n):
        case = make_case("covid", 40 + i, shape=SHAPE)
        write_nifti(case.image, folder / "imagesTr" / f"c{i}_0000.nii.gz", case.spacing)
        write_nifti(case.label, folder / "labelsTr" / f"c{i}.nii.gz", case.spacing)
    (folder / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "infection": 1},
                                                     "file_ending": ".nii.gz", "channel_names": {"0": "CT"},
                                                     "numTraining": n}))
    return folder


def _predictions(dataset: Path, out: Path, erosions: list[int]) -> Path:
    """Each case's ground truth eroded ``erosions[i]`` times (0: identical): a known order of DSC."""
    import SimpleITK as sitk

    for i, k in enumerate(erosions):
        image = sitk.ReadImage(str(dataset / "labelsTr" / f"c{i}.nii.gz"))
        label = sitk.GetArrayFromImage(image) > 0
        eroded = ndimage.binary_erosion(label, iterations=k) if k else label
        write_nifti(eroded.astype(np.uint8), out / f"c{i}.nii.gz", image.GetSpacing()[::-1])
    return out


def test_evaluate_overlays_draw_the_worst_and_best_cases(tmp_path, capsys):
    dataset = _raw_dataset(tmp_path / "raw")
    pred = _predictions(dataset, tmp_path / "pred", [1, 0, 2])  # best c1, worst c2
    out = tmp_path / "eval"
    assert main(["evaluate", "--gt", str(dataset / "labelsTr"), "--pred", str(pred), "-np", "1", "--overlays", "1",
                 "-o", str(out)]) == 0
    assert "worst and best cases' pictures" in capsys.readouterr().out
    index = (out / "overlays" / "index.html").read_text()
    assert 'src="worst_1_by_DSC/c2.png"' in index and 'src="best_1_by_DSC/c1.png"' in index and "c0.png" not in index
    assert (out / "overlays" / "worst_1_by_DSC" / "c2.png").stat().st_size > 10_000


@pytest.mark.parametrize("extra,expected", [(["--per-patient-2d"], "cannot be combined with --per-patient-2d"),
                                            (["--images", "nowhere"], "no CT image folder nowhere")])
def test_evaluate_overlay_options_are_checked_before_scoring(tmp_path, capsys, extra, expected):
    dataset = _raw_dataset(tmp_path / "raw", n=1)
    pred = _predictions(dataset, tmp_path / "pred", [0])
    assert main(["evaluate", "--gt", str(dataset / "labelsTr"), "--pred", str(pred), "--overlays", "1",
                 "-o", str(tmp_path / "eval"), *extra]) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err
    assert not (tmp_path / "eval" / "metrics.json").exists()


def test_report_adds_burden_agreement_bland_altman_and_pictures(tmp_path, capsys):
    dataset = _raw_dataset(tmp_path / "raw")
    study = tmp_path / "study"
    strategies = {"scratch": [2, 1, 2], "hybrid": [0, 1, 0]}
    for name, erosions in strategies.items():
        pred = _predictions(dataset, study / "predictions" / name, erosions)
        evaluate_folders(dataset / "labelsTr", pred, output_file=study / "evaluation" / name / "fold_0.json",
                         missing="skip")
    out = tmp_path / "report"
    args = ["report", str(study), "-o", str(out), "--burden", "--overlays", "1"]
    assert main(args) == 0
    report = (out / "report.md").read_text()
    assert report.count("## Infection burden: prediction against ground truth") == 1
    assert "![Bland-Altman](bland_altman.png)" in report and "overlays/index.html" in report
    rows = {r["strategy"]: r for r in csv.DictReader((out / "burden_agreement.csv").open())}
    for name in strategies:  # the same numbers as quantify --gt on that strategy's predictions
        reference = quantify_folders(study / "predictions" / name, dataset / "imagesTr", tmp_path / f"q_{name}",
                                     gt_dir=dataset / "labelsTr", pictures=False)["summary"]["agreement"]
        assert float(rows[name]["mean_abs_difference_pp"]) == pytest.approx(reference["mean_abs_difference_pp"])
        assert float(rows[name]["category_agreement"]) == pytest.approx(reference["category_agreement"])
    assert float(rows["hybrid"]["mean_abs_difference_pp"]) < float(rows["scratch"]["mean_abs_difference_pp"])
    per_case = list(csv.DictReader((out / "burden_per_case.csv").open()))
    assert len(per_case) == 6 and {r["lung_source"] for r in per_case} == {"auto"}
    assert (out / "bland_altman.png").stat().st_size > 10_000
    index = (out / "overlays" / "index.html").read_text()
    assert "scratch: worst 1 by DSC" in index and "hybrid: best 1 by DSC" in index
    assert len(list((out / "overlays").rglob("*.png"))) == 4
    # hybrid: DSC 1 for c0 and c2, lower for c1 -> the median case is c0 (ties by name)
    case, figure = median_case_figure(study, "hybrid", tmp_path / "results")
    assert case == "c0" and figure == tmp_path / "results" / "median_case_c0.png" and figure.is_file()


def test_demo_burden_table_is_written_as_markdown_and_json(tmp_path, capsys):
    from nnunet_covid.pipeline.demo import write_burden

    rows = [{"title": "train from scratch", "strategy": "scratch", "n_cases": 16, "predicted_involvement_pct": 12.34,
             "gt_involvement_pct": 10.0, "mean_abs_difference_pp": 3.21, "n_categorised": 16,
             "category_agreement": 0.75, "predicted_categories": "CT-1 16"},
            {"title": "hybrid encoder", "strategy": "hybrid_encoder[multilesion]", "n_cases": 0,
             "predicted_involvement_pct": None, "gt_involvement_pct": None, "mean_abs_difference_pp": None,
             "n_categorised": 0, "category_agreement": None, "predicted_categories": "none"}]
    burden = {"rows": rows, "figure": {"strategy": "train from scratch", "case": "c3", "file": "median_case_c3.png"}}
    write_burden(burden, tmp_path)
    markdown = (tmp_path / "demo_burden.md").read_text()
    assert "| train from scratch | 16 | 12.3 | 10.0 | 3.2 | 75 % | CT-1 16 |" in markdown
    assert "| hybrid encoder | 0 | n/a | n/a | n/a | n/a | none |" in markdown
    assert "![c3](median_case_c3.png)" in markdown
    assert json.loads((tmp_path / "demo_burden.json").read_text()) == burden
    assert "hybrid encoder" in capsys.readouterr().out


def test_a_second_burden_section_replaces_the_first(tmp_path):
    from nnunet_covid.evaluation.burden_report import SECTION_MARK, append_to_report

    report = tmp_path / "report.md"
    report.write_text("# Study report\n\ntables\n")
    for text in ("first", "second"):
        append_to_report(report, f"{SECTION_MARK}\n## Infection burden\n{text}\n")
    assert report.read_text() == f"# Study report\n\ntables\n\n{SECTION_MARK}\n## Infection burden\nsecond\n"
