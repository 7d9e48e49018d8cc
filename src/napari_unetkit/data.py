"""Training data: (image, labels) pairs -> normalised slices with targets and weights -> patches.

:func:`prepare_training_data` turns each pair into 2D :class:`TrainingSlice` objects (the image
normalised with percentiles of the *whole* image, the class target and the loss weights, computed
once per slice). :func:`split_train_validation` holds out whole slices, or a band of a single
slice. :class:`PatchSampler` draws fixed-size, augmented patches from the slices for the trainer.

Two labelling modes:

``"instances"``
    Labels are instance ids (0 = background, one positive id per cell). Touching cells are
    separated by a background ridge and weighted with the U-Net boundary weight map
    (:mod:`napari_unetkit.weightmap`); the target has two classes, background and foreground.
``"classes"``
    Labels ``1..K`` are painted classes and 0 means "not annotated" (weight 0). Weights balance
    the classes among the painted pixels of each slice.

An optional region mask per pair marks where the annotation is complete (sparse annotation):
outside it every weight is 0, inside it unlabelled pixels are genuine background.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from threading import Event
from typing import Any

import numpy as np

from napari_unetkit import layout
from napari_unetkit.augmentation import AugmentationSettings, augment_patch
from napari_unetkit.checks import (
    INSTANCE_CLASS_NAMES,
    MAX_CLASSES,
    MODES,
    choice_problem,
    class_count_problem,
    labels_dtype_problem,
    negative_labels_problem,
    whole_number_problem,
)
from napari_unetkit.normalization import (
    NormalizationSettings,
    apply_percentiles,
    check_image_dtype,
    image_percentiles,
)
from napari_unetkit.progress import check_cancel
from napari_unetkit.weightmap import (
    DEFAULT_PRESET,
    WeightMapSettings,
    settings_from,
    weights_and_target,
)

__all__ = [
    "MODES",
    "AugmentationSettings",
    "PatchSampler",
    "TrainingData",
    "TrainingSlice",
    "balanced_class_weights",
    "prepare_training_data",
    "split_train_validation",
]

#: Pixels between a spatial validation band and the nearest training weight.
VALIDATION_MARGIN = 16
#: Narrowest validation band (pixels) worth cutting from a single slice.
MIN_VALIDATION_BAND = 16


@dataclass(eq=False)
class TrainingSlice:
    """One 2D training example.

    Attributes
    ----------
    image : numpy.ndarray
        float32 ``(C, Y, X)``, normalised.
    target : numpy.ndarray
        int64 ``(Y, X)`` class indices ``0..K-1``.
    weights : numpy.ndarray
        float32 ``(Y, X)`` loss weights; 0 = ignore the pixel.
    instances : numpy.ndarray or None
        int32 ``(Y, X)`` original instance labels (instances mode; for instance metrics).
    source : tuple
        ``(pair index, slice index)``, the slice index a tuple over the image's slice axes.
    origin : tuple of int
        Position of this slice's first pixel in the original slice (non-zero for crops).
    """

    image: np.ndarray
    target: np.ndarray
    weights: np.ndarray
    instances: np.ndarray | None = None
    source: tuple[int, tuple[int, ...]] = (0, ())
    origin: tuple[int, int] = (0, 0)

    def __post_init__(self) -> None:
        if self.image.ndim != 3 or self.image.dtype != np.float32:
            raise ValueError(
                f"A training image must be float32 (C, Y, X), got {self.image.dtype} "
                f"{self.image.shape}."
            )
        shape = self.image.shape[1:]
        checks = [("target", self.target, np.int64), ("weights", self.weights, np.float32)]
        if self.instances is not None:
            checks.append(("instances", self.instances, np.int32))
        for name, array, dtype in checks:
            if array.shape != shape or array.dtype != dtype:
                raise ValueError(
                    f"Training {name} must be {np.dtype(dtype)} {shape}, got {array.dtype} "
                    f"{array.shape}."
                )

    @property
    def shape(self) -> tuple[int, int]:
        """``(Y, X)`` size of the slice."""
        return self.target.shape  # type: ignore[return-value]

    @property
    def n_annotated(self) -> int:
        """Number of pixels with a positive loss weight."""
        return int(np.count_nonzero(self.weights > 0))


@dataclass(eq=False)
class TrainingData:
    """The output of :func:`prepare_training_data`.

    Attributes
    ----------
    slices : list of TrainingSlice
        The annotated slices, in pair order then slice order.
    n_classes : int
        ``K``, the number of network outputs.
    in_channels : int
        Channels of every image slice (the chosen ones).
    mode : str
        ``"instances"`` or ``"classes"``.
    class_names : tuple of str
        One name per class index.
    normalization : NormalizationSettings
        The percentile settings used (prediction repeats them).
    weightmap : WeightMapSettings or None
        The weight-map settings (instances mode).
    pairs : list of dict
        Per input pair: shapes, dtype, channel axis, slices used.
    channels : list of int or None
        The channels of the images the slices hold, in order (``None``: all of them).
    source_channels : int
        How many channels the images have (before the choice).
    empty_channels : list of int
        Chosen channels that hold one constant value in every annotated slice.
    """

    slices: list[TrainingSlice]
    n_classes: int
    in_channels: int
    mode: str
    class_names: tuple[str, ...]
    normalization: NormalizationSettings = field(default_factory=NormalizationSettings)
    weightmap: WeightMapSettings | None = None
    pairs: list[dict] = field(default_factory=list)
    channels: list[int] | None = None
    source_channels: int = 1
    empty_channels: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.slices)

    def summary(self) -> dict:
        """Return a JSON-serialisable description of the data (for the model description).

        Returns
        -------
        dict
            Mode, classes, channels, slice counts and sizes, annotated pixels per class,
            normalisation and weight-map settings, and per-pair shapes.
        """
        class_pixels = np.zeros(self.n_classes, dtype=np.int64)
        for s in self.slices:
            annotated = s.weights > 0
            class_pixels += np.bincount(s.target[annotated], minlength=self.n_classes)
        return data_summary(self, class_pixels)


# --------------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------------


def data_summary(data: Any, class_pixels: np.ndarray) -> dict:
    """Return the JSON-serialisable data description both training-data kinds give.

    Parameters
    ----------
    data : TrainingData or napari_unetkit.lazydata.LazyTrainingData
        Anything with ``mode``, ``n_classes``, ``in_channels``, ``class_names``, ``slices``
        (each with ``shape``), ``normalization``, ``weightmap`` and ``pairs``.
    class_pixels : numpy.ndarray
        Annotated pixels per class.

    Returns
    -------
    dict
        Mode, classes, channels, slice counts and sizes, annotated pixels per class,
        normalisation and weight-map settings, and per-pair shapes.
    """
    shapes = np.array([s.shape for s in data.slices]).reshape(-1, 2)
    return {
        "mode": data.mode,
        "n_classes": data.n_classes,
        "in_channels": data.in_channels,
        "class_names": list(data.class_names),
        "n_slices": len(data.slices),
        "slice_shape_min": shapes.min(axis=0).tolist() if len(shapes) else None,
        "slice_shape_max": shapes.max(axis=0).tolist() if len(shapes) else None,
        "annotated_pixels": int(class_pixels.sum()),
        "class_pixels": class_pixels.tolist(),
        "normalization": data.normalization.to_dict(),
        "weightmap": None if data.weightmap is None else data.weightmap.to_dict(),
        "pairs": [dict(pair) for pair in data.pairs],
    }


def _as_array(data: Any) -> Any:
    """Keep array-likes with shape/dtype/indexing (NumPy, dask, zarr); convert anything else."""
    if all(hasattr(data, name) for name in ("shape", "dtype", "ndim", "__getitem__")):
        return data
    return np.asarray(data)


def _check_labels_dtype(dtype: np.dtype, mode: str, pair: int) -> None:
    """Raise a clear ``ValueError`` for label dtypes that cannot be instance or class ids."""
    dtype = np.dtype(dtype)
    if dtype.kind == "b":
        what = (
            "labels must be instance ids (0 = background, one positive id per cell)"
            if mode == "instances"
            else "labels must be class ids (0 = not annotated, 1..K = classes)"
        )
        raise ValueError(
            f"Pair {pair + 1}: the labels are a boolean mask, but {what}; paint the cells in a "
            "Labels layer or label the mask's connected components first."
        )
    message = labels_dtype_problem(dtype)
    if message is not None:
        raise ValueError(f"Pair {pair + 1}: {message}")


def _check_region(region: Any, labels_shape: tuple[int, ...], pair: int) -> np.ndarray | None:
    if region is None:
        return None
    region = np.asarray(region)
    if region.dtype != bool:
        raise ValueError(
            f"Pair {pair + 1}: the annotated region must be a boolean mask, got {region.dtype} "
            "values (use mask > 0)."
        )
    if region.shape != labels_shape:
        raise ValueError(
            f"Pair {pair + 1}: the annotated region has shape {region.shape}, but the labels have "
            f"shape {labels_shape}."
        )
    return region


def _check_pair(image: Any, labels: Any, channel_axis: int | None, mode: str, pair: int) -> int:
    """Validate one pair; return its number of channels."""
    expected = layout.labels_shape(tuple(image.shape), channel_axis)
    if tuple(labels.shape) != expected:
        raise ValueError(
            f"Pair {pair + 1}: the labels have shape {tuple(labels.shape)}, but the image of shape "
            f"{tuple(image.shape)} (channel axis {channel_axis}) needs labels of shape "
            f"{expected}.{_shape_hint(tuple(image.shape), tuple(labels.shape), channel_axis)}"
        )
    check_image_dtype(image.dtype)
    _check_labels_dtype(labels.dtype, mode, pair)
    return layout.n_channels(tuple(image.shape), channel_axis)


def _shape_hint(
    image_shape: tuple[int, ...], labels_shape: tuple[int, ...], channel_axis: int | None
) -> str:
    """Return a hint for labels that do not fit the image (a forgotten channel axis, or not)."""
    if channel_axis is None and len(image_shape) == len(labels_shape) + 1:
        if image_shape[:-1] == labels_shape:
            return " If the image's last axis holds colour channels, set the channel axis to -1."
        if image_shape[1:] == labels_shape:
            return " If the image's first axis holds channels, set the channel axis to 0."
    return " Choose the labels drawn on this image (they must have its size)."


def _check_contrast(slices: list[TrainingSlice], pair: int, partial: bool) -> None:
    """Refuse a pair whose (normalised) annotated slices are all one constant value.

    A network cannot learn anything from such an image; it is almost always a mistake (an
    empty channel, a blank frame, a mask chosen as the image).
    """
    first = None
    for item in slices:
        values = item.image.reshape(item.image.shape[0], -1)
        smallest, largest = values.min(axis=1), values.max(axis=1)
        if np.any(smallest != largest) or (first is not None and np.any(first != smallest)):
            return
        first = smallest
    where = " of its annotated slices" if partial else ""
    raise ValueError(
        f"Pair {pair + 1}: the image is constant (all pixels{where} have the same value), so there "
        "is nothing to learn from; choose the microscopy image, not an empty channel or a "
        "blank frame."
    )


def _read_labels(labels: Any, index: tuple[int, ...], pair: int, mode: str) -> np.ndarray:
    """Read one labels slice and reject negative values."""
    labels_yx = np.asarray(labels[index])
    message = negative_labels_problem(labels_yx, mode)
    if message is not None:
        raise ValueError(f"Pair {pair + 1}, slice {index}: {message}")
    return labels_yx


def _as_int32_instances(labels_yx: np.ndarray) -> np.ndarray:
    """Instance ids as int32, renumbered only when an id does not fit."""
    if labels_yx.size and labels_yx.max() > np.iinfo(np.int32).max:
        _, inverse = np.unique(labels_yx, return_inverse=True)
        return inverse.reshape(labels_yx.shape).astype(np.int32)
    return labels_yx.astype(np.int32)


# --------------------------------------------------------------------------------------------
# Targets and weights of one slice
# --------------------------------------------------------------------------------------------


def _instance_target(
    labels_yx: np.ndarray, region: np.ndarray | None, settings: WeightMapSettings
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Target, weights and instances of one slice in instances mode (None: not annotated)."""
    if region is None and not labels_yx.any():
        return None
    if region is not None and not region.any():
        return None
    if region is None:
        weights, separated = weights_and_target(labels_yx, settings=settings)
    else:
        # Outside the annotated region nothing is known: those pixels are ignored (weight 0)
        # and left out of the class balance, which then reflects the annotated area only.
        ignored = ~region
        if settings.ignore is not None:
            ignored |= labels_yx == settings.ignore
        weights, separated = weights_and_target(labels_yx, ignore=ignored, settings=settings)
    if not np.any(weights > 0):
        return None
    target = (separated > 0).astype(np.int64)
    return target, weights.astype(np.float32, copy=False), _as_int32_instances(labels_yx)


