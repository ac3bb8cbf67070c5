"""nnU-Net trainers for nCoVSegNet (Liu et al., MedIA 2021) on the ``2d`` configuration.

``NCoVSegNetTrainer`` keeps nnU-Net's data pipeline and augmentation and replaces:
- the network: NCoVSegNet (ResNet50-ECA encoder, GCA, DAF, four deep-supervision heads), built in
  ``build_network_architecture`` so that ``nnUNetv2_predict`` rebuilds the same network;
- the loss: the structure loss (Eq. 6-8) on every head, summed over the heads (Eq. 5). The heads
  are upsampled to the input size as in the paper, so every deep-supervision target is the
  full-resolution segmentation (all scales 1);
- the optimiser: Adam, lr 1e-4, no weight decay, lr x0.1 once at half of the epochs (the
  released code's repeated decay after epoch 50 is not reproduced), 100 epochs of nnU-Net's 250
  iterations (pre-training on LIDC-IDRI). ``NCoVSegNetTrainerFinetune``: lr 5e-5, 50 epochs (the
  COVID stage; nnU-Net's ``checkpoint_best.pth`` plays the role of the paper's early stopping);
- the patch size: rounded up to a multiple of 32 (the encoder's stride), written back into the
  plans the trainer saves, so inference tiles with the training patch size.

ImageNet weights: set ``nnUNet_covid_imagenet_resnet50`` to a local torchvision/timm ResNet50
weight file; ``initialize`` loads it into the encoder and logs which keys loaded. Without it the
network starts from random initialisation with a warning. ``-pretrained_weights`` (the LIDC stage)
is applied by nnU-Net after ``initialize`` and overrides the ImageNet encoder.
"""
from __future__ import annotations

import math
import warnings

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager
from torch import nn
from torch.optim.lr_scheduler import _LRScheduler

from nnunet_covid.architectures.ncovsegnet import OUTPUT_STRIDE, NCoVSegNet
from nnunet_covid.core.errors import TrainerConfigError
from nnunet_covid.training.imagenet_weights import (IMAGENET_WEIGHTS_ENV, imagenet_weights_path,
                                                    load_imagenet_resnet_weights)
from nnunet_covid.training.network_wrapping import unwrap_network
from nnunet_covid.training.short_variants import ShortSchedule
from nnunet_covid.training.structure_loss import DeepSupervisedStructureLoss, StructureLoss

__all__ = ["NCoVSegNetTrainer", "NCoVSegNetTrainerFinetune", "NCoVSegNetTrainerSmall"]

NUM_HEADS = 4


class StepAtHalfLRScheduler(_LRScheduler):
    """lr = initial_lr for epochs < milestone, initial_lr * gamma afterwards; ``step(epoch)`` like nnU-Net's PolyLR."""

    def __init__(self, optimizer: torch.optim.Optimizer, initial_lr: float, milestone: int, gamma: float = 0.1):
        self.initial_lr = initial_lr
        self.milestone = milestone
        self.gamma = gamma
        self.ctr = 0
        super().__init__(optimizer, -1)

    def step(self, current_step=None):
        if current_step is None or current_step == -1:
            current_step = self.ctr
            self.ctr += 1
        lr = self.initial_lr * (self.gamma if current_step >= self.milestone else 1.0)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self._last_lr = [lr] * len(self.optimizer.param_groups)

    def get_last_lr(self):
        return self._last_lr


def round_up_to_stride(patch_size, stride: int = OUTPUT_STRIDE) -> list[int]:
    return [int(math.ceil(s / stride) * stride) for s in patch_size]


