"""CPU-sized nnU-Net U-Net: the planned network with every stage narrower.

Use as the first base of a trainer that builds nnU-Net's own U-Net from the plans
(``class nnUNetTrainerNarrow(NarrowUNet, nnUNetTrainer): pass``; transfer trainers too). The plans
keep their patch size, stages, kernels and strides; only ``features_per_stage`` is divided by
:attr:`NarrowUNet.width_divisor` (at least :data:`MIN_FEATURES`). nnU-Net rebuilds the network with
the trainer's ``build_network_architecture`` in ``nnUNetv2_predict`` too, so the narrow network is
predicted with the weights it trained. For CPU benchmarks and demos; not meant for real results.
"""
from __future__ import annotations

from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager
from torch import nn

MIN_FEATURES = 4


class NarrowUNet:
    """The plans' U-Net with ``features_per_stage`` divided by ``width_divisor`` (4: about 1/16 of the FLOPs)."""

    width_divisor = 4

    @classmethod
    def build_network_architecture(cls, plans_manager: PlansManager, configuration_manager: ConfigurationManager,
                                   num_input_channels: int, num_output_channels: int,
                                   enable_deep_supervision: bool = True) -> nn.Module:
        kwargs = dict(configuration_manager.network_arch_init_kwargs)
        kwargs["features_per_stage"] = [max(MIN_FEATURES, int(f) // cls.width_divisor)
                                        for f in kwargs["features_per_stage"]]
        return get_network_from_plans(configuration_manager.network_arch_class_name, kwargs,
                                      configuration_manager.network_arch_init_kwargs_req_import, num_input_channels,
                                      num_output_channels, allow_init=True, deep_supervision=enable_deep_supervision)