def balanced_class_weights(target: np.ndarray, annotated: np.ndarray) -> np.ndarray:
    """Return class-balanced loss weights: ``N / (K_present N_k)`` on annotated pixels, else 0.

    Parameters
    ----------
    target : numpy.ndarray
        Integer class indices ``(Y, X)``.
    annotated : numpy.ndarray
        Boolean mask of the pixels that carry a label.

    Returns
    -------
    numpy.ndarray
        float32 weights; every present class gets the same total weight ``N / K_present``.
    """
    per_class = per_class_weights(np.bincount(target[annotated]))
    weights = np.zeros(target.shape, dtype=np.float32)
    weights[annotated] = per_class[target[annotated]]
    return weights


def per_class_weights(counts: np.ndarray) -> np.ndarray:
    """Return the per-class weights ``N / (K_present N_k)`` of painted pixel counts per class.

    Parameters
    ----------
    counts : numpy.ndarray
        ``N_k``, annotated pixels of each class index ``k``.

    Returns
    -------
    numpy.ndarray
        float64 weight of each class (0 for an absent class); what
        :func:`balanced_class_weights` puts on the pixels of each class.
    """
    counts = np.asarray(counts)
    present = np.count_nonzero(counts)
    total = int(counts.sum())
    per_class = np.zeros(counts.size, dtype=np.float64)
    np.divide(total, present * counts, out=per_class, where=counts > 0)
    return per_class


