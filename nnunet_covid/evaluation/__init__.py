"""Evaluation with the papers' metrics, study runs and reports.

Python API: :func:`compute_metrics` (one pair of binary masks), :func:`evaluate_folders`
(folders of segmentations -> per-case results and mean ± std) and :func:`build_report`
(study results -> the papers' tables, paired tests and box plots).
"""
from nnunet_covid.evaluation.evaluate import evaluate_folders
from nnunet_covid.evaluation.metrics import compute_metrics
from nnunet_covid.evaluation.report import build_report

__all__ = ["compute_metrics", "evaluate_folders", "build_report"]
