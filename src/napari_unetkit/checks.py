"""Input checks shared by every front end: one pre-check per job, problems per field.

Each job has one pre-check, run by every front end before any work starts:
:func:`train_problems` (the settings of :class:`~napari_unetkit.training.TrainConfig`, the
model file and the training labels), :func:`predict_problems` (the image against the model and
the prediction options) and :func:`weightmap_problems` (the labels). A pre-check returns a list
of :class:`Problem` ``(field, message)``; an empty list means the job may start. ``field`` names
the input in the engine's words (a :class:`~napari_unetkit.training.TrainConfig` field name,
``"out"``, ``"labels"``, ``"image"``, ...), so that the CLI prints each message on its own line
and a widget marks the field that holds the mistake. The messages are written once, here: the
same bad input reads the same in the CLI, in napari and in an engine exception
(:class:`InvalidInput`, a ``ValueError`` carrying the problems).

The number checks (:func:`whole_number_problem`, :func:`number_problem`,
:func:`choice_problem`) are the one way every engine module states a bound on a value.

This module imports only the standard library and NumPy at import time (the engine modules
import it); the job checks import the engine's constants when called.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "INSTANCE_CLASS_NAMES",
    "MAX_CLASSES",
    "MODEL_SUFFIX",
    "MODES",
    "InvalidInput",
    "Problem",
    "choice_problem",
    "model_file_name",
    "number_problem",
    "parse_channels",
    "predict_problems",
    "raise_problems",
    "train_problems",
    "weightmap_problems",
    "whole_number_problem",
]

#: Labelling modes: separated instances (2 classes) or painted classes ``1..K``.
MODES = ("instances", "classes")
#: Names of an instance model's two classes (stored in its description unless others are given).
INSTANCE_CLASS_NAMES = ("background", "cell")
#: The most classes a network of this package has. Classes mode paints one label per class,
#: ``1..K``; more than 64 painted labels are, in practice, instance ids given by mistake, and a
#: network with more outputs than that is not one this package trains (model files claiming
#: more are refused as not ours).
MAX_CLASSES = 64
#: The model file extension (compared without regard to case).
MODEL_SUFFIX = ".unet"
#: Default of arguments whose absence means "not checked".
NOT_GIVEN: Any = object()


@dataclass(frozen=True)
class Problem:
    """One reason a job cannot start.

    Attributes
    ----------
    field : str
        The input at fault, in the engine's words (e.g. ``"patch_size"``, ``"out"``,
        ``"labels"``, ``"image"``).
    message : str
        One sentence for the user: what is wrong and what to do.
    """

    field: str
    message: str


class InvalidInput(ValueError):
    """Raised by the engine for inputs its pre-check refuses; carries every problem.

    ``str(error)`` is the first problem's message (the one a one-line front end shows).
    """

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = tuple(problems)
        super().__init__(self.problems[0].message if self.problems else "Invalid input.")


def raise_problems(problems: Sequence[Problem]) -> None:
    """Raise :class:`InvalidInput` if ``problems`` is not empty."""
    if problems:
        raise InvalidInput(problems)


# --------------------------------------------------------------------------------------------
# Number and choice checks: the one style every engine module uses
# --------------------------------------------------------------------------------------------


def _is_whole(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_real(value: Any) -> bool:
    ok = isinstance(value, (int, float, np.integer, np.floating))
    return ok and not isinstance(value, (bool, np.bool_)) and math.isfinite(float(value))


def _same_kind(value: Any, option: Any) -> bool:
    """Whether ``value`` may equal ``option`` (``1.0`` or ``True`` is not the choice ``1``)."""
    if isinstance(option, str):
        return isinstance(value, str)
    if isinstance(option, (bool, np.bool_)):
        return isinstance(value, (bool, np.bool_))
    if isinstance(option, (int, np.integer)):
        return _is_whole(value)
    return True


def _text(bound: float) -> str:
    return str(bound) if isinstance(bound, (int, np.integer)) else f"{bound:g}"


def _bounds(low: float | None, high: float | None, open_low: bool, open_high: bool) -> str:
    if low is not None and high is not None:
        if open_low and open_high:
            return f"between {_text(low)} and {_text(high)} (exclusive)"
        if open_high:
            return f"from {_text(low)} to below {_text(high)}"
        if open_low:
            return f"above {_text(low)} and at most {_text(high)}"
        return f"from {_text(low)} to {_text(high)}"
    if low is not None:
        return f"> {_text(low)}" if open_low else f">= {_text(low)}"
    if high is not None:
        return f"< {_text(high)}" if open_high else f"<= {_text(high)}"
    return ""


def _message(start: str, bounds: str, value: Any, hint: str) -> str:
    text = f"{start}{' ' + bounds if bounds else ''}, got {value!r}"
    return f"{text}; {hint}." if hint else f"{text}."


def whole_number_problem(
    value: Any,
    name: str,
    low: int | None = None,
    high: int | None = None,
    *,
    allow_none: bool = False,
    hint: str = "",
) -> str | None:
    """Say why ``value`` is not a whole number in ``[low, high]`` (``None`` if it is).

    The message reads ``"<name> must be a whole number >= 1, got 0."`` (or ``from 1 to 1024``);
    a ``hint`` follows after a semicolon.
    """
    if value is None and allow_none:
        return None
    if _is_whole(value) and (low is None or value >= low) and (high is None or value <= high):
        return None
    bounds = _bounds(low, high, False, False)
    return _message(f"{name} must be a whole number", bounds, value, hint)


def number_problem(
    value: Any,
    name: str,
    low: float | None = None,
    high: float | None = None,
    *,
    open_low: bool = False,
    open_high: bool = False,
    allow_none: bool = False,
    hint: str = "",
) -> str | None:
    """Say why ``value`` is not a finite number within the bounds (``None`` if it is).

    ``open_low`` / ``open_high`` exclude the bound itself. The message reads
    ``"<name> must be a finite number >= 0, got -1."`` (or ``from 0 to 1``, ``between 0 and 1
    (exclusive)``, ...); a ``hint`` follows after a semicolon.
    """
    if value is None and allow_none:
        return None
    if _is_real(value):
        number = float(value)
        above = low is None or (number > low if open_low else number >= low)
        below = high is None or (number < high if open_high else number <= high)
        if above and below:
            return None
    bounds = _bounds(low, high, open_low, open_high)
    return _message(f"{name} must be a finite number", bounds, value, hint)


def choice_problem(value: Any, name: str, options: Iterable[Any]) -> str | None:
    """Say why ``value`` is not one of ``options`` (``None`` if it is)."""
    options = tuple(options)
    if any(_same_kind(value, option) and value == option for option in options):
        return None
    return f"{name} must be one of {', '.join(map(str, options))}, got {value!r}."


def _collect(problems: list[Problem], field: str, message: str | None) -> None:
    if message is not None:
        problems.append(Problem(field, message))


# --------------------------------------------------------------------------------------------
# Small shared rules
# --------------------------------------------------------------------------------------------


def model_file_name(path: str | os.PathLike) -> Path:
    """Return ``path`` with the model suffix ``.unet`` appended unless it ends in it (any case)."""
    path = Path(path)
    return path if path.suffix.lower() == MODEL_SUFFIX else path.with_name(path.name + MODEL_SUFFIX)


def parse_channels(text: str) -> list[int] | None:
    """Read a channel choice written by a person: ``"0, 1"``, ``"0,1"``, ``"all"`` or empty.

    Returns
    -------
    list of int or None
        The channels in order; ``None`` (every channel) for an empty text or ``"all"``.

    Raises
    ------
    ValueError
        For anything but channel numbers separated by commas or spaces.
    """
    words = str(text).replace(",", " ").split()
    if not words or words == ["all"]:
        return None
    try:
        return [int(word) for word in words]
    except ValueError:
        raise ValueError(
            "Channels: write the channel numbers separated by commas, counted from 0, e.g. 0,1 "
            f"(or 'all'), not {text!r}."
        ) from None


def model_path_problem(path: str | os.PathLike | None) -> str | None:
    """Say why a model cannot be written to ``path`` (``None`` if it can).

    ``.unet`` is appended first (as :func:`~napari_unetkit.modelfile.save_model` does).
    Missing folders are fine as long as the nearest existing one is writable.
    """
    if path is None or str(path) in ("", "."):
        return "Choose where to save the model."
    path = model_file_name(Path(path).expanduser())
    if path.is_dir():
        return f"{path} is a folder: choose a file name for the model."
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        return f"Cannot save the model in {path.parent}: {folder} is a file, not a folder."
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"Cannot save the model in {path.parent}: the folder is not writable."
    return None


def negative_labels_problem(labels: Any, mode: str = "instances") -> str | None:
    """Say why labels with negative values are refused (``None`` when none is negative)."""
    data = np.asarray(labels)
    if not np.issubdtype(data.dtype, np.signedinteger) or data.size == 0 or data.min() >= 0:
        return None
    zero = "background" if mode == "instances" else "not annotated"
    ids = "ids for cells" if mode == "instances" else "numbers for classes"
    return f"The labels hold negative values; use 0 ({zero}) and positive {ids}."


def labels_dtype_problem(dtype: Any) -> str | None:
    """Say why labels of ``dtype`` cannot be instance or class ids (``None`` if they can)."""
    dtype = np.dtype(dtype)
    if dtype.kind == "b" or np.issubdtype(dtype, np.integer):
        return None
    if np.issubdtype(dtype, np.floating):
        return (
            f"The labels hold {dtype} values, but labels must be integers; convert them with "
            "labels.astype(int) if they are whole numbers."
        )
    return f"The labels hold {dtype} values, but labels must be integers."


def class_count_problem(highest: int) -> str | None:
    """Say why the highest painted label cannot be a class count in classes mode."""
    if highest < 2:
        return (
            "Classes mode needs at least two painted classes (e.g. 1 = background and "
            f"2 = cells), but the highest label is {highest}. Paint some background with "
            "label 1 and the objects with label 2 (0 means not annotated), or use instances mode."
        )
    if highest > MAX_CLASSES:
        return (
            f"Classes mode found label {highest}, i.e. {highest} classes (at most "
            f"{MAX_CLASSES}). These look like instance labels: use instances mode."
        )
    return None


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


def train_problems(
    settings: Mapping[str, Any],
    *,
    out: str | os.PathLike | None = NOT_GIVEN,
    labels: Sequence[Any] = (),
) -> list[Problem]:
    """Pre-check a training run: every problem of its settings, model file and labels.

    Parameters
    ----------
    settings : mapping
        :class:`~napari_unetkit.training.TrainConfig` keyword arguments; keys left out are not
        checked (they take the defaults, which are valid). ``epochs`` and ``time_limit`` are
        checked together only when both are given.
    out : path or None, optional
        The model file to write (left out: not checked).
    labels : sequence of array-like
        The training labels (e.g. painted layers, or files read by the CLI): their dtype, sign
        and, in classes mode, the number of classes. Arrays too large to scan should be left
        out (the trainer checks them again slice by slice).

    Returns
    -------
    list of Problem
        Fields are ``TrainConfig`` names, ``"out"`` and ``"labels"``.
    """
    problems = _settings_problems(settings)
    if out is not NOT_GIVEN:
        _collect(problems, "out", model_path_problem(out))
    mode = settings.get("mode", "instances")
    problems.extend(_labels_problems(labels, mode if mode in MODES else "instances"))
    return problems


def _labels_problems(labels: Sequence[Any], mode: str) -> list[Problem]:
    problems: list[Problem] = []
    highest = 0
    for array in labels:
        data = np.asarray(array)
        message = labels_dtype_problem(data.dtype) or negative_labels_problem(data, mode)
        if message is not None:
            return [Problem("labels", message)]
        highest = max(highest, int(data.max(initial=0)))
    if labels and mode == "classes":
        _collect(problems, "labels", class_count_problem(highest))
    return problems


def _settings_problems(values: Mapping[str, Any]) -> list[Problem]:
    from napari_unetkit.losses import LOSSES
    from napari_unetkit.training.config import MAX_BATCH_SIZE, MAX_SEED, OPTIMIZERS, SCHEDULES

    problems: list[Problem] = []

    def check(name: str, function, *args, **kwargs) -> None:
        if name in values:
            _collect(problems, name, function(values[name], name, *args, **kwargs))

    check("mode", choice_problem, MODES)
    check("optimizer", choice_problem, OPTIMIZERS)
    check("schedule", choice_problem, SCHEDULES)
    check("loss", choice_problem, LOSSES)
    check("patch_size", whole_number_problem, 1)
    check("batch_size", whole_number_problem, 1, MAX_BATCH_SIZE)
    check("seed", whole_number_problem, 0, MAX_SEED)
    check("steps_per_epoch", whole_number_problem, 1, allow_none=True)
    problems.extend(_budget_problems(values))
    check("learning_rate", number_problem, 0.0, open_low=True)
    check("momentum", number_problem, 0.0, 1.0)
    check("weight_decay", number_problem, 0.0)
    check("warmup", number_problem, 0.0, 1.0)
    check("min_lr_fraction", number_problem, 0.0, 1.0)
    check("dice_weight", number_problem, 0.0)
    check("foreground_bias", number_problem, 0.0, 1.0)
    check("val_fraction", number_problem, 0.0, 1.0, open_high=True)
    check("threads", whole_number_problem, 1, allow_none=True)
    problems.extend(_object_problems(values))
    problems.extend(_architecture_problems(values))
    return problems


def _budget_problems(values: Mapping[str, Any]) -> list[Problem]:
    problems: list[Problem] = []
    if "time_limit" in values:
        message = number_problem(
            values["time_limit"], "time_limit", 0.0, open_low=True, allow_none=True
        )
        _collect(problems, "time_limit", message)
    if "epochs" not in values:
        return problems
    epochs = values["epochs"]
    if (epochs is None or (_is_whole(epochs) and epochs == 0)) and values.get("time_limit") is None:
        message = "Nothing to train: set epochs to at least 1 or give a time_limit in seconds."
    else:
        message = whole_number_problem(epochs, "epochs", 1, allow_none=True)
    _collect(problems, "epochs", message)
    return problems


def _object_problems(values: Mapping[str, Any]) -> list[Problem]:
    from napari_unetkit import layout
    from napari_unetkit.augmentation import AugmentationSettings
    from napari_unetkit.normalization import NormalizationSettings
    from napari_unetkit.weightmap import PRESETS, WeightMapSettings

    problems: list[Problem] = []
    channels = values.get("channels")
    if channels is not None:
        try:
            layout.check_channel_choice(channels, max(channels, default=0) + 1)
        except (TypeError, ValueError) as error:
            problems.append(Problem("channels", str(error)))
    name = values.get("data_name")
    if name is not None and not isinstance(name, str):
        problems.append(Problem("data_name", f"data_name must be a string or None, got {name!r}."))
    weightmap = values.get("weightmap")
    if not (
        weightmap is None
        or isinstance(weightmap, WeightMapSettings)
        or (isinstance(weightmap, str) and weightmap in PRESETS)
    ):
        problems.append(
            Problem(
                "weightmap",
                f"weightmap must be WeightMapSettings or one of {', '.join(PRESETS)}, "
                f"got {weightmap!r}.",
            )
        )
    augmentation = values.get("augmentation")
    if augmentation is not None and not isinstance(augmentation, AugmentationSettings):
        problems.append(
            Problem("augmentation", "augmentation must be an AugmentationSettings or None.")
        )
    if "normalization" in values and not isinstance(values["normalization"], NormalizationSettings):
        problems.append(Problem("normalization", "normalization must be a NormalizationSettings."))
    return problems


def _architecture_problems(values: Mapping[str, Any]) -> list[Problem]:
    from napari_unetkit.model import (
        MAX_BASE_CHANNELS,
        MAX_DEPTH,
        NORMS,
        UPSAMPLINGS,
    )

    problems: list[Problem] = []
    for name, message in (
        ("depth", whole_number_problem(values.get("depth", 1), "depth", 1, MAX_DEPTH)),
        (
            "base_channels",
            whole_number_problem(
                values.get("base_channels", 1), "base_channels", 1, MAX_BASE_CHANNELS
            ),
        ),
        ("norm", choice_problem(values.get("norm", NORMS[0]), "norm", NORMS)),
        (
            "upsampling",
            choice_problem(values.get("upsampling", UPSAMPLINGS[0]), "upsampling", UPSAMPLINGS),
        ),
        (
            "dropout",
            number_problem(values.get("dropout", 0.0), "dropout", 0.0, 1.0, open_high=True),
        ),
    ):
        _collect(problems, name, message)
    return problems


# --------------------------------------------------------------------------------------------
# Prediction
# --------------------------------------------------------------------------------------------


def _channels_in_words(count: int) -> str:
    if count == 1:
        return "1 channel (greyscale)"
    return f"{count} channels" + (" (RGB)" if count == 3 else " (RGBA)" if count == 4 else "")


def image_channels_problem(
    shape: tuple[int, ...], channel_axis: int | None, expected: int, guess_colour: bool = True
) -> str | None:
    """Say why an image of ``shape`` does not fit a model reading ``expected`` channels.

    With ``guess_colour`` (front ends reading files and layers), a 3D image whose last axis
    has 3 or 4 entries, given to a greyscale model without a channel axis, is taken for the
    colour image it almost always is, not for a stack of 3 or 4 pixel wide slices (which the
    engine itself accepts).
    """
    from napari_unetkit import layout

    shape = tuple(int(n) for n in shape)
    colour = guess_colour and channel_axis is None and expected == 1
    colour = colour and len(shape) == 3 and shape[-1] in (3, 4)
    found = layout.n_channels(shape, -1 if colour else channel_axis)
    if found == expected:
        return None
    text = (
        f"The model reads images of {_channels_in_words(expected)}, but the image (shape "
        f"{shape}) has {_channels_in_words(found)}"
    )
    if expected == 1:
        return text + (
            "; convert the image to greyscale (or pick one of its channels), or use a model "
            "trained on colour images."
        )
    if channel_axis is None and shape[-1] == expected:
        return text + "; if its last axis holds the channels, set the channel axis to -1."
    if channel_axis is None and shape[0] == expected:
        return text + "; if its first axis holds the channels, set the channel axis to 0."
    return text + "; choose an image like the ones the model was trained on."


def predict_problems(
    *,
    image_shape: tuple[int, ...] | None = None,
    channel_axis: int | None = None,
    in_channels: int | None = None,
    tile_size: int | None = None,
    halo: int | None = None,
    threshold: float | None = None,
    min_size: int | None = None,
    guess_colour: bool = True,
) -> list[Problem]:
    """Pre-check a prediction: the image against the model, and the options.

    Parameters
    ----------
    image_shape, channel_axis : optional
        The image's shape and channel axis (``image_shape`` ``None``: not checked).
    in_channels : int, optional
        Channels an image must have for the model (see ``Predictor.input_channels``).
    tile_size, halo : int, optional
        The tile size asked for (``None``: automatic) and the model's context margin; a tile
        smaller than the halo is refused.
    threshold, min_size : optional
        Instance options overriding the model's (``None``: the model's own).
    guess_colour : bool
        See :func:`image_channels_problem`.

    Returns
    -------
    list of Problem
        Fields ``"image"``, ``"tile_size"``, ``"threshold"``, ``"min_size"``.
    """
    problems: list[Problem] = []
    if image_shape is not None:
        if 0 in tuple(image_shape):
            problems.append(
                Problem(
                    "image",
                    f"The image is empty (shape {tuple(image_shape)}): choose an image with "
                    "pixels.",
                )
            )
        elif in_channels is not None:
            _collect(
                problems,
                "image",
                image_channels_problem(image_shape, channel_axis, in_channels, guess_colour),
            )
    if tile_size is not None:
        message = whole_number_problem(tile_size, "The tile size (pixels)", 1)
        if message is None and halo is not None and tile_size < halo:
            message = (
                f"The tile size must be at least {halo} pixels for this model (the context it "
                "reads on each side of a tile); smaller tiles mostly recompute that context and "
                "are many times slower. Leave the tile size automatic to choose one."
            )
        _collect(problems, "tile_size", message)
    _collect(
        problems,
        "threshold",
        number_problem(
            threshold,
            "The threshold",
            0.0,
            1.0,
            open_low=True,
            open_high=True,
            allow_none=True,
            hint="it is a foreground probability (0.5 is the usual choice)",
        ),
    )
    _collect(problems, "min_size", whole_number_problem(min_size, "min_size", 0, allow_none=True))
    return problems


# --------------------------------------------------------------------------------------------
# Weight maps
# --------------------------------------------------------------------------------------------


def weightmap_problems(labels: Any, *, scan: bool = True) -> list[Problem]:
    """Pre-check a weight map: the labels (field ``"labels"``).

    Parameters
    ----------
    labels : array-like
        Instance labels, 2D or a stack of 2D slices.
    scan : bool
        Also look at the values (negative ids); ``False`` for arrays too large to scan on
        every edit.
    """
    shape = tuple(getattr(labels, "shape", np.shape(labels)))
    if len(shape) < 2:
        return [
            Problem(
                "labels",
                f"Labels must be 2D (Y, X) or a stack (..., Y, X); got {len(shape)} dimension(s).",
            )
        ]
    if 0 in shape:
        return [Problem("labels", f"The labels hold no pixels (shape {shape}).")]
    dtype = np.dtype(getattr(labels, "dtype", np.asarray(labels).dtype))
    message = labels_dtype_problem(dtype)
    if message is None and scan:
        message = negative_labels_problem(labels)
    return [] if message is None else [Problem("labels", message)]
