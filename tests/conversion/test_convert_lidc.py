"""lidc-idri converter: DICOM series reading, XML consensus on synthetic replicas, broken inputs, real case vs pylidc."""
from __future__ import annotations

import csv
import importlib.util
import json
import os
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from nnunet_covid.core.errors import ConversionError
from dataset_conversion.dicom_series import read_dicom_series
from dataset_conversion.lidc_idri import convert_lidc_idri
from helpers.raw_layouts import write_lidc_case, write_lidc_layout, write_lidc_xml
from nnunet_covid.cli import main
from nnunet_covid.pipeline.synthetic_ct import make_case
from helpers.nnunet_integrity import verify_with_nnunet
from helpers import SHARED_DATA

REAL = SHARED_DATA / "lidc-idri"
SHAPE, SPACING = (12, 64, 64), (2.5, 0.9, 0.9)


def _array(path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def test_read_dicom_series_matches_gdcm_and_returns_sop_uids(tmp_path):
    series, case = write_lidc_case(tmp_path, 1, seed=4, shape=SHAPE, spacing=SPACING)
    image, uids = read_dicom_series(series)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(series)))
    reference = reader.Execute()
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(reference))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), case.image)  # HU via slope/intercept
    np.testing.assert_allclose(image.GetSpacing(), SPACING[::-1])
    np.testing.assert_allclose(image.GetOrigin(), reference.GetOrigin())
    import pydicom

    by_uid = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID): float(
        pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2]) for f in series.glob("*.dcm")}
    assert [by_uid[u] for u in uids] == sorted(by_uid.values())  # slice k <-> its SOP UID, sorted by z


def test_synthetic_lidc_through_cli_reproduces_the_consensus(tmp_path, capfd, monkeypatch):
    raw = write_lidc_layout(tmp_path / "src", n_cases=2, seed=0, shape=SHAPE, spacing=SPACING)
    assert main(["convert", "lidc-idri", "--input", str(raw), "--dataset-id", "11", "--num-processes", "2"]) == 0
    folder = tmp_path / "raw" / "Dataset011_LIDCIDRI"
    rows = list(csv.DictReader((folder / "nodules.csv").open()))
    for number in (1, 2):
        case = make_case("nodule", number, shape=SHAPE, spacing=SPACING)
        case_id = f"LIDC-IDRI-{number:04d}"
        label = _array(folder / "labelsTr" / f"{case_id}.nii.gz")
        np.testing.assert_array_equal(label, case.label)  # 2 exact + 1 wider outline at 50 %: the nodule itself
        np.testing.assert_array_equal(_array(folder / "imagesTr" / f"{case_id}_0000.nii.gz"), case.image)
        mine = [r for r in rows if r["case"] == case_id]
        assert len(mine) == ndimage.label(case.label)[1]
        assert all(r["readers"] == "3" and r["annotations"] == "3" and float(r["median_malignancy"]) == 4 for r in mine)
        assert sum(float(r["volume_mm3"]) for r in mine) == pytest.approx(case.label.sum() * np.prod(SPACING), rel=1e-3)
    assert json.loads((folder / "dataset.json").read_text())["labels"] == {"background": 0, "nodule": 1}
    verify_with_nnunet(folder, capfd, monkeypatch)


def test_consensus_level_min_readers_and_small_nodules(tmp_path, capsys):
    raw = write_lidc_layout(tmp_path / "src", n_cases=1, seed=3, shape=SHAPE, spacing=SPACING)
    truth = make_case("nodule", 4, shape=SHAPE, spacing=SPACING).label
    strict = _array(convert_lidc_idri(raw, 12, consensus_level=1.0, progress=False) / "labelsTr/LIDC-IDRI-0001.nii.gz")
    np.testing.assert_array_equal(strict, truth)  # the exact outlines are inside the wider one
    loose = _array(convert_lidc_idri(raw, 13, consensus_level=0.3, progress=False) / "labelsTr/LIDC-IDRI-0001.nii.gz")
    assert (loose >= truth).all() and loose.sum() > truth.sum()  # one annotation of three suffices
    with_small = _array(convert_lidc_idri(raw, 14, keep_small_nodules=True, progress=False)
                        / "labelsTr/LIDC-IDRI-0001.nii.gz")
    assert with_small.sum() == truth.sum() + 1 and (with_small >= truth).all()  # + the < 3 mm point
    capsys.readouterr()
    folder = convert_lidc_idri(raw, 15, min_readers=4, progress=False)
    assert _array(folder / "labelsTr/LIDC-IDRI-0001.nii.gz").sum() == 0
    assert "LIDC-IDRI-0001: no nodule annotation kept" in capsys.readouterr().out
    assert (folder / "nodules.csv").read_text().strip() == "case,nodule,readers,annotations,volume_mm3,median_malignancy"


