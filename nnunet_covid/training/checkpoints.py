"""Checkpoints: finding, reading, unwrapping, loading with one report, and recording where weights came from.

- find: :func:`resolve_pretrained_checkpoint` (``$nnUNet_covid_pretrained``, else the ``"pretrained"``
  entry ``{"dataset", "trainer", "plans", "configuration", "fold"}`` of ``trainer_configs/<strategy>.json``,
  i.e. ``$nnUNet_results/<Dataset>/<trainer>__<plans>__<configuration>/fold_<fold>/checkpoint_final.pth``);
- read: :func:`read_checkpoint` with ``map_location="cpu"`` (checkpoints written on a GPU load on CPU-only
  machines);
- unwrap: :func:`unwrap_network` (DDP and ``torch.compile`` wrappers) and :func:`strip_wrapper_prefixes`
  (their ``module.`` / ``_orig_mod.`` key prefixes in foreign checkpoints);
- load: :func:`load_state` copies tensors by name into a network and returns a :class:`LoadReport`, the one
  report type for pre-trained and ImageNet weights (what was loaded, adapted, re-initialised and why,
  and which checkpoint tensors were not used);
- record: :func:`write_provenance` writes ``pretrained_source.json`` in the fold folder.
"""
from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

import torch
from torch import nn

from nnunet_covid.core.atomic_io import atomic_write_json
from nnunet_covid.core.errors import CheckpointError, NnunetCovidError
from nnunet_covid.core.nnunet_conventions import dataset_name, training_folder
from nnunet_covid.training.network_wrapping import unwrap_network
from nnunet_covid.training.trainer_config import load_trainer_config

PRETRAINED_CHECKPOINT_ENV = "nnUNet_covid_pretrained"
SEG_LAYER_KEYS = (".seg_layers.",)
SOURCE_KEYS = ("dataset", "trainer", "plans", "configuration", "fold")
PROVENANCE_FILE = "pretrained_source.json"


def pretrained_checkpoint_path(source: Mapping) -> Path:
    """``checkpoint_final.pth`` of the training ``source`` (``{"dataset", "trainer", "plans", "configuration", "fold"}``)."""
    missing = [k for k in SOURCE_KEYS if k not in source]
    if missing:
        raise CheckpointError(f"pre-training source {dict(source)} lacks {missing} (needs {list(SOURCE_KEYS)})")
    results = os.environ.get("nnUNet_results")
    if not results:
        raise CheckpointError(f"nnUNet_results is not set: cannot locate the pre-trained checkpoint of {dict(source)}")
    try:
        dataset = dataset_name(source["dataset"])
    except NnunetCovidError as e:
        raise CheckpointError(f"pre-training dataset {source['dataset']!r} not found: {e}") from None
    return training_folder(results, dataset, source["trainer"], source["plans"], source["configuration"],
                           source["fold"]) / "checkpoint_final.pth"


def resolve_pretrained_checkpoint(strategy: str, config: Mapping | None = None) -> Path:
    """The convention checkpoint of ``strategy``: ``$nnUNet_covid_pretrained``, else its config's ``"pretrained"``."""
    override = os.environ.get(PRETRAINED_CHECKPOINT_ENV)
    if override:
        path = Path(override)
        if not path.is_file():
            raise CheckpointError(f"{PRETRAINED_CHECKPOINT_ENV}={override}: no such checkpoint file")
        return path
    config = load_trainer_config(strategy) if config is None else config
    if "pretrained" not in config:
        raise CheckpointError(f"no pre-trained checkpoint for '{strategy}': pass -pretrained_weights PATH, set "
                              f"{PRETRAINED_CHECKPOINT_ENV}, or add a 'pretrained' entry to {strategy}.json")
    path = pretrained_checkpoint_path(config["pretrained"])
    if not path.is_file():
        raise CheckpointError(
            f"no pre-trained checkpoint for '{strategy}': {path} does not exist ({strategy}.json 'pretrained' = "
            f"{config['pretrained']}; {PRETRAINED_CHECKPOINT_ENV} is not set). Pre-train first, or pass "
            "-pretrained_weights PATH / set " + PRETRAINED_CHECKPOINT_ENV)
    return path


def read_checkpoint(path: str | os.PathLike) -> dict:
    """An nnU-Net checkpoint loaded onto the CPU, with its path under ``"_path"``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"pre-trained checkpoint {path} does not exist")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # torch raises many types for truncated/foreign files
        raise CheckpointError(f"pre-trained checkpoint {path} cannot be read: {type(e).__name__}: {e}") from None
    if not isinstance(checkpoint, dict) or "network_weights" not in checkpoint:
        raise CheckpointError(f"{path} is not an nnU-Net checkpoint (no 'network_weights')")
    checkpoint["_path"] = str(path)
    return checkpoint


def strip_wrapper_prefixes(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keys without the ``module.`` (DDP) and ``_orig_mod.`` (torch.compile) prefixes, in either order."""
    stripped = {}
    for key, value in state_dict.items():
        while key.startswith(("module.", "_orig_mod.")):
            key = key.split(".", 1)[1]
        stripped[key] = value
    return stripped


