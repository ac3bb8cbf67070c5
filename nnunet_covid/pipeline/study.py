"""Run (or print) every step of a study grid, in dependency order, resuming after interruption.

A study grid (JSON, e.g. ``trainer_configs/wang2022_covid19_ct_seg.json``; keys checked by
:func:`load_study`) is strategies x pre-trained sources x folds on one target dataset. Its steps:

1. ``prepare`` (with ``"prepare": true``): nnU-Net's plan and preprocess of the target; for every
   source, its fingerprint, the target's plans moved onto it and its preprocessing with them
   (nnU-Net's documented pre-train/fine-tune recipe), with ``num_processes`` processes for fingerprints
   and preprocessing. Done when the plans file exists and every training case is preprocessed.
2. ``pretrain``: ``nnUNetv2_train`` of every source a strategy uses (in ``$nnUNet_results``); done at
   its ``checkpoint_final.pth``.
3. ``train``: each run ``(strategy, source or none, fold)`` with ``nnUNet_results=<study>/runs/<source>``
   (``runs/scratch`` without a source). The pre-trained checkpoint reaches our transfer trainers through
   ``nnUNet_covid_pretrained`` (the segmentation head is kept when the label counts match, as the papers'
   strategies do) and any other trainer through ``-pretrained_weights``. An interrupted training
   (``checkpoint_latest.pth`` only) continues with ``--c``.
4. ``predict``: with ``"test_cases": "validation"`` the test set of a fold is its validation set, predicted
   by nnU-Net's final validation (``--val`` runs it when the training did not; done at
   ``validation/summary.json``); with ``{"imagesTs", "labelsTs"}`` ``nnUNetv2_predict`` writes
   ``<study>/predictions/<run>/fold_<k>`` and a ``.complete`` marker.
5. ``evaluate``: ``nnunet-covid evaluate`` -> ``<study>/evaluation/<run>/fold_<k>.json``.
6. ``report``: ``nnunet-covid report`` -> ``<study>/report/`` (rerun whenever an evaluation is newer).

``<run>`` is ``<strategy>`` or ``<strategy>__<source>``; tables label it ``<strategy>[<source>]``.
Every step carries the steps it depends on (:attr:`Step.after`), so a scheduler can chain them, the GPUs
it needs (:attr:`Step.gpus`) and, for the per-fold steps of a run, an array name shared by the folds
(:attr:`Step.array`), so a scheduler can submit them as one job array (:mod:`~nnunet_covid.pipeline.slurm`).
With ``num_gpus`` > 1 every ``nnUNetv2_train`` of a training gets ``-num_gpus N`` (nnU-Net's DDP).
``study_manifest.json`` lists the runs with paths relative to the study folder for the report.
"""
from __future__ import annotations

import json
import os
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from nnunet_covid.core.atomic_io import atomic_write_text
from nnunet_covid.core.errors import NnunetCovidError, StudyError
from nnunet_covid.core.nnunet_commands import cpu_settings, nnunet_tool
from nnunet_covid.core.nnunet_conventions import (NNUNET_ROOTS, dataset_name, ext_trainer_dir,
                                                  parse_dataset_folder_name, training_folder)
from nnunet_covid.evaluation.report import MANIFEST

PREDICTIONS_COMPLETE = ".complete"
PRETRAINED_CHECKPOINT_ENV = "nnUNet_covid_pretrained"
_ENV_REFERENCE = re.compile(r"\$\{(nnUNet_raw|nnUNet_preprocessed|nnUNet_results)\}")