def _class_target(
    labels_yx: np.ndarray, region: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray] | None:
    """Target and weights of one slice in classes mode (None: nothing painted)."""
    annotated = labels_yx > 0
    if region is not None:
        annotated &= region
    if not annotated.any():
        return None
    target = np.where(annotated, labels_yx.astype(np.int64) - 1, 0)
    return target, balanced_class_weights(target, annotated)


def _check_regions(
    pairs: list[tuple[Any, Any]], regions: Sequence[Any] | None
) -> list[np.ndarray | None]:
    """Validate the optional region masks (one per pair)."""
    if regions is None:
        return [None] * len(pairs)
    regions = list(regions)
    if len(regions) != len(pairs):
        raise ValueError(f"{len(pairs)} pairs need {len(pairs)} regions, got {len(regions)}.")
    return [
        _check_region(region, tuple(labels.shape), i)
        for i, (region, (_, labels)) in enumerate(zip(regions, pairs, strict=True))
    ]


def _pair_info(
    image: Any, labels: Any, channel_axis: int | None, has_region: bool, used: int
) -> dict:
    """JSON-serialisable description of one input pair."""
    return {
        "image_shape": [int(n) for n in image.shape],
        "image_dtype": str(image.dtype),
        "labels_shape": [int(n) for n in labels.shape],
        "channel_axis": channel_axis,
        "n_slices": layout.n_slices(tuple(image.shape), channel_axis),
        "annotated_slices": used,
        "region": has_region,
    }


