"""Pre-training on the merged multi-lesion dataset (Wang et al., REFERENCE 1.2), normally on fold ``all``.

Per-case metadata (written by ``nnunet-covid convert multilesion``): ``{case_id: {"source": ...,
"annotated_labels": [...]}}``, read from the ``"case_sources"`` entry of the dataset.json the trainer
gets (nnU-Net copies it into the preprocessed folder), else from ``$nnUNet_raw/<Dataset>/case_sources.json``.

- :class:`MultiLesionPretrainTrainer`: source-balanced sampling. Each training patch draws its source
  uniformly, then a case of that source uniformly: p(case) = 1 / (n_sources * n_cases_of_its_source),
  independently for every patch of a batch (so each source is equally likely at every batch position;
  nnU-Net's foreground oversampling then applies as usual). Implemented by repeating each training
  identifier in proportion to 1 / n_cases_of_its_source (exact when the lcm of the source sizes is at
  most 100000, else within 0.1 %), which nnU-Net's loader samples uniformly. Validation is unchanged.
- :class:`MultiLesionPartialLabelTrainer`: the same sampling, per-source lesion labels (convert with
  ``--labels per-source``) and the marginal loss of :mod:`~nnunet_covid.training.partial_label_loss`,
  which counts for each case only the labels its source annotates.
"""
from __future__ import annotations

import json
import math
import os
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_covid.core.errors import DatasetMetadataError, TrainerConfigError
from nnunet_covid.training.partial_label_loss import MarginalDiceCELoss

__all__ = ["MultiLesionPretrainTrainer", "MultiLesionPartialLabelTrainer"]

CASE_SOURCES_KEY = "case_sources"
CASE_SOURCES_FILE = "case_sources.json"
MAX_REPEAT_PERIOD = 100_000


def load_case_sources(dataset_json: dict, dataset_name: str) -> dict[str, dict]:
    """``{case_id: {"source", "annotated_labels", ...}}`` from dataset.json, else the raw folder's case_sources.json."""
    if CASE_SOURCES_KEY in dataset_json:
        return dataset_json[CASE_SOURCES_KEY]
    raw = os.environ.get("nnUNet_raw")
    candidate = Path(raw) / dataset_name / CASE_SOURCES_FILE if raw else None
    if candidate is not None and candidate.is_file():
        return json.loads(candidate.read_text())
    raise DatasetMetadataError(
        f"{dataset_name}: no per-case source metadata: dataset.json has no '{CASE_SOURCES_KEY}' entry and "
        f"{candidate or '$nnUNet_raw (unset)/' + dataset_name + '/' + CASE_SOURCES_FILE} does not exist. Build the "
        "dataset with 'nnunet-covid convert multilesion'")


def sources_of(case_ids, case_sources: dict[str, dict], dataset_name: str) -> list[str]:
    """The source of every case id (a clear error naming the cases without metadata)."""
    missing = [c for c in case_ids if c not in case_sources]
    if missing:
        raise DatasetMetadataError(f"{dataset_name}: {len(missing)} training case(s) have no source metadata, "
                               f"e.g. {missing[:5]}")
    return [case_sources[c]["source"] for c in case_ids]


def source_balanced_identifiers(case_ids: list[str], sources: list[str]) -> np.ndarray:
    """``case_ids`` repeated so that uniform sampling gives p(case) = 1 / (n_sources * n_cases_of_its_source)."""
    counts = Counter(sources)
    period = min(math.lcm(*counts.values()), MAX_REPEAT_PERIOD)
    repeats = [max(1, round(period / counts[s])) for s in sources]
    return np.repeat(np.asarray(case_ids), repeats)


class MultiLesionPretrainTrainer(nnUNetTrainer):
    """nnU-Net training on the merged multi-lesion dataset with source-balanced case sampling."""

    def case_sources(self) -> dict[str, dict]:
        """The dataset's per-case source metadata (read once)."""
        if getattr(self, "_case_sources", None) is None:
            self._case_sources = load_case_sources(self.dataset_json, self.plans_manager.dataset_name)
        return self._case_sources

    def get_tr_and_val_datasets(self):
        dataset_tr, dataset_val = super().get_tr_and_val_datasets()
        case_ids = list(dataset_tr.identifiers)
        sources = sources_of(case_ids, self.case_sources(), self.plans_manager.dataset_name)
        dataset_tr.identifiers = source_balanced_identifiers(case_ids, sources)
        self.print_to_log_file(f"source-balanced sampling over {dict(Counter(sources))} training cases per source")
        return dataset_tr, dataset_val


class MultiLesionPartialLabelTrainer(MultiLesionPretrainTrainer):
    """Per-source lesion labels; the marginal loss counts, for each case, only the labels its source annotates."""

    def _build_loss(self):
        if self.label_manager.has_regions:
            raise TrainerConfigError(f"{self.__class__.__name__} needs one label per lesion type, not region-based "
                                     "labels")
        self.marginal_loss = MarginalDiceCELoss(batch_dice=self.configuration_manager.batch_dice, ddp=self.is_ddp)
        loss = super()._build_loss()  # nnU-Net's deep-supervision weights around our loss
        if isinstance(loss, DeepSupervisionWrapper):
            loss.loss = self.marginal_loss
            return loss
        return self.marginal_loss

    def annotated_mask(self, case_ids) -> torch.Tensor:
        """bool (len(case_ids), num classes): True where the case's source annotates the label (background always)."""
        case_sources = self.case_sources()
        num_classes = self.label_manager.num_segmentation_heads
        mask = torch.zeros(len(case_ids), num_classes, dtype=torch.bool)
        mask[:, 0] = True
        for row, case_id in enumerate(case_ids):
            if str(case_id) not in case_sources:
                raise DatasetMetadataError(f"case {case_id} has no source metadata")
            for label in case_sources[str(case_id)]["annotated_labels"]:
                if not 0 < int(label) < num_classes:
                    raise DatasetMetadataError(f"case {case_id}: annotated label {label} is not a foreground label "
                                               f"of this dataset (1..{num_classes - 1})")
                mask[row, int(label)] = True
        return mask

    def train_step(self, batch: dict) -> dict:
        self.marginal_loss.annotated = self.annotated_mask(batch["keys"])
        return super().train_step(batch)

    def validation_step(self, batch: dict) -> dict:
        self.marginal_loss.annotated = self.annotated_mask(batch["keys"])
        return super().validation_step(batch)

