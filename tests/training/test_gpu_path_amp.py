"""Mixed precision: our losses and attention modules under autocast, as nnU-Net trains on a GPU.

nnU-Net runs the forward pass and the loss inside ``torch.autocast`` (fp16 on CUDA). On the CPU autocast
uses bfloat16 (8 bits of mantissa: round-to-nearest has relative error <= u = 2**-8). Every check compares
the autocast result with the float32 one on the same inputs, with a tolerance that holds on any CPU:

- losses (structure loss, marginal partial-label Dice + CE) compute in float32 internally, so the only
  bf16 steps are rounding the logits (IEEE round-to-nearest-even: the same bits on every processor) and
  storing the gradient in bf16 (each entry within u of itself, so within u = 0.4 % of the largest entry;
  checked at 1 %). Value within 1e-5 of float32 on the same rounded logits; against float32 on the
  unrounded logits (a smooth function of logits that moved by <= u relative), value within 2 % and
  gradient within 5 % of its largest entry (measured <= 1.1 %); at +-1e4 bf16 rounds the logits by up
  to 64, so only the same-input checks apply. fp16 logits (a CUDA autocast network's output) give the
  float32 value of the same rounded logits to 1e-5. None of this depends on the CPU's bf16 kernels.
- modules (Selective Fusion, nCoVSegNet's GCA and DAF) run their convolutions and matrix products in
  bf16 through the CPU's own kernels (oneDNN), whose blocking and accumulation differ between processors.
  A gradient entry is a sum of products, g = sum_i x_i * delta_i (layer input times the gradient at the
  layer's output); every operand rounded to bf16 moves by <= u of itself, so the rounding error of g is
  bounded by u times the sum of absolute contributions A = sum_i |x_i| * |delta_i|, whatever the kernel
  sums first. ``|g|`` itself can be far smaller than A (a BatchNorm bias before another conv + BatchNorm
  sums gradients that cancel to ~1/300 of A), which is why the gradient's own largest entry is no scale
  for its error. A is computed exactly in float32 from each layer's recorded input and output gradient
  (for an input tensor: sum over the layers that read it of |W|^T |delta|, plus the remaining exact
  paths). At most 8 bf16 roundings lie on a forward + backward path through these modules (inputs and
  results of each conv or matrix product, forward and backward), each <= u of the magnitudes it rounds:
  every parameter and input gradient must be within 2 x 8 = 16 u of its largest A (measured <= 3.5 u).
  Outputs: within 16 u of their largest entry (they are not cancelled sums: BatchNorm'd activations).
- always: finite values and gradients, also for extreme logits (+-1e4), empty and full masks.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nnunet_covid.architectures.ncovsegnet_modules import DAF, GCA
from nnunet_covid.architectures.selective_fusion import SelectiveFusion
from nnunet_covid.training.partial_label_loss import MarginalDiceCELoss
from nnunet_covid.training.structure_loss import DeepSupervisedStructureLoss, StructureLoss

torch.set_num_threads(1)

LOSS_RTOL = 2e-2
GRAD_RTOL = 5e-2
BF16_UNIT_ROUNDOFF = 2.0 ** -8
MODULE_ROUNDINGS = 16  # twice the bf16 roundings on a forward + backward path through the modules
PARAMETRIC_LAYERS = (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d, nn.Linear,
                     nn.modules.batchnorm._BatchNorm, nn.LayerNorm)


def autocast():
    return torch.autocast("cpu", dtype=torch.bfloat16)


def close_to(low: torch.Tensor, reference: torch.Tensor, rtol: float) -> bool:
    """Max absolute difference within ``rtol`` of the reference's largest magnitude."""
    scale = reference.abs().max().clamp_min(1e-12)
    return bool(((low.float() - reference.float()).abs().max() / scale) <= rtol)


def targets_2d(kind: str, shape=(2, 1, 40, 36), num_classes: int = 3) -> torch.Tensor:
    if kind == "empty":
        return torch.zeros(shape)
    if kind == "full":
        return torch.full(shape, num_classes - 1.0)
    generator = torch.Generator().manual_seed(3)
    labels = torch.zeros(shape)
    labels[:, :, 8:24, 6:20] = 1
    labels[:, :, 20:34, 18:30] = num_classes - 1
    return torch.where(torch.rand(shape, generator=generator) < 0.05, 0.0, labels)


def logits_for(kind: str, shape=(2, 3, 40, 36)) -> torch.Tensor:
    generator = torch.Generator().manual_seed(4)
    logits = torch.randn(shape, generator=generator) * 3
    return logits * 1e4 / logits.abs().max() if kind == "extreme" else logits


def loss_and_grad(loss_fn, logits: torch.Tensor, target, under_autocast: bool):
    """Loss and its gradient w.r.t. the logits; under autocast the logits are bf16, as a network gives them."""
    logits = (logits.bfloat16() if under_autocast else logits.clone()).requires_grad_(True)
    with autocast() if under_autocast else torch.autocast("cpu", enabled=False):
        value = loss_fn(logits, target)
    value.backward()
    return value.detach().float(), logits.grad


