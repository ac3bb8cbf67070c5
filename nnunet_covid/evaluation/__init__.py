"""Evaluation with the papers' metrics, study runs and reports."""
