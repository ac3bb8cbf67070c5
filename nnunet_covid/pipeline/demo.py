"""The end-to-end demo on built-in synthetic data: the demo's own data and presentation around two study grids.

1. data: synthetic raw downloads in the real layouts of MSD Task06 Lung, StructSeg 2019 lung GTV,
   NSCLC pleural effusion (DICOM CT + reoriented masks), COVID-19-CT-Seg and the 2D COVID slice set
   (:mod:`~nnunet_covid.pipeline.demo_data`), converted with the package's converters (the COVID target
   with ``--crop-lung``; the three non-COVID sources merged into a multi-lesion pre-training dataset);
2. work: the study grids ``trainer_configs/demo_transfer.json`` and ``demo_ncovsegnet.json``, run by the
   same code as ``nnunet-covid study`` (:mod:`~nnunet_covid.pipeline.study`): nnU-Net planning (the
   target's plans moved onto the pre-training dataset), multi-lesion pre-training, train-from-scratch
   and every transfer strategy on fold 0 of the COVID-19-CT-Seg benchmark split (4 training cases, 16
   held out), nCoVSegNet on the slices, nnU-Net's final validation of the held-out cases, evaluation
   and the study report;
3. presentation: the comparison table (DSC, NSD, seconds per epoch), printed and written to
   ``results/demo_results.{md,json}``; the infection burden of the held-out COVID volumes per strategy
   (percent of the lungs involved and CT category, against the ground truth's) and one overlay figure
   (the best strategy's median case) in ``results/demo_burden.{md,json}`` and ``results/median_case_<case>.png``
   (the study report holds the per-case burden, a Bland-Altman plot and worst/best pictures).

CPU budget (15 minutes on 2 cores): the strategies train nnU-Net's ``2d`` configuration of the
lung-cropped volumes with the ``_demo`` variants (13 epochs of 12 iterations). Measured on the demo
data: nnU-Net's 3D U-Net was still predicting background only after 480 iterations at a quarter of
its width (and needed about 200 iterations at full width, 0.75 s each), while the 2D U-Net separated
the lesions after about 120 iterations of 0.37 s. ``--quick`` runs the same grids with the ``_tiny``
variants on smaller data. Every step is skipped when its output exists, so a rerun resumes.
"""
from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from nnunet_covid.core.atomic_io import atomic_write_json, atomic_write_text
from nnunet_covid.evaluation.report import build_report, markdown_table
from nnunet_covid.pipeline import demo_data
from nnunet_covid.pipeline.study import execute, load_study, plan_study, write_manifest
from nnunet_covid.training.trainer_config import trainer_configs_dir

GRIDS = ("demo_transfer", "demo_ncovsegnet")
BURDEN_GRID = "demo_transfer"  # 3D volumes: burden needs whole lungs (the 2D slices have none)
TRAINER_SUFFIX = "_demo"
SOURCE_IDS = {"msd-lung": 801, "structseg-lung-gtv": 802, "nsclc-effusion": 803}
MULTILESION_ID = 800
TARGET_ID = 810
TARGET_2D_ID = 820
TITLES = {"scratch": "train from scratch", "continual": "continual learning", "body_finetune": "body fine-tuning",
          "frozen_encoder": "frozen encoder (lesion representations)", "hybrid_encoder": "hybrid encoder",
          "ncovsegnet_small": "nCoVSegNet, CPU-sized (2D slices, no ImageNet file)"}


@dataclass(frozen=True)
class DemoPreset:
    """Data sizes and the trainer variant of one demo flavour."""

    volume_shape: tuple[int, int, int]
    source_cases: int
    trainer_suffix: str
    slice_size: int
    slices: int


PRESETS = {
    "default": DemoPreset(volume_shape=(24, 64, 64), source_cases=4, trainer_suffix="_demo", slice_size=128,
                          slices=24),
    "quick": DemoPreset(volume_shape=(24, 48, 48), source_cases=2, trainer_suffix="_tiny", slice_size=64, slices=12),
}


