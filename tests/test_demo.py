"""Demo building blocks: reduced-width plans, the comparison table files, a bad --workdir."""
import json
import subprocess

from nnunet_covid.demo import write_reduced_width_plans, write_table


def test_reduced_width_plans_divide_features_and_keep_the_data(tmp_path):
    plans = {"plans_name": "nnUNetPlans", "configurations": {
        "3d_fullres": {"data_identifier": "nnUNetPlans_3d_fullres",
                       "architecture": {"arch_kwargs": {"features_per_stage": [32, 64, 128, 256, 320]}}},
        "3d_cascade_fullres": {"inherits_from": "3d_fullres"}}}
    (tmp_path / "nnUNetPlans.json").write_text(json.dumps(plans))
    write_reduced_width_plans(tmp_path / "nnUNetPlans.json", tmp_path / "nnUNetDemoPlans.json", 8)
    demo = json.loads((tmp_path / "nnUNetDemoPlans.json").read_text())
    assert demo["plans_name"] == "nnUNetDemoPlans"
    config = demo["configurations"]["3d_fullres"]
    assert config["architecture"]["arch_kwargs"]["features_per_stage"] == [4, 8, 16, 32, 40]
    assert config["data_identifier"] == "nnUNetPlans_3d_fullres"
    assert not list(tmp_path.glob("*.tmp"))


def test_table_is_written_as_markdown_and_json(tmp_path, capsys):
    rows = [{"strategy": "train from scratch", "trainer": "nnUNetTrainer_demo", "pretrained": "none",
             "n_cases": 16, "dsc_mean": 0.61234, "dsc_std": 0.1, "nsd_mean": 0.7, "nsd_std": 0.05,
             "seconds_per_epoch": 3.21},
            {"strategy": "hybrid encoder", "trainer": "HybridEncoderTrainer_demo", "pretrained": "multi-lesion",
             "n_cases": 16, "dsc_mean": 0.7, "dsc_std": 0.2, "nsd_mean": 0.8, "nsd_std": 0.1,
             "seconds_per_epoch": None}]
    write_table(rows, tmp_path, 600.0)
    markdown = (tmp_path / "demo_results.md").read_text()
    assert "| train from scratch | nnUNetTrainer_demo | none | 16 | 0.612 ± 0.100 | 0.700 ± 0.050 | 3.2 |" in markdown
    assert "| hybrid encoder | HybridEncoderTrainer_demo | multi-lesion | 16 | 0.700 ± 0.200 | 0.800 ± 0.100 | n/a |" \
        in markdown
    assert json.loads((tmp_path / "demo_results.json").read_text())["rows"] == rows
    assert "hybrid encoder" in capsys.readouterr().out


def test_demo_names_a_workdir_that_is_not_a_folder(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    result = subprocess.run(["nnunet-covid", "demo", "--quick", "--workdir", str(blocker)], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 2
    assert f"--workdir {blocker}" in result.stderr and "Traceback" not in result.stderr
    assert blocker.read_text() == "not a folder"