def test_exclusion_contours_and_z_position_fallback(tmp_path):
    series, case = write_lidc_case(tmp_path / "src", 1, seed=0, shape=SHAPE, spacing=SPACING)
    xml = next(series.glob("*.xml"))
    image, _ = read_dicom_series(series)
    z = [image.GetOrigin()[2] + k * SPACING[0] for k in range(SHAPE[0])]
    outer = np.zeros(SHAPE, bool)
    outer[4:7, 20:40, 20:44] = True
    hole = np.zeros(SHAPE, bool)
    hole[5, 27:32, 28:34] = True
    # the SOP UIDs are unknown here, so every ROI is placed by its z position
    import pydicom

    series_uid = str(pydicom.dcmread(next(series.glob("*.dcm")), stop_before_pixels=True).SeriesInstanceUID)
    write_lidc_xml(xml, series_uid, ["1.2.3.unknown"] * SHAPE[0], z,
                   [[{"id": "Nodule 001", "mask": outer, "exclusions": hole}]] * 2)
    label = _array(convert_lidc_idri(tmp_path / "src", 16, progress=False) / "labelsTr/LIDC-IDRI-0001.nii.gz")
    ring = ndimage.binary_dilation(hole, structure=ndimage.generate_binary_structure(2, 1)[None])
    np.testing.assert_array_equal(label.astype(bool), outer & ~ring)  # the exclusion outline is removed as well


def _break(raw: Path, number: int) -> Path:
    return next((raw / f"LIDC-IDRI-{number:04d}").glob("*/*"))


def test_broken_cases_fail_alone_with_clear_messages_and_rerun_skips_done(tmp_path, capfd, monkeypatch):
    raw = write_lidc_layout(tmp_path / "src", n_cases=6, seed=10, shape=SHAPE, spacing=SPACING)
    slices = lambda n: sorted(_break(raw, n).glob("*.dcm"))  # noqa: E731
    slices(2)[5].unlink()                                           # missing slice
    slices(3)[4].write_bytes(slices(3)[4].read_bytes()[:600])       # truncated (corrupt) slice
    import pydicom

    duplicate = pydicom.dcmread(slices(4)[3])                       # a second instance at the same z
    duplicate.SOPInstanceUID = duplicate.file_meta.MediaStorageSOPInstanceUID = "1.2.826.0.1.3680043.2.1125.99"
    duplicate.save_as(_break(raw, 4) / "1-999.dcm")
    xml5 = next(_break(raw, 5).glob("*.xml"))                       # reader XML without any nodule
    header = xml5.read_text().split("<readingSession>")[0]
    xml5.write_text(header + "<readingSession><annotationVersion>3.12</annotationVersion></readingSession>"
                    "</LidcReadMessage>")
    xml6 = next(_break(raw, 6).glob("*.xml"))
    xml6.write_text(xml6.read_text()[:-200])                         # malformed XML

    rc = main(["convert", "lidc-idri", "-i", str(raw), "-d", "17", "-np", "2"])
    captured = capfd.readouterr()
    assert rc == 2
    err = captured.err
    assert "LIDC-IDRI-0002" in err and "1 missing slice(s)" in err
    assert "LIDC-IDRI-0003" in err and "corrupt or unreadable DICOM slice" in err
    assert "LIDC-IDRI-0004" in err and "duplicate slice position" in err
    assert "LIDC-IDRI-0006" in err and "malformed XML" in err
    assert "warning: case LIDC-IDRI-0005: no nodule annotation kept" in captured.out
    folder = tmp_path / "raw" / "Dataset017_LIDCIDRI"
    assert sorted(p.name for p in (folder / "labelsTr").iterdir()) == ["LIDC-IDRI-0001.nii.gz", "LIDC-IDRI-0005.nii.gz"]
    assert _array(folder / "labelsTr" / "LIDC-IDRI-0005.nii.gz").sum() == 0
    assert not list(folder.rglob("*.tmp")) and not (folder / ".partial").exists()
    verify_with_nnunet(folder, capfd, monkeypatch)

    shutil.rmtree(_break(raw, 2).parent.parent)  # drop the missing-slice patient, repair the others
    for n in (3, 4, 6):
        shutil.rmtree(_break(raw, n).parent.parent)
        write_lidc_case(raw, n, seed=10, shape=SHAPE, spacing=SPACING)
    assert main(["convert", "lidc-idri", "-i", str(raw), "-d", "17"]) == 0
    assert "converted 3, skipped (already done) 2, failed 0" in capfd.readouterr().out
    assert json.loads((folder / "dataset.json").read_text())["numTraining"] == 5
    rows = list(csv.DictReader((folder / "nodules.csv").open()))
    assert {r["case"] for r in rows} == {"LIDC-IDRI-0001", "LIDC-IDRI-0003", "LIDC-IDRI-0004", "LIDC-IDRI-0006"}


