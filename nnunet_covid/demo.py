"""Run the end-to-end demo on built-in synthetic data: convert, plan, pre-train, transfer, predict, evaluate.

The demo writes synthetic raw downloads in the real layouts of MSD Task06 Lung, StructSeg 2019
lung GTV, NSCLC pleural effusion (DICOM CT + reoriented masks), COVID-19-CT-Seg and the 2D COVID
slice set, converts them with the package's converters (the COVID target with ``--crop-lung``),
merges the three non-COVID sources into a multi-lesion pre-training dataset, plans the target with
nnU-Net, moves its plans to the multi-lesion set (nnU-Net's documented pre-train/fine-tune
workflow), pre-trains, fine-tunes fold 0 of the COVID-19-CT-Seg benchmark split (4 training cases)
with train-from-scratch and every transfer strategy, predicts the 16 held-out cases with
``nnUNetv2_predict`` (test-time mirroring off, to save CPU time), evaluates them with the papers'
metrics and prints a comparison table (also written as JSON and Markdown) plus the study report of
the transfer strategies (``results/report``: all metrics, paired tests against train-from-scratch,
box plots). A 2D nCoVSegNet run on the slice set completes the table. Every step is a stock nnU-Net
command with ``-tr <OurTrainer>`` (the pre-trained checkpoint reaches the transfer trainers through
the package's ``nnUNet_covid_pretrained`` convention, which keeps the segmentation head when the
label counts match); finished steps are skipped when the demo is run again in the
same workdir.

CPU budget (15 minutes on 2 cores): the strategies run on nnU-Net's ``2d`` configuration of the
volumes (the papers' own runs use ``3d_fullres``, as the README's real-data workflow does) with short
schedules (the ``*_demo`` trainer variants, 13 epochs of 12 iterations). Measured on the demo data:
nnU-Net's 3D U-Net was still predicting background only after 480 iterations at a quarter of its
width (and needed about 200 iterations at full width, 0.75 s each), while the 2D U-Net on the
lung-cropped volumes separated the lesions after about 120 iterations of 0.37 s. The lung crop
changes no score: outside the box both the ground truth and an uncropped prediction are
background. ``--quick`` is a smoke run of the same pipeline with narrower networks.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from nnunet_covid.atomic_io import atomic_write_json, atomic_write_text
from nnunet_covid.evaluation.report import build_report

DEMO_PLANS = "nnUNetDemoPlans"


@dataclass(frozen=True)
class DemoPreset:
    """Sizes and schedules of one demo flavour."""

    volume_shape: tuple[int, int, int]
    source_cases: int
    trainer_suffix: str
    epochs: int
    width_divisor: int
    slice_size: int
    slices: int


PRESETS = {
    "default": DemoPreset(volume_shape=(24, 64, 64), source_cases=4, trainer_suffix="_demo", epochs=13,
                          width_divisor=1, slice_size=128, slices=24),
    "quick": DemoPreset(volume_shape=(24, 48, 48), source_cases=2, trainer_suffix="_tiny", epochs=1,
                        width_divisor=8, slice_size=64, slices=12),
}

# dataset ids used inside the demo workdir
SOURCE_IDS = {"msd-lung": 801, "structseg-lung-gtv": 802, "nsclc-effusion": 803}
MULTILESION_ID = 800
TARGET_ID = 810
TARGET_2D_ID = 820

# nnU-Net configuration of pre-training and the transfer strategies (see the module docstring)
TRANSFER_CONFIGURATION = "2d"
# (row label, trainer, uses the multi-lesion pre-trained model)
STRATEGIES = [
    ("train from scratch", "nnUNetTrainer", False),
    ("continual learning", "ContinualLearningTrainer", True),
    ("body fine-tuning", "BodyFineTuneTrainer", True),
    ("frozen encoder (lesion representations)", "FrozenEncoderTrainer", True),
    ("hybrid encoder", "HybridEncoderTrainer", True),
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workdir", type=Path, default=Path("nnunet_covid_demo"),
                        help="folder for raw data, nnU-Net folders, logs and results (default: ./nnunet_covid_demo); "
                             "rerunning with the same folder resumes")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="device for training/inference")
    parser.add_argument("--quick", action="store_true", help="smoke run: smaller data, 1-epoch schedules")


class Demo:
    """The demo's steps; each one is skipped when its output already exists."""

    def __init__(self, workdir: Path, device: str, preset: DemoPreset):
        from nnunet_covid.nnunet_commands import nnunet_environment

        self.workdir = workdir.resolve()
        self.device = device
        self.preset = preset
        self.env = nnunet_environment(self.workdir)
        self.logs = self.workdir / "logs"
        self.started = time.time()
        self.stage = 0

    # ------------------------------------------------------------------ helpers
    def say(self, message: str) -> None:
        print(message, flush=True)

    def begin(self, title: str, total: int) -> None:
        self.stage += 1
        elapsed = time.time() - self.started
        self.say(f"[{self.stage}/{total}] {title}   (elapsed {elapsed / 60:4.1f} min)")

    def nnunet(self, name: str, args: list[str], log: str, epochs: int | None = None,
               extra_env: dict[str, str] | None = None) -> float:
        from nnunet_covid.nnunet_commands import nnunet_tool, run_nnunet

        return run_nnunet([nnunet_tool(name), *args], {**self.env, **(extra_env or {})}, self.logs / log,
                          total_epochs=epochs, report=self.say)

    def dataset_name(self, dataset_id: int) -> str:
        raw = Path(self.env["nnUNet_raw"])
        matches = sorted(raw.glob(f"Dataset{dataset_id:03d}_*"))
        if not matches:
            raise FileNotFoundError(f"dataset {dataset_id} was not converted into {raw}")
        return matches[0].name

    def trainer(self, base: str) -> str:
        return base + self.preset.trainer_suffix

    def results_folder(self, dataset_id: int, trainer: str, configuration: str) -> Path:
        return (Path(self.env["nnUNet_results"]) / self.dataset_name(dataset_id) /
                f"{trainer}__{DEMO_PLANS}__{configuration}")

    # ------------------------------------------------------------------ stages
    def write_raw_sources(self) -> dict[str, Path]:
        from dataset_conversion import synthetic_layouts as layouts

        raw = self.workdir / "raw_downloads"
        n, shape = self.preset.source_cases, self.preset.volume_shape
        writers = {
            "msd-lung": lambda root: layouts.write_msd_lung_layout(root, n_cases=n, seed=100, shape=shape),
            "structseg-lung-gtv": lambda root: layouts.write_structseg_layout(root, n_cases=n, seed=200, shape=shape),
            "nsclc-effusion": lambda root: layouts.write_nsclc_effusion_layout(root, n_cases=n, seed=300, shape=shape),
            "covid19-ct-seg": lambda root: layouts.write_covid19_ct_seg_layout(root, seed=400, shape=shape),
            "covid-semiseg-2d": lambda root: layouts.write_covid_semiseg_2d_layout(
                root, n_slices=self.preset.slices, seed=500, size=self.preset.slice_size),
        }
        folders = {}
        for name, write in writers.items():
            folder = raw / name
            if not self.step_done(f"raw_{name}"):
                write(folder)
                self.mark_done(f"raw_{name}")
            folders[name] = folder
        return folders

    def convert(self, raw: dict[str, Path]) -> None:
        from dataset_conversion.covid19_ct_seg import convert_covid19_ct_seg
        from dataset_conversion.covid_semiseg_2d import convert_covid_semiseg_2d
        from dataset_conversion.msd_lung import convert_msd_lung
        from dataset_conversion.multilesion import convert_multilesion
        from dataset_conversion.nsclc_effusion import convert_nsclc_effusion
        from dataset_conversion.structseg import convert_structseg_lung_gtv

        out = Path(self.env["nnUNet_raw"])
        convert_msd_lung(raw["msd-lung"], SOURCE_IDS["msd-lung"], output_root=out)
        convert_structseg_lung_gtv(raw["structseg-lung-gtv"], SOURCE_IDS["structseg-lung-gtv"], output_root=out)
        convert_nsclc_effusion(raw["nsclc-effusion"], SOURCE_IDS["nsclc-effusion"], output_root=out)
        convert_multilesion(out, MULTILESION_ID, output_root=out,
                            sources=[self.dataset_name(i) for i in SOURCE_IDS.values()])
        convert_covid19_ct_seg(raw["covid19-ct-seg"], TARGET_ID, output_root=out, crop_lung=True)
        convert_covid_semiseg_2d(raw["covid-semiseg-2d"], TARGET_2D_ID, output_root=out)

    def step_done(self, name: str) -> bool:
        return (self.workdir / "state" / name).is_file()

    def mark_done(self, name: str) -> None:
        (self.workdir / "state").mkdir(exist_ok=True)
        (self.workdir / "state" / name).touch()

    def plan(self) -> None:
        """nnU-Net's documented pre-train/fine-tune workflow: plan the COVID target, move its plans to the
        multi-lesion pre-training dataset and preprocess that one with them (same network for both)."""
        if not self.step_done("planned_target"):
            self.plan_with_demo_plans(TARGET_ID, TRANSFER_CONFIGURATION, "plan_target.log")
            self.mark_done("planned_target")
        if not self.step_done("planned_multilesion"):
            # fingerprint and dataset.json copy (planning, no preprocessing with its own plans)
            self.nnunet("nnUNetv2_plan_and_preprocess", ["-d", str(MULTILESION_ID), "-c", TRANSFER_CONFIGURATION, "-np", "1",
                                                         "--verify_dataset_integrity", "--no_pp"],
                        "plan_multilesion.log")
            self.nnunet("nnUNetv2_move_plans_between_datasets",
                        ["-s", str(TARGET_ID), "-t", str(MULTILESION_ID), "-sp", DEMO_PLANS, "-tp", DEMO_PLANS],
                        "move_plans.log")
            self.nnunet("nnUNetv2_preprocess", ["-d", str(MULTILESION_ID), "-plans_name", DEMO_PLANS,
                                                "-c", TRANSFER_CONFIGURATION, "-np", "1"], "preprocess_multilesion.log")
            self.mark_done("planned_multilesion")
        if not self.step_done("planned_2d"):
            self.plan_with_demo_plans(TARGET_2D_ID, "2d", "plan_2d.log")
            self.mark_done("planned_2d")

    def plan_with_demo_plans(self, dataset_id: int, configuration: str, log: str) -> None:
        """Plan and preprocess ``dataset_id`` with nnU-Net, then derive the reduced-width demo plans."""
        self.nnunet("nnUNetv2_plan_and_preprocess",
                    ["-d", str(dataset_id), "-c", configuration, "-np", "1", "--verify_dataset_integrity"], log)
        preprocessed = Path(self.env["nnUNet_preprocessed"]) / self.dataset_name(dataset_id)
        write_reduced_width_plans(preprocessed / "nnUNetPlans.json", preprocessed / f"{DEMO_PLANS}.json",
                                  self.preset.width_divisor)

    def train(self, dataset_id: int, configuration: str, fold: str, trainer: str,
              pretrained: Path | None = None) -> Path:
        """Train unless ``checkpoint_final.pth`` exists; returns the fold folder.

        ``pretrained`` goes through the package's convention (``nnUNet_covid_pretrained``), which keeps the
        pre-trained segmentation head when the label counts match, as the papers' strategies do; the stock
        ``-pretrained_weights`` flag (re-initialised head) works as well and is covered by the tests.
        """
        from nnunet_covid.training.pretrained_weights import PRETRAINED_CHECKPOINT_ENV

        fold_dir = self.results_folder(dataset_id, trainer, configuration) / f"fold_{fold}"
        if not (fold_dir / "checkpoint_final.pth").is_file():
            args = [str(dataset_id), configuration, fold, "-tr", trainer, "-p", DEMO_PLANS, "-device", self.device]
            self.nnunet("nnUNetv2_train", args, f"train_{trainer}_{dataset_id}_fold{fold}.log",
                        epochs=self.preset.epochs,
                        extra_env={PRETRAINED_CHECKPOINT_ENV: str(pretrained)} if pretrained is not None else None)
        return fold_dir

    def predict_and_evaluate(self, dataset_id: int, configuration: str, trainer: str, fold: str,
                             held_out: list[str]) -> dict:
        from nnunet_covid.evaluation import evaluate_folders

        raw = Path(self.env["nnUNet_raw"]) / self.dataset_name(dataset_id)
        file_ending = json.loads((raw / "dataset.json").read_text())["file_ending"]
        inputs = self.workdir / "held_out" / self.dataset_name(dataset_id)
        if not inputs.is_dir():
            staging = inputs.with_name(inputs.name + ".tmp")
            staging.mkdir(parents=True, exist_ok=True)
            for case in held_out:
                for image in sorted((raw / "imagesTr").glob(f"{case}_[0-9][0-9][0-9][0-9]{file_ending}")):
                    link = staging / image.name
                    if not link.exists():
                        os.symlink(image, link)
            staging.rename(inputs)
        predictions = self.workdir / "predictions" / f"{trainer}_{dataset_id}"
        metrics_file = self.workdir / "evaluation" / f"{trainer}_{dataset_id}.json"
        if not metrics_file.is_file():
            self.nnunet("nnUNetv2_predict",
                        ["-i", str(inputs), "-o", str(predictions), "-d", str(dataset_id), "-c", configuration,
                         "-f", fold, "-tr", trainer, "-p", DEMO_PLANS, "-device", self.device, "-npp", "1", "-nps",
                         "1", "--disable_tta", "--disable_progress_bar"],
                        f"predict_{trainer}_{dataset_id}.log")
            gt = self.workdir / "held_out_labels" / self.dataset_name(dataset_id)
            gt.mkdir(parents=True, exist_ok=True)
            for case in held_out:
                link = gt / f"{case}{file_ending}"
                if not link.exists():
                    os.symlink(raw / "labelsTr" / f"{case}{file_ending}", link)
            evaluate_folders(gt, predictions, labels=[1], tolerance_mm=3.0, output_file=metrics_file,
                             num_processes=1)
        return json.loads(metrics_file.read_text())

    def held_out_cases(self, dataset_id: int, fold: int) -> list[str]:
        splits = Path(self.env["nnUNet_preprocessed"]) / self.dataset_name(dataset_id) / "splits_final.json"
        return sorted(json.loads(splits.read_text())[fold]["val"])

    def row(self, label: str, trainer: str, configuration: str, dataset_id: int, fold_dir: Path,
            metrics: dict, pretrained: str) -> dict:
        summary = metrics["summary"]
        return {
            "strategy": label, "trainer": trainer, "configuration": configuration, "pretrained": pretrained,
            "dataset": self.dataset_name(dataset_id), "n_cases": len(metrics["cases"]),
            "dsc_mean": summary["dsc"]["mean"], "dsc_std": summary["dsc"]["std"],
            "nsd_mean": summary["nsd"]["mean"], "nsd_std": summary["nsd"]["std"],
            "seconds_per_epoch": seconds_per_epoch(fold_dir),
        }

    def run(self) -> list[dict]:
        total = 7
        self.begin("writing synthetic raw downloads (MSD, StructSeg, NSCLC DICOM, COVID-19-CT-Seg, 2D slices)", total)
        raw = self.write_raw_sources()
        self.begin("converting them to nnU-Net raw datasets and merging the multi-lesion pre-training set", total)
        self.convert(raw)
        self.begin("nnU-Net planning the COVID target; moving its plans to the multi-lesion set, preprocessing", total)
        self.plan()
        self.begin(f"multi-lesion pre-training ({self.trainer('MultiLesionPretrainTrainer')}, fold all)", total)
        pretrain_dir = self.train(MULTILESION_ID, TRANSFER_CONFIGURATION, "all", self.trainer("MultiLesionPretrainTrainer"))
        checkpoint = pretrain_dir / "checkpoint_final.pth"

        rows, report_runs = [], []
        held_out = self.held_out_cases(TARGET_ID, 0)
        self.begin(f"fine-tuning fold 0 (4 training cases) with {len(STRATEGIES)} strategies, "
                   f"predicting {len(held_out)} held-out cases", total)
        for label, base, uses_pretraining in STRATEGIES:
            trainer = self.trainer(base)
            self.say(f"   - {label}: {trainer}")
            fold_dir = self.train(TARGET_ID, TRANSFER_CONFIGURATION, "0", trainer,
                                  checkpoint if uses_pretraining else None)
            metrics = self.predict_and_evaluate(TARGET_ID, TRANSFER_CONFIGURATION, trainer, "0", held_out)
            rows.append(self.row(label, trainer, TRANSFER_CONFIGURATION, TARGET_ID, fold_dir, metrics,
                                 "multi-lesion" if uses_pretraining else "none"))
            report_runs.append({"label": label, "fold": 0, "evaluation": metrics, "training_dir": fold_dir})

        self.begin("nCoVSegNet (2D) on the COVID slice set, fold 0", total)
        trainer = self.trainer("NCoVSegNetTrainerSmall")
        fold_dir = self.train(TARGET_2D_ID, "2d", "0", trainer)
        metrics = self.predict_and_evaluate(TARGET_2D_ID, "2d", trainer, "0", self.held_out_cases(TARGET_2D_ID, 0))
        rows.append(self.row("nCoVSegNet, CPU-sized (2D, no ImageNet file)", trainer, "2d", TARGET_2D_ID, fold_dir, metrics,
                             "none"))

        self.begin("writing the comparison table and the study report of the transfer strategies", total)
        build_report(report_runs, self.workdir / "results" / "report", baseline=STRATEGIES[0][0])
        write_table(rows, self.workdir / "results", time.time() - self.started)
        return rows


