"""`nnunet-covid study`: exact commands of a grid, statuses, and resume (finished steps never rerun)."""
from __future__ import annotations

import json
import os
import shlex
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_covid.cli import main
from nnunet_covid.core.nnunet_conventions import ext_trainer_dir

TARGET = "Dataset101_TinyCovid"
SOURCE = "Dataset100_TinyLesions"


@pytest.fixture
def study_env(tmp_path, monkeypatch):
    roots = {name: tmp_path / name for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}
    for name, path in roots.items():
        path.mkdir()
        monkeypatch.setenv(name, str(path))
    monkeypatch.setenv("nnUNet_def_n_proc", "1")
    monkeypatch.setenv("nnUNet_n_proc_DA", "1")
    config = {
        "name": "tiny_study",
        "target": {"dataset": TARGET, "configuration": "3d_fullres", "plans": "nnUNetPlans", "folds": [0, 1],
                   "test_cases": "validation", "labels": [1], "tolerance_mm": 2.0},
        "pretrained_sources": {"lesions": {"dataset": SOURCE, "configuration": "3d_fullres", "plans": "nnUNetPlans",
                                           "trainer": "MultiLesionPretrainTrainer", "fold": "all"}},
        "strategies": [{"name": "scratch", "trainer": "nnUNetTrainer"},
                       {"name": "body_finetune", "trainer": "BodyFineTuneTrainer", "sources": ["lesions"]}],
        "baseline": "scratch",
    }
    config_file = tmp_path / "tiny_study.json"
    config_file.write_text(json.dumps(config))
    return config_file, tmp_path / "study", roots


def _argv(line: str) -> list[str]:
    """Shell line -> argv with tool paths reduced to their names."""
    words = shlex.split(line)
    return [Path(w).name if w.endswith(("nnUNetv2_train", "nnunet-covid")) else w for w in words]


def test_print_commands_lists_the_grid_exactly(study_env, capsys):
    config_file, study_dir, roots = study_env
    assert main(["study", str(config_file), "--folds", "0", "--workdir", str(study_dir), "--print-commands"]) == 0
    lines = [_argv(l) for l in capsys.readouterr().out.strip().splitlines()]
    ext = f"nnUNet_extTrainer={ext_trainer_dir()}"
    results = roots["nnUNet_results"]
    checkpoint = results / SOURCE / "MultiLesionPretrainTrainer__nnUNetPlans__3d_fullres" / "fold_all" / "checkpoint_final.pth"
    s = study_dir.resolve()
    scratch_fold = s / "runs/scratch" / TARGET / "nnUNetTrainer__nnUNetPlans__3d_fullres/fold_0"
    ft_fold = s / "runs/lesions" / TARGET / "BodyFineTuneTrainer__nnUNetPlans__3d_fullres/fold_0"
    labels_tr = roots["nnUNet_raw"] / TARGET / "labelsTr"
    roots_env = [f"nnUNet_raw={roots['nnUNet_raw']}", f"nnUNet_preprocessed={roots['nnUNet_preprocessed']}"]
    assert lines == [
        [*roots_env, f"nnUNet_results={results}", ext, "nnUNetv2_train", SOURCE, "3d_fullres", "all",
         "-tr", "MultiLesionPretrainTrainer", "-p", "nnUNetPlans"],
        [*roots_env, f"nnUNet_results={s}/runs/scratch", ext, "nnUNetv2_train", TARGET, "3d_fullres", "0",
         "-tr", "nnUNetTrainer", "-p", "nnUNetPlans"],
        ["nnunet-covid", "evaluate", "--gt", str(labels_tr), "--pred", str(scratch_fold / "validation"),
         "--labels", "1", "--tolerance-mm", "2.0", "-np", "1", "-o", f"{s}/evaluation/scratch/fold_0.json",
         "--predicted-only"],
        # our transfer trainers take the checkpoint by convention: the segmentation head is kept when it fits
        [*roots_env, f"nnUNet_results={s}/runs/lesions", ext, f"nnUNet_covid_pretrained={checkpoint}",
         "nnUNetv2_train", TARGET, "3d_fullres", "0", "-tr", "BodyFineTuneTrainer", "-p", "nnUNetPlans"],
        ["nnunet-covid", "evaluate", "--gt", str(labels_tr), "--pred", str(ft_fold / "validation"),
         "--labels", "1", "--tolerance-mm", "2.0", "-np", "1", "-o",
         f"{s}/evaluation/body_finetune__lesions/fold_0.json", "--predicted-only"],
        ["nnunet-covid", "report", str(s), "-o", f"{s}/report"],
    ]
    manifest = json.loads((study_dir / "study_manifest.json").read_text())
    assert [r["label"] for r in manifest["runs"]] == ["scratch", "body_finetune[lesions]"]
    # paths inside the study folder are stored relative to it (a copied or moved study reports its own files)
    assert manifest["runs"][1]["folds"]["0"]["training_dir"] == str(ft_fold.relative_to(s))


