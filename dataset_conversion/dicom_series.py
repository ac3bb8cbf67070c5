"""Robust reading of one axial CT DICOM series into a SimpleITK image in Hounsfield units.

:func:`read_dicom_series` sorts the slices by their position along the slice normal (never by
file name or InstanceNumber), applies RescaleSlope/RescaleIntercept, takes spacing, origin and
direction from the DICOM geometry, and raises :class:`DicomSeriesError` with one clear message for
unreadable/corrupt files, several series in one folder, duplicate slice positions, missing slices
(gaps in the slice positions), and slices of different size or orientation.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nnunet_covid.core.errors import ConversionError

SPACING_TOLERANCE = 0.1  # relative deviation of a slice gap from the median gap before it is an error


class DicomSeriesError(ConversionError):
    """A DICOM series that cannot be read as one regular volume."""


@dataclass
class SeriesInfo:
    """Header facts of a series folder, read from one file without pixel data."""

    folder: Path
    series_uid: str
    patient_id: str
    modality: str
    num_files: int


def dicom_files(folder: str | Path) -> list[Path]:
    """The DICOM files in ``folder``: ``*.dcm`` plus extension-less files with the DICM preamble (links followed)."""
    files = []
    try:
        entries = sorted(Path(folder).iterdir())
    except OSError as e:
        raise DicomSeriesError(f"cannot read folder {folder}: {e.strerror}") from None
    for p in entries:
        if not p.is_file() or p.name.startswith("."):
            continue
        if p.suffix.lower() == ".dcm":
            files.append(p)
        elif p.suffix == "":
            try:
                with open(p, "rb") as fh:
                    if fh.read(132)[128:] == b"DICM":
                        files.append(p)
            except OSError as e:
                raise DicomSeriesError(f"{p}: cannot be read ({e.strerror})") from None
    return files


def series_info(folder: str | Path) -> SeriesInfo | None:
    """Header facts of the DICOM series in ``folder`` (None when it holds no DICOM file).

    The first file whose header can be read speaks for the series, so one corrupt slice does not hide
    the series (reading the series then names that slice); no readable header at all is an error.
    """
    import pydicom

    files = dicom_files(folder)
    if not files:
        return None
    first_error = None
    for path in files:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            if "SeriesInstanceUID" not in ds:
                raise ValueError("no SeriesInstanceUID in the header")
        except Exception as e:  # noqa: BLE001 - pydicom raises several types for broken files
            first_error = first_error or f"{path}: unreadable DICOM file ({type(e).__name__}: {e})"
            continue
        return SeriesInfo(Path(folder), str(ds.get("SeriesInstanceUID", "")), str(ds.get("PatientID", "")),
                          str(ds.get("Modality", "")), len(files))
    raise DicomSeriesError(f"{folder}: no readable DICOM header in {len(files)} file(s); first: {first_error}")


def _read_slice(path: Path):
    import pydicom

    try:
        ds = pydicom.dcmread(path)
        pixels = ds.pixel_array
    except Exception as e:  # noqa: BLE001
        raise DicomSeriesError(f"{path}: corrupt or unreadable DICOM slice ({type(e).__name__}: {e})") from None
    for tag in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "SOPInstanceUID"):
        if tag not in ds:
            raise DicomSeriesError(f"{path}: DICOM slice lacks {tag}")
    if pixels.ndim != 2:
        raise DicomSeriesError(f"{path}: expected a single-frame grayscale slice, got pixel array {pixels.shape}")
    return ds, pixels


def read_dicom_series(folder: str | Path, series_uid: str | None = None):
    """Read the CT series in ``folder`` -> ``(image, sop_uids)``.

    ``image`` is a SimpleITK image in HU (int16 when slope and intercept are integral, else
    float32), axis order (x=column, y=row, z=slice) with the slice axis sorted by increasing
    position along the slice normal; ``sop_uids[k]`` is the SOP Instance UID of slice ``k``.
    ``series_uid`` selects one series when the folder holds several.
    """
    import SimpleITK as sitk

    folder = Path(folder)
    files = dicom_files(folder)
    if not files:
        raise DicomSeriesError(f"{folder}: no DICOM files")
    slices = [_read_slice(p) + (p,) for p in files]
    series = {str(ds.get("SeriesInstanceUID", "")) for ds, _, _ in slices}
    if series_uid is not None:
        slices = [s for s in slices if str(s[0].get("SeriesInstanceUID", "")) == series_uid]
        if not slices:
            raise DicomSeriesError(f"{folder}: no slice of series {series_uid}")
    elif len(series) > 1:
        raise DicomSeriesError(f"{folder}: {len(series)} different series in one folder; pass the series UID")

    # the same instance stored twice is harmless: keep one copy
    unique = {}
    for s in slices:
        unique.setdefault(str(s[0].SOPInstanceUID), s)
    slices = list(unique.values())

    orientation = np.asarray(slices[0][0].ImageOrientationPatient, dtype=float)
    row_dir, col_dir = orientation[:3], orientation[3:]
    normal = np.cross(row_dir, col_dir)
    shape = slices[0][1].shape
    for ds, pixels, path in slices:
        if not np.allclose(np.asarray(ds.ImageOrientationPatient, dtype=float), orientation, atol=1e-4):
            raise DicomSeriesError(f"{path}: slice orientation differs from the rest of the series in {folder}")
        if pixels.shape != shape:
            raise DicomSeriesError(f"{path}: slice size {pixels.shape} differs from {shape} in {folder}")
    positions = np.array([np.dot(np.asarray(ds.ImagePositionPatient, dtype=float), normal) for ds, _, _ in slices])
    order = np.argsort(positions, kind="stable")
    slices = [slices[i] for i in order]
    positions = positions[order]
    if len(slices) > 1:
        gaps = np.diff(positions)
        duplicate = np.nonzero(gaps < 1e-3)[0]
        if duplicate.size:
            i = int(duplicate[0])
            raise DicomSeriesError(f"{folder}: duplicate slice position {positions[i]:.2f} mm in "
                                   f"{slices[i][2].name} and {slices[i + 1][2].name}")
        spacing_z = float(np.median(gaps))
        off = np.nonzero(np.abs(gaps - spacing_z) > SPACING_TOLERANCE * spacing_z)[0]
        if off.size:
            i = int(off[0])
            missing = int(round(gaps[i] / spacing_z)) - 1
            what = f"{missing} missing slice(s)" if missing >= 1 else "irregular slice spacing"
            raise DicomSeriesError(f"{folder}: {what} between {slices[i][2].name} ({positions[i]:.2f} mm) and "
                                   f"{slices[i + 1][2].name} ({positions[i + 1]:.2f} mm); slice spacing is "
                                   f"{spacing_z:.2f} mm")
    else:
        spacing_z = float(slices[0][0].get("SliceThickness", 1.0) or 1.0)

    slopes = [float(ds.get("RescaleSlope", 1) or 1) for ds, _, _ in slices]
    intercepts = [float(ds.get("RescaleIntercept", 0) or 0) for ds, _, _ in slices]
    integral = all(s.is_integer() for s in slopes + intercepts)
    volume = np.empty((len(slices),) + shape, dtype=np.int16 if integral else np.float32)
    for k, ((ds, pixels, _), slope, intercept) in enumerate(zip(slices, slopes, intercepts)):
        if integral:
            volume[k] = np.clip(pixels.astype(np.int32) * int(slope) + int(intercept), -32768, 32767)
        else:
            volume[k] = pixels.astype(np.float32) * slope + intercept

    first = slices[0][0]
    row_spacing, col_spacing = (float(v) for v in first.PixelSpacing)  # DICOM: (between rows, between columns)
    image = sitk.GetImageFromArray(volume)
    image.SetSpacing((col_spacing, row_spacing, spacing_z))
    image.SetOrigin(tuple(float(v) for v in first.ImagePositionPatient))
    image.SetDirection(tuple(np.column_stack([row_dir, col_dir, normal]).ravel()))
    return image, [str(ds.SOPInstanceUID) for ds, _, _ in slices]
