"""nsclc-effusion converter: DICOM CT + PleThora masks stored in another orientation, resampled and checked."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_covid.core.errors import ConversionError
from dataset_conversion.nsclc_effusion import convert_nsclc_effusion
from nnunet_covid.pipeline.demo_data import write_nsclc_effusion_layout
from nnunet_covid.cli import main
from helpers.nnunet_integrity import verify_with_nnunet


@pytest.fixture(scope="module")
def plethora(tmp_path_factory):
    return write_nsclc_effusion_layout(tmp_path_factory.mktemp("plethora"), n_cases=2, seed=5)


def mask_file(root: Path, patient: str, reviewer: str) -> Path:
    return root / "Effusions" / patient / f"{patient}_effusion_{reviewer}_reviewer.nii.gz"


def reviewer_on_ct_grid(root: Path, patient: str, reviewer: str) -> np.ndarray:
    """Independent reference: the synthetic masks are the CT label flipped in x and y, so flip back."""
    return sitk.GetArrayFromImage(sitk.ReadImage(str(mask_file(root, patient, reviewer))))[:, ::-1, ::-1]


def gdcm_ct(root: Path, patient: str):
    """The CT as SimpleITK's own GDCM series reader sees it (a reader independent of the converter's)."""
    folder = next(p.parent for p in (root / "NSCLC-Radiomics" / patient).rglob("1-001.dcm"))
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    return reader.Execute()


def test_union_of_flipped_reviewer_masks_lands_on_the_ct_grid(plethora, tmp_path, capfd, monkeypatch):
    assert main(["convert", "nsclc-effusion", "--input", str(plethora), "--dataset-id", "104"]) == 0
    folder = tmp_path / "raw" / "Dataset104_NSCLCEffusion"
    for patient in ("LUNG1-001", "LUNG1-002"):
        reference_ct = gdcm_ct(plethora, patient)
        image = sitk.ReadImage(str(folder / "imagesTr" / f"{patient}_0000.nii.gz"))
        label = sitk.ReadImage(str(folder / "labelsTr" / f"{patient}.nii.gz"))
        np.testing.assert_array_equal(sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(reference_ct))
        for img in (image, label):
            np.testing.assert_allclose(img.GetOrigin(), reference_ct.GetOrigin(), atol=1e-3)
            np.testing.assert_allclose(img.GetSpacing(), reference_ct.GetSpacing(), atol=1e-4)
            np.testing.assert_allclose(img.GetDirection(), reference_ct.GetDirection(), atol=1e-6)
        first = reviewer_on_ct_grid(plethora, patient, "first")
        second = reviewer_on_ct_grid(plethora, patient, "second")
        expected = (first | second).astype(np.uint8)
        converted = sitk.GetArrayFromImage(label)
        np.testing.assert_array_equal(converted, expected)
        assert converted.sum() > first.sum() and converted.sum() > second.sum()
        # the stored mask array is not aligned with the CT array: only physical-space resampling fixes it
        raw_first = sitk.GetArrayFromImage(sitk.ReadImage(str(mask_file(plethora, patient, "first"))))
        assert (raw_first & (1 - first)).sum() > 0
        # effusion lies on fluid, posterior in the lungs
        hu = sitk.GetArrayFromImage(image)[converted > 0]
        assert -100 < np.median(hu) < 100
    assert json.loads((folder / "dataset.json").read_text())["labels"] == {"background": 0, "effusion": 1}
    verify_with_nnunet(folder, capfd, monkeypatch)


def test_single_reviewer_choice(plethora, tmp_path):
    folder = convert_nsclc_effusion(plethora, 105, name="EffusionSecond", reviewer="second")
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "labelsTr" / "LUNG1-002.nii.gz")))
    np.testing.assert_array_equal(label, reviewer_on_ct_grid(plethora, "LUNG1-002", "second"))
    with pytest.raises(ConversionError, match="reviewer='second'"):
        convert_nsclc_effusion(plethora, 105, name="EffusionSecond", reviewer="first")


def _shift_origin(path: Path, offset_mm) -> None:
    mask = sitk.ReadImage(str(path))
    mask.SetOrigin(tuple(np.add(mask.GetOrigin(), offset_mm)))
    sitk.WriteImage(mask, str(path))


def test_misaligned_masks_and_missing_ct_fail_per_case(tmp_path, capfd):
    root = write_nsclc_effusion_layout(tmp_path / "src", n_cases=5, seed=7)
    # 002: outside the CT; 003: half of it beyond the last slice; 004: array flipped front-to-back with
    # an unchanged header (lands on aerated lung); 005: CT not downloaded
    for reviewer in ("first", "second"):
        _shift_origin(mask_file(root, "LUNG1-002", reviewer), (0.0, 0.0, 2000.0))
        ct_length = gdcm_ct(root, "LUNG1-003").GetSize()[2] * gdcm_ct(root, "LUNG1-003").GetSpacing()[2]
        _shift_origin(mask_file(root, "LUNG1-003", reviewer), (0.0, 0.0, ct_length / 2))
        flipped = sitk.ReadImage(str(mask_file(root, "LUNG1-004", reviewer)))
        mirrored = sitk.GetImageFromArray(sitk.GetArrayFromImage(flipped)[:, ::-1, :].copy())
        mirrored.CopyInformation(flipped)
        sitk.WriteImage(mirrored, str(mask_file(root, "LUNG1-004", reviewer)))
    shutil.rmtree(root / "NSCLC-Radiomics" / "LUNG1-005")
    rc = main(["convert", "nsclc-effusion", "-i", str(root), "-d", "106", "-np", "2"])
    err = capfd.readouterr().err
    assert rc != 0 and "Traceback" not in err
    assert "4 case(s) failed" in err
    failures = {line.split("FAILED ")[1].split(":")[0]: line for line in err.splitlines() if "FAILED " in line}
    assert sorted(failures) == ["LUNG1-002", "LUNG1-003", "LUNG1-004", "LUNG1-005"]
    assert "does not overlap the CT's field of view" in failures["LUNG1-002"]
    assert "volume changed" in failures["LUNG1-003"]
    assert "misaligned" in failures["LUNG1-004"] and "HU" in failures["LUNG1-004"]
    assert "no DICOM folder" in failures["LUNG1-005"]
    folder = tmp_path / "raw" / "Dataset106_NSCLCEffusion"
    assert [p.name for p in (folder / "labelsTr").iterdir()] == ["LUNG1-001.nii.gz"]
    assert json.loads((folder / "dataset.json").read_text())["numTraining"] == 1


def test_ct_is_found_by_modality_not_folder_order(tmp_path):
    root = write_nsclc_effusion_layout(tmp_path / "src", n_cases=1, seed=9)
    study = next((root / "NSCLC-Radiomics" / "LUNG1-001").iterdir())
    # the RTSTRUCT series sorts first and the CT last; an empty CT-less patient folder is an error
    (study / "3.000000-NA-30001").rename(study / "0.000000-AAA-RTSTRUCT")
    folder = convert_nsclc_effusion(root, 107)
    assert (folder / "labelsTr" / "LUNG1-001.nii.gz").is_file()
    for ct_file in (study / "0.000000-NA-20001").glob("*.dcm"):
        ct_file.unlink()
    with pytest.raises(ConversionError, match="LUNG1-001.*no DICOM series with Modality CT"):
        convert_nsclc_effusion(root, 108)



def test_crop_lung_is_refused_because_it_would_cut_the_effusion(plethora, tmp_path, capfd):
    rc = main(["convert", "nsclc-effusion", "-i", str(plethora), "-d", "109", "--crop-lung"])
    assert rc != 0 and "--crop-lung would cut pleural effusions off" in capfd.readouterr().err
    assert not (tmp_path / "raw").exists()
