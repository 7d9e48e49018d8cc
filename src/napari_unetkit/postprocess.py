"""Turn network probabilities into label images: semantic classes, instances, 3D instances.

Instance models are trained on *separated* targets: touching cells are cut apart by a thin
background ridge (1-2 px, see :func:`napari_unetkit.weightmap.separate_instances`). So
:func:`instances_from_probabilities` thresholds the foreground, takes 4-connected components
(8-connectivity would leak through the diagonal steps of a ridge), removes small fragments and
then gives the ridge pixels back to the cells on either side of them, without growing any cell
outwards into open background. :func:`link_slices` joins per-slice instances of a stack into 3D
instances by one-to-one overlap matching between neighbouring slices.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
from scipy import ndimage as ndi
from skimage.morphology import disk
from skimage.segmentation import relabel_sequential, watershed

from napari_unetkit.checks import number_problem, whole_number_problem
from napari_unetkit.metrics import match_sparse, overlaps

#: 4-connectivity in 2D (edges only, no diagonals).
_CROSS = ndi.generate_binary_structure(2, 1)


def _smallest_uint(max_value: int) -> np.dtype:
    """Smallest unsigned integer dtype holding ``max_value``."""
    for dtype in (np.uint8, np.uint16, np.uint32):
        if max_value <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    return np.dtype(np.uint64)


def semantic_from_probabilities(probs: np.ndarray, offset: int = 0) -> np.ndarray:
    """Per-pixel most likely class, as a label image.

    Convention: the result is ``argmax(probs, axis=0) + offset``. Instance and binary models use
    ``offset=0`` (class index 0 is background, label 0). Class-mode models, whose class index
    ``k`` stands for the user's class label ``k + 1`` (label 0 meaning "not annotated"), use
    ``offset=1``. Ties go to the lower class index.

    Parameters
    ----------
    probs : numpy.ndarray
        Class probabilities (or logits: only their order matters), shape ``(K, ...)``.
    offset : int
        Value added to the class index; must be ``>= 0``.

    Returns
    -------
    numpy.ndarray
        Labels of shape ``probs.shape[1:]``, ``uint8`` when ``K - 1 + offset`` fits, else
        ``uint16`` (or wider).
    """
    probs = np.asarray(probs)
    if probs.ndim < 2:
        raise ValueError(f"probs must have shape (K, ...) with K classes, got {probs.shape}.")
    if offset < 0:
        raise ValueError(f"offset must be >= 0, got {offset}.")
    dtype = _smallest_uint(probs.shape[0] - 1 + offset)
    labels = np.argmax(probs, axis=0).astype(dtype)
    if offset:
        labels += dtype.type(offset)
    return labels


def remove_small_instances(labels: np.ndarray, min_size: int) -> np.ndarray:
    """Set instances with fewer than ``min_size`` pixels to background (returns a copy).

    Parameters
    ----------
    labels : numpy.ndarray
        Integer label image, ``0`` = background.
    min_size : int
        Smallest number of pixels an instance keeps.

    Returns
    -------
    numpy.ndarray
        Copy of ``labels`` without the small instances (ids unchanged).
    """
    labels = np.array(labels, copy=True)
    if min_size <= 1 or labels.size == 0:
        return labels
    sizes = np.bincount(labels.ravel())
    small = sizes < min_size
    small[0] = False
    labels[small[labels]] = 0
    return labels


def gap_pixels(labels: np.ndarray, grow: int) -> np.ndarray:
    """Background pixels within ``grow`` px (Euclidean) of at least two different instances.

    Parameters
    ----------
    labels : numpy.ndarray
        2D integer label image, ``0`` = background.
    grow : int
        Reach in pixels (the disk of this radius around a pixel is searched).

    Returns
    -------
    numpy.ndarray
        Boolean mask of the background pixels that lie between two instances.
    """
    if grow < 1:
        return np.zeros(labels.shape, dtype=bool)
    footprint = disk(grow).astype(bool)
    largest = ndi.maximum_filter(labels, footprint=footprint, mode="constant", cval=0)
    # Smallest *positive* id in reach: background is replaced by a value above every id.
    above = np.iinfo(labels.dtype).max
    positive = np.where(labels > 0, labels, above)
    smallest = ndi.minimum_filter(positive, footprint=footprint, mode="constant", cval=above)
    return (labels == 0) & (largest > 0) & (smallest < largest)


def _shifted(labels: np.ndarray, ys: np.ndarray, xs: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """``labels[ys + dy, xs + dx]``, with 0 where that falls outside the image."""
    yy, xx = ys + dy, xs + dx
    inside = (yy >= 0) & (yy < labels.shape[0]) & (xx >= 0) & (xx < labels.shape[1])
    values = np.zeros(len(ys), dtype=labels.dtype)
    values[inside] = labels[yy[inside], xx[inside]]
    return values


def _disk_offsets(radius: int) -> list[tuple[int, int]]:
    """Offsets ``(dy, dx) != (0, 0)`` with ``dy**2 + dx**2 <= radius**2``, nearest first."""
    span = range(-radius, radius + 1)
    near = sorted(
        (dy * dy + dx * dx, dy, dx)
        for dy in span
        for dx in span
        if 0 < dy * dy + dx * dx <= radius**2
    )
    return [(dy, dx) for _, dy, dx in near]


def _nearest_ids(labels: np.ndarray, ys: np.ndarray, xs: np.ndarray, grow: int) -> np.ndarray:
    """Id of the nearest instance pixel within ``grow`` px (Euclidean) of each ``(ys, xs)``.

    0 where there is none; among equally near pixels of different instances the first offset
    in row-major order wins.
    """
    nearest = np.zeros(len(ys), dtype=labels.dtype)
    for dy, dx in _disk_offsets(grow):
        values = _shifted(labels, ys, xs, dy, dx)
        take = (nearest == 0) & (values > 0)
        nearest[take] = values[take]
    return nearest


def _keep_connected(
    out: np.ndarray, ys: np.ndarray, xs: np.ndarray, candidate: np.ndarray
) -> np.ndarray:
    """Write ``candidate`` ids into ``out`` at ``(ys, xs)`` where they connect to the same id.

    A candidate pixel is accepted when it touches (4-connectivity) a pixel of the same id, either
    an original one or one accepted in an earlier round; rounds repeat until nothing changes,
    so a gap pixel that would float away from its cell is left as background. ``out`` is
    modified in place and returned.
    """
    pending = candidate > 0
    while True:
        touches = np.zeros(len(ys), dtype=bool)
        for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1)):
            touches |= pending & (_shifted(out, ys, xs, dy, dx) == candidate)
        if not touches.any():
            return out
        out[ys[touches], xs[touches]] = candidate[touches]
        pending &= ~touches


def fill_gaps(labels: np.ndarray, grow: int = 2) -> np.ndarray:
    """Give thin background gaps between instances back to the nearest instance.

    A background pixel is filled only if it lies within ``grow`` px of at least two different
    instances (:func:`gap_pixels`); it takes the id of the nearest instance pixel (Euclidean
    distance; ties between instances at the same distance go to the first in row-major offset
    order) and is kept only if it connects to that instance. Instances never grow into open
    background. Only the gap pixels are visited, so time and memory beyond the label image
    itself grow with the number of gap pixels, not with the image.

    Parameters
    ----------
    labels : numpy.ndarray
        2D integer label image, ``0`` = background.
    grow : int
        Largest distance in pixels a gap pixel may be from the instances around it.

    Returns
    -------
    numpy.ndarray
        New label image of the same dtype.
    """
    out = labels.copy()
    if grow < 1 or not labels.any():
        return out
    ys, xs = np.nonzero(gap_pixels(labels, grow))
    return _keep_connected(out, ys, xs, _nearest_ids(labels, ys, xs, grow))


#: Ways of turning a foreground probability into instances (see :class:`InstanceSettings`).
INSTANCE_METHODS = ("watershed", "components")


@dataclass(frozen=True)
class InstanceSettings:
    """How a foreground probability map becomes separated instances (JSON round trip).

    Parameters
    ----------
    method : {"watershed", "components"}
        ``"watershed"``: seeds are the 4-connected components of ``fg_prob > seed_threshold``
        (the confident cores of the cells); each grows by a watershed of the probability over
        the foreground ``fg_prob > threshold``, so touching cells meet where the probability is
        lowest between them and every cell reaches out to the foreground's edge. A foreground
        component with no seed becomes an instance of its own. ``"components"``: 4-connected
        components of ``fg_prob > threshold``; gaps up to ``grow`` px between two of them are
        filled (:func:`fill_gaps`).
    threshold : float
        Foreground level in ``(0, 1)``: pixels strictly above it belong to an instance.
    seed_threshold : float
        ``"watershed"`` only: seed level in ``(0, 1)``; a value at or below ``threshold``
        seeds every foreground component (the result then equals ``"components"`` without gap
        filling).
    min_size : int
        Smallest instance kept, in pixels (per slice).
    grow : int
        ``"components"`` only: reach of the gap filling in pixels; 0 disables it.
    """

    method: str = "watershed"
    threshold: float = 0.5
    seed_threshold: float = 0.8
    min_size: int = 10
    grow: int = 2

    def __post_init__(self) -> None:
        if self.method not in INSTANCE_METHODS:
            raise ValueError(
                f"The instance method must be one of {INSTANCE_METHODS}, got {self.method!r}."
            )
        for name in ("threshold", "seed_threshold"):
            message = number_problem(
                getattr(self, name),
                f"The {name.replace('_', ' ')}",
                0.0,
                1.0,
                open_low=True,
                open_high=True,
                hint="it is a foreground probability (0.5 is the usual choice)",
            )
            if message is not None:
                raise ValueError(message)
        for name in ("min_size", "grow"):
            message = whole_number_problem(getattr(self, name), name, 0)
            if message is not None:
                raise ValueError(message)

    def to_dict(self) -> dict:
        """Plain JSON-serialisable settings."""
        return {
            "method": self.method,
            "threshold": float(self.threshold),
            "seed_threshold": float(self.seed_threshold),
            "min_size": int(self.min_size),
            "grow": int(self.grow),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> InstanceSettings:
        """Build settings from :meth:`to_dict` output; missing keys take the defaults."""
        if data is None:
            return cls()
        if not isinstance(data, Mapping):
            raise ValueError(f"Instance settings must be a mapping, got {type(data).__name__}.")
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"Unknown instance settings {sorted(unknown)}.")
        return cls(**dict(data))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.number)) and not isinstance(value, bool)


def _components_2d(fg_prob: np.ndarray, settings: InstanceSettings) -> np.ndarray:
    labels = np.empty(fg_prob.shape, dtype=np.int32)
    ndi.label(fg_prob > settings.threshold, structure=_CROSS, output=labels)
    labels = remove_small_instances(labels, settings.min_size)
    return fill_gaps(labels, settings.grow)


def _watershed_2d(fg_prob: np.ndarray, settings: InstanceSettings) -> np.ndarray:
    foreground = fg_prob > settings.threshold
    seeds = np.empty(fg_prob.shape, dtype=np.int32)
    n_seeds = ndi.label(
        foreground & (fg_prob > settings.seed_threshold), structure=_CROSS, output=seeds
    )
    # Foreground components without a seed are instances of their own.
    components = np.empty(fg_prob.shape, dtype=np.int32)
    n_components = ndi.label(foreground, structure=_CROSS, output=components)
    if n_components:
        seeded = np.zeros(n_components + 1, dtype=bool)
        seeded[components[seeds > 0]] = True
        unseeded = ~seeded[components] & foreground
        seeds[unseeded] = components[unseeded] + n_seeds
    if not seeds.any():
        return seeds
    labels = watershed(-fg_prob, seeds, mask=foreground, connectivity=1)
    return remove_small_instances(labels.astype(np.int32, copy=False), settings.min_size)


def _instances_2d(fg_prob: np.ndarray, settings: InstanceSettings) -> tuple[np.ndarray, int]:
    """Instances of one 2D probability map; returns (int32 labels 0..n, n)."""
    if settings.method == "watershed":
        labels = _watershed_2d(fg_prob, settings)
    else:
        labels = _components_2d(fg_prob, settings)
    labels, _, _ = relabel_sequential(labels)
    return labels.astype(np.int32, copy=False), int(labels.max())


def instances_from_probabilities(
    fg_prob: np.ndarray,
    threshold: float = 0.5,
    min_size: int = 10,
    grow: int = 2,
    *,
    settings: InstanceSettings | None = None,
) -> np.ndarray:
    """Separated instances from a foreground probability map.

    Without ``settings``: per 2D slice, foreground is ``fg_prob > threshold`` (strictly above,
    consistent with the argmax of a two-class softmax at 0.5); 4-connected components;
    components with fewer than ``min_size`` pixels are removed; background pixels within
    ``grow`` px of two different instances (the ridges cut between touching cells during
    training) are given to the nearest of them (:func:`fill_gaps`); ids are made sequential.
    With ``settings`` (what models store and the predictor uses), those settings replace the
    three numbers, and the method may be the seeded watershed of :class:`InstanceSettings`.

    Parameters
    ----------
    fg_prob : numpy.ndarray
        Foreground probability, shape ``(Y, X)`` or a stack ``(Z, Y, X)`` processed slice by
        slice.
    threshold : float
        Probability above which a pixel is foreground.
    min_size : int
        Smallest instance kept, in pixels (per slice), counted before the gaps are filled.
    grow : int
        Reach in pixels: a background pixel is filled when two different instances lie within
        this distance of it (so gaps up to about ``grow`` px wide close); ``0`` disables
        filling.
    settings : InstanceSettings, optional
        Every setting at once (the three numbers above are then ignored).

    Returns
    -------
    numpy.ndarray
        ``int32`` labels of ``fg_prob``'s shape, ids ``1..N`` (unique across the slices of a
        stack, which are *not* linked; see :func:`link_slices`).
    """
    fg_prob = np.asarray(fg_prob)
    if fg_prob.ndim not in (2, 3):
        raise ValueError(f"fg_prob must have shape (Y, X) or (Z, Y, X), got {fg_prob.shape}.")
    if settings is None:
        if grow < 0 or min_size < 0:
            raise ValueError(f"grow and min_size must be >= 0, got {grow} and {min_size}.")
        settings = InstanceSettings("components", threshold, 0.5, int(min_size), int(grow))
    if fg_prob.ndim == 2:
        return _instances_2d(fg_prob, settings)[0]
    out = np.zeros(fg_prob.shape, dtype=np.int32)
    next_id = 0
    for z, plane in enumerate(fg_prob):
        labels, count = _instances_2d(plane, settings)
        out[z] = np.where(labels > 0, labels + next_id, 0)
        next_id += count
    return out


def _link_pairs(
    below: np.ndarray, plane: np.ndarray, min_iou: float, min_overlap: float | None
) -> tuple[np.ndarray, np.ndarray]:
    """Pairs ``(id in below, id in plane)`` of instances that continue from one slice to the next.

    First a one-to-one matching on IoU ``>= min_iou``; then, among the instances left over on
    both sides, a one-to-one matching on the fraction of the smaller instance covered by the
    overlap (``>= min_overlap``), which catches the small cross-sections at the top and bottom
    of a nucleus.
    """
    table = overlaps(below, plane)
    rows, cols, _ = match_sparse(table.rows, table.cols, table.iou, min_iou)
    if min_overlap is not None:
        free = ~np.isin(table.rows, rows) & ~np.isin(table.cols, cols)
        smaller = np.minimum(table.truth_area[table.rows], table.pred_area[table.cols])
        cover = table.intersection / smaller
        extra_rows, extra_cols, _ = match_sparse(
            table.rows[free], table.cols[free], cover[free], min_overlap
        )
        rows, cols = np.concatenate([rows, extra_rows]), np.concatenate([cols, extra_cols])
    return table.truth_ids[rows], table.pred_ids[cols]


def link_slices(
    labels_stack: np.ndarray, min_iou: float = 0.3, min_overlap: float | None = 0.5
) -> np.ndarray:
    """Join the per-slice instances of a stack into 3D instances.

    Going up the stack, each instance of slice ``z`` that is matched one-to-one with an
    instance of slice ``z - 1`` takes that instance's id; any other instance starts a new id.
    Matching (Hungarian, most pairs first then largest total score, see
    :func:`napari_unetkit.metrics.match_sparse`) is done in two rounds: first on IoU
    ``>= min_iou``; then the instances still unmatched on both sides are matched when their
    overlap covers at least ``min_overlap`` of the smaller of the two. The second round links
    the small caps of a nucleus (its first and last cross-sections), whose IoU with the next
    slice is low in anisotropic stacks. New ids are handed out in order, so the result has
    sequential ids ``1..N``.

    Parameters
    ----------
    labels_stack : numpy.ndarray
        Integer labels, shape ``(Z, Y, X)``; ids need not be unique across slices.
    min_iou : float
        Smallest IoU of two instances in neighbouring slices that are linked, in ``(0, 1]``.
    min_overlap : float or None
        Smallest covered fraction of the smaller instance in the second round, in ``(0, 1]``;
        ``None`` links by IoU only.

    Returns
    -------
    numpy.ndarray
        ``int32`` labels of the same shape.
    """
    labels_stack = np.asarray(labels_stack)
    if labels_stack.ndim != 3:
        raise ValueError(f"labels_stack must have shape (Z, Y, X), got {labels_stack.shape}.")
    out = np.zeros(labels_stack.shape, dtype=np.int32)
    next_id = 0
    for z, plane in enumerate(labels_stack):
        # Compact the slice's ids to 0..n so that they can index a lookup table.
        ids, index = np.unique(plane, return_inverse=True)
        index = index.reshape(plane.shape)
        if ids[0] != 0:
            index += 1
            ids = np.concatenate([[0], ids])
        new_ids = np.zeros(ids.size, dtype=np.int32)
        if z > 0 and ids.size > 1:
            previous, current = _link_pairs(out[z - 1], index, min_iou, min_overlap)
            new_ids[current] = previous
        unmatched = np.flatnonzero(new_ids[1:] == 0) + 1
        new_ids[unmatched] = np.arange(next_id + 1, next_id + 1 + unmatched.size)
        next_id += unmatched.size
        out[z] = new_ids[index]
    return out
