"""Bad and unusual input to every command, one table row each: `convert <each converter>`, `evaluate`, `uncrop`,
`report` and `study --dry-run`.

Every row runs the real CLI in this process and asserts exit code 2, exactly one error line that names the
file, case or option and the problem, no traceback, and that nothing changed on disk (every tree the row
touches is hashed before and after). Rows of kind "per-case" are inputs where one case is broken: the others
must be converted, the failure listed once, the inputs unchanged and the dataset not half-written.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import SimpleITK as sitk

from dataset_conversion.covid19_ct_seg import convert_covid19_ct_seg
from dataset_conversion.covid_semiseg_2d import convert_covid_semiseg_2d
from dataset_conversion.lidc_idri import convert_lidc_idri
from dataset_conversion.mosmed import convert_mosmed
from dataset_conversion.msd_lung import convert_msd_lung
from dataset_conversion.multilesion import convert_multilesion
from dataset_conversion.nsclc_effusion import convert_nsclc_effusion
from dataset_conversion.structseg import convert_structseg_lung_gtv
from nnunet_covid.cli import main
from nnunet_covid.evaluation.metrics import METRIC_NAMES
from nnunet_covid.pipeline import demo_data
from helpers.raw_layouts import write_lidc_layout, write_mosmed_layout

LIDC_SHAPE, LIDC_SPACING = (12, 64, 64), (2.5, 0.9, 0.9)
SMALL = (16, 32, 32)
RUNNING_AS_ROOT = os.geteuid() == 0  # file permissions do not stop root


@pytest.fixture(scope="module")
def layouts(tmp_path_factory) -> dict[str, Path]:
    """Tiny raw downloads of every converter's layout, written once and never modified by a row."""
    root = tmp_path_factory.mktemp("layouts")
    return {"lidc": write_lidc_layout(root / "lidc", n_cases=2, seed=0, shape=LIDC_SHAPE, spacing=LIDC_SPACING),
            "msd": demo_data.write_msd_lung_layout(root / "msd", n_cases=2, seed=1),
            "structseg": demo_data.write_structseg_layout(root / "structseg", n_cases=2, seed=2),
            "nsclc": demo_data.write_nsclc_effusion_layout(root / "nsclc", n_cases=1, seed=3),
            "mosmed": write_mosmed_layout(root / "mosmed", n_cases=2, seed=4),
            "covid": demo_data.write_covid19_ct_seg_layout(root / "covid", seed=5, shape=SMALL),
            "semiseg": demo_data.write_covid_semiseg_2d_layout(root / "semiseg", n_slices=2, seed=6, size=32)}


@pytest.fixture(scope="module")
def converted(layouts, tmp_path_factory) -> Path:
    """A raw root with every converter's dataset converted once with its default settings (reruns are refused)."""
    raw = tmp_path_factory.mktemp("converted")
    convert_msd_lung(layouts["msd"], 202, output_root=raw)
    convert_lidc_idri(layouts["lidc"], 210, output_root=raw, progress=False)
    convert_covid19_ct_seg(layouts["covid"], 211, output_root=raw)
    convert_mosmed(layouts["mosmed"], 212, output_root=raw)
    convert_nsclc_effusion(layouts["nsclc"], 213, output_root=raw)
    convert_covid_semiseg_2d(layouts["semiseg"], 214, output_root=raw, progress=False)
    convert_structseg_lung_gtv(layouts["structseg"], 215, output_root=raw)
    convert_multilesion(raw, 216, output_root=raw, sources=["Dataset202_MSDLung", "Dataset215_StructSegGTV"])
    return raw


@dataclass
class Ctx:
    """What a row builds its input from: its own folder, the shared layouts and converted datasets."""

    tmp: Path
    layouts: dict[str, Path]
    converted: Path

    @property
    def out(self) -> Path:
        return self.tmp / "out"

    def copy(self, name: str) -> Path:
        return Path(shutil.copytree(self.layouts[name], self.tmp / "in" / self.layouts[name].name))

    def write(self, relative: str, content: str | bytes) -> Path:
        path = self.tmp / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)
        return path


@dataclass
class Row:
    id: str
    build: Callable[[Ctx], list]
    expect: tuple[str, ...]
    per_case: str | None = None  # the dataset folder (under ctx.out) of a row where one case fails alone


def tree_state(root: Path) -> dict[str, str] | None:
    """Every folder, file (content hash) and link below ``root``; None when it does not exist."""
    if not root.exists():
        return None
    state = {}
    for folder, dirs, files in os.walk(root):
        rel = os.path.relpath(folder, root)
        state[rel + "/"] = "folder"
        for name in files + [d for d in dirs if (Path(folder) / d).is_symlink()]:
            path = Path(folder) / name
            state[os.path.join(rel, name)] = (f"link {os.readlink(path)}" if path.is_symlink()
                                              else hashlib.sha1(path.read_bytes()).hexdigest())
    return state


# ------------------------------------------------------------------------------------------------ inputs
def nifti(path: Path, array: np.ndarray, spacing=(1.0, 1.0, 2.0), origin=(0.0, 0.0, 0.0)) -> Path:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))
    return path


def eval_folders(ctx: Ctx, n_pred: int = 3) -> tuple[Path, Path]:
    """Ground truth of 3 cases (labels 0/1, with dataset.json) and the first ``n_pred`` predictions."""
    gt, pred = ctx.tmp / "gt", ctx.tmp / "pred"
    pred.mkdir(parents=True)
    for i in range(3):
        mask = np.zeros((6, 8, 8), np.uint8)
        mask[2:4, 2:6, 2 + i:6] = 1
        nifti(gt / f"c{i}.nii.gz", mask)
        if i < n_pred:
            nifti(pred / f"c{i}.nii.gz", np.roll(mask, 1, axis=2))
    (gt / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "lesion": 1},
                                                 "file_ending": ".nii.gz"}))
    return gt, pred


