"""Checkpoints: finding, reading, unwrapping, loading with one report, and recording where weights came from.

- find: :func:`resolve_pretrained_checkpoint` (``$nnUNet_covid_pretrained``, else the ``"pretrained"``
  entry ``{"dataset", "trainer", "plans", "configuration", "fold"}`` of ``trainer_configs/<strategy>.json``,
  i.e. ``$nnUNet_results/<Dataset>/<trainer>__<plans>__<configuration>/fold_<fold>/checkpoint_final.pth``);
- read: :func:`read_checkpoint` with ``map_location="cpu"`` (checkpoints written on a GPU load on CPU-only
  machines);
- read: also plain state dicts (an encoder's own ``stages.*``/``stem.*`` keys included) and ``{"state_dict": ...}``;
- unwrap: :func:`unwrap_network` (DDP and ``torch.compile`` wrappers) and :func:`strip_wrapper_prefixes`
  (their ``module.`` / ``_orig_mod.`` key prefixes in foreign checkpoints);
- load: :func:`load_state` copies tensors by name into a network, adapting what a :class:`LoadPolicy` allows
  (input channels, partial loads of other plans, encoder-only checkpoints), and returns a :class:`LoadReport`,
  the one report type for pre-trained and ImageNet weights (what was loaded, adapted, re-initialised and why,
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
from nnunet_covid.core.errors import CheckpointError, NnunetCovidError, TrainerConfigError
from nnunet_covid.core.nnunet_conventions import dataset_name, training_folder
from nnunet_covid.training.network_wrapping import unwrap_network
from nnunet_covid.training.trainer_config import config_value, load_trainer_config

PRETRAINED_CHECKPOINT_ENV = "nnUNet_covid_pretrained"
SEG_LAYER_KEYS = (".seg_layers.",)
SOURCE_KEYS = ("dataset", "trainer", "plans", "configuration", "fold")
PROVENANCE_FILE = "pretrained_source.json"
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
ENCODER_MODULE_KEYS = ("stages.", "stem.")
INPUT_CHANNEL_ADAPTATIONS = ("average", "repeat", "refuse")
UNUSED_SKIPPED = "not loaded: the strategy keeps its network tensor fresh"
UNUSED_REINITIALISED = "not loaded: does not fit its network tensor (re-initialised)"


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
    """A checkpoint loaded onto the CPU, as ``{"network_weights": ..., "_path": ...}``.

    Accepted: an nnU-Net checkpoint (``network_weights``), a dict holding a ``state_dict`` (PyTorch Lightning and
    many other projects), or a plain state dict of tensors (e.g. ``torch.save(network.encoder.state_dict(), F)``).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"pre-trained checkpoint {path} does not exist")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # torch raises many types for truncated/foreign files
        raise CheckpointError(f"pre-trained checkpoint {path} cannot be read: {type(e).__name__}: {e}") from None
    if isinstance(checkpoint, dict) and "network_weights" not in checkpoint:
        if isinstance(checkpoint.get("state_dict"), Mapping):
            checkpoint = {"network_weights": checkpoint["state_dict"]}
        elif checkpoint and all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
            checkpoint = {"network_weights": checkpoint}
    if not isinstance(checkpoint, dict) or "network_weights" not in checkpoint:
        raise CheckpointError(f"{path} is neither an nnU-Net checkpoint ('network_weights') nor a state dict of tensors")
    checkpoint["_path"] = str(path)
    return checkpoint


