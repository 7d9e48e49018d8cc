"""The training-data part of the "Train U-Net" widget: (image, labels, region) rows and checks.

The checks are cheap enough to run on every edit: shapes and types always; the content of the
labels (empty? how many classes?) only for in-memory arrays up to :data:`MAX_SCANNED_PIXELS`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import napari.viewer
import numpy as np
from magicgui.widgets import ComboBox, Container, Label, PushButton
from napari.layers import Image, Labels, Layer, Shapes

from napari_unetkit import layout
from napari_unetkit._napari.layers import (
    image_data,
    image_dtype_problem,
    labels_data,
    region_mask,
    snapshot,
)
from napari_unetkit.data import MAX_CLASSES

#: Labels layers larger than this (or not in memory) are not scanned while the user edits.
MAX_SCANNED_PIXELS = 50_000_000


@dataclass
class TrainingPairs:
    """Independent copies of the training data, taken when training starts.

    Attributes
    ----------
    pairs : list of (numpy.ndarray, numpy.ndarray)
        Image and labels of each pair.
    regions : list of (numpy.ndarray or None) or None
        Boolean annotated-region masks (``None`` when no pair has one).
    channel_axis : int or None
        Channel axis of every image (-1 for RGB).
    name : str
        Name of the first image layer (names the model and the preview).
    """

    pairs: list[tuple[np.ndarray, np.ndarray]]
    regions: list[np.ndarray | None] | None
    channel_axis: int | None
    name: str


def _layers(viewer: napari.viewer.Viewer, kinds: tuple[type, ...]) -> Callable:
    def choices(_widget: object) -> list[tuple[str, Layer]]:
        return [(layer.name, layer) for layer in viewer.layers if isinstance(layer, kinds)]

    return choices


def _scannable(data: object) -> bool:
    return isinstance(data, np.ndarray) and data.size <= MAX_SCANNED_PIXELS


class _LayerWatch:
    """Call ``callback`` when the data of the followed layer changes (painting included)."""

    EVENTS = ("data", "paint")

    def __init__(self, callback: Callable[..., None]) -> None:
        self._callback = callback
        self._layer: Layer | None = None

    def follow(self, layer: Layer | None) -> None:
        if layer is self._layer:
            return
        self._emitters(self._layer, connect=False)
        self._layer = layer
        self._emitters(layer, connect=True)

    def _emitters(self, layer: Layer | None, connect: bool) -> None:
        if layer is None:
            return
        for name in self.EVENTS:
            emitter = getattr(layer.events, name, None)
            if emitter is None:
                continue
            if connect:
                emitter.connect(self._callback)
            else:
                emitter.disconnect(self._callback)


class PairRow(Container):
    """One training pair: an Image layer, its Labels layer and an optional annotated region.

    Parameters
    ----------
    viewer : napari.viewer.Viewer
        Whose layers are offered.
    number : int
        1-based number shown in the row's title.
    removable : bool
        Whether the row has a "Remove" button (the first row is always there).
    """

    def __init__(self, viewer: napari.viewer.Viewer, number: int, removable: bool) -> None:
        super().__init__(labels=True)
        self.margins = (0, 4, 0, 4)
        self.title = Label(value=f"<b>Pair {number}</b>")
        self.image = ComboBox(
            label="Image",
            choices=_layers(viewer, (Image,)),
            tooltip="The microscopy image (2D, a stack of 2D slices, or RGB).",
        )
        self.labels = ComboBox(
            label="Labels",
            choices=_layers(viewer, (Labels,)),
            tooltip="Your annotation, same size as the image. Instances mode: each cell painted "
            "with its own number, 0 = background. Classes mode: 1, 2, ... = classes, 0 = not "
            "annotated.",
        )
        self.region = ComboBox(
            label="Annotated region",
            choices=_layers(viewer, (Shapes, Labels)),
            nullable=True,
            value=None,
            tooltip="Optional, for sparse annotation: a Shapes layer (rectangles, polygons) or "
            "a Labels mask marking where every cell is annotated. Outside it nothing is "
            "learned. Empty: the whole image is annotated.",
        )
        self.remove_button = PushButton(text="Remove", visible=removable)
        self.remove_button.tooltip = "Remove this pair from the training data."
        header = Container(layout="horizontal", labels=False, widgets=[self.title])
        header.margins = (0, 0, 0, 0)
        if removable:
            header.append(self.remove_button)
        self.extend([header, self.image, self.labels, self.region])
        self.image.changed.connect(self._match_labels)

    def _match_labels(self, *_: object) -> None:
        """After an image is chosen, pick a Labels layer of the right shape if needed.

        Among the fitting layers, one named like the image (``"<image> labels"``) comes first.
        """
        image = self.image.value
        current = self.labels.value
        if image is None or (current is not None and _shape_problem(image, current) is None):
            return
        fitting = [
            layer
            for layer in self.labels.choices
            if layer is not None and _shape_problem(image, layer) is None
        ]
        fitting.sort(key=lambda layer: not layer.name.startswith(image.name))
        if fitting:
            self.labels.value = fitting[0]

    def prefer_unused(self, used_images: set, used_labels: set) -> None:
        """Choose layers that no other row uses yet, where there are such layers."""
        for combo, used in ((self.image, used_images), (self.labels, used_labels)):
            free = [layer for layer in combo.choices if layer is not None and layer not in used]
            if free and combo.value in used:
                combo.value = free[0]

    def problem(self, number: int, mode: str) -> str | None:
        """Return why this pair cannot be trained on (``None`` if it can)."""
        return pair_problem(number, self.image.value, self.labels.value, self.region.value, mode)

    def take_snapshot(self) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, int | None]:
        """Copy the pair's data: image, labels, region mask (or None) and channel axis."""
        data, channel_axis = image_data(self.image.value)
        labels = snapshot(labels_data(self.labels.value))
        region = region_mask(self.region.value, labels.shape)
        return snapshot(data), labels, region, channel_axis


