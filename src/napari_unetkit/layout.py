"""How an image array's axes map to 2D slices.

The U-Net works on 2D slices of shape ``(C, Y, X)``. An image may be 2D ``(Y, X)``, 2D with a
channel axis (RGB ``(Y, X, 3)``, or ``(C, Y, X)``), or a stack whose leading axes (Z, T, ...) are
taken slice-wise. The two spatial axes are always the last two axes once the channel axis (if any)
is set aside.

Nothing here copies a whole stack: slices are read one at a time, which also keeps dask- or
zarr-backed arrays lazy.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from itertools import product

import numpy as np


def normalize_channel_axis(ndim: int, channel_axis: int | None) -> int | None:
    """Return the channel axis as a non-negative index, or ``None``.

    Parameters
    ----------
    ndim : int
        Number of dimensions of the image.
    channel_axis : int or None
        Channel axis, negative values counting from the end.

    Returns
    -------
    int or None
        The channel axis in ``range(ndim)``, or ``None`` when the image has no channel axis.

    Raises
    ------
    ValueError
        If the axis is out of range or the image has fewer than two spatial axes.
    """
    spatial_needed = 2 + (channel_axis is not None)
    if ndim < spatial_needed:
        what = "a channel axis and two spatial axes" if channel_axis is not None else "two axes"
        hint = ""
        if channel_axis is not None and ndim == 2:
            hint = " A single-channel (greyscale) image has no channel axis: leave it unset."
        raise ValueError(f"An image needs at least {what} (Y, X); this one has {ndim}.{hint}")
    if channel_axis is None:
        return None
    if not -ndim <= channel_axis < ndim:
        raise ValueError(f"Channel axis {channel_axis} does not exist in a {ndim}D image.")
    return channel_axis % ndim


def _axes(ndim: int, channel_axis: int | None) -> tuple[list[int], int | None, tuple[int, int]]:
    """Split axes into (slice axes, channel axis, (y axis, x axis))."""
    channel = normalize_channel_axis(ndim, channel_axis)
    others = [axis for axis in range(ndim) if axis != channel]
    return others[:-2], channel, (others[-2], others[-1])


def slice_index_shape(shape: tuple[int, ...], channel_axis: int | None = None) -> tuple[int, ...]:
    """Return the shape of the leading slice axes (``()`` for a single 2D image).

    Parameters
    ----------
    shape : tuple of int
        Shape of the image.
    channel_axis : int or None
        Channel axis, if any.

    Returns
    -------
    tuple of int
        Sizes of the axes that are iterated slice-wise.
    """
    slice_axes, _, _ = _axes(len(shape), channel_axis)
    return tuple(shape[axis] for axis in slice_axes)


def slice_shape(shape: tuple[int, ...], channel_axis: int | None = None) -> tuple[int, int]:
    """Return the ``(Y, X)`` size of one slice."""
    _, _, (y_axis, x_axis) = _axes(len(shape), channel_axis)
    return shape[y_axis], shape[x_axis]


def n_channels(shape: tuple[int, ...], channel_axis: int | None = None) -> int:
    """Return the number of channels (1 when there is no channel axis)."""
    channel = normalize_channel_axis(len(shape), channel_axis)
    return 1 if channel is None else shape[channel]


def n_slices(shape: tuple[int, ...], channel_axis: int | None = None) -> int:
    """Return how many 2D slices the image holds."""
    return int(np.prod(slice_index_shape(shape, channel_axis), dtype=np.int64))


def labels_shape(shape: tuple[int, ...], channel_axis: int | None = None) -> tuple[int, ...]:
    """Return the shape a labels array matching this image has (the image without channels)."""
    return slice_index_shape(shape, channel_axis) + slice_shape(shape, channel_axis)


def get_slice(
    array,
    index: tuple[int, ...],
    channel_axis: int | None = None,
    rows: slice = slice(None),
    cols: slice = slice(None),
) -> np.ndarray:
    """Read one slice, or a rectangle of it, as a NumPy array of shape ``(C, Y, X)``.

    Parameters
    ----------
    array : array-like
        NumPy, dask, zarr or any array supporting basic indexing.
    index : tuple of int
        Position along the slice axes (``()`` for a 2D image).
    channel_axis : int or None
        Channel axis, if any.
    rows, cols : slice
        The part of the slice's Y and X axes to read (default all); only that part is read
        from a lazy array.

    Returns
    -------
    numpy.ndarray
        The slice with the channel axis first (a view where NumPy allows it).
    """
    slice_axes, channel, (y_axis, x_axis) = _axes(array.ndim, channel_axis)
    if len(index) != len(slice_axes):
        raise ValueError(f"Slice index {index} does not match {len(slice_axes)} slice axes.")
    selector: list[int | slice] = [slice(None)] * array.ndim
    selector[y_axis], selector[x_axis] = rows, cols
    for axis, position in zip(slice_axes, index, strict=True):
        selector[axis] = position
    data = np.asarray(array[tuple(selector)])
    if channel is None:
        return data[np.newaxis]
    # After integer indexing only channel, Y and X remain, in their original order.
    remaining_channel = channel - sum(axis < channel for axis in slice_axes)
    return np.moveaxis(data, remaining_channel, 0)


def infer_channel_axis(
    image_shape: tuple[int, ...],
    channels: int | None = None,
    labels_shape: tuple[int, ...] | None = None,
) -> int | None:
    """Guess the channel axis of an image read from a file (no axis names known).

    With labels: the axis whose removal gives the labels' shape (last axis first). With a
    model's channel count ``channels > 1``: the last axis if it has that size, else the first.
    Otherwise ``None`` (grey image or stack).
    """
    if labels_shape is not None and len(image_shape) == len(labels_shape) + 1:
        for axis in (len(image_shape) - 1, 0):
            if image_shape[:axis] + image_shape[axis + 1 :] == tuple(labels_shape):
                return axis - len(image_shape) if axis else 0
    if channels and channels > 1:
        if image_shape[-1] == channels:
            return -1
        if image_shape[0] == channels:
            return 0
    return None


def check_channel_choice(channels: Sequence[int] | None, available: int) -> list[int] | None:
    """Validate a choice of channels (indices into the channel axis) for ``available`` channels.

    Parameters
    ----------
    channels : sequence of int or None
        The chosen channels, in the order the model sees them; ``None`` means all.
    available : int
        How many channels the images have.

    Returns
    -------
    list of int or None
        The choice as plain ints (``None`` stays ``None``).

    Raises
    ------
    ValueError
        For an empty choice, repeated or non-integer entries, or channels the images lack.
    """
    if channels is None:
        return None
    values = list(channels)
    if not values:
        raise ValueError("Choose at least one channel (or all channels).")
    for value in values:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ValueError(f"Channels are whole numbers counted from 0, got {value!r}.")
        if not 0 <= value < available:
            have = (
                "1 channel (0)" if available == 1 else f"{available} channels (0-{available - 1})"
            )
            raise ValueError(f"Channel {value} does not exist: the images have {have}.")
    if len(set(values)) != len(values):
        raise ValueError(f"Each channel can be chosen once, got {values}.")
    return [int(v) for v in values]


def slice_indices(shape: tuple[int, ...], channel_axis: int | None = None) -> list[tuple[int, ...]]:
    """Return every slice index in C order."""
    return list(product(*(range(size) for size in slice_index_shape(shape, channel_axis))))


def iter_slices(
    array, channel_axis: int | None = None
) -> Iterator[tuple[tuple[int, ...], np.ndarray]]:
    """Yield ``(index, slice)`` pairs, each slice of shape ``(C, Y, X)``.

    Parameters
    ----------
    array : array-like
        The image (2D, 2D with channels, or a stack).
    channel_axis : int or None
        Channel axis, if any.

    Yields
    ------
    tuple
        The slice index (a tuple over the leading axes) and the slice as a NumPy array.
    """
    for index in slice_indices(array.shape, channel_axis):
        yield index, get_slice(array, index, channel_axis)
