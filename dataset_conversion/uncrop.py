"""Paste predictions made on a lung-cropped dataset back into the original image geometry.

Command: ``nnunet-covid uncrop --pred PRED_DIR --raw-dataset $nnUNet_raw/DatasetNNN_Name -o OUT_DIR``.
Every ``<case><file_ending>`` in PRED_DIR is looked up in the dataset's ``crop_boxes.json`` (written
by ``nnunet-covid convert ... --crop-lung``) and written to OUT_DIR on the original grid, zero
outside the crop box. Files nnU-Net writes next to predictions (JSON) are ignored.

Everything is checked before anything is written: OUT_DIR must not be PRED_DIR, the raw dataset or
a folder inside them; every prediction needs a well-formed crop box, a readable header and the box's
size and origin. The uncropped files are then written under temporary names and renamed into place
only when all of them are complete, so a failure leaves OUT_DIR as it was.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from nnunet_covid.core.errors import ConversionError

BOX_KEYS = {"original_size": 3, "original_spacing": 3, "original_origin": 3, "original_direction": 9,
            "crop_index": 3, "crop_size": 3}


def _read_json(path: Path, what: str):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConversionError(f"{path}: unreadable {what} ({type(e).__name__}: {e})") from None


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def load_crop_boxes(raw_dataset: Path) -> dict[str, dict]:
    """The dataset's crop boxes, each checked for the keys and value types :func:`lung_crop.uncrop` needs."""
    from dataset_conversion.common import CROP_BOXES_FILE

    boxes_file = raw_dataset / CROP_BOXES_FILE
    if not boxes_file.is_file():
        raise ConversionError(f"{raw_dataset}: no {CROP_BOXES_FILE}; was the dataset converted with --crop-lung?")
    boxes = _read_json(boxes_file, "crop boxes")
    if not isinstance(boxes, dict):
        raise ConversionError(f"{boxes_file}: expected an object of case -> crop box, got {type(boxes).__name__}")
    for case_id, box in boxes.items():
        bad = [k for k, n in BOX_KEYS.items() if not (isinstance(box, dict) and isinstance(box.get(k), list)
                                                       and len(box[k]) == n and all(map(_is_number, box[k])))]
        if bad:
            raise ConversionError(f"{boxes_file}: the crop box of case {case_id} has no valid {', '.join(bad)}")
        integral = box["crop_index"] + box["crop_size"] + box["original_size"]
        if not all(float(v).is_integer() for v in integral) or min(box["crop_size"]) < 1 or min(box["crop_index"]) < 0 \
                or any(i + s > n for i, s, n in zip(box["crop_index"], box["crop_size"], box["original_size"])):
            raise ConversionError(f"{boxes_file}: the crop box of case {case_id} does not fit its original size")
    return boxes


def _prediction_files(pred_dir: Path, file_ending: str) -> list[Path]:
    if not pred_dir.is_dir():
        raise ConversionError(f"prediction folder {pred_dir} " + ("is not a folder" if pred_dir.exists()
                                                                 else "does not exist"))
    try:
        predictions = sorted(p for p in pred_dir.iterdir() if p.name.endswith(file_ending) and not p.name.startswith(".")
                             and p.is_file())
    except OSError as e:
        raise ConversionError(f"cannot list {pred_dir}: {e.strerror}") from None
    if not predictions:
        raise ConversionError(f"{pred_dir}: no predictions ending in {file_ending}")
    return predictions


def _check_prediction(path: Path, case_id: str, box: dict) -> None:
    """Raise ConversionError unless the header of ``path`` has the size and origin of ``box``'s cropped region."""
    import SimpleITK as sitk

    from dataset_conversion.lung_crop import check_fits_box

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as e:
        raise ConversionError(f"{path}: unreadable prediction ({str(e).strip().splitlines()[-1]})") from None
    check_fits_box(reader.GetSize(), reader.GetOrigin(), box, case_id)


def uncrop_folder(pred_dir: str | Path, raw_dataset: str | Path, out_dir: str | Path) -> list[Path]:
    """Uncrop every prediction in ``pred_dir`` into ``out_dir``; returns the written files (all or none)."""
    import SimpleITK as sitk

    from dataset_conversion.common import NIFTI, atomic_write_image
    from dataset_conversion.lung_crop import uncrop
    from nnunet_covid.core.output_paths import check_writable_folder, is_inside

    pred_dir, raw_dataset, out_dir = Path(pred_dir), Path(raw_dataset), Path(out_dir)
    if not raw_dataset.is_dir():
        raise ConversionError(f"raw dataset {raw_dataset} " + ("is not a folder" if raw_dataset.exists()
                                                              else "does not exist"))
    for folder, what in ((pred_dir, "--pred"), (raw_dataset, "--raw-dataset")):
        if folder.exists() and is_inside(out_dir, folder):
            raise ConversionError(f"-o {out_dir} is {what} {folder} or inside it: uncropping never writes over its "
                                  f"inputs; choose another output folder")
    check_writable_folder(out_dir, "-o")
    boxes = load_crop_boxes(raw_dataset)
    dataset_json_file = raw_dataset / "dataset.json"
    file_ending = NIFTI
    if dataset_json_file.is_file():
        dataset_json = _read_json(dataset_json_file, "dataset.json")
        file_ending = dataset_json.get("file_ending") if isinstance(dataset_json, dict) else None
        if not isinstance(file_ending, str) or not file_ending:
            raise ConversionError(f"{dataset_json_file}: no 'file_ending' text")
    predictions = _prediction_files(pred_dir, file_ending)
    cases = {path: path.name[: -len(file_ending)] for path in predictions}
    unknown = sorted(case for case in cases.values() if case not in boxes)
    if unknown:
        raise ConversionError(f"{pred_dir}: case(s) {', '.join(unknown[:10])} have no crop box in "
                              f"{raw_dataset / 'crop_boxes.json'}; nothing was written")
    for path, case_id in cases.items():
        _check_prediction(path, case_id, boxes[case_id])

    staging = out_dir / f".uncrop.{os.getpid()}"
    created = next((f for f in [*reversed(out_dir.absolute().parents), out_dir.absolute()] if not f.exists()), None)
    try:
        for path, case_id in cases.items():
            try:
                image = sitk.ReadImage(str(path))
            except RuntimeError as e:
                raise ConversionError(f"{path}: unreadable prediction ({str(e).strip().splitlines()[-1]})") from None
            atomic_write_image(uncrop(image, boxes[case_id], case_id), staging / path.name, staging / ".partial")
        written = []
        for path in predictions:
            os.replace(staging / path.name, out_dir / path.name)
            written.append(out_dir / path.name)
        return written
    except BaseException:
        if created is not None:  # the folders this call made, so that a failure leaves no trace
            shutil.rmtree(created, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
