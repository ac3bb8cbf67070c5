"""`nnunet-covid evaluate`: files written by the real CLI, values, geometry errors, 2D per-patient stacking."""
from __future__ import annotations

import csv
import json
import warnings

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from nnunet_covid.cli import main
from nnunet_covid.evaluation import evaluate_folders

SITK_SPACING = (0.8, 0.6, 2.5)  # x, y, z as SimpleITK stores it; arrays are (z, y, x)


def _write(array: np.ndarray, path, spacing=SITK_SPACING, origin=(0.0, 0.0, 0.0)) -> None:
    image = sitk.GetImageFromArray(array.astype(np.uint8))
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    sitk.WriteImage(image, str(path))


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Three cases with labels 1 and 2 (declared in a dataset.json); case_2's prediction misses label 2 entirely."""
    root = tmp_path_factory.mktemp("eval")
    gt_dir, pred_dir = root / "gt", root / "pred"
    gt_dir.mkdir()
    pred_dir.mkdir()
    (gt_dir / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "one": 1, "two": 2}}))
    rng = np.random.default_rng(0)
    arrays = {}
    for i in range(3):
        gt = np.zeros((10, 24, 20), np.uint8)
        gt[ndimage.gaussian_filter(rng.random(gt.shape), 1.5) > 0.52] = 1
        gt[2:5, 3:9, 12:18] = 2
        pred = np.roll(gt, 1, axis=1)
        if i == 2:
            pred[pred == 2] = 0
        _write(gt, gt_dir / f"case_{i}.nii.gz")
        _write(pred, pred_dir / f"case_{i}.nii.gz")
        arrays[f"case_{i}"] = (gt, pred)
    return gt_dir, pred_dir, arrays


def test_cli_writes_json_and_csv_with_oracle_values(folders, tmp_path, capsys):
    sd = pytest.importorskip("surface_distance")
    gt_dir, pred_dir, arrays = folders
    out = tmp_path / "out"
    assert main(["evaluate", "--gt", str(gt_dir), "--pred", str(pred_dir), "--labels", "1", "2",
                 "--tolerance-mm", "2", "-np", "1", "-o", str(out)]) == 0
    results = json.loads((out / "metrics.json").read_text())
    rows = {(r["case"], r["label"]): r for r in results["cases"]}
    assert set(rows) == {(f"case_{i}", l) for i in range(3) for l in (1, 2)}
    # array axis order, as stored (NIfTI keeps float32: 0.6 mm is not 0.6 and ties at tau matter)
    spacing = sitk.ReadImage(str(gt_dir / "case_0.nii.gz")).GetSpacing()[::-1]
    if not hasattr(np, "Inf"):
        np.Inf = np.inf  # surface-distance 0.1 predates NumPy 2
    for (case, label), row in rows.items():
        gt, pred = (a == label for a in arrays[case])
        if not pred.any():
            assert row["nsd"] == 0.0 and row["dsc"] == 0.0 and row["hd95"] is None
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            distances = sd.compute_surface_distances(gt, pred, spacing)
        assert row["nsd"] == pytest.approx(sd.compute_surface_dice_at_tolerance(distances, 2.0), abs=1e-6)
        assert row["hd95"] == pytest.approx(sd.compute_robust_hausdorff(distances, 95), abs=1e-6)
        assert row["dsc"] == pytest.approx(2 * (gt & pred).sum() / (gt.sum() + pred.sum()))
    hd95 = [r["hd95"] for r in results["cases"] if r["hd95"] is not None]
    assert results["summary"]["hd95"] == {"mean": pytest.approx(np.mean(hd95)), "std": pytest.approx(np.std(hd95)),
                                          "n": 5, "n_excluded": 1}
    label2 = [rows[(f"case_{i}", 2)]["dsc"] for i in range(3)]
    assert results["summary_per_label"]["2"]["dsc"]["mean"] == pytest.approx(np.mean(label2))

    with open(out / "metrics_per_case.csv") as f:
        per_case = list(csv.DictReader(f))
    assert len(per_case) == 6 and per_case[0]["case"] == "case_0"
    assert float(per_case[0]["dsc"]) == pytest.approx(rows[("case_0", 1)]["dsc"])
    with open(out / "metrics_summary.csv") as f:
        summary = list(csv.DictReader(f))
    assert {(r["label"], r["metric"]) for r in summary} >= {("all", "dsc"), ("1", "nsd"), ("2", "hd95")}
    assert "DSC" in capsys.readouterr().out


