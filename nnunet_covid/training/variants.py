"""Schedule and recipe variants of the trainers, named as nnU-Net names its own (``<Trainer>_5epochs``, ...).

Schedules: ``_5epochs``: a quick end-to-end check on a GPU; ``_tiny``: 1 epoch of 2 iterations (tests,
``nnunet-covid demo --quick``); ``_demo``: 13 epochs of 12 iterations (``nnunet-covid demo``). The
``_tiny`` and ``_demo`` variants skip the final validation after training and predict it without
test-time mirroring; see :mod:`~nnunet_covid.training.short_variants`.

CPU-sized networks for the 2D slice benchmark (``_bench2d``: :class:`~nnunet_covid.training.short_variants.Bench2D`):
``nnUNetTrainerNarrow_bench2d`` and ``BodyFineTuneTrainerNarrow_bench2d`` (nnU-Net's planned U-Net at a quarter
of its width, :mod:`~nnunet_covid.training.narrow_unet`), ``NCoVSegNetTrainerSmall_bench2d``.

Fine-tuning recipes (``recipe``: an entry of the strategy config's ``"recipes"``, see
:mod:`~nnunet_covid.training.finetune_schedule`): ``_warmup`` (linear warm-up, then the strategy's decay;
nnU-Net's ``nnUNetTrainer_warmup``), ``_warmup_lr1e3`` (nnssl's: lr 1e-3), ``_headsfirst`` (MultiTalent:
segmentation heads alone, then a whole-network warm-up), ``_unfreeze`` (the frozen encoder joins training
after K epochs). Each also as ``_tiny`` and ``_demo``, whose recipe epochs scale down with the schedule.
"""
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_covid.training.hybrid_encoder_trainer import HybridEncoderTrainer
from nnunet_covid.training.multilesion_trainers import MultiLesionPartialLabelTrainer, MultiLesionPretrainTrainer
from nnunet_covid.training.narrow_unet import NarrowUNet
from nnunet_covid.training.ncovsegnet_trainer import NCoVSegNetTrainer, NCoVSegNetTrainerSmall
from nnunet_covid.training.short_variants import Bench2D, Demo, FiveEpochs, Tiny
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
    "BodyFineTuneTrainer_warmup", "BodyFineTuneTrainer_warmup_lr1e3", "BodyFineTuneTrainer_headsfirst",
    "ContinualLearningTrainer_warmup", "ContinualLearningTrainer_headsfirst", "FrozenEncoderTrainer_unfreeze",
    "HybridEncoderTrainer_warmup", "HybridEncoderTrainer_headsfirst", "HybridEncoderTrainer_unfreeze",
    "BodyFineTuneTrainer_warmup_tiny", "BodyFineTuneTrainer_warmup_demo", "BodyFineTuneTrainer_warmup_lr1e3_tiny",
    "BodyFineTuneTrainer_warmup_lr1e3_demo", "BodyFineTuneTrainer_headsfirst_tiny",
    "BodyFineTuneTrainer_headsfirst_demo", "ContinualLearningTrainer_warmup_tiny",
    "ContinualLearningTrainer_warmup_demo", "ContinualLearningTrainer_headsfirst_tiny",
    "ContinualLearningTrainer_headsfirst_demo", "FrozenEncoderTrainer_unfreeze_tiny",
    "FrozenEncoderTrainer_unfreeze_demo", "HybridEncoderTrainer_warmup_tiny", "HybridEncoderTrainer_warmup_demo",
    "HybridEncoderTrainer_headsfirst_tiny", "HybridEncoderTrainer_headsfirst_demo",
    "HybridEncoderTrainer_unfreeze_tiny", "HybridEncoderTrainer_unfreeze_demo",
    "nnUNetTrainerNarrow_bench2d", "BodyFineTuneTrainerNarrow_bench2d", "NCoVSegNetTrainerSmall_bench2d",
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

# --- fine-tuning recipes (trainer_configs/<strategy>.json "recipes")


class BodyFineTuneTrainer_warmup(BodyFineTuneTrainer):
    recipe = "warmup"


class BodyFineTuneTrainer_warmup_tiny(Tiny, BodyFineTuneTrainer_warmup):
    pass


class BodyFineTuneTrainer_warmup_demo(Demo, BodyFineTuneTrainer_warmup):
    pass


class BodyFineTuneTrainer_warmup_lr1e3(BodyFineTuneTrainer):
    recipe = "warmup_lr1e3"


class BodyFineTuneTrainer_warmup_lr1e3_tiny(Tiny, BodyFineTuneTrainer_warmup_lr1e3):
    pass


class BodyFineTuneTrainer_warmup_lr1e3_demo(Demo, BodyFineTuneTrainer_warmup_lr1e3):
    pass


class BodyFineTuneTrainer_headsfirst(BodyFineTuneTrainer):
    recipe = "headsfirst"


class BodyFineTuneTrainer_headsfirst_tiny(Tiny, BodyFineTuneTrainer_headsfirst):
    pass


class BodyFineTuneTrainer_headsfirst_demo(Demo, BodyFineTuneTrainer_headsfirst):
    pass


class ContinualLearningTrainer_warmup(ContinualLearningTrainer):
    recipe = "warmup"


class ContinualLearningTrainer_warmup_tiny(Tiny, ContinualLearningTrainer_warmup):
    pass


class ContinualLearningTrainer_warmup_demo(Demo, ContinualLearningTrainer_warmup):
    pass


class ContinualLearningTrainer_headsfirst(ContinualLearningTrainer):
    recipe = "headsfirst"


class ContinualLearningTrainer_headsfirst_tiny(Tiny, ContinualLearningTrainer_headsfirst):
    pass


class ContinualLearningTrainer_headsfirst_demo(Demo, ContinualLearningTrainer_headsfirst):
    pass


class FrozenEncoderTrainer_unfreeze(FrozenEncoderTrainer):
    recipe = "unfreeze"


class FrozenEncoderTrainer_unfreeze_tiny(Tiny, FrozenEncoderTrainer_unfreeze):
    pass


class FrozenEncoderTrainer_unfreeze_demo(Demo, FrozenEncoderTrainer_unfreeze):
    pass


class HybridEncoderTrainer_warmup(HybridEncoderTrainer):
    recipe = "warmup"


class HybridEncoderTrainer_warmup_tiny(Tiny, HybridEncoderTrainer_warmup):
    pass


class HybridEncoderTrainer_warmup_demo(Demo, HybridEncoderTrainer_warmup):
    pass


class HybridEncoderTrainer_headsfirst(HybridEncoderTrainer):
    recipe = "headsfirst"


class HybridEncoderTrainer_headsfirst_tiny(Tiny, HybridEncoderTrainer_headsfirst):
    pass


class HybridEncoderTrainer_headsfirst_demo(Demo, HybridEncoderTrainer_headsfirst):
    pass


class HybridEncoderTrainer_unfreeze(HybridEncoderTrainer):
    recipe = "unfreeze"


class HybridEncoderTrainer_unfreeze_tiny(Tiny, HybridEncoderTrainer_unfreeze):
    pass


class HybridEncoderTrainer_unfreeze_demo(Demo, HybridEncoderTrainer_unfreeze):
    pass

# --- CPU-sized networks of the 2D slice benchmark


class nnUNetTrainerNarrow_bench2d(Bench2D, NarrowUNet, nnUNetTrainer):
    pass


class BodyFineTuneTrainerNarrow_bench2d(Bench2D, NarrowUNet, BodyFineTuneTrainer):
    pass


class NCoVSegNetTrainerSmall_bench2d(Bench2D, NCoVSegNetTrainerSmall):
    pass