def evaluate_argv(ctx: Ctx, *extra) -> list:
    gt, pred = ctx.tmp / "gt", ctx.tmp / "pred"
    if not gt.exists():
        eval_folders(ctx)
    return ["evaluate", "--gt", gt, "--pred", pred, "-np", "1", "-o", ctx.out, *extra]


def with_prediction(array: np.ndarray, **geometry):
    def build(ctx: Ctx) -> list:
        eval_folders(ctx)
        nifti(ctx.tmp / "pred" / "c1.nii.gz", array, **geometry)
        return evaluate_argv(ctx)
    return build


BOX = {"original_size": [10, 12, 8], "original_spacing": [1.0, 1.0, 2.0], "original_origin": [0.0, 0.0, 0.0],
       "original_direction": [1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0], "crop_index": [2, 3, 1], "crop_size": [5, 6, 4],
       "margin_mm": 10.0, "lung_found": True}


def cropped_dataset(ctx: Ctx, boxes=None, predictions=("c1", "c2")) -> tuple[Path, Path]:
    """A lung-cropped raw dataset (crop_boxes.json, dataset.json) and predictions on its cropped grid."""
    raw, pred = ctx.tmp / "Dataset300_Cropped", ctx.tmp / "pred"
    raw.mkdir(parents=True)
    pred.mkdir(parents=True)
    (raw / "crop_boxes.json").write_text(json.dumps({"c1": BOX, "c2": BOX} if boxes is None else boxes))
    (raw / "dataset.json").write_text(json.dumps({"file_ending": ".nii.gz", "labels": {"background": 0, "x": 1}}))
    for case in predictions:
        nifti(pred / f"{case}.nii.gz", np.ones((4, 6, 5), np.uint8), origin=(2.0, 3.0, 2.0))
    return raw, pred


def uncrop_argv(ctx: Ctx, boxes=None, predictions=("c1", "c2"), out=None) -> list:
    raw, pred = cropped_dataset(ctx, boxes, predictions)
    return ["uncrop", "--pred", pred, "--raw-dataset", raw, "-o", out(ctx) if out else ctx.out]


def metric_rows(shift: float) -> list[dict]:
    return [{"case": f"c{i}", "label": 1, **{m: 0.5 + shift + 0.01 * i for m in METRIC_NAMES}} for i in range(3)]


def study_folder(ctx: Ctx) -> Path:
    """A study folder as `nnunet-covid study` leaves it: relative manifest paths, two evaluated runs."""
    study = ctx.tmp / "study"
    runs = []
    for label, shift in (("scratch", 0.0), ("finetune", 0.05)):
        evaluation = study / "evaluation" / label / "fold_0.json"
        evaluation.parent.mkdir(parents=True)
        evaluation.write_text(json.dumps({"cases": metric_rows(shift)}))
        runs.append({"label": label, "folds": {"0": {"evaluation": f"evaluation/{label}/fold_0.json",
                                                     "training_dir": f"runs/{label}/fold_0"}}})
    (study / "study_manifest.json").write_text(json.dumps({"name": "s", "baseline": "scratch", "runs": runs}))
    return study


def report_argv(ctx: Ctx, change: Callable[[Path], None] = lambda study: None, *extra) -> list:
    study = study_folder(ctx)
    change(study)
    return ["report", study, "-o", ctx.out, *extra]


def evaluation_json(content) -> Callable[[Path], None]:
    def change(study: Path) -> None:
        path = study / "evaluation" / "finetune" / "fold_0.json"
        path.write_bytes(content if isinstance(content, bytes) else json.dumps(content).encode())
    return change


def manifest(content) -> Callable[[Path], None]:
    def change(study: Path) -> None:
        path = study / "study_manifest.json"
        path.write_bytes(content if isinstance(content, bytes) else json.dumps(content).encode())
    return change


GRID = {"name": "tiny", "target": {"dataset": "Dataset101_T", "configuration": "3d_fullres", "plans": "nnUNetPlans",
                                   "folds": [0], "test_cases": "validation", "labels": [1]},
        "pretrained_sources": {"lesions": {"dataset": "Dataset100_S", "configuration": "3d_fullres",
                                           "plans": "nnUNetPlans", "trainer": "MultiLesionPretrainTrainer",
                                           "fold": "all"}},
        "strategies": [{"name": "scratch", "trainer": "nnUNetTrainer"},
                       {"name": "ft", "trainer": "BodyFineTuneTrainer", "sources": ["lesions"]}],
        "baseline": "scratch"}


def grid(change: Callable[[dict], object] | None = None, text: str | bytes | None = None):
    def build(ctx: Ctx) -> list:
        if text is not None:
            path = ctx.write("grid.json", text)
        else:
            data = json.loads(json.dumps(GRID))
            replaced = change(data)  # edits the grid in place, or returns another JSON value (a list)
            path = ctx.write("grid.json", json.dumps(replaced if isinstance(replaced, list) else data))
        return ["study", path, "--dry-run", "--workdir", ctx.tmp / "study"]
    return build


LAYOUT_OF = {"lidc-idri": "lidc", "msd-lung": "msd", "structseg-lung-gtv": "structseg", "nsclc-effusion": "nsclc",
             "mosmed": "mosmed", "covid19-ct-seg": "covid", "covid-semiseg-2d": "semiseg"}


def convert(name: str, layout: str | None = None, *extra, dataset_id: int = 250):
    """``convert <name>`` of a shared layout (unchanged) into the row's own output root."""
    def build(ctx: Ctx) -> list:
        return ["convert", name, "-i", ctx.layouts[layout or LAYOUT_OF[name]], "-d", str(dataset_id), "-o", ctx.out,
                *extra]
    return build


