"""benchmarks/gpu_check.py --quick: the GPU check's own code, tiny, on the CPU (so the script cannot rot)."""
import json
import os
import subprocess
import sys

import pytest
from helpers import REPO_ROOT

pytestmark = [pytest.mark.slow, pytest.mark.e2e]



def test_gpu_check_quick_runs_every_phase_on_the_cpu(tmp_path):
    env_extra = {"OMP_NUM_THREADS": "1", "nnUNet_n_proc_DA": "1", "nnUNet_def_n_proc": "1", "nnUNet_compile": "false"}
    result = subprocess.run([sys.executable, str(REPO_ROOT / "benchmarks" / "gpu_check.py"), "--quick", "--device", "cpu",
                             "--out", str(tmp_path)], capture_output=True, text=True, timeout=1200,
                            env={**os.environ, **env_extra})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    steps = {r["trainer"]: r for r in report["training_steps"]}
    assert set(steps) == {"nnUNetTrainer", "ContinualLearningTrainer", "BodyFineTuneTrainer", "FrozenEncoderTrainer",
                          "HybridEncoderTrainer", "MultiLesionPretrainTrainer", "MultiLesionPartialLabelTrainer"}
    for row in steps.values():
        assert "error" not in row and row["step_times"] and all(t > 0 for t in row["step_times"])
        assert row["peak_extra_bytes"] > 0 and row["time_ratio"] > 0
    # the frozen encoder trains fewer parameters, the hybrid more, than the baseline network holds
    assert steps["FrozenEncoderTrainer"]["trainable_parameters"] < steps["nnUNetTrainer"]["trainable_parameters"]
    assert steps["HybridEncoderTrainer"]["parameters"] > steps["nnUNetTrainer"]["parameters"]
    assert set(steps["HybridEncoderTrainer"]["targets_met"]) == {"time", "memory"}
    two_d = {r["trainer"]: r for r in report["two_d"]}
    assert set(two_d) == {"nnUNetTrainer", "NCoVSegNetTrainer"} and two_d["NCoVSegNetTrainer"]["train_ratio"] > 0
    assert all("error" not in r and set(r["labels"]) <= {0, 1} for r in report["stock"]) and len(report["stock"]) == 2
    markdown = (tmp_path / "gpu_check.md").read_text()
    assert "| HybridEncoderTrainer |" in markdown and "Stock nnUNetv2_train" in markdown
