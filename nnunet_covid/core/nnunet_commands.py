"""Run stock nnU-Net command-line tools as subprocesses with a self-contained environment.

Output goes to a log file; training progress (epoch, epoch time) is parsed from nnU-Net's own
log lines and reported with an ETA, so a long CPU run never looks frozen.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

from nnunet_covid.core.errors import CommandFailed
from nnunet_covid.core.nnunet_conventions import epoch_times, ext_trainer_dir


# nnU-Net settings for a CPU machine: its 12 augmentation workers and 8 validation workers starve a small
# CPU, and it turns torch.compile off on the CPU anyway. Values already in the environment win.
CPU_SETTINGS = {"nnUNet_n_proc_DA": "1", "nnUNet_def_n_proc": "1", "nnUNet_compile": "false"}


def cpu_settings(environ: dict[str, str] | None = None) -> dict[str, str]:
    """:data:`CPU_SETTINGS` for the variables ``environ`` (default ``os.environ``) does not set."""
    environ = os.environ if environ is None else environ
    return {k: v for k, v in CPU_SETTINGS.items() if k not in environ}


def nnunet_environment(workdir: Path, device: str = "cpu", extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for nnU-Net subprocesses rooted at ``workdir`` (raw/preprocessed/results below it, created).

    Our trainers are made visible through ``nnUNet_extTrainer``; on the CPU the :data:`CPU_SETTINGS`
    apply, on a GPU nnU-Net's own defaults (torch.compile, its augmentation workers).
    """
    env = dict(os.environ)
    env.update({
        "nnUNet_raw": str(workdir / "nnUNet_raw"),
        "nnUNet_preprocessed": str(workdir / "nnUNet_preprocessed"),
        "nnUNet_results": str(workdir / "nnUNet_results"),
        "nnUNet_extTrainer": ext_trainer_dir(),
        "PYTHONUNBUFFERED": "1",
    })
    if device == "cpu":
        env.update(cpu_settings(env))
    if extra:
        env.update(extra)
    for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        Path(env[key]).mkdir(parents=True, exist_ok=True)
    return env


def run_nnunet(cmd: Sequence[str], env: dict[str, str], log_file: Path, total_epochs: int | None = None,
               report: Callable[[str], None] = print, append: bool = False) -> float:
    """Run ``cmd``, stream its output into ``log_file`` (appended to with ``append``) and report epochs with an
    ETA. Returns seconds taken; a non-zero exit raises :class:`CommandFailed` with the log's tail."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    start = time.time()
    times: list[float] = []
    with open(log_file, "a" if append else "w") as log:
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        process = subprocess.Popen(list(cmd), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                   bufsize=1)
        assert process.stdout is not None
        for line in process.stdout:
            log.write(line)
            new_times = epoch_times(line)
            times.extend(new_times)
            if new_times and total_epochs:
                mean = sum(times) / len(times)
                eta = mean * (total_epochs - len(times))
                report(f"      epoch {len(times)}/{total_epochs}  {mean:5.1f} s/epoch  ETA {eta:4.0f} s")
        returncode = process.wait()
    if returncode != 0:
        tail = "".join(open(log_file).readlines()[-15:])
        raise CommandFailed(f"'{' '.join(cmd)}' failed with exit code {returncode}; log: {log_file}\n{tail}")
    return time.time() - start


def nnunet_tool(name: str) -> str:
    """Path of an nnU-Net console script installed beside this interpreter (falls back to PATH lookup)."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.is_file() else name
