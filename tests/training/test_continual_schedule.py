"""The continual-learning schedule continues nnU-Net's pre-training poly curve (reference: nnU-Net's PolyLRScheduler)."""
import pytest
import torch
from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler

from nnunet_covid.training.continual_schedule import ContinuedPolyLRScheduler


def _optimizer():
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)


def _pretraining_lr(lr0, epochs, epoch):
    """lr that nnU-Net's own pre-training scheduler sets at ``epoch``."""
    optimizer = _optimizer()
    PolyLRScheduler(optimizer, lr0, epochs).step(epoch)
    return optimizer.param_groups[0]["lr"]


@pytest.mark.parametrize("lr0,epochs,fraction,finetune_epochs", [(0.01, 1000, 0.5, 250), (0.02, 100, 0.3, 7)])
def test_first_finetune_epoch_gets_the_pretraining_lr_at_the_resume_epoch(lr0, epochs, fraction, finetune_epochs):
    optimizer = _optimizer()
    scheduler = ContinuedPolyLRScheduler(optimizer, lr0, epochs, fraction * epochs, finetune_epochs)
    scheduler.step(0)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(_pretraining_lr(lr0, epochs, fraction * epochs), rel=1e-12)
    assert optimizer.param_groups[0]["lr"] < lr0  # no restart at the initial lr


def test_schedule_follows_the_pretraining_curve_and_decays_to_zero():
    optimizer = _optimizer()
    scheduler = ContinuedPolyLRScheduler(optimizer, 0.01, 1000, 500, 250)
    lrs = []
    for epoch in range(250):
        scheduler.step(epoch)
        lrs.append(optimizer.param_groups[0]["lr"])
        # fine-tune epoch j maps onto pre-training epoch 500 + 2 j
        assert lrs[-1] == pytest.approx(_pretraining_lr(0.01, 1000, 500 + 2 * epoch), rel=1e-12)
    assert all(a > b for a, b in zip(lrs, lrs[1:]))
    assert scheduler.lr_at(250) == 0.0
    assert scheduler.lr_at(0) == lrs[0]


def test_step_without_argument_counts_epochs_like_nnunet():
    optimizer = _optimizer()
    scheduler = ContinuedPolyLRScheduler(optimizer, 0.01, 10, 5, 5)  # the constructor already stepped epoch 0
    scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(_pretraining_lr(0.01, 10, 6))


@pytest.mark.parametrize("resume,finetune", [(10, 5), (-1, 5), (5, 0)])
def test_invalid_schedules_are_refused(resume, finetune):
    with pytest.raises(ValueError):
        ContinuedPolyLRScheduler(_optimizer(), 0.01, 10, resume, finetune)
