"""Shared machinery of every dataset converter: folders, atomic case writes, the case loop, dataset.json.

A converter builds one :class:`CaseJob` per case. Its ``load`` callable (a picklable top-level
function) reads the raw files and returns a :class:`CaseData`; :func:`run_cases` runs the jobs in a
process pool with a progress bar, writes each case atomically with :func:`write_case` (optionally
lung-cropped), records it in ``.cases/<case_id>.json`` (the "done" marker read on reruns), and
collects a :class:`ConversionSummary`. :func:`finish_dataset` then writes dataset.json,
splits_final.json and crop_boxes.json for the cases on disk and raises :class:`ConversionError`
listing the failed cases, so that the CLI exits non-zero after converting everything else.

Layout written under ``DatasetNNN_Name/``::

    imagesTr/<case>_0000.nii.gz   labelsTr/<case>.nii.gz   [imagesTs/ labelsTs/]
    dataset.json   [splits_final.json]   [crop_boxes.json]
    .cases/<case>.json    per-case record (subset, info returned by the converter, crop box)
    .partial/             temporary files, renamed into place when complete
"""
from __future__ import annotations

import json
import os
import shutil
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from nnunet_covid.core.atomic_io import atomic_write_json
from nnunet_covid.core.errors import ConversionError

NIFTI = ".nii.gz"
PNG = ".png"
SUBSETS = ("Tr", "Ts")
CASES_DIR = ".cases"
PARTIAL_DIR = ".partial"
CROP_BOXES_FILE = "crop_boxes.json"
GEOMETRY_TOLERANCE = 1e-3  # mm for spacing/origin, absolute for direction cosines


@dataclass
class CaseData:
    """What a converter's loader returns for one case: image channel(s), optional label, extra info.

    ``info`` must be JSON-serialisable; it is stored in the case record and handed back in
    :attr:`ConversionSummary.results` also for cases skipped on a rerun (e.g. LIDC nodule rows).
    """

    images: Sequence[Any]  # SimpleITK images, one per channel
    label: Any | None = None  # SimpleITK image or None (unlabelled test case)
    info: dict = field(default_factory=dict)


@dataclass
class CaseJob:
    """One case to convert: ``load(*args, **kwargs) -> CaseData`` runs in a worker process."""

    case_id: str
    load: Callable[..., CaseData]
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    subset: str = "Tr"


@dataclass
class ConversionSummary:
    """Outcome of :func:`run_cases`; ``results`` maps every finished case (new or skipped) to its info."""

    converted: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    results: dict[str, dict] = field(default_factory=dict)

    def report(self) -> str:
        lines = [f"converted {len(self.converted)}, skipped (already done) {len(self.skipped)}, "
                 f"failed {len(self.failed)}"]
        lines += [f"  FAILED {case}: {reason}" for case, reason in sorted(self.failed.items())]
        return "\n".join(lines)


def raw_root(output_root: str | os.PathLike | None = None) -> Path:
    """``output_root`` if given, else ``$nnUNet_raw``; a clear error when neither is set."""
    if output_root is not None:
        return Path(output_root)
    env = os.environ.get("nnUNet_raw")
    if not env:
        raise ConversionError("nnUNet_raw is not set: export nnUNet_raw=/path/to/nnUNet_raw or pass an output root")
    return Path(env)


def dataset_folder(dataset_id: int, name: str, output_root: str | os.PathLike | None = None) -> Path:
    """``<raw root>/DatasetNNN_<name>`` (created), after validating id and name."""
    if not isinstance(dataset_id, int) or not 1 <= dataset_id <= 999:
        raise ConversionError(f"dataset id must be an integer in 1..999, got {dataset_id!r}")
    if not name or any(c in name for c in "/\\ ") or name.startswith("."):
        raise ConversionError(f"invalid dataset name {name!r}: use letters, digits, '-' or '_'")
    root = raw_root(output_root)
    for existing in root.glob(f"Dataset{dataset_id:03d}_*") if root.is_dir() else ():
        if existing.name != f"Dataset{dataset_id:03d}_{name}":
            raise ConversionError(f"dataset id {dataset_id} is already used by {existing}; choose another id")
    folder = root / f"Dataset{dataset_id:03d}_{name}"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def image_path(dataset_dir: Path, case_id: str, channel: int = 0, subset: str = "Tr",
               file_ending: str = NIFTI) -> Path:
    return Path(dataset_dir) / f"images{subset}" / f"{case_id}_{channel:04d}{file_ending}"


def label_path(dataset_dir: Path, case_id: str, subset: str = "Tr", file_ending: str = NIFTI) -> Path:
    return Path(dataset_dir) / f"labels{subset}" / f"{case_id}{file_ending}"


def case_record_path(dataset_dir: Path, case_id: str) -> Path:
    return Path(dataset_dir) / CASES_DIR / f"{case_id}.json"


