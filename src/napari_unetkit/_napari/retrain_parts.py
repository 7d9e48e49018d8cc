"""The pure parts of the "Correct and retrain" panel: corrections, slice order, budgets, labels.

Nothing here holds state or touches a viewer: :func:`take_correction` copies one slice of
napari layers into arrays for :meth:`napari_unetkit.project.Project.add`, :func:`next_index`
orders the slices of a stack, :func:`round_config` sets a round's budget, and the ``*_label``
functions write the panel's list entries.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from napari.layers import Image, Layer

from napari_unetkit import layout
from napari_unetkit._napari.layers import image_data, labels_data, region_mask
from napari_unetkit.project import Entry, ModelVersion
from napari_unetkit.training import TrainConfig


def round_config(base: TrainConfig, amount: int, unit: str, data_name: str) -> TrainConfig:
    """Return the settings of one round: ``base`` with the budget ``amount`` ``unit``.

    Parameters
    ----------
    base : TrainConfig
        Everything but the budget (a first round's network size, patches, ...).
    amount : int
        How many minutes or epochs.
    unit : {"minutes", "epochs"}
        The budget's unit.
    data_name : str
        Stored in the model as the name of its training data.
    """
    if unit == "minutes":
        return replace(base, epochs=None, time_limit=60.0 * amount, data_name=data_name)
    return replace(base, epochs=int(amount), time_limit=None, data_name=data_name)


@dataclass(frozen=True)
class Correction:
    """One slice of an image with its corrected labels, ready to be added to a project.

    Attributes
    ----------
    image : numpy.ndarray
        The image slice, ``(Y, X)``, or ``(C, Y, X)`` for a colour image.
    labels : numpy.ndarray
        Its labels, ``(Y, X)``, copied.
    region : numpy.ndarray or None
        The checked area, boolean ``(Y, X)``; ``None``: the whole slice was checked.
    channel_axis : int or None
        0 for a colour image, else ``None``.
    index : tuple of int
        Which slice of the image it is (``()`` for a 2D image).
    """

    image: np.ndarray
    labels: np.ndarray
    region: np.ndarray | None
    channel_axis: int | None
    index: tuple[int, ...]


def take_correction(
    image: Image, labels: Layer, region: Layer | None, index: tuple[int, ...]
) -> Correction:
    """Copy slice ``index`` of ``image``, ``labels`` and ``region`` (the layers stay as they are).

    ``labels`` may cover the whole image (one plane per slice) or one slice (``(Y, X)``); the
    region may be a Labels layer shaped like the labels, or a Shapes layer. What the slice
    holds (integer labels, an empty correction, an empty region) is checked by
    :meth:`napari_unetkit.project.Project.add`.

    Raises
    ------
    ValueError
        With a sentence for the user: labels or region of the wrong shape, the labels layer
        chosen as the region.
    """
    data, channel_axis = image_data(image)
    whole = layout.labels_shape(tuple(data.shape), channel_axis)
    plane = whole[-2:]
    found = labels_data(labels)
    if tuple(found.shape) not in (whole, plane):
        one_slice = f" (or {plane} for one slice)" if whole != plane else ""
        raise ValueError(
            f"The labels {labels.name!r} have shape {tuple(found.shape)}, but {image.name!r} "
            f"needs labels of shape {whole}{one_slice}: choose labels painted on this image."
        )
    per_slice = tuple(found.shape) == whole
    labels_slice = np.array(found[index] if per_slice else found, copy=True)
    mask = None
    if region is not None:
        if region is labels:
            raise ValueError("The checked region must be another layer than the labels.")
        full_mask = region_mask(region, tuple(found.shape))
        mask = np.array(full_mask[index] if per_slice else full_mask, dtype=bool)
    image_slice = np.array(layout.get_slice(data, index, channel_axis), copy=True)
    if channel_axis is None:
        return Correction(image_slice[0], labels_slice, mask, None, index)
    return Correction(image_slice, labels_slice, mask, 0, index)


def next_index(sizes: tuple[int, ...], index: tuple[int, ...]) -> tuple[int, ...] | None:
    """Return the slice after ``index`` in C order (the last axis moves fastest), or ``None``.

    Parameters
    ----------
    sizes : tuple of int
        Number of positions along each slice axis (``()`` for a 2D image).
    index : tuple of int
        The current slice.
    """
    position = list(index)
    for axis in reversed(range(len(sizes))):
        if position[axis] + 1 < sizes[axis]:
            position[axis] += 1
            return tuple(position)
        position[axis] = 0
    return None


def slice_words(index: tuple[int, ...]) -> str:
    """Name a slice for messages and sources: ``""`` for 2D, ``" slice 3"``, ``" slice (1, 3)"``."""
    if not index:
        return ""
    return f" slice {index[0]}" if len(index) == 1 else f" slice {index}"


def image_shape(image: Image) -> tuple[tuple[int, ...], int | None]:
    """Return an Image layer's data shape and channel axis (nothing is read)."""
    data, channel_axis = image_data(image)
    return tuple(data.shape), channel_axis


def empty_or_missing(folder: Path) -> bool:
    """Whether ``folder`` does not exist or is an empty folder (a project may be created)."""
    try:
        return not folder.exists() or (folder.is_dir() and not any(folder.iterdir()))
    except OSError:
        return False


def fits(image: Image, labels: Layer) -> bool:
    """Whether ``labels`` can be corrections of ``image``: its whole shape, or one slice's."""
    whole = layout.labels_shape(*image_shape(image))
    found = tuple(labels_data(labels).shape)
    return found in (whole, whole[-2:])


def local_time(iso: str) -> str:
    """Show an ISO 8601 time as local ``"YYYY-MM-DD HH:MM"`` (unchanged if it is not one)."""
    try:
        return datetime.datetime.fromisoformat(iso).astimezone().strftime("%Y-%m-%d %H:%M")
    except ValueError:
        return iso


def entry_label(entry: Entry) -> str:
    """One line of the training-set list: ``"e0003 · cells slice 4 · 17 objects · region"``."""
    objects = f"{entry.n_objects} object{'s' if entry.n_objects != 1 else ''}"
    parts = [entry.id, entry.source or "(no source)", objects]
    if entry.has_region:
        parts.append("checked region")
    return " · ".join(parts)


def version_label(version: ModelVersion) -> str:
    """One line of the model list, e.g. ``"v002 · 2026-12-02 10:41 · 3 slices · score 0.874"``.

    The score is the version's best validation score (instance F1, or mean IoU in classes
    mode); a fine-tuned version ends with ``"from v001"`` (or the file it started from).
    """
    count = len(version.entries)
    parts = [version.name, local_time(version.created), f"{count} slice{'s' if count != 1 else ''}"]
    if version.score is not None:
        parts.append(f"score {version.score:.3f}")
    if version.parent is not None:
        parts.append(f"from v{version.parent:03d}")
    elif version.base is not None:
        parts.append(f"from {Path(version.base).name}")
    return " · ".join(parts)