class NCoVSegNetTrainer(nnUNetTrainer):
    """nCoVSegNet with the paper's loss and optimiser; pre-training defaults (lr 1e-4, 100 epochs)."""

    #: keyword arguments of NCoVSegNet besides channels/classes (empty = the paper's ResNet50 network)
    network_kwargs: dict = {}
    #: Adam's initial learning rate and the number of epochs (x0.1 at half of them)
    learning_rate: float = 1e-4
    epochs: int = 100

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        if len(self.configuration_manager.patch_size) != 2:
            raise TrainerConfigError(f"{self.__class__.__name__} is a 2D trainer: use the '2d' configuration (got "
                                     f"'{configuration}' with patch size {self.configuration_manager.patch_size})")
        self.initial_lr = self.learning_rate
        self.weight_decay = 0.0
        self.num_epochs = self.epochs
        self._round_patch_size_to_stride(configuration)

    def _round_patch_size_to_stride(self, configuration: str) -> None:
        planned = list(self.configuration_manager.patch_size)
        patch = round_up_to_stride(planned)
        if patch != planned:
            self.configuration_manager.configuration["patch_size"] = patch
            self.plans_manager.plans["configurations"][configuration]["patch_size"] = patch
            self.print_to_log_file(f"patch size {planned} from the plans rounded up to {patch} "
                                   f"(multiple of the encoder stride {OUTPUT_STRIDE})")

    @classmethod
    def build_network_architecture(cls, plans_manager: PlansManager, configuration_manager: ConfigurationManager,
                                   num_input_channels: int, num_output_channels: int,
                                   enable_deep_supervision: bool = True) -> nn.Module:
        return NCoVSegNet(num_input_channels, num_output_channels, enable_deep_supervision, **cls.network_kwargs)

    def initialize(self):
        super().initialize()
        self._load_imagenet_encoder()

    def _load_imagenet_encoder(self) -> None:
        if self.network_kwargs:
            self.print_to_log_file(f"{self.__class__.__name__}: scaled-down encoder, random initialisation "
                                   f"(ImageNet ResNet50 weights do not fit it; {IMAGENET_WEIGHTS_ENV} is not used)")
            return
        path = imagenet_weights_path()
        if path is None:
            message = (f"{IMAGENET_WEIGHTS_ENV} is not set: the nCoVSegNet encoder starts from random "
                       "initialisation (no ImageNet weights; set it to a local torchvision/timm ResNet50 file)")
            warnings.warn(message, stacklevel=2)
            self.print_to_log_file("WARNING: " + message)
            return
        self.print_to_log_file(load_imagenet_resnet_weights(unwrap_network(self.network).encoder, path).summary())

    def _get_deep_supervision_scales(self):
        # every head is upsampled to the input size inside the network (paper, Eq. 5)
        return [[1.0, 1.0]] * NUM_HEADS if self.enable_deep_supervision else None

    def _build_loss(self):
        loss_class = DeepSupervisedStructureLoss if self.enable_deep_supervision else StructureLoss
        return loss_class(use_regions=self.label_manager.has_regions, ignore_label=self.label_manager.ignore_label)

    def configure_optimizers(self):
        optimizer = torch.optim.Adam(self.network.parameters(), lr=self.initial_lr, weight_decay=self.weight_decay)
        return optimizer, StepAtHalfLRScheduler(optimizer, self.initial_lr, milestone=self.num_epochs // 2)


class NCoVSegNetTrainerFinetune(NCoVSegNetTrainer):
    """COVID-19 stage of the two-stage transfer: lr 5e-5, 50 epochs (use with ``-pretrained_weights``)."""

    learning_rate = 5e-5
    epochs = 50


class NCoVSegNetTrainerSmall(ShortSchedule, NCoVSegNetTrainer):
    """Scaled-down nCoVSegNet for CPU demos and tests: one bottleneck per stage, bottleneck widths
    8-64 (stage outputs 32-256 channels, 2 M parameters instead of 146 M), lr 1e-3 (it starts from
    random weights), 5 epochs of 20 iterations. Same modules, loss and data pipeline as the paper
    trainer; not meant for real results."""

    network_kwargs = dict(encoder_depths=(1, 1, 1, 1), encoder_widths=(8, 16, 32, 64), stem_width=16)
    learning_rate = 1e-3
    schedule = (5, 20, 5)