@dataclass
class Step:
    """One step of the study: its commands run one after another; it is finished when every ``done`` check holds."""

    name: str
    kind: str
    title: str
    commands: list[list[str]]
    env: dict[str, str]
    done: list[Path]
    log: Path
    marker: Path | None = None  # written after the commands succeed
    covered_by: "Step | None" = None  # a pending ``covered_by`` step also does this one's work
    after: list["Step"] = field(default_factory=list)
    done_check: Callable[[], bool] | None = None  # an extra condition besides the files in ``done``
    gpus: int = 0  # GPUs the commands use
    array: str | None = None  # the per-fold steps of one run share it; they differ only in the fold

    def is_done(self) -> bool:
        return all(p.is_file() for p in self.done) and (self.done_check is None or self.done_check())

    def shell_line(self) -> str:
        prefix = " ".join(f"{k}={shlex.quote(v)}" for k, v in self.env.items())
        commands = [" ".join(filter(None, [prefix, shlex.join(argv)])) for argv in self.commands]
        if self.marker is not None:
            commands.append(f"touch {shlex.quote(str(self.marker))}")
        return " && ".join(commands)


@dataclass
class Run:
    strategy: str
    source: str | None
    trainer: str
    folds: dict[str, dict[str, str]] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return self.strategy if self.source is None else f"{self.strategy}[{self.source}]"

    @property
    def dir_name(self) -> str:
        return self.strategy if self.source is None else f"{self.strategy}__{self.source}"


# ---------------------------------------------------------------------------------------------- the grid file
def _check(condition: bool, where: str, message: str) -> None:
    if not condition:
        raise StudyError(f"{where}: {message}")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_keys(mapping: Any, keys: dict[str, Callable[[Any], bool]], where: str, optional: dict | None = None):
    _check(isinstance(mapping, dict), where, f"must be a JSON object, got {type(mapping).__name__}")
    for key, valid in keys.items():
        _check(key in mapping, where, f"missing key '{key}'")
        _check(valid(mapping[key]), where, f"'{key}' has an invalid value {mapping[key]!r}")
    for key, valid in (optional or {}).items():
        if key in mapping:
            _check(valid(mapping[key]), where, f"'{key}' has an invalid value {mapping[key]!r}")


def _text(value) -> bool:
    return isinstance(value, str) and bool(value)


def _dataset(value) -> bool:
    return _text(value) or _is_int(value)


def _fold(value) -> bool:
    return _is_int(value) or value == "all"


def load_study(path: Path) -> dict:
    """Read and check a study file (keys, types, cross-references); one clear error naming the file otherwise."""
    path = Path(path)
    if not path.is_file():
        raise StudyError(f"study file {path} does not exist" if not path.exists() else f"{path} is not a file")
    try:
        study = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise StudyError(f"{path}: not a UTF-8 text file") from None
    except json.JSONDecodeError as e:
        raise StudyError(f"{path}: not valid JSON ({e})") from None
    except OSError as e:
        raise StudyError(f"{path}: cannot be read ({e.strerror})") from None
    where = str(path)
    _check_keys(study, {"name": _text, "target": lambda v: True, "strategies": lambda v: isinstance(v, list) and v},
                where, {"description": lambda v: isinstance(v, str), "baseline": _text,
                        "pretrained_sources": lambda v: isinstance(v, dict), "prepare": lambda v: isinstance(v, bool),
                        "planner": _text})
    _check(re.fullmatch(r"[A-Za-z0-9_.-]+", study["name"]) is not None, where,
           f"'name' {study['name']!r} must be a folder name (letters, digits, '.', '-', '_')")
    target = study["target"]
    _check_keys(target, {"dataset": _dataset, "configuration": _text, "plans": _text,
                         "folds": lambda v: isinstance(v, list) and v and all(_fold(f) for f in v),
                         "test_cases": lambda v: v == "validation" or (isinstance(v, dict) and {"imagesTs", "labelsTs"}
                                                                      <= set(v) and all(map(_text, v.values()))),
                         "labels": lambda v: isinstance(v, list) and v and all(_is_int(l) and l > 0 for l in v)},
                f"{where}: target",
                {"tolerance_mm": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < float("inf"),
                 "per_patient_2d": lambda v: isinstance(v, bool), "tta": lambda v: isinstance(v, bool)})
    sources = study.get("pretrained_sources", {})
    for name, source in sources.items():
        _check_keys(source, {"dataset": _dataset, "configuration": _text, "plans": _text, "trainer": _text,
                             "fold": _fold}, f"{where}: pretrained_sources.{name}")
    names = []
    for i, strategy in enumerate(study["strategies"]):
        _check_keys(strategy, {"name": _text, "trainer": _text}, f"{where}: strategies[{i}]",
                    {"sources": lambda v: isinstance(v, list) and all(map(_text, v))})
        _check(strategy["name"] not in names, where, f"strategy name '{strategy['name']}' is used twice")
        names.append(strategy["name"])
        for source in strategy.get("sources", []):
            _check(source in sources, where, f"strategy {strategy['name']} uses unknown source '{source}'")
    baseline = study.get("baseline")
    _check(baseline is None or baseline in names, where,
           f"baseline '{baseline}' is not one of the strategies {sorted(names)}")
    return study


