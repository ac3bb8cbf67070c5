"""The lungs of a CT for burden figures: the patient's orientation, the unsupervised lung mask, left and right.

- :func:`lps_axes`: the patient direction (DICOM/ITK LPS: +x patient left, +y posterior, +z superior)
  of each array axis, from the reader's geometry (SimpleITK: direction matrix; nibabel: RAS affine).
- :func:`auto_lung_mask`: Liao et al.'s aerated-lung mask (:func:`dataset_conversion.lung_crop.lung_mask`)
  computed on in-plane blocks of about 1.4 mm (as ``crop_to_lungs`` does, 4x fewer voxels on a 0.7 mm
  CT), upsampled, and its border refined at full resolution: within ``BORDER_PX`` pixels of the mask
  border a voxel is lung when its HU is below -600, then 2D holes are filled. The refinement also
  undoes the about one-pixel inward shift of the Gaussian-smoothed threshold of step 1.
- :func:`split_left_right`: the two lungs of a mask by Liao et al.'s iterative-erosion split (on the
  same blocks), every other voxel to the nearer lung, sides named by the patient's x axis.
- :func:`assign_to_nearer`: voxels outside both lungs (lesions outside the aerated mask) to the nearer one.
"""
from __future__ import annotations

import numpy as np

BORDER_PX = 2
NIBABEL_TO_LPS = np.diag([-1.0, -1.0, 1.0])  # RAS -> LPS


def lps_axes(direction, reader=None) -> np.ndarray:
    """3x3 matrix whose column ``a`` is the unit LPS vector of array axis ``a`` (arrays are (z, y, x)).

    ``direction`` is :class:`~nnunet_covid.evaluation.segmentation_io.Segmentation`'s: SimpleITK's
    row-major direction (column j: ITK index axis j = array axis 2 - j), or for nnU-Net's nibabel
    readers the RAS affine's 3x3 part; None (e.g. TIFF) is taken as the identity.
    """
    if direction is None:
        return np.eye(3)[:, ::-1].copy()
    matrix = np.asarray(direction, dtype=float).reshape(3, 3)
    if reader is not None and type(reader).__name__.startswith("Nibabel"):
        matrix = NIBABEL_TO_LPS @ matrix
    matrix = matrix[:, ::-1]
    return matrix / np.linalg.norm(matrix, axis=0)


def in_plane_factor(spacing) -> int:
    """Block size (pixels) that makes in-plane blocks about ``MASK_IN_PLANE_MM`` wide."""
    from dataset_conversion.lung_crop import MASK_IN_PLANE_MM

    return max(1, int(round(MASK_IN_PLANE_MM / min(spacing[1:]))))


def _upsample(mask: np.ndarray, factor: int, shape) -> np.ndarray:
    if factor == 1:
        return mask
    return np.repeat(np.repeat(mask, factor, axis=1), factor, axis=2)[:, :shape[1], :shape[2]]


def _in_plane(structure_2d: np.ndarray) -> np.ndarray:
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = structure_2d
    return structure


def auto_lung_mask(image_hu: np.ndarray, spacing) -> np.ndarray:
    """Boolean aerated-lung mask of a (z, y, x) CT in HU (module doc); all False when no lungs are found."""
    from scipy import ndimage

    from dataset_conversion.lung_crop import THRESHOLD_HU, block_mean_in_plane, bounding_box, lung_mask

    spacing = np.asarray(spacing, dtype=float)
    factor = in_plane_factor(spacing)
    coarse = lung_mask(block_mean_in_plane(image_hu, factor), spacing * [1, factor, factor])
    mask = _upsample(coarse, factor, image_hu.shape)
    if not mask.any():
        return mask
    start, stop = bounding_box(mask, np.ones(3), BORDER_PX + 1)
    box = tuple(slice(a, b) for a, b in zip(start, stop))
    inside, cross = mask[box], _in_plane(ndimage.generate_binary_structure(2, 1))
    border = ndimage.binary_dilation(inside, cross, BORDER_PX) & ~ndimage.binary_erosion(inside, cross, BORDER_PX)
    refined = (inside & ~border) | (border & (image_hu[box] < THRESHOLD_HU))
    mask = np.zeros_like(mask)
    mask[box] = np.stack([ndimage.binary_fill_holes(plane) for plane in refined])
    return mask


def _coordinates_mm(mask: np.ndarray, spacing) -> np.ndarray:
    return np.argwhere(mask) * np.asarray(spacing, dtype=float)


def assign_to_nearer(voxels: np.ndarray, first: np.ndarray, second: np.ndarray, spacing):
    """(``voxels`` nearer ``first``, ``voxels`` nearer ``second``) by Euclidean distance in mm to each
    mask's surface; with one mask empty every voxel goes to the other (to ``first`` when both are)."""
    from scipy import ndimage
    from scipy.spatial import cKDTree

    if not voxels.any() or not second.any():
        return voxels.copy(), np.zeros_like(voxels)
    if not first.any():
        return np.zeros_like(voxels), voxels.copy()
    points = np.argwhere(voxels)
    distances = []
    for mask in (first, second):
        surface = mask & ~ndimage.binary_erosion(mask)
        distances.append(cKDTree(_coordinates_mm(surface, spacing)).query(points * np.asarray(spacing, float))[0])
    to_first = np.zeros_like(voxels)
    to_first[tuple(points[distances[0] <= distances[1]].T)] = True
    return to_first, voxels & ~to_first


def patient_left_mm(mask: np.ndarray, spacing, axes: np.ndarray) -> float:
    """Mean LPS x coordinate (mm, relative to the array's first voxel) of ``mask``: larger is more patient-left."""
    return float(_coordinates_mm(mask, spacing).mean(axis=0) @ axes[0])


def split_left_right(lungs: np.ndarray, spacing, axes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(right lung, left lung) of a boolean mask of both lungs (module doc); together exactly ``lungs``.

    When erosion cannot separate two lungs, the mask is cut by the sagittal plane through its centre.
    """
    from dataset_conversion.lung_crop import block_mean_in_plane, split_two_lungs

    if not lungs.any():
        return lungs.copy(), lungs.copy()
    spacing = np.asarray(spacing, dtype=float)
    factor = in_plane_factor(spacing)
    coarse = block_mean_in_plane(lungs.astype(np.float32), factor) >= 0.5
    first, second, _ = split_two_lungs(coarse, spacing * [1, factor, factor])
    first, second = _upsample(first, factor, lungs.shape) & lungs, _upsample(second, factor, lungs.shape) & lungs
    if first.any() and second.any():
        near_first, near_second = assign_to_nearer(lungs & ~first & ~second, first, second, spacing)
        first, second = first | near_first, second | near_second
    else:
        points = np.argwhere(lungs)
        x_mm = (points * spacing) @ axes[0]
        first = np.zeros_like(lungs)
        first[tuple(points[x_mm < x_mm.mean()].T)] = True
        second = lungs & ~first
    if patient_left_mm(first, spacing, axes) > patient_left_mm(second, spacing, axes):
        first, second = second, first
    return first, second