class Demo:
    """The demo's data, its two studies and its table; see the module docstring."""

    def __init__(self, workdir: Path, device: str, preset: DemoPreset):
        from nnunet_covid.core.nnunet_commands import nnunet_environment

        self.workdir = Path(workdir).resolve()
        self.device = device
        self.preset = preset
        self.env = nnunet_environment(self.workdir, device)
        self.started = time.time()

    def say(self, message: str) -> None:
        print(message, flush=True)

    def stage(self, number: int, title: str) -> None:
        self.say(f"[{number}/4] {title}   (elapsed {(time.time() - self.started) / 60:4.1f} min)")

    # ------------------------------------------------------------------------------------------- data
    def write_raw_downloads(self) -> dict[str, Path]:
        """Each download written into a temporary folder and renamed when complete (a rerun skips it)."""
        n, shape = self.preset.source_cases, self.preset.volume_shape
        writers = {
            "msd-lung": lambda root: demo_data.write_msd_lung_layout(root, n_cases=n, seed=100, shape=shape),
            "structseg-lung-gtv": lambda root: demo_data.write_structseg_layout(root, n_cases=n, seed=200,
                                                                                shape=shape),
            "nsclc-effusion": lambda root: demo_data.write_nsclc_effusion_layout(root, n_cases=n, seed=300,
                                                                                 shape=shape),
            "covid19-ct-seg": lambda root: demo_data.write_covid19_ct_seg_layout(root, seed=400, shape=shape),
            "covid-semiseg-2d": lambda root: demo_data.write_covid_semiseg_2d_layout(
                root, n_slices=self.preset.slices, seed=500, size=self.preset.slice_size),
        }
        folders = {}
        for name, write in writers.items():
            folder = self.workdir / "raw_downloads" / name
            if not folder.is_dir():
                staging = folder.with_name(f".{name}.partial")
                if staging.exists():
                    shutil.rmtree(staging)
                write(staging)
                staging.rename(folder)
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
        sources = [convert_msd_lung(raw["msd-lung"], SOURCE_IDS["msd-lung"], output_root=out),
                   convert_structseg_lung_gtv(raw["structseg-lung-gtv"], SOURCE_IDS["structseg-lung-gtv"],
                                              output_root=out),
                   convert_nsclc_effusion(raw["nsclc-effusion"], SOURCE_IDS["nsclc-effusion"], output_root=out)]
        convert_multilesion(out, MULTILESION_ID, output_root=out, sources=[s.name for s in sources])
        convert_covid19_ct_seg(raw["covid19-ct-seg"], TARGET_ID, output_root=out, crop_lung=True)
        convert_covid_semiseg_2d(raw["covid-semiseg-2d"], TARGET_2D_ID, output_root=out)

    # ------------------------------------------------------------------------------------------ studies
    def grid(self, name: str) -> Path:
        """The shipped grid with this preset's trainer variant, written into the workdir (rerunnable by hand)."""
        study = load_study(trainer_configs_dir() / f"{name}.json")
        for entry in [*study["strategies"], *study.get("pretrained_sources", {}).values()]:
            entry["trainer"] = entry["trainer"].removesuffix(TRAINER_SUFFIX) + self.preset.trainer_suffix
        path = self.workdir / "grids" / f"{name}.json"
        atomic_write_text(path, json.dumps(study, indent=2))
        return path

    def run_study(self, name: str) -> tuple[dict, Path]:
        """Plan and execute one grid (finished steps skipped); returns the grid and its study folder."""
        study = load_study(self.grid(name))
        study_dir = self.workdir / "studies" / study["name"]
        steps, runs = plan_study(study, study_dir, device=self.device, environ=self.env)
        write_manifest(study, study_dir, runs)
        execute(steps, report=lambda line: self.say("   " + line), environ=self.env)
        return study, study_dir

    def run(self) -> list[dict]:
        self.stage(1, "writing synthetic raw downloads (MSD, StructSeg, NSCLC DICOM, COVID-19-CT-Seg, 2D slices)")
        raw = self.write_raw_downloads()
        self.stage(2, "converting them to nnU-Net raw datasets and merging the multi-lesion pre-training set")
        self.convert(raw)
        rows = []
        for number, name in enumerate(GRIDS, start=3):
            self.stage(number, f"study {name}: plan, pre-train, train, validate, evaluate, report")
            study, study_dir = self.run_study(name)
            rows += table_rows(study, study_dir)
            if name == BURDEN_GRID:
                burden = burden_rows(study_dir, self.workdir / "results")
        write_table(rows, self.workdir / "results", time.time() - self.started)
        write_burden(burden, self.workdir / "results")
        return rows