def _expand(value: str, environ: dict[str, str], where: str) -> str:
    def substitute(match: re.Match) -> str:
        name = match.group(1)
        if not environ.get(name):
            raise StudyError(f"{where} uses ${{{name}}} but the environment variable {name} is not set")
        return environ[name]

    return _ENV_REFERENCE.sub(substitute, value)


def _dataset_name(dataset, environ: dict[str, str], where: str) -> str:
    try:
        return dataset_name(dataset, [environ[k] for k in NNUNET_ROOTS])
    except NnunetCovidError as e:
        raise StudyError(f"{where}: {e}") from None


def uses_checkpoint_convention(trainer: str) -> bool:
    """Whether ``trainer`` is one of our transfer trainers, which take a checkpoint by ``nnUNet_covid_pretrained``."""
    from nnunet_covid import training
    from nnunet_covid.training.transfer_trainer import PretrainedTransferTrainer

    cls = getattr(training, trainer, None)
    return isinstance(cls, type) and issubclass(cls, PretrainedTransferTrainer)


# --------------------------------------------------------------------------------------------- preparation
def preprocessing_done(preprocessed_root: Path, dataset: str, plans: str, configuration: str) -> bool:
    """Whether ``dataset`` has plans ``plans`` and every training case preprocessed for ``configuration``."""
    folder = Path(preprocessed_root) / dataset
    try:
        plans_json = json.loads((folder / f"{plans}.json").read_text())
        identifier = plans_json["configurations"][configuration]["data_identifier"]
        num_training = json.loads((folder / "dataset.json").read_text())["numTraining"]
    except (OSError, KeyError, TypeError, json.JSONDecodeError):
        return False
    return len(list((folder / identifier).glob("*.pkl"))) >= num_training


def _prepare_steps(study: dict, target_name: str, source_names: dict[str, str], base_env: dict[str, str],
                   logs: Path, num_processes: int) -> dict[str, Step]:
    """The ``prepare`` step of the target and of every source dataset (keyed by dataset name)."""
    target = study["target"]
    configuration, plans = target["configuration"], target["plans"]
    preprocessed = Path(base_env["nnUNet_preprocessed"])
    planner = ["-pl", study["planner"]] if study.get("planner") else []
    np_ = ["-np", str(num_processes)]
    npfp = ["-npfp", str(num_processes)]  # fingerprint and integrity check (nnU-Net's default: 8 processes)

    def id_of(dataset: str) -> str:  # nnU-Net's planning commands take dataset ids only
        return str(parse_dataset_folder_name(dataset)[0])

    def step(dataset: str, commands: list[list[str]], after: list[Step]) -> Step:
        return Step(f"prepare_{dataset}", "prepare", f"prepare {dataset} ({plans}, {configuration})", commands,
                    dict(base_env), [preprocessed / dataset / f"{plans}.json"], logs / f"prepare_{dataset}.log",
                    after=after, done_check=lambda: preprocessing_done(preprocessed, dataset, plans, configuration))

    prepared = {target_name: step(target_name, [[nnunet_tool("nnUNetv2_plan_and_preprocess"), "-d", id_of(target_name),
                                                 "-c", configuration, *planner, *npfp, *np_,
                                                 "--verify_dataset_integrity"]], [])}
    for name in dict.fromkeys(source_names.values()):
        if name == target_name:
            continue
        prepared[name] = step(name, [
            [nnunet_tool("nnUNetv2_plan_and_preprocess"), "-d", id_of(name), "-c", configuration, *planner, *npfp,
             *np_, "--verify_dataset_integrity", "--no_pp"],
            [nnunet_tool("nnUNetv2_move_plans_between_datasets"), "-s", id_of(target_name), "-t", id_of(name),
             "-sp", plans, "-tp", plans],
            [nnunet_tool("nnUNetv2_preprocess"), "-d", id_of(name), "-plans_name", plans, "-c", configuration, *np_],
        ], [prepared[target_name]])
    return prepared


