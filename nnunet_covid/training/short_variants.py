"""Schedule mixins for nnU-Net-style short trainer variants (``<Trainer>_5epochs``, ``<Trainer>_tiny``).

Use as the first base: ``class XTrainer_tiny(Tiny, XTrainer): pass``.
"""
import torch


class FiveEpochs:
    """5 epochs of nnU-Net's usual 250 iterations."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 5


class Tiny:
    """1 epoch of 2 training iterations and 1 validation iteration (tests and smoke runs).

    The fold's final validation is skipped right after training (tests predict with
    ``nnUNetv2_predict`` instead); ``nnUNetv2_train ... --val`` still runs it.
    """

    schedule = (1, 2, 1)  # epochs, training iterations per epoch, validation iterations per epoch

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs, self.num_iterations_per_epoch, self.num_val_iterations_per_epoch = self.schedule

    def on_train_end(self):
        super().on_train_end()
        self.trained_in_this_process = True

    def perform_actual_validation(self, save_probabilities: bool = False):
        if getattr(self, "trained_in_this_process", False):
            self.print_to_log_file("tiny variant: final validation skipped after training (run --val for it)")
            return
        super().perform_actual_validation(save_probabilities)
