"""MSD Lung, StructSeg GTV, MosMed and COVID-19-CT-Seg converters on synthetic replicas of their raw layouts."""
from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_covid.pipeline import demo_data as layouts
from helpers.raw_layouts import write_mosmed_layout
from nnunet_covid.core.errors import ConversionError
from dataset_conversion.covid19_ct_seg import BENCHMARK_FOLDS, convert_covid19_ct_seg
from dataset_conversion.mosmed import convert_mosmed, held_out_case_ids
from dataset_conversion.structseg import convert_structseg_lung_gtv
from nnunet_covid.cli import main
from helpers.nnunet_integrity import verify_with_nnunet


@pytest.fixture(scope="module")
def raw_layouts(tmp_path_factory):
    """All four synthetic raw layouts, written once (tests copy them before breaking files)."""
    root = tmp_path_factory.mktemp("layouts")
    return {"msd": layouts.write_msd_lung_layout(root, n_cases=3, seed=1),
            "structseg": layouts.write_structseg_layout(root, n_cases=3, seed=2),
            "mosmed": write_mosmed_layout(root, n_cases=5, seed=3),
            "covid": layouts.write_covid19_ct_seg_layout(root, seed=4)}


def array(path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def test_msd_lung_cli_converts_labelled_cases_and_rerun_skips(raw_layouts, tmp_path, capfd, monkeypatch):
    task = raw_layouts["msd"]
    assert main(["convert", "msd-lung", "--input", str(task.parent), "--dataset-id", "102"]) == 0
    folder = tmp_path / "raw" / "Dataset102_MSDLung"
    ids = ["lung_001", "lung_003", "lung_005"]  # the ._ AppleDouble files and the unlabelled imagesTs are left out
    assert sorted(p.name for p in (folder / "imagesTr").iterdir()) == [f"{i}_0000.nii.gz" for i in ids]
    assert not (folder / "imagesTs").exists()
    for case_id in ids:
        np.testing.assert_array_equal(array(folder / "imagesTr" / f"{case_id}_0000.nii.gz"),
                                      array(task / "imagesTr" / f"{case_id}.nii.gz"))
        label = array(folder / "labelsTr" / f"{case_id}.nii.gz")
        np.testing.assert_array_equal(label, array(task / "labelsTr" / f"{case_id}.nii.gz"))
        assert label.max() == 1
    dataset_json = json.loads((folder / "dataset.json").read_text())
    assert dataset_json["labels"] == {"background": 0, "tumour": 1} and dataset_json["numTraining"] == 3
    verify_with_nnunet(folder, capfd, monkeypatch)
    stamp = (folder / "imagesTr" / "lung_001_0000.nii.gz").stat().st_mtime_ns
    assert main(["convert", "msd-lung", "-i", str(task), "-d", "102"]) == 0
    assert "converted 0, skipped (already done) 3, failed 0" in capfd.readouterr().out
    assert (folder / "imagesTr" / "lung_001_0000.nii.gz").stat().st_mtime_ns == stamp


def test_msd_lung_shape_mismatch_fails_only_that_case(raw_layouts, tmp_path, capfd, monkeypatch):
    task = Path(shutil.copytree(raw_layouts["msd"], tmp_path / "Task06_Lung"))
    small = sitk.GetImageFromArray(np.zeros((4, 8, 8), np.uint8))
    sitk.WriteImage(small, str(task / "labelsTr" / "lung_003.nii.gz"))
    (task / "labelsTr" / "lung_005.nii.gz").unlink()
    rc = main(["convert", "msd-lung", "-i", str(task), "-d", "102", "-np", "2"])
    err = capfd.readouterr().err
    assert rc != 0
    assert "lung_003" in err and "shape" in err
    assert "lung_005" in err and "missing" in err
    assert "Traceback" not in err
    folder = tmp_path / "raw" / "Dataset102_MSDLung"
    assert [p.name for p in (folder / "labelsTr").iterdir()] == ["lung_001.nii.gz"]
    assert json.loads((folder / "dataset.json").read_text())["numTraining"] == 1
    verify_with_nnunet(folder, capfd, monkeypatch)


def test_structseg_ids_labels_and_bad_label_values(raw_layouts, tmp_path, capfd, monkeypatch):
    lung_gtv = Path(shutil.copytree(raw_layouts["structseg"], tmp_path / "Lung_GTV"))
    bad = sitk.ReadImage(str(lung_gtv / "2" / "label.nii.gz")) * 255  # a 0/255 mask is not a StructSeg label
    sitk.WriteImage(bad, str(lung_gtv / "2" / "label.nii.gz"))
    with pytest.raises(ConversionError, match=r"gtv_002.*unexpected values \[255\]"):
        convert_structseg_lung_gtv(lung_gtv, 103)
    folder = tmp_path / "raw" / "Dataset103_StructSegGTV"
    assert sorted(p.name for p in (folder / "labelsTr").iterdir()) == ["gtv_001.nii.gz", "gtv_003.nii.gz"]
    np.testing.assert_array_equal(array(folder / "labelsTr" / "gtv_003.nii.gz"), array(lung_gtv / "3" / "label.nii.gz"))
    assert json.loads((folder / "dataset.json").read_text())["labels"] == {"background": 0, "GTV": 1}
    verify_with_nnunet(folder, capfd, monkeypatch)


def test_mosmed_keeps_masked_ct1_studies_and_splits_80_20(raw_layouts, tmp_path, capfd, monkeypatch):
    folder = convert_mosmed(raw_layouts["mosmed"].parent, 105)
    masked = [f"study_{n:04d}" for n in range(255, 260)]
    expected_test = held_out_case_ids(masked, 0)
    assert len(expected_test) == 1
    train = sorted(p.name[:-len("_0000.nii.gz")] for p in (folder / "imagesTr").iterdir())
    test = sorted(p.name[:-len("_0000.nii.gz")] for p in (folder / "imagesTs").iterdir())
    assert test == sorted(expected_test) and train == sorted(set(masked) - expected_test)
    assert sorted(p.name for p in (folder / "labelsTs").iterdir()) == [f"{c}.nii.gz" for c in test]
    for subset, case_id in (("Tr", train[0]), ("Ts", test[0])):
        np.testing.assert_array_equal(array(folder / f"labels{subset}" / f"{case_id}.nii.gz"),
                                      array(raw_layouts["mosmed"] / "masks" / f"{case_id}_mask.nii.gz"))
    dataset_json = json.loads((folder / "dataset.json").read_text())
    assert dataset_json["numTraining"] == 4 and dataset_json["test_cases"] == test
    verify_with_nnunet(folder, capfd, monkeypatch)


def test_mosmed_documented_split_of_the_50_real_cases():
    real_ids = [f"study_{n:04d}" for n in range(255, 305)]
    documented = {f"study_{n:04d}" for n in (257, 271, 274, 279, 280, 281, 285, 286, 287, 303)}
    assert held_out_case_ids(real_ids, 0) == documented
    assert held_out_case_ids(list(reversed(real_ids)), 0) == documented  # independent of file listing order
    assert held_out_case_ids(real_ids, 1) != documented and len(held_out_case_ids(real_ids, 1)) == 10
    assert sorted(random.Random(0).sample(real_ids, 10)) == sorted(documented)


def test_covid19_ct_seg_windowing_and_benchmark_split(raw_layouts, tmp_path, capfd, monkeypatch):
    raw = raw_layouts["covid"]
    assert main(["convert", "covid19-ct-seg", "-i", str(raw), "-d", "110"]) == 0
    folder = tmp_path / "raw" / "Dataset110_COVID19CTSeg"
    names = dict((case_id, image) for image, case_id in layouts.covid19_ct_seg_names())
    assert sorted(p.name[:-len(".nii.gz")] for p in (folder / "labelsTr").iterdir()) == sorted(names)
    # Coronacases: HU clipped to the window; Radiopaedia: [0, 255] mapped back onto the same HU window
    corona = array(raw / "COVID-19-CT-Seg_20cases" / names["coronacases_003"]).astype(float)
    out = array(folder / "imagesTr" / "coronacases_003_0000.nii.gz")
    assert out.dtype == np.int16
    np.testing.assert_array_equal(out, np.clip(corona, -1250, 250))
    radio = array(raw / "COVID-19-CT-Seg_20cases" / names["radiopaedia_4_85506_1"]).astype(float)
    out = array(folder / "imagesTr" / "radiopaedia_4_85506_1_0000.nii.gz")
    assert out.min() >= -1250 and out.max() <= 250
    np.testing.assert_allclose(out, -1250 + radio / 255 * 1500, atol=0.5)
    assert abs(np.median(out[:, :4, :4]) + 1000) < 15  # air outside the body is back at -1000 HU, as in Coronacases
    label = array(folder / "labelsTr" / "radiopaedia_4_85506_1.nii.gz")
    np.testing.assert_array_equal(label, array(raw / "Infection_Mask" / "radiopaedia_4_85506_1.nii.gz"))
    splits = json.loads((folder / "splits_final.json").read_text())
    assert len(splits) == 5
    for fold, benchmark in zip(splits, BENCHMARK_FOLDS):
        assert sorted(fold["train"]) == sorted(benchmark) and len(fold["val"]) == 16
        assert set(fold["train"]) | set(fold["val"]) == set(names)
    verify_with_nnunet(folder, capfd, monkeypatch)


def test_covid19_ct_seg_lung_and_infection_target(raw_layouts, tmp_path, capfd, monkeypatch):
    folder = convert_covid19_ct_seg(raw_layouts["covid"], 111, target="lung-and-infection")
    assert folder.name == "Dataset111_COVID19CTSegLungInfection"
    assert json.loads((folder / "dataset.json").read_text())["labels"] == {
        "background": 0, "left_lung": 1, "right_lung": 2, "infection": 3}
    label = array(folder / "labelsTr" / "coronacases_001.nii.gz")
    expected = array(raw_layouts["covid"] / "Lung_and_Infection_Mask" / "coronacases_001.nii.gz")
    np.testing.assert_array_equal(label, expected)
    assert set(np.unique(label)) == {0, 1, 2, 3}
    verify_with_nnunet(folder, capfd, monkeypatch)
    # resuming the same folder with another target would mix label conventions
    with pytest.raises(ConversionError, match="target='lung-and-infection'"):
        convert_covid19_ct_seg(raw_layouts["covid"], 111, name="COVID19CTSegLungInfection", target="lungs")


def test_covid19_ct_seg_rejects_unwindowed_radiopaedia(raw_layouts, tmp_path):
    raw = Path(shutil.copytree(raw_layouts["covid"], tmp_path / "covid"))
    image_file = raw / "COVID-19-CT-Seg_20cases" / "radiopaedia_org_covid-19-pneumonia-7_85703_0-dcm.nii.gz"
    hu = sitk.Cast(sitk.ReadImage(str(image_file)), sitk.sitkInt16) - 1000  # HU instead of the [0, 255] file
    sitk.WriteImage(hu, str(image_file))
    with pytest.raises(ConversionError) as failure:
        convert_covid19_ct_seg(raw, 112, target="lungs")
    message = str(failure.value)
    assert "radiopaedia_7_85703_0" in message and "[0, 255]" in message and "1 case(s) failed" in message
    folder = tmp_path / "raw" / "Dataset112_COVID19CTSegLungs"
    splits = json.loads((folder / "splits_final.json").read_text())
    assert all("radiopaedia_7_85703_0" not in fold["train"] + fold["val"] for fold in splits)
    assert json.loads((folder / "dataset.json").read_text())["numTraining"] == 19


def test_rerun_with_other_settings_is_refused_and_overwrite_rebuilds(raw_layouts, tmp_path, capsys):
    """Adding --crop-lung on a rerun must not skip the finished uncropped cases under a dataset.json claiming a crop."""
    task = raw_layouts["msd"]
    assert main(["convert", "msd-lung", "-i", str(task), "-d", "102"]) == 0
    folder = tmp_path / "raw" / "Dataset102_MSDLung"
    before = {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
    capsys.readouterr()
    assert main(["convert", "msd-lung", "-i", str(task), "-d", "102", "--crop-lung"]) == 2
    err = capsys.readouterr().err
    assert "crop_lung=False, crop_margin_mm=None" in err and "crop_lung=True, crop_margin_mm=10.0" in err
    assert {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()} == before

    assert main(["convert", "msd-lung", "-i", str(task), "-d", "102", "--crop-lung", "--crop-margin", "12",
                 "--overwrite"]) == 0
    assert "converted 3, skipped (already done) 0" in capsys.readouterr().out
    dataset_json = json.loads((folder / "dataset.json").read_text())
    assert dataset_json["conversion_settings"] == {"crop_lung": True, "crop_margin_mm": 12.0}
    boxes = json.loads((folder / "crop_boxes.json").read_text())
    assert sorted(boxes) == ["lung_001", "lung_003", "lung_005"]
    for case_id, box in boxes.items():
        assert box["margin_mm"] == 12.0
        assert list(sitk.ReadImage(str(folder / "imagesTr" / f"{case_id}_0000.nii.gz")).GetSize()) == box["crop_size"]
        # the crop kept every tumour voxel of the source label
        assert array(folder / "labelsTr" / f"{case_id}.nii.gz").sum() == array(task / "labelsTr" / f"{case_id}.nii.gz").sum()
