"""Unsupervised lung mask (Liao et al. 2019, DSB2017 preprocessing; REFERENCE 3.7), lung crop and its inverse.

:func:`lung_mask` follows Liao et al.'s ``step1`` code:

1. per slice: Gaussian (sigma 1 px) then HU < -600; keep 2D components with area > 30 mm^2 and
   eccentricity < 0.99 (pixels outside a circular field of view are ignored when the corner is
   constant padding);
2. in 3D: drop components touching the volume's corners and edge midpoints; keep volumes of
   0.68-7.5 L whose distance to the central (z) axis, averaged over slices where the component's
   area exceeds 6000 mm^2 of the per-slice minimum, is < 62 mm; if nothing survives, retry with the
   top slices cut off (2 at a time);
3. fill 3D holes (background not connected to the outside of the components' bounding box);
4. split into two lungs by iterative erosion until the two largest components have an area ratio
   < 4.8, assign every voxel to the nearer one, keep the main part of each (95 % of per-slice
   area, convex hulls) and fill 2D holes.

:func:`crop_to_lungs` crops a case to the lungs' bounding box plus a margin (finite, >= 0 mm) and returns
the box (the mask is computed on in-plane blocks of about 1.4 mm, e.g. 2x2 pixels of a 0.7 mm CT: 4x fewer
voxels for a box that only needs centimetre precision; the box matches the full-resolution one to within a
block); a box that would cut off a labelled voxel is an error naming the case, never a smaller label;
:func:`uncrop` pastes an image of the cropped grid back into the original grid (zeros outside).
"""
from __future__ import annotations

import numpy as np

from nnunet_covid.core.errors import ConversionError

DEFAULT_MARGIN_MM = 10.0
THRESHOLD_HU = -600.0
MIN_AREA_MM2 = 30.0
MAX_ECCENTRICITY = 0.99
VOLUME_LIMITS_L = (0.68, 7.5)
LARGE_SLICE_AREA_MM2 = 6000.0
MAX_AXIS_DISTANCE_MM = 62.0
CUT_STEP = 2
MASK_IN_PLANE_MM = 1.4  # crop_to_lungs computes the mask on blocks of about this size


def binarize_per_slice(image: np.ndarray, spacing: np.ndarray, bg_patch: int = 10) -> np.ndarray:
    """Step 1: smoothed HU < -600 per slice, keeping round-ish 2D components larger than 30 mm^2."""
    from scipy import ndimage
    from skimage import measure

    ny, nx = image.shape[1:]
    rr, cc = np.meshgrid(np.arange(ny) - (ny - 1) / 2, np.arange(nx) - (nx - 1) / 2, indexing="ij")
    outside_fov = np.hypot(rr, cc) >= min(ny, nx) / 2
    bw = np.zeros(image.shape, dtype=bool)
    for k in range(image.shape[0]):
        plane = image[k].astype(np.float32)
        if np.unique(plane[:bg_patch, :bg_patch]).size == 1:  # circular FOV with constant padding
            plane = plane.copy()
            plane[outside_fov] = np.nan
        current = ndimage.gaussian_filter(plane, 1.0, truncate=2.0) < THRESHOLD_HU
        labels = measure.label(current)
        keep = [p.label for p in measure.regionprops(labels)
                if p.area * spacing[1] * spacing[2] > MIN_AREA_MM2 and p.eccentricity < MAX_ECCENTRICITY]
        bw[k] = np.isin(labels, keep)
    return bw


def _corner_labels(labels: np.ndarray, cut: int) -> set[int]:
    last, mid = -1 - cut, labels.shape[2] // 2
    return {int(labels[z, y, x]) for z in (0, last) for y in (0, -1) for x in (0, -1, mid)}


def select_lung_components(bw: np.ndarray, spacing: np.ndarray, cut: int = 0) -> np.ndarray:
    """Step 2: 3D components not touching the corners, 0.68-7.5 L, close to the central axis."""
    from scipy import ndimage
    from skimage import measure

    bw = bw.copy()
    original = bw.copy()
    if cut > 0:
        bw[-cut:] = False
    labels = measure.label(bw, connectivity=1)
    background = _corner_labels(labels, cut)
    voxel_volume = float(np.prod(spacing))
    ny, nx = bw.shape[1:]
    rr, cc = np.meshgrid((np.arange(ny) - (ny - 1) / 2) * spacing[1], (np.arange(nx) - (nx - 1) / 2) * spacing[2],
                         indexing="ij")
    axis_distance = np.hypot(rr, cc)
    valid = []
    for prop in measure.regionprops(labels):
        if prop.label in background:
            continue
        if not VOLUME_LIMITS_L[0] * 1e6 <= prop.area * voxel_volume <= VOLUME_LIMITS_L[1] * 1e6:
            continue
        z0, y0, x0, z1, y1, x1 = prop.bbox
        component = labels[z0:z1, y0:y1, x0:x1] == prop.label
        distances = axis_distance[y0:y1, x0:x1]
        areas = component.sum(axis=(1, 2)) * spacing[1] * spacing[2]
        large = np.nonzero(areas > LARGE_SLICE_AREA_MM2)[0]
        if large.size and np.mean([distances[component[i]].min() for i in large]) < MAX_AXIS_DISTANCE_MM:
            valid.append(prop.label)
    selected = np.isin(labels, valid)
    if cut > 0 and valid:  # give the cut slices back to the kept components (within `cut` voxels)
        restored = selected.copy()
        restored[-cut:] = original[-cut:]
        regrown = measure.label(restored & ndimage.binary_dilation(selected, iterations=cut), connectivity=1)
        keep = np.unique(regrown[selected])
        selected = np.isin(regrown, keep[keep > 0])
    return selected