@dataclass
class LoadReport:
    """What a load did, per network tensor: loaded (``adapted`` says how, for those that were transformed on the
    way), skipped (kept fresh on purpose, why) or re-initialised (no fitting tensor, why); and which checkpoint
    tensors were not used (why)."""

    source: str
    loaded: list[str] = field(default_factory=list)
    adapted: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    reinitialised: dict[str, str] = field(default_factory=dict)
    unused: dict[str, str] = field(default_factory=dict)

    def per_module(self, depth: int = 2) -> dict[str, dict[str, int]]:
        """Counts of loaded/skipped/re-initialised tensors per module (key prefix of ``depth`` names)."""
        counts: dict[str, Counter] = {}
        for outcome, keys in (("loaded", self.loaded), ("skipped", self.skipped),
                              ("reinitialised", self.reinitialised)):
            for key in keys:
                module = ".".join(key.split(".")[:depth])
                counts.setdefault(module, Counter())[outcome] += 1
        return {module: dict(c) for module, c in sorted(counts.items())}

    def summary(self) -> str:
        """Several lines for a training log: totals, then one line per module with anything not plainly loaded."""
        lines = [f"weights from {self.source}: {len(self.loaded)} tensors loaded ({len(self.adapted)} of them "
                 f"adapted), {len(self.skipped)} skipped, {len(self.reinitialised)} re-initialised, {len(self.unused)} "
                 "checkpoint tensors unused"]
        lines += [f"  adapted {key}: {how}" for key, how in self.adapted.items()]
        for what, entries in (("skipped", self.skipped), ("re-initialised", self.reinitialised),
                              ("unused", self.unused)):
            for reason, n in Counter(entries.values()).items():
                examples = [k for k, r in entries.items() if r == reason][:3]
                lines.append(f"  {what} ({reason}): {n} tensors, e.g. {', '.join(examples)}")
        return "\n".join(lines)

    def to_json(self) -> dict:
        return {"source": self.source, "per_module": self.per_module(), "loaded": self.loaded,
                "adapted": self.adapted, "skipped": self.skipped, "reinitialised": self.reinitialised,
                "unused": self.unused}


def load_state(network: nn.Module, weights: Mapping[str, torch.Tensor], source: str, skip: Iterable[str] = (),
               optional: Iterable[str] = SEG_LAYER_KEYS) -> LoadReport:
    """Copy ``weights`` (a state dict, wrapper prefixes allowed) into ``network`` in place, frozen parameters too.

    Network keys containing a ``skip`` substring keep their initialisation ("kept fresh by the strategy");
    keys containing an ``optional`` substring are copied when present with the same shape and
    re-initialised otherwise; every other key must be present with the same shape, else ONE
    :class:`CheckpointError` lists all missing keys and shape mismatches.
    """
    skip, optional = tuple(skip), tuple(optional)
    weights = strip_wrapper_prefixes(weights)
    module = unwrap_network(network)
    model_state = module.state_dict()
    report, missing, mismatched, new_state = LoadReport(source=source), [], [], {}
    for key, value in model_state.items():
        if any(s in key for s in skip):
            report.skipped[key] = "kept fresh by the strategy"
            continue
        is_optional = any(s in key for s in optional)
        if key not in weights:
            if is_optional:
                report.reinitialised[key] = "segmentation head absent from the checkpoint"
            else:
                missing.append(key)
        elif weights[key].shape != value.shape:
            if is_optional:
                report.reinitialised[key] = (f"segmentation head of another shape: checkpoint "
                                             f"{tuple(weights[key].shape)} vs network {tuple(value.shape)}")
            else:
                mismatched.append(f"{key}: checkpoint {tuple(weights[key].shape)} vs network {tuple(value.shape)}")
        else:
            new_state[key] = weights[key]
            report.loaded.append(key)
    if missing or mismatched:
        lines = [f"pre-trained weights from {source} do not fit the network {type(module).__name__}:"]
        lines += [f"  missing in checkpoint: {k}" for k in missing]
        lines += [f"  shape mismatch: {m}" for m in mismatched]
        raise CheckpointError("\n".join(lines))
    report.unused = {k: "not a tensor of this network" for k in weights if k not in model_state}
    module.load_state_dict(new_state, strict=False)
    return report


def load_pretrained_state(network: nn.Module, checkpoint_or_path, skip: Iterable[str] = (),
                          optional: Iterable[str] = SEG_LAYER_KEYS) -> LoadReport:
    """:func:`load_state` from a checkpoint path, an nnU-Net checkpoint dict or a plain state dict."""
    if isinstance(checkpoint_or_path, (str, os.PathLike)):
        checkpoint_or_path = read_checkpoint(checkpoint_or_path)
    if "network_weights" in checkpoint_or_path:
        return load_state(network, checkpoint_or_path["network_weights"], checkpoint_or_path.get("_path", "checkpoint"),
                          skip, optional)
    return load_state(network, checkpoint_or_path, "state dict", skip, optional)


def write_provenance(fold_folder: str | os.PathLike, record: dict) -> Path:
    """``<fold folder>/pretrained_source.json``: where the weights came from, the load report, the strategy's settings."""
    path = Path(fold_folder) / PROVENANCE_FILE
    atomic_write_json(path, record)
    return path
