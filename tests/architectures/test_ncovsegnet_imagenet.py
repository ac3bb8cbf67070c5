"""ImageNet ResNet50 weights from local torchvision / timm files into NCoVSegNet's encoder."""
from __future__ import annotations

import pytest
import timm
import torch
import torchvision
from safetensors.torch import save_file

from nnunet_covid.architectures import NCoVSegNet
from nnunet_covid.core.errors import CheckpointError
from nnunet_covid.training.imagenet_weights import (IMAGENET_WEIGHTS_ENV, imagenet_weights_path,
                                                    load_imagenet_resnet_weights)

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def network():
    torch.manual_seed(0)
    return NCoVSegNet(1, 2)


@pytest.fixture(scope="module")
def torchvision_state(tmp_path_factory):
    """A torchvision ResNet50 state dict with random values (stands in for the ImageNet file)."""
    torch.manual_seed(1)
    model = torchvision.models.resnet50(weights=None)
    with torch.no_grad():
        for buffer in model.buffers():
            if buffer.is_floating_point():
                buffer.uniform_(0.5, 1.5)  # non-default running stats, so loading them is observable
    state = model.state_dict()
    path = tmp_path_factory.mktemp("imagenet") / "resnet50_torchvision.pth"
    torch.save(state, path)
    return path, state


def test_torchvision_file_maps_every_backbone_key(network, torchvision_state):
    path, state = torchvision_state
    report = load_imagenet_resnet_weights(network.encoder, path)
    backbone_keys = {k for k in state if not k.startswith("fc.")}
    assert set(report.loaded) == backbone_keys
    assert set(report.unused) == {"fc.weight", "fc.bias"}
    # only the ECA convolutions (absent from a plain ResNet50) stay random: one per bottleneck
    assert len(report.reinitialised) == 16 and all(k.endswith(".se.conv.weight") for k in report.reinitialised)
    ours = network.encoder.state_dict()
    for key in backbone_keys - {"conv1.weight"}:
        torch.testing.assert_close(ours[key], state[key], msg=key)
    # RGB -> 1 channel: the three input-channel kernels are summed
    assert list(report.adapted) == ["conv1.weight"]
    torch.testing.assert_close(ours["conv1.weight"], state["conv1.weight"].sum(dim=1, keepdim=True))
    assert "318 tensors loaded (1 of them adapted)" in report.summary()


def test_timm_safetensors_file_with_three_input_channels(tmp_path):
    torch.manual_seed(2)
    state = timm.create_model("resnet50", pretrained=False).state_dict()
    path = tmp_path / "resnet50_timm.safetensors"
    save_file(state, str(path))
    network = NCoVSegNet(3, 2)
    report = load_imagenet_resnet_weights(network.encoder, path)
    assert not report.adapted
    assert set(report.loaded) == {k for k in state if not k.startswith("fc.")}
    torch.testing.assert_close(network.encoder.conv1.weight.detach(), state["conv1.weight"])


def test_wrapped_checkpoint_with_module_prefix(tmp_path, torchvision_state):
    _, state = torchvision_state
    path = tmp_path / "wrapped.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 90}, path)
    network = NCoVSegNet(2, 2)
    report = load_imagenet_resnet_weights(network.encoder, path)
    assert len(report.loaded) == 318
    # two channels: RGB kernels tiled and scaled by 3/2
    expected = torch.cat([state["conv1.weight"][:, :2]]) * 1.5
    torch.testing.assert_close(network.encoder.conv1.weight.detach(), expected)


def test_unusable_files_give_one_clear_error(tmp_path, network):
    not_weights = tmp_path / "notes.pth"
    not_weights.write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="notes.pth: cannot be read"):
        load_imagenet_resnet_weights(network.encoder, not_weights)

    resnet18 = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), resnet18)
    with pytest.raises(CheckpointError, match=r"resnet18.pth: tensor layer1.0.conv1.weight has shape"):
        load_imagenet_resnet_weights(network.encoder, resnet18)

    unrelated = tmp_path / "unrelated.pth"
    torch.save({"foo.weight": torch.zeros(3)}, unrelated)
    with pytest.raises(CheckpointError, match="none of its keys is a ResNet key"):
        load_imagenet_resnet_weights(network.encoder, unrelated)


def test_weights_setting_from_environment(monkeypatch, tmp_path):
    monkeypatch.delenv(IMAGENET_WEIGHTS_ENV, raising=False)
    assert imagenet_weights_path() is None
    monkeypatch.setenv(IMAGENET_WEIGHTS_ENV, str(tmp_path / "missing.pth"))
    with pytest.raises(CheckpointError, match="missing.pth: no such file"):
        imagenet_weights_path()
    (tmp_path / "r50.pth").write_bytes(b"")
    monkeypatch.setenv(IMAGENET_WEIGHTS_ENV, str(tmp_path / "r50.pth"))
    assert imagenet_weights_path() == tmp_path / "r50.pth"