def _extract_main(bw: np.ndarray, cover: float = 0.95) -> np.ndarray:
    from skimage import measure

    bw = bw.copy()
    for k in range(bw.shape[0]):
        props = sorted(measure.regionprops(measure.label(bw[k])), key=lambda p: p.area, reverse=True)
        if not props:
            continue
        total, covered, hull = sum(p.area for p in props), 0, np.zeros(bw[k].shape, dtype=bool)
        for p in props:
            if covered >= total * cover:
                break
            covered += p.area
            r0, c0, r1, c1 = p.bbox
            hull[r0:r1, c0:c1] |= p.image_convex
        bw[k] &= hull
    labels = measure.label(bw)
    if labels.max() == 0:
        return bw
    return labels == np.argmax(np.bincount(labels.ravel())[1:]) + 1


def _fill_2d_holes(bw: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    return np.stack([ndimage.binary_fill_holes(plane) for plane in bw])


def split_two_lungs(bw: np.ndarray, spacing: np.ndarray, max_iterations: int = 22, max_ratio: float = 4.8):
    """Step 4: (lung 1, lung 2, union) by iterative erosion until two comparable components remain."""
    from scipy import ndimage
    from skimage import measure

    eroded = bw.copy()
    for _ in range(max_iterations + 1):
        labels = measure.label(eroded, connectivity=2)
        sizes = np.bincount(labels.ravel())[1:]
        if sizes.size > 1:
            order = np.argsort(sizes)[::-1]
            if sizes[order[0]] / sizes[order[1]] < max_ratio:
                # every voxel goes to the nearer of the two eroded lungs (one feature transform)
                seeds = (labels == order[0] + 1) * np.uint8(1) + (labels == order[1] + 1) * np.uint8(2)
                nearest = ndimage.distance_transform_edt(seeds == 0, sampling=spacing, return_distances=False,
                                                         return_indices=True)
                side = seeds[tuple(nearest)]
                del nearest
                lung1, lung2 = _extract_main(bw & (side == 1)), _extract_main(bw & (side == 2))
                break
        eroded = ndimage.binary_erosion(eroded)
    else:
        lung1, lung2 = bw, np.zeros_like(bw)
    lung1, lung2 = _fill_2d_holes(lung1), _fill_2d_holes(lung2)
    return lung1, lung2, lung1 | lung2


def lung_mask(image_hu: np.ndarray, spacing_zyx) -> np.ndarray:
    """Boolean (z, y, x) mask of both lungs of a CT in HU (Liao et al. 2019); all False when none is found."""
    from scipy import ndimage

    spacing = np.asarray(spacing_zyx, dtype=float)
    bw0 = binarize_per_slice(image_hu, spacing)
    selected = np.zeros_like(bw0)
    for cut in range(0, max(1, image_hu.shape[0] // 4), CUT_STEP):
        selected = select_lung_components(bw0, spacing, cut)
        if selected.any():
            break
    if not selected.any():
        return selected
    # steps 3-4 inside the components' bounding box (one background voxel around it)
    start, stop = bounding_box(selected, np.ones(3), 1.0)
    region = tuple(slice(a, b) for a, b in zip(start, stop))
    filled = ndimage.binary_fill_holes(np.pad(selected[region], 1))[1:-1, 1:-1, 1:-1]
    mask = np.zeros_like(selected)
    mask[region] = split_two_lungs(filled, spacing)[2]
    return mask


def check_margin(margin_mm) -> float:
    """``margin_mm`` as a float when it is a finite number >= 0, else a ConversionError."""
    try:
        margin = float(margin_mm)
    except (TypeError, ValueError):
        raise ConversionError(f"crop margin must be a number of mm, got {margin_mm!r}") from None
    if not np.isfinite(margin) or margin < 0:
        raise ConversionError(f"crop margin must be a finite number of mm >= 0, got {margin_mm!r}")
    return margin


def bounding_box(mask: np.ndarray, spacing_zyx, margin_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """(start, stop) voxel indices (z, y, x) of ``mask``'s bounding box grown by ``margin_mm``, clipped."""
    coords = np.nonzero(mask)
    margin = np.ceil(margin_mm / np.asarray(spacing_zyx, dtype=float)).astype(int)
    start = np.maximum(np.array([c.min() for c in coords]) - margin, 0)
    stop = np.minimum(np.array([c.max() + 1 for c in coords]) + margin, mask.shape)
    return start, stop


def block_mean_in_plane(image: np.ndarray, factor: int) -> np.ndarray:
    """Average ``factor`` x ``factor`` pixel blocks of every slice (edges padded by replication)."""
    if factor == 1:
        return image
    nz, ny, nx = image.shape
    pad = ((0, 0), (0, -ny % factor), (0, -nx % factor))
    padded = np.pad(image.astype(np.float32), pad, mode="edge")
    return padded.reshape(nz, padded.shape[1] // factor, factor, padded.shape[2] // factor, factor).mean(axis=(2, 4))


def crop_to_lungs(images, label=None, margin_mm: float = DEFAULT_MARGIN_MM, case_id: str = "?"):
    """Crop every channel (and the label) to the lungs of channel 0 -> (images, label, crop box).

    The crop box (JSON-ready, SimpleITK x/y/z order) records the original grid and the cropped
    region; with no lungs found the whole image is kept (``lung_found`` false). A box that would
    leave a labelled voxel outside is a ConversionError naming the case.
    """
    import SimpleITK as sitk

    margin_mm = check_margin(margin_mm)
    reference = images[0]
    if reference.GetDimension() != 3:
        raise ConversionError(f"case {case_id}: --crop-lung needs 3D images, got {reference.GetDimension()}D")
    array = sitk.GetArrayViewFromImage(reference)
    spacing_zyx = np.asarray(reference.GetSpacing()[::-1], dtype=float)
    # the mask only places a box with a margin of centimetres: compute it on a grid of >= ~1.4 mm in-plane
    factor = max(1, int(round(MASK_IN_PLANE_MM / min(spacing_zyx[1:]))))
    coarse_spacing = spacing_zyx * [1, factor, factor]
    mask = lung_mask(block_mean_in_plane(array, factor), coarse_spacing)
    if mask.any():
        start, stop = bounding_box(mask, coarse_spacing, margin_mm)
        start, stop = start * [1, factor, factor], np.minimum(stop * [1, factor, factor], array.shape)
    else:
        start, stop = np.zeros(3, dtype=int), np.asarray(array.shape)
    if label is not None:
        labelled = sitk.GetArrayViewFromImage(label)
        total = int(np.count_nonzero(labelled))
        kept = int(np.count_nonzero(labelled[tuple(slice(a, b) for a, b in zip(start, stop))]))
        if kept < total:
            raise ConversionError(f"case {case_id}: the lung crop box (margin {margin_mm:g} mm) would cut off "
                                  f"{total - kept} of {total} labelled voxels; convert with a larger --crop-margin "
                                  f"or without --crop-lung")
    index, size = [int(v) for v in start[::-1]], [int(v) for v in (stop - start)[::-1]]
    box = {"original_size": list(reference.GetSize()), "original_spacing": list(reference.GetSpacing()),
           "original_origin": list(reference.GetOrigin()), "original_direction": list(reference.GetDirection()),
           "crop_index": index, "crop_size": size, "margin_mm": float(margin_mm), "lung_found": bool(mask.any())}
    cropped = [sitk.RegionOfInterest(img, size, index) for img in images]
    return cropped, (None if label is None else sitk.RegionOfInterest(label, size, index)), box


def check_fits_box(size, origin, box: dict, case_id: str = "?") -> None:
    """Raise ConversionError unless an image of ``size`` and ``origin`` lies on ``box``'s cropped grid."""
    if list(size) != list(box["crop_size"]):
        raise ConversionError(f"case {case_id}: prediction size {list(size)} does not match the crop "
                              f"box size {box['crop_size']} (x, y, z); was it predicted from the cropped dataset?")
    expected_origin = np.asarray(box["original_origin"]) + np.asarray(box["original_direction"]).reshape(3, 3) @ (
        np.asarray(box["crop_index"]) * np.asarray(box["original_spacing"]))
    if not np.allclose(origin, expected_origin, atol=1e-2):
        raise ConversionError(f"case {case_id}: prediction origin {tuple(np.round(origin, 3).tolist())} is not the "
                              f"crop box origin {tuple(np.round(expected_origin, 3).tolist())}")


def uncrop(image, box: dict, case_id: str = "?"):
    """Paste ``image`` (on the cropped grid of ``box``) into a zero image on the original grid."""
    import SimpleITK as sitk

    check_fits_box(image.GetSize(), image.GetOrigin(), box, case_id)
    array = sitk.GetArrayFromImage(image)
    full = np.zeros(tuple(box["original_size"][::-1]) + array.shape[3:], dtype=array.dtype)
    x, y, z = box["crop_index"]
    sx, sy, sz = box["crop_size"]
    full[z:z + sz, y:y + sy, x:x + sx] = array
    out = sitk.GetImageFromArray(full, isVector=array.ndim > 3)
    out.SetSpacing(box["original_spacing"])
    out.SetOrigin(box["original_origin"])
    out.SetDirection(box["original_direction"])
    return out
