"""LIDC-IDRI reader XML (``LidcReadMessage``, namespace http://www.nih.gov): parsing, nodule grouping, consensus.

Each ``readingSession`` (one radiologist) lists ``unblindedReadNodule`` elements; a nodule has
``roi`` contours, one per slice, with ``imageSOP_UID``, ``imageZposition``, ``inclusion`` and the
``edgeMap`` pixel coordinates (``xCoord`` = column, ``yCoord`` = row). Nodules < 3 mm carry no
``characteristics`` and a single point. Following the LIDC convention (and pylidc), the outline is
drawn just outside the nodule: a contour's mask is the pixels strictly inside the closed polygon,
minus the outline pixels; exclusion contours remove their inside and outline.

The readers' annotations of one physical nodule are grouped by single linkage on the minimum
physical distance between their outline points (pylidc's ``cluster_annotations``); a voxel belongs
to a nodule's consensus mask when at least ``consensus_level`` of the group's annotations include it
(pylidc's ``consensus``).
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nnunet_covid.core.errors import ConversionError

NS = {"lidc": "http://www.nih.gov"}
MAX_READERS = 4


@dataclass
class Roi:
    """One contour on one slice; ``points`` is (N, 2) as (row, column)."""

    z_position: float
    sop_uid: str
    inclusion: bool
    points: np.ndarray


@dataclass
class NoduleAnnotation:
    """One reader's annotation of one nodule."""

    reader: int  # index of the reading session
    nodule_id: str
    rois: list[Roi]
    characteristics: dict[str, int] = field(default_factory=dict)

    @property
    def is_small(self) -> bool:
        """A nodule < 3 mm: marked by its centre point only, without characteristics."""
        return not self.characteristics and sum(len(r.points) for r in self.rois) <= 1

    @property
    def malignancy(self) -> int | None:
        return self.characteristics.get("malignancy")


@dataclass
class LidcReading:
    """The parsed XML of one CT series."""

    path: Path
    series_uid: str
    num_readers: int
    annotations: list[NoduleAnnotation]


def _text(element, path: str, default: str = "") -> str:
    found = element.find(path, NS)
    return found.text.strip() if found is not None and found.text else default


def parse_lidc_xml(path: str | Path) -> LidcReading:
    """Parse one LIDC XML file; a clear ConversionError for malformed XML or ROIs."""
    path = Path(path)
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        raise ConversionError(f"{path}: malformed XML ({e})") from None
    except OSError as e:
        raise ConversionError(f"{path}: cannot be read ({e.strerror})") from None
    if root.tag != f"{{{NS['lidc']}}}LidcReadMessage":
        raise ConversionError(f"{path}: not an LIDC read message (root element {root.tag})")
    series_uid = _text(root, "lidc:ResponseHeader/lidc:SeriesInstanceUid")
    sessions = root.findall("lidc:readingSession", NS)
    annotations = []
    for reader, session in enumerate(sessions):
        for nodule in session.findall("lidc:unblindedReadNodule", NS):
            nodule_id = _text(nodule, "lidc:noduleID", f"reader{reader}-nodule{len(annotations)}")
            characteristics = {}
            chars = nodule.find("lidc:characteristics", NS)
            if chars is not None:
                for child in chars:
                    if child.text and child.text.strip().lstrip("-").isdigit():
                        characteristics[child.tag.split("}")[-1]] = int(child.text.strip())
            rois = []
            for roi in nodule.findall("lidc:roi", NS):
                try:
                    points = np.array([[int(_text(e, "lidc:yCoord")), int(_text(e, "lidc:xCoord"))]
                                       for e in roi.findall("lidc:edgeMap", NS)], dtype=np.int64).reshape(-1, 2)
                    z = float(_text(roi, "lidc:imageZposition", "nan"))
                except ValueError as e:
                    raise ConversionError(f"{path}: reader {reader + 1}, {nodule_id}: bad ROI coordinates ({e})") from None
                if len(points) == 0:
                    continue
                rois.append(Roi(z, _text(roi, "lidc:imageSOP_UID"), _text(roi, "lidc:inclusion", "TRUE").upper() == "TRUE",
                                points))
            if rois:
                annotations.append(NoduleAnnotation(reader, nodule_id, rois, characteristics))
    return LidcReading(path, series_uid, len(sessions), annotations)


class SliceLocator:
    """Maps an ROI to its slice index: by SOP Instance UID, else by the nearest z position."""

    def __init__(self, sop_uids: list[str], z_positions: np.ndarray, case_id: str):
        self.index = {uid: k for k, uid in enumerate(sop_uids)}
        self.z = np.asarray(z_positions, dtype=float)
        self.tolerance = 0.5 * float(np.median(np.diff(self.z))) if len(self.z) > 1 else 0.5
        self.case_id = case_id

    def __call__(self, roi: Roi) -> int:
        if roi.sop_uid in self.index:
            return self.index[roi.sop_uid]
        k = int(np.argmin(np.abs(self.z - roi.z_position)))
        if abs(self.z[k] - roi.z_position) > self.tolerance:
            raise ConversionError(f"case {self.case_id}: ROI at z = {roi.z_position} mm (SOP {roi.sop_uid or '?'}) "
                                  f"matches no slice of the series (z {self.z.min():.1f}..{self.z.max():.1f} mm)")
        return k