def _resolve_weightmap(weightmap: WeightMapSettings | str | None) -> WeightMapSettings:
    if weightmap is None:
        return settings_from(DEFAULT_PRESET)
    return settings_from(weightmap)


def _class_names(mode: str, n_classes: int, names: Sequence[str] | None) -> tuple[str, ...]:
    if names is None:
        if mode == "instances":
            return INSTANCE_CLASS_NAMES
        return tuple(f"class {k}" for k in range(1, n_classes + 1))
    names = tuple(str(name) for name in names)
    if len(names) != n_classes:
        raise ValueError(f"{n_classes} class names are needed, got {len(names)}: {names}.")
    return names


def _n_classes(max_label: int) -> int:
    """Check the number of painted classes in classes mode."""
    message = class_count_problem(max_label)
    if message is not None:
        raise ValueError(message)
    return max_label


# --------------------------------------------------------------------------------------------
# prepare_training_data
# --------------------------------------------------------------------------------------------


def prepare_training_data(
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
) -> TrainingData:
    """Turn ``(image, labels)`` pairs into normalised 2D training slices.

    Parameters
    ----------
    pairs : sequence of (array-like, array-like)
        Images (2D ``(Y, X)``, 2D with a channel axis, or stacks whose leading axes are slices)
        and their labels, of the image's shape without the channel axis.
    mode : {"instances", "classes"}
        Instance ids with the boundary weight map (``K = 2``), or painted classes ``1..K`` with
        0 = not annotated.
    channel_axis : int, optional
        The images' channel axis (e.g. -1 for RGB); the same for every pair.
    regions : sequence, optional
        One entry per pair: None or a boolean mask of the labels' shape marking where the
        annotation is complete. Weights are 0 outside it.
    weightmap : WeightMapSettings or str, optional
        Weight-map settings or preset name (instances mode); default
        :data:`~napari_unetkit.weightmap.DEFAULT_PRESET`.
    normalization : NormalizationSettings, optional
        Percentiles; default 1 and 99.8, taken over each whole image.
    class_names : sequence of str, optional
        One name per class (default :data:`~napari_unetkit.checks.INSTANCE_CLASS_NAMES` or
        ``class 1..K``).
    cancel : threading.Event, optional
        Checked between slices; raises :class:`~napari_unetkit.progress.Cancelled` when set.
    progress : callable, optional
        Called as ``progress(done, total)`` after each slice.
    require_contrast : bool
        Refuse a pair whose annotated slices are one constant value (nothing to learn from);
        ``False`` accepts them (e.g. a blank validation image).
    channels : sequence of int, optional
        The channels the model uses, in order (indices into the channel axis); default all.

    Returns
    -------
    TrainingData
        The annotated slices and what the model needs to know about them.

    Raises
    ------
    ValueError
        For mismatched shapes or channel counts, unusable dtypes (boolean, float or negative
        labels, boolean or complex images), constant images (see ``require_contrast``),
        fewer than two classes in classes mode, or when no slice carries any annotation.
    """
    message = choice_problem(mode, "mode", MODES)
    if message is not None:
        raise ValueError(message)
    pairs = [(_as_array(image), _as_array(labels)) for image, labels in pairs]
    if not pairs:
        raise ValueError("No training pairs were given: pass at least one (image, labels) pair.")
    channels_found = {
        _check_pair(img, lab, channel_axis, mode, i) for i, (img, lab) in enumerate(pairs)
    }
    if len(channels_found) > 1:
        raise ValueError(
            f"All images must have the same number of channels, got {sorted(channels_found)}."
        )
    source_channels = channels_found.pop()
    chosen = layout.check_channel_choice(channels, source_channels)
    pick = slice(None) if chosen is None else chosen
    regions = _check_regions(pairs, regions)
    settings = _resolve_weightmap(weightmap) if mode == "instances" else None
    norm = normalization or NormalizationSettings()
    total = sum(layout.n_slices(tuple(image.shape), channel_axis) for image, _ in pairs)
    slices: list[TrainingSlice] = []
    infos: list[dict] = []
    max_label, done = 0, 0
    for pair, ((image, labels), region) in enumerate(zip(pairs, regions, strict=True)):
        low, high = image_percentiles(image, channel_axis, norm)
        low, high = low[pick], high[pick]
        used = 0
        for index in layout.slice_indices(tuple(image.shape), channel_axis):
            check_cancel(cancel)
            labels_yx = _read_labels(labels, index, pair, mode)
            slice_max = int(labels_yx.max(initial=0))
            if settings is None and slice_max > MAX_CLASSES:
                _n_classes(slice_max)  # refused here, before counting pixels per class
            max_label = max(max_label, slice_max)
            region_yx = None if region is None else region[index]
            annotation = (
                _instance_target(labels_yx, region_yx, settings)
                if settings is not None
                else _class_target(labels_yx, region_yx)
            )
            if annotation is not None:
                image_cyx = layout.get_slice(image, index, channel_axis)[pick]
                slices.append(
                    TrainingSlice(
                        apply_percentiles(np.asarray(image_cyx), low, high),
                        *annotation,
                        source=(pair, index),
                    )
                )
                used += 1
            done += 1
            if progress is not None:
                progress(done, total)
        if require_contrast and used:
            n_slices = layout.n_slices(tuple(image.shape), channel_axis)
            _check_contrast(slices[-used:], pair, partial=used < n_slices)
        infos.append(_pair_info(image, labels, channel_axis, region is not None, used))
    if not slices:
        raise ValueError(
            "No annotated slices: paint some cells (instances mode) or classes (classes mode) "
            "in the labels, or mark an annotated region, before training."
        )
    n_classes = 2 if mode == "instances" else _n_classes(max_label)
    return TrainingData(
        slices=slices,
        n_classes=n_classes,
        in_channels=slices[0].image.shape[0],
        mode=mode,
        class_names=_class_names(mode, n_classes, class_names),
        normalization=norm,
        weightmap=settings,
        pairs=infos,
        channels=chosen,
        source_channels=source_channels,
        empty_channels=_empty_channels(slices, chosen),
    )


