"""HybridEncoderUNet: plans-style construction, frozen adapted encoder, fusion wiring, plain U-Net checkpoint mapping."""
import pytest
import torch
from dynamic_network_architectures.architectures.unet import PlainConvUNet, ResidualEncoderUNet
from torch import nn

from nnunet_covid.architectures.hybrid_encoder_unet import (HybridEncoderUNet, HybridResidualEncoderUNet,
                                                            hybrid_state_from_plain_unet)
from nnunet_covid.training.hybrid_encoder_trainer import load_plain_unet_into_hybrid
from nnunet_covid.core.errors import CheckpointError

torch.set_num_threads(1)


def plans_kwargs(dim: int = 3, features=(8, 16, 32), **extra) -> dict:
    conv, norm = (nn.Conv3d, nn.InstanceNorm3d) if dim == 3 else (nn.Conv2d, nn.InstanceNorm2d)
    n = len(features)
    return dict(input_channels=1, n_stages=n, features_per_stage=list(features), conv_op=conv,
                kernel_sizes=[[3] * dim] * n, strides=[[1] * dim] + [[2] * dim] * (n - 1), n_conv_per_stage=[2] * n,
                num_classes=3, n_conv_per_stage_decoder=[2] * (n - 1), conv_bias=True, norm_op=norm,
                norm_op_kwargs={"eps": 1e-5, "affine": True}, nonlin=nn.LeakyReLU, nonlin_kwargs={"inplace": True},
                **{"deep_supervision": True, **extra})


def fresh(cls, **kwargs):
    network = cls(**kwargs)
    network.apply(cls.initialize)
    return network