def strip_wrapper_prefixes(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keys without the ``module.`` (DDP) and ``_orig_mod.`` (torch.compile) prefixes, in either order."""
    stripped = {}
    for key, value in state_dict.items():
        while key.startswith(WRAPPER_PREFIXES):
            key = key.split(".", 1)[1]
        stripped[key] = value
    return stripped


def normalise_state_dict(weights: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """``weights`` without wrapper prefixes, and an encoder's own state dict (keys ``stages.*``/``stem.*`` of
    dynamic-network-architectures' encoders) put under ``encoder.``; plus one note per change made."""
    notes = []
    normalised = strip_wrapper_prefixes(weights)
    wrapped = sum(k.startswith(WRAPPER_PREFIXES) for k in weights)
    if wrapped:
        notes.append(f"{wrapped} checkpoint keys carried DDP/torch.compile prefixes ('module.', '_orig_mod.'): stripped")
    if normalised and all(k.startswith(ENCODER_MODULE_KEYS) for k in normalised):
        normalised = {"encoder." + k: v for k, v in normalised.items()}
        notes.append("an encoder's own state dict (keys 'stages.*'/'stem.*'): read as the network's 'encoder.*'")
    return normalised, notes


def adapt_input_channels(weight: torch.Tensor, channels: int, method: str) -> tuple[torch.Tensor, str]:
    """The input-convolution ``weight`` (out, C, *kernel) of a C-channel checkpoint, made for ``channels`` inputs.

    ``"average"``: every input channel gets the mean of the C filters; ``"repeat"``: channel i gets filter
    i mod C. Both are scaled by C / channels, so an input whose channels are all equal gives the
    checkpoint's response (``"repeat"``: when ``channels`` is a multiple of C, e.g. 1 -> n).
    """
    c = weight.shape[1]
    scale = c / channels
    if method == "average":
        adapted = weight.mean(dim=1, keepdim=True).repeat(1, channels, *[1] * (weight.ndim - 2)) * scale
        how = f"input channels {c} -> {channels}: averaged over the checkpoint's channels, scaled by {c}/{channels}"
    elif method == "repeat":
        adapted = weight[:, torch.arange(channels) % c] * scale
        how = f"input channels {c} -> {channels}: repeated (channel i from channel i mod {c}), scaled by {c}/{channels}"
    else:
        raise ValueError(f"input channel adaptation must be one of {INPUT_CHANNEL_ADAPTATIONS[:2]}, got {method!r}")
    return adapted.contiguous(), how


@dataclass(frozen=True)
class LoadPolicy:
    """What a load may do besides copying tensors of equal name and shape (trainer config keys in brackets).

    ``partial`` (``"partial_load"``, default false): tensors missing from the checkpoint or of another shape
    are re-initialised instead of failing, as long as at least ``min_encoder_fraction``
    (``"min_encoder_fraction"``, default 0.9) of the encoder's weight values load; ``input_channels``
    (``"input_channel_adaptation"``: ``"average"`` (default), ``"repeat"`` or ``"refuse"``): how an input
    convolution of another input-channel count is adapted (:func:`adapt_input_channels`). ``origin`` names the
    config file in messages.
    """

    partial: bool = False
    min_encoder_fraction: float = 0.9
    input_channels: str = "average"
    origin: str = "the trainer config"

    @classmethod
    def from_config(cls, config: Mapping, strategy: str) -> "LoadPolicy":
        policy = cls(partial=config_value(config, "partial_load", bool, strategy, default=False),
                     min_encoder_fraction=config_value(config, "min_encoder_fraction", float, strategy, default=0.9),
                     input_channels=config_value(config, "input_channel_adaptation", str, strategy,
                                                 default="average"),
                     origin=f"{strategy}.json")
        if not 0 <= policy.min_encoder_fraction <= 1:
            raise TrainerConfigError(f"{strategy}.json: 'min_encoder_fraction' must lie in [0, 1], got "
                                     f"{policy.min_encoder_fraction}")
        if policy.input_channels not in INPUT_CHANNEL_ADAPTATIONS:
            raise TrainerConfigError(f"{strategy}.json: 'input_channel_adaptation' must be one of "
                                     f"{list(INPUT_CHANNEL_ADAPTATIONS)}, got {policy.input_channels!r}")
        return policy

    def to_json(self) -> dict:
        return {"partial_load": self.partial, "min_encoder_fraction": self.min_encoder_fraction,
                "input_channel_adaptation": self.input_channels}


@dataclass
class LoadReport:
    """What a load did, per network tensor (each tensor once, under its first state-dict name): loaded
    (``adapted`` says how, for those transformed on the way), skipped (kept fresh on purpose, why) or
    re-initialised (no fitting tensor, why); which checkpoint tensors were not used (why); ``notes`` on the
    checkpoint's form; ``encoder_fraction``, the share of the encoder's weight values that loaded."""

    source: str
    loaded: list[str] = field(default_factory=list)
    adapted: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    reinitialised: dict[str, str] = field(default_factory=dict)
    unused: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    encoder_fraction: float | None = None

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
        """Lines for a training log: totals, notes, adaptations, one line per module, then the reasons."""
        encoder = "" if self.encoder_fraction is None else f"; encoder {self.encoder_fraction:.1%} loaded"
        lines = [f"weights from {self.source}: {len(self.loaded)} tensors loaded ({len(self.adapted)} of them "
                 f"adapted), {len(self.skipped)} skipped, {len(self.reinitialised)} re-initialised, {len(self.unused)} "
                 f"checkpoint tensors unused{encoder}"]
        lines += [f"  note: {note}" for note in self.notes]
        lines += [f"  adapted {key}: {how}" for key, how in self.adapted.items()]
        for module, counts in self.per_module().items():
            lines.append(f"  {module}: " + ", ".join(f"{n} {what}" for what, n in counts.items()))
        for what, entries in (("skipped", self.skipped), ("re-initialised", self.reinitialised),
                              ("unused", self.unused)):
            for reason, n in Counter(entries.values()).items():
                examples = [k for k, r in entries.items() if r == reason][:3]
                lines.append(f"  {what} ({reason}): {n} tensors, e.g. {', '.join(examples)}")
        return "\n".join(lines)

    def to_json(self) -> dict:
        return {"source": self.source, "per_module": self.per_module(), "loaded": self.loaded,
                "adapted": self.adapted, "skipped": self.skipped, "reinitialised": self.reinitialised,
                "unused": self.unused, "notes": self.notes, "encoder_fraction": self.encoder_fraction}


def tensor_aliases(module: nn.Module) -> dict[str, list[str]]:
    """First state-dict name of each tensor -> all its names (nnU-Net's U-Nets hold every convolution as ``.conv``
    and ``.all_modules.0``, and their encoder once more as ``decoder.encoder``)."""
    names: dict[int, list[str]] = {}
    for key, value in module.state_dict(keep_vars=True).items():
        names.setdefault(id(value), []).append(key)
    return {keys[0]: keys for keys in names.values()}


def _storage(tensor: torch.Tensor) -> tuple:
    """Identifies a tensor across the names a checkpoint stores it under (torch.save keeps shared storage)."""
    return tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape)