def rerun(name: str, layout: str, dataset_id: int, *extra):
    """``convert <name>`` again into the shared converted root, with other settings."""
    def build(ctx: Ctx) -> list:
        source = ctx.converted if layout == "converted" else ctx.layouts[layout]
        return ["convert", name, "-i", source, "-d", str(dataset_id), "-o", ctx.converted, *extra]
    return build


def broken_copy(name: str, converter: str, breaking: Callable[[Path], None], *extra, dataset_id: int = 251):
    """``convert`` of a private copy of a layout broken by ``breaking``."""
    def build(ctx: Ctx) -> list:
        folder = ctx.copy(name)
        breaking(folder)
        return ["convert", converter, "-i", folder, "-d", str(dataset_id), "-o", ctx.out, *extra]
    return build


def truncate_first_slice(lidc: Path) -> None:
    first = sorted((lidc / "LIDC-IDRI-0001").glob("*/*/*.dcm"))[0]
    first.write_bytes(first.read_bytes()[:200])


def truncate_every_slice(lidc: Path) -> None:
    for dcm in (lidc / "LIDC-IDRI-0001").glob("*/*/*.dcm"):
        dcm.write_bytes(dcm.read_bytes()[:200])


def nan_voxels(task: Path) -> None:
    image = sitk.Cast(sitk.ReadImage(str(task / "imagesTr" / "lung_003.nii.gz")), sitk.sitkFloat32)
    array = sitk.GetArrayFromImage(image)
    array[0, 0, :3] = [np.nan, np.inf, -np.inf]
    broken = sitk.GetImageFromArray(array)
    broken.CopyInformation(image)
    sitk.WriteImage(broken, str(task / "imagesTr" / "lung_003.nii.gz"))


def label_times(value: int, path: str):
    def breaking(folder: Path) -> None:
        sitk.WriteImage(sitk.ReadImage(str(folder / path)) * value, str(folder / path))
    return breaking


def source_dataset_json(content: str):
    def build(ctx: Ctx) -> list:
        root = ctx.tmp / "raw"
        shutil.copytree(ctx.converted / "Dataset202_MSDLung", root / "Dataset202_MSDLung")
        (root / "Dataset202_MSDLung" / "dataset.json").write_text(content)
        return ["convert", "multilesion", "-i", root, "-d", "260", "-o", ctx.out, "--sources", "202"]
    return build


def converted_folder_with(relative: str, content: str, converter: str, layout: str, dataset_id: int, name: str):
    """A copy of a converted dataset whose ``relative`` file is replaced, converted into again."""
    def build(ctx: Ctx) -> list:
        folder = next(ctx.converted.glob(f"Dataset{dataset_id:03d}_*"))
        shutil.copytree(folder, ctx.out / folder.name)
        (ctx.out / folder.name / relative).write_text(content)
        return ["convert", converter, "-i", ctx.layouts[layout], "-d", str(dataset_id), "--name", name, "-o", ctx.out]
    return build


def foreign_folder(ctx: Ctx) -> list:
    ctx.write("out/Dataset252_MSDLung/notes.txt", "someone else's files")
    return ["convert", "msd-lung", "-i", ctx.layouts["msd"], "-d", "252", "-o", ctx.out]


def output_root_below_a_file(ctx: Ctx) -> list:
    ctx.write("afile", "x")
    return ["convert", "msd-lung", "-i", ctx.layouts["msd"], "-d", "250", "-o", ctx.tmp / "afile" / "raw"]


def output_root_is_a_file(ctx: Ctx) -> list:
    return ["convert", "msd-lung", "-i", ctx.layouts["msd"], "-d", "250", "-o", ctx.write("afile", "x")]


