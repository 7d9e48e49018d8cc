"""Overlap-tile geometry: where the tiles of a slice are, and what each tile's network input is.

The predictor (:mod:`napari_unetkit.prediction`) and the chunked runner
(:mod:`napari_unetkit.chunked`) cut slices into tiles only through this module; it computes
positions and padding and runs nothing.

Overlap-tile strategy (Ronneberger et al. 2015)
    A slice larger than one tile is cut into tiles whose *core* (at most ``tile_size`` pixels,
    a multiple of the network's down-sampling factor ``2**depth``) is surrounded by up to
    ``halo`` pixels of context on each side. Tiles run in batches (tiles of equal window shape
    together) and only each tile's core is written back. The halo is a multiple of
    ``2**depth`` too, so every tile sits on the same max-pooling grid as the whole image would,
    and the tiled result matches a whole-image pass wherever the halo covers the network's
    effective context.

Image border (``border``)
    ``"network"`` (default): the result is that of one plain call of the network on the whole
    slice, ``model.eval()(image)``: the slice is padded only as :meth:`UNet.forward
    <napari_unetkit.model.UNet.forward>` pads it (mirrored, up to a multiple of ``2**depth``),
    every convolution zero-pads at the slice border as it does in training patches, and tiles
    get context on their inner sides only, so a slice that fits one tile costs one plain pass.
    This is also what training validation computes for small slices. ``"mirror"``: the paper's
    choice, context beyond the border is the image mirrored by the halo, so border pixels see
    image-like context; it costs ``((core + 2 halo) / core)**2`` times the work even for a
    slice that fits one tile, and changes probabilities within about a halo of the border.

Halo
    Tiles start on multiples of ``2**depth``, so a core pixel needs less context than the
    worst-case receptive field of :func:`napari_unetkit.model.receptive_halo`:
    :func:`exact_halo` is the smallest halo that makes tiled and whole-image prediction
    identical. The default, :func:`default_halo`, is ``min(exact_halo, DEFAULT_MAX_HALO)``
    rounded up to a multiple of ``2**depth``: exact for the default depth 4 (96 px) and up to
    depth 5 with transposed convolutions, bounded for deeper networks. A smaller halo trades
    seam accuracy for speed.

Automatic tile size
    See :func:`auto_tile_size`: the largest core whose input tile (core plus both halos) fits a
    memory budget under a rough per-pixel activation estimate, clamped to
    ``[MIN_AUTO_TILE, MAX_AUTO_TILE_CPU]`` on CPU/MPS and ``[MIN_AUTO_TILE, MAX_AUTO_TILE_CUDA]``
    on CUDA, where the budget is a fraction of the free GPU memory.

The measurements behind the default halo, the tile sizes and the border:
``docs/performance.md``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from napari_unetkit.model import UNetConfig, pad_to_multiple, receptive_interval

Border = Literal["network", "mirror"]
BORDERS = ("network", "mirror")

#: Upper bound of the default halo in pixels (exact up to depth 5).
DEFAULT_MAX_HALO = 192
#: Smallest and largest automatic tile core sizes in pixels (a 1024 x 1024 slice is one tile).
MIN_AUTO_TILE = 128
MAX_AUTO_TILE_CPU = 1024
MAX_AUTO_TILE_CUDA = 1024
#: Memory the activations of one tile batch may use on CPU or MPS.
CPU_MEMORY_BUDGET = 1024**3
#: Fraction of the free CUDA memory one tile batch may use.
CUDA_MEMORY_FRACTION = 0.5
#: Rough number of full-resolution feature maps of ``base_channels`` alive at the peak of a
#: forward pass (skip features, concatenation, convolution outputs, the coarser levels).
ACTIVATION_MAPS = 8


def round_up(value: int, multiple: int) -> int:
    """Return the smallest multiple of ``multiple`` that is at least ``value``."""
    return -(-value // multiple) * multiple


def exact_halo(config: UNetConfig) -> int:
    """Return the smallest tile margin that makes tiled prediction equal whole-image prediction.

    A tile core starts and ends on multiples of ``2**depth``, so the margin needed is the
    largest distance by which the receptive interval of a core pixel
    (:func:`napari_unetkit.model.receptive_interval`) reaches past the core's start or end,
    over the ``2**depth`` pixel positions of a pooling block. This holds for ``norm="batch"``
    in eval mode and ``norm="none"``; group normalisation uses statistics of the whole tile.

    Parameters
    ----------
    config : UNetConfig
        The architecture.

    Returns
    -------
    int
        Margin in pixels (94 for depth 4 with transposed convolutions, 110 with bilinear
        up-sampling), not yet rounded to the pooling grid.
    """
    factor = config.downsampling_factor
    intervals = [receptive_interval(config, position) for position in range(factor)]
    before = max(-first for first, _ in intervals)
    after = max(last - (factor - 1) for _, last in intervals)
    return max(before, after, 0)


def default_halo(config: UNetConfig) -> int:
    """Return the default tile margin, ``min(exact_halo, DEFAULT_MAX_HALO)``, grid-aligned.

    Parameters
    ----------
    config : UNetConfig
        The architecture.

    Returns
    -------
    int
        Halo in pixels, rounded up to a multiple of ``2**depth`` (96 for the default depth 4).
    """
    halo = min(exact_halo(config), DEFAULT_MAX_HALO)
    return round_up(halo, config.downsampling_factor)


def _bytes_per_pixel(config: UNetConfig) -> int:
    """Rough activation memory of one input pixel during a float32 forward pass."""
    return 4 * ACTIVATION_MAPS * max(config.base_channels, config.in_channels, config.n_classes)


def auto_tile_size(config: UNetConfig, halo: int, device: torch.device, batch_size: int = 1) -> int:
    """Choose a tile core size from the memory available.

    The input tile is ``core + 2 * halo`` pixels square; one batch needs about
    ``batch_size * side**2 * 4 * ACTIVATION_MAPS * base_channels`` bytes. The budget is
    ``CUDA_MEMORY_FRACTION`` of the free memory on CUDA (``torch.cuda.mem_get_info``) and
    ``CPU_MEMORY_BUDGET`` elsewhere. The core is the largest multiple of ``2**depth`` that fits,
    clamped to ``[MIN_AUTO_TILE, MAX_AUTO_TILE_CUDA]`` on CUDA and
    ``[MIN_AUTO_TILE, MAX_AUTO_TILE_CPU]`` on CPU/MPS.

    Parameters
    ----------
    config : UNetConfig
        The architecture.
    halo : int
        Margin on each side of the core, in pixels.
    device : torch.device
        Where the network runs.
    batch_size : int
        Tiles per forward pass.

    Returns
    -------
    int
        Core size in pixels, a multiple of ``2**depth``.
    """
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        budget, upper = CUDA_MEMORY_FRACTION * free, MAX_AUTO_TILE_CUDA
    else:
        budget, upper = CPU_MEMORY_BUDGET, MAX_AUTO_TILE_CPU
    side = math.isqrt(int(budget // (batch_size * _bytes_per_pixel(config))))
    core = min(max(side - 2 * halo, MIN_AUTO_TILE), upper)
    factor = config.downsampling_factor
    return max(factor, core // factor * factor)


def _axis_cores(length: int, tile: int, factor: int) -> list[tuple[int, int]]:
    """Split ``[0, length)`` (a multiple of ``factor``) into ``ceil(length / tile)`` cores.

    The cores are runs of whole ``factor``-pixel blocks, as equal as possible (sizes differ by
    at most ``factor``) and never longer than ``tile`` (itself a multiple of ``factor``).
    """
    blocks = length // factor
    count = -(-length // tile)
    base, extra = divmod(blocks, count)
    cores, start = [], 0
    for i in range(count):
        stop = start + (base + (i < extra)) * factor
        cores.append((start, stop))
        start = stop
    return cores


def reflect_indices(start: int, stop: int, size: int) -> np.ndarray:
    """Return the indices ``start..stop-1`` mirrored into ``[0, size)`` (edge not repeated).

    Beyond one reflection the mirroring repeats periodically, so any padding works even for
    tiny images; an axis of length 1 is replicated.
    """
    index = np.arange(start, stop)
    if size == 1:
        return np.zeros_like(index)
    period = 2 * (size - 1)
    index = np.mod(index, period)
    return np.where(index >= size, period - index, index)


@dataclass(frozen=True)
class Tile:
    """One tile of a slice.

    Attributes
    ----------
    y, x : int
        Where the part of the slice this tile predicts starts.
    height, width : int
        Size of that part (the tile's core, clipped to the slice).
    window : tuple of int
        ``(top, bottom, left, right)``: the network's input, rows ``top:bottom`` and columns
        ``left:right`` of the padded slice (see :func:`tile_layout`): the core plus
        up to ``halo`` pixels of context on each side.
    offset : tuple of int
        Where the predicted part starts inside the window.
    """

    y: int
    x: int
    height: int
    width: int
    window: tuple[int, int, int, int]
    offset: tuple[int, int]

    @property
    def window_shape(self) -> tuple[int, int]:
        """``(rows, columns)`` of the network input."""
        top, bottom, left, right = self.window
        return bottom - top, right - left


def batches(tiles: list[Tile], size: int) -> Iterator[list[Tile]]:
    """Yield batches of up to ``size`` tiles whose windows have the same shape, in tile order."""
    groups: dict[tuple[int, int], list[Tile]] = {}
    for tile in tiles:
        groups.setdefault(tile.window_shape, []).append(tile)
    for group in groups.values():
        for start in range(0, len(group), size):
            yield group[start : start + size]


@dataclass(frozen=True)
class TileGrid:
    """How a slice is cut into tiles.

    Attributes
    ----------
    factor : int
        The network's down-sampling factor ``2**depth``: cores and halos are multiples of it.
    tile_size : int
        Largest core size in pixels (a multiple of ``factor``).
    halo : int
        Context in pixels on each side of a core (a multiple of ``factor``).
    border : {"network", "mirror"}
        What the network sees beyond the slice border (see the module docstring).
    """

    factor: int
    tile_size: int
    halo: int
    border: Border


def axis_padding(size: int, grid: TileGrid) -> tuple[int, int, int]:
    """Return the padding before and after an axis of ``size`` px and where its cores start.

    ``border="network"``: the network's own padding up to a multiple of ``2**depth``
    (:func:`~napari_unetkit.model.pad_to_multiple`), cores cover all of it. ``"mirror"``:
    ``halo`` mirrored pixels on both sides (plus the rounding after), cores start after
    the first halo. Padded pixels mirror the slice (the edge pixel not repeated): pixel ``p``
    of the padded axis is pixel ``p - before`` of the slice, reflected into it.
    """
    total = -size % grid.factor
    if grid.border == "network":
        return total // 2, total - total // 2, 0
    return grid.halo, grid.halo + total, grid.halo


def tile_layout(
    shape: tuple[int, int], grid: TileGrid, region: tuple[int, int, int, int] | None = None
) -> list[Tile]:
    """Return the tiles that cover a slice of ``shape`` (Y, X), or a region of it.

    The slice is first padded (see ``border``); along each axis the padded extent the
    cores cover (a multiple of ``2**depth``) is split into ``ceil(extent / tile_size)``
    cores of whole ``2**depth`` blocks, as equal as possible. Each tile's window is its
    core plus ``halo`` pixels on each side, clipped to the padded slice: with
    ``border="network"`` tiles at the slice border get context on their inner sides only.
    Every core overlaps the slice.

    With ``region = (y0, y1, x0, x1)`` only that rectangle is covered: the cores split the
    smallest run of whole ``2**depth`` blocks of the padded slice that contains it (the
    same pooling grid as the whole slice) and each tile's predicted part is clipped to the
    region. Without it the region is the whole slice.
    """
    factor = grid.factor
    if region is None:
        region = (0, shape[0], 0, shape[1])
    axes = []
    for size, (r0, r1) in zip(shape, (region[:2], region[2:]), strict=True):
        before, after, start = axis_padding(size, grid)
        extent = round_up(size, factor)
        padded = size + before + after
        span0 = max(start, (r0 + before) // factor * factor)
        span1 = min(start + extent, round_up(r1 + before, factor))
        axis = []
        for first, last in _axis_cores(span1 - span0, grid.tile_size, factor):
            first, last = first + span0, last + span0
            low, high = max(first - grid.halo, 0), min(last + grid.halo, padded)
            visible = max(first - before, r0), min(last - before, r1)
            if visible[0] >= visible[1]:
                continue
            axis.append((visible, (low, high), visible[0] + before - low))
        axes.append(axis)
    return [
        Tile(
            y=ry[0],
            x=rx[0],
            height=ry[1] - ry[0],
            width=rx[1] - rx[0],
            window=(*wy, *wx),
            offset=(oy, ox),
        )
        for ry, wy, oy in axes[0]
        for rx, wx, ox in axes[1]
    ]


def pad_slice(image: np.ndarray, grid: TileGrid) -> np.ndarray:
    """Return the ``(C, Y, X)`` slice padded as :func:`tile_layout` assumes.

    No copy is made when nothing is added.
    """
    if grid.border == "network":
        factor = grid.factor
        if all(size % factor == 0 for size in image.shape[1:]):
            return image
        # A contiguous copy: the slice may be a read-only or negatively strided view.
        padded, _ = pad_to_multiple(torch.from_numpy(np.array(image))[None], factor)
        return padded[0].numpy()
    (top, bottom, _), (left, right, _) = (axis_padding(n, grid) for n in image.shape[1:])
    rows = reflect_indices(-top, image.shape[1] + bottom, image.shape[1])
    cols = reflect_indices(-left, image.shape[2] + right, image.shape[2])
    return image[:, rows[:, None], cols[None, :]]