@dataclass
class AnnotationMask:
    """Boolean mask of one annotation inside its bounding box ``start`` (z, row, col) of a volume."""

    start: np.ndarray
    mask: np.ndarray

    @property
    def stop(self) -> np.ndarray:
        return self.start + np.asarray(self.mask.shape)


def _polygon_inside(points: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Pixels (rows x cols grid) strictly inside the closed polygon through ``points`` (row, col)."""
    from matplotlib.path import Path as MplPath

    closed = points if len(points) > 1 and (points[0] == points[-1]).all() else np.vstack([points, points[:1]])
    rr, cc = np.meshgrid(rows, cols, indexing="ij")
    return MplPath(closed, closed=True).contains_points(np.c_[rr.ravel(), cc.ravel()]).reshape(rr.shape)


def annotation_mask(annotation: NoduleAnnotation, locate: SliceLocator, shape: tuple[int, int, int]) -> AnnotationMask:
    """Rasterise one annotation: inclusion polygons filled (outline excluded) minus exclusion polygons."""
    slices = [locate(r) for r in annotation.rois]
    points = np.vstack([r.points for r in annotation.rois])
    if (points < 0).any() or (points[:, 0] >= shape[1]).any() or (points[:, 1] >= shape[2]).any():
        raise ConversionError(f"case {locate.case_id}: {annotation.nodule_id} of reader {annotation.reader + 1} has "
                              f"contour points outside the {shape[1]}x{shape[2]} slice")
    start = np.array([min(slices), points[:, 0].min(), points[:, 1].min()])
    stop = np.array([max(slices), points[:, 0].max(), points[:, 1].max()]) + 1
    mask = np.zeros(stop - start, dtype=bool)
    rows = np.arange(start[1], stop[1])
    cols = np.arange(start[2], stop[2])
    if annotation.is_small:
        k, (r, c) = slices[0], points[0]
        mask[k - start[0], r - start[1], c - start[2]] = True
        return AnnotationMask(start, mask)
    for inclusion in (True, False):
        for roi, k in zip(annotation.rois, slices):
            if roi.inclusion != inclusion:
                continue
            plane = mask[k - start[0]]
            inside = _polygon_inside(roi.points, rows, cols)
            plane[:] = (plane | inside) if inclusion else (plane & ~inside)
            plane[roi.points[:, 0] - start[1], roi.points[:, 1] - start[2]] = False
    return AnnotationMask(start, mask)


def _outline_mm(annotation: NoduleAnnotation, locate: SliceLocator, spacing_zyx: np.ndarray) -> np.ndarray:
    return np.vstack([np.c_[np.full(len(r.points), locate(r)), r.points] for r in annotation.rois]) * spacing_zyx


def group_annotations(annotations: list[NoduleAnnotation], locate: SliceLocator, spacing_zyx,
                      tolerance_mm: float | None = None, factor: float = 0.9) -> list[list[int]]:
    """Group the annotations into physical nodules (indices into ``annotations``).

    Single linkage: two annotations are linked when their outlines come within ``tolerance_mm``
    (default: the slice spacing). As in pylidc, while a group has more than four annotations
    (more than LIDC's four readers) the tolerance is reduced by ``factor``.
    """
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial.distance import cdist

    n = len(annotations)
    if n == 0:
        return []
    spacing_zyx = np.asarray(spacing_zyx, dtype=float)
    outlines = [_outline_mm(a, locate, spacing_zyx) for a in annotations]
    distance = np.zeros((n, n))
    for i in range(n):
        for j in range(i + 1, n):
            distance[i, j] = distance[j, i] = cdist(outlines[i], outlines[j]).min()
    tol = float(spacing_zyx[0]) if tolerance_mm is None else float(tolerance_mm)
    while True:
        _, labels = connected_components(distance <= tol, directed=False)
        counts = np.bincount(labels)
        if counts.max() <= MAX_READERS or tol * factor < 0.1:
            break
        tol *= factor
    groups = [list(np.nonzero(labels == g)[0]) for g in range(labels.max() + 1)]
    # order nodules by their first slice, then row, then column (stable, readable nodule numbers)
    return sorted(groups, key=lambda g: tuple(min(outlines[i][:, d].min() for i in g) for d in range(3)))


def consensus(masks: list[AnnotationMask], level: float) -> AnnotationMask:
    """Voxels included by at least ``level`` of the annotations (pylidc's ``consensus`` rule)."""
    start = np.min([m.start for m in masks], axis=0)
    stop = np.max([m.stop for m in masks], axis=0)
    votes = np.zeros(stop - start, dtype=np.int32)
    for m in masks:
        offset = m.start - start
        votes[tuple(slice(o, o + s) for o, s in zip(offset, m.mask.shape))] += m.mask
    return AnnotationMask(start, votes >= level * len(masks) - 1e-9)