ROWS = [
    # --------------------------------------------------------------------------------- convert (every converter)
    Row("convert-input-missing", lambda c: ["convert", "msd-lung", "-i", c.tmp / "nowhere", "-d", "250", "-o", c.out],
        ("input folder", "nowhere", "does not exist")),
    Row("convert-input-is-a-file", lambda c: ["convert", "structseg-lung-gtv", "-i", c.write("f.txt", "x"), "-d", "250",
                                              "-o", c.out], ("f.txt", "is not a folder")),
    Row("convert-output-root-is-a-file", output_root_is_a_file, ("output root", "afile", "is not a folder")),
    Row("convert-output-root-below-a-file", output_root_below_a_file, ("output root", "afile", "cannot be created")),
    Row("convert-crop-margin-nan", convert("lidc-idri", None, "--crop-lung", "--crop-margin", "nan"),
        ("--crop-margin", "expected a finite number >= 0, got nan")),
    Row("convert-crop-margin-inf", convert("msd-lung", None, "--crop-lung", "--crop-margin", "inf"),
        ("--crop-margin", "finite", "got inf")),
    Row("convert-crop-margin-negative", convert("lidc-idri", None, "--crop-lung", "--crop-margin", "-50"),
        ("--crop-margin", ">= 0, got -50")),
    Row("convert-crop-margin-not-a-number", convert("mosmed", None, "--crop-lung", "--crop-margin", "ten"),
        ("--crop-margin", "expected a number, got 'ten'")),
    Row("convert-crop-margin-without-crop-lung", convert("structseg-lung-gtv", "structseg", "--crop-margin", "5"),
        ("--crop-margin needs --crop-lung",)),
    Row("convert-num-processes-0", convert("msd-lung", None, "-np", "0"), ("--num-processes", "expected a finite integer >= 1, got 0")),
    Row("convert-dataset-id-1000", convert("msd-lung", None, dataset_id=1000), ("--dataset-id", "1..999", "1000")),
    Row("convert-id-used-by-another-name", rerun("msd-lung", "msd", 202, "--name", "Other"),
        ("dataset id 202 is already used by", "Dataset202_MSDLung")),
    Row("convert-structseg-into-msd-folder", rerun("structseg-lung-gtv", "structseg", 202, "--name", "MSDLung"),
        ("Dataset202_MSDLung was written by 'convert msd-lung'", "not 'convert structseg-lung-gtv'")),
    Row("convert-folder-not-written-by-us", foreign_folder,
        ("Dataset252_MSDLung", "was not written by nnunet-covid convert")),
    Row("convert-corrupt-settings-record", converted_folder_with("conversion_settings.json", "{", "msd-lung", "msd", 202,
                                                                 "MSDLung"),
        ("conversion_settings.json", "unreadable conversion record")),
    Row("convert-rerun-adds-crop-lung", rerun("msd-lung", "msd", 202, "--crop-lung"),
        ("Dataset202_MSDLung was converted with crop_lung=False, crop_margin_mm=None",
         "crop_lung=True, crop_margin_mm=10.0", "--overwrite")),
    Row("convert-rerun-crop-margin", rerun("structseg-lung-gtv", "structseg", 215, "--crop-lung", "--crop-margin", "8"),
        ("Dataset215_StructSegGTV", "crop_margin_mm=None", "crop_margin_mm=8.0")),
    Row("lidc-rerun-consensus-and-readers", rerun("lidc-idri", "lidc", 210, "--consensus-level", "1.0",
                                                  "--min-readers", "4"),
        ("Dataset210_LIDCIDRI", "consensus_level=0.5, min_readers=1", "consensus_level=1.0, min_readers=4")),
    Row("lidc-rerun-small-nodules", rerun("lidc-idri", "lidc", 210, "--keep-small-nodules"),
        ("keep_small_nodules=False", "keep_small_nodules=True")),
    Row("covid19-rerun-other-target", rerun("covid19-ct-seg", "covid", 211, "--name", "COVID19CTSeg", "--target",
                                            "lungs"), ("Dataset211_COVID19CTSeg", "target='infection'", "target='lungs'")),
    Row("mosmed-rerun-split-seed", rerun("mosmed", "mosmed", 212, "--split-seed", "1"),
        ("Dataset212_MosMed", "split_seed=0", "split_seed=1")),
    Row("nsclc-rerun-reviewer", rerun("nsclc-effusion", "nsclc", 213, "--reviewer", "first"),
        ("Dataset213_NSCLCEffusion", "reviewer='union'", "reviewer='first'")),
    Row("semiseg-rerun-multiclass", rerun("covid-semiseg-2d", "semiseg", 214, "--multiclass"),
        ("Dataset214_COVIDSemiSeg2D", "multiclass=False", "multiclass=True")),
    Row("multilesion-rerun-labels", rerun("multilesion", "converted", 216, "--sources", "202", "215", "--labels",
                                          "per-source"), ("Dataset216_MultiLesion", "labels='union'", "labels='per-source'")),
    Row("multilesion-rerun-sources", rerun("multilesion", "converted", 216, "--sources", "202"),
        ("Dataset216_MultiLesion", "sources=['Dataset202_MSDLung', 'Dataset215_StructSegGTV']",
         "sources=['Dataset202_MSDLung']")),
    Row("lidc-xml-dir-missing", convert("lidc-idri", None, "--xml-dir", "/nonexistent/xml"),
        ("--xml-dir /nonexistent/xml does not exist",)),
    Row("lidc-xml-dir-is-a-file", lambda c: convert("lidc-idri", None, "--xml-dir", c.write("x.xml", "<a/>"))(c),
        ("--xml-dir", "x.xml", "is not a folder")),
    Row("lidc-no-series", lambda c: ["convert", "lidc-idri", "-i", c.write("empty/readme.txt", "x").parent, "-d", "250",
                                     "-o", c.out], ("empty", "no CT DICOM series found")),
    Row("lidc-consensus-level-0", convert("lidc-idri", None, "--consensus-level", "0"),
        ("--consensus-level", "(0, 1]")),
    Row("lidc-min-readers-5", convert("lidc-idri", None, "--min-readers", "5"), ("--min-readers", "invalid choice: 5")),
    Row("lidc-truncated-first-slice", broken_copy("lidc", "lidc-idri", truncate_first_slice),
        ("FAILED LIDC-IDRI-0001", "corrupt or unreadable DICOM slice"), per_case="Dataset251_LIDCIDRI"),
    Row("lidc-no-readable-header", broken_copy("lidc", "lidc-idri", truncate_every_slice),
        ("FAILED LIDC-IDRI-0001", "no readable DICOM header"), per_case="Dataset251_LIDCIDRI"),
    Row("msd-not-a-task-folder", convert("msd-lung", "structseg"), ("is not an MSD Task06_Lung folder",)),
    Row("msd-nan-voxels", broken_copy("msd", "msd-lung", nan_voxels), ("FAILED lung_003", "3 NaN/infinite voxel(s)"),
        per_case="Dataset251_MSDLung"),
    Row("msd-label-missing", broken_copy("msd", "msd-lung", lambda t: (t / "labelsTr" / "lung_001.nii.gz").unlink()),
        ("FAILED lung_001", "label file", "is missing"), per_case="Dataset251_MSDLung"),
    Row("structseg-no-case-folders", convert("structseg-lung-gtv", "msd"), ("holds no numbered case folders",)),
    Row("structseg-255-mask", broken_copy("structseg", "structseg-lung-gtv", label_times(255, "2/label.nii.gz")),
        ("FAILED gtv_002", "unexpected values [255]"), per_case="Dataset251_StructSegGTV"),
    Row("nsclc-no-effusions", convert("nsclc-effusion", "msd"), ("has no Effusions/ folder",)),
    Row("nsclc-ct-root-missing", convert("nsclc-effusion", "nsclc", "--ct-root", "/nonexistent/ct"),
        ("CT folder /nonexistent/ct does not exist",)),
    Row("nsclc-crop-lung", convert("nsclc-effusion", "nsclc", "--crop-lung"), ("--crop-lung would cut pleural",)),
    Row("mosmed-no-masks", convert("mosmed", "msd"), ("holds no masks/study_XXXX_mask.nii.gz",)),
    Row("covid19-no-mask-folder", convert("covid19-ct-seg", "msd"), ("has no Infection_Mask/ folder",)),
    Row("covid19-no-images", broken_copy("covid", "covid19-ct-seg",
                                         lambda r: shutil.rmtree(r / "COVID-19-CT-Seg_20cases")),
        ("holds no coronacases_org_",)),
    Row("semiseg-no-train-folder", convert("covid-semiseg-2d", "msd"), ("expected exactly one train/ folder",)),
    Row("semiseg-crop-lung", convert("covid-semiseg-2d", "semiseg", "--crop-lung"), ("--crop-lung needs 3D CT",)),
    Row("semiseg-missing-mask", broken_copy("semiseg", "covid-semiseg-2d",
                                            lambda r: (r / "train" / "GT" / "1.png").unlink()),
        ("FAILED semiseg_001", "1.jpg has no mask GT/1.png"), per_case="Dataset251_COVIDSemiSeg2D"),
    Row("multilesion-unknown-source", lambda c: ["convert", "multilesion", "-i", c.converted, "-d", "260", "-o", c.out,
                                                 "--sources", "Dataset209_Missing"],
        ("source Dataset209_Missing", "no converted dataset")),
    Row("multilesion-source-dataset-json-corrupt", source_dataset_json("{not json"),
        ("source Dataset202_MSDLung", "dataset.json", "JSONDecodeError")),
    Row("multilesion-source-labels-mistyped", source_dataset_json(json.dumps(
        {"labels": ["background", "tumour"], "channel_names": {"0": "CT"}, "file_ending": ".nii.gz"})),
        ("source Dataset202_MSDLung", "'labels' must map names to label values")),
    Row("multilesion-source-dataset-json-not-object", source_dataset_json("[1, 2]"),
        ("source Dataset202_MSDLung", "is not a JSON object")),
    Row("multilesion-crop-lung", lambda c: ["convert", "multilesion", "-i", c.converted, "-d", "260", "-o", c.out,
                                            "--sources", "202", "--crop-lung"], ("convert the sources with --crop-lung",)),
    Row("multilesion-into-a-source", rerun("multilesion", "converted", 215, "--name", "StructSegGTV", "--sources",
                                           "202", "215"), ("Dataset215_StructSegGTV is one of the sources",)),
    Row("multilesion-source-twice", lambda c: ["convert", "multilesion", "-i", c.converted, "-d", "260", "-o", c.out,
                                               "--sources", "202", "Dataset202_MSDLung"], ("a source is given twice",)),
    # ------------------------------------------------------------------------------------------------ evaluate
    Row("evaluate-gt-missing", lambda c: ["evaluate", "--gt", c.tmp / "nogt", "--pred", c.tmp, "-o", c.out],
        ("ground-truth folder", "nogt", "does not exist")),
    Row("evaluate-pred-missing", lambda c: evaluate_argv(c)[:3] + ["--pred", c.tmp / "nopred", "-o", c.out],
        ("prediction folder", "nopred", "does not exist")),
    Row("evaluate-gt-is-pred", lambda c: (evaluate_argv(c), ["evaluate", "--gt", c.tmp / "gt", "--pred",
                                                              c.tmp / "gt", "-o", c.out])[1],
        ("--gt and --pred are the same folder", "every score would be perfect")),
    Row("evaluate-gt-is-a-file", lambda c: ["evaluate", "--gt", c.write("g.txt", "x"), "--pred", c.tmp, "-o", c.out],
        ("ground-truth folder", "g.txt", "is not a folder")),
    Row("evaluate-missing-predictions", lambda c: (eval_folders(c, n_pred=1), evaluate_argv(c))[1],
        ("2 of 3 ground-truth case(s) have no prediction", "c1, c2", "--missing-as-empty")),
    Row("evaluate-no-prediction-at-all", lambda c: (eval_folders(c, n_pred=0), evaluate_argv(c))[1],
        ("no predictions ending in .nii.gz",)),
    Row("evaluate-stray-prediction", lambda c: (eval_folders(c), nifti(c.tmp / "pred" / "zz.nii.gz",
                                                                       np.zeros((6, 8, 8), np.uint8)),
                                                evaluate_argv(c))[2], ("no ground truth", "zz")),
    Row("evaluate-0-255-prediction", with_prediction(np.full((6, 8, 8), 255, np.uint8)),
        ("case c1", "prediction", "values [255]", "not labels of this dataset")),
    Row("evaluate-probability-prediction", with_prediction(np.full((6, 8, 8), 0.7, np.float32)),
        ("case c1", "non-integer values (0.7", "probability map")),
    Row("evaluate-nan-prediction", with_prediction(np.full((6, 8, 8), np.nan, np.float32)),
        ("case c1", "NaN/infinite")),
    Row("evaluate-geometry-mismatch", with_prediction(np.zeros((6, 8, 8), np.uint8), origin=(4.0, 0.0, 0.0)),
        ("case c1", "origin")),
    Row("evaluate-unreadable-prediction", lambda c: (eval_folders(c), c.write("pred/c2.nii.gz", b"garbage"),
                                                     evaluate_argv(c))[2], ("case c2", "cannot read", "c2.nii.gz")),
    Row("evaluate-tolerance-nan", lambda c: evaluate_argv(c, "--tolerance-mm", "nan"), ("--tolerance-mm", "finite number > 0, got nan")),
    Row("evaluate-tolerance-inf", lambda c: evaluate_argv(c, "--tolerance-mm", "inf"), ("--tolerance-mm", "finite")),
    Row("evaluate-tolerance-zero", lambda c: evaluate_argv(c, "--tolerance-mm", "0"), ("--tolerance-mm", "> 0, got 0")),
    Row("evaluate-tolerance-negative", lambda c: evaluate_argv(c, "--tolerance-mm", "-1"), ("--tolerance-mm", "-1")),
    Row("evaluate-np-zero", lambda c: evaluate_argv(c, "-np", "0"), ("-np", ">= 1", "0")),
    Row("evaluate-label-zero", lambda c: evaluate_argv(c, "--labels", "0"), ("--labels", ">= 1")),
    Row("evaluate-label-not-in-dataset", lambda c: evaluate_argv(c, "--labels", "3"),
        ("--labels [3] are not labels of the dataset.json",)),
    Row("evaluate-both-missing-policies", lambda c: evaluate_argv(c, "--missing-as-empty", "--predicted-only"),
        ("--predicted-only", "not allowed with")),
    Row("evaluate-output-is-a-file", lambda c: evaluate_argv(c)[:-1] + [c.write("o.txt", "x")],
        ("-o", "o.txt", "is not a folder")),
    Row("evaluate-output-json-below-a-file", lambda c: evaluate_argv(c)[:-1] + [c.write("o.txt", "x") / "r.json"],
        ("o.txt", "is not a folder")),
    Row("evaluate-output-json-is-a-folder", lambda c: evaluate_argv(c)[:-1] + [c.write("r.json/x", "x").parent],
        ("r.json", "is not a file")),
    Row("evaluate-corrupt-dataset-json", lambda c: (evaluate_argv(c), c.write("gt/dataset.json", "{"))[0],
        ("gt/dataset.json", "not valid JSON")),
    Row("evaluate-dataset-json-mistyped", lambda c: (evaluate_argv(c), c.write("gt/dataset.json", json.dumps(
        {"labels": {"lesion": "one"}})))[0], ("dataset.json", "'labels' must map names to label values")),
    Row("evaluate-empty-gt-folder", lambda c: ["evaluate", "--gt", c.write("gt/readme.txt", "x").parent, "--pred",
                                               c.tmp, "-o", c.out], ("gt", "no segmentation files")),
    # ------------------------------------------------------------------------------------------------- uncrop
    Row("uncrop-pred-missing", lambda c: ["uncrop", "--pred", c.tmp / "nopred", "--raw-dataset", cropped_dataset(c)[0],
                                          "-o", c.out],
        ("prediction folder", "nopred", "does not exist")),
    Row("uncrop-raw-dataset-missing", lambda c: ["uncrop", "--pred", c.tmp, "--raw-dataset", c.tmp / "noraw", "-o",
                                                 c.out], ("raw dataset", "noraw", "does not exist")),
    Row("uncrop-no-crop-boxes", lambda c: (uncrop_argv(c), (c.tmp / "Dataset300_Cropped" / "crop_boxes.json").unlink())[0],
        ("Dataset300_Cropped", "no crop_boxes.json")),
    Row("uncrop-corrupt-crop-boxes", lambda c: (uncrop_argv(c), c.write("Dataset300_Cropped/crop_boxes.json", "{"))[0],
        ("crop_boxes.json", "unreadable crop boxes")),
    Row("uncrop-crop-boxes-a-list", lambda c: uncrop_argv(c, boxes=[BOX]), ("crop_boxes.json", "expected an object")),
    Row("uncrop-box-missing-keys", lambda c: uncrop_argv(c, boxes={"c1": {"crop_size": [5, 6, 4]}, "c2": BOX}),
        ("crop box of case c1", "original_size")),
    Row("uncrop-box-mistyped", lambda c: uncrop_argv(c, boxes={"c1": {**BOX, "crop_index": ["2", 3, 1]}, "c2": BOX}),
        ("crop box of case c1", "crop_index")),
    Row("uncrop-box-outside-image", lambda c: uncrop_argv(c, boxes={"c1": {**BOX, "crop_index": [8, 3, 1]}, "c2": BOX}),
        ("crop box of case c1", "does not fit")),
    Row("uncrop-case-without-box", lambda c: uncrop_argv(c, predictions=("c1", "c2", "c9")),
        ("c9 have no crop box", "nothing was written")),
    Row("uncrop-size-mismatch", lambda c: (uncrop_argv(c), nifti(c.tmp / "pred" / "c2.nii.gz",
                                                                 np.ones((4, 6, 6), np.uint8), origin=(2.0, 3.0, 2.0)))[0],
        ("case c2", "prediction size [6, 6, 4] does not match the crop box")),
    Row("uncrop-origin-mismatch", lambda c: (uncrop_argv(c), nifti(c.tmp / "pred" / "c2.nii.gz",
                                                                   np.ones((4, 6, 5), np.uint8)))[0],
        ("case c2", "is not the crop box origin")),
    Row("uncrop-unreadable-prediction", lambda c: (uncrop_argv(c), c.write("pred/c2.nii.gz", b"garbage"))[0],
        ("c2.nii.gz", "unreadable prediction")),
    Row("uncrop-output-is-pred", lambda c: uncrop_argv(c, out=lambda c: c.tmp / "pred"),
        ("is --pred", "never writes over its inputs")),
    Row("uncrop-output-inside-pred", lambda c: uncrop_argv(c, out=lambda c: c.tmp / "pred" / "sub"),
        ("is --pred", "never writes over its inputs")),
    Row("uncrop-output-is-raw-dataset", lambda c: uncrop_argv(c, out=lambda c: c.tmp / "Dataset300_Cropped"),
        ("is --raw-dataset", "never writes over its inputs")),
    Row("uncrop-output-inside-raw-dataset", lambda c: uncrop_argv(c, out=lambda c: c.tmp / "Dataset300_Cropped" / "u"),
        ("is --raw-dataset",)),
    Row("uncrop-output-is-a-file", lambda c: uncrop_argv(c, out=lambda c: c.write("o.txt", "x")),
        ("-o", "o.txt", "is not a folder")),
    Row("uncrop-corrupt-dataset-json", lambda c: (uncrop_argv(c), c.write("Dataset300_Cropped/dataset.json", "{"))[0],
        ("Dataset300_Cropped/dataset.json", "unreadable dataset.json")),
    Row("uncrop-no-predictions", lambda c: uncrop_argv(c, predictions=()), ("pred", "no predictions ending in")),
    # ------------------------------------------------------------------------------------------------- report
    Row("report-study-missing", lambda c: ["report", c.tmp / "nostudy", "-o", c.out], ("nostudy", "does not exist")),
    Row("report-study-is-a-file", lambda c: ["report", c.write("s.txt", "x"), "-o", c.out], ("s.txt", "is not a folder")),
    Row("report-empty-study", lambda c: ["report", c.write("s/readme.txt", "x").parent, "-o", c.out],
        ("no evaluated cases",)),
    Row("report-corrupt-manifest", lambda c: report_argv(c, manifest(b"{")), ("study_manifest.json", "JSONDecodeError")),
    Row("report-manifest-not-utf8", lambda c: report_argv(c, manifest(b"\xff\xfe{")),
        ("study_manifest.json", "UnicodeDecodeError")),
    Row("report-manifest-a-list", lambda c: report_argv(c, manifest([1])), ("study_manifest.json", "'runs' list")),
    Row("report-manifest-folds-mistyped", lambda c: report_argv(c, manifest({"runs": [{"label": "a", "folds": [0]}]})),
        ("study_manifest.json", "runs[0]", "'folds' object")),
    Row("report-manifest-path-outside-study", lambda c: report_argv(c, manifest(
        {"runs": [{"label": "a", "folds": {"0": {"evaluation": "/elsewhere/study/evaluation/a/fold_0.json"}}}]})),
        ("/elsewhere/study/evaluation/a/fold_0.json", "outside the study folder")),
    Row("report-evaluation-without-cases", lambda c: report_argv(c, evaluation_json({"summary": {}})),
        ("finetune/fold_0.json", "'cases' list")),
    Row("report-evaluation-corrupt", lambda c: report_argv(c, evaluation_json(b"[1,")),
        ("finetune/fold_0.json", "not a readable evaluation result")),
    Row("report-evaluation-not-utf8", lambda c: report_argv(c, evaluation_json(b"\xff")),
        ("finetune/fold_0.json", "UnicodeDecodeError")),
    Row("report-metric-not-a-number", lambda c: report_argv(c, evaluation_json(
        {"cases": [{**metric_rows(0)[0], "dsc": "0.8"}]})), ("finetune/fold_0.json", "case c0", "dsc")),
    Row("report-output-is-a-file", lambda c: report_argv(c)[:-1] + [c.write("o.txt", "x")],
        ("report folder", "o.txt", "is not a folder")),
    Row("report-unknown-baseline", lambda c: report_argv(c, lambda s: None, "--baseline", "nope"),
        ("baseline 'nope' has no evaluated cases",)),
    # ----------------------------------------------------------------------------------------- study grid
    Row("study-grid-missing", lambda c: ["study", c.tmp / "none.json", "--dry-run"], ("none.json", "does not exist")),
    Row("study-grid-is-a-folder", lambda c: ["study", c.write("g/x", "x").parent, "--dry-run"], ("is not a file",)),
    Row("study-grid-not-utf8", grid(text=b"\xff\xfe{}"), ("grid.json", "not a UTF-8 text file")),
    Row("study-grid-bad-json", grid(text="{"), ("grid.json", "not valid JSON")),
    Row("study-grid-a-list", grid(lambda g: [g]), ("grid.json", "must be a JSON object")),
    Row("study-grid-name-mistyped", grid(lambda g: g.update(name=5)), ("'name' has an invalid value 5",)),
    Row("study-grid-no-target", grid(lambda g: g.pop("target")), ("missing key 'target'",)),
    Row("study-grid-folds-mistyped", grid(lambda g: g["target"].update(folds=["0"])), ("target", "'folds'")),
    Row("study-grid-label-zero", grid(lambda g: g["target"].update(labels=[0])), ("target", "'labels'")),
    Row("study-grid-tolerance-infinite", grid(text=json.dumps(GRID).replace('"labels": [1]',
                                                                            '"labels": [1], "tolerance_mm": Infinity')),
        ("target", "'tolerance_mm'")),
    Row("study-grid-unknown-source", grid(lambda g: g["strategies"][1].update(sources=["nowhere"])),
        ("unknown source 'nowhere'",)),
    Row("study-grid-duplicate-strategy", grid(lambda g: g["strategies"].append({"name": "ft", "trainer": "T"})),
        ("strategy name 'ft' is used twice",)),
    Row("study-grid-unknown-baseline", grid(lambda g: g.update(baseline="nope")), ("baseline 'nope'",)),
    Row("study-grid-strategies-not-a-list", grid(lambda g: g.update(strategies={"a": 1})), ("'strategies'",)),
]


