"""Pictures of segmented CTs: one PNG per case, an HTML index page, and a Bland-Altman plot of burden.

A case figure shows an axial and a coronal slice through the largest lesion (the largest 26-connected
component of the prediction, else of the ground truth, else the lungs' centre), in the patient's
orientation whatever the array order (radiological convention: patient right on the viewer's left,
anterior / superior at the top), pixels at their physical aspect ratio:

- CT in a lung window (level -600 HU, width 1500 HU);
- the lungs' contour (cyan);
- each lesion class filled in its colour (semi-transparent);
- with a ground truth: ground-truth lesion contour (green) and predicted lesion contour (red).

PNG files and the index page are written atomically.
"""
from __future__ import annotations

import html
import io
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from nnunet_covid.core.atomic_io import atomic_write_bytes, atomic_write_text

LUNG_WINDOW_HU = (-1350.0, 150.0)  # level -600, width 1500
CLASS_COLOURS = ("#ffd60a", "#ff453a", "#bf5af2", "#64d2ff", "#ff9f0a")
LUNG_COLOUR, PREDICTION_COLOUR, GROUND_TRUTH_COLOUR = "#5ac8fa", "#ff375f", "#32d74b"
FILL_ALPHA = 0.45


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(fig, path: Path, dpi: int = 110) -> None:
    """Render ``fig`` to PNG in memory, write it atomically and close the figure."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, facecolor=fig.get_facecolor())
    _pyplot().close(fig)
    atomic_write_bytes(path, buffer.getvalue())


def patient_view(array: np.ndarray, axes: np.ndarray, spacing: Sequence[float]):
    """``array`` with axes (superior, posterior, patient-left) increasing, and its spacing in that order.

    ``axes`` is :func:`~nnunet_covid.evaluation.lungs.lps_axes`; an oblique grid whose axes do not map
    one-to-one onto patient axes is shown as stored.
    """
    dominant = np.argmax(np.abs(axes), axis=0)  # LPS axis of each array axis
    if sorted(dominant) != [0, 1, 2]:
        return array, tuple(spacing)
    order = [int(np.nonzero(dominant == lps)[0][0]) for lps in (2, 1, 0)]
    view = np.transpose(array, order)
    for position, axis in enumerate(order):
        if axes[dominant[axis], axis] < 0:
            view = np.flip(view, position)
    return view, tuple(spacing[a] for a in order)


def _focus(masks: Sequence[np.ndarray]) -> tuple[int, int]:
    """(axial index, coronal index) through the largest lesion of the first non-empty mask."""
    from scipy import ndimage

    for mask in masks:
        if mask is None or not mask.any():
            continue
        labels, _ = ndimage.label(mask, structure=np.ones((3, 3, 3), dtype=bool))
        largest = labels == np.argmax(np.bincount(labels.ravel())[1:]) + 1
        return int(np.argmax(largest.sum(axis=(1, 2)))), int(np.argmax(largest.sum(axis=(0, 2))))
    return masks[-1].shape[0] // 2, masks[-1].shape[1] // 2


def _rgba(labels2d: np.ndarray, values: Sequence[int]) -> np.ndarray:
    from matplotlib.colors import to_rgba

    rgba = np.zeros(labels2d.shape + (4,), dtype=np.float32)
    for i, value in enumerate(values):
        rgba[labels2d == value] = (*to_rgba(CLASS_COLOURS[i % len(CLASS_COLOURS)])[:3], FILL_ALPHA)
    return rgba


def _contour(ax, mask2d: np.ndarray, colour: str, width: float = 1.1) -> None:
    if mask2d.any() and not mask2d.all():
        ax.contour(mask2d.astype(np.float32), levels=[0.5], colors=[colour], linewidths=width)


def _panel(ax, ct, lungs, labels, values, gt_lesion, aspect: float, title: str, corners: tuple[str, str, str]):
    ax.imshow(np.clip(ct, *LUNG_WINDOW_HU), cmap="gray", vmin=LUNG_WINDOW_HU[0], vmax=LUNG_WINDOW_HU[1],
              aspect=aspect, interpolation="nearest")
    ax.imshow(_rgba(labels, values), aspect=aspect, interpolation="nearest")
    _contour(ax, lungs, LUNG_COLOUR, 0.9)
    if gt_lesion is not None:
        _contour(ax, gt_lesion, GROUND_TRUTH_COLOUR)
        _contour(ax, np.isin(labels, values), PREDICTION_COLOUR)
    ax.set_title(title, color="white", fontsize=9)
    ax.set_axis_off()
    style = {"color": "white", "fontsize": 9, "transform": ax.transAxes, "fontweight": "bold",
             "bbox": {"facecolor": "black", "alpha": 0.6, "edgecolor": "none", "pad": 1.5}}
    ax.text(0.01, 0.5, corners[0], ha="left", va="center", **style)
    ax.text(0.99, 0.5, corners[1], ha="right", va="center", **style)
    ax.text(0.5, 0.99, corners[2], ha="center", va="top", **style)


def case_figure(path: Path, ct: np.ndarray, lungs: np.ndarray, labels: np.ndarray, lesion_classes: dict[str, int],
                spacing: Sequence[float], axes: np.ndarray, title: str, gt_lesion: np.ndarray | None = None) -> Path:
    """Write the case figure (module doc) to ``path``; arrays are (z, y, x) on one grid."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    plt = _pyplot()
    values = list(lesion_classes.values())
    views = [patient_view(a, axes, spacing) if a is not None else (None, None)
             for a in (ct, lungs, labels, gt_lesion)]
    (ct_v, sp), (lungs_v, _), (labels_v, _), (gt_v, _) = views
    z, y = _focus([np.isin(labels_v, values), gt_v, lungs_v])
    fig, (axial, coronal) = plt.subplots(1, 2, figsize=(11, 5.6), facecolor="black")
    _panel(axial, ct_v[z], lungs_v[z], labels_v[z], values, None if gt_v is None else gt_v[z], sp[1] / sp[2],
           f"axial, slice {z + 1} of {ct_v.shape[0]} (from inferior)", ("R", "L", "A"))
    flip = slice(None, None, -1)  # superior at the top
    _panel(coronal, ct_v[flip, y], lungs_v[flip, y], labels_v[flip, y], values,
           None if gt_v is None else gt_v[flip, y], sp[0] / sp[2],
           f"coronal, slice {y + 1} of {ct_v.shape[1]} (from anterior)", ("R", "L", "S"))
    handles = [Patch(color=CLASS_COLOURS[i % len(CLASS_COLOURS)], alpha=0.8, label=name.replace("_", " "))
               for i, name in enumerate(lesion_classes)]
    handles.append(Line2D([], [], color=LUNG_COLOUR, label="lungs"))
    if gt_lesion is not None:
        handles += [Line2D([], [], color=GROUND_TRUTH_COLOUR, label="ground truth"),
                    Line2D([], [], color=PREDICTION_COLOUR, label="prediction")]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False, labelcolor="white",
               fontsize=9)
    fig.suptitle(title, color="white", fontsize=10)
    fig.tight_layout(rect=(0, 0.06, 1, 0.94))
    save_png(fig, path)
    return path