def _empty_channels(slices: list[TrainingSlice], chosen: list[int] | None) -> list[int]:
    """Chosen channels that are one constant value in every slice (e.g. an unused RGB colour)."""
    n = slices[0].image.shape[0]
    if n == 1:
        return []
    names = list(range(n)) if chosen is None else chosen
    return [names[c] for c in range(n) if all(np.ptp(item.image[c]) == 0 for item in slices)]


# --------------------------------------------------------------------------------------------
# Train / validation split
# --------------------------------------------------------------------------------------------


def _n_held_out(n: int, fraction: float) -> int:
    """``round(n * fraction)`` with halves rounded up."""
    return math.floor(n * fraction + 0.5)


def _split_by_slices(
    slices: list[TrainingSlice], n_validation: int, seed: int
) -> tuple[list[TrainingSlice], list[TrainingSlice]]:
    held_out = set(np.random.default_rng(seed).permutation(len(slices))[:n_validation].tolist())
    train = [s for i, s in enumerate(slices) if i not in held_out]
    validation = [s for i, s in enumerate(slices) if i in held_out]
    return train, validation


def _crop(item: TrainingSlice, axis: int, start: int, stop: int) -> TrainingSlice:
    """Copy of the part ``start:stop`` of a slice along spatial ``axis`` (0 = Y, 1 = X)."""
    window = [slice(None), slice(None)]
    window[axis] = slice(start, stop)
    yx = tuple(window)
    origin = list(item.origin)
    origin[axis] += start
    return TrainingSlice(
        image=item.image[(slice(None), *yx)].copy(),
        target=item.target[yx].copy(),
        weights=item.weights[yx].copy(),
        instances=None if item.instances is None else item.instances[yx].copy(),
        source=item.source,
        origin=(origin[0], origin[1]),
    )


