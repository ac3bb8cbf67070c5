"""Merge converted lesion datasets into one multi-lesion pre-training dataset (Wang et al., REFERENCE 1.2).

    nnunet-covid convert multilesion --input $nnUNet_raw --dataset-id 100 \
        --sources Dataset102_MSDLung Dataset103_StructSegGTV Dataset104_NSCLCEffusion [--labels union|per-source]

``--input`` is the raw root holding the sources; a source is given by folder name, by dataset id
(``102``) or by path. Every training case of every source (imagesTr/labelsTr per its dataset.json;
test cases are not merged) is written to the new dataset with the id ``<short>_<case id>``, where
``<short>`` is the source folder name without ``DatasetNNN_`` (e.g. ``MSDLung_lung_001``). Sources
must share channel names and file ending. ``--crop-lung`` is refused: crop the sources instead.

Labels:
- ``union`` (default): every foreground label of every source becomes 1 ``lesion``;
- ``per-source``: each foreground label of each source gets its own value, in ``--sources`` order
  (e.g. 1 ``MSDLung``, 2 ``StructSegGTV``, 3 ``NSCLCEffusion``; a source with several foreground
  labels gets one value per label, named ``<short>_<label name>``).

Per-case metadata for partial-label training, ``case_sources.json`` in the dataset folder::

    {"<case id>": {"source": "<short>", "dataset": "<source folder name>", "annotated_labels": [<int>, ...]}, ...}

``annotated_labels`` are the output label values the case's source annotates (never 0). A voxel
of that case labelled 0 is "none of annotated_labels": it may contain a lesion type its source does
not annotate (e.g. an effusion in an MSD case), so a partial-label loss must not treat the other
lesion labels as negatives there. The file lists exactly the cases present in imagesTr. The same
mapping is stored under ``case_sources`` in dataset.json, which nnU-Net copies to the preprocessed
folder, so trainers read it from their ``dataset_json``.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from dataset_conversion.common import (CASES_DIR, CaseData, CaseJob, case_done, crop_settings, dataset_path,
                                       finish_dataset, open_dataset, raw_root, read_case_record, run_cases)
from nnunet_covid.core.errors import ConversionError
from nnunet_covid.core.atomic_io import atomic_write_json
from dataset_conversion.nifti_cases import read_image

CLI_NAME = "multilesion"
CLI_HELP = "merge converted lesion datasets into one multi-lesion pre-training dataset"
DEFAULT_NAME = "MultiLesion"
LABEL_MODES = ("union", "per-source")
CASE_SOURCES_FILE = "case_sources.json"
SETTINGS = ("sources", "labels")  # sources recorded by folder name, in order (it sets per-source label values)
LOCATIONS = ()


@dataclass
class Source:
    """One converted dataset to merge: its folder, short name, dataset.json and output label mapping."""

    folder: Path
    short: str
    dataset_json: dict
    label_map: dict[int, int]  # source label value -> output label value (0 -> 0)


def resolve_source(spec: str, root: Path) -> Path:
    """A source folder from a folder name under ``root``, a dataset id, or a path."""
    if spec.isdigit():
        matches = sorted(root.glob(f"Dataset{int(spec):03d}_*"))
        if len(matches) != 1:
            raise ConversionError(f"source {spec}: found {len(matches)} folders Dataset{int(spec):03d}_* in {root}")
        return matches[0]
    path = Path(spec)
    folder = path if path.is_dir() else root / spec
    if not (folder / "dataset.json").is_file():
        raise ConversionError(f"source {spec}: no converted dataset (dataset.json) at {folder}")
    return folder


def short_name(folder: Path) -> str:
    return re.sub(r"^Dataset\d{3}_", "", folder.name)


def read_source_dataset_json(folder: Path) -> dict:
    """A source's dataset.json, checked for what merging needs (labels, channel_names, file_ending)."""
    path = folder / "dataset.json"
    try:
        dataset_json = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConversionError(f"source {folder.name}: cannot read {path} ({type(e).__name__}: {e})") from None
    if not isinstance(dataset_json, dict):
        raise ConversionError(f"source {folder.name}: {path} is not a JSON object")
    labels = dataset_json.get("labels")
    if not isinstance(labels, dict) or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0
                                               for v in labels.values()):
        raise ConversionError(f"source {folder.name}: {path} 'labels' must map names to label values >= 0 "
                              f"(region labels cannot be merged), got {labels!r}")
    if not isinstance(dataset_json.get("channel_names"), dict) or not isinstance(dataset_json.get("file_ending"), str):
        raise ConversionError(f"source {folder.name}: {path} lacks 'channel_names' (object) or 'file_ending' (text)")
    return dataset_json


def load_sources(specs, root: Path, labels: str) -> tuple[list[Source], dict[str, int]]:
    """The sources with their label mappings, and the merged dataset's labels."""
    folders = [resolve_source(str(s), root) for s in specs]
    if not folders:
        raise ConversionError("no --sources given")
    if len({f.resolve() for f in folders}) != len(folders):
        raise ConversionError(f"a source is given twice: {', '.join(str(s) for s in specs)}")
    sources, out_labels = [], {"background": 0}
    for folder in folders:
        dataset_json = read_source_dataset_json(folder)
        foreground = sorted((v, k) for k, v in dataset_json["labels"].items() if v != 0)
        if not foreground:
            raise ConversionError(f"source {folder.name}: dataset.json has no foreground label")
        short = short_name(folder)
        label_map = {0: 0}
        for value, label_name in foreground:
            if labels == "union":
                out_labels["lesion"] = label_map[value] = 1
            else:
                out_name = short if len(foreground) == 1 else f"{short}_{label_name}"
                out_labels[out_name] = label_map[value] = len(out_labels)
        sources.append(Source(folder, short, dataset_json, label_map))
    shorts = [s.short for s in sources]
    if len(set(shorts)) != len(shorts):
        raise ConversionError(f"sources with the same short name: {shorts}")
    reference = sources[0].dataset_json
    for s in sources[1:]:
        for key in ("channel_names", "file_ending"):
            if s.dataset_json.get(key) != reference.get(key):
                raise ConversionError(f"source {s.folder.name}: {key} {s.dataset_json.get(key)} differs from "
                                      f"{sources[0].folder.name}'s {reference.get(key)}")
    return sources, out_labels


