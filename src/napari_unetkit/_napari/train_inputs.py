"""The training-data part of the "Train U-Net" widget: (image, labels, region) rows and checks.

The checks are cheap enough to run on every edit: shapes and types always; the content of the
labels (empty? how many classes?) only for in-memory arrays up to :data:`MAX_SCANNED_PIXELS`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import napari.viewer
import numpy as np
from magicgui.widgets import ComboBox, Container, Label, PushButton
from napari.layers import Image, Labels, Layer, Shapes

from napari_unetkit import layout
from napari_unetkit._napari.layers import (
    image_data,
    image_dtype_problem,
    integer_image,
    labels_data,
    made_by_plugin,
    placement,
    region_mask,
    training_snapshot,
    unique_name,
)
from napari_unetkit.checks import (
    Problem,
    class_count_problem,
    labels_dtype_problem,
    negative_labels_problem,
)

#: Labels layers larger than this (or not in memory) are not scanned while the user edits.
MAX_SCANNED_PIXELS = 50_000_000
#: Objects are counted for the summary before Start only up to this many labelled pixels.
MAX_COUNTED_PIXELS = 20_000_000
#: How an Image layer offered as labels is marked in the Labels list.
IMAGE_AS_LABELS = " (image, used as labels)"
#: Image layers whose name contains one of these are picked as labels without being asked.
MASK_WORDS = ("label", "mask", "annot", "ground", "truth", "gt", "seg")


@dataclass
class TrainingPairs:
    """Independent copies of the training data, taken when training starts.

    Attributes
    ----------
    pairs : list of (array-like, array-like)
        Image and labels of each pair: NumPy copies, or the lazy arrays (dask, zarr) of
        lazily backed layers.
    regions : list of (numpy.ndarray or None) or None
        Boolean annotated-region masks (``None`` when no pair has one).
    channel_axis : int or None
        Channel axis of every image (-1 for RGB).
    name : str
        Name of the first image layer (names the model and the preview).
    """

    pairs: list[tuple[Any, Any]]
    regions: list[np.ndarray | None] | None
    channel_axis: int | None
    name: str


def _layers(viewer: napari.viewer.Viewer, kinds: tuple[type, ...]) -> Callable:
    """Choices of the layers of ``kinds``: the user's own first, this plugin's results last."""

    def choices(_widget: object) -> list[tuple[str, Layer]]:
        found = [layer for layer in viewer.layers if isinstance(layer, kinds)]
        found.sort(key=made_by_plugin)  # stable: the viewer's order within each group
        return [(layer.name, layer) for layer in found]

    return choices


def _labels_layers(viewer: napari.viewer.Viewer) -> Callable:
    """Choices of the Labels list: Labels layers, then integer Image layers (marked as such)."""
    labels = _layers(viewer, (Labels,))

    def choices(widget: object) -> list[tuple[str, Layer]]:
        images = [
            (layer.name + IMAGE_AS_LABELS, layer)
            for layer in viewer.layers
            if integer_image(layer) and not made_by_plugin(layer)
        ]
        return labels(widget) + images

    return choices


def looks_like_mask(name: str) -> bool:
    """Whether a layer name says it holds annotations (``"cells_masks"``, ``"labels 2"``)."""
    lowered = name.lower()
    return any(word in lowered for word in MASK_WORDS)


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
        # Not "labels": that attribute of a Container switches its captions on and off.
        self.labels_choice = ComboBox(
            label="Labels",
            choices=_labels_layers(viewer),
            nullable=True,
            value=None,
            tooltip="Your annotation, same size as the image. Instances mode: each cell painted "
            "with its own number, 0 = background. Classes mode: 1, 2, ... = classes, 0 = not "
            "annotated. Masks opened from a file as an Image layer are listed too.",
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
        self.pad_button = PushButton(text="Add empty frames", visible=False)
        self.pad_button.tooltip = (
            "The labels hold fewer frames than the image: add a copy of them as a new Labels "
            "layer, with empty (not annotated) frames after the ones you have."
        )
        header = Container(layout="horizontal", labels=False, widgets=[self.title])
        header.margins = (0, 0, 0, 0)
        if removable:
            header.append(self.remove_button)
        self.extend([header, self.image, self.labels_choice, self.pad_button, self.region])
        self._viewer = viewer
        self.image.changed.connect(self._match_labels)
        self.pad_button.changed.connect(self.add_empty_frames)

    def _match_labels(self, *_: object) -> None:
        """After an image is chosen, pick labels of the right shape if the current ones do not fit.

        See :meth:`pick_labels` for which layers are picked.
        """
        image = self.image.value
        current = self.labels_choice.value
        if image is None or (current is not None and _shape_problem(image, current) is None):
            return
        picked = self.pick_labels(set(), fitting_only=True)
        if picked is not None:
            self.labels_choice.value = picked

    def pick_labels(self, used: set, fitting_only: bool = False) -> Layer | None:
        """Return the labels to choose by default, or ``None`` if no layer should be chosen.

        Only layers the user made are picked, never a result of this plugin (a prediction or
        a preview): first a Labels layer of the image's shape (one named like the image,
        ``"<image> labels"``, first), then an integer Image layer of that shape whose name says
        it is a mask, then (unless ``fitting_only``) any other Labels layer, whose shape the
        checks will then explain. Layers in ``used`` (by other pairs) are avoided.
        """
        image = self.image.value
        candidates = [
            layer
            for layer in self.labels_choice.choices
            if layer is not None
            and layer is not image
            and layer not in used
            and not made_by_plugin(layer)
            and (isinstance(layer, Labels) or looks_like_mask(layer.name))
        ]
        if image is not None:
            fitting = [layer for layer in candidates if _shape_problem(image, layer) is None]
            fitting.sort(
                key=lambda layer: (
                    not isinstance(layer, Labels),
                    not layer.name.startswith(image.name),
                )
            )
            if fitting:
                return fitting[0]
        if fitting_only:
            return None
        return next((layer for layer in candidates if isinstance(layer, Labels)), None)

    def missing_frames(self) -> int:
        """How many frames the chosen labels lack to match the image (0 when that is not so)."""
        image, labels = self.image.value, self.labels_choice.value
        if image is None or labels is None:
            return 0
        data, channel_axis = image_data(image)
        expected = layout.labels_shape(tuple(data.shape), channel_axis)
        return missing_frames(expected, tuple(labels_data(labels).shape))

    def update_pad_button(self) -> None:
        """Show "Add empty frames" only when the labels lack frames at the end."""
        self.pad_button.visible = self.missing_frames() > 0

    def add_empty_frames(self, *_: object) -> Layer | None:
        """Add the chosen labels, followed by empty frames, as a new Labels layer and choose it.

        The chosen layer itself is not changed. Returns the new layer (``None`` if the labels
        do not lack frames).
        """
        missing = self.missing_frames()
        labels = self.labels_choice.value
        if missing == 0:
            return None
        data = np.asarray(labels_data(labels))
        padded = np.concatenate([data, np.zeros((missing, *data.shape[1:]), data.dtype)])
        layer = self._viewer.add_labels(
            padded,
            name=unique_name(self._viewer, f"{labels.name} ({len(padded)} frames)"),
            **placement(labels),
        )
        self.labels_choice.reset_choices()
        self.labels_choice.value = layer
        return layer

    def prefer_unused(self, used_images: set, used_labels: set) -> None:
        """Choose layers that no other row uses yet, where there are such layers."""
        free = [
            layer
            for layer in self.image.choices
            if layer is not None and layer not in used_images and not made_by_plugin(layer)
        ]
        if free and self.image.value in used_images:
            self.image.value = free[0]
        current = self.labels_choice.value
        if current is None or current in used_labels:
            self.labels_choice.value = self.pick_labels(used_labels)

    def problem(self, number: int, mode: str) -> str | None:
        """Return why this pair cannot be trained on (``None`` if it can)."""
        return pair_problem(
            number, self.image.value, self.labels_choice.value, self.region.value, mode
        )

    def field_problem(self, mode: str) -> Problem | None:
        """Return this pair's first problem with its field (see :func:`pair_field_problem`)."""
        return pair_field_problem(
            self.image.value, self.labels_choice.value, self.region.value, mode
        )

    def field_widgets(self) -> dict[str, object]:
        """Field name -> widget: ``image``, ``labels`` and ``region``."""
        return {"image": self.image, "labels": self.labels_choice, "region": self.region}

    def take_snapshot(self) -> tuple[Any, Any, np.ndarray | None, int | None]:
        """Copy the pair's data: image, labels, region mask (or None) and channel axis.

        Lazily backed layers (dask, zarr) are handed over uncopied (see
        :func:`~napari_unetkit._napari.layers.training_snapshot`).
        """
        data, channel_axis = image_data(self.image.value)
        labels = training_snapshot(labels_data(self.labels_choice.value))
        region = region_mask(self.region.value, tuple(labels.shape))
        return training_snapshot(data), labels, region, channel_axis


