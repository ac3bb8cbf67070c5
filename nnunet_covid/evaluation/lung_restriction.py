"""Lung-restricted post-processing: predicted lesions that lie outside the lungs are removed.

2D slice models fail most where a slice shows little lung: soft tissue below the diaphragm (liver,
spleen) or the heart is predicted as infection. Lesions are inside the lungs, so:

- **Lung mask** (:func:`lung_mask_of`): aerated-lung seeds grown into the lesions they touch.

  1. seeds: a 3D CT in HU gets the converters' unsupervised lung mask (Liao et al. 2019;
     :func:`nnunet_covid.evaluation.lungs.auto_lung_mask`). A 2D slice, windowed 8-bit grayscale (the
     COVID-SemiSeg JPEGs) or HU, gets Liao et al.'s step 1 on the slice
     (:func:`dataset_conversion.lung_crop.binarize_per_slice`: Gaussian sigma 1 pixel, below the threshold,
     2D components larger than 30 mm^2 with eccentricity < 0.99) with the threshold at the slice's own
     air/tissue level (Otsu's threshold of the smoothed slice: windowed slices have no HU scale, so the
     gray levels are shifted to put it at -600); seeds that hold an image corner are air outside the body
     (Liao et al.'s corner rule) and are dropped (:func:`slice_lung_mask`);
  2. growth, per axial slice: the components of "darker than soft tissue" that hold a seed, where soft
     tissue is the median of the smoothed pixels above the threshold (-600 HU for a CT) and "darker"
     means below it by more than :data:`TISSUE_MARGIN` of the tissue-to-lung contrast (lung: the median
     below the threshold), so ground-glass opacities and partly aerated consolidation join the aerated
     lung they touch;
  3. 2D holes filled (lesions the lung surrounds), then the mask grown in-plane by ``margin_mm``.

- **Restriction** (:func:`restrict_to_lungs`): every connected lesion component (all lesion labels
  together, 8-connected in 2D, 26-connected in 3D) with less than ``min_inside`` of its pixels in the
  lung mask is removed; a component mostly inside the lungs is kept whole, so consolidation that
  reaches the chest wall is not cut off at the mask's border.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from nnunet_covid.core.errors import EvaluationError
from nnunet_covid.evaluation.segmentation_io import Segmentation, check_same_geometry, read_segmentation, reader_for

TISSUE_MARGIN = 0.06  # share of the tissue-to-lung contrast a pixel must be darker than soft tissue to join the lungs
MARGIN_MM = 3.0  # the 2D mask is grown by this much (pixels of nnU-Net's PNG slices count as 1 mm)
MIN_INSIDE = 0.5  # a lesion component is kept when at least this share of its pixels lies in the lungs
SOURCES = ("auto",)  # besides a folder of lung masks


def _smooth(image: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    return ndimage.gaussian_filter(np.asarray(image, dtype=np.float32), 1.0, truncate=2.0)


def _corners(labels: np.ndarray) -> list:
    return [labels[0, 0], labels[0, -1], labels[-1, 0], labels[-1, -1]]


def _grown(smooth: np.ndarray, seeds: np.ndarray, threshold: float, spacing, margin_mm: float) -> np.ndarray:
    """Steps 2-3 on one slice: the darker-than-tissue components holding ``seeds``, holes filled, plus the margin."""
    from scipy import ndimage
    from skimage.measure import label

    below, above = smooth[smooth <= threshold], smooth[smooth > threshold]
    if below.size and above.size:
        lung_level, tissue_level = np.median(below), np.median(above)
        darker = label(smooth < tissue_level - TISSUE_MARGIN * (tissue_level - lung_level))
        held = np.unique(darker[seeds])
        seeds = seeds | np.isin(darker, held[held > 0])
    mask = ndimage.binary_fill_holes(seeds)
    if margin_mm > 0 and mask.any():
        mask = ndimage.distance_transform_edt(~mask, sampling=spacing) <= margin_mm
    return mask


def slice_lung_mask(image: np.ndarray, spacing, margin_mm: float = MARGIN_MM) -> np.ndarray:
    """Boolean lung mask of one 2D slice (windowed grayscale or HU; module doc); all False for a flat image."""
    from skimage.filters import threshold_otsu
    from skimage.measure import label

    from dataset_conversion.lung_crop import THRESHOLD_HU, binarize_per_slice

    image = np.asarray(image, dtype=np.float32)
    smooth = _smooth(image)
    if smooth.max() - smooth.min() < 1e-6:
        return np.zeros(image.shape, dtype=bool)
    threshold = float(threshold_otsu(smooth))
    seeds = label(binarize_per_slice((image - threshold + THRESHOLD_HU)[None], np.array([1.0, *spacing]),
                                     bg_patch=0)[0])
    seeds = (seeds > 0) & ~np.isin(seeds, _corners(seeds))
    return _grown(smooth, seeds, threshold, np.asarray(spacing, dtype=float), margin_mm)


def lung_mask_of(image: np.ndarray, spacing, margin_mm: float = MARGIN_MM) -> np.ndarray:
    """The lungs of an image (module doc): :func:`slice_lung_mask` for a 2D slice; for a 3D CT in HU Liao et
    al.'s mask, grown slice by slice."""
    from dataset_conversion.lung_crop import THRESHOLD_HU
    from nnunet_covid.evaluation.lungs import auto_lung_mask

    if image.ndim == 2:
        return slice_lung_mask(image, spacing, margin_mm)
    seeds = auto_lung_mask(image, spacing)
    mask = np.zeros(image.shape, dtype=bool)
    for k in np.flatnonzero(seeds.any(axis=(1, 2))):
        mask[k] = _grown(_smooth(image[k]), seeds[k], THRESHOLD_HU, np.asarray(spacing[1:], dtype=float), margin_mm)
    return mask


