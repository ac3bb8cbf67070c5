"""Tiny hand-written nnU-Net plans and in-process trainers for the trainer tests (no data, no subprocess).

- :func:`plain_arch` / :func:`resenc_arch`: ``architecture`` entries of a 3d_fullres plan (PlainConvUNet /
  ResidualEncoderUNet, 4 stages, patch 16 x 32 x 32) with per-stage overrides;
- :func:`tiny_plans`: a plans dict for ``dataset`` with that architecture and ``channels`` input channels;
- :func:`dataset_json`: labels ``background`` + ``num_classes - 1`` lesions, ``channels`` channel names;
- :func:`prepare_dirs`: nnU-Net's three folders under ``root`` (environment set with ``monkeypatch``) and a
  preprocessed folder per dataset, so trainers can be built;
- :func:`make_trainer`: an initialised trainer of class ``cls`` on the CPU;
- :func:`random_batch`: a batch of random data and deep-supervision targets for ``trainer.train_step``;
- :func:`write_trained_checkpoint`: nnU-Net's ``nnUNetTrainer`` on the given plans, two optimizer steps on
  random batches, then nnU-Net's own ``save_checkpoint``: a checkpoint written by nnU-Net training.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

CONFIGURATION = "3d_fullres"
PATCH = [16, 32, 32]
_COMMON = {"conv_op": "torch.nn.modules.conv.Conv3d", "conv_bias": True,
           "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d", "norm_op_kwargs": {"eps": 1e-05, "affine": True},
           "dropout_op": None, "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU",
           "nonlin_kwargs": {"inplace": True}}
_IMPORTS = ["conv_op", "norm_op", "dropout_op", "nonlin"]
KERNELS = [[1, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]]
STRIDES = [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2]]


def plain_arch(**overrides) -> dict:
    kwargs = {"n_stages": 4, "features_per_stage": [8, 16, 32, 64], "kernel_sizes": KERNELS, "strides": STRIDES,
              "n_conv_per_stage": [2, 2, 2, 2], "n_conv_per_stage_decoder": [2, 2, 2], **_COMMON, **overrides}
    return {"network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
            "arch_kwargs": kwargs, "_kw_requires_import": _IMPORTS}


def resenc_arch(**overrides) -> dict:
    kwargs = {"n_stages": 4, "features_per_stage": [8, 16, 32, 64], "kernel_sizes": KERNELS, "strides": STRIDES,
              "n_blocks_per_stage": [1, 2, 2, 2], "n_conv_per_stage_decoder": [1, 1, 1], **_COMMON, **overrides}
    return {"network_class_name": "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet",
            "arch_kwargs": kwargs, "_kw_requires_import": _IMPORTS}


def tiny_plans(dataset: str, arch: dict | None = None, channels: int = 1) -> dict:
    intensities = {"max": 4.0, "mean": -400.0, "median": -500.0, "min": -565.0, "percentile_00_5": -550.0,
                   "percentile_99_5": -14.0, "std": 160.0}
    resampling = {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None}
    return {
        "dataset_name": dataset, "plans_name": "nnUNetPlans", "original_median_spacing_after_transp": [5.0, 2.0, 2.0],
        "original_median_shape_after_transp": PATCH, "image_reader_writer": "SimpleITKIO",
        "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2], "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager", "continue_training": False,
        "foreground_intensity_properties_per_channel": {str(c): dict(intensities) for c in range(channels)},
        "configurations": {CONFIGURATION: {
            "data_identifier": f"nnUNetPlans_{CONFIGURATION}", "preprocessor_name": "DefaultPreprocessor",
            "batch_size": 2, "patch_size": PATCH, "median_image_size_in_voxels": PATCH, "spacing": [5.0, 2.0, 2.0],
            "normalization_schemes": ["CTNormalization"] * channels, "use_mask_for_norm": [False] * channels,
            "resampling_fn_data": "resample_data_or_seg_to_shape", "resampling_fn_seg": "resample_data_or_seg_to_shape",
            "resampling_fn_data_kwargs": resampling, "resampling_fn_seg_kwargs": {**resampling, "is_seg": True, "order": 1},
            "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
            "resampling_fn_probabilities_kwargs": {**resampling, "order": 1},
            "architecture": copy.deepcopy(arch or plain_arch()), "batch_dice": False}},
    }


def dataset_json(num_classes: int, channels: int = 1, **extra) -> dict:
    labels = {"background": 0, **{f"lesion{i}": i for i in range(1, num_classes)}}
    return {"channel_names": {str(c): "CT" for c in range(channels)}, "labels": labels, "numTraining": 4,
            "file_ending": ".nii.gz", **extra}


def prepare_dirs(root: Path, monkeypatch, *datasets: str) -> Path:
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        (root / name).mkdir(exist_ok=True)
        monkeypatch.setenv(name, str(root / name))
    for dataset in datasets:
        data = root / "nnUNet_preprocessed" / dataset / f"nnUNetPlans_{CONFIGURATION}"
        data.mkdir(parents=True, exist_ok=True)
        (data / "case.b2nd").touch()  # nnU-Net infers its dataset class from the file ending
    monkeypatch.delenv("nnUNet_covid_pretrained", raising=False)
    return root


def make_trainer(cls, plans: dict, num_classes: int = 2, channels: int = 1, **dataset_json_extra):
    trainer = cls(json.loads(json.dumps(plans)), CONFIGURATION, 0,
                  dataset_json(num_classes, channels, **dataset_json_extra), torch.device("cpu"))
    trainer.initialize()
    return trainer


def random_batch(trainer, seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    patch = trainer.configuration_manager.patch_size
    data = torch.randn((2, trainer.num_input_channels, *patch), generator=generator)
    targets = [torch.randint(0, 2, (2, 1, *[round(p * s) for p, s in zip(patch, scale)]), generator=generator).float()
               for scale in trainer._get_deep_supervision_scales()]
    return {"data": data, "target": targets, "keys": ["a", "b"]}


def write_trained_checkpoint(path: Path, plans: dict, num_classes: int, channels: int = 1) -> Path:
    """Two SGD steps of nnU-Net's own trainer on ``plans``, saved by nnU-Net's ``save_checkpoint``."""
    trainer = make_trainer(nnUNetTrainer, plans, num_classes, channels)
    trainer.network.train()
    for step in range(2):
        trainer.train_step(random_batch(trainer, step))
    trainer.save_checkpoint(str(path))
    return path