def _shape_problem(image: Image, labels: Layer) -> str | None:
    data, channel_axis = image_data(image)
    spatial = data.ndim - (channel_axis is not None)
    if spatial < 2:
        return f"{image.name!r} must be 2D or a stack of 2D slices."
    expected = layout.labels_shape(tuple(data.shape), channel_axis)
    found = tuple(labels_data(labels).shape)
    if found == expected:
        return None
    if missing_frames(expected, found):
        return (
            f"{labels.name!r} has {found[0]} frames but {image.name!r} has {expected[0]}: the "
            "labels need one frame per image frame, with 0 on the frames you did not annotate. "
            f"If they are the first {found[0]} frames, click 'Add empty frames' to add a copy "
            f"of {labels.name!r} with {expected[0] - found[0]} empty frames after them; "
            f"otherwise paint in a new Labels layer of shape {expected}."
        )
    return (
        f"{labels.name!r} has shape {found}, but {image.name!r} needs labels of shape {expected}."
    )


def missing_frames(expected: tuple[int, ...], found: tuple[int, ...]) -> int:
    """Return how many frames labels of shape ``found`` lack to match ``expected`` (0: not that).

    Only a shortfall on the first axis counts (a stack holding only the annotated frames).
    """
    if len(found) != len(expected) or len(found) < 3 or found[1:] != expected[1:]:
        return 0
    return max(expected[0] - found[0], 0)


