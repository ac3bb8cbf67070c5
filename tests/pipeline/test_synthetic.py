"""The synthetic chest-CT generator: determinism and label/lesion correspondence."""
import numpy as np
import pytest

from nnunet_covid.pipeline.synthetic_ct import (LESION_TYPES, LUNG_HU, make_case, make_covid_slice, window_to_uint8)


@pytest.mark.parametrize("lesion", LESION_TYPES)
def test_same_seed_same_case_other_seed_other_case(lesion):
    a, b, c = make_case(lesion, 3), make_case(lesion, 3), make_case(lesion, 4)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.label, b.label)
    assert not np.array_equal(a.image, c.image)
    assert a.image.dtype == np.int16 and a.label.dtype == np.uint8


@pytest.mark.parametrize("lesion", LESION_TYPES)
def test_lesions_lie_in_the_lungs_and_have_lesion_intensities(lesion):
    case = make_case(lesion, 1, shape=(24, 64, 64))
    lesion_voxels = case.label > 0
    assert lesion_voxels.sum() > 10
    assert np.all(case.lungs[lesion_voxels] > 0), "every lesion voxel must lie inside a lung"
    healthy_lung = (case.lungs > 0) & ~lesion_voxels
    assert abs(np.median(case.image[healthy_lung]) - LUNG_HU) < 60
    # lesions are denser than aerated lung by a clear margin
    assert np.median(case.image[lesion_voxels]) > np.median(case.image[healthy_lung]) + 250


def test_effusion_is_dependent_fluid():
    case = make_case("effusion", 2, shape=(24, 64, 64))
    fluid_rows = np.nonzero(case.label)[1]
    lung_rows = np.nonzero(case.lungs)[1]
    # posterior (large y) part of the lungs, near water density
    assert fluid_rows.mean() > lung_rows.mean()
    assert abs(np.median(case.image[case.label > 0]) - 10) < 40


def test_covid_multiclass_has_ground_glass_and_consolidation():
    case = make_case("covid", 1, shape=(24, 64, 64), multiclass=True)
    assert set(np.unique(case.label)) == {0, 1, 2}
    assert np.median(case.image[case.label == 1]) < np.median(case.image[case.label == 2])


def test_to_sitk_keeps_spacing_in_xyz_order():
    case = make_case("nodule", 0, shape=(16, 40, 48), spacing=(2.5, 0.7, 0.8))
    image, label = case.to_sitk()
    assert image.GetSize() == (48, 40, 16)
    assert image.GetSpacing() == pytest.approx((0.8, 0.7, 2.5))
    assert label.GetSize() == image.GetSize()


def test_covid_slice_and_windowing():
    image, mask = make_covid_slice(5, size=96)
    assert image.shape == mask.shape == (96, 96) and image.dtype == np.uint8
    assert set(np.unique(mask)) == {0, 255}
    np.testing.assert_array_equal(window_to_uint8(np.array([-2000, -1250, -500, 250, 900])), [0, 0, 128, 255, 255])


def test_bad_arguments_are_rejected_clearly():
    with pytest.raises(ValueError, match="unknown lesion type"):
        make_case("pneumothorax", 0)
    with pytest.raises(ValueError, match="three sizes"):
        make_case("covid", 0, shape=(4, 64, 64))