def write_reduced_width_plans(source: Path, target: Path, width_divisor: int) -> None:
    """Copy nnU-Net plans, dividing every stage's feature count by ``width_divisor`` (minimum 4).

    The preprocessed data are shared (same ``data_identifier``); only the network is narrower.
    """
    plans = json.loads(source.read_text())
    plans["plans_name"] = target.stem
    for configuration in plans["configurations"].values():
        kwargs = configuration.get("architecture", {}).get("arch_kwargs")
        if kwargs and "features_per_stage" in kwargs:
            kwargs["features_per_stage"] = [max(4, f // width_divisor) for f in kwargs["features_per_stage"]]
    atomic_write_json(target, plans)


def seconds_per_epoch(fold_dir: Path) -> float | None:
    """Mean 'Epoch time' of nnU-Net's training log(s) in ``fold_dir``."""
    from nnunet_covid.nnunet_commands import epoch_times

    times = [t for log in sorted(fold_dir.glob("training_log_*.txt")) for t in epoch_times(log.read_text())]
    return sum(times) / len(times) if times else None


def write_table(rows: list[dict], out_dir: Path, total_seconds: float) -> None:
    """Print the comparison table and write it as JSON and Markdown (atomically)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    header = "| strategy | trainer | pre-trained | held-out cases | DSC | NSD@3mm | s/epoch |"
    lines = [header, "|---|---|---|---|---|---|---|"]
    for r in rows:
        spe = f"{r['seconds_per_epoch']:.1f}" if r["seconds_per_epoch"] is not None else "n/a"
        lines.append(f"| {r['strategy']} | {r['trainer']} | {r['pretrained']} | {r['n_cases']} | "
                     f"{r['dsc_mean']:.3f} ± {r['dsc_std']:.3f} | {r['nsd_mean']:.3f} ± {r['nsd_std']:.3f} | {spe} |")
    markdown = "\n".join(lines)
    note = (f"\nSynthetic data, short CPU schedules: the numbers show the pipeline works end to end, not the "
            f"papers' results. Total demo time {total_seconds / 60:.1f} min.\n")
    atomic_write_text(out_dir / "demo_results.md", "# nnunet_covid demo\n\n" + markdown + "\n" + note)
    atomic_write_json(out_dir / "demo_results.json", {"rows": rows, "total_seconds": total_seconds})
    print("\n" + markdown + note + f"Written to {out_dir / 'demo_results.md'} and {out_dir / 'demo_results.json'}")


def run(args: argparse.Namespace) -> int:
    from nnunet_covid.cli import CLIError
    from nnunet_covid.nnunet_commands import CommandFailed

    preset = PRESETS["quick" if args.quick else "default"]
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise CLIError("--device cuda was given but torch sees no CUDA device; use --device cpu")
    if args.workdir.exists() and not args.workdir.is_dir():
        raise CLIError(f"--workdir {args.workdir}: exists and is not a folder")
    try:
        args.workdir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CLIError(f"--workdir {args.workdir}: cannot create the folder ({e.strerror})") from None
    try:
        Demo(args.workdir, args.device, preset).run()
    except CommandFailed as e:
        raise CLIError(str(e)) from None
    return 0
