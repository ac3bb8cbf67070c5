"""Liao et al. lung mask, --crop-lung conversion and the exact uncrop round trip."""
from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_covid.core.errors import ConversionError
from dataset_conversion.lung_crop import bounding_box, crop_to_lungs, lung_mask, uncrop
from helpers.raw_layouts import write_lidc_layout
from nnunet_covid.cli import main
from nnunet_covid.pipeline.synthetic_ct import default_spacing, make_case
from helpers.nnunet_integrity import verify_with_nnunet

SHAPE = (24, 64, 64)


@pytest.mark.parametrize("lesion,seed", [("covid", 1), ("tumour", 2), ("effusion", 3)])
def test_lung_mask_finds_the_synthetic_lungs(lesion, seed):
    case = make_case(lesion, seed, shape=SHAPE)
    mask = lung_mask(case.image, case.spacing)
    truth = case.lungs > 0
    # the HU < -600 threshold leaves out dense lesions at the lung border, so compare boxes, not voxels
    assert 2 * (mask & truth).sum() / (mask.sum() + truth.sum()) > 0.75
    assert not (mask & (case.image > 300)).any()  # never the spine
    start, stop = bounding_box(mask, case.spacing, 0.0)
    true_start, true_stop = bounding_box(truth, case.spacing, 0.0)
    assert (np.abs(start - true_start) <= [1, 2, 2]).all() and (stop <= true_stop + 1).all()


def test_no_lungs_keeps_the_whole_image():
    body = np.full(SHAPE, 40, dtype=np.int16)  # soft tissue only: no air-filled component
    image = sitk.GetImageFromArray(body)
    image.SetSpacing(default_spacing(SHAPE)[::-1])
    (cropped,), label, box = crop_to_lungs([image])
    assert label is None and box["lung_found"] is False and cropped.GetSize() == image.GetSize()


def _case_images(origin, direction):
    case = make_case("nodule", 5, shape=SHAPE)
    image, label = case.to_sitk(origin=origin)
    for img in (image, label):
        img.SetDirection(direction)
    return case, image, label


@pytest.mark.parametrize("direction", [(1, 0, 0, 0, 1, 0, 0, 0, 1), (-1, 0, 0, 0, -1, 0, 0, 0, 1)])
def test_uncrop_of_crop_is_the_original_inside_the_box_and_zero_outside(direction):
    case, image, label = _case_images((-170.0, 150.0, -300.0), direction)
    (cropped,), cropped_label, box = crop_to_lungs([image], label, margin_mm=10.0)
    assert box["lung_found"] and np.prod(cropped.GetSize()) < 0.8 * np.prod(image.GetSize())
    # the crop keeps every voxel at its physical position
    np.testing.assert_allclose(cropped.TransformIndexToPhysicalPoint((0, 0, 0)),
                               image.TransformIndexToPhysicalPoint(tuple(box["crop_index"])))
    assert sitk.GetArrayViewFromImage(cropped_label).sum() == case.label.sum()  # nodules lie in the lungs
    restored = uncrop(cropped, box)
    assert restored.GetSize() == image.GetSize()
    np.testing.assert_allclose(restored.GetOrigin(), image.GetOrigin())
    np.testing.assert_allclose(restored.GetSpacing(), image.GetSpacing())
    np.testing.assert_allclose(restored.GetDirection(), image.GetDirection())
    x, y, z = box["crop_index"]
    sx, sy, sz = box["crop_size"]
    inside = np.zeros(case.image.shape, dtype=bool)
    inside[z:z + sz, y:y + sy, x:x + sx] = True
    restored_array = sitk.GetArrayFromImage(restored)
    np.testing.assert_array_equal(restored_array[inside], case.image[inside])
    assert (restored_array[~inside] == 0).all() and (~inside).any()
    np.testing.assert_array_equal(sitk.GetArrayFromImage(uncrop(cropped_label, box)), case.label)


