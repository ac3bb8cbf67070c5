"""Reading NIfTI cases for the converters: clear errors for unreadable files and unexpected label values.

The loaders here are top-level functions so that :func:`dataset_conversion.common.run_cases` can
send them to worker processes.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

from dataset_conversion.common import CaseData, CaseJob, finish_dataset, run_cases
from nnunet_covid.core.errors import ConversionError


def nonfinite_voxels(path: str | Path) -> int:
    """How many NaN/infinite voxels a floating-point NIfTI file stores (SimpleITK reads them as 0); 0 for others."""
    import nibabel as nib
    import numpy as np

    if not str(path).lower().endswith((".nii", ".nii.gz")):
        return 0
    image = nib.load(str(path))
    if not np.issubdtype(image.get_data_dtype(), np.floating):
        return 0
    data = np.asanyarray(image.dataobj)
    return int(data.size - np.count_nonzero(np.isfinite(data)))


def read_image(path: str | Path, case_id: str, what: str = "image"):
    """Read one image with SimpleITK; a missing or unreadable file, or NaN/infinite voxels in it, are a
    ConversionError naming the case."""
    import SimpleITK as sitk

    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"case {case_id}: {what} file {path} is missing")
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as e:
        reason = str(e).strip().splitlines()[-1] if str(e).strip() else "unreadable"
        raise ConversionError(f"case {case_id}: cannot read {what} {path}: {reason}") from None
    bad = nonfinite_voxels(path) if image.GetPixelID() in (sitk.sitkFloat32, sitk.sitkFloat64) else 0
    if bad:
        raise ConversionError(f"case {case_id}: {what} {path} has {bad} NaN/infinite voxel(s); repair the source "
                              f"file (nothing is replaced silently)")
    return image


def check_label_values(label, case_id: str, allowed: Iterable[int], path: str | Path = "") -> None:
    """Raise ConversionError when the label image holds values outside ``allowed`` (e.g. 255 masks)."""
    import numpy as np
    import SimpleITK as sitk

    values = np.unique(sitk.GetArrayViewFromImage(label))
    unexpected = sorted(set(values.tolist()) - set(allowed))
    if unexpected:
        where = f" ({path})" if path else ""
        raise ConversionError(f"case {case_id}: label{where} has unexpected values {unexpected[:10]}; "
                              f"expected a subset of {sorted(set(allowed))}")


def load_labelled_nifti(case_id: str, image_file: str, label_file: str, allowed_labels: tuple[int, ...]) -> CaseData:
    """Loader of a one-channel image and its label map, both NIfTI, label values checked."""
    image = read_image(image_file, case_id, "image")
    label = read_image(label_file, case_id, "label")
    check_label_values(label, case_id, allowed_labels, label_file)
    return CaseData(images=[image], label=label)


def convert_labelled_nifti_cases(folder: Path, cases, labels: dict[str, int], desc: str, num_processes: int = 1,
                                 crop_lung: bool = False, crop_margin_mm: float | None = None,
                                 test_ids=frozenset(), **dataset_json_fields) -> Path:
    """Convert (case id, image file, label file) triples of one-channel CT into ``folder`` and finish it.

    Cases in ``test_ids`` go to imagesTs/labelsTs; the extra keyword arguments go into dataset.json.
    Returns the folder (ConversionError on failed cases).
    """
    jobs = [CaseJob(case_id, load_labelled_nifti, (case_id, str(image), str(label), tuple(labels.values())),
                    subset="Ts" if case_id in test_ids else "Tr")
            for case_id, image, label in cases]
    summary = run_cases(folder, jobs, num_processes, desc=desc, crop_lung=crop_lung, crop_margin_mm=crop_margin_mm)
    return finish_dataset(folder, {0: "CT"}, labels, summary, **dataset_json_fields)
