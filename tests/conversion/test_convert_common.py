"""The converter contract (dataset_conversion.common) and the `convert` dispatcher."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from dataset_conversion.common import (CaseData, CaseJob, case_done, finish_dataset, open_dataset, run_cases,
                                       write_case)
from nnunet_covid.core.errors import ConversionError
from nnunet_covid.cli import main
from helpers.nnunet_integrity import verify_with_nnunet


def _image(shape=(4, 6, 8), spacing=(1.0, 1.0, 2.0), origin=(0.0, 0.0, 0.0), value=1, dtype=np.int16):
    img = sitk.GetImageFromArray(np.full(shape, value, dtype=dtype))
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    return img


def load_pair(case_id: str, fail: str = "", label_origin=(0.0, 0.0, 0.0)) -> CaseData:
    """A top-level (picklable) loader for run_cases."""
    if fail == "error":
        raise ConversionError(f"case {case_id}: broken on purpose")
    if fail == "crash":
        raise ZeroDivisionError("division by zero")
    image = _image(value=int(case_id[-1]))
    label = _image(origin=label_origin, value=1, dtype=np.uint8)
    return CaseData([image], label, info={"n": int(case_id[-1])})


def _open(dataset_id, name, output_root=None):
    return open_dataset(dataset_id, name, output_root, "test", {})


def test_dataset_folder_naming_and_errors(tmp_path, monkeypatch):
    monkeypatch.delenv("nnUNet_raw", raising=False)
    with pytest.raises(ConversionError, match="nnUNet_raw is not set"):
        _open(5, "Demo")
    monkeypatch.setenv("nnUNet_raw", str(tmp_path))
    assert _open(5, "Demo") == tmp_path / "Dataset005_Demo"
    assert _open(5, "Demo", output_root=tmp_path / "x").name == "Dataset005_Demo"
    with pytest.raises(ConversionError, match="already used by .*Dataset005_Demo"):
        _open(5, "Other")
    for bad_id in (0, 1000):
        with pytest.raises(ConversionError, match="1..999"):
            _open(bad_id, "Demo")
    with pytest.raises(ConversionError, match="invalid dataset name"):
        _open(6, "a b")


def test_write_case_checks_geometry_and_writes_atomically(tmp_path):
    with pytest.raises(ConversionError, match=r"case c1: label origin \(0.0, 0.0, 5.0\) does not match"):
        write_case(tmp_path, "c1", [_image()], _image(origin=(0, 0, 5.0)))
    with pytest.raises(ConversionError, match=r"case c1: label shape \(8, 6, 3\) does not match image shape"):
        write_case(tmp_path, "c1", [_image()], _image(shape=(3, 6, 8)))
    with pytest.raises(ConversionError, match=r"case c1: channel 1 spacing"):
        write_case(tmp_path, "c1", [_image(), _image(spacing=(1, 1, 3))], None)
    assert not case_done(tmp_path, "c1") and not (tmp_path / "imagesTr").exists()
    record = write_case(tmp_path, "c1", [_image(), _image(value=7)], _image(value=3, dtype=np.float32),
                        info={"note": 1})
    assert record["num_channels"] == 2 and record["info"] == {"note": 1}
    assert case_done(tmp_path, "c1") and not case_done(tmp_path, "c1", subset="Ts")
    label = sitk.ReadImage(str(tmp_path / "labelsTr" / "c1.nii.gz"))
    assert label.GetPixelID() == sitk.sitkUInt8
    assert sitk.GetArrayViewFromImage(sitk.ReadImage(str(tmp_path / "imagesTr" / "c1_0001.nii.gz"))).max() == 7
    assert list((tmp_path / ".partial").iterdir()) == []  # temporary files were renamed into place
    (tmp_path / "labelsTr" / "c1.nii.gz").unlink()  # an interrupted case is not "done"
    assert not case_done(tmp_path, "c1")


def test_run_cases_isolates_failures_skips_done_and_finish_writes_dataset_json(tmp_path, capfd, monkeypatch):
    jobs = [CaseJob("case1", load_pair, ("case1",)), CaseJob("case2", load_pair, ("case2", "error")),
            CaseJob("case3", load_pair, ("case3", "crash")),
            CaseJob("case4", load_pair, ("case4", "", (0.0, 9.0, 0.0))),
            CaseJob("case5", load_pair, ("case5",)), CaseJob("case6", load_pair, ("case6",), subset="Ts")]
    summary = run_cases(tmp_path, jobs, num_processes=2, progress=False)
    assert sorted(summary.converted) == ["case1", "case5", "case6"]
    assert summary.failed["case2"] == "case case2: broken on purpose"
    assert summary.failed["case3"].startswith("case case3: ZeroDivisionError: division by zero (at test_convert_common.py")
    assert "case case4: label origin" in summary.failed["case4"]
    assert summary.results["case5"] == {"n": 5}
    splits = [{"train": ["case1", "case2"], "val": ["case5"]}]
    with pytest.raises(ConversionError, match=r"3 case\(s\) failed(.|\n)*FAILED case2: case case2: broken on purpose"):
        finish_dataset(tmp_path, {0: "CT"}, {"background": 0, "lesion": 1}, summary, splits=splits)
    dataset_json = json.loads((tmp_path / "dataset.json").read_text())
    assert dataset_json["numTraining"] == 2 and dataset_json["channel_names"] == {"0": "CT"}
    assert json.loads((tmp_path / "splits_final.json").read_text()) == [{"train": ["case1"], "val": ["case5"]}]
    assert (tmp_path / "imagesTs" / "case6_0000.nii.gz").is_file() and not (tmp_path / ".partial").exists()

    rerun = run_cases(tmp_path, [CaseJob(j.case_id, load_pair, (j.case_id,), subset=j.subset) for j in jobs],
                      num_processes=1, progress=True)
    assert sorted(rerun.skipped) == ["case1", "case5", "case6"] and sorted(rerun.converted) == ["case2", "case3", "case4"]
    assert rerun.results["case1"] == {"n": 1}  # infos of skipped cases come from their records
    assert "converted 3, skipped (already done) 3, failed 0" in capfd.readouterr().out
    finish_dataset(tmp_path, {0: "CT"}, {"background": 0, "lesion": 1}, rerun)
    assert json.loads((tmp_path / "dataset.json").read_text())["numTraining"] == 5
    verify_with_nnunet(tmp_path, capfd, monkeypatch)
    with pytest.raises(ConversionError, match="duplicate case identifiers: case1"):
        run_cases(tmp_path, [jobs[0], jobs[0]], progress=False)


def test_finish_dataset_without_any_case_is_an_error(tmp_path):
    summary = run_cases(tmp_path, [CaseJob("case1", load_pair, ("case1", "error"))], progress=False)
    with pytest.raises(ConversionError, match="no training case could be converted"):
        finish_dataset(tmp_path, {0: "CT"}, {"background": 0, "lesion": 1}, summary)
    assert not (tmp_path / "dataset.json").exists()


def test_convert_cli_lists_converters_and_validates_common_flags(tmp_path, capsys, monkeypatch):
    from dataset_conversion import CONVERTER_MODULES

    with pytest.raises(SystemExit) as exit_info:
        main(["convert", "--help"])
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    for module_name in CONVERTER_MODULES:
        assert __import__(module_name, fromlist=["CLI_NAME"]).CLI_NAME in help_text
    assert main(["convert", "lidc-idri", "--input", str(tmp_path / "missing"), "--dataset-id", "3"]) == 2
    assert "input folder" in capsys.readouterr().err
    for bad in (["--dataset-id", "1000"], ["--dataset-id", "x"], ["--dataset-id", "3", "--num-processes", "0"]):
        with pytest.raises(SystemExit) as exit_info:
            main(["convert", "lidc-idri", "--input", str(tmp_path)] + bad)
        assert exit_info.value.code == 2
    monkeypatch.delenv("nnUNet_raw", raising=False)
    (tmp_path / "empty").mkdir()
    assert main(["convert", "lidc-idri", "--input", str(tmp_path / "empty"), "-d", "3", "-o", str(tmp_path)]) == 2
    assert "no CT DICOM series found" in capsys.readouterr().err


def load_or_die(case_id: str) -> CaseData:
    """A loader whose case kills its own worker process (as the OOM killer would)."""
    if case_id == "case3":
        os.kill(os.getpid(), signal.SIGKILL)
    return load_pair(case_id)


def test_a_case_that_kills_its_worker_fails_alone(tmp_path):
    jobs = [CaseJob(f"case{i}", load_or_die, (f"case{i}",)) for i in range(1, 6)]
    summary = run_cases(tmp_path, jobs, num_processes=2, progress=False)
    assert sorted(summary.converted) == ["case1", "case2", "case4", "case5"]
    assert list(summary.failed) == ["case3"] and "worker process died" in summary.failed["case3"]


def _process_state(pid: int) -> tuple[str, int] | None:
    """(state, parent pid) of a process from /proc, None when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return fields[0], int(fields[1])