def _shape_problem(image: Image, labels: Labels) -> str | None:
    data, channel_axis = image_data(image)
    spatial = data.ndim - (channel_axis is not None)
    if spatial < 2:
        return f"{image.name!r} must be 2D or a stack of 2D slices."
    expected = layout.labels_shape(tuple(data.shape), channel_axis)
    found = tuple(labels_data(labels).shape)
    if found != expected:
        return (
            f"{labels.name!r} has shape {found}, but {image.name!r} needs labels of shape "
            f"{expected}."
        )
    return None


def _region_problem(region: Layer, labels: Labels) -> str | None:
    if region is labels:
        return "the annotated region must be another layer than the labels."
    shape = tuple(labels_data(labels).shape)
    if isinstance(region, Labels):
        found = tuple(labels_data(region).shape)
        if found != shape:
            return f"the region {region.name!r} has shape {found}, the labels {shape}."
        return None
    if isinstance(region, Shapes):
        if region.nshapes == 0:
            return f"the region {region.name!r} has no shapes: draw a rectangle or polygon."
        if region.ndim not in (2, len(shape)):
            return f"the region {region.name!r} is {region.ndim}D, the labels {len(shape)}D."
        return None
    return f"{region.name!r} cannot mark a region: use a Shapes or a Labels layer."


def _content_problem(labels: Labels, has_region: bool, mode: str) -> str | None:
    data = labels_data(labels)
    if not np.issubdtype(data.dtype, np.integer):
        return f"{labels.name!r} holds {data.dtype} values; labels must be whole numbers."
    if not _scannable(data):
        return None
    if not np.any(data) and (mode == "classes" or not has_region):
        return f"{labels.name!r} is empty: paint some {_what(mode)} first."
    if np.issubdtype(data.dtype, np.signedinteger) and data.min() < 0:
        zero = "background" if mode == "instances" else "not annotated"
        return f"{labels.name!r} holds negative values; use 0 ({zero}) and positive numbers."
    return None


def _what(mode: str) -> str:
    return "cells" if mode == "instances" else "classes (1, 2, ...)"


def pair_problem(
    number: int,
    image: Layer | None,
    labels: Layer | None,
    region: Layer | None,
    mode: str,
) -> str | None:
    """Return why a training pair is unusable, as a sentence for the user (``None``: usable).

    Parameters
    ----------
    number : int
        1-based number of the pair (for the message).
    image, labels, region : napari layers or None
        The chosen layers.
    mode : {"instances", "classes"}
        What the labels mean.
    """
    prefix = f"Pair {number}: "
    if not isinstance(image, Image):
        return prefix + "choose an Image layer (or open File > Open Sample > U-Net Kit)."
    if not isinstance(labels, Labels):
        return prefix + f"choose a Labels layer (add one and paint some {_what(mode)})."
    problem = image_dtype_problem(image) or _shape_problem(image, labels)
    if problem is None and region is not None:
        problem = _region_problem(region, labels)
    if problem is None:
        problem = _content_problem(labels, region is not None, mode)
    return None if problem is None else prefix + problem