# ------------------------------------------------------------------------------------------- presentation
def table_rows(study: dict, study_dir: Path) -> list[dict]:
    """One row per run of a finished study, from its report (mean ± std over the held-out cases)."""
    report = build_report(study_dir, study_dir / "report")
    summary = {(s["strategy"], s["metric"]): s for s in report["summary"]}
    seconds = {}
    for row in report["epoch_times"]:
        seconds.setdefault(row["strategy"], []).append(row["seconds_per_epoch"])
    trainers = {s["name"]: s["trainer"] for s in study["strategies"]}
    rows = []
    for label in report["strategies"]:
        strategy, _, source = label.partition("[")
        rows.append({"strategy": TITLES.get(strategy, strategy), "trainer": trainers[strategy],
                     "pretrained": source.rstrip("]") or "none", "dataset": str(study["target"]["dataset"]),
                     "n_cases": summary[(label, "dsc")]["n_cases"],
                     "dsc_mean": summary[(label, "dsc")]["case_mean"], "dsc_std": summary[(label, "dsc")]["case_std"],
                     "nsd_mean": summary[(label, "nsd")]["case_mean"], "nsd_std": summary[(label, "nsd")]["case_std"],
                     "seconds_per_epoch": sum(seconds[label]) / len(seconds[label]) if label in seconds else None})
    return rows


def write_table(rows: list[dict], out_dir: Path, total_seconds: float) -> None:
    """Print the comparison table and write it as JSON and Markdown (atomically)."""
    body = [[r["strategy"], r["trainer"], r["pretrained"], str(r["n_cases"]), f"{r['dsc_mean']:.3f} ± {r['dsc_std']:.3f}",
             f"{r['nsd_mean']:.3f} ± {r['nsd_std']:.3f}",
             f"{r['seconds_per_epoch']:.1f}" if r["seconds_per_epoch"] is not None else "n/a"] for r in rows]
    markdown = markdown_table(["strategy", "trainer", "pre-trained", "held-out cases", "DSC", "NSD@3mm", "s/epoch"],
                              body)
    note = (f"\nSynthetic data, short CPU schedules: the numbers show the pipeline works end to end, not the "
            f"papers' results. Total demo time {total_seconds / 60:.1f} min.\n")
    atomic_write_text(out_dir / "demo_results.md", "# nnunet_covid demo\n\n" + markdown + "\n" + note)
    atomic_write_json(out_dir / "demo_results.json", {"rows": rows, "total_seconds": total_seconds})
    print("\n" + markdown + note + f"Written to {out_dir / 'demo_results.md'} and {out_dir / 'demo_results.json'}")


def burden_rows(study_dir: Path, out_dir: Path) -> dict:
    """Burden of the study's held-out cases per strategy (also added to its report) and the figure of the
    median case (by DSC) of the strategy with the best mean DSC."""
    from nnunet_covid.evaluation.burden_report import median_case_figure, study_burden

    burden = study_burden(study_dir, study_dir / "report", overlays=1)
    dsc = {a["strategy"]: [r["dsc"] for r in burden["cases"] if r["strategy"] == a["strategy"]]
           for a in burden["agreement"]}
    best = max(dsc, key=lambda label: sum(dsc[label]) / len(dsc[label]))
    case, figure = median_case_figure(study_dir, best, out_dir)
    def title(label: str) -> str:
        return TITLES.get(label.partition("[")[0], label)
    return {"rows": [{**a, "title": title(a["strategy"])} for a in burden["agreement"]],
            "figure": {"strategy": title(best), "case": case, "file": figure.name}}


def write_burden(burden: dict, out_dir: Path) -> None:
    """Print the burden table and write it as JSON and Markdown with the overlay figure (atomically)."""
    def pct(value) -> str:
        return "n/a" if value is None else f"{value:.1f}"
    body = [[r["title"], str(r["n_cases"]), pct(r["predicted_involvement_pct"]), pct(r["gt_involvement_pct"]),
             pct(r["mean_abs_difference_pp"]),
             "n/a" if not r["n_categorised"] else f"{r['category_agreement'] * 100:.0f} %", r["predicted_categories"]]
            for r in burden["rows"]]
    markdown = markdown_table(["strategy", "held-out cases", "lungs involved, predicted (%)", "ground truth (%)",
                               "mean abs difference (pp)", "same CT category", "predicted CT categories"], body)
    figure = burden["figure"]
    note = (f"\nInfection burden of the held-out COVID volumes: percent of both lungs involved (unsupervised lung "
            f"mask, lesions counted as lung) and MosMedData CT category, per case against the ground truth's. "
            f"Overlay: {figure['file']}, the median case by DSC of {figure['strategy']} (the best mean DSC).\n")
    atomic_write_text(out_dir / "demo_burden.md", "# Infection burden\n\n" + markdown + "\n" + note
                      + f"\n![{figure['case']}]({figure['file']})\n")
    atomic_write_json(out_dir / "demo_burden.json", burden)
    print("\n" + markdown + note + f"Written to {out_dir / 'demo_burden.md'} and {out_dir / 'demo_burden.json'}")