# ------------------------------------------------------------------------------------------------- planning
def plan_study(study: dict, study_dir: Path, folds: list | None = None, device: str | None = None,
               num_processes: int = 1, environ: dict[str, str] | None = None,
               num_gpus: int | None = None) -> tuple[list[Step], list[Run]]:
    """All steps of the grid in execution order (dependencies first), and the runs they produce.

    ``num_gpus`` (default 1 on the cuda device, none on others): GPUs per training; more than one trains
    with ``nnUNetv2_train ... -num_gpus N`` (nnU-Net's DDP). Predictions use one GPU.
    """
    environ = dict(os.environ if environ is None else environ)
    for name in NNUNET_ROOTS:
        if not environ.get(name):
            raise StudyError(f"the environment variable {name} must be set to run a study")
    study_dir = Path(study_dir).resolve()
    target = study["target"]
    target_name = _dataset_name(target["dataset"], environ, "target.dataset")
    configuration, plans = target["configuration"], target["plans"]
    folds = list(target["folds"]) if folds is None else folds
    unknown = [f for f in folds if f not in target["folds"]]
    if unknown:
        raise StudyError(f"folds {unknown} are not in the study's folds {target['folds']}")
    device_args = ["-device", device] if device else []
    on_gpu = device in (None, "cuda")  # nnU-Net's default device is cuda
    if num_gpus is not None and (num_gpus < 1 or not on_gpu):
        raise StudyError(f"GPUs per training ({num_gpus}): a positive number, on the cuda device only "
                         f"(device: {device})")
    num_gpus = num_gpus or 1
    gpu_args = ["-num_gpus", str(num_gpus)] if num_gpus > 1 else []
    train_gpus, predict_gpus = (num_gpus, 1) if on_gpu else (0, 0)
    base_env = {k: environ[k] for k in NNUNET_ROOTS}
    base_env["nnUNet_extTrainer"] = ext_trainer_dir()
    if device == "cpu":
        base_env.update(cpu_settings(environ))
    logs = study_dir / "logs"
    steps: list[Step] = []

    used = list(dict.fromkeys(s for strategy in study["strategies"] for s in strategy.get("sources", [])))
    source_names = {s: _dataset_name(study["pretrained_sources"][s]["dataset"], environ,
                                     f"pretrained_sources.{s}.dataset") for s in used}
    prepared: dict[str, Step] = {}
    if study.get("prepare"):
        prepared = _prepare_steps(study, target_name, source_names, base_env, logs, num_processes)
        steps += prepared.values()

    checkpoints: dict[str, Path] = {}
    pretrain_steps: dict[str, Step] = {}
    for source_name in used:
        source = study["pretrained_sources"][source_name]
        name = source_names[source_name]
        fold_dir = training_folder(environ["nnUNet_results"], name, source["trainer"], source["plans"],
                                   source["configuration"], source["fold"])
        checkpoints[source_name] = fold_dir / "checkpoint_final.pth"
        argv = [nnunet_tool("nnUNetv2_train"), name, source["configuration"], str(source["fold"]), "-tr",
                source["trainer"], "-p", source["plans"], *device_args, *gpu_args]
        if (fold_dir / "checkpoint_latest.pth").is_file():
            argv.append("--c")
        pretrain_steps[source_name] = Step(f"pretrain_{source_name}", "pretrain", f"pre-train {source_name}", [argv],
                                           dict(base_env), [checkpoints[source_name]],
                                           logs / f"pretrain_{source_name}.log",
                                           after=[prepared[name]] if name in prepared else [], gpus=train_gpus)
        steps.append(pretrain_steps[source_name])

    test_cases = target["test_cases"]
    labels = [str(label) for label in target["labels"]]
    tolerance = str(target.get("tolerance_mm", 3.0))
    runs, evaluations = [], []
    for strategy in study["strategies"]:
        for source_name in strategy.get("sources") or [None]:
            run = Run(strategy["name"], source_name, strategy["trainer"])
            runs.append(run)
            results_root = study_dir / "runs" / (source_name or "scratch")
            env = {**base_env, "nnUNet_results": str(results_root)}
            train_after = [pretrain_steps[source_name]] if source_name else []
            train_after += [prepared[target_name]] if target_name in prepared else []
            for fold in folds:
                fold_dir = training_folder(results_root, target_name, run.trainer, plans, configuration, fold)
                base = [nnunet_tool("nnUNetv2_train"), target_name, configuration, str(fold), "-tr", run.trainer,
                        "-p", plans, *device_args]
                argv, train_env = base + gpu_args, dict(env)
                if (fold_dir / "checkpoint_latest.pth").is_file():
                    argv.append("--c")  # the checkpoint already holds the pre-trained start
                elif source_name is not None:
                    if uses_checkpoint_convention(run.trainer):
                        train_env[PRETRAINED_CHECKPOINT_ENV] = str(checkpoints[source_name])
                    else:
                        argv += ["-pretrained_weights", str(checkpoints[source_name])]
                title = f"{run.label} fold {fold}"
                train = Step(f"train_{run.dir_name}_fold{fold}", "train", f"train {title}", [argv], train_env,
                             [fold_dir / "checkpoint_final.pth"], logs / f"train_{run.dir_name}_fold{fold}.log",
                             after=train_after, gpus=train_gpus, array=f"train_{run.dir_name}")
                steps.append(train)
                if test_cases == "validation":
                    predictions = fold_dir / "validation"
                    gt_dir = Path(environ["nnUNet_raw"]) / target_name / "labelsTr"
                    predict = Step(f"validate_{run.dir_name}_fold{fold}", "predict", f"validate {title}",
                                   [base + ["--val"]], env, [predictions / "summary.json"],
                                   logs / f"validate_{run.dir_name}_fold{fold}.log", covered_by=train, after=[train],
                                   gpus=predict_gpus, array=f"validate_{run.dir_name}")
                else:
                    predictions = study_dir / "predictions" / run.dir_name / f"fold_{fold}"
                    images = _expand(test_cases["imagesTs"], environ, "target.test_cases.imagesTs")
                    gt_dir = Path(_expand(test_cases["labelsTs"], environ, "target.test_cases.labelsTs"))
                    marker = predictions / PREDICTIONS_COMPLETE
                    tta = [] if target.get("tta", True) else ["--disable_tta"]
                    predict = Step(f"predict_{run.dir_name}_fold{fold}", "predict", f"predict {title}",
                                   [[nnunet_tool("nnUNetv2_predict"), "-i", images, "-o", str(predictions), "-d",
                                     target_name, "-c", configuration, "-f", str(fold), "-tr", run.trainer, "-p", plans,
                                     *tta, *device_args]],
                                   env, [marker], logs / f"predict_{run.dir_name}_fold{fold}.log", marker=marker,
                                   after=[train], gpus=predict_gpus, array=f"predict_{run.dir_name}")
                steps.append(predict)
                evaluation = study_dir / "evaluation" / run.dir_name / f"fold_{fold}.json"
                eval_argv = [nnunet_tool("nnunet-covid"), "evaluate", "--gt", str(gt_dir), "--pred", str(predictions),
                             "--labels", *labels, "--tolerance-mm", tolerance, "-np", str(num_processes),
                             "-o", str(evaluation)]
                if target.get("per_patient_2d"):
                    eval_argv.append("--per-patient-2d")
                if test_cases == "validation":  # the fold's validation cases, scored against the whole labelsTr
                    eval_argv.append("--predicted-only")
                evaluate = Step(f"evaluate_{run.dir_name}_fold{fold}", "evaluate", f"evaluate {title}", [eval_argv], {},
                                [evaluation], logs / f"evaluate_{run.dir_name}_fold{fold}.log", after=[predict],
                                array=f"evaluate_{run.dir_name}")
                steps.append(evaluate)
                evaluations.append(evaluation)
                run.folds[str(fold)] = {"evaluation": str(evaluation), "training_dir": str(fold_dir)}

    report_md = study_dir / "report" / "report.md"
    steps.append(Step("report", "report", f"report {study['name']}",
                      [[nnunet_tool("nnunet-covid"), "report", str(study_dir), "-o", str(report_md.parent)]], {},
                      [report_md], logs / "report.log", after=[s for s in steps if s.kind == "evaluate"],
                      done_check=lambda: _newer_than_all(report_md, evaluations)))
    return steps, runs


