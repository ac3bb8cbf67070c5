"""Shim module for nnU-Net's trainer lookup (``nnUNet_extTrainer``).

nnU-Net imports every module of the folders named in ``nnUNet_extTrainer`` as a
top-level module and drops it from ``sys.modules`` afterwards. This module only
re-exports the trainers of the installed ``nnunet_covid`` package, so the class nnU-Net
finds *is* ``nnunet_covid.training.<Name>`` (one class identity, relative imports intact).
"""
from nnunet_covid.training import *  # noqa: F401,F403