def _children(pid: int) -> set[int]:
    children = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        state = _process_state(int(stat.parent.name))
        if state is not None and state[1] == pid and state[0] != "Z":
            children.add(int(stat.parent.name))
    return children


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads worker processes from /proc (Linux)")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_workers_never_outlive_a_killed_convert(sig, tmp_path, capsys):
    from nnunet_covid.core.nnunet_commands import nnunet_tool
    from nnunet_covid.pipeline.demo_data import write_msd_lung_layout

    task = write_msd_lung_layout(tmp_path / "src", n_cases=12, seed=1)
    argv = [nnunet_tool("nnunet-covid"), "convert", "msd-lung", "-i", str(task), "-d", "5", "-o", str(tmp_path / "raw"),
            "-np", "2", "--crop-lung"]
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers: set[int] = set()
    while process.poll() is None and len(workers) < 2:
        workers = _children(process.pid)
        time.sleep(0.01)
    assert len(workers) == 2, "the conversion ended before its two workers were seen"
    process.send_signal(sig)
    process.wait(timeout=30)
    deadline = time.time() + 10
    while time.time() < deadline and any(_process_state(w) not in (None,) and _process_state(w)[0] != "Z"
                                         for w in workers):
        time.sleep(0.05)
    assert all(_process_state(w) is None or _process_state(w)[0] == "Z" for w in workers), "a worker outlived its parent"
    if sig == signal.SIGKILL:  # killed at any moment, a rerun finishes the dataset
        rerun = subprocess.run(argv, capture_output=True, text=True)
        assert rerun.returncode == 0, rerun.stderr
        folder = tmp_path / "raw" / "Dataset005_MSDLung"
        assert json.loads((folder / "dataset.json").read_text())["numTraining"] == 12
        assert len(json.loads((folder / "crop_boxes.json").read_text())) == 12 and not (folder / ".partial").exists()


