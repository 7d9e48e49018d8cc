"""The model file format (``.unet``): weights plus a JSON description, loaded safely.

:func:`load_model` and :func:`read_description` also read bioimage.io packages exported by
napari-unetkit (:mod:`napari_unetkit.bioimageio`), so every front end accepts both.

A model file is a ``torch.save`` archive of one dictionary::

    {
        "format": "napari-unetkit-model",
        "format_version": 1,
        "description": "<JSON text>",      # architecture, mode, classes, normalisation, ...
        "state_dict": {name: tensor},      # CPU tensors
    }

Files are read with ``torch.load(weights_only=True)``, which refuses to import or call anything
while unpickling, so an untrusted file cannot run code. Before that, the archive's entries are
checked: every entry must be stored uncompressed (as ``torch.save`` writes them), together
they may not declare more bytes than the file holds, and the weight data no more than the
architecture named in the description needs; loading never needs more memory than the file's
size (no zip bomb). A refused pickle is explained by our own reading of its opcodes (never
by quoting a library's advice to load it unsafely): a file naming any Python object other than
PyTorch's tensor rebuilders gets "it holds Python objects other than weights, which are never
loaded for safety". Everything read is then validated field by field (the description's JSON,
its nesting depth, the architecture, every weight's name, shape, type - floating point - and
values - finite); any problem raises :class:`ModelFileError` with one sentence naming the file.
"""

from __future__ import annotations

import contextlib
import datetime
import io
import json
import os
import pickle
import pickletools
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypedDict

import torch

from napari_unetkit import __version__
from napari_unetkit.checks import MODEL_SUFFIX, model_file_name
from napari_unetkit.device import resolve_device
from napari_unetkit.io import atomic_write, not_a_file
from napari_unetkit.model import UNet, UNetConfig

#: Value of the ``"format"`` key that marks our files.
FORMAT = "napari-unetkit-model"
#: Version written by :func:`save_model`; files with a larger version are refused.
FORMAT_VERSION = 1
#: The model file extension (:data:`napari_unetkit.checks.MODEL_SUFFIX`).
SUFFIX = MODEL_SUFFIX


class ChannelChoice(TypedDict):
    """The channels a model reads: indices ``used`` into images of ``of`` channels."""

    used: list[int]
    of: int


class ModelMetrics(TypedDict, total=False):
    """Validation scores of the saved (best) epoch."""

    best_validation_score: float | None
    best_validation_metric: str | None
    best_epoch: int | None
    val_loss: float | None
    val_f1: float | None
    val_iou: float | None
    val_objects: int | None


class TrainingDataSummary(TypedDict, total=False):
    """What the model was trained on (counts and sizes; no pixel data)."""

    n_slices: int
    n_training_slices: int
    n_validation_slices: int
    annotated_pixels: int
    class_pixels: list[int]
    slice_shape_min: list[int] | None
    slice_shape_max: list[int] | None
    pairs: list[dict[str, Any]]