def _band_start(annotated: np.ndarray, axis: int, fraction: float) -> tuple[int, int]:
    """Where a validation band holding ``fraction`` of the annotated pixels starts and ends.

    A fully annotated slice gives the last ``round(length * fraction)`` lines. Otherwise the
    band ends at the last annotated line and starts where the lines after it hold ``fraction``
    of the annotated pixels, so sparse annotation in one corner still gets a band.
    """
    length = annotated.shape[axis]
    if annotated.all():
        return length - _n_held_out(length, fraction), length
    per_line = np.count_nonzero(annotated, axis=1 - axis)
    lines = np.nonzero(per_line)[0]
    if lines.size == 0:
        return length - _n_held_out(length, fraction), length
    end = int(lines[-1]) + 1
    from_end = np.cumsum(per_line[:end][::-1])
    start = end - 1 - int(np.searchsorted(from_end, fraction * from_end[-1]))
    return max(0, min(start, end - MIN_VALIDATION_BAND)), end


def _split_spatially(
    item: TrainingSlice, fraction: float, margin: int
) -> tuple[TrainingSlice, TrainingSlice | None, str | None]:
    """Split one slice into (training slice, validation band or None, reason for None)."""
    annotated = item.weights > 0
    extent = list(item.shape)
    if annotated.any() and not annotated.all():
        lines = [np.nonzero(annotated.any(axis=1 - a))[0] for a in (0, 1)]
        extent = [int(line[-1] - line[0]) + 1 for line in lines]
    axis = 0 if extent[0] >= extent[1] else 1
    length = item.shape[axis]
    start, end = _band_start(annotated, axis, fraction)
    if end - start < MIN_VALIDATION_BAND or _n_held_out(length, fraction) < MIN_VALIDATION_BAND:
        return item, None, f"a {fraction:.0%} band of {length} px is under {MIN_VALIDATION_BAND} px"
    validation = _crop(item, axis, start, end)
    if validation.n_annotated == 0:
        return item, None, "the validation band holds no annotated pixels"
    weights = item.weights.copy()
    hidden = [slice(None), slice(None)]
    hidden[axis] = slice(max(0, start - margin), None)
    weights[tuple(hidden)] = 0.0
    if not np.any(weights > 0):
        return item, None, "all annotated pixels lie in or next to the validation band"
    return replace(item, weights=weights), validation, None