def _run(argv: list) -> tuple[int, bool]:
    """Exit code of ``nnunet-covid argv`` and whether argparse itself refused the arguments."""
    try:
        return main([str(a) for a in argv]), False
    except SystemExit as e:
        return e.code, True


def test_the_matrix_covers_every_command_and_converter():
    from dataset_conversion import CONVERTER_MODULES

    assert len(ROWS) >= 60 and len({r.id for r in ROWS}) == len(ROWS)
    commands = {r.id.split("-")[0] for r in ROWS}
    assert {"convert", "evaluate", "uncrop", "report", "study"} <= commands
    names = {__import__(m, fromlist=["CLI_NAME"]).CLI_NAME.split("-")[0] for m in CONVERTER_MODULES}
    assert names - {"covid", "structseg", "nsclc"} <= commands  # lidc, msd, mosmed, multilesion
    assert {"covid19", "semiseg", "structseg", "nsclc"} <= commands


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_bad_input(row: Row, layouts, converted, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("nnUNet_raw", str(tmp_path / "unused_raw"))
    monkeypatch.setenv("nnUNet_def_n_proc", "1")
    ctx = Ctx(tmp_path, layouts, converted)
    argv = row.build(ctx)
    watched = {"row": tmp_path, "converted": converted, **layouts}
    if row.per_case:
        watched["row"] = tmp_path / "in"
    before = {name: tree_state(root) for name, root in watched.items()}
    capsys.readouterr()

    rc, by_argparse = _run(argv)
    err = capsys.readouterr().err

    assert rc == 2, err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if ": error:" in line]
    assert len(errors) == 1, err
    if by_argparse:  # its usage text, then the one error line
        assert err.splitlines()[0].startswith("usage:") and err.splitlines()[-1] == errors[0]
    elif not row.per_case:  # nothing else, apart from progress bars
        assert [line for line in err.splitlines() if line.strip() and "%|" not in line] == errors
    text = err if row.per_case else errors[0]
    for expected in row.expect:
        assert expected in text, f"{expected!r} not in {text!r}"
    assert {name: tree_state(root) for name, root in watched.items()} == before, "an input or output changed"
    if row.per_case:
        failed = [line.split("FAILED ")[1].split(":")[0] for line in err.splitlines() if "FAILED " in line]
        assert len(failed) == len(set(failed)) == 1  # the broken case, named once
        folder = ctx.out / row.per_case
        labels = sorted(p.name for p in (folder / "labelsTr").iterdir())
        assert labels and not any(name.startswith(failed[0] + ".") for name in labels)  # the others were converted
        assert json.loads((folder / "dataset.json").read_text())["numTraining"] == len(labels)
        assert not (folder / ".partial").exists() and not list(folder.rglob("*.tmp"))


