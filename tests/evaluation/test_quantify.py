"""Infection burden (nnunet-covid quantify): exact volumes, the automatic lung mask, patient left/right,
every reader, cropped predictions, pictures, one-line errors, and the real LIDC-IDRI case."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from nnunet_covid.cli import main
from nnunet_covid.evaluation.burden import ct_category
from nnunet_covid.evaluation.lungs import auto_lung_mask, lps_axes, split_left_right
from nnunet_covid.evaluation.quantify import quantify_folders
from nnunet_covid.pipeline.demo_data import write_nifti
from nnunet_covid.pipeline.synthetic_ct import make_case
from helpers import SHARED_DATA

REAL = SHARED_DATA / "lidc-idri"
SHAPE = (24, 64, 64)
LUNG_AND_INFECTION = {"background": 0, "left_lung": 1, "right_lung": 2, "infection": 3}


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * (a & b).sum() / (a.sum() + b.sum())


def _dataset_json(folder: Path, labels: dict, ending: str = ".nii.gz", **extra) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "dataset.json").write_text(json.dumps({"labels": labels, "file_ending": ending,
                                                     "channel_names": {"0": "CT"}, **extra}))


def _write(array, path: Path, spacing, origin=(0.0, 0.0, 0.0), direction=None) -> None:
    if path.name.endswith(".nii.gz"):
        write_nifti(array, path, spacing, origin, direction)
        return
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(tuple(float(s) for s in spacing[::-1]))
    image.SetOrigin(origin)
    if direction is not None:
        image.SetDirection(direction)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))


def _infection_case(seed: int, shape=SHAPE, multiclass=False):
    case = make_case("covid", seed, shape=shape, multiclass=multiclass)
    assert case.label.any()
    return case


def test_ct_category_follows_mosmeddata():
    assert ct_category(0.0, 0) == ct_category(None, 0) == "CT-0"
    assert [ct_category(p, 10) for p in (0.01, 24.99, 25.0, 49.99, 50.0, 74.99, 75.0, 100.0)] == \
        ["CT-1", "CT-1", "CT-2", "CT-2", "CT-3", "CT-3", "CT-4", "CT-4"]


def test_volumes_are_voxel_counts_times_voxel_volume(tmp_path):
    """Lungs from the labels of a lung-and-infection prediction (COVID-19-CT-Seg: left 1, right 2, infection 3)."""
    case = _infection_case(3)
    spacing = (4.5, 1.75, 2.25)  # anisotropic, not the case's own, exact in the files' float32
    lesion = case.label > 0
    pred = np.select([lesion, case.lungs == 2, case.lungs == 1], [3, 1, 2], 0).astype(np.uint8)
    _dataset_json(tmp_path / "pred", LUNG_AND_INFECTION)
    _write(pred, tmp_path / "pred" / "c1.nii.gz", spacing)
    _write(case.image, tmp_path / "images" / "c1_0000.nii.gz", spacing)
    row = quantify_folders(tmp_path / "pred", tmp_path / "images", tmp_path / "out", pictures=False)["cases"][0]

    voxel_ml = np.prod(spacing) / 1000
    right, left = case.lungs == 1, case.lungs == 2  # synthetic: 1 = patient's right lung
    assert row["lung_source"] == "labels"
    assert row["lesion_ml"] == pytest.approx(lesion.sum() * voxel_ml, rel=1e-12)
    assert row["lesion_ml_infection"] == row["lesion_ml"]
    assert row["lung_ml"] == pytest.approx((case.lungs > 0).sum() * voxel_ml, rel=1e-12)
    assert row["right_lung_ml"] == pytest.approx(right.sum() * voxel_ml, rel=1e-12)
    assert row["left_lung_ml"] == pytest.approx(left.sum() * voxel_ml, rel=1e-12)
    assert row["involvement_pct"] == pytest.approx(100 * lesion.sum() / (case.lungs > 0).sum())
    assert row["right_involvement_pct"] == pytest.approx(100 * (lesion & right).sum() / right.sum())
    assert row["left_involvement_pct"] == pytest.approx(100 * (lesion & left).sum() / left.sum())
    components = ndimage.label(lesion, structure=np.ones((3, 3, 3)))[0]
    sizes = np.bincount(components.ravel())[1:]
    assert row["n_lesions"] == sizes.size and row["largest_lesion_ml"] == pytest.approx(sizes.max() * voxel_ml)
    assert row["lesion_outside_lung_mask_ml"] == pytest.approx(lesion.sum() * voxel_ml)  # label 3 replaces lung
    assert row["ct_category"] == ct_category(row["involvement_pct"], 1)


def test_multiclass_lesions_with_lungs_from_a_folder_of_binary_masks(tmp_path):
    case = _infection_case(5, multiclass=True)
    assert {1, 2} <= set(np.unique(case.label))
    _dataset_json(tmp_path / "pred", {"background": 0, "ground_glass": 1, "consolidation": 2})
    _write(case.label, tmp_path / "pred" / "c1.nii.gz", case.spacing)
    _write(case.image, tmp_path / "images" / "c1_0000.nii.gz", case.spacing)
    aerated = (case.lungs > 0) & (case.label == 0)
    _write(aerated.astype(np.uint8), tmp_path / "lungs" / "c1.nii.gz", case.spacing)
    row = quantify_folders(tmp_path / "pred", tmp_path / "images", tmp_path / "out", lungs=tmp_path / "lungs",
                           pictures=False)["cases"][0]
    voxel_ml = np.prod(case.spacing) / 1000
    assert row["lesion_ml_ground_glass"] == pytest.approx((case.label == 1).sum() * voxel_ml, rel=1e-12)
    assert row["lesion_ml_consolidation"] == pytest.approx((case.label == 2).sum() * voxel_ml, rel=1e-12)
    assert row["lung_ml"] == pytest.approx((case.lungs > 0).sum() * voxel_ml, rel=1e-12)
    # the binary mask is split into two lungs by erosion, named by the patient's x axis
    assert row["right_lung_ml"] == pytest.approx((case.lungs == 1).sum() * voxel_ml, rel=0.02)
    assert row["left_lung_ml"] == pytest.approx((case.lungs == 2).sum() * voxel_ml, rel=0.02)


@pytest.mark.parametrize("seed", [1, 2])
def test_automatic_lung_mask_reaches_dice_095_against_the_synthetic_lungs(seed):
    case = make_case("covid", seed, shape=(48, 128, 128))
    spacing = np.asarray(case.spacing)
    lungs = auto_lung_mask(case.image, spacing) | (case.label > 0)  # lesions count as lung
    truth = case.lungs > 0
    assert _dice(lungs, truth) >= 0.99  # measured 0.9975 and 0.9972 (Liao's mask alone: 0.958)
    right, left = split_left_right(lungs, spacing, lps_axes(None))
    assert _dice(right, case.lungs == 1) >= 0.98 and _dice(left, case.lungs == 2) >= 0.98


FLIP_X = (-1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


@pytest.mark.parametrize("ending,reader", [(".nii.gz", None), (".nrrd", None), (".mha", None),
                                           (".nii.gz", "NibabelIO"), (".nii.gz", "NibabelIOWithReorient")])
def test_left_and_right_follow_the_patient_in_every_format(tmp_path, ending, reader):
    """A lesion in the patient's left lung only, stored with the x axis as recorded and mirrored (direction -x)."""
    case = make_case("nodule", 7, shape=SHAPE)
    lesion = ndimage.binary_erosion(case.lungs == 2, iterations=3) & (np.arange(SHAPE[0]) < 12)[:, None, None]
    label = lesion.astype(np.uint8)
    extra = {"overwrite_image_reader_writer": reader} if reader else {}
    rows = {}
    for name, flip, direction, origin in (("as_stored", False, None, (0.0, 0.0, 0.0)),
                                          ("mirrored", True, FLIP_X, ((SHAPE[2] - 1) * case.spacing[2], 0.0, 0.0))):
        root = tmp_path / name
        _dataset_json(root, {"background": 0, "lesion": 1}, ending, **extra)
        image, seg = (case.image[..., ::-1], label[..., ::-1]) if flip else (case.image, label)
        _write(np.ascontiguousarray(seg), root / "pred" / f"c1{ending}", case.spacing, origin, direction)
        _write(np.ascontiguousarray(image), root / "images" / f"c1_0000{ending}", case.spacing, origin, direction)
        rows[name] = quantify_folders(root / "pred", root / "images", root / "out",
                                      pictures=reader is None and ending == ".nii.gz")["cases"][0]
    if reader is None and ending == ".nii.gz":  # the picture is drawn in the patient's orientation too
        from PIL import Image

        figures = [np.asarray(Image.open(tmp_path / name / "out" / "figures" / "c1.png")) for name in rows]
        np.testing.assert_array_equal(figures[0], figures[1])
    for row in rows.values():
        assert row["right_involvement_pct"] == 0 and row["left_involvement_pct"] > 5
        assert row["left_lung_ml"] == pytest.approx(rows["as_stored"]["left_lung_ml"], rel=1e-9)
        assert row["right_lung_ml"] == pytest.approx(rows["as_stored"]["right_lung_ml"], rel=1e-9)
    voxel_ml = np.prod(case.spacing) / 1000
    assert rows["as_stored"]["lesion_ml"] == pytest.approx(lesion.sum() * voxel_ml, rel=1e-9)