def case_done(dataset_dir: Path, case_id: str, subset: str = "Tr", file_ending: str = NIFTI) -> bool:
    """True when the case's record exists and its image (and label, if it had one) are on disk."""
    record_file = case_record_path(dataset_dir, case_id)
    if not record_file.is_file():
        return False
    record = json.loads(record_file.read_text())
    if record.get("subset") != subset:
        return False
    images = [image_path(dataset_dir, case_id, c, subset, file_ending) for c in range(record["num_channels"])]
    label_ok = not record["has_label"] or label_path(dataset_dir, case_id, subset, file_ending).is_file()
    return label_ok and all(p.is_file() for p in images)


def atomic_write_image(image, path: Path, partial: Path | None = None) -> None:
    """Write a SimpleITK image to ``path`` via a same-named file in ``partial`` (default ``<folder>/.partial``),
    then rename: a crash never leaves a truncated image where nnU-Net looks for cases."""
    import SimpleITK as sitk

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.parent / PARTIAL_DIR if partial is None else Path(partial)
    partial.mkdir(parents=True, exist_ok=True)
    tmp = partial / f"{os.getpid()}_{path.name}"
    sitk.WriteImage(image, str(tmp), useCompression=True)
    os.replace(tmp, path)


def check_geometry(case_id: str, reference, other, what: str = "label") -> None:
    """Raise ConversionError unless ``other`` has ``reference``'s size, spacing, origin and direction."""
    import numpy as np

    if tuple(reference.GetSize()) != tuple(other.GetSize()):
        raise ConversionError(f"case {case_id}: {what} shape {tuple(other.GetSize())} does not match image shape "
                              f"{tuple(reference.GetSize())} (x, y, z)")
    for prop in ("Spacing", "Origin", "Direction"):
        a = np.asarray(getattr(reference, f"Get{prop}")())
        b = np.asarray(getattr(other, f"Get{prop}")())
        if not np.allclose(a, b, atol=GEOMETRY_TOLERANCE, rtol=0):
            raise ConversionError(f"case {case_id}: {what} {prop.lower()} {tuple(np.round(b, 4).tolist())} does not "
                                  f"match image {prop.lower()} {tuple(np.round(a, 4).tolist())}")


def write_case(dataset_dir: Path, case_id: str, images: Sequence[Any], label=None, subset: str = "Tr",
               file_ending: str = NIFTI, crop_lung: bool = False, crop_margin_mm: float | None = None,
               info: dict | None = None) -> dict:
    """Check geometry, optionally lung-crop, write the channels and the label atomically, record the case.

    The label is cast to uint8. With ``crop_lung`` the Liao et al. lung bounding box of channel 0
    (see :mod:`dataset_conversion.lung_crop`) is applied to every channel and the label, and the
    box is stored in the case record (collected into crop_boxes.json by :func:`finish_dataset`).
    Returns the case record.
    """
    import SimpleITK as sitk

    if subset not in SUBSETS:
        raise ValueError(f"subset must be one of {SUBSETS}, got {subset!r}")
    images = list(images)
    if not images:
        raise ConversionError(f"case {case_id}: no image channels")
    for c, img in enumerate(images[1:], start=1):
        check_geometry(case_id, images[0], img, what=f"channel {c}")
    if label is not None:
        check_geometry(case_id, images[0], label)
        label = sitk.Cast(label, sitk.sitkUInt8)
    crop_box = None
    if crop_lung:
        from dataset_conversion.lung_crop import DEFAULT_MARGIN_MM, crop_to_lungs

        margin = DEFAULT_MARGIN_MM if crop_margin_mm is None else crop_margin_mm
        images, label, crop_box = crop_to_lungs(images, label, margin_mm=margin, case_id=case_id)
    partial = Path(dataset_dir) / PARTIAL_DIR
    for c, img in enumerate(images):
        atomic_write_image(img, image_path(dataset_dir, case_id, c, subset, file_ending), partial)
    if label is not None:
        atomic_write_image(label, label_path(dataset_dir, case_id, subset, file_ending), partial)
    record = {"case_id": case_id, "subset": subset, "num_channels": len(images), "has_label": label is not None,
              "info": info or {}}
    if crop_box is not None:
        record["crop_box"] = crop_box
    atomic_write_json(case_record_path(dataset_dir, case_id), record)
    return record


def _convert_one(dataset_dir: Path, job: CaseJob, file_ending: str, crop_lung: bool,
                 crop_margin_mm: float | None) -> tuple[str, str, Any]:
    """Worker: load and write one case; never raises (returns ("ok", info) or ("failed", reason))."""
    try:
        data = job.load(*job.args, **job.kwargs)
        record = write_case(dataset_dir, job.case_id, data.images, data.label, job.subset, file_ending,
                            crop_lung, crop_margin_mm, data.info)
        return job.case_id, "ok", record["info"]
    except ConversionError as e:
        message = str(e)
        return job.case_id, "failed", message if job.case_id in message else f"case {job.case_id}: {message}"
    except Exception as e:  # noqa: BLE001 - one broken case must not abort the others
        where = traceback.extract_tb(e.__traceback__)[-1]
        return job.case_id, "failed", (f"case {job.case_id}: {type(e).__name__}: {e} "
                                       f"(at {Path(where.filename).name}:{where.lineno})")


