"""`nnunet-covid study --slurm`: sbatch scripts, job arrays, dependencies, resubmission, status; a real cluster.

The first tests put stand-ins for SLURM's commands on PATH (they record their arguments and answer from a
state file) to check exactly what is submitted. ``test_tiny_grid_runs_to_its_report_on_a_slurm_cluster``
submits a tiny CPU grid to a real SLURM (``.ci/slurm_cluster.sh`` starts a single-node cluster on
localhost; ``.ci/run`` does so and sets ``NNUNET_COVID_REQUIRE_SLURM=1``, which turns a missing cluster into
a failure instead of a skip).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nnunet_covid.cli import main

TARGET = "Dataset101_TinyCovid"
SOURCE = "Dataset100_TinyLesions"
FAKE_TOOL = """#!{python}
import json, pathlib, sys
state_file = pathlib.Path({state!r})
state = json.loads(state_file.read_text())
tool = pathlib.Path(sys.argv[0]).name
state["calls"].append([tool, *sys.argv[1:]])
state_file.write_text(json.dumps(state))
if tool in state["fail"]:
    print(state["fail"][tool], file=sys.stderr)
    sys.exit(1)
if tool == "sbatch":
    state["next_id"] += 1
    state_file.write_text(json.dumps(state))
    print(state["next_id"])
elif tool in ("squeue", "sacct"):
    print(state[tool], end="")
