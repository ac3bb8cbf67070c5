"""Deterministic synthetic chest-CT-like volumes with lung lesions, for tests, fixtures and the demo.

Every volume is in Hounsfield units, axis order (z, y, x) with y running anterior -> posterior
(supine patient, as in a DICOM-derived array), and built from the same anatomy: air outside,
a soft-tissue body with a fat rim, two lungs near -850 HU with vessels, a spine, and Gaussian
noise. A lesion type is painted into the lungs and recorded in the label map:

- ``nodule``   solid spherical nodules, 4-12 mm (LIDC-IDRI-like)
- ``tumour``   one larger lobulated solid mass near the hilum (MSD Task06 / StructSeg GTV-like)
- ``effusion`` dependent pleural fluid: a posterior layer of each affected lung (NSCLC PleThora-like)
- ``covid``    large peripheral ground-glass patches (label 1) and consolidation (label 2 when
               ``multiclass``; otherwise all lesion voxels are 1)

The same seed always gives the same case.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from scipy import ndimage

LESION_TYPES = ("nodule", "tumour", "effusion", "covid")

AIR_HU = -1000.0
LUNG_HU = -850.0
SOFT_TISSUE_HU = 40.0
FAT_HU = -100.0
BONE_HU = 700.0
FLUID_HU = 10.0
GROUND_GLASS_HU = -500.0
CONSOLIDATION_HU = -50.0


@dataclass
class SyntheticCase:
    """One synthetic CT volume. Arrays are (z, y, x); ``spacing`` is (z, y, x) in mm."""

    image: np.ndarray  # int16, HU
    label: np.ndarray  # uint8 lesion labels
    lungs: np.ndarray  # uint8: 0 outside, 1 right lung (image left), 2 left lung
    spacing: tuple[float, float, float]
    lesion: str
    seed: int

    def to_sitk(self, origin: Sequence[float] = (0.0, 0.0, 0.0)):
        """The image and label as SimpleITK images (spacing/origin in SimpleITK's x, y, z order)."""
        import SimpleITK as sitk

        images = []
        for arr in (self.image, self.label):
            img = sitk.GetImageFromArray(arr)
            img.SetSpacing(tuple(float(s) for s in self.spacing[::-1]))
            img.SetOrigin(tuple(float(o) for o in origin))
            images.append(img)
        return images[0], images[1]


def default_spacing(shape: Sequence[int]) -> tuple[float, float, float]:
    """Spacing that makes ``shape`` cover a 300 mm (z) x 340 mm x 340 mm chest, like a real scan."""
    return (300.0 / shape[0], 340.0 / shape[1], 340.0 / shape[2])


def _grid(shape):
    """Normalised coordinates in [-1, 1] per axis, (z, y, x)."""
    return np.meshgrid(*[np.linspace(-1.0, 1.0, n) for n in shape], indexing="ij")


def _anatomy(shape, rng):
    z, y, x = _grid(shape)
    body = (x / 0.92) ** 2 + (y / 0.72) ** 2 <= 1.0
    inner = (x / 0.84) ** 2 + (y / 0.64) ** 2 <= 1.0
    image = np.full(shape, AIR_HU, dtype=np.float32)
    image[body] = FAT_HU
    image[inner] = SOFT_TISSUE_HU
    # lungs: two ellipsoids, tapering towards the apex (z = -1) and the diaphragm (z = +1)
    taper = np.clip(1.0 - 0.35 * z ** 2, 0.2, 1.0)
    lungs = np.zeros(shape, dtype=np.uint8)
    for index, cx in ((1, -0.40), (2, 0.40)):
        lung = ((x - cx) / (0.30 * taper)) ** 2 + ((y + 0.02) / (0.48 * taper)) ** 2 + (z / 0.92) ** 2 <= 1.0
        lungs[lung & inner] = index
    image[lungs > 0] = LUNG_HU
    # spine: a vertical bony cylinder behind the mediastinum
    spine = (x / 0.12) ** 2 + ((y - 0.52) / 0.10) ** 2 <= 1.0
    image[spine & inner] = BONE_HU
    # vessels: smooth random tubes inside the lungs
    vessel_field = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma=1.5)
    vessels = (np.abs(vessel_field) < 0.004) & (lungs > 0)
    image[vessels] = SOFT_TISSUE_HU
    return image, lungs