def bland_altman_figure(path: Path, groups: dict[str, tuple[Sequence[float], Sequence[float]]]) -> Path:
    """Bland-Altman plot of involvement (percent of both lungs): one panel per group of (predicted, reference)."""
    plt = _pyplot()
    n = max(1, len(groups))
    columns = min(n, 3)
    rows = (n + columns - 1) // columns
    fig, axs = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.8 * rows), squeeze=False)
    for ax in axs.ravel()[len(groups):]:
        ax.set_axis_off()
    for ax, (name, (predicted, reference)) in zip(axs.ravel(), groups.items()):
        predicted, reference = np.asarray(predicted, dtype=float), np.asarray(reference, dtype=float)
        means, differences = (predicted + reference) / 2, predicted - reference
        ax.scatter(means, differences, s=16, alpha=0.8)
        if differences.size:
            bias, sd = differences.mean(), differences.std()
            for value, style in ((bias, "-"), (bias - 1.96 * sd, "--"), (bias + 1.96 * sd, "--")):
                ax.axhline(value, color="tab:red" if style == "-" else "tab:gray", linestyle=style, linewidth=1)
            ax.set_title(f"{name}\nbias {bias:+.1f} pp, limits {bias - 1.96 * sd:+.1f} / {bias + 1.96 * sd:+.1f}",
                         fontsize=9)
        else:
            ax.set_title(f"{name}\n(no case)", fontsize=9)
        ax.axhline(0, color="black", linewidth=0.5)
        ax.set_xlabel("mean of predicted and ground-truth involvement (%)", fontsize=8)
        ax.set_ylabel("predicted - ground truth (pp)", fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    save_png(fig, path)
    return path


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.2f}"
    return html.escape("n/a" if value is None else str(value))


def index_page(path: Path, title: str, intro: str, sections: Sequence[dict]) -> Path:
    """An HTML page: per section (``heading``, ``columns``, ``rows``, ``figures``) a table of the rows
    (dicts; ``case`` links to its figure) followed by the figures (``{case: relative PNG path}``)."""
    parts = ["<!doctype html>", '<html><head><meta charset="utf-8">', f"<title>{html.escape(title)}</title>",
             "<style>body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}td:first-child{text-align:left}"
             "img{max-width:100%;margin:0.5em 0 1.5em}</style></head><body>",
             f"<h1>{html.escape(title)}</h1>", f"<p>{html.escape(intro)}</p>"]
    for number, section in enumerate(sections):
        figures = section.get("figures", {})
        parts.append(f"<h2>{html.escape(section['heading'])}</h2>")
        parts.append("<table><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in section["columns"]) + "</tr>")
        for row in section["rows"]:
            cells = [_cell(row.get(c)) for c in section["columns"]]
            if row.get("case") in figures:
                cells[0] = f'<a href="#s{number}-{html.escape(row["case"])}">{cells[0]}</a>'
            parts.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
        parts.append("</table>")
        for case, figure in figures.items():
            parts.append(f'<h3 id="s{number}-{html.escape(case)}">{html.escape(case)}</h3>'
                         f'<img src="{html.escape(Path(os.path.relpath(figure, path.parent)).as_posix())}" '
                         f'alt="{html.escape(case)}">')
    parts.append("</body></html>")
    atomic_write_text(path, "\n".join(parts))
    return path
