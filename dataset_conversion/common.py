"""Shared machinery of every dataset converter: folders, settings, atomic case writes, the case loop, dataset.json.

A converter first checks its options and finds its cases, then opens its dataset folder with
:func:`open_dataset`, which records the converter and every option that changes the written files
(``conversion_settings.json``, also copied into dataset.json): a rerun resumes only a folder written
by the same converter with the same settings (``--overwrite`` rebuilds it instead), and a folder that
another converter, another dataset name or something else wrote is never written into.
It then builds one :class:`CaseJob` per case. Its ``load`` callable (a picklable top-level
function) reads the raw files and returns a :class:`CaseData`; :func:`run_cases` runs the jobs in a
process pool with a progress bar, writes each case atomically with :func:`write_case` (optionally
lung-cropped), records it in ``.cases/<case_id>.json`` (the "done" marker read on reruns), and
collects a :class:`ConversionSummary`. :func:`finish_dataset` then writes dataset.json,
splits_final.json and crop_boxes.json for the cases on disk and raises :class:`ConversionError`
listing the failed cases, so that the CLI exits non-zero after converting everything else.

Layout written under ``DatasetNNN_Name/``::

    imagesTr/<case>_0000.nii.gz   labelsTr/<case>.nii.gz   [imagesTs/ labelsTs/]
    dataset.json   [splits_final.json]   [crop_boxes.json]   conversion_settings.json
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
from nnunet_covid.core.nnunet_conventions import dataset_folder_name

NIFTI = ".nii.gz"
PNG = ".png"
SUBSETS = ("Tr", "Ts")
CASES_DIR = ".cases"
PARTIAL_DIR = ".partial"
CROP_BOXES_FILE = "crop_boxes.json"
SETTINGS_FILE = "conversion_settings.json"
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

    @classmethod
    def failing(cls, case_id: str, message: str, subset: str = "Tr") -> "CaseJob":
        """A job that fails with ``message``: a case found broken while the cases were being listed."""
        return cls(case_id, _fail, (message,), subset=subset)


def _fail(message: str) -> CaseData:
    raise ConversionError(message)


@dataclass
class ConversionSummary:
    """Outcome of :func:`run_cases`; ``results`` maps every finished case (new or skipped) to its info."""

    converted: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    results: dict[str, dict] = field(default_factory=dict)

    def counts(self) -> str:
        return (f"converted {len(self.converted)}, skipped (already done) {len(self.skipped)}, "
                f"failed {len(self.failed)}")

    def failures(self) -> str:
        """One line per failed case."""
        return "\n".join(f"  FAILED {case}: {reason}" for case, reason in sorted(self.failed.items()))


def raw_root(output_root: str | os.PathLike | None = None) -> Path:
    """``output_root`` if given, else ``$nnUNet_raw``; a clear error when neither is set."""
    if output_root is not None:
        return Path(output_root)
    env = os.environ.get("nnUNet_raw")
    if not env:
        raise ConversionError("nnUNet_raw is not set: export nnUNet_raw=/path/to/nnUNet_raw or pass an output root")
    return Path(env)


def dataset_path(dataset_id: int, name: str, output_root: str | os.PathLike | None = None) -> Path:
    """``<raw root>/DatasetNNN_<name>`` after validating id, name and root (nothing is created)."""
    from nnunet_covid.core.output_paths import check_writable_folder

    if not isinstance(dataset_id, int) or isinstance(dataset_id, bool) or not 1 <= dataset_id <= 999:
        raise ConversionError(f"dataset id must be an integer in 1..999, got {dataset_id!r}")
    if not name or any(c in name for c in "/\\ ") or name.startswith("."):
        raise ConversionError(f"invalid dataset name {name!r}: use letters, digits, '-' or '_'")
    root = raw_root(output_root)
    check_writable_folder(root, "output root")
    folder = root / dataset_folder_name(dataset_id, name)
    for existing in root.glob(f"Dataset{dataset_id:03d}_*") if root.is_dir() else ():
        if existing.name != folder.name:
            raise ConversionError(f"dataset id {dataset_id} is already used by {existing}; choose another id")
    return folder


def _settings_text(settings: Mapping[str, Any], keys) -> str:
    return ", ".join(f"{k}={settings.get(k)!r}" for k in keys)


def read_settings(dataset_dir: Path) -> dict | None:
    """The folder's conversion record ``{"converter", "dataset", "settings"}``, None when it has none."""
    path = Path(dataset_dir) / SETTINGS_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConversionError(f"{path}: unreadable conversion record ({type(e).__name__}: {e}); pass --overwrite "
                              f"to rebuild the dataset") from None
    if not isinstance(record, dict) or not isinstance(record.get("settings"), dict):
        raise ConversionError(f"{path}: not a conversion record; pass --overwrite to rebuild the dataset")
    return record