@pytest.mark.parametrize("dim, size", [(3, (8, 16, 16)), (2, (32, 24))])
def test_outputs_with_and_without_deep_supervision(dim, size):
    torch.manual_seed(0)
    network = fresh(HybridEncoderUNet, **plans_kwargs(dim))
    assert len(network.fusions) == 3  # two skip levels + bottleneck
    assert [f.channels for f in network.fusions] == [8, 16, 32]
    outputs = network(torch.randn(2, 1, *size))
    assert [tuple(o.shape[2:]) for o in outputs] == [size, tuple(s // 2 for s in size)]
    network.decoder.deep_supervision = False
    output = network(torch.randn(2, 1, *size))
    assert isinstance(output, torch.Tensor) and output.shape == (2, 3, *size)
    assert set(network.state_dict()) == set(fresh(HybridEncoderUNet, **plans_kwargs(dim)).state_dict())


def test_adapted_encoder_is_frozen_and_keeps_no_graph():
    torch.manual_seed(0)
    network = fresh(HybridEncoderUNet, **plans_kwargs())
    captured = []
    network.adapted_encoder.register_forward_hook(lambda m, i, o: captured.extend(o))
    sum(o.square().mean() for o in network(torch.randn(1, 1, 8, 16, 16))).backward()
    assert captured and all(t.grad_fn is None and not t.requires_grad for t in captured)
    assert all(not p.requires_grad and p.grad is None for p in network.adapted_encoder.parameters())
    for part in (network.dedicated_encoder, network.fusions, network.decoder.stages, network.decoder.seg_layers):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters())
    assert network.decoder.encoder is network.dedicated_encoder


def test_adapted_encoder_stays_in_eval_mode():
    torch.manual_seed(0)
    network = fresh(HybridEncoderUNet, **plans_kwargs(dropout_op=nn.Dropout3d, dropout_op_kwargs={"p": 0.5}))
    network.train()
    assert not network.adapted_encoder.training and network.dedicated_encoder.training
    x = torch.randn(1, 1, 8, 16, 16)
    with torch.no_grad():
        first, second = network.adapted_encoder(x)[-1], network.adapted_encoder(x)[-1]
    assert torch.equal(first, second)  # dropout inactive


def test_optimizer_steps_leave_frozen_parameters_bitwise_unchanged():
    torch.manual_seed(0)
    network = fresh(HybridEncoderUNet, **plans_kwargs())
    before = {k: v.clone() for k, v in network.state_dict().items()}
    optimizer = torch.optim.SGD([p for p in network.parameters() if p.requires_grad], 0.01, momentum=0.99,
                                nesterov=True, weight_decay=3e-5)
    for _ in range(2):
        optimizer.zero_grad()
        sum(o.square().mean() for o in network(torch.randn(2, 1, 8, 16, 16))).backward()
        optimizer.step()
    after = network.state_dict()
    for key, value in before.items():
        if key.startswith("adapted_encoder."):
            assert torch.equal(after[key], value), key
        elif key.endswith("weight"):
            assert not torch.equal(after[key], value), key


def test_plain_checkpoint_fills_adapted_encoder_and_decoder_only():
    torch.manual_seed(0)
    plain = fresh(PlainConvUNet, **plans_kwargs())
    hybrid = fresh(HybridEncoderUNet, **plans_kwargs())
    initial = {k: v.clone() for k, v in hybrid.state_dict().items()}
    report = load_plain_unet_into_hybrid(hybrid, {"network_weights": plain.state_dict()})
    assert not report.reinitialised
    plain_state, state = plain.state_dict(), hybrid.state_dict()
    for key, value in state.items():
        if key.startswith("adapted_encoder."):
            assert torch.equal(value, plain_state["encoder." + key[len("adapted_encoder."):]]), key
        elif key.startswith(("dedicated_encoder.", "decoder.encoder.", "fusions.")):
            assert torch.equal(value, initial[key]), key
        else:
            assert torch.equal(value, plain_state[key]), key
    load_plain_unet_into_hybrid(hybrid := fresh(HybridEncoderUNet, **plans_kwargs()), plain.state_dict(),
                                decoder_init="random")
    assert not torch.equal(hybrid.decoder.stages[0].convs[0].conv.weight, plain.decoder.stages[0].convs[0].conv.weight)


def resenc_kwargs(**extra) -> dict:
    kwargs = plans_kwargs(**extra)
    kwargs["n_blocks_per_stage"] = kwargs.pop("n_conv_per_stage")
    return kwargs


@pytest.mark.parametrize("plain_class, hybrid_class, kwargs", [(PlainConvUNet, HybridEncoderUNet, plans_kwargs),
                                                               (ResidualEncoderUNet, HybridResidualEncoderUNet,
                                                                resenc_kwargs)])
def test_hybrid_with_both_encoders_pretrained_reproduces_the_plain_unet(plain_class, hybrid_class, kwargs):
    """X_de == X_ad makes every fusion the identity (a + b = 1): the hybrid must equal the plain network."""
    torch.manual_seed(0)
    plain = fresh(plain_class, **kwargs(deep_supervision=False))
    hybrid = fresh(hybrid_class, **kwargs(deep_supervision=False))
    for module in plain.modules():  # ResEnc's initialisation zeroes the last norm of each block: make it non-trivial
        if isinstance(module, nn.InstanceNorm3d):
            nn.init.normal_(module.weight)
    load_plain_unet_into_hybrid(hybrid, plain.state_dict(), dedicated_encoder_init="pretrained")
    x = torch.randn(2, 1, 8, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(hybrid(x), plain(x), atol=1e-5, rtol=1e-5)


def test_other_label_count_reinitialises_only_the_segmentation_heads():
    plain = fresh(PlainConvUNet, **{**plans_kwargs(), "num_classes": 5})
    report = load_plain_unet_into_hybrid(fresh(HybridEncoderUNet, **plans_kwargs()), plain.state_dict())
    assert report.reinitialised and all(".seg_layers." in k for k in report.reinitialised)


def test_incompatible_checkpoint_lists_every_problem_in_one_error():
    plain_state = fresh(PlainConvUNet, **plans_kwargs(features=(8, 16, 24))).state_dict()
    for alias in ("conv.weight", "all_modules.0.weight"):
        del plain_state[f"encoder.stages.0.0.convs.0.{alias}"]
    with pytest.raises(CheckpointError) as error:
        load_plain_unet_into_hybrid(fresh(HybridEncoderUNet, **plans_kwargs()), plain_state)
    message = str(error.value)
    assert "missing in checkpoint: adapted_encoder.stages.0.0.convs.0.conv.weight" in message
    assert "shape mismatch: adapted_encoder.stages.2.0.convs.0.conv.weight: checkpoint (24, 16, 3, 3, 3)" in message
    assert "shape mismatch: decoder.transpconvs.0.weight" in message
    assert "encoder.* " in message  # says where hybrid keys are read from


def test_mapping_never_copies_the_plain_decoders_encoder_reference():
    state = {"encoder.a": torch.zeros(1), "decoder.encoder.a": torch.ones(1), "decoder.stages.b": torch.ones(2)}
    assert hybrid_state_from_plain_unet(state).keys() == {"adapted_encoder.a", "decoder.stages.b"}
    assert torch.equal(hybrid_state_from_plain_unet(state, dedicated_encoder_init="pretrained")["decoder.encoder.a"],
                       torch.zeros(1))
    with pytest.raises(ValueError, match="decoder_init"):
        hybrid_state_from_plain_unet(state, decoder_init="frozen")