def _region_problem(region: Layer, labels: Layer) -> str | None:
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


def _content_problem(labels: Layer, has_region: bool, mode: str) -> str | None:
    """Apply the engine's rules on labels values (dtype, sign), then ask: is anything painted."""
    data = labels_data(labels)
    message = labels_dtype_problem(data.dtype)
    if message is not None or not _scannable(data):
        return message
    if not np.any(data) and (mode == "classes" or not has_region):
        return f"{labels.name!r} is empty: paint some {_what(mode)} first."
    return negative_labels_problem(data, mode)


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
    found = pair_field_problem(image, labels, region, mode)
    return None if found is None else f"Pair {number}: {found.message}"


def pair_field_problem(
    image: Layer | None, labels: Layer | None, region: Layer | None, mode: str
) -> Problem | None:
    """Return a pair's first problem with the field at fault (``image``, ``labels``, ``region``).

    The rules on the labels' values are the engine's (:mod:`napari_unetkit.checks`), with its
    messages; the others concern the choice of layers.
    """
    if not isinstance(image, Image):
        return Problem("image", "choose an Image layer (or open File > Open Sample > U-Net Kit).")
    if labels is None:
        return Problem(
            "labels",
            f"choose a Labels layer (add one and paint some {_what(mode)}). A mask opened as "
            "an Image layer is listed if it holds whole numbers; otherwise convert it with "
            "Layers > Convert to Labels.",
        )
    if labels is image:
        return Problem("labels", "the labels must be another layer than the image.")
    if not isinstance(labels, Labels) and not integer_image(labels):
        return Problem(
            "labels",
            f"{labels.name!r} is not a Labels layer: convert it with Layers > Convert to Labels.",
        )
    problem = image_dtype_problem(image)
    if problem is not None:
        return Problem("image", problem)
    problem = _shape_problem(image, labels)
    if problem is not None:
        return Problem("labels", problem)
    if region is not None:
        problem = _region_problem(region, labels)
        if problem is not None:
            return Problem("region", problem)
    problem = _content_problem(labels, region is not None, mode)
    return None if problem is None else Problem("labels", problem)


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
    return class_count_problem(highest)


def annotation_counts(
    labels: np.ndarray, region: np.ndarray | None, mode: str
) -> tuple[int, int, int]:
    """Count what training will learn from in one labels array.

    Parameters
    ----------
    labels : numpy.ndarray
        Labels ``(..., Y, X)``; leading axes are frames.
    region : numpy.ndarray or None
        Boolean annotated region of the same shape (``None``: the whole image).
    mode : {"instances", "classes"}
        What the labels mean.

    Returns
    -------
    tuple of int
        Frames; annotated frames (with a label, or with an annotated region in instances
        mode: those training uses); then instances mode: objects, counted per frame (an id
        in two frames counts twice); classes mode: painted pixels inside the region.
    """
    frames = labels.reshape(-1, *labels.shape[-2:])
    regions = None if region is None else region.reshape(frames.shape)
    annotated, amount = 0, 0
    for index, frame in enumerate(frames):
        inside = None if regions is None else regions[index]
        if mode == "instances":
            used = frame.any() if inside is None else inside.any()
            amount += _distinct_ids(frame) if used else 0
        else:
            painted = frame > 0 if inside is None else (frame > 0) & inside
            used = painted.any()
            amount += int(np.count_nonzero(painted))
        annotated += bool(used)
    return len(frames), annotated, amount