def open_dataset(dataset_id: int, name: str, output_root: str | os.PathLike | None, converter: str,
                 settings: Mapping[str, Any], overwrite: bool = False) -> Path:
    """The dataset folder for ``converter`` with ``settings`` (every option that changes its files), created.

    A folder this converter wrote under this name with the same settings is resumed (finished cases are
    skipped); with other settings it is an error naming the old and new values, unless ``overwrite``,
    which deletes and rebuilds it. A folder written by another converter, under another name, or not by
    ``nnunet-covid convert`` at all is never written into.
    """
    folder = dataset_path(dataset_id, name, output_root)
    settings = json.loads(json.dumps(dict(settings)))  # as read back from JSON (tuples -> lists)
    if folder.exists() and not folder.is_dir():
        raise ConversionError(f"{folder} exists and is not a folder")
    if folder.is_dir() and any(folder.iterdir()):
        if not (folder / SETTINGS_FILE).is_file() and not (folder / CASES_DIR).is_dir():
            raise ConversionError(f"{folder} was not written by nnunet-covid convert (no {SETTINGS_FILE}); "
                                  f"choose another dataset id or remove that folder")
        try:
            previous = read_settings(folder)
        except ConversionError:
            if not overwrite:
                raise
            previous = None  # an unreadable record of ours: rebuilt below
        if previous is None:
            if not overwrite:
                raise ConversionError(f"{folder.name} was converted without a settings record (an older "
                                      f"nnunet-covid): pass --overwrite to rebuild it, or choose another dataset id")
        elif previous.get("converter") != converter:
            raise ConversionError(f"{folder.name} was written by 'convert {previous.get('converter')}', not "
                                  f"'convert {converter}'; choose another dataset id")
        elif previous.get("dataset") != folder.name:
            raise ConversionError(f"{folder} was written as {previous.get('dataset')}; choose another dataset id")
        elif previous["settings"] != settings and not overwrite:
            keys = [k for k in dict.fromkeys([*previous["settings"], *settings])
                    if previous["settings"].get(k) != settings.get(k)]
            raise ConversionError(f"{folder.name} was converted with {_settings_text(previous['settings'], keys)}, "
                                  f"this run asks for {_settings_text(settings, keys)}: pass --overwrite to rebuild "
                                  f"it with the new settings, or choose another dataset id")
        if overwrite:
            shutil.rmtree(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_json(folder / SETTINGS_FILE, {"converter": converter, "dataset": folder.name,
                                                   "settings": settings})
    except OSError as e:
        raise ConversionError(f"cannot write into {folder}: {e.strerror or e}") from None
    return folder


def crop_settings(crop_lung: bool, crop_margin_mm: float | None) -> dict:
    """The recorded crop options: a margin only with ``crop_lung`` (default 10 mm); invalid margins refused."""
    from dataset_conversion.lung_crop import DEFAULT_MARGIN_MM, check_margin

    if not crop_lung:
        if crop_margin_mm is not None:
            raise ConversionError("--crop-margin needs --crop-lung")
        return {"crop_lung": False, "crop_margin_mm": None}
    margin = DEFAULT_MARGIN_MM if crop_margin_mm is None else crop_margin_mm
    check_margin(margin)
    return {"crop_lung": True, "crop_margin_mm": float(margin)}


def image_path(dataset_dir: Path, case_id: str, channel: int = 0, subset: str = "Tr",
               file_ending: str = NIFTI) -> Path:
    return Path(dataset_dir) / f"images{subset}" / f"{case_id}_{channel:04d}{file_ending}"


def label_path(dataset_dir: Path, case_id: str, subset: str = "Tr", file_ending: str = NIFTI) -> Path:
    return Path(dataset_dir) / f"labels{subset}" / f"{case_id}{file_ending}"


def case_record_path(dataset_dir: Path, case_id: str) -> Path:
    return Path(dataset_dir) / CASES_DIR / f"{case_id}.json"


def read_case_record(path: Path) -> dict | None:
    """A ``.cases/<case>.json`` record, None when it is missing or unreadable (the case is then converted again)."""
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    keys = {"case_id": str, "subset": str, "num_channels": int, "has_label": bool, "info": dict}
    if not isinstance(record, dict) or not all(isinstance(record.get(k), t) for k, t in keys.items()):
        return None
    return record


def case_done(dataset_dir: Path, case_id: str, subset: str = "Tr", file_ending: str = NIFTI) -> bool:
    """True when the case's record exists and its image (and label, if it had one) are on disk."""
    record = read_case_record(case_record_path(dataset_dir, case_id))
    if record is None or record.get("subset") != subset:
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


def check_finite(case_id: str, image, what: str) -> None:
    """Raise ConversionError when a floating-point ``image`` holds NaN or infinite voxels."""
    import numpy as np
    import SimpleITK as sitk

    array = sitk.GetArrayViewFromImage(image)
    if np.issubdtype(array.dtype, np.floating):
        bad = int(array.size - np.count_nonzero(np.isfinite(array)))
        if bad:
            raise ConversionError(f"case {case_id}: {what} has {bad} NaN/infinite voxel(s); "
                                  f"repair the source file (nothing is replaced silently)")


def label_as_uint8(case_id: str, label):
    """The label as uint8, after checking that its values are whole numbers in 0..255 (no silent wrap or rounding)."""
    import numpy as np
    import SimpleITK as sitk

    check_finite(case_id, label, "label")
    array = sitk.GetArrayViewFromImage(label)
    if array.size and array.dtype != np.uint8:
        if np.issubdtype(array.dtype, np.floating) and not np.array_equal(array, np.round(array)):
            fractional = np.unique(array[array != np.round(array)])[:5].tolist()
            raise ConversionError(f"case {case_id}: label has non-integer values {fractional}; expected label values")
        low, high = float(array.min()), float(array.max())
        if low < 0 or high > 255:
            raise ConversionError(f"case {case_id}: label values span [{low:g}, {high:g}]; expected 0..255")
    return sitk.Cast(label, sitk.sitkUInt8)


def write_case(dataset_dir: Path, case_id: str, images: Sequence[Any], label=None, subset: str = "Tr",
               file_ending: str = NIFTI, crop_lung: bool = False, crop_margin_mm: float | None = None,
               info: dict | None = None) -> dict:
    """Check geometry and values, optionally lung-crop, write the channels and the label atomically, record the case.

    Floating-point channels must be finite and the label whole numbers in 0..255 (cast to uint8);
    anything else is an error naming the case. With ``crop_lung`` the Liao et al. lung bounding box of
    channel 0 (see :mod:`dataset_conversion.lung_crop`) is applied to every channel and the label (a box
    that would cut a labelled voxel is an error), and the box is stored in the case record (collected
    into crop_boxes.json by :func:`finish_dataset`). Returns the case record.
    """
    if subset not in SUBSETS:
        raise ValueError(f"subset must be one of {SUBSETS}, got {subset!r}")
    images = list(images)
    if not images:
        raise ConversionError(f"case {case_id}: no image channels")
    for c, img in enumerate(images):
        if c:
            check_geometry(case_id, images[0], img, what=f"channel {c}")
        check_finite(case_id, img, f"image channel {c}")
    if label is not None:
        check_geometry(case_id, images[0], label)
        label = label_as_uint8(case_id, label)
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

    Failing cases are collected in the summary (never raised; :func:`finish_dataset` lists them);
    finished cases are skipped. With ``progress`` the counts are printed at the end.
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
            summary.results[job.case_id] = read_case_record(case_record_path(dataset_dir, job.case_id))["info"]
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
        print(summary.counts())
    return summary


def _pool_outcomes(args: list[tuple], workers: int):
    """Outcomes of ``_convert_one`` in forked worker processes (fork: no re-import of the caller's main module).

    Workers die with their parent (:func:`~nnunet_covid.core.worker_processes.die_with_parent`). A worker
    killed e.g. by the OOM killer breaks the pool for every unfinished case: those are then run again one
    at a time in a fresh process each, so that only the case that kills its worker fails.
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from concurrent.futures.process import BrokenProcessPool

    from nnunet_covid.core.worker_processes import die_with_parent

    def pool(size: int) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(size, mp_context=multiprocessing.get_context("fork"),
                                   initializer=die_with_parent, initargs=(os.getpid(),))

    unfinished = []
    with pool(workers) as executor:
        futures = {executor.submit(_convert_one, *a): a for a in args}
        for future in as_completed(futures):
            try:
                yield future.result()
            except BrokenProcessPool:
                unfinished.append(futures[future])
    for a in unfinished:
        case_id = a[1].case_id
        with pool(1) as executor:
            try:
                yield executor.submit(_convert_one, *a).result()
            except BrokenProcessPool:
                yield case_id, "failed", f"case {case_id}: its worker process died (killed, e.g. out of memory)"


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
    records = [read_case_record(p) for p in sorted((dataset_dir / CASES_DIR).glob("*.json"))]
    records = [r for r in records if r is not None and case_done(dataset_dir, r["case_id"], r["subset"], file_ending)]
    train_ids = sorted(r["case_id"] for r in records if r["subset"] == "Tr")
    if not train_ids:
        reason = f"\n{summary.failures()}" if summary is not None and summary.failed else ""
        raise ConversionError(f"{dataset_dir.name}: no training case could be converted{reason}")
    partial = dataset_dir / PARTIAL_DIR
    partial.mkdir(exist_ok=True)
    conversion = read_settings(dataset_dir)
    if conversion is not None:  # dataset.json states how its files were written
        dataset_json_fields["converted_by"] = f"nnunet-covid convert {conversion['converter']}"
        dataset_json_fields["conversion_settings"] = conversion["settings"]
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
                              f"(rerun to retry only the failed ones):\n{summary.failures()}")
    return dataset_dir
