"""One mechanism for nnU-Net-style schedule variants: :class:`ShortSchedule` and its presets.

Use a preset as the first base: ``class XTrainer_tiny(Tiny, XTrainer): pass`` (see
:mod:`~nnunet_covid.training.variants`). ``schedule`` is (epochs, training iterations per epoch,
validation iterations per epoch); ``None`` keeps the trainer's own value.
"""
from __future__ import annotations

import torch


class ShortSchedule:
    """Sets the schedule after the trainer's own ``__init__``; optionally skips the final validation after training.

    ``skip_final_validation``: the fold's final validation is skipped right after training (tests, the
    demo and studies run it separately with ``nnUNetv2_train ... --val``, which still runs it).
    ``validation_mirroring``: False predicts the final validation without test-time mirroring.
    """

    schedule: tuple[int | None, int | None, int | None] = (None, None, None)
    skip_final_validation = False
    validation_mirroring = True

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        epochs, iterations, val_iterations = self.schedule
        self.num_epochs = epochs or self.num_epochs
        self.num_iterations_per_epoch = iterations or self.num_iterations_per_epoch
        self.num_val_iterations_per_epoch = val_iterations or self.num_val_iterations_per_epoch

    def on_train_end(self):
        super().on_train_end()
        self.trained_in_this_process = True

    def perform_actual_validation(self, save_probabilities: bool = False):
        if self.skip_final_validation and getattr(self, "trained_in_this_process", False):
            self.print_to_log_file(f"{type(self).__name__}: final validation skipped after training "
                                   "(nnUNetv2_train ... --val runs it)")
            return
        if not self.validation_mirroring:
            self.inference_allowed_mirroring_axes = None
        super().perform_actual_validation(save_probabilities)


class FiveEpochs(ShortSchedule):
    """5 epochs of nnU-Net's usual 250 iterations."""

    schedule = (5, None, None)


class Tiny(ShortSchedule):
    """1 epoch of 2 training iterations and 1 validation iteration (tests and smoke runs)."""

    schedule = (1, 2, 1)
    skip_final_validation = True
    validation_mirroring = False


class Demo(ShortSchedule):
    """13 epochs of 12 training and 2 validation iterations: the CPU demo's budget."""

    schedule = (13, 12, 2)
    skip_final_validation = True
    validation_mirroring = False


class Bench2D(ShortSchedule):
    """The 2D slice benchmark's CPU budget (``benchmarks/bench_semiseg_2d.py``): 10 epochs of 10 training
    iterations and 1 validation iteration; the fold's final validation runs right after training
    (no second process), without test-time mirroring."""

    schedule = (10, 10, 1)
    validation_mirroring = False