def run_cases(dataset_dir: Path, jobs: Sequence[CaseJob], num_processes: int = 1, desc: str = "converting",
              file_ending: str = NIFTI, crop_lung: bool = False, crop_margin_mm: float | None = None,
              progress: bool = True) -> ConversionSummary:
    """Convert every job not yet done, in ``num_processes`` worker processes, with a tqdm progress bar.

    Failing cases are collected in the summary (never raised); finished cases are skipped.
    """
    from tqdm import tqdm

    dataset_dir = Path(dataset_dir)
    ids = [job.case_id for job in jobs]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise ConversionError(f"duplicate case identifiers: {', '.join(duplicates)}")
    summary = ConversionSummary()
    todo = []
    for job in jobs:
        if case_done(dataset_dir, job.case_id, job.subset, file_ending):
            summary.skipped.append(job.case_id)
            summary.results[job.case_id] = json.loads(case_record_path(dataset_dir, job.case_id).read_text())["info"]
        else:
            todo.append(job)
    bar = tqdm(total=len(todo), desc=desc, unit="case", disable=not progress or not todo)
    args = [(dataset_dir, job, file_ending, crop_lung, crop_margin_mm) for job in todo]
    if num_processes <= 1 or len(todo) <= 1:
        _collect((_convert_one(*a) for a in args), summary, bar)
    else:
        _collect(_pool_outcomes(args, min(num_processes, len(todo))), summary, bar)
    bar.close()
    if progress:
        print(summary.report())
    return summary


def _pool_outcomes(args: list[tuple], workers: int):
    """Outcomes of ``_convert_one`` in forked worker processes (fork: no re-import of the caller's
    main module); a worker killed e.g. by the OOM killer fails its case instead of hanging the pool."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from concurrent.futures.process import BrokenProcessPool

    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
        futures = {pool.submit(_convert_one, *a): a[1].case_id for a in args}
        for future in as_completed(futures):
            try:
                yield future.result()
            except BrokenProcessPool as e:
                yield futures[future], "failed", f"case {futures[future]}: worker process died ({e})"


def _collect(outcomes, summary: ConversionSummary, bar) -> None:
    for case_id, status, payload in outcomes:
        if status == "ok":
            summary.converted.append(case_id)
            summary.results[case_id] = payload
        else:
            summary.failed[case_id] = payload
        bar.update(1)


def finish_dataset(dataset_dir: Path, channel_names: Mapping[int, str], labels: Mapping[str, int],
                   summary: ConversionSummary | None = None, file_ending: str = NIFTI,
                   splits: list[dict[str, list[str]]] | None = None, **dataset_json_fields) -> Path:
    """Write dataset.json (v2), splits_final.json and crop_boxes.json for the cases on disk.

    ``numTraining`` counts the recorded training cases actually present. Extra keyword arguments
    go into dataset.json (e.g. ``overwrite_image_reader_writer``, ``description``). Raises
    ConversionError naming every failed case after writing, when ``summary`` has failures.
    """
    from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json

    dataset_dir = Path(dataset_dir)
    records = [json.loads(p.read_text()) for p in sorted((dataset_dir / CASES_DIR).glob("*.json"))]
    records = [r for r in records if case_done(dataset_dir, r["case_id"], r["subset"], file_ending)]
    train_ids = sorted(r["case_id"] for r in records if r["subset"] == "Tr")
    if not train_ids:
        reason = f"\n{summary.report()}" if summary is not None else ""
        raise ConversionError(f"{dataset_dir.name}: no training case could be converted{reason}")
    partial = dataset_dir / PARTIAL_DIR
    partial.mkdir(exist_ok=True)
    dataset_json_fields.setdefault("converted_by", "nnunet-covid convert")
    dataset_json_fields.setdefault("license", "see the terms of the original dataset")
    generate_dataset_json(str(partial), channel_names=dict(channel_names), labels=dict(labels),
                          num_training_cases=len(train_ids), file_ending=file_ending,
                          dataset_name=dataset_dir.name, **dataset_json_fields)
    os.replace(partial / "dataset.json", dataset_dir / "dataset.json")
    if splits is not None:
        known = set(train_ids)
        kept = [{k: [c for c in fold[k] if c in known] for k in ("train", "val")} for fold in splits]
        atomic_write_json(dataset_dir / "splits_final.json", kept)
    boxes = {r["case_id"]: r["crop_box"] for r in records if "crop_box" in r}
    if boxes:
        atomic_write_json(dataset_dir / CROP_BOXES_FILE, boxes)
    shutil.rmtree(partial, ignore_errors=True)  # also leftovers of interrupted runs
    if summary is not None and summary.failed:
        raise ConversionError(f"{dataset_dir.name}: {len(summary.failed)} case(s) failed, the others were written "
                              f"(rerun to retry only the failed ones):\n{summary.report()}")
    return dataset_dir
