"""Run stock nnU-Net command-line tools as subprocesses with a self-contained environment.

Output goes to a log file; training progress (epoch, epoch time) is parsed from nnU-Net's own
log lines and reported with an ETA, so a long CPU run never looks frozen.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

from nnunet_covid.ext_path import ext_trainer_dir

_EPOCH_TIME = re.compile(r"Epoch time: ([0-9.]+) s")


def epoch_times(log_text: str) -> list[float]:
    """The 'Epoch time: X s' values nnU-Net logs after each epoch."""
    return [float(value) for value in _EPOCH_TIME.findall(log_text)]


class CommandFailed(RuntimeError):
    """An nnU-Net command exited non-zero; the message names the command and its log."""


def nnunet_environment(workdir: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for nnU-Net subprocesses rooted at ``workdir`` (raw/preprocessed/results below it).

    Worker counts are pinned low (``nnUNet_n_proc_DA``'s default of 12 starves a small CPU machine)
    and our trainers are made visible through ``nnUNet_extTrainer``.
    """
    env = dict(os.environ)
    env.update({
        "nnUNet_raw": str(workdir / "nnUNet_raw"),
        "nnUNet_preprocessed": str(workdir / "nnUNet_preprocessed"),
        "nnUNet_results": str(workdir / "nnUNet_results"),
        "nnUNet_def_n_proc": env.get("nnUNet_def_n_proc", "1"),
        "nnUNet_n_proc_DA": env.get("nnUNet_n_proc_DA", "1"),
        "nnUNet_compile": env.get("nnUNet_compile", "false"),
        "nnUNet_extTrainer": ext_trainer_dir(),
        "PYTHONUNBUFFERED": "1",
    })
    if extra:
        env.update(extra)
    for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        Path(env[key]).mkdir(parents=True, exist_ok=True)
    return env


def run_nnunet(cmd: Sequence[str], env: dict[str, str], log_file: Path, total_epochs: int | None = None,
               report: Callable[[str], None] = print) -> float:
    """Run ``cmd``, stream its output into ``log_file`` and report epochs with an ETA. Returns seconds taken."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    start = time.time()
    times: list[float] = []
    with open(log_file, "w") as log:
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        process = subprocess.Popen(list(cmd), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                   bufsize=1)
        assert process.stdout is not None
        for line in process.stdout:
            log.write(line)
            times.extend(epoch_times(line))
            if times and total_epochs and _EPOCH_TIME.search(line):
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
