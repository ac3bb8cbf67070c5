"""One-shot GPU check: every trainer with torch.compile and AMP as nnU-Net runs them on a GPU (JSON + Markdown).

    python benchmarks/gpu_check.py [--out gpu_check_results] [--device cuda]     # one GPU, under 8 minutes
    python benchmarks/gpu_check.py --quick --device cpu --out /tmp/gpu_check      # the same code, tiny, on the CPU

Phases (each trainer measured in a fresh process; a failure is a row of the report, not the end of the check):

1. data: synthetic chest CTs at about 1 mm (``--shape``, default 128 x 192 x 192 voxels of 1.0 x 0.9 x 0.9 mm)
   as the COVID target and two lesion sources merged by ``nnunet-covid convert multilesion --labels
   per-source``; nnU-Net plans the target (stock ``3d_fullres``: nnU-Net's own patch and batch size for such
   a CT), its plans are moved onto the merged set, both are preprocessed; a 2D slice set (``--slice-size``)
   is converted and planned for ``2d``;
2. training steps: ``train_step`` of every trainer on a random batch of the plans' batch and patch size,
   nnU-Net's way on CUDA (torch.compile unless ``nnUNet_compile=false``, fp16 autocast + GradScaler):
   median step time and peak extra CUDA memory relative to ``nnUNetTrainer``, against the targets
   (frozen encoder <= 0.7x time; hybrid <= 1.15x time and <= 1.3x memory). All trainers are first
   compiled side by side (one untimed step each), then timed one after another from inductor's cache;
3. nCoVSegNet (the paper's full network) vs nnU-Net's 2d U-Net on the same 2d plans: training it/s and
   sliding-window inference slices/s, with AMP on CUDA;
4. stock commands: ``nnUNetv2_train ... -tr <Trainer>_tiny`` (the transfer trainers start from the
   baseline's checkpoint through ``nnUNet_covid_pretrained``) and ``nnUNetv2_predict`` of one case with
   each trainer, ``--parallel`` at a time (CPU-light, GPU-shared); the prediction must hold only the
   dataset's labels.

``--quick`` shrinks the data (16 x 48 x 48 volumes, 64-pixel slices), the steps and phase 4's trainer list,
so the test suite runs the same code on the CPU. Results: ``<out>/gpu_check.json`` and ``<out>/gpu_check.md``.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import functools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_hybrid_encoder import BASELINE, measure_trainer  # noqa: E402
from bench_ncovsegnet import bench as bench_2d  # noqa: E402

TARGET_ID, MULTILESION_ID, SLICES_ID = 971, 970, 972
TARGET_TRAINERS = (BASELINE, "ContinualLearningTrainer", "BodyFineTuneTrainer", "FrozenEncoderTrainer",
                   "HybridEncoderTrainer")
MULTILESION_TRAINERS = ("MultiLesionPretrainTrainer", "MultiLesionPartialLabelTrainer")
STOCK_QUICK = (BASELINE, "HybridEncoderTrainer")
TARGETS = {"FrozenEncoderTrainer": {"time": 0.7}, "HybridEncoderTrainer": {"time": 1.15, "memory": 1.3}}


def log(message: str) -> None:
    print(f"[gpu_check {time.strftime('%H:%M:%S')}] {message}", flush=True)


# ------------------------------------------------------------------------------------------------ 1. data
def synthetic_cases(lesion: str, seeds: list[int], shape, spacing) -> list:
    """``lesion_case``s made in parallel worker processes (a realistic-size CT takes seconds)."""
    from nnunet_covid.pipeline.demo_data import lesion_case

    workers = min(len(seeds), os.cpu_count() or 1)
    with concurrent.futures.ProcessPoolExecutor(workers) as pool:
        return list(pool.map(functools.partial(lesion_case, lesion, shape=shape, spacing=spacing), seeds))


def prepare_data(root: Path, env: dict, shape: tuple[int, int, int], spacing: tuple[float, float, float],
                 slice_size: int, cases: int) -> dict[str, Path]:
    """Write, convert, plan and preprocess the check's datasets; their preprocessed folders."""
    from dataset_conversion.covid_semiseg_2d import convert_covid_semiseg_2d
    from dataset_conversion.multilesion import convert_multilesion
    from nnunet_covid.core.nnunet_commands import nnunet_tool, run_nnunet
    from nnunet_covid.pipeline.demo_data import write_covid_semiseg_2d_layout
    from nnunet_covid.pipeline.synthetic_ct import write_nnunet_dataset

    raw, preprocessed = Path(env["nnUNet_raw"]), Path(env["nnUNet_preprocessed"])
    write_nnunet_dataset(raw, TARGET_ID, "CheckCovid", synthetic_cases("covid", list(range(cases)), shape, spacing))
    sources = [write_nnunet_dataset(raw, 973 + i, name, synthetic_cases(lesion, [10 * (i + 1), 10 * (i + 1) + 1],
                                                                        shape, spacing))
               for i, (name, lesion) in enumerate((("CheckTumour", "tumour"), ("CheckEffusion", "effusion")))]
    convert_multilesion(raw, MULTILESION_ID, name="CheckMultiLesion", output_root=raw,
                        sources=[s.name for s in sources], labels="per-source")
    if slice_size:
        slices = write_covid_semiseg_2d_layout(root / "slices_download", n_slices=max(6, cases), seed=3,
                                               size=slice_size)
        convert_covid_semiseg_2d(slices, SLICES_ID, name="CheckSlices", output_root=raw, progress=False)

    def run(*args, name: str) -> None:
        run_nnunet([nnunet_tool(args[0]), *map(str, args[1:])], env, root / "logs" / f"{name}.log", report=log)

    workers = str(min(8, os.cpu_count() or 1))
    run("nnUNetv2_plan_and_preprocess", "-d", TARGET_ID, MULTILESION_ID, "-c", "3d_fullres", "-np", workers,
        "-npfp", workers, "--no_pp", name="plan")
    run("nnUNetv2_move_plans_between_datasets", "-s", TARGET_ID, "-t", MULTILESION_ID, "-sp", "nnUNetPlans",
        "-tp", "nnUNetPlans", name="move_plans")
    run("nnUNetv2_preprocess", "-d", TARGET_ID, MULTILESION_ID, "-c", "3d_fullres", "-np", workers,
        name="preprocess")
    if slice_size:
        run("nnUNetv2_plan_and_preprocess", "-d", SLICES_ID, "-c", "2d", "-np", workers, "-npfp", workers,
            name="plan_slices")
    return {name: next(preprocessed.glob(f"Dataset{i:03d}_*"), None)
            for name, i in (("target", TARGET_ID), ("multilesion", MULTILESION_ID), ("slices", SLICES_ID))}