def test_roi_outside_the_series_and_missing_xml_are_named(tmp_path):
    series, _ = write_lidc_case(tmp_path / "src", 1, seed=0, shape=SHAPE, spacing=SPACING)
    xml = next(series.glob("*.xml"))
    text = xml.read_text()
    first_uid = text.split("<imageSOP_UID>")[1].split("</imageSOP_UID>")[0]
    first_z = text.split("<imageZposition>")[1].split("</imageZposition>")[0]
    xml.write_text(text.replace(first_uid, "9.9.9", 1).replace(f"<imageZposition>{first_z}", "<imageZposition>999.0", 1))
    with pytest.raises(ConversionError, match=r"LIDC-IDRI-0001: ROI at z = 999.0 mm .*matches no slice"):
        convert_lidc_idri(tmp_path / "src", 18, progress=False)
    xml.unlink()
    with pytest.raises(ConversionError, match=r"LIDC-IDRI-0001: no reader XML"):
        convert_lidc_idri(tmp_path / "src", 19, progress=False)


def _import_pylidc():
    """pylidc 0.2.3 under NumPy 2 / setuptools without pkg_resources: the two names it needs."""
    np.int = int  # removed in NumPy 1.24, used by pylidc's masks
    if "pkg_resources" not in sys.modules and importlib.util.find_spec("pkg_resources") is None:
        folder = list(importlib.util.find_spec("pylidc").submodule_search_locations)[0]
        sys.modules["pkg_resources"] = types.SimpleNamespace(
            resource_filename=lambda package, name: os.path.join(folder, name))
    os.environ.setdefault("MPLBACKEND", "Agg")
    import pylidc
    from pylidc.utils import consensus

    return pylidc, consensus