@pytest.mark.parametrize("command", ["convert", "evaluate", "report", "uncrop"])
def test_output_without_write_permission(command, layouts, tmp_path, capsys, monkeypatch):
    """A read-only output folder: real permissions, or (as root, whom they do not stop) a denying os.access."""
    locked = tmp_path / "locked"
    locked.mkdir()
    ctx = Ctx(tmp_path, layouts, tmp_path)
    argv = {"convert": lambda: ["convert", "msd-lung", "-i", layouts["msd"], "-d", "250", "-o", locked / "raw"],
            "evaluate": lambda: evaluate_argv(ctx)[:-1] + [locked / "out"],
            "report": lambda: report_argv(ctx)[:-1] + [locked / "out"],
            "uncrop": lambda: uncrop_argv(ctx, out=lambda c: locked / "out")}[command]()
    if RUNNING_AS_ROOT:
        access = os.access
        monkeypatch.setattr(os, "access", lambda path, mode, **kw: Path(path) != locked and access(path, mode, **kw))
    locked.chmod(0o500)
    try:
        before = tree_state(tmp_path)
        assert _run(argv)[0] == 2
        err = capsys.readouterr().err
        assert "no permission to write" in err and str(locked) in err and "Traceback" not in err
        assert tree_state(tmp_path) == before
    finally:
        locked.chmod(0o700)