class ModelDescription(TypedDict, total=False):
    """The description stored (as JSON) in a model file: every key a model file may hold.

    A ``TypedDict``, so that the description stays the plain JSON object it is on disk (files
    written by every earlier version keep loading); keys are optional because older files
    lack some (``"instances"``, ``"calibration"``, ``"channels"``, ``"data_name"`` ...), and
    readers fall back to documented defaults (e.g.
    :func:`napari_unetkit.prediction.instance_settings_of`).

    Keys
    ----
    architecture : dict
        :meth:`napari_unetkit.model.UNetConfig.to_dict` (always present once loaded).
    mode : {"instances", "classes"}
        What the labels meant.
    n_classes, in_channels : int
        Network outputs and inputs.
    class_names : list of str
        One name per class.
    channel_axis : int or None
        The training images' channel axis.
    channels : ChannelChoice or None
        The channels read, of how many (``None``: all).
    normalization : dict
        :meth:`napari_unetkit.normalization.NormalizationSettings.to_dict`.
    weightmap : dict or None
        :meth:`napari_unetkit.weightmap.WeightMapSettings.to_dict` (instances mode).
    instances : dict or None
        :meth:`napari_unetkit.postprocess.InstanceSettings.to_dict` (instances mode).
    calibration : dict or None
        Validation scores of the instance settings tried after training.
    training : dict
        :meth:`napari_unetkit.training.TrainConfig.to_dict`.
    history : list of dict
        One entry per epoch (losses, scores, learning rate, time).
    epochs_trained : int
        ``len(history)``.
    metrics : ModelMetrics
        Scores of the saved epoch.
    data : TrainingDataSummary
        The training data in numbers.
    data_shapes : list of list of int
        Shape of every training image.
    device, stopped_by : str
        Where it trained, and why training ended.
    steps_run : int
        Optimiser steps.
    notes : list of str
        Remarks made while training (e.g. an empty channel).
    package_version, created : str
        The napari-unetkit version and the time (ISO 8601, UTC) of writing.
    """

    architecture: dict[str, Any]
    mode: str
    n_classes: int
    in_channels: int
    class_names: list[str]
    channel_axis: int | None
    channels: ChannelChoice | None
    normalization: dict[str, Any]
    weightmap: dict[str, Any] | None
    instances: dict[str, Any] | None
    calibration: dict[str, Any] | None
    training: dict[str, Any]
    history: list[dict[str, Any]]
    epochs_trained: int
    metrics: ModelMetrics
    data: TrainingDataSummary
    data_shapes: list[list[int]]
    device: str
    stopped_by: str
    steps_run: int
    notes: list[str]
    package_version: str
    created: str


class ModelFileError(ValueError):
    """A file is not a valid napari-unetkit model file."""


def _short(error: BaseException, limit: int = 160) -> str:
    """First line of an exception message, shortened for a one-sentence error."""
    lines = str(error).strip().splitlines()
    text = lines[0].strip() if lines else type(error).__name__
    if len(text) > limit:
        text = text[: limit - 3].rstrip() + "..."
    return text.rstrip(".")


#: Globals a weights-only PyTorch archive names (tensor and storage rebuilders, OrderedDict).
_WEIGHT_GLOBAL_MODULES = ("torch", "torch._utils", "torch._tensor", "collections")
#: The most bytes of a pickle read to explain why it was refused.
_SCAN_LIMIT = 64 << 20
#: Pickle opcodes that name a global (a class or function to import).
_NAMING_OPCODES = ("GLOBAL", "INST")
_STRING_OPCODES = (
    "SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE",
    "SHORT_BINSTRING", "BINSTRING", "STRING",
)  # fmt: skip


def _pickle_bytes(path: Path) -> bytes:
    """Return the pickle to explain: an archive's ``data.pkl``, else the file's start."""
    with contextlib.suppress(zipfile.BadZipFile, OSError, ValueError, KeyError):
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                for info in archive.infolist():
                    if info.filename.endswith("data.pkl") and info.file_size <= _SCAN_LIMIT:
                        return archive.read(info)
                return b""
    with open(path, "rb") as file:
        return file.read(_SCAN_LIMIT)


def _named_globals(data: bytes) -> list[str]:
    """Every ``module.name`` the pickles in ``data`` would import, read from the opcodes only.

    Legacy PyTorch files are several pickles in a row; all are read, up to the first that
    cannot be parsed. Nothing is unpickled.
    """
    found: list[str] = []
    stream = io.BytesIO(data)
    while stream.tell() < len(data):
        strings: list[str] = []
        try:
            for opcode, argument, _ in pickletools.genops(stream):
                if opcode.name in _NAMING_OPCODES and isinstance(argument, str):
                    found.append(".".join(argument.split(" ", 1)))
                elif opcode.name in _STRING_OPCODES and isinstance(argument, (str, bytes)):
                    text = argument.decode("latin-1") if isinstance(argument, bytes) else argument
                    strings = [*strings[-1:], text]
                elif opcode.name == "STACK_GLOBAL" and len(strings) == 2:
                    found.append(".".join(strings))
        except Exception:
            break
    return found


def _foreign_globals(path: Path) -> list[str]:
    """Return the globals a refused file names besides PyTorch's tensor rebuilders."""
    try:
        names = _named_globals(_pickle_bytes(path))
    except OSError:
        return []
    foreign = [n for n in names if n.rsplit(".", 1)[0] not in _WEIGHT_GLOBAL_MODULES]
    return list(dict.fromkeys(foreign))