def _spacing_scaled_radius(radius_mm, spacing):
    return np.asarray(radius_mm, dtype=float) / np.asarray(spacing, dtype=float)


def _random_lung_voxel(lungs, rng, margin_mask=None):
    candidates = np.argwhere(lungs > 0 if margin_mask is None else margin_mask)
    if candidates.size == 0:
        raise ValueError("the volume is too small to contain lungs")
    return candidates[rng.integers(len(candidates))]


def _ellipsoid(shape, centre, radii_vox):
    idx = np.ogrid[tuple(slice(0, n) for n in shape)]
    return sum(((i - c) / r) ** 2 for i, c, r in zip(idx, centre, radii_vox)) <= 1.0


def _paint_nodules(image, label, lungs, spacing, rng):
    inner_lung = ndimage.binary_erosion(lungs > 0, iterations=2)
    for _ in range(int(rng.integers(1, 4))):
        centre = _random_lung_voxel(lungs, rng, inner_lung)
        radius_mm = rng.uniform(2.0, 6.0) if np.min(spacing) < 2.0 else rng.uniform(6.0, 12.0)
        blob = _ellipsoid(image.shape, centre, np.maximum(_spacing_scaled_radius([radius_mm] * 3, spacing), 1.0))
        blob &= lungs > 0
        image[blob] = SOFT_TISSUE_HU + rng.uniform(-20, 20)
        label[blob] = 1


def _paint_tumour(image, label, lungs, spacing, rng):
    side = int(rng.integers(1, 3))
    lung = lungs == side
    zc, yc, xc = np.argwhere(lung).mean(axis=0)
    # near the hilum: shifted from the lung's centre towards the mediastinum
    xc = xc + (image.shape[2] / 2 - xc) * 0.35
    radius_mm = rng.uniform(25.0, 45.0)
    radii = np.maximum(_spacing_scaled_radius([radius_mm * 0.8, radius_mm, radius_mm * 0.9], spacing), 1.5)
    blob = _ellipsoid(image.shape, (zc, yc, xc), radii)
    # lobulated outline: threshold a smoothed noise field inside the ellipsoid
    lobes = ndimage.gaussian_filter(rng.standard_normal(image.shape).astype(np.float32), sigma=2.0)
    blob &= lobes > -0.25 * lobes.std()
    blob = ndimage.binary_opening(blob) & lung
    image[blob] = SOFT_TISSUE_HU + 10.0
    label[blob] = 1


def _paint_effusion(image, label, lungs, spacing, rng):
    sides = [1, 2] if rng.uniform() < 0.5 else [int(rng.integers(1, 3))]
    for side in sides:
        lung = lungs == side
        ys = np.nonzero(lung.any(axis=(0, 2)))[0]
        # dependent fluid: the posterior (largest y) 20-40 % of the lung, thicker at the base (large z)
        depth = rng.uniform(0.2, 0.4)
        z = np.linspace(0.0, 1.0, image.shape[0])[:, None, None]
        level = ys.max() - (ys.max() - ys.min()) * depth * (0.5 + 0.5 * z)
        fluid = lung & (np.arange(image.shape[1])[None, :, None] >= level)
        image[fluid] = FLUID_HU
        label[fluid] = 1


def _paint_covid(image, label, lungs, spacing, rng, multiclass):
    lung = lungs > 0
    # peripheral: far from the mediastinum, close to the pleura
    distance_to_pleura = ndimage.distance_transform_edt(lung, sampling=spacing)
    periphery = lung & (distance_to_pleura < 30.0)
    for _ in range(int(rng.integers(3, 6))):
        centre = _random_lung_voxel(lungs, rng, periphery)
        radius_mm = rng.uniform(25.0, 45.0)
        radii = np.maximum(_spacing_scaled_radius([radius_mm * 0.7, radius_mm, radius_mm], spacing), 1.5)
        patch = _ellipsoid(image.shape, centre, radii) & lung
        image[patch] = GROUND_GLASS_HU
        label[patch] = 1
        # a consolidated core in some patches
        if rng.uniform() < 0.6:
            core = _ellipsoid(image.shape, centre, radii * 0.45) & patch
            image[core] = CONSOLIDATION_HU
            label[core] = 2 if multiclass else 1