def check_loss_under_autocast(loss_fn, logits: torch.Tensor, target, logit_scale: str) -> None:
    """bf16 logits inside autocast vs float32 on the same rounded logits (the loss's own precision, tight), and
    vs float32 on the unrounded logits (the whole AMP effect) where bf16 can represent the logits' differences."""
    value, grad = loss_and_grad(loss_fn, logits, target, True)
    assert torch.isfinite(value) and torch.isfinite(grad).all()
    same_input_value, same_input_grad = loss_and_grad(loss_fn, logits.bfloat16().float(), target, False)
    assert value.item() == pytest.approx(same_input_value.item(), rel=1e-5, abs=1e-6)
    assert close_to(grad, same_input_grad, 1e-2)  # the gradient itself is stored in bf16
    if logit_scale == "normal":  # at +-1e4 bf16 rounds logits by up to 64: only the checks above apply
        ref_value, ref_grad = loss_and_grad(loss_fn, logits, target, False)
        assert value.item() == pytest.approx(ref_value.item(), rel=LOSS_RTOL, abs=1e-4)
        assert close_to(grad, ref_grad, GRAD_RTOL)


@pytest.mark.parametrize("mask", ["lesions", "empty", "full"])
@pytest.mark.parametrize("logit_scale", ["normal", "extreme"])
@pytest.mark.parametrize("use_regions", [False, True])
def test_structure_loss_under_autocast(mask, logit_scale, use_regions):
    target = targets_2d(mask)
    if use_regions:  # region channels (b, R, y, x) with sigmoid outputs
        target = torch.cat([(target >= 1).float(), (target >= 2).float()], dim=1)
        logits = logits_for(logit_scale, (2, 2, 40, 36))
    else:
        logits = logits_for(logit_scale)
    loss_fn = StructureLoss(use_regions=use_regions)
    check_loss_under_autocast(loss_fn, logits, target, logit_scale)
    # fp16 logits (a CUDA autocast network's output): computed in float32 inside the loss
    half = logits.clamp(-6e4, 6e4).half()
    value16, grad16 = loss_and_grad(loss_fn, half, target, False)
    value32, _ = loss_and_grad(loss_fn, half.float(), target, False)
    assert torch.isfinite(value16) and torch.isfinite(grad16).all() and grad16.dtype == torch.float16
    assert value16.item() == pytest.approx(value32.item(), rel=1e-5, abs=1e-6)


def test_deep_supervised_structure_loss_under_autocast():
    target = targets_2d("lesions")
    heads = [logits_for("normal") * s for s in (1.0, 0.5, 2.0, 0.1)]
    loss_fn = DeepSupervisedStructureLoss()

    def run(under_autocast):
        outputs = [(h.bfloat16() if under_autocast else h.clone()).requires_grad_(True) for h in heads]
        with autocast() if under_autocast else torch.autocast("cpu", enabled=False):
            value = loss_fn(outputs, [target] * 4)
        value.backward()
        return value.detach(), [o.grad for o in outputs]

    ref_value, ref_grads = run(False)
    value, grads = run(True)
    assert value.item() == pytest.approx(ref_value.item(), rel=LOSS_RTOL)
    assert all(torch.isfinite(g).all() and close_to(g, r, GRAD_RTOL) for g, r in zip(grads, ref_grads))


@pytest.mark.parametrize("mask", ["lesions", "empty"])
@pytest.mark.parametrize("logit_scale", ["normal", "extreme"])
@pytest.mark.parametrize("batch_dice", [False, True])
def test_marginal_partial_label_loss_under_autocast(mask, logit_scale, batch_dice):
    target = targets_2d(mask)
    target[1][target[1] == 2] = 0  # case 1's source annotates label 1 only
    loss_fn = MarginalDiceCELoss(batch_dice=batch_dice)
    loss_fn.annotated = torch.tensor([[True, True, True], [True, True, False]])
    logits = logits_for(logit_scale)
    check_loss_under_autocast(loss_fn, logits, target, logit_scale)
    value16, grad16 = loss_and_grad(loss_fn, logits.clamp(-6e4, 6e4).half(), target, False)
    value32, _ = loss_and_grad(loss_fn, logits.clamp(-6e4, 6e4).half().float(), target, False)
    assert torch.isfinite(grad16).all() and value16.item() == pytest.approx(value32.item(), rel=1e-5, abs=1e-6)


def module_outputs_and_grads(module: torch.nn.Module, inputs: list[torch.Tensor], under_autocast: bool):
    module.zero_grad()
    inputs = [x.clone().requires_grad_(True) for x in inputs]
    with autocast() if under_autocast else torch.autocast("cpu", enabled=False):
        out = module(*inputs)
    out.float().square().mean().backward()
    grads = {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}
    return out.detach(), grads, [x.grad for x in inputs]