def test_parallel_workers_give_the_same_results(folders, tmp_path):
    gt_dir, pred_dir, _ = folders
    serial = evaluate_folders(gt_dir, pred_dir, [1], 3.0, num_processes=1)
    parallel = evaluate_folders(gt_dir, pred_dir, [1], 3.0, num_processes=2, output_file=tmp_path / "r.json")
    assert parallel["cases"] == serial["cases"]
    assert (tmp_path / "r_per_case.csv").is_file() and (tmp_path / "r_summary.csv").is_file()


def test_geometry_mismatch_is_an_error_naming_the_case(folders, tmp_path, capsys):
    gt_dir, _, arrays = folders
    pred_dir = tmp_path / "pred"
    pred_dir.mkdir()
    _write(arrays["case_0"][1], pred_dir / "case_0.nii.gz")
    _write(arrays["case_1"][1], pred_dir / "case_1.nii.gz", origin=(5.0, 0.0, 0.0))
    assert main(["evaluate", "--gt", str(gt_dir), "--pred", str(pred_dir), "-np", "1", "--predicted-only",
                 "-o", str(tmp_path / "o.json")]) == 2
    err = capsys.readouterr().err
    assert "case case_1" in err and "origin" in err and "Traceback" not in err
    assert not (tmp_path / "o.json").exists()

    _write(arrays["case_1"][1][:, :20], pred_dir / "case_1.nii.gz")
    assert main(["evaluate", "--gt", str(gt_dir), "--pred", str(pred_dir), "-np", "1", "--predicted-only",
                 "-o", str(tmp_path)]) == 2
    assert "case case_1" in capsys.readouterr().err


def test_prediction_without_ground_truth_is_an_error(folders, tmp_path, capsys):
    gt_dir, _, arrays = folders
    pred_dir = tmp_path / "pred"
    pred_dir.mkdir()
    _write(arrays["case_0"][1], pred_dir / "stray_case.nii.gz")
    assert main(["evaluate", "--gt", str(gt_dir), "--pred", str(pred_dir), "-np", "1", "-o", str(tmp_path)]) == 2
    assert "stray_case" in capsys.readouterr().err


def test_per_patient_2d_stacks_slices(tmp_path):
    from skimage.io import imsave

    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    gt_dir.mkdir()
    pred_dir.mkdir()
    rng = np.random.default_rng(3)
    stacks = {"p1": ([], []), "study_0255": ([], [])}
    for patient, n_slices in (("p1", 3), ("study_0255", 11)):
        for index in range(n_slices):
            gt = (ndimage.gaussian_filter(rng.random((32, 28)), 2) > 0.5).astype(np.uint8)
            pred = np.roll(gt, index % 3, axis=0)
            if index == 1:
                pred[:] = 0  # a slice with a missed lesion
            imsave(gt_dir / f"{patient}_{index:03d}.png", gt, check_contrast=False)
            imsave(pred_dir / f"{patient}_{index:03d}.png", pred, check_contrast=False)
            stacks[patient][0].append(gt)
            stacks[patient][1].append(pred)
    out = tmp_path / "res.json"
    assert main(["evaluate", "--gt", str(gt_dir), "--pred", str(pred_dir), "--per-patient-2d", "-np", "1",
                 "-o", str(out)]) == 0
    rows = {r["case"]: r for r in json.loads(out.read_text())["cases"]}
    assert set(rows) == {"p1", "study_0255"}
    for patient, (gts, preds) in stacks.items():
        gt, pred = np.stack(gts).astype(bool), np.stack(preds).astype(bool)
        tp = (gt & pred).sum()
        assert rows[patient]["dsc"] == pytest.approx(2 * tp / (gt.sum() + pred.sum()))
        assert rows[patient]["sen"] == pytest.approx(tp / gt.sum())
        assert 0.0 < rows[patient]["nsd"] < 1.0