def _network_input_channels(module: nn.Module) -> int | None:
    conv = next((m for m in module.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d))), None)
    return None if conv is None else conv.in_channels


def _is_input_convolution(checkpoint: torch.Tensor, network: torch.Tensor, input_channels: int | None) -> bool:
    """A convolution weight reading the network's input whose shapes differ in the input-channel count only."""
    return (network.ndim >= 3 and checkpoint.ndim == network.ndim and network.shape[1] == input_channels
            and checkpoint.shape[0] == network.shape[0] and checkpoint.shape[2:] == network.shape[2:])


def load_state(network: nn.Module, weights: Mapping[str, torch.Tensor], source: str, skip: Iterable[str] = (),
               optional: Iterable[str] = SEG_LAYER_KEYS, policy: LoadPolicy = LoadPolicy(),
               encoder_prefix: str = "encoder.", notes: Iterable[str] = ()) -> LoadReport:
    """Copy ``weights`` (a state dict: wrapper prefixes and an encoder's own keys allowed, see
    :func:`normalise_state_dict`) into ``network`` in place, frozen parameters too, and report what was done.

    Each network tensor, under any of its names (:func:`tensor_aliases`):

    - containing a ``skip`` substring: kept fresh ("kept fresh by the strategy");
    - present with the same shape: loaded; an input convolution with another input-channel count: adapted
      (``policy.input_channels``) and loaded;
    - containing an ``optional`` substring (segmentation heads): re-initialised when absent or of another shape;
    - of a top-level module (e.g. ``decoder``) of which the checkpoint holds no tensor at all, other than
      the encoder (``encoder_prefix``): re-initialised (an encoder-only checkpoint);
    - otherwise absent or of another shape: re-initialised with ``policy.partial`` (which then needs
      ``policy.min_encoder_fraction`` of the encoder's values loaded), else ONE :class:`CheckpointError`
      lists every missing key and shape mismatch.
    """
    skip, optional = tuple(skip), tuple(optional)
    weights, found = normalise_state_dict(weights)
    module = unwrap_network(network)
    aliases = tensor_aliases(module)
    model_state = module.state_dict()
    input_channels = _network_input_channels(module)
    present_modules = {k.split(".", 1)[0] for k in weights}
    report, problems, new_state = LoadReport(source=source, notes=[*notes, *found]), [], {}
    for key, names in aliases.items():
        value = model_state[key]
        if any(s in key for s in skip):
            report.skipped[key] = "kept fresh by the strategy"
            continue
        is_head = any(s in key for s in optional)
        given = next((n for n in names if n in weights), None)
        if given is None:
            top = key.split(".", 1)[0]
            if is_head:
                report.reinitialised[key] = "segmentation head absent from the checkpoint"
            elif top not in present_modules and not key.startswith(encoder_prefix):
                report.reinitialised[key] = f"the checkpoint holds no '{top}' tensors (encoder-only checkpoint)"
            elif policy.partial:
                report.reinitialised[key] = "absent from the checkpoint (partial load)"
            else:
                problems.append(f"  missing in checkpoint: {key}")
            continue
        tensor = weights[given]
        if tensor.shape == value.shape:
            new_state[key] = tensor
            report.loaded.append(key)
        elif policy.input_channels != "refuse" and _is_input_convolution(tensor, value, input_channels):
            new_state[key], report.adapted[key] = adapt_input_channels(tensor, value.shape[1], policy.input_channels)
            report.loaded.append(key)
        else:
            shapes = f"checkpoint {tuple(tensor.shape)} vs network {tuple(value.shape)}"
            if is_head:
                report.reinitialised[key] = f"segmentation head of another shape: {shapes}"
            elif policy.partial:
                report.reinitialised[key] = f"shape mismatch (partial load): {shapes}"
            else:
                problems.append(f"  shape mismatch: {key}: {shapes}")
    if problems:
        raise CheckpointError("\n".join([f"pre-trained weights from {source} do not fit the network "
                                         f"{type(module).__name__}:", *problems,
                                         f"  (\"partial_load\": true in {policy.origin} loads the tensors that fit "
                                         "and re-initialises the rest)"]))
    encoder = {k: model_state[k].numel() for k in aliases if k.startswith(encoder_prefix)}
    if encoder:
        report.encoder_fraction = sum(n for k, n in encoder.items() if k in new_state) / sum(encoder.values())
    if policy.partial and report.encoder_fraction is not None and report.encoder_fraction < policy.min_encoder_fraction:
        missing = [f"{k} ({report.reinitialised[k]})" for k in encoder if k in report.reinitialised][:3]
        raise CheckpointError(
            f"partial load from {source}: only {report.encoder_fraction:.1%} of the encoder's weights of "
            f"{type(module).__name__} fit, below min_encoder_fraction {policy.min_encoder_fraction} in "
            f"{policy.origin}; e.g. {'; '.join(missing)}")
    canonical = {name: key for key, names in aliases.items() for name in names}
    loaded = {_storage(weights[n]) for key in new_state for n in aliases[key] if n in weights}
    for key, tensor in weights.items():  # each unused checkpoint tensor once, under its first name
        if _storage(tensor) in loaded or canonical.get(key) in new_state:
            continue
        loaded.add(_storage(tensor))
        own = canonical.get(key)
        report.unused[key] = ("not a tensor of this network" if own is None else UNUSED_SKIPPED if own in report.skipped
                              else UNUSED_REINITIALISED)
    module.load_state_dict(new_state, strict=False)
    return report


def load_pretrained_state(network: nn.Module, checkpoint_or_path, skip: Iterable[str] = (),
                          optional: Iterable[str] = SEG_LAYER_KEYS, policy: LoadPolicy = LoadPolicy()) -> LoadReport:
    """:func:`load_state` from a checkpoint path, an nnU-Net checkpoint dict or a plain state dict."""
    if isinstance(checkpoint_or_path, (str, os.PathLike)):
        checkpoint_or_path = read_checkpoint(checkpoint_or_path)
    if "network_weights" in checkpoint_or_path:
        return load_state(network, checkpoint_or_path["network_weights"], checkpoint_or_path.get("_path", "checkpoint"),
                          skip, optional, policy)
    return load_state(network, checkpoint_or_path, "state dict", skip, optional, policy)


def write_provenance(fold_folder: str | os.PathLike, record: dict) -> Path:
    """``<fold folder>/pretrained_source.json``: where the weights came from, the load report, the strategy's settings."""
    path = Path(fold_folder) / PROVENANCE_FILE
    atomic_write_json(path, record)
    return path
