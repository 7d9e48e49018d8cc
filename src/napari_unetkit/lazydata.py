"""Training data larger than memory: patches read from a lazy store, weights made per patch.

The in-memory path (:mod:`napari_unetkit.data`) normalises every annotated slice and computes its
target and weight map once. For a zarr store, a big TIFF (read through ``tifffile``'s zarr
interface), a dask array or any array too large for that, :func:`prepare_lazy_training_data`
returns a :class:`LazyTrainingData` instead; :func:`napari_unetkit.training.train` uses it
through the same loop (it samples from :class:`LazyPatchSampler`, a
:class:`~napari_unetkit.data.PatchSampler`). What is read, and when:

* **Labels** (and region masks) are scanned once, tile by tile (:data:`SCAN_TILE` px, with a
  1 px halo for the separating ridge), to check them and to count, per cell of
  :data:`CELL` x :data:`CELL` px, the annotated and the foreground pixels: the index patches
  are drawn from, and the per-slice class counts the class-balance weights need. Memory: one
  tile, plus a few numbers per annotated cell.
* **Normalisation**: the percentiles of each image are estimated from at most
  :data:`NORMALIZATION_BLOCKS` blocks of :data:`NORMALIZATION_BLOCK` px drawn at random (all
  blocks when there are no more; then images of up to 4 million pixels and 32 slices get the
  in-memory figures exactly).
* **Patches**: each patch is read from the store at a random annotated position (uniform over
  the annotated pixels, or over the foreground ones with ``foreground_bias``, as in memory),
  with the augmentation margin around it; its labels are read with a further margin of
  :meth:`LazyTrainingData.weight_margin` px, from which the separated target and the boundary
  weight map are computed for the patch alone.
* **Validation**: one window of at most :data:`VALIDATION_SIZE` px (its area about
  ``fraction`` of the annotated pixels), centred on annotated foreground, read once; training
  gives weight 0 to it and to :data:`~napari_unetkit.data.VALIDATION_MARGIN` px around it.

What is exact and what is approximate:

* The separated target, the class term of the weights (from the whole slice's counts) and the
  border term ``w0 exp(-(d1 + d2)^2 / (2 sigma^2))`` equal the in-memory weight map of the whole
  slice exactly wherever the distances ``d1``, ``d2`` that matter lie within the weight margin:
  the margin covers the weight map's own cut-off radius
  (:meth:`~napari_unetkit.weightmap.WeightMapSettings.radius`) unless that exceeds
  :data:`MAX_WEIGHT_MARGIN` px (only with ``tol`` near 0 or a very wide ``sigma``); then
  instances farther than the margin from the patch are not seen and the border term there is
  smaller than in memory.
* The normalisation percentiles are estimated from a sample (see above), not from every pixel.
* The validation data is one window, not whole slices or a band as in memory.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path
from threading import Event
from typing import Any

import numpy as np

from napari_unetkit import layout
from napari_unetkit.augmentation import AugmentationSettings
from napari_unetkit.checks import negative_labels_problem
from napari_unetkit.data import (
    MAX_CLASSES,
    MIN_VALIDATION_BAND,
    MODES,
    VALIDATION_MARGIN,
    PatchSampler,
    TrainingSlice,
    _as_array,
    _as_int32_instances,
    _check_pair,
    _class_names,
    _n_classes,
    _padded_range,
    _pair_info,
    _patch_shape,
    _resolve_weightmap,
    data_summary,
    per_class_weights,
)
from napari_unetkit.normalization import NormalizationSettings, apply_percentiles
from napari_unetkit.progress import check_cancel
from napari_unetkit.weightmap import (
    WeightMapSettings,
    class_weights_from_counts,
    separate_instances,
    weights_and_target,
)

__all__ = [
    "LAZY_MIN_PIXELS",
    "LazyPatchSampler",
    "LazySlice",
    "LazyTrainingData",
    "LazyTrainingSet",
    "open_training_file",
    "prepare_lazy_training_data",
    "sample_percentiles",
    "wants_lazy",
]

#: Labels with at least this many pixels (8192 x 8192) train lazily even when in memory: the
#: in-memory path would hold about 20 bytes per pixel (image, target, weights, indices).
LAZY_MIN_PIXELS = 2**26
#: Side of the cells of the annotation index (pixels).
CELL = 256
#: Side of the tiles in which labels are scanned (a multiple of :data:`CELL`).
SCAN_TILE = 2048
#: Side of the blocks the normalisation percentiles are estimated from.
NORMALIZATION_BLOCK = 256
#: At most this many blocks are read per image for the percentiles.
NORMALIZATION_BLOCKS = 64
#: Largest margin (pixels) read around a patch to compute its weight map.
MAX_WEIGHT_MARGIN = 128
#: Largest side of the held-out validation window (pixels).
VALIDATION_SIZE = 1024


def _is_zarr(array: Any) -> bool:
    return type(array).__module__.split(".")[0] == "zarr"


def wants_lazy(pairs: Sequence[tuple[Any, Any]]) -> bool:
    """Whether training on these pairs should read them lazily.

    Always for zarr arrays (a zarr store, a TIFF opened through ``tifffile``'s zarr interface);
    otherwise (NumPy, memory-mapped, dask) when some labels have at least
    :data:`LAZY_MIN_PIXELS` pixels.

    Parameters
    ----------
    pairs : sequence of (array-like, array-like)
        Images and labels.

    Returns
    -------
    bool
        True for :func:`prepare_lazy_training_data`, False for the in-memory path.
    """
    for image, labels in pairs:
        if _is_zarr(image) or _is_zarr(labels):
            return True
        if math.prod(np.shape(labels)) >= LAZY_MIN_PIXELS:
            return True
    return False


def _stored_pixels(path: Path) -> int:
    """Pixels a TIFF or .npy file holds, from its header (0 when it cannot be told)."""
    try:
        if path.suffix.lower() == ".npy":
            return math.prod(np.load(path, mmap_mode="r", allow_pickle=False).shape)
        import tifffile

        with tifffile.TiffFile(path) as tif:
            return math.prod(tif.series[0].shape)
    except Exception:  # any unreadable file: io.read_image says what is wrong with it
        return 0


def open_training_file(path: str | os.PathLike, stack: ExitStack) -> Any:
    """Open an image, labels or region file for training: lazily when large or a zarr store.

    A zarr store (``.zarr``, OME-Zarr) is always opened lazily; a TIFF or ``.npy`` file of at
    least :data:`LAZY_MIN_PIXELS` pixels too (through ``tifffile``'s zarr interface, or
    memory-mapped); smaller files are read into memory by :func:`napari_unetkit.io.read_image`.

    Parameters
    ----------
    path : str or os.PathLike
        The file.
    stack : contextlib.ExitStack
        Lazily opened files stay open until it closes.

    Returns
    -------
    array-like
        A NumPy array, or a lazy array (zarr, memory-mapped).
    """
    from napari_unetkit import bigio
    from napari_unetkit.io import read_image

    path = Path(path)
    if bigio.is_zarr_path(path) or _stored_pixels(path) >= LAZY_MIN_PIXELS:
        return stack.enter_context(bigio.open_image(path)).array
    return read_image(path)


# --------------------------------------------------------------------------------------------
# Normalisation from a sample of blocks
# --------------------------------------------------------------------------------------------


def sample_percentiles(
    image: Any,
    channel_axis: int | None,
    settings: NormalizationSettings,
    seed: int = 0,
    blocks: int | None = None,
    block: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Estimate the per-channel percentiles of an image from a random sample of blocks.

    The image's slices are cut into a grid of ``block`` x ``block`` px blocks; ``blocks`` of
    them (all, if there are no more) are read and their pixels pooled.

    Parameters
    ----------
    image : array-like
        The image (read only where sampled).
    channel_axis : int or None
        Its channel axis.
    settings : NormalizationSettings
        Which percentiles.
    seed : int
        Seed of the choice of blocks.
    blocks, block : int, optional
        How many blocks, and their side (default :data:`NORMALIZATION_BLOCKS`,
        :data:`NORMALIZATION_BLOCK`).

    Returns
    -------
    low, high : numpy.ndarray
        float64 ``(C,)`` percentiles of every channel.
    constant : numpy.ndarray
        bool ``(C,)``: whether the channel holds one value in every sampled pixel.

    Raises
    ------
    ValueError
        If a sampled pixel is NaN or infinite.
    """
    blocks = NORMALIZATION_BLOCKS if blocks is None else blocks
    block = NORMALIZATION_BLOCK if block is None else block
    indices = layout.slice_indices(tuple(image.shape), channel_axis)
    height, width = layout.slice_shape(tuple(image.shape), channel_axis)
    rows, cols = math.ceil(height / block), math.ceil(width / block)
    total = len(indices) * rows * cols
    picks = np.arange(total)
    if total > blocks:
        picks = np.sort(np.random.default_rng(seed).choice(total, size=blocks, replace=False))
    parts = []
    for pick in picks.tolist():
        number, rest = divmod(pick, rows * cols)
        by, bx = divmod(rest, cols)
        window = (slice(by * block, (by + 1) * block), slice(bx * block, (bx + 1) * block))
        parts.append(np.asarray(layout.get_slice(image, indices[number], channel_axis, *window)))
    n_channels = parts[0].shape[0]
    low, high = np.empty(n_channels), np.empty(n_channels)
    constant = np.zeros(n_channels, dtype=bool)
    for channel in range(n_channels):
        values = np.concatenate([part[channel].ravel() for part in parts])
        if np.issubdtype(values.dtype, np.floating) and not np.isfinite(values).all():
            raise ValueError(
                "The image contains NaN or infinite values; replace them (e.g. by 0) first."
            )
        low[channel], high[channel] = np.percentile(values, [settings.low, settings.high])
        constant[channel] = values.min() == values.max()
    return low, high, constant


# --------------------------------------------------------------------------------------------
# The index of annotated cells
# --------------------------------------------------------------------------------------------


@dataclass(eq=False)
class LazySlice:
    """One annotated 2D slice of a lazily read pair, with its annotation index.

    Attributes
    ----------
    pair : int
        Index of the pair.
    index : tuple of int
        The slice's position along the image's slice axes (``()`` for a 2D image).
    shape : tuple of int
        ``(Y, X)`` size of the slice.
    cells : numpy.ndarray
        int64 ``(n, 2)``: (row, column) of the :data:`CELL` px cells holding annotation.
    annotated : numpy.ndarray
        int64 ``(n,)``: annotated pixels (positive loss weight) of each cell, hidden ones
        excluded.
    foreground : numpy.ndarray
        int64 ``(n,)``: annotated foreground pixels (class index > 0) of each cell.
    class_counts : numpy.ndarray
        int64 pixels per class index over the slice's annotated pixels (before any validation
        window is hidden): what the class-balance weights are computed from.
    hidden : tuple of int or None
        ``(y0, y1, x0, x1)``: a rectangle whose weights are 0 in training (the validation
        window and its margin).
    """

    pair: int
    index: tuple[int, ...]
    shape: tuple[int, int]
    cells: np.ndarray
    annotated: np.ndarray
    foreground: np.ndarray
    class_counts: np.ndarray
    hidden: tuple[int, int, int, int] | None = None

    @property
    def n_annotated(self) -> int:
        """Number of annotated pixels training may use."""
        return int(self.annotated.sum())

    @property
    def source(self) -> tuple[int, tuple[int, ...]]:
        """``(pair, slice index)``, as :attr:`~napari_unetkit.data.TrainingSlice.source`."""
        return self.pair, self.index


def _cell_sums(mask: np.ndarray) -> np.ndarray:
    """Pixel counts of ``mask`` per :data:`CELL` x :data:`CELL` cell (int64, partial at ends)."""
    rows, cols = math.ceil(mask.shape[0] / CELL), math.ceil(mask.shape[1] / CELL)
    padded = np.zeros((rows * CELL, cols * CELL), dtype=np.int64)
    padded[: mask.shape[0], : mask.shape[1]] = mask
    return padded.reshape(rows, CELL, cols, CELL).sum(axis=(1, 3))


@dataclass(eq=False)
class _Source:
    """One lazily read pair and its normalisation."""

    image: Any
    labels: Any
    region: Any | None
    low: np.ndarray
    high: np.ndarray


@dataclass(eq=False)
class _Annotation:
    """What a rectangle of labels says: annotated and foreground masks, labels, region."""

    annotated: np.ndarray
    foreground: np.ndarray
    labels: np.ndarray


# --------------------------------------------------------------------------------------------
# LazyTrainingData
# --------------------------------------------------------------------------------------------


@dataclass(eq=False)
class LazyTrainingData:
    """Training data read from lazy arrays on demand (see the module docstring).

    The attributes :func:`napari_unetkit.training.train` reads are those of
    :class:`~napari_unetkit.data.TrainingData`; ``slices`` holds :class:`LazySlice` indexes
    instead of arrays.

    Attributes
    ----------
    slices : list of LazySlice
        The annotated slices, in pair order then slice order.
    n_classes, in_channels, mode, class_names, normalization, weightmap, pairs, channels,
    source_channels, empty_channels
        As in :class:`~napari_unetkit.data.TrainingData` (``empty_channels`` from the
        normalisation sample).
    channel_axis : int or None
        The images' channel axis.
    """

    slices: list[LazySlice]
    n_classes: int
    in_channels: int
    mode: str
    class_names: tuple[str, ...]
    normalization: NormalizationSettings
    weightmap: WeightMapSettings | None
    pairs: list[dict]
    channels: list[int] | None
    source_channels: int
    empty_channels: list[int]
    channel_axis: int | None
    sources: list[_Source] = field(repr=False, default_factory=list)

    def __len__(self) -> int:
        return len(self.slices)

    @property
    def weight_margin(self) -> int:
        """Pixels of labels read around a window for its weights (see the module docstring)."""
        if self.weightmap is None:
            return 0
        spacing = min(self.weightmap.spacing or (1.0, 1.0))
        radius = self.weightmap.radius() / spacing
        return (
            MAX_WEIGHT_MARGIN
            if not math.isfinite(radius)
            else min(math.ceil(radius) + 2, MAX_WEIGHT_MARGIN)
        )

    def summary(self) -> dict:
        """Return the description :meth:`~napari_unetkit.data.TrainingData.summary` gives.

        Returns
        -------
        dict
            The same keys, from the annotation index (``"lazy": True`` added).
        """
        class_pixels = np.zeros(self.n_classes, dtype=np.int64)
        for s in self.slices:
            class_pixels[: s.class_counts.size] += s.class_counts[: self.n_classes]
        return {**data_summary(self, class_pixels), "lazy": True}

    # ------------------------------------------------------------------ reading

    def _read(self, array: Any, s: LazySlice, rows: slice, cols: slice) -> np.ndarray:
        return np.asarray(array[(*s.index, rows, cols)])

    def annotation(self, s: LazySlice, y0: int, y1: int, x0: int, x1: int) -> _Annotation:
        """Read what the labels of a rectangle of slice ``s`` say (hidden pixels included).

        Parameters
        ----------
        s : LazySlice
            The slice (``cells`` etc. are not used: this is also how they are made).
        y0, y1, x0, x1 : int
            The rectangle, inside the slice.

        Returns
        -------
        _Annotation
            ``annotated``: pixels with a loss weight (inside the region, not ignored;
            instances mode without a region: every pixel not of the ignore label);
            ``foreground``: annotated pixels of class index > 0 (the separated foreground in
            instances mode); ``labels``: the labels of the rectangle.

        Raises
        ------
        ValueError
            For negative labels.
        """
        source = self.sources[s.pair]
        height, width = s.shape
        halo = 1 if self.mode == "instances" else 0
        ry0, ry1 = max(y0 - halo, 0), min(y1 + halo, height)
        rx0, rx1 = max(x0 - halo, 0), min(x1 + halo, width)
        labels = self._read(source.labels, s, slice(ry0, ry1), slice(rx0, rx1))
        _check_negative(labels, s, self.mode)
        inner = (slice(y0 - ry0, y1 - ry0), slice(x0 - rx0, x1 - rx0))
        region = None
        if source.region is not None:
            region = self._read(source.region, s, slice(ry0, ry1), slice(rx0, rx1)) != 0
        if self.mode == "classes":
            annotated = labels > 0 if region is None else (labels > 0) & region
            return _Annotation(annotated[inner], (annotated & (labels >= 2))[inner], labels[inner])
        ignored = None if region is None else ~region
        if self.weightmap.ignore is not None:
            by_label = labels == self.weightmap.ignore
            ignored = by_label if ignored is None else ignored | by_label
        instances = labels if ignored is None else np.where(ignored, 0, labels)
        separated = separate_instances(instances) if self.weightmap.separate else instances
        annotated = np.ones(labels.shape, dtype=bool) if ignored is None else ~ignored
        return _Annotation(annotated[inner], (separated > 0)[inner], labels[inner])

    def _settings_for(self, s: LazySlice) -> WeightMapSettings:
        """Return the weight-map settings with the slice's class weights made explicit."""
        settings = self.weightmap
        if settings.class_balance == "falk" or isinstance(settings.class_balance, tuple):
            return settings
        n_background, n_foreground = (int(n) for n in s.class_counts[:2])
        weights = class_weights_from_counts(n_background, n_foreground, settings.class_balance)
        return replace(settings, class_balance=weights)

    def window(
        self, s: LazySlice, top: int, left: int, shape: tuple[int, int], hide: bool = True
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        """Read a window of slice ``s``: what the in-memory path cuts from a prepared slice.

        Parameters
        ----------
        s : LazySlice
            The slice.
        top, left : int
            First pixel of the window (it may start or end outside the slice).
        shape : tuple of int
            ``(h, w)`` of the window.
        hide : bool
            Give weight 0 to ``s.hidden`` (training); False for the validation window.

        Returns
        -------
        image : numpy.ndarray
            float32 ``(C, h, w)``, normalised; mirrored (reflect) where the window leaves the
            slice.
        target : numpy.ndarray
            int64 ``(h, w)``; 0 outside the slice.
        weights : numpy.ndarray
            float32 ``(h, w)``; 0 outside the slice (see the module docstring for exactness).
        instances : numpy.ndarray or None
            int32 labels of the window (instances mode), 0 outside the slice.
        """
        height, width = s.shape
        rows, pad_y = _padded_range(top, shape[0], height)
        cols, pad_x = _padded_range(left, shape[1], width)
        target, weights, instances = self._targets(s, rows, cols)
        if hide and s.hidden is not None:
            y0, y1, x0, x1 = s.hidden
            hy = slice(max(y0 - rows.start, 0), max(min(y1, rows.stop) - rows.start, 0))
            hx = slice(max(x0 - cols.start, 0), max(min(x1, cols.stop) - cols.start, 0))
            weights[hy, hx] = 0.0
        source = self.sources[s.pair]
        pick = slice(None) if self.channels is None else self.channels
        raw = np.asarray(layout.get_slice(source.image, s.index, self.channel_axis, rows, cols))
        image = apply_percentiles(raw[pick], source.low, source.high)
        if pad_y != (0, 0) or pad_x != (0, 0):
            image = np.pad(image, ((0, 0), pad_y, pad_x), mode="reflect")
            target, weights = np.pad(target, (pad_y, pad_x)), np.pad(weights, (pad_y, pad_x))
            if instances is not None:
                instances = np.pad(instances, (pad_y, pad_x))
        return image, target, weights, instances

    def _targets(
        self, s: LazySlice, rows: slice, cols: slice
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Target, weights and instances of a rectangle inside the slice."""
        source = self.sources[s.pair]
        if self.mode == "classes":
            labels = self._read(source.labels, s, rows, cols)
            _check_negative(labels, s, self.mode)
            annotated = labels > 0
            if source.region is not None:
                annotated &= self._read(source.region, s, rows, cols) != 0
            target = np.where(annotated, labels.astype(np.int64) - 1, 0)
            weights = np.zeros(target.shape, dtype=np.float32)
            weights[annotated] = per_class_weights(s.class_counts)[target[annotated]]
            return target, weights, None
        height, width = s.shape
        margin = self.weight_margin
        y0, y1 = max(rows.start - margin, 0), min(rows.stop + margin, height)
        x0, x1 = max(cols.start - margin, 0), min(cols.stop + margin, width)
        labels = self._read(source.labels, s, slice(y0, y1), slice(x0, x1))
        _check_negative(labels, s, self.mode)
        options: dict[str, Any] = {}
        if source.region is not None:
            # As in memory: outside the region nothing is known (weight 0, not an instance).
            ignored = self._read(source.region, s, slice(y0, y1), slice(x0, x1)) == 0
            if self.weightmap.ignore is not None:
                ignored |= labels == self.weightmap.ignore
            options["ignore"] = ignored
        weights, separated = weights_and_target(
            labels, settings=self._settings_for(s), workers=1, **options
        )
        inner = (slice(rows.start - y0, rows.stop - y0), slice(cols.start - x0, cols.stop - x0))
        target = (separated[inner] > 0).astype(np.int64)
        instances = _as_int32_instances(labels[inner])
        return target, weights[inner].astype(np.float32, copy=True), instances

    # ------------------------------------------------------------------ validation split

    def split(
        self, fraction: float = 0.2, seed: int = 0, *, margin: int = VALIDATION_MARGIN
    ) -> tuple[LazyTrainingSet, list[TrainingSlice]]:
        """Hold out one validation window; return the training set and the validation slice.

        The window has about ``fraction`` of the annotated pixels (a square, at most
        :data:`VALIDATION_SIZE` px a side, at least
        :data:`~napari_unetkit.data.MIN_VALIDATION_BAND`), in a slice and around a cell
        chosen at random by ``seed`` in proportion to their annotated foreground. It is read
        once, into memory; training gives weight 0 to it and ``margin`` px around it. Without
        a usable window (too small, nothing annotated in it, or nothing left for training)
        a ``UserWarning`` says so and there is no validation.

        Parameters
        ----------
        fraction : float
            ``0 <= fraction < 1``; 0: no validation.
        seed : int
            Seed of the window's position.
        margin : int
            Pixels between the window and the nearest training weight.

        Returns
        -------
        train : LazyTrainingSet
            The slices to sample training patches from.
        validation : list of TrainingSlice
            The window (or nothing).

        Raises
        ------
        ValueError
            If ``fraction`` is not in ``[0, 1)`` or ``margin`` is negative.
        """
        if not 0.0 <= fraction < 1.0:
            raise ValueError(f"The validation fraction must be in [0, 1), got {fraction!r}.")
        if margin < 0:
            raise ValueError(f"margin must be >= 0, got {margin!r}.")
        slices = list(self.slices)
        if fraction == 0.0 or not slices:
            return LazyTrainingSet(self, slices), []
        rng = np.random.default_rng(seed)
        side = min(round(math.sqrt(fraction * sum(s.n_annotated for s in slices))), VALIDATION_SIZE)
        chosen = np.array([s.foreground.sum() for s in slices], dtype=np.float64)
        if chosen.sum() == 0:
            chosen = np.array([s.n_annotated for s in slices], dtype=np.float64)
        k = int(rng.choice(len(slices), p=chosen / chosen.sum()))
        s = slices[k]
        counts = s.foreground if s.foreground.sum() else s.annotated
        cell = s.cells[int(rng.choice(len(counts), p=counts / counts.sum()))]
        height, width = min(side, s.shape[0]), min(side, s.shape[1])
        if min(height, width) < MIN_VALIDATION_BAND:
            return self._no_validation(slices, f"a window of {side} px is under 16 px")
        centre = np.minimum(cell * CELL + CELL // 2, np.array(s.shape) - 1)
        top = int(np.clip(centre[0] - height // 2, 0, s.shape[0] - height))
        left = int(np.clip(centre[1] - width // 2, 0, s.shape[1] - width))
        image, target, weights, instances = self.window(s, top, left, (height, width), hide=False)
        validation = TrainingSlice(
            image, target, weights, instances, source=s.source, origin=(top, left)
        )
        if validation.n_annotated == 0:
            return self._no_validation(slices, "the validation window holds no annotated pixels")
        hidden = (
            max(top - margin, 0),
            min(top + height + margin, s.shape[0]),
            max(left - margin, 0),
            min(left + width + margin, s.shape[1]),
        )
        kept = self._hide(s, hidden)
        rest = slices[:k] + ([kept] if kept.n_annotated else []) + slices[k + 1 :]
        if not rest:
            return self._no_validation(
                slices, "all annotated pixels lie in or next to the validation window"
            )
        return LazyTrainingSet(self, rest), [validation]

    def _no_validation(
        self, slices: list[LazySlice], reason: str
    ) -> tuple[LazyTrainingSet, list[TrainingSlice]]:
        warnings.warn(
            f"No validation window was held out ({reason}); all data is used for training.",
            UserWarning,
            stacklevel=3,
        )
        return LazyTrainingSet(self, slices), []

    def _hide(self, s: LazySlice, hidden: tuple[int, int, int, int]) -> LazySlice:
        """Return ``s`` with the pixels of ``hidden`` taken out of its index."""
        y0, y1, x0, x1 = hidden
        cy0, cx0 = y0 // CELL, x0 // CELL
        ey1, ex1 = min(-(-y1 // CELL) * CELL, s.shape[0]), min(-(-x1 // CELL) * CELL, s.shape[1])
        found = self.annotation(s, cy0 * CELL, ey1, cx0 * CELL, ex1)
        inside = np.zeros(found.annotated.shape, dtype=bool)
        inside[y0 - cy0 * CELL : y1 - cy0 * CELL, x0 - cx0 * CELL : x1 - cx0 * CELL] = True
        lost_annotated = _cell_sums(found.annotated & inside)
        lost_foreground = _cell_sums(found.foreground & inside)
        annotated, foreground = s.annotated.copy(), s.foreground.copy()
        for n, (row, col) in enumerate(s.cells.tolist()):
            r, c = row - cy0, col - cx0
            if 0 <= r < lost_annotated.shape[0] and 0 <= c < lost_annotated.shape[1]:
                annotated[n] -= lost_annotated[r, c]
                foreground[n] -= lost_foreground[r, c]
        keep = annotated > 0
        return replace(
            s,
            cells=s.cells[keep],
            annotated=annotated[keep],
            foreground=foreground[keep],
            hidden=hidden,
        )


def _check_negative(labels: np.ndarray, s: LazySlice, mode: str) -> None:
    message = negative_labels_problem(labels, mode)  # the in-memory path's rule and words
    if message is not None:
        raise ValueError(f"Pair {s.pair + 1}, slice {s.index}: {message}")


class LazyTrainingSet(Sequence):
    """The training part of :class:`LazyTrainingData`: a sequence of :class:`LazySlice`.

    Parameters
    ----------
    data : LazyTrainingData
        Where the slices are read from.
    slices : list of LazySlice
        The slices training samples from (validation window hidden).
    """

    def __init__(self, data: LazyTrainingData, slices: list[LazySlice]) -> None:
        self.data = data
        self._slices = list(slices)

    def __len__(self) -> int:
        return len(self._slices)

    def __getitem__(self, k):  # type: ignore[override]
        return self._slices[k]

    def __iter__(self) -> Iterator[LazySlice]:
        return iter(self._slices)


# --------------------------------------------------------------------------------------------
# Patch sampling
# --------------------------------------------------------------------------------------------


class LazyPatchSampler(PatchSampler):
    """A :class:`~napari_unetkit.data.PatchSampler` reading its patches from lazy arrays.

    Same distribution as in memory: a slice in proportion to its annotated pixels, then an
    annotated pixel uniformly (a foreground one with probability ``foreground_bias``), drawn
    through the cell index (a cell in proportion to its count, then a pixel of the cell; a
    cell is read only when not every pixel of it qualifies). The window around it, with the
    augmentation margin, comes from :meth:`LazyTrainingData.window`.

    Parameters
    ----------
    slices : LazyTrainingSet
        From :meth:`LazyTrainingData.split`.
    patch_size, foreground_bias, augmentation, seed
        As for :class:`~napari_unetkit.data.PatchSampler`.

    Raises
    ------
    ValueError
        If no annotated pixel is left.
    """

    def __init__(
        self,
        slices: LazyTrainingSet,
        patch_size: int | Sequence[int] = 128,
        foreground_bias: float = 0.5,
        augmentation: AugmentationSettings | None = None,
        seed: int = 0,
    ) -> None:
        # The in-memory sampler's state is built differently: no call to its __init__.
        self.data = slices.data
        self.slices = list(slices)
        self.patch_shape = _patch_shape(patch_size)
        if not 0.0 <= foreground_bias <= 1.0:
            raise ValueError(f"foreground_bias must be in [0, 1], got {foreground_bias!r}.")
        self.foreground_bias = float(foreground_bias)
        self.augmentation = augmentation if augmentation is not None else AugmentationSettings()
        counts = np.array([s.n_annotated for s in self.slices], dtype=np.float64)
        if counts.sum() == 0:
            raise ValueError("The training slices have no annotated pixel (all weights are 0).")
        self._probabilities = counts / counts.sum()
        self._cumulative = [(np.cumsum(s.annotated), np.cumsum(s.foreground)) for s in self.slices]
        self.in_channels = self.data.in_channels
        self._rng = np.random.default_rng(seed)

    @property
    def n_annotated(self) -> int:
        """Total number of annotated pixels in the slices."""
        return int(sum(s.n_annotated for s in self.slices))

    def _centre(self, k: int) -> tuple[int, int]:
        s = self.slices[k]
        annotated, foreground = self._cumulative[k]
        use_foreground = foreground[-1] > 0 and self._rng.random() < self.foreground_bias
        cumulative = foreground if use_foreground else annotated
        cell = int(np.searchsorted(cumulative, self._rng.integers(cumulative[-1]), side="right"))
        y0, x0 = (int(v) * CELL for v in s.cells[cell])
        y1, x1 = min(y0 + CELL, s.shape[0]), min(x0 + CELL, s.shape[1])
        if not use_foreground and s.annotated[cell] == (y1 - y0) * (x1 - x0):
            return y0 + int(self._rng.integers(y1 - y0)), x0 + int(self._rng.integers(x1 - x0))
        found = self.data.annotation(s, y0, y1, x0, x1)
        pool = found.foreground if use_foreground else found.annotated
        if s.hidden is not None:
            hy0, hy1, hx0, hx1 = s.hidden
            pool[max(hy0 - y0, 0) : max(hy1 - y0, 0), max(hx0 - x0, 0) : max(hx1 - x0, 0)] = False
        flat = np.flatnonzero(pool)
        if flat.size == 0:  # the labels changed since they were indexed
            return (y0 + y1) // 2, (x0 + x1) // 2
        dy, dx = divmod(int(flat[self._rng.integers(flat.size)]), x1 - x0)
        return y0 + dy, x0 + dx

    def _window(
        self, k: int, top: int, left: int, shape: tuple[int, int]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.data.window(self.slices[k], top, left, shape)[:3]


# --------------------------------------------------------------------------------------------
# prepare_lazy_training_data
# --------------------------------------------------------------------------------------------


def _check_lazy_region(region: Any, labels_shape: tuple[int, ...], pair: int) -> Any:
    if region is None:
        return None
    region = _as_array(region)
    if not (region.dtype == bool or np.issubdtype(region.dtype, np.integer)):
        raise ValueError(
            f"Pair {pair + 1}: the annotated region must be a boolean or integer mask, got "
            f"{region.dtype} values."
        )
    if tuple(region.shape) != labels_shape:
        raise ValueError(
            f"Pair {pair + 1}: the annotated region has shape {tuple(region.shape)}, but the "
            f"labels have shape {labels_shape}."
        )
    return region


@dataclass
class _SliceScan:
    """Counts gathered while scanning one slice."""

    annotated: np.ndarray
    foreground: np.ndarray
    class_counts: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    max_label: int = 0

    def add_classes(self, counts: np.ndarray) -> None:
        size = max(self.class_counts.size, counts.size)
        total = np.zeros(size, dtype=np.int64)
        total[: self.class_counts.size] += self.class_counts
        total[: counts.size] += counts
        self.class_counts = total


def _scan_slice(
    data: LazyTrainingData, s: LazySlice, has_region: bool, cancel: Event | None
) -> tuple[LazySlice, int] | None:
    """Index one slice: the slice with its cells and class counts, and its highest label.

    ``None`` when nothing in it is annotated.
    """
    height, width = s.shape
    scan = _SliceScan(
        np.zeros((math.ceil(height / CELL), math.ceil(width / CELL)), dtype=np.int64),
        np.zeros((math.ceil(height / CELL), math.ceil(width / CELL)), dtype=np.int64),
    )
    for y0 in range(0, height, SCAN_TILE):
        for x0 in range(0, width, SCAN_TILE):
            check_cancel(cancel)
            y1, x1 = min(y0 + SCAN_TILE, height), min(x0 + SCAN_TILE, width)
            found = data.annotation(s, y0, y1, x0, x1)
            scan.max_label = max(scan.max_label, int(found.labels.max(initial=0)))
            if data.mode == "classes" and scan.max_label > MAX_CLASSES:
                _n_classes(scan.max_label)  # refused before counting pixels per class
            cells = (slice(y0 // CELL, -(-y1 // CELL)), slice(x0 // CELL, -(-x1 // CELL)))
            scan.annotated[cells] += _cell_sums(found.annotated)
            scan.foreground[cells] += _cell_sums(found.foreground)
            if data.mode == "classes":
                painted = found.labels[found.annotated].astype(np.int64) - 1
                scan.add_classes(np.bincount(painted))
            else:
                n_annotated = int(np.count_nonzero(found.annotated))
                n_foreground = int(np.count_nonzero(found.foreground))
                scan.add_classes(np.array([n_annotated - n_foreground, n_foreground]))
    if data.mode == "instances" and not has_region and scan.max_label == 0:
        return None  # no cell drawn and no region: the slice is not annotated
    cells = np.argwhere(scan.annotated > 0)
    if not len(cells):
        return None
    return replace(
        s,
        cells=cells.astype(np.int64),
        annotated=scan.annotated[scan.annotated > 0],
        foreground=scan.foreground[scan.annotated > 0],
        class_counts=scan.class_counts,
    ), scan.max_label


def prepare_lazy_training_data(
    pairs: Sequence[tuple[Any, Any]],
    *,
    mode: str = "instances",
    channel_axis: int | None = None,
    regions: Sequence[Any | None] | None = None,
    weightmap: WeightMapSettings | str | None = None,
    normalization: NormalizationSettings | None = None,
    class_names: Sequence[str] | None = None,
    cancel: Event | None = None,
    progress: Callable[[int, int], None] | None = None,
    require_contrast: bool = True,
    channels: Sequence[int] | None = None,
    seed: int = 0,
) -> LazyTrainingData:
    """Index ``(image, labels)`` pairs for training without reading the images whole.

    The parameters, checks and errors are those of
    :func:`~napari_unetkit.data.prepare_training_data`; the arrays may be anything with
    ``shape``, ``dtype`` and basic indexing (zarr, dask, memory-mapped NumPy), and region masks
    may be boolean or integer (non-zero = annotated). See the module docstring for what is
    read. ``seed`` chooses the blocks the normalisation percentiles are estimated from;
    ``require_contrast`` judges constancy on those blocks.

    Returns
    -------
    LazyTrainingData
        The annotation index and what the model needs to know about the data.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}.")
    pairs = [(_as_array(image), _as_array(labels)) for image, labels in pairs]
    if not pairs:
        raise ValueError("No training pairs were given: pass at least one (image, labels) pair.")
    found = {_check_pair(img, lab, channel_axis, mode, i) for i, (img, lab) in enumerate(pairs)}
    if len(found) > 1:
        raise ValueError(f"All images must have the same number of channels, got {sorted(found)}.")
    source_channels = found.pop()
    chosen = layout.check_channel_choice(channels, source_channels)
    pick = slice(None) if chosen is None else chosen
    regions = list(regions) if regions is not None else [None] * len(pairs)
    if len(regions) != len(pairs):
        raise ValueError(f"{len(pairs)} pairs need {len(pairs)} regions, got {len(regions)}.")
    norm = normalization or NormalizationSettings()
    data = LazyTrainingData(
        slices=[],
        n_classes=2,
        in_channels=source_channels if chosen is None else len(chosen),
        mode=mode,
        class_names=(),
        normalization=norm,
        weightmap=_resolve_weightmap(weightmap) if mode == "instances" else None,
        pairs=[],
        channels=chosen,
        source_channels=source_channels,
        empty_channels=[],
        channel_axis=channel_axis,
    )
    total = sum(layout.n_slices(tuple(image.shape), channel_axis) for image, _ in pairs)
    constant = None
    max_label, done = 0, 0
    for number, ((image, labels), region) in enumerate(zip(pairs, regions, strict=True)):
        region = _check_lazy_region(region, tuple(labels.shape), number)
        low, high, flat = sample_percentiles(image, channel_axis, norm, seed)
        data.sources.append(_Source(image, labels, region, low[pick], high[pick]))
        shape = layout.slice_shape(tuple(image.shape), channel_axis)
        used = 0
        for index in layout.slice_indices(tuple(image.shape), channel_axis):
            empty = np.zeros((0, 2), dtype=np.int64)
            blank = LazySlice(number, index, shape, empty, empty[:, 0], empty[:, 0], empty[:, 0])
            scanned = _scan_slice(data, blank, region is not None, cancel)
            if scanned is not None:
                indexed, slice_max = scanned
                data.slices.append(indexed)
                max_label = max(max_label, slice_max)
                used += 1
            done += 1
            if progress is not None:
                progress(done, total)
        if used:
            if require_contrast and flat.all():
                raise ValueError(
                    f"Pair {number + 1}: the image is constant (all pixels have the same value), "
                    "so there is nothing to learn from; choose the microscopy image, not an empty "
                    "channel or a blank frame."
                )
            constant = flat[pick] if constant is None else constant & flat[pick]
        data.pairs.append({**_pair_info(image, labels, channel_axis, region is not None, used)})
        data.pairs[-1]["lazy"] = True
    if not data.slices:
        raise ValueError(
            "No annotated slices: paint some cells (instances mode) or classes (classes mode) "
            "in the labels, or mark an annotated region, before training."
        )
    data.n_classes = 2 if mode == "instances" else _n_classes(max_label)
    data.class_names = _class_names(mode, data.n_classes, class_names)
    if data.in_channels > 1 and constant is not None:
        names = list(range(data.in_channels)) if chosen is None else chosen
        data.empty_channels = [names[c] for c in range(data.in_channels) if constant[c]]
    return data
