"""Submit the pending steps of a study (:mod:`~nnunet_covid.pipeline.study`) to SLURM as dependent batch jobs.

One sbatch script per job in ``<study>/slurm/`` (written atomically):

- a job is one step, or the pending per-fold steps of one run that share an :attr:`Step.array` name
  (``--array=0-N``; array task ``i`` runs the i-th step, named in the script);
- it is submitted with ``--dependency=afterok:`` on the jobs of the steps it depends on: a job of the same
  submission by its id (an array job: all its tasks), a still queued task of an earlier submission as
  ``<id>_<task>``; a dependency on a finished step is dropped. ``--kill-on-invalid-dep=yes``: a job whose
  dependency failed leaves the queue instead of waiting forever;
- a step finished when its files exist (training, prediction, evaluation) exits at once when they do (a
  validation the training already ran), and a job fails when its step did not produce them;
- GPUs: ``--gres=gpu:N`` with the step's :attr:`Step.gpus` (trainings ``N``, predictions 1, CPU steps none);
- output goes to the step's log (``<study>/logs/<step>.log``, as in a local run), SLURM's own to
  ``<study>/slurm/logs/``.

Job ids and dependencies are recorded per step in ``<study>/slurm/jobs.json`` (atomic). A rerun submits only
what is missing: finished steps are skipped, and a step whose job is still pending or running (``squeue``) is
not resubmitted unless that job waits on a failed or resubmitted one (it is cancelled first: its dependency
can never be met).
Every failure of ``sbatch``, ``squeue``, ``scancel`` or ``sacct`` is one :class:`StudyError` line.
"""
from __future__ import annotations

import json
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from nnunet_covid.core.atomic_io import atomic_write_json, atomic_write_text
from nnunet_covid.core.errors import StudyError
from nnunet_covid.pipeline.study import Step

SLURM_DIR = "slurm"
JOBS_FILE = "jobs.json"
# states after which a job never runs again; any other state squeue shows is a queued or running job
FAILED_STATES = frozenset({"FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL", "DEADLINE",
                           "OUT_OF_MEMORY", "SPECIAL_EXIT", "REVOKED"})
FINISHED_STATES = FAILED_STATES | {"COMPLETED"}
COMMAND_TIMEOUT_S = 120


@dataclass(frozen=True)
class SlurmOptions:
    """``#SBATCH`` settings of every job; ``None`` leaves the cluster's default."""

    partition: str | None = None
    cpus_per_task: int | None = None
    mem: str | None = None
    time: str | None = None
    account: str | None = None
    extra: tuple[str, ...] = ()  # further sbatch options, one per line, e.g. "--qos=long"


@dataclass(eq=False)
class Job:
    """One sbatch submission: a step, or a job array whose task ``i`` runs ``steps[i]``."""

    name: str
    steps: list[Step]
    script: Path
    dependencies: list[str]  # job ids (``<id>`` or ``<id>_<task>``); in a dry run the names of jobs not submitted
    job_id: str | None = None


# ----------------------------------------------------------------------------------------- SLURM commands
def slurm_command(argv: list[str], what: str | None = None) -> str:
    """Run a SLURM client command; its stdout, or one :class:`StudyError` line saying why ``what`` (default: the
    command's name) failed."""
    what = what or argv[0]
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
    except FileNotFoundError:
        raise StudyError(f"{argv[0]} not found: run this on a machine with SLURM's commands on PATH") from None
    except subprocess.TimeoutExpired:
        raise StudyError(f"{what}: no answer within {COMMAND_TIMEOUT_S} s (is slurmctld reachable?)") from None
    if result.returncode != 0:
        message = (result.stderr.strip() or result.stdout.strip() or "no message").splitlines()[0]
        raise StudyError(f"{what} failed (exit code {result.returncode}): {message}")
    return result.stdout


def _states(lines: str) -> dict[str, str]:
    """``<job id>|<state>`` lines -> {job id: first word of the state} (sacct writes "CANCELLED by 0")."""
    states = {}
    for line in lines.splitlines():
        ref, _, state = line.strip().partition("|")
        if ref and state:
            states[ref] = state.split()[0]
    return states


def queue_states(job_ids: list[str]) -> dict[str, str]:
    """The state squeue shows for every task of these jobs (``<id>`` or ``<id>_<task>`` -> state)."""
    if not job_ids:
        return {}
    return _states(slurm_command(["squeue", "--noheader", "--array", "--states=all", "--format=%i|%T",
                                  f"--jobs={','.join(sorted(set(job_ids)))}"]))


def accounting_states(job_ids: list[str]) -> dict[str, str]:
    """The state sacct records for every task of these jobs (needs SLURM's accounting storage)."""
    if not job_ids:
        return {}
    return _states(slurm_command(["sacct", "--noheader", "--parsable2", "--allocations", "--format=JobID,State",
                                  f"--jobs={','.join(sorted(set(job_ids)))}"]))


# ------------------------------------------------------------------------------------------------ records
def records_path(study_dir: Path) -> Path:
    return Path(study_dir) / SLURM_DIR / JOBS_FILE


