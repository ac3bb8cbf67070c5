"""Marginal (partial-label) Dice + CE: reduces to nnU-Net's loss when fully labelled, ignores unannotated labels."""
import pytest
import torch
from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss

from nnunet_covid.core.errors import PartialLabelError
from nnunet_covid.training.partial_label_loss import MarginalDiceCELoss

torch.set_num_threads(1)


def _nnunet_loss(batch_dice):
    return DC_and_CE_loss({"batch_dice": batch_dice, "smooth": 1e-5, "do_bg": False, "ddp": False}, {}, weight_ce=1,
                          weight_dice=1, ignore_label=None, dice_class=MemoryEfficientSoftDiceLoss)


def _data(seed=0, shape=(2, 3, 4, 8, 8)):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(shape, generator=generator)
    target = torch.randint(0, shape[1], (shape[0], 1, *shape[2:]), generator=generator).float()
    return logits, target


@pytest.mark.parametrize("batch_dice", [True, False])
def test_fully_annotated_cases_give_nnunets_dice_ce(batch_dice):
    logits, target = _data()
    loss = MarginalDiceCELoss(batch_dice=batch_dice)
    loss.annotated = torch.ones(2, 3, dtype=torch.bool)
    assert loss(logits, target).item() == pytest.approx(_nnunet_loss(batch_dice)(logits, target).item(), rel=1e-5)
    loss.annotated = None  # no mask: everything annotated
    assert loss(logits, target).item() == pytest.approx(_nnunet_loss(batch_dice)(logits, target).item(), rel=1e-5)


@pytest.mark.parametrize("batch_dice", [True, False])
def test_unannotated_label_predicted_on_background_costs_nothing(batch_dice):
    """Case 0's source annotates label 1 only: an effusion (label 2) it labels 0 must not be taught as background."""
    logits, target = _data(seed=1)
    target[0] = (target[0] == 1).float()  # case 0 only has labels {0, 1}
    effusion = torch.zeros_like(target[0, 0], dtype=torch.bool)
    effusion[1:3, 2:6, 2:6] = True
    target[0, 0][effusion] = 0
    predicts_effusion = logits.clone()
    predicts_effusion[0, 2][effusion] = 8.0
    predicts_effusion[0, 0][effusion] = -8.0
    predicts_background = predicts_effusion.clone()  # same confidence, on background instead of effusion
    predicts_background[0, 0][effusion], predicts_background[0, 2][effusion] = 8.0, -8.0

    loss = MarginalDiceCELoss(batch_dice=batch_dice)
    loss.annotated = torch.tensor([[True, True, False], [True, True, True]])
    assert loss(predicts_effusion, target).item() == pytest.approx(loss(predicts_background, target).item(), rel=1e-6)
    # nnU-Net's loss punishes the effusion prediction: the test can fail
    nnunet = _nnunet_loss(batch_dice)
    assert nnunet(predicts_effusion, target).item() > nnunet(predicts_background, target).item() + 1e-3

    # ... while an annotated label is still taught: predicting label 1 there (not in the target) costs more
    predicts_tumour = predicts_background.clone()
    predicts_tumour[0, 1][effusion], predicts_tumour[0, 0][effusion] = 8.0, -8.0
    assert loss(predicts_tumour, target).item() > loss(predicts_background, target).item() + 1e-3


def test_no_gradient_separates_background_from_unannotated_labels():
    logits, target = _data(seed=2)
    target[0] = (target[0] == 1).float()
    logits.requires_grad_(True)
    loss = MarginalDiceCELoss(batch_dice=False)
    loss.annotated = torch.tensor([[True, True, False], [True, True, True]])
    loss(logits, target).backward()
    # for case 0 only the merged background (0 and 2 together) competes with label 1:
    # the loss depends on logits 0 and 2 only through their logsumexp, so d/dlogit0 / p0 == d/dlogit2 / p2
    probs = torch.softmax(logits.detach(), 1)[0]
    grad = logits.grad[0]
    assert torch.allclose(grad[0] * probs[2], grad[2] * probs[0], atol=1e-9)


def test_deep_supervision_reuses_the_annotation_mask():
    loss = MarginalDiceCELoss(batch_dice=False)
    loss.annotated = torch.tensor([[True, False, True], [True, True, True]])
    wrapped = DeepSupervisionWrapper(loss, [0.6, 0.4])
    (logits_a, target_a), (logits_b, target_b) = _data(3), _data(4, shape=(2, 3, 2, 4, 4))
    target_a[0][target_a[0] == 1] = 0
    target_b[0][target_b[0] == 1] = 0
    expected = 0.6 * loss(logits_a, target_a) + 0.4 * loss(logits_b, target_b)
    assert wrapped([logits_a, logits_b], [target_a, target_b]).item() == pytest.approx(expected.item())


def test_target_with_an_unannotated_label_is_an_error():
    logits, target = _data()
    target[0, 0, 0, 0, 0] = 2
    loss = MarginalDiceCELoss(batch_dice=True)
    loss.annotated = torch.tensor([[True, True, False], [True, True, True]])
    with pytest.raises(PartialLabelError, match="does not annotate"):
        loss(logits, target)
