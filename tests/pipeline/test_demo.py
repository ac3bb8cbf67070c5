"""Demo building blocks: its study grids, the comparison table files, a bad --workdir."""
import json
import subprocess

from nnunet_covid.pipeline.demo import write_table
from nnunet_covid.pipeline.study import load_study
from nnunet_covid.training.trainer_config import trainer_configs_dir


def test_demo_grids_are_studies_and_quick_uses_the_tiny_variants(tmp_path):
    from nnunet_covid.pipeline.demo import GRIDS, PRESETS, Demo

    demo = Demo(tmp_path, "cpu", PRESETS["quick"])
    for name in GRIDS:
        shipped = load_study(trainer_configs_dir() / f"{name}.json")
        written = load_study(demo.grid(name))
        assert written["name"] == shipped["name"] and written["prepare"]
        trainers = [s["trainer"] for s in written["strategies"]]
        trainers += [s["trainer"] for s in written.get("pretrained_sources", {}).values()]
        assert trainers and all(t.endswith("_tiny") for t in trainers)
        assert all(t.endswith("_demo") for t in [s["trainer"] for s in shipped["strategies"]])
        import nnunet_covid.training as training
        assert all(hasattr(training, t) for t in trainers)


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