def load_records(study_dir: Path) -> dict[str, dict]:
    """{step name: {"job": id, "task": array task or None, "after": its job's dependencies, "script": path}}."""
    path = records_path(study_dir)
    if not path.exists():
        return {}
    try:
        records = json.loads(path.read_text(encoding="utf-8"))["steps"]
        if not all(isinstance(r["job"], str) and isinstance(r.get("after", []), list) for r in records.values()):
            raise TypeError
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise StudyError(f"{path}: not a job record of this study (delete it to forget the submitted jobs)") from None
    return records


def job_ref(record: dict) -> str:
    """The id squeue shows for a recorded step: ``<id>``, or ``<id>_<task>`` for a task of a job array."""
    return record["job"] if record.get("task") is None else f"{record['job']}_{record['task']}"


def step_states(steps: list[Step], study_dir: Path,
                report: Callable[[str], None] = print) -> dict[str, tuple[str, str]]:
    """{step name: (job id, scheduler state)} for the steps with a recorded job; squeue's state, else sacct's.

    A job neither knows (sacct unavailable: no accounting storage) is ``UNKNOWN``, reported once.
    """
    records = load_records(study_dir)
    refs = {s.name: job_ref(records[s.name]) for s in steps if s.name in records}
    states = queue_states([records[name]["job"] for name in refs])
    gone = [name for name, ref in refs.items() if ref not in states]
    if gone:
        try:
            states.update(accounting_states([records[name]["job"] for name in gone]))
        except StudyError as e:
            report(f"scheduler states of jobs that left the queue are unknown: {e}")
    return {name: (ref, states.get(ref, "UNKNOWN")) for name, ref in refs.items()}


# ------------------------------------------------------------------------------------------------ scripts
def _files_exist(paths: list[Path]) -> str:
    return " && ".join(f"[ -f {shlex.quote(str(p))} ]" for p in paths)


def step_lines(step: Step) -> list[str]:
    """The shell lines of one step: its log, the skip when done, its environment, commands and marker."""
    q = shlex.quote
    files = _files_exist(step.done)
    lines = [f"mkdir -p {q(str(step.log.parent))}", f"exec >{q(str(step.log))} 2>&1",
             f"echo {q(f'{step.title}: SLURM job')} \"$SLURM_JOB_ID\""]
    if step.done_check is None:  # finished exactly when its files exist
        lines.append(f"if {files}; then echo {q('already done')}; exit 0; fi")
    lines += [f"export {name}={q(value)}" for name, value in step.env.items()]
    lines += [shlex.join(argv) for argv in step.commands]
    if step.marker is not None:
        lines += [f"mkdir -p {q(str(step.marker.parent))}", f"touch {q(str(step.marker))}"]
    missing = f"finished without {', '.join(str(p) for p in step.done)}"
    lines.append(f"{files} || {{ echo {q(missing)} >&2; exit 1; }}")
    return lines


def render_script(job: Job, study_name: str, study_dir: Path, options: SlurmOptions) -> str:
    """The sbatch script of ``job`` (its dependencies are given to sbatch, not written here)."""
    study_dir = Path(study_dir)
    output = study_dir / SLURM_DIR / "logs" / (f"{job.name}_%A_%a.out" if len(job.steps) > 1 else f"{job.name}_%j.out")
    header = [f"--job-name={study_name}.{job.name}", f"--output={output}", f"--chdir={study_dir}",
              "--kill-on-invalid-dep=yes"]
    if len(job.steps) > 1:
        header.append(f"--array=0-{len(job.steps) - 1}")
    settings = {"partition": options.partition, "account": options.account, "time": options.time,
                "mem": options.mem, "cpus-per-task": options.cpus_per_task}
    header += [f"--{name}={value}" for name, value in settings.items() if value is not None]
    if job.steps[0].gpus:
        header.append(f"--gres=gpu:{job.steps[0].gpus}")
    header += options.extra
    lines = ["#!/bin/bash", f"# nnunet-covid study {study_name}: " + "; ".join(s.title for s in job.steps)]
    lines += [f"#SBATCH {option}" for option in header]
    lines += ["set -euo pipefail"]
    if len(job.steps) == 1:
        lines += step_lines(job.steps[0])
    else:
        lines.append('case "$SLURM_ARRAY_TASK_ID" in')
        for task, step in enumerate(job.steps):
            lines += [f"{task})  # {step.name}", *(f"    {line}" for line in step_lines(step)), "    ;;"]
        lines += ['*)  echo "no step for array task $SLURM_ARRAY_TASK_ID" >&2; exit 1 ;;', "esac"]
    return "\n".join(lines) + "\n"


def check_extra_option(line: str) -> str:
    """An ``--sbatch-option`` value as an option line: ``qos=long`` or ``--qos=long`` -> ``--qos=long``."""
    option = line.strip().removeprefix("#SBATCH").strip()
    if not option or "\n" in option or option.strip("-").startswith("="):
        raise StudyError(f"sbatch option {line!r}: one option per value, e.g. qos=long or --qos=long")
    return option if option.startswith("-") else f"--{option}"