def make_case(lesion: str, seed: int, shape: Sequence[int] = (32, 64, 64),
              spacing: Sequence[float] | None = None, multiclass: bool = False,
              noise_hu: float = 20.0) -> SyntheticCase:
    """Build one deterministic synthetic chest CT with lesions of type ``lesion`` (see module doc)."""
    if lesion not in LESION_TYPES:
        raise ValueError(f"unknown lesion type {lesion!r}; choose one of {', '.join(LESION_TYPES)}")
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 8:
        raise ValueError(f"shape must be three sizes of at least 8 voxels, got {shape}")
    spacing = tuple(float(s) for s in (spacing if spacing is not None else default_spacing(shape)))
    rng = np.random.default_rng([seed, LESION_TYPES.index(lesion)])
    image, lungs = _anatomy(shape, rng)
    label = np.zeros(shape, dtype=np.uint8)
    if lesion == "nodule":
        _paint_nodules(image, label, lungs, spacing, rng)
    elif lesion == "tumour":
        _paint_tumour(image, label, lungs, spacing, rng)
    elif lesion == "effusion":
        _paint_effusion(image, label, lungs, spacing, rng)
    else:
        _paint_covid(image, label, lungs, spacing, rng, multiclass)
    image += rng.normal(0.0, noise_hu, size=shape).astype(np.float32)
    image = np.clip(np.round(image), -1024, 3071).astype(np.int16)
    return SyntheticCase(image=image, label=label, lungs=lungs, spacing=spacing, lesion=lesion, seed=seed)


def window_to_uint8(image_hu: np.ndarray, low: float = -1250.0, high: float = 250.0) -> np.ndarray:
    """Window HU to [low, high] and rescale to [0, 255] (the COVID-19-CT-Seg / Radiopaedia convention)."""
    scaled = (np.clip(image_hu.astype(np.float32), low, high) - low) / (high - low) * 255.0
    return np.round(scaled).astype(np.uint8)


def make_covid_slice(seed: int, size: int = 128, multiclass: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """A 2D COVID-like slice as in COVID-SemiSeg: (uint8 grayscale image, uint8 mask).

    The mask is 0/255 for binary, or 0/1/2 (ground-glass / consolidation) when ``multiclass``.
    The slice is taken through the lesion-richest plane of a synthetic volume.
    """
    case = make_case("covid", seed, shape=(16, size, size), spacing=(300.0 / 16, 340.0 / size, 340.0 / size),
                     multiclass=multiclass)
    z = int(np.argmax((case.label > 0).sum(axis=(1, 2))))
    image = window_to_uint8(case.image[z])
    mask = case.label[z].copy()
    if not multiclass:
        mask = (mask > 0).astype(np.uint8) * 255
    return image, mask


def write_nnunet_dataset(raw_root: str | Path, dataset_id: int, name: str, cases: Sequence[SyntheticCase],
                         labels: dict[str, int] | None = None) -> Path:
    """Write ``cases`` as an nnU-Net raw dataset (imagesTr/labelsTr/dataset.json, NIfTI) and return its folder.

    For tests and benchmarks of the nnU-Net integration; the demo goes through the dataset converters instead.
    """
    import SimpleITK as sitk
    from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json

    folder = Path(raw_root) / f"Dataset{dataset_id:03d}_{name}"
    (folder / "imagesTr").mkdir(parents=True, exist_ok=True)
    (folder / "labelsTr").mkdir(parents=True, exist_ok=True)
    for i, case in enumerate(cases):
        image, label = case.to_sitk()
        case_id = f"{name}_{i:03d}"
        sitk.WriteImage(image, str(folder / "imagesTr" / f"{case_id}_0000.nii.gz"))
        sitk.WriteImage(label, str(folder / "labelsTr" / f"{case_id}.nii.gz"))
    if labels is None:
        labels = {"background": 0, "lesion": 1}
    generate_dataset_json(str(folder), channel_names={0: "CT"}, labels=labels, num_training_cases=len(cases),
                          file_ending=".nii.gz", dataset_name=folder.name)
    return folder