def _load_failure(path: Path, error: BaseException) -> str:
    """Explain a ``torch.load(weights_only=True)`` failure in our words.

    PyTorch's own text advises loading the file unsafely; it is never quoted. A pickle naming
    Python objects other than weights is named as such (with the first objects it names).
    """
    foreign = _foreign_globals(path)
    if foreign:
        more = f" and {len(foreign) - 2} more" if len(foreign) > 2 else ""
        return (
            "it holds Python objects other than weights, which are never loaded for safety "
            f"[{', '.join(foreign[:2])}{more}]"
        )
    if isinstance(error, pickle.UnpicklingError):
        return "it is not a weights file"
    text = _short(error)
    if any(word in text for word in ("weights_only", "allow_pickle", "Re-running", "trust")):
        return "it is damaged or not a PyTorch file"
    return text


def _check_archive(path: Path) -> str | None:
    """Return why the archive must not be unpacked (``None``: its sizes are sound).

    PyTorch writes every entry uncompressed, so the entries' declared sizes are checked before
    anything is unpacked: a compressed entry (a possible zip bomb), sizes larger than the file,
    or weight data larger than the architecture named in the description needs (its weights
    at 8 bytes per number, the widest float type) are refused.
    """
    try:
        if not zipfile.is_zipfile(path):
            return None  # a legacy file or no archive: torch reads at most the file itself
        with zipfile.ZipFile(path) as archive:
            entries = archive.infolist()
            size = path.stat().st_size
            declared = 0
            for entry in entries:
                stored = entry.compress_type == zipfile.ZIP_STORED
                if not stored or entry.file_size != entry.compress_size:
                    return (
                        f"its entry {entry.filename[-60:]} is compressed, which napari-unetkit "
                        "never writes (it could unpack to far more memory than the file's size)"
                    )
                declared += entry.file_size
            if declared > size:
                return (
                    f"its entries declare {declared} bytes but the file holds only {size}; it "
                    "is damaged or forged"
                )
            return _check_weight_sizes(archive, entries)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, RuntimeError):
        return None  # damaged: torch refuses it with its own (harmless) reason


def _check_weight_sizes(archive: zipfile.ZipFile, entries: list[zipfile.ZipInfo]) -> str | None:
    """Refuse weight data larger than the description's architecture can need.

    The description is found in the archive's pickle by reading its opcodes only (nothing is
    unpickled); where it cannot be found or parsed the check is left to the later validation
    (the file's size already bounds the memory used).
    """
    pickles = [e for e in entries if e.filename.endswith("data.pkl")]
    if len(pickles) != 1 or pickles[0].file_size > _SCAN_LIMIT:
        return None
    strings: list[str] = []
    with contextlib.suppress(Exception):
        for opcode, argument, _ in pickletools.genops(archive.read(pickles[0])):
            if opcode.name in _STRING_OPCODES and isinstance(argument, str):
                strings.append(argument)
    try:
        text = strings[strings.index("description") + 1]
        config = UNetConfig.from_dict(json.loads(text).get("architecture"))
        with torch.device("meta"):
            numbers = sum(t.numel() for t in UNet(config).state_dict().values())
    except (ValueError, IndexError, TypeError, AttributeError, RecursionError):
        return None
    needed = 8 * numbers
    weights = sum(e.file_size for e in entries if "/data/" in e.filename)
    if weights > needed:
        return (
            f"its weights take {weights} bytes but the architecture it describes needs at most "
            f"{needed}; it is damaged or forged"
        )
    return None