def test_input_discovery_follows_links_once_and_reports_dangling_ones(tmp_path, capsys):
    from dataset_conversion.input_files import subfolders, walk_files

    data = tmp_path / "disk2" / "case_b"
    data.mkdir(parents=True)
    (data / "b.dcm").write_text("b")
    raw = tmp_path / "raw"
    (raw / "case_a" / "Imgs").mkdir(parents=True)
    (raw / "case_a" / "a.DCM").write_text("a")
    (raw / "case_a" / ".hidden.dcm").write_text("h")
    (raw / "case_b").symlink_to(data, target_is_directory=True)
    (raw / "case_b_again").symlink_to(data, target_is_directory=True)
    (raw / "case_a" / "up").symlink_to(raw, target_is_directory=True)  # a cycle
    (raw / "case_c.dcm").symlink_to(tmp_path / "gone.dcm")  # points nowhere
    (data / "Imgs").mkdir()
    found = list(walk_files(raw, (".dcm",)))
    assert [p.relative_to(raw).as_posix() for p in found] == ["case_a/a.DCM", "case_b/b.dcm"]
    warning = capsys.readouterr().out
    assert "warning: skipping" in warning and "case_c.dcm" in warning and "points to nothing" in warning
    assert [p.relative_to(raw).as_posix() for p in subfolders(raw, "Imgs")] == ["case_a/Imgs", "case_b/Imgs"]
    with pytest.raises(ConversionError, match="folder .*nowhere does not exist"):
        list(walk_files(tmp_path / "nowhere"))
