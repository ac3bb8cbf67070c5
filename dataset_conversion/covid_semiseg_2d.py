"""COVID-SemiSeg 2D (MedSeg CT slices as used by Inf-Net) -> an nnU-Net 2D dataset of PNG slices.

Raw layout (REFERENCE 3): ``train/{Imgs/*.jpg, GT/*.png}`` with binary masks 0/255 and the
multi-class variant ``train-multiclass/{Imgs/*.jpg, GT/*.png}`` with 0 background, 1 ground-glass
opacity, 2 consolidation (``Prior/`` is Inf-Net's semi-supervised prior and is not used). An
optional ``test`` / ``test-multiclass`` folder of the same form, or any folder of that form given as
``test_dir`` (``--test-dir``, e.g. Inf-Net's 48 test slices), becomes imagesTs/labelsTs with case ids
``semiseg_test_<stem>`` (training slices: ``semiseg_<stem>``).

The MedSeg slices are named by number only: they carry no patient ids, so dataset.json says
``"patient_ids": false`` and ``nnunet-covid evaluate --per-patient-2d`` refuses them (score per image).
Slices named ``<patient>_<index>`` (every image of the conversion) give ``"patient_ids": true``.

Written as nnU-Net documents 2D natural images: grayscale PNG ``<case>_0000.png`` read by
``NaturalImage2DIO`` (file_ending ``.png``), label PNGs with values 0/1 (0/1/2 multi-class). The
slices are already windowed grayscale, not HU, so the channel is named "grayscale" (z-score
normalisation) rather than "CT".
"""
from __future__ import annotations

import argparse
import re
from pathlib import Path

from dataset_conversion.common import PNG, CaseData, CaseJob, crop_settings, finish_dataset, open_dataset, run_cases
from dataset_conversion.input_files import subfolders
from nnunet_covid.core.errors import ConversionError

CLI_NAME = "covid-semiseg-2d"
CLI_HELP = "COVID-SemiSeg 2D slices (Imgs/*.jpg, GT/*.png) -> nnU-Net 2D PNG dataset"
DEFAULT_NAME = "COVIDSemiSeg2D"
BINARY_LABELS = {"background": 0, "infection": 1}
MULTICLASS_LABELS = {"background": 0, "ground-glass opacity": 1, "consolidation": 2}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
SETTINGS = ("multiclass",)
LOCATIONS = ("test_dir",)
PATIENT_SLICE_STEM = re.compile(r".+_\d+")


CASE_PREFIX = {"Tr": "semiseg_", "Ts": "semiseg_test_"}  # test slices are often numbered like the training ones


def case_id_for(stem: str, subset: str = "Tr") -> str:
    """``"7"`` -> ``"semiseg_007"``, test slice ``"7"`` -> ``"semiseg_test_007"`` (numeric stems zero-padded so the
    cases sort naturally)."""
    return CASE_PREFIX[subset] + (stem.zfill(3) if stem.isdigit() else stem)


def _read_gray(path: Path):
    import numpy as np
    from PIL import Image

    try:
        with Image.open(path) as im:
            # palette PNGs (the multi-class GT) hold class indices: keep them, do not map to gray levels
            return np.asarray(im if im.mode in ("L", "P", "I;16") else im.convert("L"))
    except Exception as e:  # noqa: BLE001 - PIL raises many types for broken files
        raise ConversionError(f"cannot read {path}: {e}") from None


def load_slice(image_file: str, mask_file: str | None, multiclass: bool, case_id: str) -> CaseData:
    """One slice: grayscale image and mask (0/255 -> 0/1, or class indices 0/1/2) as 2D SimpleITK images."""
    import numpy as np
    import SimpleITK as sitk

    image = _read_gray(Path(image_file))
    if image.ndim != 2:
        raise ConversionError(f"case {case_id}: image {image_file} is not a 2D grayscale slice (shape {image.shape})")
    images = [sitk.GetImageFromArray(image.astype(np.uint8))]
    if mask_file is None:
        return CaseData(images=images)
    mask = _read_gray(Path(mask_file))
    if mask.shape != image.shape:
        raise ConversionError(f"case {case_id}: mask {Path(mask_file).name} shape {mask.shape} does not match "
                              f"image {Path(image_file).name} shape {image.shape}")
    values = set(np.unique(mask).tolist())
    valid = values <= {0, 1, 2} if multiclass else (values <= {0, 255} or values <= {0, 1})
    if not valid:
        expected = "0/1/2 (background, ground-glass, consolidation)" if multiclass else "0/255"
        raise ConversionError(f"case {case_id}: mask {mask_file} has values {sorted(values)}, expected {expected}")
    label = mask if multiclass else (mask > 0)
    return CaseData(images=images, label=sitk.GetImageFromArray(label.astype(np.uint8)),
                    info={"source_image": Path(image_file).name, "lesion_pixels": int((label > 0).sum())})