def _touch(path: Path, text: str = "") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_dry_run_statuses_and_interrupted_training_continues(study_env, capsys):
    config_file, study_dir, roots = study_env
    s = study_dir.resolve()
    _touch(roots["nnUNet_results"] / SOURCE / "MultiLesionPretrainTrainer__nnUNetPlans__3d_fullres/fold_all/checkpoint_final.pth")
    scratch0 = s / "runs/scratch" / TARGET / "nnUNetTrainer__nnUNetPlans__3d_fullres/fold_0"
    _touch(scratch0 / "checkpoint_final.pth")  # trained, validation interrupted
    ft0 = s / "runs/lesions" / TARGET / "BodyFineTuneTrainer__nnUNetPlans__3d_fullres/fold_0"
    _touch(ft0 / "checkpoint_latest.pth")  # training interrupted
    assert main(["study", str(config_file), "--workdir", str(study_dir), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "done          pretrain  pre-train lesions" in out
    assert "done          train     train scratch fold 0" in out
    assert "pending       predict   validate scratch fold 0" in out
    assert "with-training predict   validate scratch fold 1" in out
    assert "pending       report    report tiny_study" in out
    assert "14 steps, 2 done, 9 to run" in out
    assert not (study_dir / "study_manifest.json").exists()  # a dry run writes nothing

    assert main(["study", str(config_file), "--folds", "0", "--workdir", str(study_dir), "--print-commands"]) == 0
    lines = [_argv(l) for l in capsys.readouterr().out.strip().splitlines()]
    assert lines[0][-6:] == ["0", "-tr", "nnUNetTrainer", "-p", "nnUNetPlans", "--val"]
    resumed = [l for l in lines if "BodyFineTuneTrainer" in l]
    assert resumed[0][-1] == "--c" and "-pretrained_weights" not in resumed[0]


def _write_nifti(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = sitk.GetImageFromArray(array.astype(np.uint8))
    image.SetSpacing((0.8, 0.8, 2.0))
    sitk.WriteImage(image, str(path))


def test_run_executes_only_unfinished_steps_and_a_second_run_does_nothing(study_env, capsys):
    """Training outputs exist (markers + real validation predictions): only the evaluations run, for real."""
    config_file, study_dir, roots = study_env
    s = study_dir.resolve()
    rng = np.random.default_rng(1)
    _touch(roots["nnUNet_results"] / SOURCE / "MultiLesionPretrainTrainer__nnUNetPlans__3d_fullres/fold_all/checkpoint_final.pth")
    for case in ("c0", "c1", "c2"):
        gt = np.zeros((6, 16, 16), np.uint8)
        gt[1:4, 3:10, 4:12] = 1
        _write_nifti(gt, roots["nnUNet_raw"] / TARGET / "labelsTr" / f"{case}.nii.gz")
    for source, trainer in (("scratch", "nnUNetTrainer"), ("lesions", "BodyFineTuneTrainer")):
        fold = s / "runs" / source / TARGET / f"{trainer}__nnUNetPlans__3d_fullres" / "fold_0"
        _touch(fold / "checkpoint_final.pth")
        _touch(fold / "validation" / "summary.json", "{}")
        for case in ("c0", "c2"):  # fold 0's validation cases
            pred = np.zeros((6, 16, 16), np.uint8)
            pred[1:4, 3 + rng.integers(0, 3):10, 4:12] = 1
            _write_nifti(pred, fold / "validation" / f"{case}.nii.gz")

    argv = ["study", str(config_file), "--folds", "0", "--workdir", str(study_dir)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "3 step(s) run" in out and out.count("skip (done)") == 5  # two evaluations and the report
    assert (s / "report" / "report.md").is_file()
    evaluation = s / "evaluation" / "body_finetune__lesions" / "fold_0.json"
    results = json.loads(evaluation.read_text())
    assert [r["case"] for r in results["cases"]] == ["c0", "c2"]
    assert results["settings"]["tolerance_mm"] == 2.0
    stamp = evaluation.stat().st_mtime_ns

    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "0 step(s) run" in out and out.count("skip (done)") == 8
    assert evaluation.stat().st_mtime_ns == stamp


def test_failed_step_stops_with_a_message_naming_it(study_env, capsys):
    config_file, study_dir, roots = study_env
    s = study_dir.resolve()
    _touch(roots["nnUNet_results"] / SOURCE / "MultiLesionPretrainTrainer__nnUNetPlans__3d_fullres/fold_all/checkpoint_final.pth")
    fold = s / "runs/scratch" / TARGET / "nnUNetTrainer__nnUNetPlans__3d_fullres/fold_0"
    _touch(fold / "checkpoint_final.pth")
    _touch(fold / "validation" / "summary.json", "{}")
    _write_nifti(np.zeros((6, 16, 16)), roots["nnUNet_raw"] / TARGET / "labelsTr" / "c0.nii.gz")
    _write_nifti(np.zeros((6, 12, 16)), fold / "validation" / "c0.nii.gz")  # wrong geometry
    assert main(["study", str(config_file), "--folds", "0", "--workdir", str(study_dir)]) == 2
    err = capsys.readouterr().err
    assert "step 'evaluate scratch fold 0' failed" in err and "case c0" in err
    assert not (s / "evaluation" / "scratch" / "fold_0.json").exists()


def test_invalid_study_file_is_reported(tmp_path, capsys, monkeypatch):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"name": "x", "target": {"dataset": "Dataset1_A", "configuration": "2d",
                                                       "plans": "nnUNetPlans", "folds": [0],
                                                       "test_cases": "validation", "labels": [1]},
                               "strategies": [{"name": "ft", "trainer": "T", "sources": ["nowhere"]}]}))
    assert main(["study", str(bad), "--dry-run"]) == 2
    assert "unknown source 'nowhere'" in capsys.readouterr().err
    assert not os.path.exists("studies/x")
