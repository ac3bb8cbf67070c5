"""Trainer variants for ``nnunet-covid demo`` (nnU-Net's variant pattern, one tiny subclass each).

``*_demo``: 13 epochs of 12 iterations, enough for the synthetic demo data to show differences
between strategies on 2 CPU cores. Like the ``*_tiny`` variants (used by ``demo --quick``), they
skip the fold's final validation right after training because the demo predicts the held-out
cases with ``nnUNetv2_predict``; ``nnUNetv2_train ... --val`` still runs it.
"""
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_covid.training.hybrid_encoder_trainer import HybridEncoderTrainer
from nnunet_covid.training.multilesion_trainers import MultiLesionPretrainTrainer
from nnunet_covid.training.ncovsegnet_trainer import NCoVSegNetTrainerSmall
from nnunet_covid.training.short_variants import Tiny
from nnunet_covid.training.transfer_trainers import (BodyFineTuneTrainer, ContinualLearningTrainer,
                                                     FrozenEncoderTrainer)

__all__ = ["nnUNetTrainer_tiny", "nnUNetTrainer_demo", "MultiLesionPretrainTrainer_demo",
           "ContinualLearningTrainer_demo", "BodyFineTuneTrainer_demo", "FrozenEncoderTrainer_demo",
           "HybridEncoderTrainer_demo", "NCoVSegNetTrainerSmall_tiny", "NCoVSegNetTrainerSmall_demo"]


class DemoSchedule(Tiny):
    """13 epochs of 12 training and 2 validation iterations; no final validation right after training."""

    schedule = (13, 12, 2)


class nnUNetTrainer_tiny(Tiny, nnUNetTrainer):
    pass


class nnUNetTrainer_demo(DemoSchedule, nnUNetTrainer):
    pass


class MultiLesionPretrainTrainer_demo(DemoSchedule, MultiLesionPretrainTrainer):
    pass


class ContinualLearningTrainer_demo(DemoSchedule, ContinualLearningTrainer):
    pass


class BodyFineTuneTrainer_demo(DemoSchedule, BodyFineTuneTrainer):
    pass


class FrozenEncoderTrainer_demo(DemoSchedule, FrozenEncoderTrainer):
    pass


class HybridEncoderTrainer_demo(DemoSchedule, HybridEncoderTrainer):
    pass


class NCoVSegNetTrainerSmall_tiny(Tiny, NCoVSegNetTrainerSmall):
    pass


class NCoVSegNetTrainerSmall_demo(DemoSchedule, NCoVSegNetTrainerSmall):
    pass