def test_convert_with_crop_lung_then_uncrop_cli_restores_original_geometry(tmp_path, capfd, monkeypatch):
    spacing = default_spacing(SHAPE)
    raw = write_lidc_layout(tmp_path / "src", n_cases=2, seed=20, shape=SHAPE, spacing=spacing)
    assert main(["convert", "lidc-idri", "-i", str(raw), "-d", "31", "--crop-lung", "--crop-margin", "8"]) == 0
    assert main(["convert", "lidc-idri", "-i", str(raw), "-d", "32"]) == 0
    cropped_ds, full_ds = tmp_path / "raw" / "Dataset031_LIDCIDRI", tmp_path / "raw" / "Dataset032_LIDCIDRI"
    boxes = json.loads((cropped_ds / "crop_boxes.json").read_text())
    assert sorted(boxes) == ["LIDC-IDRI-0001", "LIDC-IDRI-0002"] and all(b["margin_mm"] == 8 for b in boxes.values())
    for case_id, box in boxes.items():
        cropped = sitk.ReadImage(str(cropped_ds / "imagesTr" / f"{case_id}_0000.nii.gz"))
        assert list(cropped.GetSize()) == box["crop_size"] and box["crop_size"] != box["original_size"]
    # the cropped labels stand in for predictions on the cropped images
    out = tmp_path / "uncropped"
    assert main(["uncrop", "--pred", str(cropped_ds / "labelsTr"), "--raw-dataset", str(cropped_ds), "-o", str(out)]) == 0
    for case_id in boxes:
        restored = sitk.ReadImage(str(out / f"{case_id}.nii.gz"))
        original = sitk.ReadImage(str(full_ds / "labelsTr" / f"{case_id}.nii.gz"))
        assert restored.GetSize() == original.GetSize()
        np.testing.assert_allclose(restored.GetOrigin(), original.GetOrigin())
        np.testing.assert_allclose(restored.GetSpacing(), original.GetSpacing())
        np.testing.assert_array_equal(sitk.GetArrayFromImage(restored), sitk.GetArrayFromImage(original))
    assert not (out / ".partial").exists()
    verify_with_nnunet(cropped_ds, capfd, monkeypatch)

    # a prediction that does not fit its box, and a dataset without boxes, give one clear error
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    sitk.WriteImage(sitk.Image(5, 5, 5, sitk.sitkUInt8), str(wrong / "LIDC-IDRI-0001.nii.gz"))
    capfd.readouterr()
    assert main(["uncrop", "--pred", str(wrong), "--raw-dataset", str(cropped_ds), "-o", str(tmp_path / "o2")]) == 2
    assert "LIDC-IDRI-0001: prediction size [5, 5, 5] does not match the crop box" in capfd.readouterr().err
    assert main(["uncrop", "--pred", str(wrong), "--raw-dataset", str(full_ds), "-o", str(tmp_path / "o3")]) == 2
    assert "no crop_boxes.json" in capfd.readouterr().err


def test_crop_lung_rejects_2d_images():
    with pytest.raises(ConversionError, match="needs 3D images"):
        crop_to_lungs([sitk.Image(32, 32, sitk.sitkInt16)], case_id="slice_1")


def test_fine_in_plane_spacing_uses_coarse_blocks_with_the_same_box():
    case = make_case("covid", 6, shape=SHAPE)
    coarse = sitk.GetImageFromArray(case.image)
    coarse.SetSpacing(case.spacing[::-1])
    fine_array = np.repeat(np.repeat(case.image, 4, axis=1), 4, axis=2)  # 1.33 mm pixels -> 2x2 blocks
    fine = sitk.GetImageFromArray(fine_array)
    fine.SetSpacing((case.spacing[2] / 4, case.spacing[1] / 4, case.spacing[0]))
    _, _, coarse_box = crop_to_lungs([coarse], margin_mm=10.0)
    (cropped,), _, fine_box = crop_to_lungs([fine], margin_mm=10.0)
    expected_start = np.array(coarse_box["crop_index"]) * [4, 4, 1]
    expected_stop = expected_start + np.array(coarse_box["crop_size"]) * [4, 4, 1]
    fine_start = np.array(fine_box["crop_index"])
    fine_stop = fine_start + np.array(fine_box["crop_size"])
    assert (np.abs(fine_start - expected_start) <= [6, 6, 1]).all()  # within one original pixel / slice
    assert (np.abs(fine_stop - expected_stop) <= [6, 6, 1]).all()  # within one original pixel / slice
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(uncrop(cropped, fine_box))[
        fine_start[2]:fine_stop[2], fine_start[1]:fine_stop[1], fine_start[0]:fine_stop[0]],
        fine_array[fine_start[2]:fine_stop[2], fine_start[1]:fine_stop[1], fine_start[0]:fine_stop[0]])


def test_a_crop_that_would_cut_a_label_is_an_error_naming_the_case():
    case = make_case("nodule", 5, shape=SHAPE)
    label = case.label.copy()
    label[0, 0, 0] = 1  # a labelled voxel far outside the lungs
    image, label_image = case.to_sitk()
    label_image = sitk.GetImageFromArray(label)
    label_image.CopyInformation(image)
    total = int((label > 0).sum())
    with pytest.raises(ConversionError, match=rf"case c7: the lung crop box \(margin 10 mm\) would cut off 1 of "
                                              rf"{total} labelled voxels"):
        crop_to_lungs([image], label_image, margin_mm=10.0, case_id="c7")
    for margin in (-50, float("nan"), float("inf")):
        with pytest.raises(ConversionError, match="crop margin must be a finite number of mm >= 0"):
            crop_to_lungs([image], None, margin_mm=margin, case_id="c7")