def _json_default(value: object) -> object:
    """Convert NumPy scalars and arrays, tensors and paths to JSON values."""
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if hasattr(value, "tolist"):  # numpy.generic, numpy.ndarray, torch.Tensor
        return value.tolist()
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def save_model(
    path: str | os.PathLike,
    model: UNet,
    description: ModelDescription | Mapping | None = None,
    *,
    overwrite: bool = True,
) -> Path:
    """Save a model and its description atomically.

    Parameters
    ----------
    path : str or os.PathLike
        Target file; ``.unet`` is appended if the name has another extension.
    model : UNet
        The network; its weights are copied to the CPU.
    description : mapping, optional
        JSON-serialisable facts about the model (NumPy scalars and arrays, tensors and paths
        are converted) (mode, class names, normalisation, training
        settings, history, metrics, data shapes). ``"architecture"`` is set from
        ``model.config``; ``"package_version"`` and ``"created"`` (ISO 8601, UTC) are added if
        missing.
    overwrite : bool
        Replace an existing file (default); with ``False`` an existing file, also one created
        while saving, raises ``FileExistsError`` (see :func:`napari_unetkit.io.atomic_write`).

    Returns
    -------
    pathlib.Path
        The written file.

    Raises
    ------
    TypeError
        If ``model`` is not a :class:`UNet`.
    ValueError
        If the description is not JSON-serialisable.
    """
    if not isinstance(model, UNet):
        raise TypeError(f"save_model expects a UNet, got {type(model).__name__}.")
    try:
        # A JSON round trip copies the description and proves it can be stored.
        info = json.loads(json.dumps(dict(description or {}), default=_json_default))
    except (TypeError, ValueError) as error:
        raise ValueError(f"The model description is not JSON-serialisable: {error}.") from None
    info["architecture"] = model.config.to_dict()
    info.setdefault("package_version", __version__)
    info.setdefault(
        "created", datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    )
    state = {
        name: tensor.detach().to("cpu", copy=True).contiguous()
        for name, tensor in model.state_dict().items()
    }
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "description": json.dumps(info),
        "state_dict": state,
    }
    path = model_file_name(path)
    with atomic_write(path, "wb", overwrite=overwrite) as file:
        torch.save(payload, file)
    return path


def _is_package(path: Path) -> bool:
    from napari_unetkit.bioimageio import is_package

    return is_package(path)