# --------------------------------------------------------------------------------------- 2. training steps
def measure_in_fresh_process(trainer: str, dataset: Path, device: str, warmup: int, steps: int, env: dict) -> dict:
    out = subprocess.run([sys.executable, __file__, "--worker", trainer, "--worker-dataset", str(dataset),
                          "--device", device, "--warmup", str(warmup), "--steps", str(steps)],
                         env=env, capture_output=True, text=True)
    if out.returncode != 0:
        return {"trainer": trainer, "error": (out.stderr.strip().splitlines() or ["no output"])[-1][:300]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def training_steps(datasets: dict[str, Path], args, env: dict, rows: list) -> list[dict]:
    """Appends each trainer's row to ``rows`` as soon as it is measured (the caller writes partial results)."""
    jobs = [(t, datasets["target"]) for t in TARGET_TRAINERS] + [(t, datasets["multilesion"])
                                                                 for t in MULTILESION_TRAINERS]
    jobs = [(t, d) for t, d in jobs if not args.trainers or t in args.trainers]
    # torch.compile of a 3D U-Net takes a minute or two per graph: compile every trainer at once (one untimed
    # step each, ``--parallel`` processes), so that the timed runs below find the graphs in inductor's cache
    if args.device.startswith("cuda") and env.get("nnUNet_compile", "true").lower() in ("true", "1", "t"):
        log(f"compiling {len(jobs)} trainers, {args.parallel} at a time (one untimed step each)")
        with concurrent.futures.ThreadPoolExecutor(args.parallel) as pool:
            list(pool.map(lambda job: measure_in_fresh_process(job[0], job[1], args.device, 1, 0, env), jobs))
    for trainer, dataset in jobs:
        log(f"training steps: {trainer}")
        rows.append(measure_in_fresh_process(trainer, dataset, args.device, args.warmup, args.steps, env))
        args.write_partial()
    base = next((r for r in rows if r["trainer"] == BASELINE and "error" not in r), None)
    for row in rows:
        if "error" in row or base is None:
            continue
        row["step_time"] = statistics.median(row["step_times"])
        row["time_ratio"] = row["step_time"] / statistics.median(base["step_times"])
        row["memory_ratio"] = row["peak_extra_bytes"] / base["peak_extra_bytes"]
        target = TARGETS.get(row["trainer"], {})
        row["targets_met"] = {k: row[f"{k}_ratio"] <= limit for k, limit in target.items()}
    return rows


# ---------------------------------------------------------------------------------- 3. nCoVSegNet vs 2d U-Net
def two_d(datasets: dict[str, Path], args) -> list[dict]:
    import torch
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from nnunet_covid.training import NCoVSegNetTrainer

    if not args.device.startswith("cuda"):
        torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))
    rows = []
    for cls in (nnUNetTrainer, NCoVSegNetTrainer):
        log(f"2d: {cls.__name__}")
        try:
            rows.append(bench_2d(cls, datasets["slices"], args.device, args.iterations, args.slices))
        except Exception as e:  # noqa: BLE001 - a failing trainer is a result of the check
            rows.append({"trainer": cls.__name__, "error": f"{type(e).__name__}: {e}"[:300]})
    if len(rows) == 2 and not any("error" in r for r in rows):
        rows[1]["train_ratio"] = rows[1]["train_it_s"] / rows[0]["train_it_s"]
        rows[1]["inference_ratio"] = rows[1]["infer_slices_s"] / rows[0]["infer_slices_s"]
    return rows


