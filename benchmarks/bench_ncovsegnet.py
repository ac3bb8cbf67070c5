"""Training iterations/s and inference slices/s: NCoVSegNetTrainer vs nnU-Net's default 2d U-Net.

Both trainers are built on the same nnU-Net plans (the ``2d`` configuration planned for the
COVID-SemiSeg slices: converted with the project's converter, fingerprinted and planned by
nnU-Net; no preprocessing needed). Per trainer, side by side in one process:
- training: ``trainer.train_step`` (forward, the trainer's own deep-supervision loss, backward,
  optimiser step) on a batch of the plans' batch size and patch size, targets shaped as the
  trainer's deep-supervision scales need; ``--iterations`` timed after one warm-up step;
- inference: nnU-Net's ``nnUNetPredictor.predict_sliding_window_return_logits`` (Gaussian
  weighting, step 0.5, no mirroring) on ``--slices`` slices of the plans' median slice size.

    python benchmarks/bench_ncovsegnet.py [--semiseg ../shared/data/covid-semiseg-2d] [--threads 2]
        [--iterations 3] [--slices 4] [--device cpu]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

DEFAULT_SEMISEG = Path(__file__).resolve().parents[2] / "shared" / "data" / "covid-semiseg-2d"
DATASET_ID = 952


def plan_semiseg(semiseg: Path, root: Path) -> Path:
    """Convert + fingerprint + plan COVID-SemiSeg under ``root``; return the preprocessed dataset folder."""
    from dataset_conversion.covid_semiseg_2d import convert_covid_semiseg_2d
    from nnunetv2.experiment_planning.plan_and_preprocess_api import extract_fingerprints, plan_experiments

    for name in ("raw", "preprocessed", "results"):
        os.environ[f"nnUNet_{name}"] = str(root / name)
    raw = convert_covid_semiseg_2d(semiseg, DATASET_ID, name="NCoVBench", progress=False)
    extract_fingerprints([DATASET_ID], num_processes=1, verbose=False, show_progress_bar=False)
    plan_experiments([DATASET_ID])
    return root / "preprocessed" / raw.name


def make_trainer(trainer_class, preprocessed: Path, device):
    import torch
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels

    plans = load_json(preprocessed / "nnUNetPlans.json")
    plans["continue_training"] = False
    trainer = trainer_class(plans, "2d", 0, load_json(preprocessed / "dataset.json"), device=torch.device(device))
    channels = determine_num_input_channels(trainer.plans_manager, trainer.configuration_manager, trainer.dataset_json)
    trainer.network = trainer.build_network_architecture(
        trainer.plans_manager, trainer.configuration_manager, channels,
        trainer.label_manager.num_segmentation_heads, trainer.enable_deep_supervision).to(trainer.device)
    trainer.optimizer, trainer.lr_scheduler = trainer.configure_optimizers()
    trainer.loss = trainer._build_loss()
    return trainer, channels


def training_batch(trainer, channels: int):
    import torch
    from torch.nn.functional import interpolate

    g = torch.Generator().manual_seed(0)
    batch, patch = trainer.configuration_manager.batch_size, trainer.configuration_manager.patch_size
    data = torch.randn(batch, channels, *patch, generator=g)
    blobs = interpolate(torch.randn(batch, 1, *(s // 16 for s in patch), generator=g), size=tuple(patch),
                        mode="bilinear")
    seg = (blobs > 0.8).float()
    targets = [seg if all(s == 1 for s in scale) else
               interpolate(seg, size=[round(p * s) for p, s in zip(patch, scale)], mode="nearest-exact")
               for scale in trainer._get_deep_supervision_scales()]
    return {"data": data, "target": targets}


def bench(trainer_class, preprocessed: Path, device: str, iterations: int, slices: int) -> dict:
    import numpy as np
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    trainer, channels = make_trainer(trainer_class, preprocessed, device)
    batch = training_batch(trainer, channels)
    trainer.network.train()
    trainer.train_step(batch)  # warm-up
    start = time.perf_counter()
    losses = [float(trainer.train_step(batch)["loss"]) for _ in range(iterations)]
    train_time = time.perf_counter() - start

    trainer.set_deep_supervision_enabled(False)
    trainer.network.eval()
    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=False,
                                perform_everything_on_device=device != "cpu", device=torch.device(device),
                                verbose=False, allow_tqdm=False)
    predictor.manual_initialization(trainer.network, trainer.plans_manager, trainer.configuration_manager, None,
                                    trainer.dataset_json, trainer_class.__name__, None)
    size = [int(round(s)) for s in trainer.configuration_manager.median_image_size_in_voxels]
    image = torch.randn(channels, 1, *size)
    predictor.predict_sliding_window_return_logits(image)  # warm-up
    start = time.perf_counter()
    for _ in range(slices):
        predictor.predict_sliding_window_return_logits(image)
    infer_time = time.perf_counter() - start
    return {"trainer": trainer_class.__name__, "network": type(trainer.network).__name__,
            "params_M": sum(p.numel() for p in trainer.network.parameters()) / 1e6,
            "batch": trainer.configuration_manager.batch_size, "patch": list(trainer.configuration_manager.patch_size),
            "slice": size, "train_it_s": iterations / train_time, "infer_slices_s": slices / infer_time,
            "loss_finite": bool(np.isfinite(losses).all())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--semiseg", type=Path, default=DEFAULT_SEMISEG, help="COVID-SemiSeg folder (train/Imgs, train/GT)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--slices", type=int, default=4)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if not (args.semiseg / "train").is_dir():
        raise SystemExit(f"bench_ncovsegnet: {args.semiseg} has no train/ folder (COVID-SemiSeg slices needed for the plans)")

    import torch
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from nnunet_covid.training import NCoVSegNetTrainer, NCoVSegNetTrainerSmall

    torch.set_num_threads(args.threads)
    os.environ.setdefault("nnUNet_compile", "false")
    with tempfile.TemporaryDirectory() as tmp:
        preprocessed = plan_semiseg(args.semiseg, Path(tmp))
        rows = [bench(cls, preprocessed, args.device, args.iterations, args.slices)
                for cls in (nnUNetTrainer, NCoVSegNetTrainer, NCoVSegNetTrainerSmall)]
    print(f"device {args.device}, {args.threads} threads, load average {os.getloadavg()[0]:.1f}")
    print("| trainer | network | params (M) | batch x patch | train it/s | slice (y, x) | inference slices/s |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['trainer']} | {r['network']} | {r['params_M']:.1f} | {r['batch']} x {r['patch']} | "
              f"{r['train_it_s']:.3f} | {r['slice']} | {r['infer_slices_s']:.3f} |")
    base = rows[0]
    for r in rows[1:]:
        print(f"{r['trainer']} vs nnUNetTrainer: training {r['train_it_s'] / base['train_it_s']:.2f}x, "
              f"inference {r['infer_slices_s'] / base['infer_slices_s']:.2f}x")


if __name__ == "__main__":
    main()
