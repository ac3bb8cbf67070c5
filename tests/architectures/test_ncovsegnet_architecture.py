"""NCoVSegNet: output shapes, deep-supervision heads and resolutions, the paper's ResNet50-ECA layout."""
from __future__ import annotations

import pytest
import torch
from timm.layers import EcaModule
from timm.models.resnet import Bottleneck

from nnunet_covid.architectures import NCoVSegNet
from nnunet_covid.architectures.ncovsegnet_modules import GCA

torch.set_num_threads(1)

TINY = dict(encoder_depths=(1, 1, 1, 1), encoder_widths=(8, 16, 32, 64), stem_width=16)


@pytest.fixture(scope="module")
def paper_network():
    torch.manual_seed(0)
    return NCoVSegNet(1, 2, deep_supervision=True).eval()


def head_input_sizes(network, x):
    """Spatial size of the feature map entering each segmentation head."""
    sizes = []
    hooks = [head.register_forward_hook(lambda m, inp, out: sizes.append(tuple(inp[0].shape[2:])))
             for head in network.decoder.seg_layers]
    with torch.no_grad():
        network(x)
    for h in hooks:
        h.remove()
    return sizes


@pytest.mark.parametrize("size", [(64, 64), (96, 160), (224, 32)])
@pytest.mark.parametrize("num_classes", [1, 2, 4])
def test_output_shapes_for_sizes_and_class_counts(size, num_classes):
    network = NCoVSegNet(1, num_classes, deep_supervision=True, **TINY).eval()
    x = torch.randn(2, 1, *size)
    with torch.no_grad():
        outputs = network(x)
        assert isinstance(outputs, list) and len(outputs) == 4
        assert all(o.shape == (2, num_classes, *size) for o in outputs)
        network.decoder.deep_supervision = False
        single = network(x)
    assert isinstance(single, torch.Tensor) and single.shape == (2, num_classes, *size)
    # inference output is the DAF1 head, the first deep-supervision output
    torch.testing.assert_close(single, outputs[0])


def test_heads_sit_at_quarter_to_one_32nd_resolution():
    network = NCoVSegNet(1, 2, deep_supervision=True, **TINY).eval()
    assert head_input_sizes(network, torch.randn(1, 1, 128, 192)) == [(32, 48), (16, 24), (8, 12), (4, 6)]


def test_sizes_that_are_not_multiples_of_32_are_padded_and_cropped():
    network = NCoVSegNet(1, 3, deep_supervision=False, **TINY).eval()
    x = torch.randn(1, 1, 100, 70)
    with torch.no_grad():
        out = network(x)
        assert out.shape == (1, 3, 100, 70)
        # the prediction is the centre crop of the zero-padded 128 x 96 input's prediction
        padded = torch.nn.functional.pad(x, (13, 13, 14, 14))
        torch.testing.assert_close(out, network(padded)[:, :, 14:114, 13:83])
    with pytest.raises(ValueError, match="2D"):
        network(torch.randn(1, 1, 8, 32, 32))


def test_head_parameters_exist_with_and_without_deep_supervision():
    with_ds = NCoVSegNet(1, 2, deep_supervision=True, **TINY)
    without_ds = NCoVSegNet(1, 2, deep_supervision=False, **TINY)
    assert with_ds.state_dict().keys() == without_ds.state_dict().keys()
    without_ds.load_state_dict(with_ds.state_dict(), strict=True)
    assert sum(k.startswith("decoder.seg_layers.") and k.endswith("weight") for k in with_ds.state_dict()) == 4


def test_gradients_reach_every_head_only_with_deep_supervision():
    network = NCoVSegNet(1, 2, deep_supervision=True, **TINY)
    sum(o.mean() for o in network(torch.randn(2, 1, 64, 64))).backward()
    assert all(h.weight.grad is not None and h.weight.grad.abs().sum() > 0 for h in network.decoder.seg_layers)
    network.zero_grad(set_to_none=True)
    network.decoder.deep_supervision = False
    network(torch.randn(2, 1, 64, 64)).mean().backward()
    grads = [h.weight.grad for h in network.decoder.seg_layers]
    assert grads[0] is not None and all(g is None for g in grads[1:])


def test_paper_network_is_resnet50_with_eca_in_every_bottleneck(paper_network):
    encoder = paper_network.encoder
    stages = [encoder.layer1, encoder.layer2, encoder.layer3, encoder.layer4]
    assert [len(s) for s in stages] == [3, 4, 6, 3]
    blocks = [b for s in stages for b in s]
    assert all(isinstance(b, Bottleneck) and isinstance(b.se, EcaModule) for b in blocks)
    # ECA paper's adaptive kernel: k = odd(|(log2 C + 1) / 2|) -> 5 for 256..1024 channels, 7 for 2048
    assert [s[0].se.conv.kernel_size[0] for s in stages] == [5, 5, 5, 7]
    assert [s[-1].conv3.out_channels for s in stages] == [256, 512, 1024, 2048]
    assert encoder.conv1.in_channels == 1
    decoder = paper_network.decoder
    gcas = [decoder.gca1, decoder.gca2, decoder.gca3, decoder.gca4]
    assert all(isinstance(g, GCA) for g in gcas)
    assert [len(g.branches) for g in gcas] == [3, 3, 3, 2]  # GCA4 has no 7x7 branch
    assert [g.residual[0].out_channels for g in gcas] == [128, 256, 512, 1024]
    assert [h.in_channels for h in decoder.seg_layers] == [128, 256, 512, 1024]


def test_paper_network_forward_with_deep_supervision(paper_network):
    x = torch.randn(1, 1, 64, 96)
    assert head_input_sizes(paper_network, x) == [(16, 24), (8, 12), (4, 6), (2, 3)]
    with torch.no_grad():
        outputs = paper_network(x)
    assert [tuple(o.shape) for o in outputs] == [(1, 2, 64, 96)] * 4


def test_fixed_eca_kernel_reproduces_released_code():
    network = NCoVSegNet(1, 2, eca_kernel_size=3, **TINY)
    kernels = {m.conv.kernel_size[0] for m in network.modules() if isinstance(m, EcaModule)}
    assert kernels == {3}
