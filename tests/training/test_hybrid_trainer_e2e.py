"""HybridEncoderTrainer through the stock nnU-Net CLI: -pretrained_weights, convention, --c, --val, nnUNetv2_predict.

Uses the shared ``pretrained_setup`` fixture (tests/helpers/pretrained_setup.py): a tiny plain U-Net pre-trained on
Dataset901 and the target Dataset902 with the same plans (2 vs 3 output classes).
"""
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

torch.set_num_threads(1)

TRAINER = "HybridEncoderTrainer_tiny"


def load_weights(path):
    return torch.load(path, map_location="cpu", weights_only=False)["network_weights"]


def assert_adapted_encoder_is_pretrained(hybrid_weights, pretrained_weights):
    adapted = {k[len("adapted_encoder."):]: v for k, v in hybrid_weights.items() if k.startswith("adapted_encoder.")}
    encoder = {k[len("encoder."):]: v for k, v in pretrained_weights.items() if k.startswith("encoder.")}
    assert adapted.keys() == encoder.keys() and adapted
    for key, value in encoder.items():
        assert torch.equal(adapted[key], value), key


@pytest.fixture(scope="module")
def trained_fold(pretrained_setup):
    """Fold 0 trained with the stock ``-pretrained_weights`` flag."""
    s = pretrained_setup
    s.run("nnUNetv2_train", s.target_dataset, s.configuration, 0, "-tr", TRAINER, "-p", s.plans, "-device", "cpu",
          "-pretrained_weights", s.checkpoint, log="hybrid_train")
    return s.results(s.target_dataset, TRAINER, 0)


def test_stock_flag_training_keeps_the_adapted_encoder_and_trains_the_rest(pretrained_setup, trained_fold):
    pretrained = load_weights(pretrained_setup.checkpoint)
    trained = load_weights(trained_fold / "checkpoint_final.pth")
    assert any(k.startswith("fusions.") for k in trained)
    assert_adapted_encoder_is_pretrained(trained, pretrained)
    # the decoder started from the pre-trained decoder and moved; the dedicated encoder is not the pre-trained one
    key = "decoder.stages.0.convs.0.conv.weight"
    assert not torch.equal(trained[key], pretrained[key])
    assert (trained[key] - pretrained[key]).abs().mean() < pretrained[key].abs().mean()
    assert not torch.equal(trained["dedicated_encoder.stages.0.0.convs.0.conv.weight"],
                           pretrained["encoder.stages.0.0.convs.0.conv.weight"])
    provenance = json.loads((trained_fold / "pretrained_source.json").read_text())
    assert provenance["pretrained"].startswith("-pretrained_weights") and provenance["decoder_init"] == "pretrained"


def test_continue_and_validation_only_restore_the_hybrid_checkpoint(pretrained_setup, trained_fold):
    s = pretrained_setup
    before = load_weights(trained_fold / "checkpoint_final.pth")
    assert not (trained_fold / "validation" / "summary.json").exists()  # the tiny variant skips it after training
    s.run("nnUNetv2_train", s.target_dataset, s.configuration, 0, "-tr", TRAINER, "-p", s.plans, "-device", "cpu",
          "--val", log="hybrid_val")
    assert (trained_fold / "validation" / "summary.json").is_file()
    s.run("nnUNetv2_train", s.target_dataset, s.configuration, 0, "-tr", TRAINER, "-p", s.plans, "-device", "cpu",
          "--c", log="hybrid_continue")
    after = load_weights(trained_fold / "checkpoint_final.pth")
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in before)  # finished run: restored, nothing retrained


def test_predict_rebuilds_the_hybrid_network(pretrained_setup, trained_fold, tmp_path):
    s = pretrained_setup
    predicted = s.predict(s.target_dataset, TRAINER, 0, tmp_path / "out", log="hybrid_predict")
    reference = sitk.ReadImage(str(next((s.root / "predict_input").glob("*_0000.nii.gz"))))
    prediction = sitk.ReadImage(str(predicted))
    assert prediction.GetSize() == reference.GetSize()
    assert set(np.unique(sitk.GetArrayFromImage(prediction))) <= {0, 1}


def test_convention_checkpoint_and_optimizer_steps_in_process(pretrained_setup, monkeypatch, tmp_path):
    """Without the flag the convention checkpoint is mapped onto the hybrid network built by ``initialize()``; the
    trainer's own optimizer then leaves the adapted encoder bitwise unchanged and moves everything else."""
    from nnunet_covid.architectures import HybridEncoderUNet
    from nnunet_covid.training import HybridEncoderTrainer_tiny

    s = pretrained_setup
    for key in ("nnUNet_raw", "nnUNet_preprocessed"):
        monkeypatch.setenv(key, s.env[key])
    monkeypatch.setenv("nnUNet_results", str(tmp_path))
    monkeypatch.setenv("nnUNet_covid_pretrained", str(s.checkpoint))
    preprocessed = Path(s.env["nnUNet_preprocessed"]) / s.target_dataset
    plans = {**json.loads((preprocessed / f"{s.plans}.json").read_text()), "continue_training": False}
    trainer = HybridEncoderTrainer_tiny(plans, s.configuration, 0, json.loads((preprocessed / "dataset.json").read_text()),
                                        torch.device("cpu"))
    trainer.initialize()
    assert isinstance(trainer.unwrapped_network, HybridEncoderUNet)  # built once, never replaced
    built = trainer.unwrapped_network
    trainer.ensure_pretrained_weights()
    network = trainer.network
    assert network is built
    pretrained = load_weights(s.checkpoint)
    assert_adapted_encoder_is_pretrained(network.state_dict(), pretrained)
    assert torch.equal(network.decoder.stages[0].convs[0].conv.weight, pretrained["decoder.stages.0.convs.0.conv.weight"])
    provenance = json.loads((Path(trainer.output_folder) / "pretrained_source.json").read_text())
    assert provenance["pretrained"] == str(s.checkpoint)
    optimized = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert optimized == {id(p) for p in network.parameters() if p.requires_grad}
    assert not optimized & {id(p) for p in network.adapted_encoder.parameters()}

    before = {k: v.clone() for k, v in network.state_dict().items()}
    network.train()
    data = torch.randn(2, 1, *trainer.configuration_manager.patch_size)
    with torch.no_grad():
        target = [torch.randint(0, 2, (2, 1, *o.shape[2:])).float() for o in network(data)]
    for _ in range(2):
        trainer.train_step({"data": data, "target": target})
    after = network.state_dict()
    for key, value in before.items():
        if key.startswith("adapted_encoder."):
            assert torch.equal(after[key], value), key
        elif key.endswith(".weight") and ".seg_layers." not in key:
            assert not torch.equal(after[key], value), key
    full_resolution_head = f"decoder.seg_layers.{len(network.decoder.seg_layers) - 1}.weight"
    assert not torch.equal(after[full_resolution_head], before[full_resolution_head])