# --------------------------------------------------------------------------------------------- submission
def _queued(step: Step, records: dict[str, dict], states: dict[str, str]) -> bool:
    """Whether the recorded job of ``step`` is still pending or running."""
    state = states.get(job_ref(records[step.name])) if step.name in records else None
    return state is not None and state not in FINISHED_STATES


def _blocked(ref: str, replaced: set[str], states: dict[str, str]) -> bool:
    """Whether a dependency on ``ref`` (a job, all its array tasks, or one task) can no longer be met: one of its
    tasks failed or is resubmitted now."""
    def matches(other: str) -> bool:
        return other == ref or other.startswith(f"{ref}_")

    return any(map(matches, replaced)) or any(matches(r) and s in FAILED_STATES for r, s in states.items())


def steps_to_submit(steps: list[Step], records: dict[str, dict], states: dict[str, str]) -> list[Step]:
    """The unfinished steps without a queued or running job, and those whose job waits on one of them or on a
    failed job (an array job's dependency covers all its tasks, so a task can wait on another fold's failure)."""
    pending = [s for s in steps if not s.is_done()]
    chosen = {s.name for s in pending if not _queued(s, records, states)}
    while True:
        replaced = {job_ref(records[name]) for name in chosen if name in records}
        stuck = {s.name for s in pending if s.name not in chosen
                 and (any(dep.name in chosen for dep in s.after)
                      or any(_blocked(ref, replaced, states) for ref in records[s.name].get("after", [])))}
        if not stuck:
            return [s for s in pending if s.name in chosen]
        chosen |= stuck


def group_jobs(chosen: list[Step], slurm_dir: Path) -> list[Job]:
    """One job per step, or per array name (the pending folds of one run), ordered so that dependencies come first."""
    groups: dict[str, list[Step]] = {}
    for step in chosen:
        groups.setdefault(step.array or step.name, []).append(step)
    names = {key: key if len(members) > 1 else members[0].name for key, members in groups.items()}
    jobs = [Job(names[key], members, slurm_dir / f"{names[key]}.sbatch", []) for key, members in groups.items()]
    job_of = {step.name: job for job in jobs for step in job.steps}
    ordered: list[Job] = []
    while len(ordered) < len(jobs):  # the steps are in dependency order, so some job always has its dependencies
        ordered.append(next(job for job in jobs if job not in ordered and all(
            job_of[dep.name] in ordered for step in job.steps for dep in step.after if dep.name in job_of)))
    return ordered


def submit_study(steps: list[Step], study_dir: Path, study_name: str, options: SlurmOptions, dry_run: bool = False,
                 report: Callable[[str], None] = print) -> list[Job]:
    """Write the scripts of the steps to submit and, unless ``dry_run``, submit them in dependency order.

    Returns the jobs, with their ids when submitted; in a dry run a dependency on a job of the same submission
    is that job's name. See the module docstring for what is submitted.
    """
    study_dir = Path(study_dir).resolve()
    slurm_dir = study_dir / SLURM_DIR
    records = load_records(study_dir)
    states = queue_states([ref.split("_")[0] for r in records.values() for ref in [r["job"], *r.get("after", [])]])
    chosen = steps_to_submit(steps, records, states)
    jobs = group_jobs(chosen, slurm_dir)
    job_of = {step.name: job for job in jobs for step in job.steps}
    for job in jobs:
        atomic_write_text(job.script, render_script(job, study_name, study_dir, options))
    for job in jobs:
        for step in job.steps:
            if _queued(step, records, states) and not dry_run:
                ref = job_ref(records[step.name])
                slurm_command(["scancel", ref])
                report(f"cancelled job {ref} of {step.name}: it waits on a failed or resubmitted job")
        dependencies = []
        for dep in {d.name: d for step in job.steps for d in step.after}.values():
            if dep.name in job_of:
                dependency = job_of[dep.name].job_id or job_of[dep.name].name
            elif dep.is_done():
                continue
            else:
                dependency = job_ref(records[dep.name])
            if dependency not in dependencies:
                dependencies.append(dependency)
        job.dependencies = dependencies
        argv = ["sbatch", "--parsable"]
        if dependencies:
            argv.append("--dependency=afterok:" + ":".join(dependencies))
        argv.append(str(job.script))
        if dry_run:
            continue
        (slurm_dir / "logs").mkdir(parents=True, exist_ok=True)
        job.job_id = slurm_command(argv, f"sbatch {job.script}").strip().split(";")[0]
        if not job.job_id.isdigit():
            raise StudyError(f"sbatch {job.script}: answered {job.job_id!r} instead of a job id")
        for task, step in enumerate(job.steps):
            records[step.name] = {"job": job.job_id, "task": task if len(job.steps) > 1 else None,
                                  "after": dependencies, "script": str(job.script.relative_to(study_dir))}
        atomic_write_json(records_path(study_dir), {"steps": records})
        kind = f"array job {job.job_id} ({len(job.steps)} tasks)" if len(job.steps) > 1 else f"job {job.job_id}"
        report(f"submitted {job.name} as {kind}" + (f" after {', '.join(dependencies)}" if dependencies else ""))
    return jobs