def test_real_lidc_case_agrees_with_pylidc_consensus(tmp_path):
    if not (REAL / "LIDC-IDRI-0001").is_dir():
        pytest.skip(f"real LIDC-IDRI case not found at {REAL}")
    if importlib.util.find_spec("pylidc") is None:
        pytest.skip("pylidc (test oracle) is not installed")
    folder = convert_lidc_idri(REAL, 20, progress=False)
    label = _array(folder / "labelsTr" / "LIDC-IDRI-0001.nii.gz").astype(bool)
    image = sitk.ReadImage(str(folder / "imagesTr" / "LIDC-IDRI-0001_0000.nii.gz"))
    assert image.GetSize() == (512, 512, 133) and image.GetSpacing() == pytest.approx((0.703125, 0.703125, 2.5))
    hu = sitk.GetArrayViewFromImage(image)
    assert hu.min() >= -2048 and -300 < np.median(hu[label]) < 200  # HU: the nodule is soft tissue

    pl, consensus = _import_pylidc()
    scan = pl.query(pl.Scan).filter(pl.Scan.patient_id == "LIDC-IDRI-0001").first()
    reference = np.zeros((512, 512, len(scan.slice_zvals)), dtype=bool)  # pylidc: (row, column, slice)
    for nodule_annotations in scan.cluster_annotations(verbose=False):
        mask, bbox, _ = consensus(nodule_annotations, clevel=0.5)
        reference[bbox] |= mask
    reference = reference.transpose(2, 0, 1)
    dice = 2 * (label & reference).sum() / (label.sum() + reference.sum())
    assert reference.sum() > 1000 and dice >= 0.98, dice
    rows = list(csv.DictReader((folder / "nodules.csv").open()))
    assert [(r["readers"], r["median_malignancy"]) for r in rows] == [("4", "5.0")]

    # lung-cropped, the same label: every labelled voxel kept, and uncropping restores the full-size label
    from dataset_conversion.lung_crop import uncrop

    cropped = convert_lidc_idri(REAL, 23, crop_lung=True, progress=False)
    box = json.loads((cropped / "crop_boxes.json").read_text())["LIDC-IDRI-0001"]
    cropped_label = sitk.ReadImage(str(cropped / "labelsTr" / "LIDC-IDRI-0001.nii.gz"))
    assert box["lung_found"] and list(cropped_label.GetSize()) == box["crop_size"] != box["original_size"]
    assert sitk.GetArrayViewFromImage(cropped_label).sum() == label.sum()
    np.testing.assert_array_equal(sitk.GetArrayFromImage(uncrop(cropped_label, box)).astype(bool), label)


def test_xml_dir_for_xml_files_stored_apart_from_the_dicom(tmp_path):
    raw = write_lidc_layout(tmp_path / "src", n_cases=2, seed=0, shape=SHAPE, spacing=SPACING)
    xml_dir = tmp_path / "tcia-lidc-xml" / "185"
    xml_dir.mkdir(parents=True)
    for xml in raw.rglob("*.xml"):
        xml.rename(xml_dir / xml.name)
    folder = convert_lidc_idri(raw, 21, xml_dir=tmp_path / "tcia-lidc-xml", progress=False)
    for number in (1, 2):
        np.testing.assert_array_equal(_array(folder / "labelsTr" / f"LIDC-IDRI-{number:04d}.nii.gz"),
                                      make_case("nodule", number, shape=SHAPE, spacing=SPACING).label)


def test_linked_patient_folders_are_followed_and_link_cycles_ignored(tmp_path):
    """Patient folders linked in from another disk (the usual setup) convert like real ones, beside a real one."""
    storage = write_lidc_layout(tmp_path / "disk2", n_cases=3, seed=0, shape=SHAPE, spacing=SPACING)
    raw = tmp_path / "LIDC-IDRI"
    raw.mkdir()
    shutil.move(str(storage / "LIDC-IDRI-0001"), raw / "LIDC-IDRI-0001")  # one real folder
    for number in (2, 3):
        (raw / f"LIDC-IDRI-{number:04d}").symlink_to(storage / f"LIDC-IDRI-{number:04d}", target_is_directory=True)
    (raw / "LIDC-IDRI-0002" / "loop").symlink_to(raw, target_is_directory=True)  # a cycle through the input
    (raw / "LIDC-IDRI-0003-again").symlink_to(storage / "LIDC-IDRI-0003", target_is_directory=True)  # same folder twice
    folder = convert_lidc_idri(raw, 22, progress=False)
    assert sorted(p.name for p in (folder / "labelsTr").iterdir()) == [f"LIDC-IDRI-{n:04d}.nii.gz" for n in (1, 2, 3)]
    for number in (1, 2, 3):
        np.testing.assert_array_equal(_array(folder / "labelsTr" / f"LIDC-IDRI-{number:04d}.nii.gz"),
                                      make_case("nodule", number, shape=SHAPE, spacing=SPACING).label)