def split_train_validation(
    data_or_slices: TrainingData | Sequence[TrainingSlice],
    fraction: float = 0.2,
    seed: int = 0,
    *,
    margin: int = VALIDATION_MARGIN,
) -> tuple[list[TrainingSlice], list[TrainingSlice]]:
    """Hold out part of the training data for validation.

    With enough slices (``round(n * fraction) >= 1`` and at least one slice left), whole
    slices are held out, chosen at random by ``seed``. Otherwise (typically a single 2D image)
    each slice is split spatially along the longer axis of its annotated area: a band at the
    end of that area holding ``fraction`` of the annotated pixels (for a fully annotated slice:
    the last ``fraction`` of the axis) becomes a validation crop, and the training slice keeps
    the whole image but with weight 0 from ``margin`` pixels before the band to the end, so no
    loss is ever computed on validation pixels.

    A slice whose band would be narrower than :data:`MIN_VALIDATION_BAND` pixels, or whose band
    or remaining part holds no annotated pixel, is not split (it stays whole in training) and a
    ``UserWarning`` says so; the validation list may then be empty.

    Parameters
    ----------
    data_or_slices : TrainingData or sequence of TrainingSlice
        The prepared data.
    fraction : float
        Share held out for validation, ``0 <= fraction < 1``; 0 means no validation.
    seed : int
        Seed of the random choice of held-out slices.
    margin : int
        Pixels between a spatial validation band and the nearest training weight.

    Returns
    -------
    train, validation : list of TrainingSlice
        Slices in their original order. Spatially split training slices share the image and
        target arrays with the input (only their weights are new).

    Raises
    ------
    ValueError
        If ``fraction`` is not in ``[0, 1)`` or ``margin`` is negative.
    """
    slices = list(
        data_or_slices.slices if isinstance(data_or_slices, TrainingData) else data_or_slices
    )
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"The validation fraction must be in [0, 1), got {fraction!r}.")
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin!r}.")
    if fraction == 0.0 or not slices:
        return slices, []
    n_validation = _n_held_out(len(slices), fraction)
    if 1 <= n_validation < len(slices):
        return _split_by_slices(slices, n_validation, seed)
    train, validation, reasons = [], [], []
    for item in slices:
        kept, band, reason = _split_spatially(item, fraction, margin)
        train.append(kept)
        if band is not None:
            validation.append(band)
        if reason is not None:
            reasons.append(f"slice {item.source}: {reason}")
    if reasons:
        warnings.warn(
            f"No validation band was cut from {len(reasons)} slice(s) ({'; '.join(reasons[:3])}); "
            "they are used for training only.",
            UserWarning,
            stacklevel=2,
        )
    return train, validation


# --------------------------------------------------------------------------------------------
# Patch sampling
# --------------------------------------------------------------------------------------------


def _patch_shape(patch_size: int | Sequence[int]) -> tuple[int, int]:
    size = (patch_size, patch_size) if np.isscalar(patch_size) else tuple(patch_size)
    if len(size) != 2 or not all(int(n) == n and n >= 1 for n in size):
        raise ValueError(f"patch_size must be a positive int or (py, px), got {patch_size!r}.")
    return int(size[0]), int(size[1])


def _flat_indices(mask: np.ndarray) -> np.ndarray:
    """``np.flatnonzero`` as int32 where that suffices (half the memory)."""
    indices = np.flatnonzero(mask)
    return indices.astype(np.int32) if mask.size < 2**31 else indices


