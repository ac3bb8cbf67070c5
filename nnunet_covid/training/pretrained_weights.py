"""Pre-trained checkpoints for the transfer trainers: finding them, loading them, and the shared trainer base.

Two ways to give a transfer trainer its pre-trained weights:

- the stock flag ``nnUNetv2_train ... -pretrained_weights PATH``: nnU-Net calls ``initialize()`` and
  then its own ``load_pretrained_weights`` (every key except ``.seg_layers.`` must match; the 1x1
  segmentation head is always re-initialised; ``torch.load`` without ``map_location``, so a
  checkpoint saved on GPU needs a GPU there);
- by convention, without the flag (:func:`resolve_pretrained_checkpoint`):

  1. ``nnUNet_covid_pretrained=/path/checkpoint.pth`` (environment variable), else
  2. the ``"pretrained"`` entry ``{"dataset", "trainer", "plans", "configuration", "fold"}`` of
     ``trainer_configs/<strategy>.json``, i.e.
     ``$nnUNet_results/<Dataset>/<trainer>__<plans>__<configuration>/fold_<fold>/checkpoint_final.pth``.

  Loaded with :func:`load_pretrained_state`: ``map_location='cpu'`` (GPU checkpoints load on CPU
  machines), ``module.``/``_orig_mod.`` prefixes stripped, the segmentation head copied when its
  shape matches (same label count) and re-initialised otherwise, and ONE error listing every
  missing key and shape mismatch.

:class:`PretrainedTransferTrainer` implements this once for every transfer trainer: it fingerprints
the freshly initialised network at the end of ``initialize()``; in ``on_train_start()`` a changed
fingerprint means the stock flag loaded weights, an unchanged one means "load by convention".
Resumed runs (``--c`` with a checkpoint) and ``--val`` restore their own checkpoint and load nothing.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

import torch
from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from torch import nn
from torch._dynamo import OptimizedModule
from torch.nn.parallel import DistributedDataParallel

from nnunet_covid.atomic_io import atomic_write_json
from nnunet_covid.training.trainer_config import config_value, load_trainer_config

__all__ = ["PretrainedTransferTrainer"]

PRETRAINED_CHECKPOINT_ENV = "nnUNet_covid_pretrained"
SEG_LAYER_KEYS = (".seg_layers.",)
SOURCE_KEYS = ("dataset", "trainer", "plans", "configuration", "fold")
PROVENANCE_FILE = "pretrained_source.json"


class PretrainedWeightsError(RuntimeError):
    """A pre-trained checkpoint is missing or does not fit the network; the message says what and where."""


def pretrained_checkpoint_path(source: Mapping) -> Path:
    """``$nnUNet_results/<Dataset>/<trainer>__<plans>__<configuration>/fold_<fold>/checkpoint_final.pth`` of ``source``."""
    missing = [k for k in SOURCE_KEYS if k not in source]
    if missing:
        raise PretrainedWeightsError(f"pre-training source {dict(source)} lacks {missing} (needs {list(SOURCE_KEYS)})")
    results = os.environ.get("nnUNet_results")
    if not results:
        raise PretrainedWeightsError("nnUNet_results is not set: cannot locate the pre-trained checkpoint of "
                                     f"{dict(source)}")
    dataset = str(source["dataset"])
    if not dataset.startswith("Dataset"):
        from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
        try:
            dataset = maybe_convert_to_dataset_name(int(dataset))
        except (RuntimeError, ValueError) as e:
            raise PretrainedWeightsError(f"pre-training dataset {source['dataset']!r} not found: {e}") from None
    return (Path(results) / dataset / f"{source['trainer']}__{source['plans']}__{source['configuration']}"
            / f"fold_{source['fold']}" / "checkpoint_final.pth")


def resolve_pretrained_checkpoint(strategy: str, config: Mapping | None = None) -> Path:
    """The convention checkpoint of ``strategy``: ``$nnUNet_covid_pretrained``, else its config's ``"pretrained"``."""
    override = os.environ.get(PRETRAINED_CHECKPOINT_ENV)
    if override:
        path = Path(override)
        if not path.is_file():
            raise PretrainedWeightsError(f"{PRETRAINED_CHECKPOINT_ENV}={override}: no such checkpoint file")
        return path
    config = load_trainer_config(strategy) if config is None else config
    if "pretrained" not in config:
        raise PretrainedWeightsError(f"no pre-trained checkpoint for '{strategy}': pass -pretrained_weights PATH, set "
                                     f"{PRETRAINED_CHECKPOINT_ENV}, or add a 'pretrained' entry to {strategy}.json")
    path = pretrained_checkpoint_path(config["pretrained"])
    if not path.is_file():
        raise PretrainedWeightsError(
            f"no pre-trained checkpoint for '{strategy}': {path} does not exist ({strategy}.json 'pretrained' = "
            f"{config['pretrained']}; {PRETRAINED_CHECKPOINT_ENV} is not set). Pre-train first, or pass "
            "-pretrained_weights PATH / set " + PRETRAINED_CHECKPOINT_ENV)
    return path