def test_every_converter_records_each_file_changing_option(converted):
    """The settings record holds exactly the crop options and the converter's SETTINGS; dataset.json repeats it."""
    import importlib
    import inspect

    from dataset_conversion import CONVERTER_MODULES
    from nnunet_covid.cli import build_parser

    framework = {"input_dir", "dataset_id", "name", "output_root", "num_processes", "progress", "overwrite"}
    sub = next(a for a in build_parser()._actions if getattr(a, "choices", None) and "convert" in a.choices)
    convert_parser = sub.choices["convert"]
    converters = next(a for a in convert_parser._actions if getattr(a, "choices", None)).choices
    for module_name in CONVERTER_MODULES:
        module = importlib.import_module(module_name)
        parameters = set(inspect.signature(module.CONVERT).parameters)
        recorded = {"crop_lung", "crop_margin_mm", *module.SETTINGS}
        # every parameter either changes the files (recorded), says where inputs are, or runs the conversion
        assert parameters - framework == recorded | set(module.LOCATIONS), module_name
        assert framework - {"progress"} <= parameters, module_name
        specific = {a.dest for a in converters[module.CLI_NAME]._actions} - {"help", "input", "crop_margin",
                                                                              "num_processes", "dataset_id", "name",
                                                                              "crop_lung", "output_root", "overwrite"}
        assert specific <= recorded | set(module.LOCATIONS), module_name
        folder = next(f for f in converted.iterdir()
                      if json.loads((f / "conversion_settings.json").read_text())["converter"] == module.CLI_NAME)
        record = json.loads((folder / "conversion_settings.json").read_text())
        assert set(record["settings"]) == recorded and record["dataset"] == folder.name
        dataset_json = json.loads((folder / "dataset.json").read_text())
        assert dataset_json["conversion_settings"] == record["settings"]
        assert dataset_json["converted_by"] == f"nnunet-covid convert {module.CLI_NAME}"
