"""Declarative trainer settings: ``trainer_configs/<strategy>.json`` (pre-trained source, learning rates, frozen parts).

Where the files are looked up, first match wins:

1. the folder named by the environment variable ``nnUNet_covid_trainer_configs``;
2. ``nnunet_covid/trainer_configs/`` inside the installed package (present in wheels, see below);
3. ``trainer_configs/`` of the source checkout (editable installs: the folder beside ``nnunet_covid/``).

``trainer_configs/`` at the repository root is the single source of truth; a wheel ships the same
files as package data under ``nnunet_covid/trainer_configs`` (a ``package-dir`` mapping in
pyproject.toml), so nothing is duplicated in the repository.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from nnunet_covid.core.errors import TrainerConfigError

TRAINER_CONFIGS_ENV = "nnUNet_covid_trainer_configs"


def trainer_configs_dir() -> Path:
    """The folder holding the trainer config files (see the module docstring for the search order)."""
    override = os.environ.get(TRAINER_CONFIGS_ENV)
    if override:
        folder = Path(override)
        if not folder.is_dir():
            raise TrainerConfigError(f"{TRAINER_CONFIGS_ENV}={override} is not a folder")
        return folder
    package_dir = Path(__file__).resolve().parents[1]
    for folder in (package_dir / "trainer_configs", package_dir.parent / "trainer_configs"):
        if folder.is_dir():
            return folder
    raise TrainerConfigError(f"no trainer_configs folder found (looked in {package_dir / 'trainer_configs'} and "
                             f"{package_dir.parent / 'trainer_configs'}); set {TRAINER_CONFIGS_ENV}")


def load_trainer_config(strategy: str, recipe: str = "") -> dict:
    """The parsed ``<strategy>.json`` of :func:`trainer_configs_dir`, e.g. ``load_trainer_config("frozen_encoder")``;
    with ``recipe``, its entry ``"recipes": {recipe: {...}}`` overrides the top-level keys."""
    path = trainer_configs_dir() / f"{strategy}.json"
    if not path.is_file():
        available = sorted(p.stem for p in path.parent.glob("*.json"))
        raise TrainerConfigError(f"trainer config {path} not found (available: {', '.join(available) or 'none'})")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise TrainerConfigError(f"trainer config {path} is not valid JSON: {e}") from None
    if not isinstance(config, dict):
        raise TrainerConfigError(f"trainer config {path} must hold a JSON object, got {type(config).__name__}")
    if not recipe:
        return config
    recipes = config.get("recipes") if isinstance(config.get("recipes"), dict) else {}
    if not isinstance(recipes.get(recipe), dict):
        raise TrainerConfigError(f"trainer config {path} has no recipe '{recipe}' under \"recipes\" (recipes: "
                                 f"{', '.join(recipes) or 'none'})")
    return {**config, **recipes[recipe]}


_REQUIRED = object()


def config_value(config: dict, key: str, kind: type, strategy: str, default=_REQUIRED):
    """``config[key]`` checked to be of ``kind`` (ints accepted for floats), ``default`` when absent (if given);
    a clear error naming the file otherwise."""
    if key not in config:
        if default is not _REQUIRED:
            return default
        raise TrainerConfigError(f"trainer config {strategy}.json has no '{key}'")
    value = config[key]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise TrainerConfigError(f"trainer config {strategy}.json: '{key}' must be {kind.__name__}, got {value!r}")
    return value
