"""covid-semiseg-2d converter: synthetic Inf-Net layout through the real CLI, broken inputs, the real slices."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from dataset_conversion.covid_semiseg_2d import convert_covid_semiseg_2d
from nnunet_covid.pipeline.demo_data import write_covid_semiseg_2d_layout
from nnunet_covid.cli import main
from helpers.nnunet_integrity import verify_with_nnunet
from helpers import SHARED_DATA

REAL = SHARED_DATA / "covid-semiseg-2d"


def test_binary_cli_writes_png_2d_dataset_that_nnunet_accepts(tmp_path, capfd, monkeypatch):
    raw = write_covid_semiseg_2d_layout(tmp_path / "src", n_slices=3, seed=1)
    # the folder the archive was unpacked into is found below --input
    assert main(["convert", "covid-semiseg-2d", "--input", str(tmp_path / "src"), "--dataset-id", "41"]) == 0
    folder = tmp_path / "raw" / "Dataset041_COVIDSemiSeg2D"
    dj = json.loads((folder / "dataset.json").read_text())
    assert dj["file_ending"] == ".png" and dj["numTraining"] == 3
    assert dj["labels"] == {"background": 0, "infection": 1}
    assert dj["overwrite_image_reader_writer"] == "NaturalImage2DIO"
    for n in range(3):
        image = np.asarray(Image.open(folder / "imagesTr" / f"semiseg_{n:03d}_0000.png"))
        label = np.asarray(Image.open(folder / "labelsTr" / f"semiseg_{n:03d}.png"))
        np.testing.assert_array_equal(image, np.asarray(Image.open(raw / "train" / "Imgs" / f"{n}.jpg")))
        np.testing.assert_array_equal(label, np.asarray(Image.open(raw / "train" / "GT" / f"{n}.png")) // 255)
        assert label.max() == 1
    verify_with_nnunet(folder, capfd, monkeypatch)


def test_multiclass_keeps_class_indices(tmp_path, capfd, monkeypatch):
    raw = write_covid_semiseg_2d_layout(tmp_path / "src", n_slices=2, seed=3)
    folder = convert_covid_semiseg_2d(raw, 42, multiclass=True, progress=False)
    assert json.loads((folder / "dataset.json").read_text())["labels"] == {
        "background": 0, "ground-glass opacity": 1, "consolidation": 2}
    for n in range(2):
        label = np.asarray(Image.open(folder / "labelsTr" / f"semiseg_{n:03d}.png"))
        expected = np.asarray(Image.open(raw / "train-multiclass" / "GT" / f"{n}.png"))
        np.testing.assert_array_equal(label, expected)
    assert {1, 2} <= set(np.unique(label).tolist())
    verify_with_nnunet(folder, capfd, monkeypatch)


def test_broken_slice_fails_alone_and_rerun_skips_finished(tmp_path, capfd, monkeypatch):
    raw = write_covid_semiseg_2d_layout(tmp_path / "src", n_slices=3, seed=5)
    Image.fromarray(np.zeros((10, 12), np.uint8)).save(raw / "train" / "GT" / "1.png")  # wrong shape
    rc = main(["convert", "covid-semiseg-2d", "-i", str(raw), "-d", "43", "-np", "2"])
    err = capfd.readouterr().err
    assert rc != 0
    assert "semiseg_001" in err and "shape" in err
    folder = tmp_path / "raw" / "Dataset043_COVIDSemiSeg2D"
    assert sorted(p.name for p in (folder / "labelsTr").iterdir()) == ["semiseg_000.png", "semiseg_002.png"]
    assert json.loads((folder / "dataset.json").read_text())["numTraining"] == 2
    assert not (folder / ".partial").exists()
    verify_with_nnunet(folder, capfd, monkeypatch)
    # fix the mask; the rerun converts only the missing slice
    stamp = (folder / "labelsTr" / "semiseg_000.png").stat().st_mtime_ns
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(raw / "train" / "GT" / "1.png")
    assert main(["convert", "covid-semiseg-2d", "-i", str(raw), "-d", "43"]) == 0
    assert "converted 1, skipped (already done) 2, failed 0" in capfd.readouterr().out
    assert (folder / "labelsTr" / "semiseg_000.png").stat().st_mtime_ns == stamp
    assert json.loads((folder / "dataset.json").read_text())["numTraining"] == 3


def test_bad_mask_values_missing_mask_and_missing_folder_are_named(tmp_path, capsys):
    raw = write_covid_semiseg_2d_layout(tmp_path / "src", n_slices=2, seed=7)
    Image.fromarray(np.full((64, 64), 128, np.uint8)).save(raw / "train" / "GT" / "0.png")
    with pytest.raises(Exception, match=r"semiseg_000.*values \[128\]"):
        convert_covid_semiseg_2d(raw, 44, progress=False)
    (raw / "train-multiclass" / "GT" / "1.png").unlink()
    assert main(["convert", "covid-semiseg-2d", "-i", str(raw), "-d", "45", "--multiclass"]) == 2
    assert "1.jpg has no mask GT/1.png" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["convert", "covid-semiseg-2d", "-i", str(tmp_path / "empty"), "-d", "46"]) == 2
    assert "expected exactly one train/ folder with Imgs/ and GT/" in capsys.readouterr().err
    assert main(["convert", "covid-semiseg-2d", "-i", str(raw), "-d", "47", "--crop-lung"]) == 2


def test_real_covid_semiseg_slices(tmp_path):
    if not (REAL / "train" / "Imgs").is_dir():
        pytest.skip(f"real COVID-SemiSeg data not found at {REAL}")
    folder = convert_covid_semiseg_2d(REAL, 48, multiclass=True, progress=False, num_processes=2)
    cases = sorted((folder / "labelsTr").glob("*.png"))
    assert len(cases) == len(list((REAL / "train-multiclass" / "Imgs").glob("*.jpg"))) == 50
    values = set()
    for case in cases:
        label = np.asarray(Image.open(case))
        image = np.asarray(Image.open(folder / "imagesTr" / case.name.replace(".png", "_0000.png")))
        assert label.shape == image.shape
        values |= set(np.unique(label).tolist())
    assert values == {0, 1, 2}