def pairs_problem(images: Sequence[Image], labels: Sequence[Labels], mode: str) -> str | None:
    """Return a problem that involves several pairs (channels, classes), or ``None``.

    Call it only once every pair is usable on its own (see :func:`pair_problem`).
    """
    layouts = {(image.rgb, image_channels(image)) for image in images}
    if len(layouts) > 1:
        return "All images must have the same channels (all RGB, or all single-channel)."
    if mode != "classes":
        return None
    arrays = [labels_data(layer) for layer in labels]
    if not all(_scannable(array) for array in arrays):
        return None
    highest = max(int(array.max(initial=0)) for array in arrays)
    if highest < 2:
        return (
            "Classes mode needs at least two painted classes (e.g. 1 = background, 2 = cells; "
            "0 = not annotated). Paint a second class, or use instances mode."
        )
    if highest > MAX_CLASSES:
        return (
            f"Classes mode found label {highest} (at most {MAX_CLASSES} classes): these look "
            "like instance labels; use instances mode."
        )
    return None


def image_channels(image: Image) -> int:
    """Return how many channels the network reads from an Image layer (1, or 3/4 for RGB)."""
    data, channel_axis = image_data(image)
    return layout.n_channels(tuple(data.shape), channel_axis)


class PairList(Container):
    """The training pairs: a first row always present, plus rows added with "Add pair".

    Parameters
    ----------
    viewer : napari.viewer.Viewer
        Whose layers are offered.
    on_change : callable
        Called whenever a choice, a row, or the data of a chosen layer changes.
    """

    def __init__(self, viewer: napari.viewer.Viewer, on_change: Callable[..., None]) -> None:
        super().__init__(labels=False)
        self.margins = (0, 0, 0, 0)
        self._viewer = viewer
        self._on_change = on_change
        self.rows: list[PairRow] = []
        self._watches: dict[int, list[_LayerWatch]] = {}
        self.add_button = PushButton(text="Add pair")
        self.add_button.tooltip = "Train on more images: add another (image, labels) pair."
        self.append(self.add_button)
        self.add_button.changed.connect(self.add_row)
        self.add_row()

    def add_row(self, *_: object) -> PairRow:
        """Append a row (choices filled from the viewer's layers) and return it."""
        row = PairRow(self._viewer, len(self.rows) + 1, removable=bool(self.rows))
        row.reset_choices()
        row.region.value = None
        row.prefer_unused(
            {other.image.value for other in self.rows}, {other.labels.value for other in self.rows}
        )
        self.insert(len(self.rows), row)
        self.rows.append(row)
        watches = [_LayerWatch(self._on_change) for _ in range(2)]
        self._watches[id(row)] = watches
        row.changed.connect(self._follow_layers)
        row.remove_button.changed.connect(lambda *_: self.remove_row(row))
        self._follow_layers()
        return row

    def remove_row(self, row: PairRow) -> None:
        """Remove a row (never the first) and renumber the others."""
        if row not in self.rows[1:]:
            return
        for watch in self._watches.pop(id(row)):
            watch.follow(None)
        self.rows.remove(row)
        self.remove(row)
        for number, other in enumerate(self.rows, start=1):
            other.title.value = f"<b>Pair {number}</b>"
        self._on_change()

    def stop_watching(self) -> None:
        """Stop listening to the chosen layers' data (the widget is gone)."""
        for watches in self._watches.values():
            for watch in watches:
                watch.follow(None)

    def _follow_layers(self, *_: object) -> None:
        for row in self.rows:
            labels_watch, region_watch = self._watches[id(row)]
            labels_watch.follow(row.labels.value)
            region_watch.follow(row.region.value)
        self._on_change()

    def reset_choices(self, *_: object) -> None:
        """Refresh every row's layer lists (napari calls this when layers change)."""
        super().reset_choices()
        self._follow_layers()

    def problem(self, mode: str) -> str | None:
        """Return the first problem of the training data, or ``None`` if it can be used."""
        seen: dict[tuple[int, int], int] = {}
        for number, row in enumerate(self.rows, start=1):
            problem = row.problem(number, mode)
            if problem is not None:
                return problem
            key = (id(row.image.value), id(row.labels.value))
            if key in seen:
                return f"Pair {number} repeats pair {seen[key]}: choose other layers or remove it."
            seen[key] = number
        images = [row.image.value for row in self.rows]
        labels = [row.labels.value for row in self.rows]
        return pairs_problem(images, labels, mode)

    def first_image(self) -> Image | None:
        """Return the image of the first pair (it names the model and is previewed)."""
        return self.rows[0].image.value

    def take_snapshot(self) -> TrainingPairs:
        """Copy every pair's data so that painting during training cannot change the run."""
        pairs, regions, channel_axis = [], [], None
        for row in self.rows:
            image, labels, region, channel_axis = row.take_snapshot()
            pairs.append((image, labels))
            regions.append(region)
        has_region = any(region is not None for region in regions)
        return TrainingPairs(
            pairs=pairs,
            regions=regions if has_region else None,
            channel_axis=channel_axis,
            name=self.rows[0].image.value.name,
        )