def load_case(image_files: tuple[str, ...], label_file: str, label_map: dict[int, int], case_id: str,
              info: dict) -> CaseData:
    """Loader: a source case with its label values remapped by ``label_map`` (unknown values rejected)."""
    import numpy as np
    import SimpleITK as sitk

    images = [read_image(f, case_id, "image") for f in image_files]
    label = read_image(label_file, case_id, "label")
    values = sitk.GetArrayFromImage(label)
    unknown = sorted(set(np.unique(values).tolist()) - set(label_map))
    if unknown:
        raise ConversionError(f"case {case_id}: label {label_file} has values {unknown} not in its dataset.json")
    lookup = np.zeros(max(label_map) + 1, dtype=np.uint8)
    for source_value, out_value in label_map.items():
        lookup[source_value] = out_value
    remapped = sitk.GetImageFromArray(lookup[values.astype(np.int64)])
    remapped.CopyInformation(label)
    return CaseData(images=images, label=remapped, info=info)


def write_case_sources(folder: Path, file_ending: str) -> dict:
    """``case_sources.json`` (format in the module docstring) for the training cases on disk; returns the mapping."""
    case_sources = {}
    for record_file in sorted((folder / CASES_DIR).glob("*.json")):
        record = read_case_record(record_file)
        if record is not None and case_done(folder, record["case_id"], "Tr", file_ending):
            case_sources[record["case_id"]] = {k: record["info"][k] for k in ("source", "dataset", "annotated_labels")}
    atomic_write_json(folder / CASE_SOURCES_FILE, case_sources)
    return case_sources


def convert_multilesion(input_dir, dataset_id: int, name: str = DEFAULT_NAME, output_root=None,
                        num_processes: int = 1, crop_lung: bool = False, crop_margin_mm: float | None = None,
                        sources=(), labels: str = "union", overwrite: bool = False) -> Path:
    """Merge ``sources`` (converted raw datasets under ``input_dir``) into DatasetNNN_<name>; returns its folder."""
    from nnunetv2.utilities.utils import get_filenames_of_train_images_and_targets

    if crop_lung:
        raise ConversionError("multilesion merges converted datasets: convert the sources with --crop-lung instead")
    if labels not in LABEL_MODES:
        raise ConversionError(f"unknown --labels {labels!r}; choose union or per-source")
    crop = crop_settings(crop_lung, crop_margin_mm)
    root = Path(input_dir) if input_dir is not None else raw_root(output_root)
    merged_sources, out_labels = load_sources(sources, root, labels)
    target = dataset_path(dataset_id, name, output_root)
    if any(target.resolve() == s.folder.resolve() for s in merged_sources):
        raise ConversionError(f"{target.name} is one of the sources; choose another dataset id")
    jobs = []
    for source in merged_sources:
        annotated = sorted({v for v in source.label_map.values() if v != 0})
        try:
            cases = get_filenames_of_train_images_and_targets(str(source.folder), source.dataset_json)
        except (OSError, KeyError, TypeError, ValueError, AssertionError) as e:
            raise ConversionError(f"source {source.folder.name}: cannot list its training cases "
                                  f"({type(e).__name__}: {e})") from None
        for case_id, files in sorted(cases.items()):
            new_id = f"{source.short}_{case_id}"
            info = {"source": source.short, "dataset": source.folder.name, "annotated_labels": annotated}
            jobs.append(CaseJob(new_id, load_case, (tuple(files["images"]), files["label"], source.label_map,
                                                    new_id, info)))
    settings = {**crop, "sources": [s.folder.name for s in merged_sources], "labels": labels}
    folder = open_dataset(dataset_id, name, output_root, CLI_NAME, settings, overwrite)
    file_ending = merged_sources[0].dataset_json["file_ending"]
    summary = run_cases(folder, jobs, num_processes, desc=CLI_NAME, file_ending=file_ending)
    case_sources = write_case_sources(folder, file_ending)  # also in dataset.json: the trainers read it there
    extra = {k: v for k, v in merged_sources[0].dataset_json.items() if k == "overwrite_image_reader_writer"}
    return finish_dataset(folder, merged_sources[0].dataset_json["channel_names"], out_labels, summary,
                          file_ending=file_ending, labels_mode=labels,
                          sources={s.short: s.folder.name for s in merged_sources}, case_sources=case_sources,
                          description=f"multi-lesion merge ({labels} labels) of "
                                      + ", ".join(s.folder.name for s in merged_sources), **extra)


def add_arguments(parser) -> None:
    parser.add_argument("--sources", nargs="+", required=True, metavar="DATASET",
                        help="converted datasets to merge: DatasetNNN_Name folder names under --input, ids, or paths")
    parser.add_argument("--labels", choices=LABEL_MODES, default="union",
                        help="union: every lesion = 1 (default); per-source: one label value per source")


CONVERT = convert_multilesion