def _newer_than_all(path: Path, inputs: list[Path]) -> bool:
    stamp = path.stat().st_mtime_ns
    return all(not p.is_file() or p.stat().st_mtime_ns <= stamp for p in inputs)


def _relative(path: str, study_dir: Path) -> str:
    """``path`` relative to ``study_dir`` when inside it (the manifest survives copying the study folder)."""
    try:
        return str(Path(path).relative_to(study_dir))
    except ValueError:
        return path


def write_manifest(study: dict, study_dir: Path, runs: list[Run]) -> Path:
    """``study_manifest.json``: what ``nnunet-covid report`` needs (runs, folds, files relative to the study)."""
    study_dir = Path(study_dir).resolve()
    manifest = {
        "name": study["name"], "description": study.get("description", ""),
        "baseline": study.get("baseline"), "target": study["target"],
        "runs": [{"label": r.label, "strategy": r.strategy, "source": r.source, "trainer": r.trainer,
                  "folds": {k: {name: _relative(p, study_dir) for name, p in v.items()} for k, v in r.folds.items()}}
                 for r in runs],
    }
    path = study_dir / MANIFEST
    atomic_write_text(path, json.dumps(manifest, indent=2))
    return path


def step_status(step: Step) -> str:
    if step.is_done():
        return "done"
    if step.covered_by is not None and not step.covered_by.is_done():
        return "with-training"
    return "pending"