def slice_jobs(folder: Path, multiclass: bool, subset: str = "Tr") -> list[CaseJob]:
    """One job per image in ``folder/Imgs`` with its mask ``folder/GT/<stem>.png``.

    A training image without its mask fails as its own case; a test image may have none (unlabelled).
    """
    imgs, gts = folder / "Imgs", folder / "GT"
    if not imgs.is_dir():
        raise ConversionError(f"{folder}: no Imgs/ folder (expected Imgs/*.jpg and GT/*.png)")
    jobs = []
    for image in sorted(p for p in imgs.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")):
        case_id, mask = case_id_for(image.stem, subset), gts / f"{image.stem}.png"
        if mask.is_file() or subset == "Ts":
            masks = str(mask) if mask.is_file() else None
            jobs.append(CaseJob(case_id, load_slice, (str(image), masks, multiclass, case_id), subset=subset))
        else:
            jobs.append(CaseJob.failing(case_id, f"case {case_id}: {folder}: image {image.name} has no mask "
                                                 f"GT/{image.stem}.png"))
    if not jobs:
        raise ConversionError(f"{imgs}: no .jpg/.png images found")
    return jobs


def find_layout_root(input_dir: Path, train_name: str) -> Path:
    """``input_dir`` or the one folder below it that holds ``<train_name>/Imgs`` (e.g. an unpacked archive)."""
    if (input_dir / train_name).is_dir():
        return input_dir
    found = sorted({p.parent.parent for p in subfolders(input_dir, "Imgs") if p.parent.name == train_name})
    if len(found) == 1:
        return found[0]
    where = f"several: {', '.join(map(str, found))}" if found else "none"
    raise ConversionError(f"{input_dir}: expected exactly one {train_name}/ folder with Imgs/ and GT/ (the "
                          f"COVID-SemiSeg layout has train/ and train-multiclass/), found {where}")


def convert_covid_semiseg_2d(input_dir: str | Path, dataset_id: int, name: str = DEFAULT_NAME,
                             output_root: str | Path | None = None, num_processes: int = 1,
                             crop_lung: bool = False, crop_margin_mm: float | None = None,
                             multiclass: bool = False, progress: bool = True, overwrite: bool = False,
                             test_dir: str | Path | None = None) -> Path:
    """Convert ``input_dir`` (holding ``train/`` or ``train-multiclass/``; and ``test_dir``, a folder with
    ``Imgs/`` and ``GT/``, as the test set) and return the dataset folder."""
    if crop_lung:
        raise ConversionError("--crop-lung needs 3D CT volumes in HU; COVID-SemiSeg slices are windowed 2D images")
    suffix = "-multiclass" if multiclass else ""
    input_dir = find_layout_root(Path(input_dir), f"train{suffix}")
    train = input_dir / f"train{suffix}"
    jobs = slice_jobs(train, multiclass)
    test = input_dir / f"test{suffix}"
    if test_dir is not None:
        if not Path(test_dir).is_dir():
            raise ConversionError(f"--test-dir {test_dir} " + ("is not a folder" if Path(test_dir).exists()
                                                               else "does not exist"))
        if test.is_dir():
            raise ConversionError(f"{input_dir} has its own {test.name}/ folder; --test-dir {test_dir} would add a "
                                  f"second test set: give one of them")
        test = Path(test_dir)
    if test.is_dir():
        jobs += slice_jobs(test, multiclass, subset="Ts")
    patient_ids = all(PATIENT_SLICE_STEM.fullmatch(job.case_id[len(CASE_PREFIX[job.subset]):]) for job in jobs)
    folder = open_dataset(dataset_id, name, output_root, CLI_NAME,
                          {**crop_settings(crop_lung, crop_margin_mm), "multiclass": bool(multiclass)}, overwrite)
    summary = run_cases(folder, jobs, num_processes, desc=f"{CLI_NAME} -> {folder.name}", file_ending=PNG,
                        progress=progress)
    return finish_dataset(folder, {0: "grayscale"}, MULTICLASS_LABELS if multiclass else BINARY_LABELS, summary,
                          file_ending=PNG, overwrite_image_reader_writer="NaturalImage2DIO",
                          description="COVID-SemiSeg (MedSeg) 2D CT slices, "
                                      + ("ground-glass / consolidation" if multiclass else "binary infection"),
                          reference="Fan et al., Inf-Net, IEEE TMI 2020; MedSeg COVID-19 CT segmentation dataset",
                          patient_ids=patient_ids)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--multiclass", action="store_true",
                        help="convert train-multiclass/ (1 ground-glass, 2 consolidation) instead of the binary train/")
    parser.add_argument("--test-dir", type=Path, default=None, metavar="DIR",
                        help="a test set of the same layout (DIR/Imgs/*.jpg, DIR/GT/*.png) -> imagesTs/labelsTs")


CONVERT = convert_covid_semiseg_2d