def _read_payload(path: Path) -> tuple[ModelDescription, dict, UNetConfig]:
    """Load and validate a model file: format, description, architecture, weight shapes.

    bioimage.io packages exported by napari-unetkit (zip files with an ``rdf.yaml``) are read
    by :func:`napari_unetkit.bioimageio.read_package` with the same guarantees.
    """
    problem = not_a_file(path)
    if problem == "does not exist":
        raise FileNotFoundError(f"The model file {path} does not exist.")
    if problem is not None:
        raise ModelFileError(f"{path} is not a napari-unetkit model file (it {problem}).")
    if path.stat().st_size == 0:
        raise ModelFileError(f"{path} is not a napari-unetkit model file (the file is empty).")

    if path.suffix.lower() == ".zip" or _is_package(path):
        from napari_unetkit.bioimageio import read_package

        description, state, config = read_package(path)
        _check_weights(path, state, config)
        return description, state, config

    def fail(reason: str) -> ModelFileError:
        return ModelFileError(f"{path} is not a napari-unetkit model file ({reason}).")

    unsound = _check_archive(path)
    if unsound is not None:
        raise fail(f"it could not be read safely: {unsound}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. torch's notes on unusual pickle protocols
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except MemoryError:
        raise
    except Exception as error:
        raise fail(f"it could not be read safely: {_load_failure(path, error)}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise fail("it has no napari-unetkit format marker; it may belong to another program")
    version = payload.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise fail(f"its format version {version!r} is invalid")
    if version > FORMAT_VERSION:
        raise ModelFileError(
            f"{path} was written by a newer napari-unetkit (format version {version}, this "
            f"version reads up to {FORMAT_VERSION}); update napari-unetkit to load it."
        )
    text = payload.get("description")
    if not isinstance(text, str):
        raise fail("its description is missing")
    try:
        description = json.loads(text)
    except RecursionError:
        raise fail("its description is nested too deeply to be a model description") from None
    except ValueError as error:
        raise fail(f"its description is not valid JSON: {_short(error)}") from None
    if not isinstance(description, dict):
        raise fail("its description is not a dictionary")
    try:
        config = UNetConfig.from_dict(description.get("architecture"))
    except (TypeError, ValueError) as error:
        raise fail(f"its architecture is invalid: {_short(error)}") from None
    state = payload.get("state_dict")
    if not isinstance(state, dict) or not all(
        isinstance(key, str) and isinstance(value, torch.Tensor) for key, value in state.items()
    ):
        raise fail("its weights are missing or malformed")
    _check_weights(path, state, config)
    return description, state, config


def _check_weights(path: Path, state: dict, config: UNetConfig) -> None:
    """Compare weight names, shapes and types with the architecture; refuse non-finite values.

    The architecture is built on the meta device (no memory). Weights must be real floating
    point where the network has floating-point weights (never complex or integer), and finite.
    """
    with torch.device("meta"):
        reference = UNet(config).state_dict()
    expected = {name: tuple(t.shape) for name, t in reference.items()}
    found = {name: tuple(t.shape) for name, t in state.items()}
    if found == expected:
        _check_weight_values(path, state, reference)
        return
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    wrong = sorted(name for name in set(found) & set(expected) if found[name] != expected[name])
    details = []
    for label, names in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
        if names:
            more = f" and {len(names) - 3} more" if len(names) > 3 else ""
            details.append(f"{label}: {', '.join(names[:3])}{more}")
    raise ModelFileError(
        f"{path} is damaged or from an incompatible version of napari-unetkit (its weights do "
        f"not match its architecture; {'; '.join(details)})."
    )


def _check_weight_values(path: Path, state: dict, reference: dict) -> None:
    """Refuse weights of the wrong type and NaN or infinite weights.

    Floating-point weights may be stored in any real floating type (they are converted when
    loaded); integer, boolean or complex ones are refused, as are complex counters.
    """
    for name, tensor in state.items():
        wanted = reference[name]
        if tensor.is_complex() or (wanted.is_floating_point() and not tensor.is_floating_point()):
            kind = "real floating-point" if wanted.is_floating_point() else "real"
            raise ModelFileError(
                f"{path} is damaged or not a napari-unetkit model file (its weight {name} has "
                f"type {str(tensor.dtype).removeprefix('torch.')}; {kind} values are expected)."
            )
    for name, tensor in state.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise ModelFileError(
                f"{path} holds NaN or infinite weights (in {name}), so it cannot predict "
                "anything; the training that wrote it diverged. Train the model again."
            )


def read_description(path: str | os.PathLike) -> ModelDescription:
    """Read and validate a model file's description without building the network.

    Parameters
    ----------
    path : str or os.PathLike
        The model file.

    Returns
    -------
    ModelDescription
        The description (``"architecture"`` is a valid :class:`UNetConfig` dictionary).

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ModelFileError
        If the file is not a valid model file.
    """
    description, _, _ = _read_payload(Path(path))
    return description


def load_model(
    path: str | os.PathLike, device: str | torch.device = "cpu"
) -> tuple[UNet, ModelDescription]:
    """Load a model file safely (no code from the file is ever executed).

    Parameters
    ----------
    path : str or os.PathLike
        The model file.
    device : str or torch.device
        Where to put the network (see :func:`napari_unetkit.device.resolve_device`).

    Returns
    -------
    model : UNet
        The network in eval mode on ``device``.
    description : ModelDescription
        The model's description.

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ModelFileError
        If the file is not a valid model file or its weights do not fit its architecture.
    """
    path = Path(path)
    description, state, config = _read_payload(path)
    model = UNet(config)
    try:
        model.load_state_dict(state, strict=True)
    except (RuntimeError, ValueError, TypeError) as error:
        raise ModelFileError(
            f"{path} is damaged or from an incompatible version of napari-unetkit (its weights "
            f"do not match its architecture: {_short(error, 120)})."
        ) from None
    model.to(resolve_device(device))
    model.eval()
    return model, description


def _get(mapping: object, *keys: str) -> object:
    """Follow ``keys`` through nested dicts; ``None`` where any step is missing."""
    for key in keys:
        if not isinstance(mapping, dict):
            return None
        mapping = mapping.get(key)
    return mapping


def _first(description: dict, *paths: tuple[str, ...]) -> object:
    for path in paths:
        value = _get(description, *path)
        if value is not None:
            return value
    return None


def _trained_epochs(description: dict) -> object:
    epochs = _first(description, ("epochs_trained",), ("training", "epochs_trained"))
    if epochs is not None:
        return epochs
    history = description.get("history")
    if isinstance(history, list):
        return len(history)
    if isinstance(history, dict):
        for key in ("epoch", "train_loss", "loss"):
            if isinstance(history.get(key), list):
                return len(history[key])
    return None


def _format_score(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _channel_choice(info: dict) -> str:
    """`` (channels 0, 1 of 3)`` for a model reading some channels of its images, else ``""``."""
    stored = info.get("channels")
    if not isinstance(stored, dict) or not isinstance(stored.get("used"), list):
        return ""
    return f" (channels {', '.join(map(str, stored['used']))} of {stored.get('of')})"


def instances_summary(info: dict) -> str:
    """One line on a description's instance settings and their validation F1 ("" if none)."""
    stored = info.get("instances")
    if not isinstance(stored, dict):
        return ""
    method = stored.get("method")
    parts = [f"foreground > {_format_score(stored.get('threshold'))}"]
    if method == "watershed":
        parts.insert(0, "seeded watershed")
        parts.append(f"seeds > {_format_score(stored.get('seed_threshold'))}")
    else:
        parts.insert(0, "connected components")
    parts.append(f"objects >= {stored.get('min_size')} px")
    text = "Instances: " + ", ".join(parts)
    calibration = _get(info, "calibration", "val_f1")
    if isinstance(calibration, (int, float)):
        text += f" (chosen on validation data, F1 {_format_score(calibration)})"
    return text


def describe_model(description: Mapping) -> str:
    """Summarise a model description in a few human-readable lines.

    Reads ``mode``, ``class_names``, ``architecture``, ``epochs_trained`` (or the length of
    ``history``), ``metrics.best_validation_score`` / ``best_validation_metric`` /
    ``best_epoch``, ``data_shapes``, ``parent`` (the model it was fine-tuned from) and
    ``created``; missing entries are left out.

    Parameters
    ----------
    description : mapping
        A description from :func:`read_description` or :func:`load_model`.

    Returns
    -------
    str
        One fact per line.
    """
    info = dict(description)
    lines = []
    if info.get("mode") is not None:
        lines.append(f"Mode: {info['mode']}")
    classes = info.get("class_names")
    if isinstance(classes, (list, tuple)) and classes:
        lines.append(f"Classes: {', '.join(str(name) for name in classes)}")
    arch = info.get("architecture")
    if isinstance(arch, dict):
        if arch.get("in_channels") is not None:
            lines.append(f"Input channels: {arch['in_channels']}{_channel_choice(info)}")
        parts = []
        if arch.get("depth") is not None:
            parts.append(f"depth {arch['depth']}")
        if arch.get("base_channels") is not None:
            parts.append(f"{arch['base_channels']} base channels")
        if arch.get("norm") is not None:
            parts.append(f"{arch['norm']} norm")
        if arch.get("upsampling") is not None:
            parts.append(f"{arch['upsampling']} up-sampling")
        if parts:
            lines.append(f"Architecture: U-Net, {', '.join(parts)}")
    epochs = _trained_epochs(info)
    if epochs is not None:
        lines.append(f"Trained epochs: {epochs}")
    score = _first(
        info, ("metrics", "best_validation_score"), ("best_validation_score",), ("best_score",)
    )
    if score is not None:
        metric = _first(info, ("metrics", "best_validation_metric"), ("best_validation_metric",))
        epoch = _first(info, ("metrics", "best_epoch"), ("best_epoch",))
        text = f"Best validation score: {_format_score(score)}"
        if metric is not None:
            text += f" ({metric})"
        if epoch is not None:
            text += f" at epoch {epoch}"
        lines.append(text)
    instances = instances_summary(info)
    if instances:
        lines.append(instances)
    shapes = info.get("data_shapes")
    if isinstance(shapes, (list, tuple)) and shapes:
        shown = ", ".join(
            "x".join(str(n) for n in shape) if isinstance(shape, (list, tuple)) else str(shape)
            for shape in shapes[:4]
        )
        more = f" (+{len(shapes) - 4} more)" if len(shapes) > 4 else ""
        lines.append(f"Training data: {shown}{more}")
    elif shapes is not None:
        lines.append(f"Training data: {shapes}")
    parent = info.get("parent")
    if isinstance(parent, dict) and parent.get("file") is not None:
        text = f"Fine-tuned from: {parent['file']}"
        if parent.get("created") is not None:
            text += f" (created {parent['created']})"
        lines.append(text)
    if info.get("created") is not None:
        lines.append(f"Created: {info['created']}")
    if info.get("package_version") is not None:
        lines.append(f"napari-unetkit version: {info['package_version']}")
    return "\n".join(lines) if lines else "No description available."
