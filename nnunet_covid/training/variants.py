"""Schedule variants of every trainer, named as nnU-Net names its own (``<Trainer>_5epochs``, ...).

``_5epochs``: a quick end-to-end check on a GPU; ``_tiny``: 1 epoch of 2 iterations (tests,
``nnunet-covid demo --quick``); ``_demo``: 13 epochs of 12 iterations (``nnunet-covid demo``). The
``_tiny`` and ``_demo`` variants skip the final validation after training and predict it without
test-time mirroring; see :mod:`~nnunet_covid.training.short_variants`.
"""
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_covid.training.hybrid_encoder_trainer import HybridEncoderTrainer
from nnunet_covid.training.multilesion_trainers import MultiLesionPartialLabelTrainer, MultiLesionPretrainTrainer
from nnunet_covid.training.ncovsegnet_trainer import NCoVSegNetTrainer, NCoVSegNetTrainerSmall
from nnunet_covid.training.short_variants import Demo, FiveEpochs, Tiny
from nnunet_covid.training.transfer_trainers import BodyFineTuneTrainer, ContinualLearningTrainer, FrozenEncoderTrainer

__all__ = [
    "nnUNetTrainer_tiny", "nnUNetTrainer_demo",
    "MultiLesionPretrainTrainer_5epochs", "MultiLesionPretrainTrainer_tiny", "MultiLesionPretrainTrainer_demo",
    "MultiLesionPartialLabelTrainer_5epochs", "MultiLesionPartialLabelTrainer_tiny",
    "ContinualLearningTrainer_5epochs", "ContinualLearningTrainer_tiny", "ContinualLearningTrainer_demo",
    "BodyFineTuneTrainer_5epochs", "BodyFineTuneTrainer_tiny", "BodyFineTuneTrainer_demo",
    "FrozenEncoderTrainer_5epochs", "FrozenEncoderTrainer_tiny", "FrozenEncoderTrainer_demo",
    "HybridEncoderTrainer_5epochs", "HybridEncoderTrainer_tiny", "HybridEncoderTrainer_demo",
    "NCoVSegNetTrainer_5epochs", "NCoVSegNetTrainerSmall_tiny", "NCoVSegNetTrainerSmall_demo",
]


class nnUNetTrainer_tiny(Tiny, nnUNetTrainer):
    pass


class nnUNetTrainer_demo(Demo, nnUNetTrainer):
    pass


class MultiLesionPretrainTrainer_5epochs(FiveEpochs, MultiLesionPretrainTrainer):
    pass


class MultiLesionPretrainTrainer_tiny(Tiny, MultiLesionPretrainTrainer):
    pass


class MultiLesionPretrainTrainer_demo(Demo, MultiLesionPretrainTrainer):
    pass


class MultiLesionPartialLabelTrainer_5epochs(FiveEpochs, MultiLesionPartialLabelTrainer):
    pass


class MultiLesionPartialLabelTrainer_tiny(Tiny, MultiLesionPartialLabelTrainer):
    pass


class ContinualLearningTrainer_5epochs(FiveEpochs, ContinualLearningTrainer):
    pass


class ContinualLearningTrainer_tiny(Tiny, ContinualLearningTrainer):
    pass


class ContinualLearningTrainer_demo(Demo, ContinualLearningTrainer):
    pass


class BodyFineTuneTrainer_5epochs(FiveEpochs, BodyFineTuneTrainer):
    pass


class BodyFineTuneTrainer_tiny(Tiny, BodyFineTuneTrainer):
    pass


class BodyFineTuneTrainer_demo(Demo, BodyFineTuneTrainer):
    pass


class FrozenEncoderTrainer_5epochs(FiveEpochs, FrozenEncoderTrainer):
    pass


class FrozenEncoderTrainer_tiny(Tiny, FrozenEncoderTrainer):
    pass


class FrozenEncoderTrainer_demo(Demo, FrozenEncoderTrainer):
    pass


class HybridEncoderTrainer_5epochs(FiveEpochs, HybridEncoderTrainer):
    pass


class HybridEncoderTrainer_tiny(Tiny, HybridEncoderTrainer):
    pass


class HybridEncoderTrainer_demo(Demo, HybridEncoderTrainer):
    pass


class NCoVSegNetTrainer_5epochs(FiveEpochs, NCoVSegNetTrainer):
    pass


class NCoVSegNetTrainerSmall_tiny(Tiny, NCoVSegNetTrainerSmall):
    pass


class NCoVSegNetTrainerSmall_demo(Demo, NCoVSegNetTrainerSmall):
    pass