def _uncroppable_dataset(tmp_path: Path, n: int = 2) -> tuple[Path, Path, Path]:
    """Original images and labels, and a lung-cropped raw dataset (crop_boxes.json) of the same cases."""
    from dataset_conversion.lung_crop import crop_to_lungs

    raw = tmp_path / "raw" / "Dataset001_Crop"
    boxes = {}
    for i in range(n):
        case = _infection_case(20 + i)
        image, label = case.to_sitk(origin=(-170.0, -170.0, -150.0))
        (tmp_path / "orig_images").mkdir(exist_ok=True)
        sitk.WriteImage(image, str(tmp_path / "orig_images" / f"c{i}_0000.nii.gz"))
        (cropped,), cropped_label, boxes[f"c{i}"] = crop_to_lungs([image], label, case_id=f"c{i}")
        for folder, img in (("imagesTr", cropped), ("labelsTr", cropped_label)):
            (raw / folder).mkdir(parents=True, exist_ok=True)
            sitk.WriteImage(img, str(raw / folder / (f"c{i}_0000.nii.gz" if folder == "imagesTr" else f"c{i}.nii.gz")))
    (raw / "crop_boxes.json").write_text(json.dumps(boxes))
    _dataset_json(raw, {"background": 0, "infection": 1})
    return raw, tmp_path / "orig_images", raw / "labelsTr"