def _absolute_layer(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The layer's output, linear in its parameters, with every factor that multiplies a parameter replaced by
    its magnitude (|x| for convs and linears, |x_hat| for norms)."""
    if isinstance(layer, nn.modules.batchnorm._BatchNorm):  # training mode: batch statistics
        x_hat = F.batch_norm(x, None, None, training=True, eps=layer.eps)
        view = (1, -1) + (1,) * (x.ndim - 2)
        return x_hat.abs() * layer.weight.view(view) + layer.bias.view(view)
    if isinstance(layer, nn.LayerNorm):
        x_hat = F.layer_norm(x, layer.normalized_shape, eps=layer.eps)
        return x_hat.abs() * layer.weight + layer.bias
    return layer(x.abs())


def absolute_contributions(module: nn.Module, inputs: list[torch.Tensor]):
    """A = sum_i |x_i| |delta_i| of every parameter gradient and every input gradient of
    ``out.square().mean()`` in float32 (see the module docstring): ``({name: A}, [A per input])``."""
    records: dict[str, list] = {}

    def record(name):
        def hook(layer, args, out):
            records[name] = [args[0], None]
            out.register_hook(lambda grad: records[name].__setitem__(1, grad.detach()))
        return hook

    handles = [m.register_forward_hook(record(n)) for n, m in module.named_modules() if isinstance(m, PARAMETRIC_LAYERS)]
    xs = [x.clone().requires_grad_(True) for x in inputs]
    module.zero_grad()
    module(*xs).square().mean().backward()
    for handle in handles:
        handle.remove()
    module.zero_grad()
    parameter_bounds = {}
    input_bounds = [torch.zeros_like(x) for x in xs]
    input_remainders = [x.grad.clone() for x in xs]  # exact gradient minus what the layers reading an input give
    for name, (x, delta) in records.items():
        layer = module.get_submodule(name)
        params = dict(layer.named_parameters(recurse=False))
        x_detached = x.detach().requires_grad_(True)
        grads = torch.autograd.grad(_absolute_layer(layer, x.detach()),
                                    list(params.values()), delta.abs())
        parameter_bounds.update({f"{name}.{p}": g for p, g in zip(params, grads)})
        for k, xk in enumerate(xs):
            if x is xk and not isinstance(layer, (nn.modules.batchnorm._BatchNorm, nn.LayerNorm)):
                exact, = torch.autograd.grad(layer(x_detached), x_detached, delta)
                absolute_weights = {p: v.detach().abs() for p, v in params.items()}
                through_abs, = torch.autograd.grad(torch.func.functional_call(layer, absolute_weights, (x_detached,)),
                                                   x_detached, delta.abs())
                input_remainders[k] -= exact
                input_bounds[k] += through_abs
    return parameter_bounds, [b + r.abs() for b, r in zip(input_bounds, input_remainders)]


def within_rounding(low: torch.Tensor, reference: torch.Tensor, absolute: torch.Tensor) -> bool:
    """Max error within MODULE_ROUNDINGS bf16 roundings of the largest absolute contribution."""
    bound = MODULE_ROUNDINGS * BF16_UNIT_ROUNDOFF * absolute.max()
    return bool((low.float() - reference.float()).abs().max() <= bound)


@pytest.mark.parametrize("make, shapes", [
    (lambda: SelectiveFusion(32, 16, 8), [(2, 32, 6, 10, 10), (2, 32, 6, 10, 10)]),
    (lambda: SelectiveFusion(32, 16, 8), [(2, 32, 20, 20), (2, 32, 20, 20)]),
    (lambda: GCA(16, 8), [(2, 16, 24, 24)]),
    (lambda: DAF(16, 8), [(2, 16, 12, 12), (2, 8, 24, 24)]),
], ids=["selective_fusion_3d", "selective_fusion_2d", "gca", "daf"])
def test_attention_modules_under_autocast(make, shapes):
    torch.manual_seed(0)
    module = make().train()
    generator = torch.Generator().manual_seed(5)
    inputs = [torch.randn(s, generator=generator) for s in shapes]
    ref_out, ref_grads, ref_input_grads = module_outputs_and_grads(module, inputs, False)
    out, grads, input_grads = module_outputs_and_grads(module, inputs, True)
    parameter_bounds, input_bounds = absolute_contributions(module, inputs)
    assert torch.isfinite(out).all() and all(torch.isfinite(g).all() for g in grads.values())
    assert close_to(out, ref_out, MODULE_ROUNDINGS * BF16_UNIT_ROUNDOFF)
    assert grads.keys() == ref_grads.keys() == parameter_bounds.keys() and grads
    for name, grad in grads.items():  # |sum_i c_i| <= sum_i |c_i|: A bounds the float32 gradient itself
        assert (ref_grads[name].abs() <= parameter_bounds[name] * (1 + 1e-5) + 1e-12).all(), name
        assert within_rounding(grad, ref_grads[name], parameter_bounds[name]), name
    for grad, ref, bound in zip(input_grads, ref_input_grads, input_bounds):
        assert (ref.abs() <= bound * (1 + 1e-5) + 1e-12).all()
        assert within_rounding(grad, ref, bound)
    if isinstance(module, SelectiveFusion):  # a + b = 1 per channel, within bf16 rounding
        with autocast():
            a, b = module.fusion_weights(*inputs)
        assert torch.allclose((a.float() + b.float()), torch.ones_like(a.float()), atol=1e-2)
