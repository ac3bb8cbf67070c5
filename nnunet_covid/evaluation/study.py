"""Run (or print) every training, prediction and evaluation of a study grid, resuming after interruption.

A study (``trainer_configs/<study>.json``, format in the project's study contract) is the grid
strategies x pre-trained sources x folds on one target dataset. Steps, in order:

1. ``pretrain``: ``nnUNetv2_train`` of every source a strategy uses (in ``$nnUNet_results``);
   done when its ``checkpoint_final.pth`` exists.
2. ``train``: each run ``(strategy, source or none, fold)`` with ``nnUNet_results=<study>/runs/<source>``
   (``runs/scratch`` without a source) and ``-pretrained_weights``; done at ``checkpoint_final.pth``.
   An interrupted training (``checkpoint_latest.pth`` only) continues with ``--c``.
3. ``predict``: with ``"test_cases": "validation"`` the test set of a fold is its validation set,
   predicted by nnU-Net's final validation (``--val`` re-runs it when only that was interrupted;
   done at ``validation/summary.json``); with ``{"imagesTs", "labelsTs"}`` ``nnUNetv2_predict``
   writes ``<study>/predictions/<run>/fold_<k>`` and a ``.complete`` marker when it succeeded.
4. ``evaluate``: ``nnunet-covid evaluate`` -> ``<study>/evaluation/<run>/fold_<k>.json`` (written last,
   atomically). ``<run>`` is ``<strategy>`` or ``<strategy>__<source>``; tables label it
   ``<strategy>[<source>]``.

Finished steps are skipped, so rerunning the same command resumes. ``study_manifest.json`` in the
study folder lists the runs for ``nnunet-covid report``.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from nnunet_covid.ext_path import ext_trainer_dir

MANIFEST = "study_manifest.json"
PREDICTIONS_COMPLETE = ".complete"
_ENV_REFERENCE = re.compile(r"\$\{(nnUNet_raw|nnUNet_preprocessed|nnUNet_results)\}")


class StudyError(RuntimeError):
    """Invalid study file or failed step; the message names the file/step and the problem."""


@dataclass
class Step:
    """One command of the study; it is finished when every path in ``done`` exists."""

    kind: str
    title: str
    argv: list[str]
    env: dict[str, str]
    done: list[Path]
    log: Path
    marker: Path | None = None  # written after the command succeeds
    covered_by: "Step | None" = None  # a pending ``covered_by`` step also does this one's work

    def is_done(self) -> bool:
        return all(p.is_file() for p in self.done)

    def shell_line(self) -> str:
        line = " ".join([*(f"{k}={shlex.quote(v)}" for k, v in self.env.items()), shlex.join(self.argv)])
        if self.marker is not None:
            line += f" && touch {shlex.quote(str(self.marker))}"
        return line


@dataclass
class Run:
    strategy: str
    source: str | None
    trainer: str
    folds: dict[int, dict[str, str]] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return self.strategy if self.source is None else f"{self.strategy}[{self.source}]"

    @property
    def dir_name(self) -> str:
        return self.strategy if self.source is None else f"{self.strategy}__{self.source}"


def _expand(value: str, environ: dict[str, str], where: str) -> str:
    def substitute(match: re.Match) -> str:
        name = match.group(1)
        if not environ.get(name):
            raise StudyError(f"{where} uses ${{{name}}} but the environment variable {name} is not set")
        return environ[name]

    return _ENV_REFERENCE.sub(substitute, value)


def _require(mapping: dict, key: str, where: str):
    if key not in mapping:
        raise StudyError(f"{where}: missing key '{key}'")
    return mapping[key]


def load_study(path: Path) -> dict:
    """Read and check a study file (keys and cross-references); returns the parsed JSON."""
    try:
        study = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise StudyError(f"study file {path} does not exist") from None
    except json.JSONDecodeError as e:
        raise StudyError(f"{path}: not valid JSON ({e})") from None
    where = str(path)
    _require(study, "name", where)
    target = _require(study, "target", where)
    for key in ("dataset", "configuration", "plans", "folds", "test_cases", "labels"):
        _require(target, key, f"{where}: target")
    test_cases = target["test_cases"]
    if test_cases != "validation" and not (isinstance(test_cases, dict) and {"imagesTs", "labelsTs"} <= set(test_cases)):
        raise StudyError(f"{where}: target.test_cases must be \"validation\" or {{\"imagesTs\": ..., \"labelsTs\": ...}}")
    sources = study.get("pretrained_sources", {})
    for name, source in sources.items():
        for key in ("dataset", "configuration", "plans", "trainer", "fold"):
            _require(source, key, f"{where}: pretrained_sources.{name}")
    names = set()
    for strategy in _require(study, "strategies", where):
        for key in ("name", "trainer"):
            _require(strategy, key, f"{where}: strategy {strategy}")
        names.add(strategy["name"])
        for source in strategy.get("sources", []):
            if source not in sources:
                raise StudyError(f"{where}: strategy {strategy['name']} uses unknown source '{source}'")
    baseline = study.get("baseline")
    if baseline is not None and baseline not in names:
        raise StudyError(f"{where}: baseline '{baseline}' is not one of the strategies {sorted(names)}")
    return study


def dataset_name(dataset, where: str) -> str:
    """nnU-Net's ``DatasetXXX_Name`` for a name or id (an id needs the dataset in nnUNet_raw/preprocessed)."""
    if isinstance(dataset, str) and dataset.startswith("Dataset"):
        return dataset
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    try:
        return maybe_convert_to_dataset_name(dataset)
    except (RuntimeError, ValueError) as e:
        raise StudyError(f"{where}: cannot resolve dataset '{dataset}' ({e})") from None