def test_cropped_predictions_after_uncrop_give_the_same_burden(tmp_path, capsys):
    raw, original_images, cropped_predictions = _uncroppable_dataset(tmp_path)
    assert main(["uncrop", "--pred", str(cropped_predictions), "--raw-dataset", str(raw), "-o",
                 str(tmp_path / "uncropped")]) == 0
    cropped = quantify_folders(cropped_predictions, raw / "imagesTr", tmp_path / "q1", lungs="auto", pictures=False)
    uncropped = quantify_folders(tmp_path / "uncropped", original_images, tmp_path / "q2", lungs="auto",
                                 pictures=False)
    for a, b in zip(cropped["cases"], uncropped["cases"]):
        assert a["case"] == b["case"] and a["lesion_ml"] == b["lesion_ml"] and a["n_lesions"] == b["n_lesions"]
        assert a["lung_ml"] == pytest.approx(b["lung_ml"], rel=0.01)
        assert a["involvement_pct"] == pytest.approx(b["involvement_pct"], abs=0.5)


def test_cli_with_ground_truth_writes_tables_pictures_and_index(tmp_path, capsys):
    from PIL import Image

    labels = tmp_path / "labelsTr"
    for i in range(3):
        case = _infection_case(30 + i)
        _write(case.image, tmp_path / "imagesTr" / f"c{i}_0000.nii.gz", case.spacing)
        _write(case.label, labels / f"c{i}.nii.gz", case.spacing)
        under = ndimage.binary_erosion(case.label > 0, iterations=i) if i else case.label > 0  # c0: perfect
        under = under.astype(np.uint8)
        _write(under, tmp_path / "pred" / f"c{i}.nii.gz", case.spacing)
    _dataset_json(tmp_path, {"background": 0, "infection": 1})
    out = tmp_path / "burden"
    assert main(["quantify", "--pred", str(tmp_path / "pred"), "--images", str(tmp_path / "imagesTr"),
                 "--gt", str(labels), "--lungs", "auto", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "3 case(s), lungs: auto" in printed and "mean absolute difference" in printed
    rows = list(csv.DictReader((out / "burden.csv").open()))
    assert [r["case"] for r in rows] == ["c0", "c1", "c2"]
    assert float(rows[0]["involvement_difference_pp"]) == 0 and rows[0]["ct_category"] == rows[0]["gt_ct_category"]
    assert float(rows[2]["involvement_difference_pp"]) < float(rows[1]["involvement_difference_pp"]) < 0
    results = json.loads((out / "burden.json").read_text())
    agreement = results["summary"]["agreement"]
    differences = [abs(float(r["involvement_difference_pp"])) for r in rows]
    assert agreement["mean_abs_difference_pp"] == pytest.approx(np.mean(differences))
    assert sum(results["summary"]["ct_categories"].values()) == 3
    index = (out / "index.html").read_text()
    for r in rows:
        figure = out / "figures" / r["figure"]
        assert f'src="figures/{r["figure"]}"' in index
        with Image.open(figure) as png:
            assert png.format == "PNG" and png.size[0] > 800
            pixels = np.asarray(png.convert("RGB")).reshape(-1, 3)
        # ground-truth (green) and predicted (red) contours and the lung contour (cyan) are drawn
        for colour in ((0x32, 0xd7, 0x4b), (0xff, 0x37, 0x5f), (0x5a, 0xc8, 0xfa)):
            assert (np.abs(pixels.astype(int) - colour).sum(axis=1) < 40).sum() > 20, colour
    assert not list(out.rglob(".*.tmp"))


def _one_case(tmp_path: Path, spacing=None):
    case = make_case("covid", 9, shape=SHAPE)
    _write(case.image, tmp_path / "images" / "c1_0000.nii.gz", case.spacing)
    _write(case.label, tmp_path / "pred" / "c1.nii.gz", spacing or case.spacing)
    return case


@pytest.mark.parametrize("problem,expected", [
    ("missing image", "case c1: no image c1_0000.nii.gz in"),
    ("geometry", "case c1: prediction geometry differs from its image"),
    ("lung folder", "case c1: no lung mask c1.nii.gz in"),
    ("ground truth", "case c1: no ground truth c1.nii.gz in"),
    ("no lungs", "the automatic lung mask found no lungs in"),
    ("2d", "is 2D; burden needs 3D CT volumes"),
    ("0/255 mask", "holds values [255] that are not labels of this dataset"),
    ("probabilities", "holds non-integer values"),
    ("output is a file", "exists and is not a folder"),
])
def test_bad_input_is_one_line_naming_the_file(tmp_path, capsys, problem, expected):
    case = _one_case(tmp_path, spacing=(1.0, 1.0, 1.0) if problem == "geometry" else None)
    args = ["quantify", "--pred", str(tmp_path / "pred"), "--images", str(tmp_path / "images"),
            "-o", str(tmp_path / "out")]
    if problem == "missing image":
        (tmp_path / "images" / "c1_0000.nii.gz").rename(tmp_path / "images" / "c2_0000.nii.gz")
    elif problem == "lung folder":
        _write(case.lungs, tmp_path / "lungs" / "other.nii.gz", case.spacing)
        args += ["--lungs", str(tmp_path / "lungs")]
    elif problem == "ground truth":
        _write(case.label, tmp_path / "gt" / "c9.nii.gz", case.spacing)
        args += ["--gt", str(tmp_path / "gt")]
    elif problem == "no lungs":
        _write(np.full(SHAPE, 40, dtype=np.int16), tmp_path / "images" / "c1_0000.nii.gz", case.spacing)
    elif problem == "2d":
        for folder, name, array in (("pred", "c1.png", case.label[12]), ("images", "c1_0000.png", case.label[12])):
            (tmp_path / folder / name.replace(".png", ".nii.gz")).unlink()
            from PIL import Image
            Image.fromarray(array.astype(np.uint8)).save(tmp_path / folder / name)
    elif problem in ("0/255 mask", "probabilities"):
        _dataset_json(tmp_path, {"background": 0, "infection": 1})
        values = (case.label > 0) * (255 if problem == "0/255 mask" else 0.7)
        _write(values.astype(np.uint8 if problem == "0/255 mask" else np.float32), tmp_path / "pred" / "c1.nii.gz",
               case.spacing)
    elif problem == "output is a file":
        (tmp_path / "out").write_text("mine")
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress bar
    assert expected in err and err.startswith("nnunet-covid quantify: error: ") and "Traceback" not in err, err
    if problem in ("missing image", "geometry", "2d", "0/255 mask", "probabilities"):
        assert "c1" in err and str(tmp_path) in err
    assert not (tmp_path / "out" / "burden.json").exists() or problem == "output is a file"


def test_real_lidc_case_has_a_plausible_lung_volume(tmp_path, monkeypatch):
    if not (REAL / "LIDC-IDRI-0001").is_dir():
        pytest.skip(f"real LIDC-IDRI case not found at {REAL}")
    from dataset_conversion.lidc_idri import convert_lidc_idri

    monkeypatch.setenv("nnUNet_raw", str(tmp_path / "raw"))
    folder = convert_lidc_idri(REAL, 21, progress=False)
    results = quantify_folders(folder / "labelsTr", folder / "imagesTr", tmp_path / "out")
    row = results["cases"][0]
    nodule_mm3 = sum(float(r["volume_mm3"]) for r in csv.DictReader((folder / "nodules.csv").open()))
    assert row["lung_source"] == "auto"
    assert 3000 < row["lung_ml"] < 8000  # measured 3611 mL
    assert row["right_lung_ml"] > row["left_lung_ml"]  # the right lung is the larger (three lobes)
    assert row["lesion_ml"] == pytest.approx(nodule_mm3 / 1000, abs=1e-3) and row["n_lesions"] == 1
    assert row["ct_category"] == "CT-1" and (tmp_path / "out" / "figures" / "LIDC-IDRI-0001.png").is_file()
