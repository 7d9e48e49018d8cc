"""Benchmark the boundary weight map against a naive baseline and one full-image EDT.

Run from the repository root::

    python benchmarks/weightmap.py            # 512^2, 1024^2, 2048^2 (naive 2048^2 is slow)
    python benchmarks/weightmap.py --quick    # naive 2048^2 extrapolated from a subset
    python benchmarks/weightmap.py --markdown # table as markdown (for the docs)

Columns: ``project`` = ``boundary_weight_map`` (paper preset, tol 1e-6); ``naive`` = the same
(d1, d2) running minimum but one full-image EDT per instance, then the same weight formula;
``one EDT`` = a single full-image ``scipy.ndimage.distance_transform_edt`` of the background,
the floor for any exact method. ``max abs diff`` compares project and naive weights.
``falk2019`` = ``boundary_weight_map`` with that preset (larger radius: 52 px instead of 28).
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import time
from collections.abc import Callable

import numpy as np
from scipy import ndimage as ndi

from napari_unetkit.weightmap import boundary_weight_map

#: (side, number of cells): about one cell per 59 x 59 pixels.
CASES = ((512, 75), (1024, 300), (2048, 1200))


def touching_cells(side: int, n_cells: int, seed: int = 0) -> np.ndarray:
    """Instance labels of roughly round cells that often touch their neighbours.

    Seeds on a jittered grid; each pixel belongs to its nearest seed (Voronoi regions) if it is
    within that seed's radius, so neighbouring cells whose disks overlap share a straight
    contact line.
    """
    rng = np.random.default_rng(seed)
    per_side = math.ceil(math.sqrt(n_cells))
    step = side / per_side
    grid = (np.arange(per_side) + 0.5) * step
    points = np.stack(np.meshgrid(grid, grid, indexing="ij"), -1).reshape(-1, 2)
    points = points[rng.permutation(len(points))[:n_cells]]
    points += rng.uniform(-0.3 * step, 0.3 * step, points.shape)
    points = np.clip(points.round().astype(int), 0, side - 1)
    seeds = np.ones((side, side), dtype=bool)
    seeds[points[:, 0], points[:, 1]] = False
    distance, (rows, cols) = ndi.distance_transform_edt(seeds, return_indices=True)
    index = np.full((side, side), -1, dtype=np.int64)
    index[points[:, 0], points[:, 1]] = np.arange(n_cells)
    nearest = index[rows, cols]
    radii = rng.uniform(0.45 * step, 0.7 * step, n_cells)
    labels = np.where(distance < radii[nearest], nearest + 1, 0)
    return labels.astype(np.int32)


def naive_weight_map(
    labels: np.ndarray, w0: float = 10.0, sigma: float = 5.0, instances: np.ndarray | None = None
) -> np.ndarray:
    """Paper weights with one full-image EDT per instance (the usual public approach).

    Uses the memory-friendly running (d1, d2) minimum instead of stacking all N maps. With
    ``instances`` (a subset of ids) it only does that part of the work (for extrapolation).
    """
    ids = np.unique(labels)
    ids = ids[ids > 0] if instances is None else instances
    d1 = np.full(labels.shape, np.inf)
    d2 = np.full(labels.shape, np.inf)
    for instance in ids:
        distance = ndi.distance_transform_edt(labels != instance)
        d2 = np.minimum(d2, np.maximum(d1, distance))
        d1 = np.minimum(d1, distance)
    target = labels.copy()
    ridge = np.zeros(labels.shape, dtype=bool)
    padded = np.pad(labels, 1)
    height, width = labels.shape
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            neighbour = padded[1 + dy : 1 + dy + height, 1 + dx : 1 + dx + width]
            ridge |= (neighbour > 0) & (labels > 0) & (neighbour != labels)
    target[ridge] = 0
    foreground = target > 0
    n = foreground.size
    n_fg = int(foreground.sum())
    counts = [n - n_fg, n_fg]
    k = sum(c > 0 for c in counts)
    w_bg, w_fg = (n / (k * c) if c else 1.0 for c in counts)
    weights = np.where(foreground, w_fg, w_bg)
    border = w0 * np.exp(-((d1 + d2) ** 2) / (2 * sigma**2))
    weights += np.where(foreground, 0.0, border)
    return weights.astype(np.float32)


def one_edt(labels: np.ndarray) -> np.ndarray:
    return ndi.distance_transform_edt(labels == 0)


def best_time(function: Callable[[], object], repeats: int) -> tuple[float, object]:
    best, result = math.inf, None
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        best = min(best, time.perf_counter() - start)
    return best, result


def naive_time(labels: np.ndarray, extrapolate: bool, repeats: int) -> tuple[float, bool, object]:
    """Time the naive method; with ``extrapolate`` time 40 instances and scale up."""
    ids = np.unique(labels)
    ids = ids[ids > 0]
    if not extrapolate:
        seconds, weights = best_time(lambda: naive_weight_map(labels), repeats)
        return seconds, False, weights
    subset = ids[:40]
    with_subset, _ = best_time(lambda: naive_weight_map(labels, instances=subset), repeats)
    with_none, _ = best_time(lambda: naive_weight_map(labels, instances=ids[:0]), repeats)
    per_instance = (with_subset - with_none) / len(subset)
    return with_none + per_instance * len(ids), True, None


def run(quick: bool, repeats: int) -> list[dict]:
    rows = []
    for side, n_cells in CASES:
        labels = touching_cells(side, n_cells)
        t_project, weights = best_time(lambda labels=labels: boundary_weight_map(labels), repeats)
        t_project_1, _ = best_time(
            lambda labels=labels: boundary_weight_map(labels, workers=1), repeats
        )
        t_falk, _ = best_time(
            lambda labels=labels: boundary_weight_map(labels, preset="falk2019"), repeats
        )
        t_edt, _ = best_time(lambda labels=labels: one_edt(labels), repeats)
        extrapolate = quick and side >= 2048
        t_naive, extrapolated, naive = naive_time(labels, extrapolate, 1 if side >= 1024 else 2)
        diff = math.nan if naive is None else float(np.abs(weights - naive).max())
        rows.append(
            {
                "image": f"{side}x{side}",
                "cells": len(np.unique(labels)) - 1,
                "project": t_project,
                "project_1": t_project_1,
                "falk": t_falk,
                "naive": t_naive,
                "extrapolated": extrapolated,
                "edt": t_edt,
                "diff": diff,
            }
        )
    return rows


HEADER = (
    "image",
    "cells",
    "project (s)",
    "naive (s)",
    "one EDT (s)",
    "naive / project",
    "project / one EDT",
    "max abs diff",
    "falk2019 (s)",
)


def table_cells(row: dict) -> list[str]:
    naive = f"{row['naive']:.2f}" + (" (extrapolated)" if row["extrapolated"] else "")
    diff = "n/a" if math.isnan(row["diff"]) else f"{row['diff']:.1e}"
    return [
        row["image"],
        str(row["cells"]),
        f"{row['project']:.3f}",
        naive,
        f"{row['edt']:.3f}",
        f"{row['naive'] / row['project']:.0f}x",
        f"{row['project'] / row['edt']:.1f}x",
        diff,
        f"{row['falk']:.3f}",
    ]


def print_table(rows: list[dict], markdown: bool) -> None:
    cells = [table_cells(row) for row in rows]
    if markdown:
        print("| " + " | ".join(HEADER) + " |")
        print("|" + "|".join(" --- " for _ in HEADER) + "|")
        for line in cells:
            print("| " + " | ".join(line) + " |")
        return
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(HEADER)]
    print("  ".join(h.rjust(w) for h, w in zip(HEADER, widths, strict=True)))
    for line in cells:
        print("  ".join(c.rjust(w) for c, w in zip(line, widths, strict=True)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="extrapolate naive at 2048^2")
    parser.add_argument("--markdown", action="store_true", help="print a markdown table")
    parser.add_argument("--repeats", type=int, default=3, help="best of this many runs")
    args = parser.parse_args()
    rows = run(args.quick, args.repeats)
    print_table(rows, args.markdown)
    print()
    print(
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, "
        f"Python {platform.python_version()}, NumPy {np.__version__}. project = default "
        f"settings (paper preset, tol 1e-6, threads = {os.cpu_count()}); project with 1 "
        f"thread: " + ", ".join(f"{row['image']} {row['project_1']:.3f} s" for row in rows) + "."
    )


if __name__ == "__main__":
    main()