def _device_args(device: str | None) -> list[str]:
    return ["-device", device] if device else []


def _tool(name: str) -> str:
    from nnunet_covid.nnunet_commands import nnunet_tool

    return nnunet_tool(name)


def plan_study(study: dict, study_dir: Path, folds: list[int] | None = None, device: str | None = None,
               num_processes: int = 1, environ: dict[str, str] | None = None) -> tuple[list[Step], list[Run]]:
    """All steps of the grid in execution order, and the runs they produce."""
    environ = dict(os.environ if environ is None else environ)
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        if not environ.get(name):
            raise StudyError(f"the environment variable {name} must be set to run a study")
    study_dir = Path(study_dir).resolve()
    target = study["target"]
    target_name = dataset_name(target["dataset"], "target.dataset")
    configuration, plans = target["configuration"], target["plans"]
    folds = list(target["folds"]) if folds is None else folds
    unknown = sorted(set(folds) - set(target["folds"]))
    if unknown:
        raise StudyError(f"folds {unknown} are not in the study's folds {target['folds']}")
    ext = {"nnUNet_extTrainer": ext_trainer_dir()}
    logs = study_dir / "logs"
    steps: list[Step] = []

    checkpoints: dict[str, Path] = {}
    used = [s for strategy in study["strategies"] for s in strategy.get("sources", [])]
    for source_name in dict.fromkeys(used):
        source = study["pretrained_sources"][source_name]
        name = dataset_name(source["dataset"], f"pretrained_sources.{source_name}.dataset")
        fold_dir = (Path(environ["nnUNet_results"]) / name /
                    f"{source['trainer']}__{source['plans']}__{source['configuration']}" / f"fold_{source['fold']}")
        checkpoints[source_name] = fold_dir / "checkpoint_final.pth"
        argv = [_tool("nnUNetv2_train"), name, source["configuration"], str(source["fold"]), "-tr", source["trainer"],
                "-p", source["plans"], *_device_args(device)]
        if (fold_dir / "checkpoint_latest.pth").is_file():
            argv.append("--c")
        steps.append(Step("pretrain", f"pre-train {source_name}", argv,
                          {"nnUNet_results": environ["nnUNet_results"], **ext}, [checkpoints[source_name]],
                          logs / f"pretrain_{source_name}.log"))

    test_cases = target["test_cases"]
    labels = [str(l) for l in target["labels"]]
    tolerance = str(target.get("tolerance_mm", 3.0))
    runs = []
    for strategy in study["strategies"]:
        for source_name in strategy.get("sources") or [None]:
            run = Run(strategy["name"], source_name, strategy["trainer"])
            runs.append(run)
            results_root = study_dir / "runs" / (source_name or "scratch")
            env = {"nnUNet_results": str(results_root), **ext}
            for fold in folds:
                fold_dir = (results_root / target_name / f"{run.trainer}__{plans}__{configuration}" / f"fold_{fold}")
                base = [_tool("nnUNetv2_train"), target_name, configuration, str(fold), "-tr", run.trainer, "-p", plans,
                        *_device_args(device)]
                argv = list(base)
                if (fold_dir / "checkpoint_latest.pth").is_file():
                    argv.append("--c")  # the checkpoint already holds the pre-trained start
                elif source_name is not None:
                    argv += ["-pretrained_weights", str(checkpoints[source_name])]
                title = f"{run.label} fold {fold}"
                train = Step("train", f"train {title}", argv, env, [fold_dir / "checkpoint_final.pth"],
                             logs / f"train_{run.dir_name}_fold{fold}.log")
                steps.append(train)
                if test_cases == "validation":
                    predictions = fold_dir / "validation"
                    gt_dir = Path(environ["nnUNet_raw"]) / target_name / "labelsTr"
                    steps.append(Step("predict", f"validate {title}", base + ["--val"], env,
                                      [predictions / "summary.json"], logs / f"validate_{run.dir_name}_fold{fold}.log",
                                      covered_by=train))
                else:
                    predictions = study_dir / "predictions" / run.dir_name / f"fold_{fold}"
                    images = _expand(test_cases["imagesTs"], environ, "target.test_cases.imagesTs")
                    gt_dir = Path(_expand(test_cases["labelsTs"], environ, "target.test_cases.labelsTs"))
                    marker = predictions / PREDICTIONS_COMPLETE
                    steps.append(Step("predict", f"predict {title}",
                                      [_tool("nnUNetv2_predict"), "-i", images, "-o", str(predictions), "-d", target_name,
                                       "-c", configuration, "-f", str(fold), "-tr", run.trainer, "-p", plans,
                                       *_device_args(device)],
                                      env, [marker], logs / f"predict_{run.dir_name}_fold{fold}.log", marker=marker))
                evaluation = study_dir / "evaluation" / run.dir_name / f"fold_{fold}.json"
                eval_argv = [_tool("nnunet-covid"), "evaluate", "--gt", str(gt_dir), "--pred", str(predictions),
                             "--labels", *labels, "--tolerance-mm", tolerance, "-np", str(num_processes),
                             "-o", str(evaluation)]
                if target.get("per_patient_2d"):
                    eval_argv.append("--per-patient-2d")
                steps.append(Step("evaluate", f"evaluate {title}", eval_argv, {}, [evaluation],
                                  logs / f"evaluate_{run.dir_name}_fold{fold}.log"))
                run.folds[fold] = {"evaluation": str(evaluation), "training_dir": str(fold_dir)}
    return steps, runs