def test_missing_predictions_are_an_error_or_scored_by_choice(folders, tmp_path, capsys):
    gt_dir, _, arrays = folders
    pred_dir = tmp_path / "pred"
    pred_dir.mkdir()
    _write(arrays["case_0"][1], pred_dir / "case_0.nii.gz")
    argv = ["evaluate", "--gt", str(gt_dir), "--pred", str(pred_dir), "--labels", "1", "-np", "1"]
    assert main(argv + ["-o", str(tmp_path / "strict")]) == 2
    assert "2 of 3 ground-truth case(s) have no prediction" in capsys.readouterr().err
    assert not (tmp_path / "strict").exists()

    assert main(argv + ["--missing-as-empty", "-o", str(tmp_path / "empty")]) == 0
    assert "scored 3 of 3 ground-truth cases (2 without prediction scored as empty)" in capsys.readouterr().out
    results = json.loads((tmp_path / "empty" / "metrics.json").read_text())
    assert results["coverage"] == {"ground_truth_cases": 3, "scored_cases": 3,
                                   "scored_as_empty": ["case_1", "case_2"], "left_out": []}
    rows = {r["case"]: r for r in results["cases"]}
    assert rows["case_1"]["dsc"] == 0.0 and rows["case_1"]["sen"] == 0.0 and rows["case_1"]["hd95"] is None
    gt, pred = (a == 1 for a in arrays["case_0"])
    assert rows["case_0"]["dsc"] == pytest.approx(2 * (gt & pred).sum() / (gt.sum() + pred.sum()))
    assert results["summary"]["dsc"]["mean"] == pytest.approx(rows["case_0"]["dsc"] / 3)

    assert main(argv + ["--predicted-only", "-o", str(tmp_path / "only.json")]) == 0
    assert "scored 1 of 3 ground-truth cases (2 without prediction left out)" in capsys.readouterr().out
    results = json.loads((tmp_path / "only.json").read_text())
    assert [r["case"] for r in results["cases"]] == ["case_0"]
    assert results["coverage"]["left_out"] == ["case_1", "case_2"]
    assert results["summary"]["dsc"]["mean"] == pytest.approx(rows["case_0"]["dsc"])


def test_values_that_are_not_labels_are_errors_never_a_score(folders, tmp_path, capsys):
    gt_dir, _, arrays = folders
    for name, values, message in (("mask255", arrays["case_0"][1].astype(np.uint16) * 255, "values [255, 510]"),
                                  ("probabilities", arrays["case_0"][1] * 0.4, "non-integer values")):
        pred_dir = tmp_path / name
        pred_dir.mkdir()
        for case in ("case_0", "case_1", "case_2"):
            image = sitk.GetImageFromArray(values.astype(np.float32) if name == "probabilities"
                                           else values.astype(np.uint16))
            image.SetSpacing(SITK_SPACING)
            sitk.WriteImage(image, str(pred_dir / f"{case}.nii.gz"))
        assert main(["evaluate", "--gt", str(gt_dir), "--pred", str(pred_dir), "-np", "1",
                     "-o", str(tmp_path / f"{name}.json")]) == 2
        err = capsys.readouterr().err
        assert "case case_0" in err and message in err and "Traceback" not in err
        assert not (tmp_path / f"{name}.json").exists()