"""


class FakeSlurm:
    """sbatch/squeue/scancel/sacct stand-ins: job ids 101, 102, ...; squeue and sacct print what they are given."""

    def __init__(self, folder: Path):
        self.state_file = folder / "state.json"
        self.state_file.write_text(json.dumps({"calls": [], "fail": {}, "next_id": 100, "squeue": "", "sacct": ""}))
        self.bin = folder / "bin"
        self.bin.mkdir()
        for tool in ("sbatch", "squeue", "scancel", "sacct"):
            (self.bin / tool).write_text(FAKE_TOOL.format(python=sys.executable, state=str(self.state_file)))
            (self.bin / tool).chmod(0o755)

    def set(self, **values) -> None:
        state = json.loads(self.state_file.read_text())
        state.update(values)
        self.state_file.write_text(json.dumps(state))

    def calls(self, tool: str) -> list[list[str]]:
        state = json.loads(self.state_file.read_text())
        calls = [c[1:] for c in state["calls"] if c[0] == tool]
        self.set(calls=[c for c in state["calls"] if c[0] != tool])
        return calls


def _nnunet_roots(tmp_path: Path, monkeypatch) -> dict[str, Path]:
    roots = {name: tmp_path / name for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}
    for name, path in roots.items():
        path.mkdir()
        monkeypatch.setenv(name, str(path))
    return roots


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
    roots = _nnunet_roots(tmp_path, monkeypatch)
    slurm = FakeSlurm(tmp_path)
    monkeypatch.setenv("PATH", f"{slurm.bin}{os.pathsep}{os.environ['PATH']}")
    grid = {
        "name": "cluster_study", "prepare": True,
        "target": {"dataset": TARGET, "configuration": "3d_fullres", "plans": "nnUNetPlans", "folds": [0, 1, 2],
                   "test_cases": "validation", "labels": [1]},
        "pretrained_sources": {"lesions": {"dataset": SOURCE, "configuration": "3d_fullres", "plans": "nnUNetPlans",
                                           "trainer": "nnUNetTrainer", "fold": "all"}},
        "strategies": [{"name": "scratch", "trainer": "nnUNetTrainer"},
                       {"name": "body", "trainer": "BodyFineTuneTrainer", "sources": ["lesions"]}],
    }
    grid_file = tmp_path / "cluster_study.json"
    grid_file.write_text(json.dumps(grid))
    return slurm, grid_file, (tmp_path / "study").resolve(), roots


# job order and dependencies of the grid above (job names; arrays hold the 3 folds of a run)
JOBS = [
    ("prepare_Dataset101_TinyCovid", []),
    ("prepare_Dataset100_TinyLesions", ["prepare_Dataset101_TinyCovid"]),
    ("pretrain_lesions", ["prepare_Dataset100_TinyLesions"]),
    ("train_scratch", ["prepare_Dataset101_TinyCovid"]),
    ("validate_scratch", ["train_scratch"]),
    ("evaluate_scratch", ["validate_scratch"]),
    ("train_body__lesions", ["pretrain_lesions", "prepare_Dataset101_TinyCovid"]),
    ("validate_body__lesions", ["train_body__lesions"]),
    ("evaluate_body__lesions", ["validate_body__lesions"]),
    ("report", ["evaluate_scratch", "evaluate_body__lesions"]),
]


def _touch(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("{}")


def test_dry_run_writes_and_prints_the_scripts_without_submitting(fake_slurm, capsys):
    slurm, grid, study_dir, roots = fake_slurm
    argv = ["study", str(grid), "--workdir", str(study_dir), "--slurm", "--dry-run", "--partition", "gpu",
            "--time", "1-00:00:00", "--mem", "32G", "--cpus-per-task", "8", "--account", "lab",
            "--sbatch-option", "qos=long", "--sbatch-option=--constraint=a100", "--gpus-per-job", "2"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert slurm.calls("sbatch") == [] and not (study_dir / "slurm" / "jobs.json").exists()
    assert not (study_dir / "study_manifest.json").exists()
    for name, after in JOBS:
        script = study_dir / "slurm" / f"{name}.sbatch"
        steps = 3 if name.startswith(("train", "validate", "evaluate")) else 1
        assert f"# ---- {script}: {steps} step(s)" + (f" after {', '.join(after)}" if after else "") + "\n" in out
        text = script.read_text()
        assert text in out
        for option in ("--partition=gpu", "--time=1-00:00:00", "--mem=32G", "--cpus-per-task=8", "--account=lab",
                       "--qos=long", "--constraint=a100", "--kill-on-invalid-dep=yes", f"--chdir={study_dir}"):
            assert f"#SBATCH {option}\n" in text
        assert ("#SBATCH --array=0-2\n" in text) == (steps == 3)
        # trainings on 2 GPUs (nnU-Net's DDP), predictions on one, planning/evaluation/report on none
        gpus = {"train": 2, "pretrain": 2, "validate": 1}.get(name.split("_")[0])
        assert ("#SBATCH --gres=gpu" in text) == (gpus is not None)
        if gpus:
            assert f"#SBATCH --gres=gpu:{gpus}\n" in text
    train = (study_dir / "slurm" / "train_scratch.sbatch").read_text()
    assert 'case "$SLURM_ARRAY_TASK_ID" in\n0)  # train_scratch_fold0\n' in train and "\n1)  # train_scratch_fold1\n" in train
    assert f"{TARGET} 3d_fullres 1 -tr nnUNetTrainer -p nnUNetPlans -num_gpus 2\n" in train
    assert f"    exec >{study_dir}/logs/train_scratch_fold1.log 2>&1\n" in train
    assert "nnUNet_compile" not in train  # GPU jobs keep nnU-Net's own settings
    validate = (study_dir / "slurm" / "validate_scratch.sbatch").read_text()
    assert "-p nnUNetPlans --val\n" in validate and "-num_gpus" not in validate
    assert out.endswith("10 sbatch script(s) written for 22 step(s); nothing submitted\n")


def test_array_script_runs_the_task_of_its_fold_and_skips_a_finished_step(fake_slurm, capsys):
    """The scripts are real shell: task i runs step i, a validation the training already ran is skipped."""
    slurm, grid, study_dir, roots = fake_slurm
    assert main(["study", str(grid), "--workdir", str(study_dir), "--slurm", "--dry-run", "--device", "cpu"]) == 0
    script = study_dir / "slurm" / "validate_scratch.sbatch"
    assert "#SBATCH --gres" not in script.read_text() and "export nnUNet_compile=false" in script.read_text()
    fold1 = study_dir / "runs/scratch" / TARGET / "nnUNetTrainer__nnUNetPlans__3d_fullres/fold_1"
    _touch(fold1 / "validation" / "summary.json")
    env = {**os.environ, "SLURM_JOB_ID": "7", "SLURM_ARRAY_TASK_ID": "1"}
    result = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert (study_dir / "logs/validate_scratch_fold1.log").read_text() == \
        "validate scratch fold 1: SLURM job 7\nalready done\n"
    result = subprocess.run(["bash", str(script)], env={**env, "SLURM_ARRAY_TASK_ID": "3"}, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 1 and "no step for array task 3" in result.stderr


def test_submission_follows_the_grid_and_a_rerun_submits_only_what_is_missing(fake_slurm, capsys):
    slurm, grid, study_dir, roots = fake_slurm
    argv = ["study", str(grid), "--workdir", str(study_dir), "--slurm"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    ids = {name: str(101 + i) for i, (name, _) in enumerate(JOBS)}
    expected = []
    for name, after in JOBS:
        dependency = [f"--dependency=afterok:{':'.join(ids[a] for a in after)}"] if after else []
        expected.append(["--parsable", *dependency, str(study_dir / "slurm" / f"{name}.sbatch")])
    assert slurm.calls("sbatch") == expected
    assert "submitted train_scratch as array job 104 (3 tasks) after 101" in out
    assert "10 job(s) submitted for 22 step(s), 0 of 22 steps done" in out
    records = json.loads((study_dir / "slurm" / "jobs.json").read_text())["steps"]
    assert records["train_scratch_fold1"] == {"job": "104", "task": 1, "after": ["101"],
                                              "script": "slurm/train_scratch.sbatch"}
    assert records["report"]["task"] is None and (study_dir / "study_manifest.json").is_file()

    # everything still queued: nothing is submitted again
    queued = [f"{ids[n]}_{t}|PENDING" for n, _ in JOBS for t in range(3) if n.startswith(("train", "val", "eval"))]
    queued += [f"{ids[n]}|RUNNING" for n, _ in JOBS if not n.startswith(("train", "val", "eval"))]
    slurm.set(squeue="\n".join(queued) + "\n")
    assert main(argv) == 0
    assert slurm.calls("sbatch") == [] and "0 job(s) submitted for 0 step(s)" in capsys.readouterr().out
    assert json.loads((study_dir / "slurm" / "jobs.json").read_text())["steps"] == records

    # planning and pre-training finished, scratch fold 1 failed: its array's dependants can never start
    for dataset in (TARGET, SOURCE):
        folder = roots["nnUNet_preprocessed"] / dataset
        _touch(folder / "nnUNetPlans_3d_fullres" / "case.pkl")
        (folder / "nnUNetPlans.json").write_text(json.dumps(
            {"configurations": {"3d_fullres": {"data_identifier": "nnUNetPlans_3d_fullres"}}}))
        (folder / "dataset.json").write_text(json.dumps({"numTraining": 1}))
    _touch(roots["nnUNet_results"] / SOURCE / "nnUNetTrainer__nnUNetPlans__3d_fullres/fold_all/checkpoint_final.pth")
    for fold in (0, 2):
        _touch(study_dir / "runs/scratch" / TARGET / f"nnUNetTrainer__nnUNetPlans__3d_fullres/fold_{fold}"
               / "checkpoint_final.pth")
    states = {"101": "COMPLETED", "102": "COMPLETED", "103": "COMPLETED", "104_0": "COMPLETED", "104_1": "FAILED",
              "104_2": "COMPLETED", "107_0": "RUNNING", "107_1": "RUNNING", "107_2": "PENDING", "110": "PENDING"}
    states.update({f"{job}_{t}": "PENDING" for job in ("105", "106", "108", "109") for t in range(3)})
    slurm.set(squeue="".join(f"{ref}|{state}\n" for ref, state in states.items()))
    assert main(argv) == 0
    out = capsys.readouterr().out
    slurm_dir = study_dir / "slurm"
    assert slurm.calls("sbatch") == [
        ["--parsable", str(slurm_dir / "train_scratch_fold1.sbatch")],  # its planning is done: no dependency
        ["--parsable", "--dependency=afterok:111", str(slurm_dir / "validate_scratch.sbatch")],
        ["--parsable", "--dependency=afterok:112", str(slurm_dir / "evaluate_scratch.sbatch")],
        ["--parsable", "--dependency=afterok:113:109_0:109_1:109_2", str(slurm_dir / "report.sbatch")],
    ]
    assert slurm.calls("scancel") == [["105_0"], ["105_1"], ["105_2"], ["106_0"], ["106_1"], ["106_2"], ["110"]]
    assert "cancelled job 105_0 of validate_scratch_fold0: it waits on a failed or resubmitted job" in out
    records = json.loads((slurm_dir / "jobs.json").read_text())["steps"]
    assert records["train_scratch_fold1"]["job"] == "111" and records["train_scratch_fold0"]["job"] == "104"
    assert records["train_body__lesions_fold2"] == {"job": "107", "task": 2, "after": ["103", "101"],
                                                    "script": "slurm/train_body__lesions.sbatch"}
    assert records["report"]["after"] == ["113", "109_0", "109_1", "109_2"]


def test_status_shows_each_step_beside_its_job_state(fake_slurm, capsys):
    slurm, grid, study_dir, roots = fake_slurm
    assert main(["study", str(grid), "--workdir", str(study_dir), "--status"]) == 0
    out = capsys.readouterr().out
    assert "pending       prepare   prepare Dataset101_TinyCovid (nnUNetPlans, 3d_fullres)" in out
    assert "not submitted" in out and "22 steps, 0 done; SLURM jobs: no job submitted" in out
    assert slurm.calls("squeue") == []  # nothing submitted: the scheduler is not asked

    assert main(["study", str(grid), "--workdir", str(study_dir), "--slurm"]) == 0
    capsys.readouterr()
    # squeue still knows the array of scratch trainings; the rest left the queue and sacct has no accounting
    slurm.set(squeue="104_0|RUNNING\n104_1|PENDING\n104_2|FAILED\n",
              fail={"sacct": "sacct: error: Slurm accounting storage is disabled"})
    assert main(["study", str(grid), "--workdir", str(study_dir), "--status"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == ("scheduler states of jobs that left the queue are unknown: sacct failed (exit code 1): "
                        "sacct: error: Slurm accounting storage is disabled")
    train = [line for line in lines if "train scratch fold" in line]
    assert [line.split()[-2:] for line in train] == [["104_0", "RUNNING"], ["104_1", "PENDING"], ["104_2", "FAILED"]]
    assert lines[-1] == "22 steps, 0 done; SLURM jobs: 1 FAILED, 1 PENDING, 1 RUNNING, 19 UNKNOWN"
    slurm.set(squeue="", fail={}, sacct="101|COMPLETED\n102|CANCELLED by 0\n")
    assert main(["study", str(grid), "--workdir", str(study_dir), "--status"]) == 0
    out = capsys.readouterr().out
    assert "job 101 COMPLETED" in out and "job 102 CANCELLED" in out and "job 104_1 UNKNOWN" in out


@pytest.mark.parametrize("argv, message", [
    (["--partition", "gpu"], "--partition: SLURM settings, used with --slurm only"),
    (["--slurm", "--print-commands"], "--slurm submits the steps; --print-commands prints them: use one"),
    (["--gpus-per-job", "2", "--device", "cpu"], "GPUs per training (2): a positive number, on the cuda device only"),
    (["--slurm", "--sbatch-option", " "], "sbatch option ' ': one option per value, e.g. qos=long or --qos=long"),
])
def test_unusable_options_are_one_line_errors(fake_slurm, capsys, argv, message):
    slurm, grid, study_dir, roots = fake_slurm
    assert main(["study", str(grid), "--workdir", str(study_dir), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert slurm.calls("sbatch") == []


def test_scheduler_failures_are_one_line_errors(fake_slurm, capsys, monkeypatch):
    slurm, grid, study_dir, roots = fake_slurm
    argv = ["study", str(grid), "--workdir", str(study_dir), "--slurm"]
    slurm.set(fail={"sbatch": "sbatch: error: invalid partition specified: nope\nsbatch: error: more"})
    assert main(argv) == 2
    err = capsys.readouterr().err
    script = study_dir / "slurm" / "prepare_Dataset101_TinyCovid.sbatch"
    assert err == (f"nnunet-covid study: error: sbatch {script} failed (exit code 1): sbatch: error: invalid "
                   "partition specified: nope\n")
    assert not (study_dir / "slurm" / "jobs.json").exists()

    slurm.set(fail={})
    assert main(argv) == 0
    slurm.set(fail={"squeue": "slurm_load_jobs error: Unable to contact slurm controller (connect failure)"})
    assert main(argv) == 2
    assert "squeue failed (exit code 1): slurm_load_jobs error: Unable to contact slurm controller" in \
        capsys.readouterr().err

    (study_dir / "slurm" / "jobs.json").write_text("[1, 2]")
    assert main(argv) == 2
    assert f"{study_dir / 'slurm' / 'jobs.json'}: not a job record of this study" in capsys.readouterr().err

    monkeypatch.setenv("PATH", str(Path(sys.executable).parent))
    (study_dir / "slurm" / "jobs.json").unlink()
    assert main(argv) == 2
    assert "sbatch not found: run this on a machine with SLURM's commands on PATH" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------- a real cluster
def _cluster_problem() -> str | None:
    """Why no SLURM cluster can run jobs here, or None."""
    if shutil.which("sbatch") is None or shutil.which("sinfo") is None:
        return "SLURM's commands (sbatch, sinfo) are not installed"
    try:
        result = subprocess.run(["sinfo", "--noheader", "--format=%t"], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return "sinfo did not answer within 30 s"
    if result.returncode != 0:
        return f"no SLURM controller answers ({(result.stderr.strip() or 'sinfo failed').splitlines()[0]})"
    states = result.stdout.split()
    if not any(state.rstrip("*") in ("idle", "mix", "alloc") for state in states):
        return f"no SLURM node can run jobs (node states: {', '.join(states) or 'none'})"
    return None


@pytest.fixture(scope="module")
def slurm_cluster():
    problem = _cluster_problem()
    if problem and os.environ.get("NNUNET_COVID_REQUIRE_SLURM") == "1":
        pytest.fail(f"NNUNET_COVID_REQUIRE_SLURM=1 but {problem}; see .ci/slurm_cluster.sh")
    if problem:
        pytest.skip(f"{problem}; start a single-node cluster with `sudo .ci/slurm_cluster.sh`")


def _wait_for_jobs(study_dir: Path, timeout_s: float) -> dict[str, str]:
    """Wait until no recorded job is queued or running; the final state of every job task."""
    from nnunet_covid.pipeline.slurm import FINISHED_STATES, load_records, queue_states

    records = load_records(study_dir)
    deadline = time.time() + timeout_s
    while True:
        states = queue_states([r["job"] for r in records.values()])
        if all(state in FINISHED_STATES for state in states.values()) or time.time() > deadline:
            return states
        time.sleep(2)


def _log_tails(study_dir: Path) -> str:
    return "\n".join(f"--- {log.name}\n" + "".join(log.read_text().splitlines(True)[-8:])
                     for log in sorted((study_dir / "logs").glob("*.log")))


@pytest.mark.slow
@pytest.mark.e2e
def test_tiny_grid_runs_to_its_report_on_a_slurm_cluster(slurm_cluster, tmp_path, monkeypatch, capsys):
    """Planning of both datasets, pre-training, fine-tuning of two folds (a job array), validation, evaluation
    and the report, all as dependent SLURM jobs on the CPU; first with the target's data missing."""
    from nnunet_covid.pipeline.synthetic_ct import make_case, write_nnunet_dataset

    raw = _nnunet_roots(tmp_path, monkeypatch)["nnUNet_raw"]
    for name, value in {"OMP_NUM_THREADS": "1", "nnUNet_def_n_proc": "1", "nnUNet_n_proc_DA": "1",
                        "nnUNet_compile": "false"}.items():
        monkeypatch.setenv(name, value)
    shape, spacing = (16, 32, 32), (5.0, 2.0, 2.0)
    write_nnunet_dataset(raw, 950, "SlurmTumour", [make_case("tumour", s, shape=shape, spacing=spacing)
                                                   for s in (0, 1)])
    grid = {"name": "slurm_tiny", "prepare": True,
            "target": {"dataset": "Dataset951_SlurmCovid", "configuration": "3d_fullres", "plans": "nnUNetPlans",
                       "folds": [0, 1], "test_cases": "validation", "labels": [1], "tolerance_mm": 2.0},
            "pretrained_sources": {"tumour": {"dataset": "Dataset950_SlurmTumour", "configuration": "3d_fullres",
                                              "plans": "nnUNetPlans", "trainer": "nnUNetTrainer_tiny", "fold": "all"}},
            "strategies": [{"name": "body", "trainer": "BodyFineTuneTrainer_tiny", "sources": ["tumour"]}]}
    grid_file = tmp_path / "slurm_tiny.json"
    grid_file.write_text(json.dumps(grid))
    study_dir = (tmp_path / "study").resolve()
    argv = ["study", str(grid_file), "--workdir", str(study_dir), "--device", "cpu", "--slurm", "--cpus-per-task", "1"]
    started = time.time()

    # the target's raw data is missing: its planning fails and every job waiting on it leaves the queue
    assert main(argv) == 0
    assert "7 job(s) submitted for 10 step(s)" in capsys.readouterr().out
    states = _wait_for_jobs(study_dir, timeout_s=120)
    records = json.loads((study_dir / "slurm" / "jobs.json").read_text())["steps"]
    assert states[records["prepare_Dataset951_SlurmCovid"]["job"]] == "FAILED", states

    # with the data in place a rerun submits the missing steps again and they run through to the report
    write_nnunet_dataset(raw, 951, "SlurmCovid", [make_case("covid", 20 + s, shape=shape, spacing=spacing)
                                                  for s in range(5)])
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "7 job(s) submitted for 10 step(s)" in out, out
    states = _wait_for_jobs(study_dir, timeout_s=600)
    report = study_dir / "report" / "report.md"
    assert report.is_file(), f"states {states}\n{_log_tails(study_dir)}"
    assert set(states.values()) >= {"COMPLETED"}
    records = json.loads((study_dir / "slurm" / "jobs.json").read_text())["steps"]
    train = [records[f"train_body__tumour_fold{f}"] for f in (0, 1)]
    assert train[0]["job"] == train[1]["job"] and [r["task"] for r in train] == [0, 1]  # one array job
    assert all(states[f"{train[0]['job']}_{t}"] == "COMPLETED" for t in (0, 1))
    evaluation = json.loads((study_dir / "evaluation" / "body__tumour" / "fold_1.json").read_text())
    assert len(evaluation["cases"]) == 1
    assert "body[tumour]" in report.read_text()

    assert main(["study", str(grid_file), "--workdir", str(study_dir), "--device", "cpu", "--status"]) == 0
    status = capsys.readouterr().out.splitlines()
    assert all(line[6:].split()[0] == "done" and line.endswith("COMPLETED") for line in status[:-1]), "\n".join(status)
    assert status[-1] == "10 steps, 10 done; SLURM jobs: 10 COMPLETED"

    # a rerun submits nothing
    assert main(argv) == 0
    assert "0 job(s) submitted for 0 step(s), 10 of 10 steps done" in capsys.readouterr().out
    assert json.loads((study_dir / "slurm" / "jobs.json").read_text())["steps"] == records
    print(f"SLURM study took {time.time() - started:.0f} s")
