"""Evaluation with the papers' metrics, study runs and reports.

Python API: :func:`compute_metrics` (one pair of binary masks), :func:`evaluate_folders`
(folders of segmentations -> per-case results and mean ± std) and :func:`build_report`
(study results -> the papers' tables, statistics and box plots).
"""
from nnunet_covid.evaluation.evaluate import evaluate_folders
from nnunet_covid.evaluation.metrics import compute_metrics

__all__ = ["compute_metrics", "evaluate_folders", "build_report"]


def build_report(*args, **kwargs):
    """See :func:`nnunet_covid.evaluation.report.build_report` (imported lazily: matplotlib, scipy)."""
    from nnunet_covid.evaluation.report import build_report as _build_report

    return _build_report(*args, **kwargs)