def read_checkpoint(path: str | os.PathLike) -> dict:
    """An nnU-Net checkpoint loaded onto the CPU (checkpoints written on a GPU load on CPU-only machines)."""
    path = Path(path)
    if not path.is_file():
        raise PretrainedWeightsError(f"pre-trained checkpoint {path} does not exist")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # torch raises many types for truncated/foreign files
        raise PretrainedWeightsError(f"pre-trained checkpoint {path} cannot be read: {type(e).__name__}: {e}") from None
    if not isinstance(checkpoint, dict) or "network_weights" not in checkpoint:
        raise PretrainedWeightsError(f"{path} is not an nnU-Net checkpoint (no 'network_weights')")
    checkpoint["_path"] = str(path)
    return checkpoint


def unwrap_network(network: nn.Module) -> nn.Module:
    """The plain module inside DDP and/or ``torch.compile`` wrappers."""
    if isinstance(network, DistributedDataParallel):
        network = network.module
    if isinstance(network, OptimizedModule):
        network = network._orig_mod
    return network


def strip_wrapper_prefixes(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keys without the ``module.`` (DDP) and ``_orig_mod.`` (torch.compile) prefixes."""
    stripped = {}
    for key, value in state_dict.items():
        for prefix in ("module.", "_orig_mod."):
            if key.startswith(prefix):
                key = key[len(prefix):]
        stripped[key] = value
    return stripped


@dataclass
class LoadReport:
    """What :func:`load_pretrained_state` did: keys copied and optional keys left at their initialisation."""

    loaded: list[str] = field(default_factory=list)
    reinitialised: list[str] = field(default_factory=list)
    source: str = ""


def load_pretrained_state(network: nn.Module, checkpoint_or_path, skip: Iterable[str] = (),
                          optional: Iterable[str] = SEG_LAYER_KEYS, prefix: str = "") -> LoadReport:
    """Copy pre-trained weights into ``network`` (in place, also into frozen parameters).

    ``checkpoint_or_path``: a checkpoint path, an nnU-Net checkpoint dict or a plain state dict.
    ``prefix``: only checkpoint keys starting with it are used, with it removed (``"encoder."`` loads a
    checkpoint's encoder into an encoder module). Network keys containing a ``skip`` substring keep
    their initialisation; keys containing an ``optional`` substring are copied when present with the
    same shape and re-initialised otherwise; every other key must be present with the same shape,
    else ONE :class:`PretrainedWeightsError` lists all missing keys and shape mismatches.
    """
    skip, optional = tuple(skip), tuple(optional)
    if isinstance(checkpoint_or_path, (str, os.PathLike)):
        checkpoint_or_path = read_checkpoint(checkpoint_or_path)
    source = checkpoint_or_path.get("_path", "checkpoint") if "network_weights" in checkpoint_or_path else "state dict"
    weights = checkpoint_or_path.get("network_weights", checkpoint_or_path)
    weights = {k[len(prefix):]: v for k, v in strip_wrapper_prefixes(weights).items() if k.startswith(prefix)}
    module = unwrap_network(network)
    model_state = module.state_dict()
    report, missing, mismatched, new_state = LoadReport(source=source), [], [], {}
    for key, value in model_state.items():
        if any(s in key for s in skip):
            continue
        is_optional = any(s in key for s in optional)
        if key not in weights:
            (report.reinitialised if is_optional else missing).append(key)
        elif weights[key].shape != value.shape:
            if is_optional:
                report.reinitialised.append(key)
            else:
                mismatched.append(f"{key}: checkpoint {tuple(weights[key].shape)} vs network {tuple(value.shape)}")
        else:
            new_state[key] = weights[key]
            report.loaded.append(key)
    if missing or mismatched:
        lines = [f"pre-trained weights from {source} do not fit the network {type(module).__name__}"
                 + (f" (checkpoint keys under '{prefix}')" if prefix else "") + ":"]
        lines += [f"  missing in checkpoint: {k}" for k in missing]
        lines += [f"  shape mismatch: {m}" for m in mismatched]
        raise PretrainedWeightsError("\n".join(lines))
    module.load_state_dict(new_state, strict=False)
    return report


def network_fingerprint(network: nn.Module, n: int = 2) -> dict[str, torch.Tensor]:
    """Clones of the first and last ``n`` non-segmentation-head tensors of the state dict (cheap change detector)."""
    state = unwrap_network(network).state_dict()
    keys = [k for k, v in state.items() if v.is_floating_point() and not any(s in k for s in SEG_LAYER_KEYS)]
    return {k: state[k].detach().clone() for k in keys[:n] + keys[-n:]}


def weights_changed(network: nn.Module, fingerprint: Mapping[str, torch.Tensor]) -> bool:
    """Whether any fingerprinted tensor differs from the network's current value."""
    state = unwrap_network(network).state_dict()
    return any(not torch.equal(state[k], v) for k, v in fingerprint.items())


class PretrainedTransferTrainer(nnUNetTrainer):
    """Base of every transfer trainer: pre-trained weights via ``-pretrained_weights`` or by convention.

    Subclasses set ``strategy`` (the name of their ``trainer_configs/<strategy>.json``, available as
    ``self.transfer_config``) and may override :meth:`load_pretrained_checkpoint` (how a checkpoint
    enters the network), :meth:`on_pretrained_weights_loaded` (runs once the weights are in place,
    before the data loaders start) and :meth:`build_lr_scheduler`. The source used is written to
    ``<fold folder>/pretrained_source.json``.

    Config keys used here: ``initial_lr`` (optional, else nnU-Net's 1e-2) and ``frozen_modules``
    (optional, dotted sub-module names of the network, e.g. ``["encoder"]``): their parameters get
    ``requires_grad=False``, are left out of the optimizer, and the modules stay in ``eval()`` during
    training (frozen normalisation statistics; nnU-Net's InstanceNorm keeps none, BatchNorm would).
    """

    strategy: str = ""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.transfer_config = load_trainer_config(self.strategy)
        if "initial_lr" in self.transfer_config:
            self.initial_lr = config_value(self.transfer_config, "initial_lr", float, self.strategy)
        self.frozen_module_names: list[str] = list(self.transfer_config.get("frozen_modules", []))
        self.pretrained_source: str | None = None
        self._initial_fingerprint: dict[str, torch.Tensor] | None = None
        self._restored_from_checkpoint = False

    def initialize(self):
        super().initialize()
        self._initial_fingerprint = network_fingerprint(self.network)

    def frozen_modules(self) -> list[nn.Module]:
        """The configured frozen sub-modules of the (unwrapped) network."""
        module = unwrap_network(self.network)
        found = []
        for name in self.frozen_module_names:
            try:
                found.append(module.get_submodule(name))
            except AttributeError:
                raise PretrainedWeightsError(f"{self.strategy}.json: frozen module '{name}' does not exist in "
                                             f"{type(module).__name__}") from None
        return found

    def configure_optimizers(self):
        """nnU-Net's SGD (Nesterov 0.99) on the trainable parameters only; frozen modules get no gradients."""
        for frozen in self.frozen_modules():
            frozen.requires_grad_(False)
        trainable = [p for p in self.network.parameters() if p.requires_grad]
        optimizer = torch.optim.SGD(trainable, self.initial_lr, weight_decay=self.weight_decay, momentum=0.99,
                                    nesterov=True)
        return optimizer, self.build_lr_scheduler(optimizer)

    def build_lr_scheduler(self, optimizer: torch.optim.Optimizer):
        """nnU-Net's poly schedule from ``self.initial_lr`` over ``self.num_epochs``."""
        return PolyLRScheduler(optimizer, self.initial_lr, self.num_epochs)

    def on_train_epoch_start(self):
        super().on_train_epoch_start()  # network.train()
        for frozen in self.frozen_modules():
            frozen.eval()

    def load_checkpoint(self, filename_or_checkpoint) -> None:
        super().load_checkpoint(filename_or_checkpoint)
        self._restored_from_checkpoint = True

    def on_train_start(self):
        if not self.was_initialized:
            self.initialize()
        if not self._restored_from_checkpoint:
            self.ensure_pretrained_weights()
        super().on_train_start()

    def ensure_pretrained_weights(self) -> None:
        """Keep weights loaded by ``-pretrained_weights``, else load the convention checkpoint; then run the hook."""
        if weights_changed(self.network, self._initial_fingerprint):
            checkpoint = None
            self.pretrained_source = "-pretrained_weights (nnU-Net's loader; segmentation head re-initialised)"
        else:
            checkpoint = read_checkpoint(resolve_pretrained_checkpoint(self.strategy, self.transfer_config))
            self.load_pretrained_checkpoint(checkpoint)
            self.pretrained_source = checkpoint["_path"]
        self.print_to_log_file(f"pre-trained weights: {self.pretrained_source}")
        self.on_pretrained_weights_loaded(checkpoint)
        self.write_provenance()

    def load_pretrained_checkpoint(self, checkpoint: dict) -> LoadReport:
        """Load ``checkpoint`` (found by convention) into ``self.network``; the hybrid trainer overrides this."""
        report = load_pretrained_state(self.network, checkpoint)
        if report.reinitialised:
            self.print_to_log_file(f"re-initialised (absent or shape differs in the checkpoint): {report.reinitialised}")
        return report

    def on_pretrained_weights_loaded(self, checkpoint: dict | None) -> None:
        """Hook after the pre-trained weights are in place; ``checkpoint`` is None when the stock flag loaded them."""

    def provenance(self) -> dict:
        """What ``pretrained_source.json`` records; subclasses add their settings."""
        return {"trainer": self.__class__.__name__, "strategy": self.strategy, "pretrained": self.pretrained_source}

    def write_provenance(self) -> None:
        if self.local_rank != 0:
            return
        atomic_write_json(Path(self.output_folder) / PROVENANCE_FILE, self.provenance())