def restrict_to_lungs(labels: np.ndarray, lungs: np.ndarray, min_inside: float = MIN_INSIDE) -> tuple[np.ndarray, int]:
    """(``labels`` without the lesion components less than ``min_inside`` inside ``lungs``, pixels removed)."""
    from scipy import ndimage

    components, count = ndimage.label(labels > 0, structure=np.ones((3,) * labels.ndim, dtype=bool))
    if count == 0:
        return labels, 0
    sizes = np.bincount(components.ravel(), minlength=count + 1)[1:]
    inside = np.bincount(components[lungs], minlength=count + 1)[1:]
    dropped = np.flatnonzero(inside < min_inside * sizes) + 1
    removed = np.isin(components, dropped)
    restricted = labels.copy()
    restricted[removed] = 0
    return restricted, int(removed.sum())


def check_min_inside(min_inside) -> float:
    """``min_inside`` as a float in (0, 1], else a one-line EvaluationError."""
    if isinstance(min_inside, bool) or not isinstance(min_inside, (int, float)) or not 0 < min_inside <= 1:
        raise EvaluationError(f"the share of a lesion inside the lungs to keep it must be in (0, 1], got {min_inside!r}")
    return float(min_inside)


def case_lungs(case: str, prediction: Segmentation, source, image_file: Path | None, mask_file: Path | None,
               file_ending: str, dataset_json: dict | None) -> np.ndarray:
    """The lungs of ``case`` on the prediction's grid: ``source`` ``"auto"`` computes them from ``image_file``,
    a folder source reads ``mask_file`` (any non-zero value is lung). Geometry is checked against the prediction."""
    if source == "auto":
        image = read_segmentation(reader_for(file_ending, image_file, dataset_json), image_file, case)
        check_same_geometry(case, image, prediction, reference="image", reference_file=image_file)
        return lung_mask_of(image.array, image.spacing)
    lungs = read_segmentation(reader_for(file_ending, mask_file, dataset_json), mask_file, case)
    check_same_geometry(case, lungs, prediction, reference="lung mask", reference_file=mask_file)
    return lungs.array > 0
