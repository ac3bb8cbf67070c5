"""Paste predictions made on a lung-cropped dataset back into the original image geometry.

Command: ``nnunet-covid uncrop --pred PRED_DIR --raw-dataset $nnUNet_raw/DatasetNNN_Name -o OUT_DIR``.
Every ``<case><file_ending>`` in PRED_DIR is looked up in the dataset's ``crop_boxes.json`` (written
by ``nnunet-covid convert ... --crop-lung``) and written to OUT_DIR on the original grid, zero
outside the crop box. Files nnU-Net writes next to predictions (JSON) are ignored.
"""
from __future__ import annotations

import json
from pathlib import Path

from nnunet_covid.core.errors import ConversionError


def uncrop_folder(pred_dir: str | Path, raw_dataset: str | Path, out_dir: str | Path) -> list[Path]:
    """Uncrop every prediction in ``pred_dir``; returns the written files."""
    import SimpleITK as sitk

    from dataset_conversion.common import CROP_BOXES_FILE, NIFTI, PARTIAL_DIR, atomic_write_image
    from dataset_conversion.lung_crop import uncrop

    pred_dir, raw_dataset, out_dir = Path(pred_dir), Path(raw_dataset), Path(out_dir)
    boxes_file = raw_dataset / CROP_BOXES_FILE
    if not boxes_file.is_file():
        raise ConversionError(f"{raw_dataset}: no {CROP_BOXES_FILE}; was the dataset converted with --crop-lung?")
    boxes = json.loads(boxes_file.read_text())
    dataset_json = raw_dataset / "dataset.json"
    file_ending = json.loads(dataset_json.read_text())["file_ending"] if dataset_json.is_file() else NIFTI
    if not pred_dir.is_dir():
        raise ConversionError(f"prediction folder {pred_dir} does not exist")
    predictions = sorted(p for p in pred_dir.iterdir() if p.name.endswith(file_ending) and not p.name.startswith("."))
    if not predictions:
        raise ConversionError(f"{pred_dir}: no predictions ending in {file_ending}")
    written = []
    for path in predictions:
        case_id = path.name[: -len(file_ending)]
        if case_id not in boxes:
            raise ConversionError(f"{path.name}: case {case_id} has no crop box in {boxes_file}")
        try:
            image = sitk.ReadImage(str(path))
        except RuntimeError as e:
            raise ConversionError(f"{path}: unreadable prediction ({str(e).strip().splitlines()[-1]})") from None
        target = out_dir / path.name
        atomic_write_image(uncrop(image, boxes[case_id], case_id), target)
        written.append(target)
    partial = out_dir / PARTIAL_DIR
    if partial.is_dir() and not any(partial.iterdir()):
        partial.rmdir()
    return written