def _patch_start(centre: int, length: int, patch: int) -> int:
    """Return the first pixel of a patch containing ``centre`` (inside the slice if it fits)."""
    low, high = min(0, length - patch), max(0, length - patch)
    return int(np.clip(centre - patch // 2, low, high))


def _padded_range(start: int, size: int, length: int) -> tuple[slice, tuple[int, int]]:
    """Part of ``[start, start + size)`` inside ``[0, length)`` and the padding around it."""
    first, stop = max(start, 0), min(start + size, length)
    return slice(first, stop), (first - start, start + size - stop)


def _cut_window(
    item: TrainingSlice, top: int, left: int, shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Image, target and weights of a window, padded where it leaves the slice.

    The image is mirrored (reflect) into the padding; target and weights are 0 there.
    """
    rows, pad_y = _padded_range(top, shape[0], item.shape[0])
    cols, pad_x = _padded_range(left, shape[1], item.shape[1])
    image, target, weights = (
        item.image[:, rows, cols],
        item.target[rows, cols],
        item.weights[rows, cols],
    )
    if pad_y == (0, 0) and pad_x == (0, 0):
        return image, target, weights
    return (
        np.pad(image, ((0, 0), pad_y, pad_x), mode="reflect"),
        np.pad(target, (pad_y, pad_x)),
        np.pad(weights, (pad_y, pad_x)),
    )


class PatchSampler:
    """Draw random, augmented, fixed-size training patches from training slices.

    A slice is chosen with probability proportional to its number of annotated pixels (weight
    > 0); the patch is centred on a random annotated pixel, with probability ``foreground_bias``
    on an annotated foreground pixel (target > 0) when the slice has one. The patch stays inside
    the slice when the slice is large enough (the chosen pixel is then off-centre near borders);
    smaller slices are padded (image mirrored, target and weight 0), so patches always have the
    full size and always contain the chosen annotated pixel.

    Parameters
    ----------
    slices : TrainingData or sequence of TrainingSlice
        Training slices (e.g. the first output of :func:`split_train_validation`).
    patch_size : int or tuple of int
        ``P`` or ``(py, px)``.
    foreground_bias : float
        Probability of centring a patch on foreground, in ``[0, 1]``.
    augmentation : AugmentationSettings, optional
        Default: ``AugmentationSettings()`` (all on). ``AugmentationSettings.off()`` for none.
    seed : int
        Seed; the same seed gives the same sequence of batches.

    Raises
    ------
    ValueError
        If there are no slices, no annotated pixel, or the slices' channel counts differ.
    """

    def __init__(
        self,
        slices: TrainingData | Sequence[TrainingSlice],
        patch_size: int | Sequence[int] = 128,
        foreground_bias: float = 0.5,
        augmentation: AugmentationSettings | None = None,
        seed: int = 0,
    ) -> None:
        self.slices = list(slices.slices if isinstance(slices, TrainingData) else slices)
        self.patch_shape = _patch_shape(patch_size)
        if not 0.0 <= foreground_bias <= 1.0:
            raise ValueError(f"foreground_bias must be in [0, 1], got {foreground_bias!r}.")
        self.foreground_bias = float(foreground_bias)
        self.augmentation = augmentation if augmentation is not None else AugmentationSettings()
        channels = {s.image.shape[0] for s in self.slices}
        if len(channels) > 1:
            raise ValueError(f"All slices must have the same channel count, got {channels}.")
        self._annotated = [_flat_indices(s.weights > 0) for s in self.slices]
        self._foreground = [_flat_indices((s.weights > 0) & (s.target > 0)) for s in self.slices]
        counts = np.array([len(a) for a in self._annotated], dtype=np.float64)
        if counts.sum() == 0:
            raise ValueError("The training slices have no annotated pixel (all weights are 0).")
        self._probabilities = counts / counts.sum()
        self.in_channels = channels.pop()
        self._rng = np.random.default_rng(seed)

    @property
    def n_annotated(self) -> int:
        """Total number of annotated pixels in the slices."""
        return int(sum(len(a) for a in self._annotated))

    def _centre(self, k: int) -> tuple[int, int]:
        """Pick a random annotated (possibly foreground) pixel of slice ``k``."""
        foreground, annotated = self._foreground[k], self._annotated[k]
        pool = annotated
        if len(foreground) and self._rng.random() < self.foreground_bias:
            pool = foreground
        flat = int(pool[self._rng.integers(len(pool))])
        return divmod(flat, self.slices[k].shape[1])

    def _window(
        self, k: int, top: int, left: int, shape: tuple[int, int]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Image, target and weights of a window of slice ``k`` (see :func:`_cut_window`)."""
        return _cut_window(self.slices[k], top, left, shape)

    def _patch(self, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        item = self.slices[k]
        (cy, cx), (py, px) = self._centre(k), self.patch_shape
        top, left = _patch_start(cy, item.shape[0], py), _patch_start(cx, item.shape[1], px)
        margin = self.augmentation.margin()
        window = self._window(k, top - margin, left - margin, (py + 2 * margin, px + 2 * margin))
        patch = augment_patch(*window, self.augmentation, self._rng, margin)
        if not np.any(patch[2] > 0):
            # The deformation pushed every annotated pixel out of the patch: redo it rigidly.
            patch = augment_patch(
                *window, self.augmentation, self._rng, margin, allow_elastic=False
            )
        return patch

    def sample_batch(self, batch_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Draw a batch of augmented patches.

        Parameters
        ----------
        batch_size : int
            Number of patches ``B``.

        Returns
        -------
        images : numpy.ndarray
            float32 ``(B, C, py, px)``.
        targets : numpy.ndarray
            int64 ``(B, py, px)``.
        weights : numpy.ndarray
            float32 ``(B, py, px)``; every patch has at least one positive weight.
        """
        message = whole_number_problem(batch_size, "batch_size", 1)
        if message is not None:
            raise ValueError(message)
        py, px = self.patch_shape
        images = np.empty((batch_size, self.in_channels, py, px), dtype=np.float32)
        targets = np.empty((batch_size, py, px), dtype=np.int64)
        weights = np.empty((batch_size, py, px), dtype=np.float32)
        choices = self._rng.choice(len(self.slices), size=batch_size, p=self._probabilities)
        for b, k in enumerate(choices):
            images[b], targets[b], weights[b] = self._patch(int(k))
        return images, targets, weights
