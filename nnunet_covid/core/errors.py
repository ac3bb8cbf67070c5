"""Errors a user sees: one base class, one kind per part of the product.

Every error raised for bad input, a missing file, an unfit checkpoint or a failed step derives
from :class:`NnunetCovidError`; its message names the file, case or setting and the problem in one
line (a list of failed cases may follow on further lines). ``nnunet-covid`` prints it without a
traceback and exits with code 2. Anything else reaching the top is a bug.
"""
from __future__ import annotations


class NnunetCovidError(Exception):
    """A problem the user can fix; the message says what and where."""


class UsageError(NnunetCovidError):
    """A command-line value that cannot be used (checked before anything is written)."""


class ConversionError(NnunetCovidError):
    """A raw case or dataset that cannot be converted."""


class EvaluationError(NnunetCovidError):
    """Bad evaluation, quantification or report input."""


class StudyError(NnunetCovidError):
    """An invalid study grid or a failed study step."""


class CheckpointError(NnunetCovidError):
    """A checkpoint or weight file that is missing, unreadable or does not fit the network."""


class TrainerConfigError(NnunetCovidError, ValueError):
    """A trainer setting (``trainer_configs/<strategy>.json``, plans) that cannot be used."""


class DatasetMetadataError(NnunetCovidError):
    """Per-case metadata a trainer needs (e.g. the sources of a multi-lesion dataset) is missing or wrong."""


class PartialLabelError(NnunetCovidError, ValueError):
    """A target holds a label that its case's source does not annotate."""


class CommandFailed(NnunetCovidError):
    """An nnU-Net command exited non-zero; the message names the command and its log."""