def execute(steps: list[Step], report=print, environ: dict[str, str] | None = None) -> int:
    """Run pending steps in order; stops at the first failure. Returns the number of steps executed.

    ``environ`` (default ``os.environ``) is the environment the steps' own variables are added to.
    """
    from nnunet_covid.core.nnunet_commands import run_nnunet

    base = dict(os.environ if environ is None else environ)
    executed = 0
    for i, step in enumerate(steps, 1):
        if step.is_done():
            report(f"[{i}/{len(steps)}] skip (done): {step.title}")
            continue
        report(f"[{i}/{len(steps)}] {step.title}  (log: {step.log})")
        try:
            for argv in step.commands:
                run_nnunet(argv, {**base, **step.env}, step.log, report=report, append=argv is not step.commands[0])
        except (NnunetCovidError, OSError) as e:
            raise StudyError(f"step '{step.title}' failed: {e}") from None
        if step.marker is not None:
            step.marker.parent.mkdir(parents=True, exist_ok=True)
            step.marker.touch()
        if not step.is_done():
            missing = [str(p) for p in step.done if not p.is_file()]
            raise StudyError(f"step '{step.title}' finished but did not produce "
                             f"{', '.join(missing) or 'its complete output'}; log: {step.log}")
        executed += 1
    return executed