# ------------------------------------------------------------------------------------------- 4. stock commands
def stock_commands(datasets: dict[str, Path], args, env: dict, root: Path) -> list[dict]:
    from nnunet_covid.core.errors import CommandFailed
    from nnunet_covid.core.nnunet_commands import nnunet_tool, run_nnunet
    from nnunet_covid.core.nnunet_conventions import training_folder

    trainers = args.stock_trainers or (STOCK_QUICK if args.quick else TARGET_TRAINERS + MULTILESION_TRAINERS)
    env = {**env, "nnUNet_n_proc_DA": env.get("nnUNet_n_proc_DA", "3")}  # several trainings share the CPU cores
    raw = Path(env["nnUNet_raw"])
    inputs = root / "predict_input"
    inputs.mkdir(exist_ok=True)
    for name in ("target", "multilesion"):
        image = sorted((raw / datasets[name].name / "imagesTr").glob("*_0000.nii.gz"))[0]
        (inputs / name).mkdir(exist_ok=True)
        (inputs / name / image.name).unlink(missing_ok=True)
        (inputs / name / image.name).symlink_to(image)

    def dataset_of(trainer: str) -> Path:
        return datasets["multilesion" if trainer in MULTILESION_TRAINERS else "target"]

    def train_and_predict(trainer: str, extra_env: dict) -> dict:
        tiny, dataset, fold = f"{trainer}_tiny", dataset_of(trainer), "all"
        logs, start = root / "logs", time.perf_counter()
        try:
            run_nnunet([nnunet_tool("nnUNetv2_train"), dataset.name, "3d_fullres", fold, "-tr", tiny,
                        "-device", args.device.split(":")[0]], {**env, **extra_env}, logs / f"stock_{tiny}.log",
                       report=lambda _: None)
            out = root / "predictions" / tiny
            run_nnunet([nnunet_tool("nnUNetv2_predict"), "-i", str(inputs / dataset_kind(trainer)), "-o", str(out),
                        "-d", dataset.name, "-c", "3d_fullres", "-f", fold, "-tr", tiny, "-device",
                        args.device.split(":")[0], "-npp", "1", "-nps", "1"], {**env, **extra_env},
                       logs / f"stock_predict_{tiny}.log", report=lambda _: None)
            labels = check_prediction(out, raw / dataset.name / "dataset.json")
            return {"trainer": tiny, "seconds": time.perf_counter() - start, "labels": labels}
        except (CommandFailed, RuntimeError) as e:
            lines = [line for line in str(e).splitlines() if line.strip()]
            return {"trainer": tiny, "error": f"{lines[0][:200]} ... {lines[-1][:200]}"}

    def dataset_kind(trainer: str) -> str:
        return "multilesion" if trainer in MULTILESION_TRAINERS else "target"

    log(f"stock train + predict: {BASELINE}_tiny first (its checkpoint is the others' pre-trained start)")
    rows = [train_and_predict(BASELINE, {})]
    checkpoint = training_folder(env["nnUNet_results"], datasets["target"].name, f"{BASELINE}_tiny", "nnUNetPlans",
                                 "3d_fullres", "all") / "checkpoint_final.pth"
    rest = [t for t in trainers if t != BASELINE]
    with concurrent.futures.ThreadPoolExecutor(args.parallel) as pool:
        futures = [pool.submit(train_and_predict, t, {"nnUNet_covid_pretrained": str(checkpoint)}) for t in rest]
        for trainer, future in zip(rest, futures):
            log(f"stock train + predict: {trainer}_tiny")
            rows.append(future.result())
    return rows


