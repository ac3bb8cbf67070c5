"""Speed of our NSD / all metrics against DeepMind's surface-distance on CT-sized volumes.

Builds synthetic 512x512x120 cases (array axis order z, y, x = 120, 512, 512; spacing
2.5 x 0.78 x 0.78 mm) with 5-10 irregular lesions each; the prediction moves, grows, shrinks,
misses and adds lesions. Times, side by side in one process on one thread:
surface-distance's NSD@3mm (compute_surface_distances + compute_surface_dice_at_tolerance),
our NSD@3mm (+HD95, computed together), and all metrics (wall and CPU time) of ``compute_metrics``; checks the NSD
values agree. Needs the test extra (surface-distance).

    python benchmarks/bench_metrics.py [--cases 5] [--seed 0]
"""
from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
from scipy import ndimage  # noqa: E402

SHAPE = (120, 512, 512)
SPACING = (2.5, 0.78, 0.78)


def _lesion(rng: np.random.Generator, radius_mm: float) -> np.ndarray:
    """An irregular blob (boolean box) of roughly ``radius_mm``."""
    half = [int(np.ceil(1.6 * radius_mm / s)) + 2 for s in SPACING]
    grids = np.meshgrid(*[np.arange(-h, h + 1) * s for h, s in zip(half, SPACING)], indexing="ij")
    radius = np.sqrt(sum(g**2 for g in grids))
    noise = ndimage.gaussian_filter(rng.standard_normal(radius.shape), 2.0)
    return radius < radius_mm * (1.0 + 1.5 * noise / (noise.std() + 1e-9) * 0.15)


def _paste(volume: np.ndarray, blob: np.ndarray, centre: np.ndarray) -> None:
    lo = centre - np.array(blob.shape) // 2
    dst = tuple(slice(max(l, 0), min(l + b, n)) for l, b, n in zip(lo, blob.shape, volume.shape))
    src = tuple(slice(d.start - l, d.stop - l) for d, l in zip(dst, lo))
    volume[dst] |= blob[src]


def make_case(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    gt = np.zeros(SHAPE, bool)
    pred = np.zeros(SHAPE, bool)
    for _ in range(rng.integers(5, 11)):
        blob = _lesion(rng, rng.uniform(5, 30))
        centre = np.array([rng.integers(10, SHAPE[0] - 10), rng.integers(80, 430), rng.integers(60, 450)])
        _paste(gt, blob, centre)
        fate = rng.random()
        if fate < 0.1:
            continue  # missed lesion
        moved = blob
        if fate < 0.4:
            moved = ndimage.binary_dilation(blob, iterations=1)
        elif fate < 0.7:
            moved = ndimage.binary_erosion(blob, iterations=1)
        _paste(pred, moved, centre + rng.integers(-2, 3, 3))
    _paste(pred, _lesion(rng, 8.0), np.array([60, 256, 256]))  # one false positive
    return gt, pred


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    if not hasattr(np, "Inf"):  # surface-distance 0.1 predates NumPy 2
        np.Inf = np.inf
    import surface_distance

    from nnunet_covid.evaluation.metrics import compute_metrics, surface_metrics

    surface_metrics(*make_case(10_000)[:2], SPACING)  # warm the marching-cubes table
    print(f"{'case':>4} {'lesion vox':>10} {'sd NSD s':>9} {'our NSD s':>9} {'speed-up':>8} "
          f"{'all metrics s':>13} {'(CPU s)':>8} {'|dNSD|':>8}")
    totals = np.zeros(4)
    for i in range(args.cases):
        gt, pred = make_case(args.seed + i)
        t0 = time.perf_counter()
        distances = surface_distance.compute_surface_distances(gt, pred, SPACING)
        reference = surface_distance.compute_surface_dice_at_tolerance(distances, 3.0)
        t1 = time.perf_counter()
        ours, _ = surface_metrics(gt, pred, SPACING, 3.0)
        t2, c2 = time.perf_counter(), time.process_time()
        compute_metrics(gt, pred, SPACING, 3.0)
        t3, c3 = time.perf_counter(), time.process_time()
        times = np.array([t1 - t0, t2 - t1, t3 - t2, c3 - c2])
        totals += times
        print(f"{i:>4} {int(gt.sum()):>10} {times[0]:>9.3f} {times[1]:>9.3f} {times[0] / times[1]:>7.1f}x "
              f"{times[2]:>13.3f} {times[3]:>8.3f} {abs(ours - reference):>8.1e}")
    print(f"mean {'':>10} {totals[0] / args.cases:>9.3f} {totals[1] / args.cases:>9.3f} "
          f"{totals[0] / totals[1]:>7.1f}x {totals[2] / args.cases:>13.3f} {totals[3] / args.cases:>8.3f}")
    print("times are wall-clock seconds on one thread (CPU s: process time of all metrics)")


if __name__ == "__main__":
    main()