def write_manifest(study: dict, study_dir: Path, runs: list[Run]) -> Path:
    """``study_manifest.json``: what ``nnunet-covid report`` needs (runs, folds, files, baseline)."""
    manifest = {
        "name": study["name"], "description": study.get("description", ""),
        "baseline": study.get("baseline"), "target": study["target"],
        "runs": [{"label": r.label, "strategy": r.strategy, "source": r.source, "trainer": r.trainer,
                  "folds": {str(k): v for k, v in r.folds.items()}} for r in runs],
    }
    from nnunet_covid.atomic_io import atomic_write_text

    path = Path(study_dir) / MANIFEST
    atomic_write_text(path, json.dumps(manifest, indent=2))
    return path


def step_status(step: Step) -> str:
    if step.is_done():
        return "done"
    if step.covered_by is not None and not step.covered_by.is_done():
        return "with-training"
    return "pending"


def execute(steps: list[Step], report=print) -> int:
    """Run pending steps in order; stops at the first failure. Returns the number of steps executed."""
    from nnunet_covid.nnunet_commands import CommandFailed, run_nnunet

    executed = 0
    for i, step in enumerate(steps, 1):
        if step.is_done():
            report(f"[{i}/{len(steps)}] skip (done): {step.title}")
            continue
        report(f"[{i}/{len(steps)}] {step.title}  (log: {step.log})")
        try:
            run_nnunet(step.argv, {**os.environ, **step.env}, step.log, report=report)
        except (CommandFailed, OSError) as e:
            raise StudyError(f"step '{step.title}' failed: {e}") from None
        if step.marker is not None:
            step.marker.parent.mkdir(parents=True, exist_ok=True)
            step.marker.touch()
        if not step.is_done():
            missing = [str(p) for p in step.done if not p.is_file()]
            raise StudyError(f"step '{step.title}' finished but did not produce {', '.join(missing)}; log: {step.log}")
        executed += 1
    return executed


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("study", type=Path, help="study grid, e.g. trainer_configs/<study>.json")
    parser.add_argument("--folds", type=int, nargs="+", default=None, help="subset of the study's folds")
    parser.add_argument("--workdir", type=Path, default=None, help="study folder (default ./studies/<name>)")
    parser.add_argument("--device", choices=("cuda", "cpu", "mps"), default=None,
                        help="passed to nnUNetv2_train/predict as -device (default: nnU-Net's, cuda)")
    parser.add_argument("-np", "--num-processes", type=int, default=1, help="evaluation worker processes")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--dry-run", action="store_true", help="list every step with its status; run nothing")
    mode.add_argument("--print-commands", action="store_true",
                      help="print the pending steps as shell lines (one per line, for a cluster scheduler)")


def run(args: argparse.Namespace) -> int:
    from nnunet_covid.cli import CLIError

    try:
        study = load_study(args.study)
        study_dir = args.workdir or Path("studies") / study["name"]
        steps, runs = plan_study(study, study_dir, args.folds, args.device, args.num_processes)
        if args.dry_run:
            for i, step in enumerate(steps, 1):
                print(f"[{i:>3}] {step_status(step):<13} {step.kind:<9} {step.title}")
            pending = sum(step_status(s) == "pending" for s in steps)
            print(f"{len(steps)} steps, {sum(s.is_done() for s in steps)} done, {pending} to run")
            return 0
        write_manifest(study, study_dir, runs)
        if args.print_commands:
            for step in steps:
                if step_status(step) == "pending":
                    print(step.shell_line())
            return 0
        executed = execute(steps)
        print(f"study {study['name']}: {executed} step(s) run, all {len(steps)} done; results in {study_dir}")
    except StudyError as e:
        raise CLIError(str(e)) from None
    return 0
