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
while unpickling, so an untrusted file cannot run code. Everything read is then validated field
by field; any problem raises :class:`ModelFileError` with one sentence naming the file.
"""

from __future__ import annotations

import datetime
import json
import os
import pickle
from collections.abc import Mapping
from pathlib import Path

import torch

from napari_unetkit import __version__
from napari_unetkit.device import resolve_device
from napari_unetkit.io import atomic_write
from napari_unetkit.model import UNet, UNetConfig

#: Value of the ``"format"`` key that marks our files.
FORMAT = "napari-unetkit-model"
#: Version written by :func:`save_model`; files with a larger version are refused.
FORMAT_VERSION = 1
#: The model file extension.
SUFFIX = ".unet"


class ModelFileError(ValueError):
    """A file is not a valid napari-unetkit model file."""


def _short(error: BaseException, limit: int = 160) -> str:
    """First line of an exception message, shortened for a one-sentence error."""
    lines = str(error).strip().splitlines()
    text = lines[0].strip() if lines else type(error).__name__
    if len(text) > limit:
        text = text[: limit - 3].rstrip() + "..."
    return text.rstrip(".")


def _load_failure(error: BaseException) -> str:
    """Explain a ``torch.load(weights_only=True)`` failure without torch's advice to disable it."""
    text = str(error)
    if isinstance(error, pickle.UnpicklingError) and "WeightsUnpickler error:" in text:
        detail = text.split("WeightsUnpickler error:", 1)[1].strip().split(". ")[0]
        detail = _short(RuntimeError(detail), 100)
        if detail.startswith("Unsupported global"):
            return (
                "it holds Python objects other than weights, which are never loaded for safety "
                f"[{detail}]"
            )
        return f"it is not a weights file [{detail}]"
    return _short(error)


def _with_suffix(path: Path) -> Path:
    return path if path.suffix.lower() == SUFFIX else path.with_name(path.name + SUFFIX)


def _json_default(value: object) -> object:
    """Convert NumPy scalars and arrays, tensors and paths to JSON values."""
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if hasattr(value, "tolist"):  # numpy.generic, numpy.ndarray, torch.Tensor
        return value.tolist()
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def save_model(path: str | os.PathLike, model: UNet, description: Mapping | None = None) -> Path:
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
    path = _with_suffix(Path(path))
    with atomic_write(path, "wb") as file:
        torch.save(payload, file)
    return path


def _is_package(path: Path) -> bool:
    from napari_unetkit.bioimageio import is_package

    return is_package(path)


def _read_payload(path: Path) -> tuple[dict, dict, UNetConfig]:
    """Load and validate a model file: format, description, architecture, weight shapes.

    bioimage.io packages exported by napari-unetkit (zip files with an ``rdf.yaml``) are read
    by :func:`napari_unetkit.bioimageio.read_package` with the same guarantees.
    """
    if not path.exists():
        raise FileNotFoundError(f"The model file {path} does not exist.")
    if not path.is_file():
        raise ModelFileError(f"{path} is not a napari-unetkit model file (it is not a file).")
    if path.stat().st_size == 0:
        raise ModelFileError(f"{path} is not a napari-unetkit model file (the file is empty).")

    if path.suffix.lower() == ".zip" or _is_package(path):
        from napari_unetkit.bioimageio import read_package

        description, state, config = read_package(path)
        _check_weights(path, state, config)
        return description, state, config

    def fail(reason: str) -> ModelFileError:
        return ModelFileError(f"{path} is not a napari-unetkit model file ({reason}).")

    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise fail(f"it could not be read safely: {_load_failure(error)}") from None
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
    """Compare weight names and shapes with the architecture (on the meta device: no memory)."""
    with torch.device("meta"):
        expected = {name: tuple(t.shape) for name, t in UNet(config).state_dict().items()}
    found = {name: tuple(t.shape) for name, t in state.items()}
    if found == expected:
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


def read_description(path: str | os.PathLike) -> dict:
    """Read and validate a model file's description without building the network.

    Parameters
    ----------
    path : str or os.PathLike
        The model file.

    Returns
    -------
    dict
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


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[UNet, dict]:
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
    description : dict
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


def describe_model(description: Mapping) -> str:
    """Summarise a model description in a few human-readable lines.

    Reads ``mode``, ``class_names``, ``architecture``, ``epochs_trained`` (or the length of
    ``history``), ``metrics.best_validation_score`` / ``best_validation_metric`` /
    ``best_epoch``, ``data_shapes`` and ``created``; missing entries are left out.

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
            lines.append(f"Input channels: {arch['in_channels']}")
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
    if info.get("created") is not None:
        lines.append(f"Created: {info['created']}")
    if info.get("package_version") is not None:
        lines.append(f"napari-unetkit version: {info['package_version']}")
    return "\n".join(lines) if lines else "No description available."