def check_prediction(folder: Path, dataset_json: Path) -> list[int]:
    """The label values of the one prediction in ``folder``; an error unless they are the dataset's labels."""
    import numpy as np
    import SimpleITK as sitk

    files = sorted(folder.glob("*.nii.gz"))
    if len(files) != 1:
        raise RuntimeError(f"{folder}: expected one prediction, found {len(files)}")
    values = sorted(int(v) for v in np.unique(sitk.GetArrayFromImage(sitk.ReadImage(str(files[0])))))
    allowed = set(json.loads(dataset_json.read_text())["labels"].values())
    if not set(values) <= allowed:
        raise RuntimeError(f"{files[0]}: labels {values} not in the dataset's {sorted(allowed)}")
    return values


# --------------------------------------------------------------------------------------------------- report
def write_results(result: dict, out: Path) -> None:
    from nnunet_covid.core.atomic_io import atomic_write_text

    atomic_write_text(out / "gpu_check.json", json.dumps(result, indent=2))
    atomic_write_text(out / "gpu_check.md", markdown(result))


def markdown(result: dict) -> str:
    s = result["settings"]
    lines = [f"# GPU check ({s['device']}{', quick' if s['quick'] else ''})", "",
             f"{s['device_name']}; torch {s['torch']}; nnUNet_compile={s['nnUNet_compile']}; {s['total_seconds']:.0f} s "
             f"in all.", "", "## Training steps (relative to nnUNetTrainer)", "",
             "| trainer | patch x batch | compiled | AMP | step (s) | x baseline | peak extra memory (MiB) | x baseline "
             "| target |", "|---|---|---|---|---|---|---|---|---|"]
    for r in result["training_steps"]:
        if "error" in r:
            lines.append(f"| {r['trainer']} | failed: {r['error']} | | | | | | | |")
            continue
        met = ", ".join(f"{k} <= {TARGETS[r['trainer']][k]}x: {'met' if ok else 'NOT met'}"
                        for k, ok in r.get("targets_met", {}).items())
        lines.append(f"| {r['trainer']} | {r['patch_size']} x {r['batch_size']} | {r['compiled']} | {r['amp']} | "
                     f"{r.get('step_time', 0):.4f} | {r.get('time_ratio', float('nan')):.2f} | "
                     f"{r['peak_extra_bytes'] / 2**20:.0f} | {r.get('memory_ratio', float('nan')):.2f} | {met} |")
    lines += ["", "## nCoVSegNet vs nnU-Net's 2d U-Net (same 2d plans)", "",
              "| trainer | params (M) | batch x patch | train it/s | inference slices/s | x 2d U-Net (train / infer) |",
              "|---|---|---|---|---|---|"]
    for r in result["two_d"]:
        if "error" in r:
            lines.append(f"| {r['trainer']} | failed: {r['error']} | | | | |")
            continue
        ratio = (f"{r['train_ratio']:.2f} / {r['inference_ratio']:.2f}" if "train_ratio" in r else "")
        lines.append(f"| {r['trainer']} | {r['params_M']:.1f} | {r['batch']} x {r['patch']} | {r['train_it_s']:.2f} | "
                     f"{r['infer_slices_s']:.2f} | {ratio} |")
    lines += ["", "## Stock nnUNetv2_train + nnUNetv2_predict", "", "| trainer | result |", "|---|---|"]
    for r in result["stock"]:
        lines.append(f"| {r['trainer']} | " + (f"failed: {r['error']}" if "error" in r else
                                                f"ok in {r['seconds']:.0f} s, labels {r['labels']}") + " |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("gpu_check_results"))
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true", help="tiny data and steps: the same code on the CPU in minutes")
    parser.add_argument("--shape", type=int, nargs=3, default=None, help="synthetic CT shape z y x")
    parser.add_argument("--parallel", type=int, default=4, help="stock train+predict runs at a time")
    parser.add_argument("--phases", nargs="+", default=("training_steps", "two_d", "stock"),
                        choices=("training_steps", "two_d", "stock"), help="phases after the data (default: all)")
    parser.add_argument("--trainers", nargs="+", default=None, help="trainers of phase 2 (default: all)")
    parser.add_argument("--cases", type=int, default=None, help="synthetic target cases (default 4; --quick 2)")
    parser.add_argument("--stock-trainers", nargs="+", default=None,
                        help="trainers of phase 4 (default: all; --quick: nnUNetTrainer and HybridEncoderTrainer)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--worker-dataset", help=argparse.SUPPRESS)
    parser.add_argument("--warmup", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 3)
    args.steps = args.steps if args.steps is not None else (1 if args.quick else 10)
    if args.worker:
        print(json.dumps(measure_trainer(args.worker, Path(args.worker_dataset), warmup=args.warmup,
                                         steps=args.steps, device=args.device)))
        return 0

    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("gpu_check: --device cuda but torch sees no CUDA device (use --quick --device cpu for the CPU run)")
    args.iterations, args.slices = (1, 1) if args.quick else (10, 20)
    args.parallel = min(args.parallel, 2) if args.quick else args.parallel
    shape = tuple(args.shape or ((16, 48, 48) if args.quick else (128, 192, 192)))
    spacing = (1.0, 0.9, 0.9)
    started = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        from nnunet_covid.core.nnunet_commands import nnunet_environment

        root = Path(tmp)
        env = nnunet_environment(root, "cpu" if args.device == "cpu" else "cuda")
        os.environ.update({k: env[k] for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")})
        log(f"data: synthetic CT {shape} at {spacing} mm, planned and preprocessed by nnU-Net")
        slice_size = 0 if "two_d" not in args.phases else 64 if args.quick else 512
        datasets = prepare_data(root, env, shape, spacing, slice_size, args.cases or (2 if args.quick else 4))
        result = {"settings": {"device": args.device, "quick": args.quick, "shape": shape, "spacing": spacing,
                               "torch": torch.__version__, "nnUNet_compile": env.get("nnUNet_compile", "default (on)"),
                               "device_name": torch.cuda.get_device_name() if args.device.startswith("cuda")
                               else platform.processor() or platform.machine()}}
        result.update({"training_steps": [], "two_d": [], "stock": []})
        def write_partial() -> None:
            result["settings"]["total_seconds"] = time.perf_counter() - started
            write_results(result, args.out)

        args.write_partial = write_partial
        for part, run_phase in (("training_steps", lambda: training_steps(datasets, args, env, result[part])),
                                ("two_d", lambda: two_d(datasets, args)),
                                ("stock", lambda: stock_commands(datasets, args, env, root))):
            if part not in args.phases:
                continue
            result[part] = run_phase()
            result["settings"]["total_seconds"] = time.perf_counter() - started
            write_results(result, args.out)  # after every phase: a check cut short still reports what it measured
    print(markdown(result))
    failed = [r["trainer"] for part in ("training_steps", "two_d", "stock") for r in result[part] if "error" in r]
    if failed:
        print(f"gpu_check: failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