def _distinct_ids(frame: np.ndarray) -> int:
    """Return the number of distinct positive labels in one frame."""
    positive = frame[frame > 0]
    if positive.size == 0:
        return 0
    if positive.max() < 4 * frame.size:
        return int(np.count_nonzero(np.bincount(positive.astype(np.int64, copy=False))))
    return int(np.unique(positive).size)


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
            {other.image.value for other in self.rows},
            {other.labels_choice.value for other in self.rows},
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
            labels_watch.follow(row.labels_choice.value)
            region_watch.follow(row.region.value)
            row.update_pad_button()
        self._on_change()

    def reset_choices(self, *_: object) -> None:
        """Refresh every row's layer lists (napari calls this when layers change).

        A row without labels (none existed, or its layer was removed) gets the best layer the
        user made, if there is one now (see :meth:`PairRow.pick_labels`).
        """
        super().reset_choices()
        for row in self.rows:
            if row.labels_choice.value is None:
                used = {other.labels_choice.value for other in self.rows if other is not row}
                picked = row.pick_labels(used)
                if picked is not None:
                    row.labels_choice.value = picked
        self._follow_layers()

    def problem(self, mode: str) -> str | None:
        """Return the first problem of the training data, or ``None`` if it can be used."""
        found = self.field_problem(mode)
        return None if found is None else found[0]

    def field_problem(self, mode: str) -> tuple[str, Problem, object | None] | None:
        """Return the first problem of the training data with where it is, or ``None``.

        Returns
        -------
        tuple or None
            The sentence to show (``"Pair 2: ..."``), the :class:`Problem` (its message as the
            engine words it, its field ``image``, ``labels``, ``region`` or ``pairs``), and the
            widget holding it (``None``: several).
        """
        seen: dict[tuple[int, int], int] = {}
        for number, row in enumerate(self.rows, start=1):
            problem = row.field_problem(mode)
            if problem is not None:
                widget = row.field_widgets()[problem.field]
                return f"Pair {number}: {problem.message}", problem, widget
            key = (id(row.image.value), id(row.labels_choice.value))
            if key in seen:
                text = f"Pair {number} repeats pair {seen[key]}: choose other layers or remove it."
                return text, Problem("pairs", text), row.labels_choice
            seen[key] = number
        images = [row.image.value for row in self.rows]
        labels = [row.labels_choice.value for row in self.rows]
        text = pairs_problem(images, labels, mode)
        if text is None:
            return None
        field = "image" if text.startswith("All images") else "labels"
        return text, Problem(field, text), None

    def summary(self, mode: str) -> str:
        """Say in one line what training will use, e.g. ``"10 of 20 frames annotated ..."``.

        Call it only when :meth:`problem` finds none. Frames without any annotation (no label,
        and no annotated region) are skipped by training; objects are counted per frame
        (instances mode) and painted pixels summed (classes mode), for labels up to
        :data:`MAX_COUNTED_PIXELS` pixels in all (larger ones are not counted here).
        """
        pairs = len(self.rows)
        text = f"Training data: {pairs} pair{'s' if pairs != 1 else ''}"
        arrays = [labels_data(row.labels_choice.value) for row in self.rows]
        if not all(_scannable(a) for a in arrays) or sum(a.size for a in arrays) > (
            MAX_COUNTED_PIXELS
        ):
            return text + "."
        counts = np.zeros(3, dtype=np.int64)  # frames, annotated frames, objects or pixels
        for row, array in zip(self.rows, arrays, strict=True):
            try:
                region = region_mask(row.region.value, array.shape)
            except ValueError:
                region = None
            counts += annotation_counts(array, region, mode)
        frames, annotated, amount = (int(n) for n in counts)
        if frames > pairs:
            text += f"; {annotated} of {frames} frames annotated"
            if annotated < frames:
                text += " (empty frames are skipped)"
        what = "object" if mode == "instances" else "painted pixel"
        return text + f"; {amount:,} {what}{'s' if amount != 1 else ''}."

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
