"""Selective Fusion (REFERENCE 1.2): weights sum to 1, equations against a hand-written reference, gradients."""
import pytest
import torch
import torch.nn.functional as F

from nnunet_covid.architectures.selective_fusion import SelectiveFusion

torch.set_num_threads(1)


def reference_fusion(module: SelectiveFusion, x_de: torch.Tensor, x_ad: torch.Tensor) -> torch.Tensor:
    """X_sf of the paper's equations, written out with the module's parameters."""
    s = (x_de + x_ad).flatten(2).mean(-1)
    v = s @ module.squeeze.weight.T
    v = (v - v.mean(-1, keepdim=True)) / torch.sqrt(v.var(-1, unbiased=False, keepdim=True) + module.norm.eps)
    z = F.leaky_relu(v * module.norm.weight + module.norm.bias, 0.01)
    ea, eb = torch.exp(z @ module.select_dedicated.weight.T), torch.exp(z @ module.select_adapted.weight.T)
    a, b = ea / (ea + eb), eb / (ea + eb)
    shape = (*a.shape, *([1] * (x_de.ndim - 2)))
    return a.view(shape) * x_de + b.view(shape) * x_ad


@pytest.mark.parametrize("spatial", [(6, 7), (4, 5, 6)])
def test_weights_sum_to_one_and_output_matches_reference(spatial):
    torch.manual_seed(0)
    fusion = SelectiveFusion(32, reduction=16)
    torch.nn.init.normal_(fusion.norm.weight)
    torch.nn.init.normal_(fusion.norm.bias)
    x_de, x_ad = torch.randn(3, 32, *spatial), torch.randn(3, 32, *spatial) * 2 + 1
    a, b = fusion.fusion_weights(x_de, x_ad)
    assert a.shape == b.shape == (3, 32)
    torch.testing.assert_close(a + b, torch.ones(3, 32))
    assert (a > 0).all() and (b > 0).all()
    torch.testing.assert_close(fusion(x_de, x_ad), reference_fusion(fusion, x_de, x_ad))


def test_selection_depends_on_the_input():
    """The pooled-vector normalisation is not degenerate: different inputs give different a."""
    torch.manual_seed(1)
    fusion = SelectiveFusion(64)
    a1, _ = fusion.fusion_weights(torch.randn(1, 64, 5, 5, 5), torch.randn(1, 64, 5, 5, 5))
    a2, _ = fusion.fusion_weights(torch.randn(1, 64, 5, 5, 5) * 3, torch.randn(1, 64, 5, 5, 5) - 2)
    assert (a1 - a2).abs().max() > 1e-3


def test_identical_inputs_pass_through():
    x = torch.randn(2, 16, 4, 4, 4)
    torch.testing.assert_close(SelectiveFusion(16)(x, x.clone()), x)


def test_gradients_reach_both_selection_matrices_and_inputs():
    torch.manual_seed(2)
    fusion = SelectiveFusion(48, reduction=16)
    x_de = torch.randn(2, 48, 4, 6, 6, requires_grad=True)
    x_ad = torch.randn(2, 48, 4, 6, 6, requires_grad=True)
    (fusion(x_de, x_ad) * torch.randn(2, 48, 4, 6, 6)).sum().backward()
    for name in ("squeeze", "select_dedicated", "select_adapted"):
        grad = getattr(fusion, name).weight.grad
        assert grad is not None and grad.abs().sum() > 0, name
    assert x_de.grad.abs().sum() > 0 and x_ad.grad.abs().sum() > 0


@pytest.mark.parametrize("channels, hidden", [(32, 8), (128, 8), (320, 20)])
def test_hidden_width_is_channels_over_r_with_lower_bound(channels, hidden):
    assert SelectiveFusion(channels, reduction=16, min_channels=8).hidden_channels == hidden


def test_bad_inputs_are_rejected():
    fusion = SelectiveFusion(8)
    with pytest.raises(ValueError, match="differ in shape"):
        fusion(torch.zeros(1, 8, 4, 4), torch.zeros(1, 8, 4, 5))
    with pytest.raises(ValueError, match="built for 8 channels"):
        fusion(torch.zeros(1, 4, 4, 4), torch.zeros(1, 4, 4, 4))
