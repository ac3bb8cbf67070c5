"""multilesion: merging converted MSD / StructSeg / NSCLC-effusion datasets into one pre-training dataset."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_covid.pipeline import demo_data as layouts
from nnunet_covid.core.errors import ConversionError
from dataset_conversion.msd_lung import convert_msd_lung
from dataset_conversion.multilesion import convert_multilesion, load_sources
from dataset_conversion.nsclc_effusion import convert_nsclc_effusion
from dataset_conversion.structseg import convert_structseg_lung_gtv
from nnunet_covid.cli import main
from helpers.nnunet_integrity import verify_with_nnunet

SOURCES = ("Dataset102_MSDLung", "Dataset103_StructSegGTV", "Dataset104_NSCLCEffusion")


@pytest.fixture(scope="module")
def sources_root(tmp_path_factory):
    """A raw root with the three lesion datasets converted from their synthetic raw layouts (2 cases each)."""
    src = tmp_path_factory.mktemp("layouts")
    raw = tmp_path_factory.mktemp("sources")
    convert_msd_lung(layouts.write_msd_lung_layout(src, n_cases=2, seed=11), 102, output_root=raw)
    convert_structseg_lung_gtv(layouts.write_structseg_layout(src, n_cases=2, seed=12), 103, output_root=raw)
    convert_nsclc_effusion(layouts.write_nsclc_effusion_layout(src, n_cases=2, seed=13), 104, output_root=raw)
    return raw


@pytest.fixture
def raw(sources_root, tmp_path, monkeypatch):
    """A private copy of the sources (tests add their merged dataset and may break a source)."""
    root = Path(shutil.copytree(sources_root, tmp_path / "raw"))
    monkeypatch.setenv("nnUNet_raw", str(root))
    monkeypatch.setenv("nnUNet_def_n_proc", "1")
    return root


def array(path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def source_cases(raw: Path) -> dict[str, tuple[str, str]]:
    """merged case id -> (source folder, source case id), from the source folders themselves."""
    cases = {}
    for source in SOURCES:
        short = source.split("_", 1)[1]
        for label in sorted((raw / source / "labelsTr").glob("*.nii.gz")):
            case_id = label.name[:-len(".nii.gz")]
            cases[f"{short}_{case_id}"] = (source, case_id)
    return cases


def test_union_merge_via_cli(raw, capfd, monkeypatch):
    # sources by folder name, by id and by path
    rc = main(["convert", "multilesion", "--input", str(raw), "--dataset-id", "100",
               "--sources", SOURCES[0], "103", str(raw / SOURCES[2])])
    assert rc == 0
    folder = raw / "Dataset100_MultiLesion"
    expected = source_cases(raw)
    assert len(expected) == 6
    assert sorted(p.name[:-len(".nii.gz")] for p in (folder / "labelsTr").iterdir()) == sorted(expected)
    for case_id, (source, source_id) in expected.items():
        np.testing.assert_array_equal(array(folder / "imagesTr" / f"{case_id}_0000.nii.gz"),
                                      array(raw / source / "imagesTr" / f"{source_id}_0000.nii.gz"))
        label = array(folder / "labelsTr" / f"{case_id}.nii.gz")
        np.testing.assert_array_equal(label, array(raw / source / "labelsTr" / f"{source_id}.nii.gz"))
        assert label.max() == 1
    dataset_json = json.loads((folder / "dataset.json").read_text())
    assert dataset_json["labels"] == {"background": 0, "lesion": 1} and dataset_json["numTraining"] == 6
    case_sources = json.loads((folder / "case_sources.json").read_text())
    assert case_sources == {case_id: {"source": source.split("_", 1)[1], "dataset": source, "annotated_labels": [1]}
                            for case_id, (source, _) in expected.items()}
    assert dataset_json["case_sources"] == case_sources
    verify_with_nnunet(folder, capfd, monkeypatch)


def test_per_source_labels_and_case_metadata(raw):
    folder = convert_multilesion(raw, 101, name="MultiLesionPerSource", sources=SOURCES, labels="per-source")
    dataset_json = json.loads((folder / "dataset.json").read_text())
    assert dataset_json["labels"] == {"background": 0, "MSDLung": 1, "StructSegGTV": 2, "NSCLCEffusion": 3}
    case_sources = json.loads((folder / "case_sources.json").read_text())
    for case_id, (source, source_id) in source_cases(raw).items():
        value = SOURCES.index(source) + 1
        assert case_sources[case_id]["annotated_labels"] == [value]
        source_label = array(raw / source / "labelsTr" / f"{source_id}.nii.gz")
        np.testing.assert_array_equal(array(folder / "labelsTr" / f"{case_id}.nii.gz"), source_label * value)
    # resuming this folder in union mode would mix label conventions
    with pytest.raises(ConversionError, match="labels='per-source'"):
        convert_multilesion(raw, 101, name="MultiLesionPerSource", sources=SOURCES, labels="union")


def test_several_foreground_labels_of_one_source_keep_their_own_values(tmp_path):
    for name, labels in (("Dataset110_COVIDLungs", {"background": 0, "left_lung": 1, "right_lung": 2, "infection": 3}),
                         ("Dataset102_MSDLung", {"background": 0, "tumour": 1})):
        (tmp_path / name).mkdir()
        (tmp_path / name / "dataset.json").write_text(json.dumps(
            {"labels": labels, "channel_names": {"0": "CT"}, "file_ending": ".nii.gz", "numTraining": 1}))
    sources, out_labels = load_sources(["110", "102"], tmp_path, "per-source")
    assert out_labels == {"background": 0, "COVIDLungs_left_lung": 1, "COVIDLungs_right_lung": 2,
                          "COVIDLungs_infection": 3, "MSDLung": 4}
    assert sources[0].label_map == {0: 0, 1: 1, 2: 2, 3: 3} and sources[1].label_map == {0: 0, 1: 4}
    sources, out_labels = load_sources(["110", "102"], tmp_path, "union")
    assert out_labels == {"background": 0, "lesion": 1}
    assert sources[0].label_map == {0: 0, 1: 1, 2: 1, 3: 1}


def test_bad_sources_and_a_broken_case(raw, capfd):
    with pytest.raises(ConversionError, match="Dataset109_Missing"):
        convert_multilesion(raw, 100, sources=[SOURCES[0], "Dataset109_Missing"])
    with pytest.raises(ConversionError, match="--crop-lung"):
        convert_multilesion(raw, 100, sources=SOURCES, crop_lung=True)
    other = json.loads((raw / SOURCES[1] / "dataset.json").read_text())
    other["channel_names"] = {"0": "MRI"}
    (raw / SOURCES[1] / "dataset.json").write_text(json.dumps(other))
    with pytest.raises(ConversionError, match="Dataset103_StructSegGTV: channel_names"):
        convert_multilesion(raw, 100, sources=SOURCES)
    # a label value the source's dataset.json does not declare fails that case only
    broken = raw / SOURCES[0] / "labelsTr" / "lung_001.nii.gz"
    sitk.WriteImage(sitk.ReadImage(str(broken)) * 2, str(broken))
    rc = main(["convert", "multilesion", "-i", str(raw), "-d", "100", "--sources", SOURCES[0], SOURCES[2]])
    err = capfd.readouterr().err
    assert rc != 0 and "MSDLung_lung_001" in err and "[2]" in err and "Traceback" not in err
    folder = raw / "Dataset100_MultiLesion"
    case_sources = json.loads((folder / "case_sources.json").read_text())
    assert sorted(case_sources) == sorted(p.name[:-len(".nii.gz")] for p in (folder / "labelsTr").iterdir())
    assert len(case_sources) == 3 and "MSDLung_lung_001" not in case_sources
