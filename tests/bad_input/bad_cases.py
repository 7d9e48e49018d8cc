"""Inputs for the bad-input matrix, shared by the engine, CLI and widget tests.

Everything is small: images of at most a few thousand pixels, networks of depth 2 with 4
base channels, trainings of one or two steps.
"""

from __future__ import annotations

import io as stdio
import pathlib
import pickle
from collections.abc import Callable

import numpy as np
import torch

from napari_unetkit.model import UNet, UNetConfig
from napari_unetkit.modelfile import FORMAT, save_model
from napari_unetkit.normalization import NormalizationSettings

#: Every image dtype the engine must accept.
IMAGE_DTYPES = (
    "uint8", "uint16", "uint32", "int8", "int16", "int32", "int64",
    "float16", "float32", "float64",
)  # fmt: skip
#: Every integer dtype the engine must accept for labels.
LABEL_DTYPES = ("uint8", "uint16", "uint32", "uint64", "int8", "int16", "int32", "int64")

#: Settings of a training that takes a fraction of a second.
TINY_TRAINING = {
    "depth": 2,
    "base_channels": 4,
    "patch_size": 32,
    "batch_size": 2,
    "epochs": 1,
    "steps_per_epoch": 2,
    "augmentation": None,
    "val_fraction": 0.0,
    "device": "cpu",
    "threads": 1,
}


def cells(shape: tuple[int, ...], dtype: str = "uint8") -> tuple[np.ndarray, np.ndarray]:
    """Return ``(image, labels)`` of any size >= 3 x 2 with a few rectangular cells.

    A band across the middle rows is cut into cells along X (one id each); cells are bright
    (60-100) on a noisy dark background (0-20), so every dtype holds the values. Leading axes
    of ``shape`` repeat the same slice (a stack).
    """
    y, x = shape[-2:]
    rng = np.random.default_rng(y * 7919 + x)
    labels = np.zeros((y, x), np.int32)
    width = max(1, min(y, x) // 2)
    rows = slice(y // 4, y - y // 4)
    for number, start in enumerate(range(0, x, 2 * width), start=1):
        labels[rows, start : start + width] = number
    image = rng.integers(0, 20, (y, x)) + (labels > 0) * rng.integers(60, 100, (y, x))
    image = np.broadcast_to(image, shape).astype(dtype)
    return image, np.broadcast_to(labels, shape).copy()


def untrained_model(path: pathlib.Path, in_channels: int = 1) -> pathlib.Path:
    """Save an untrained (random) tiny instance model: enough to check shapes and messages."""
    torch.manual_seed(in_channels)
    config = UNetConfig(in_channels=in_channels, depth=2, base_channels=4)
    description = {"mode": "instances", "normalization": NormalizationSettings().to_dict()}
    return save_model(path, UNet(config), description)


class TouchOnLoad:
    """Unpickling this object creates ``marker``: the stand-in for malicious code."""

    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def _empty(path: pathlib.Path, marker: pathlib.Path) -> None:
    path.write_bytes(b"")


def _truncated(path: pathlib.Path, marker: pathlib.Path) -> None:
    untrained_model(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _random(path: pathlib.Path, marker: pathlib.Path) -> None:
    path.write_bytes(np.random.default_rng(1).bytes(3000))


def _code(path: pathlib.Path, marker: pathlib.Path) -> None:
    buffer = stdio.BytesIO()
    torch.save({"format": FORMAT, "format_version": 1, "evil": TouchOnLoad(marker)}, buffer)
    path.write_bytes(buffer.getvalue())


def _plain_pickle(path: pathlib.Path, marker: pathlib.Path) -> None:
    path.write_bytes(pickle.dumps({"format": FORMAT, "evil": TouchOnLoad(marker)}, protocol=2))


#: Bad model files: name -> (writer(path, marker), fragment of the expected message).
BAD_MODEL_FILES: dict[str, tuple[Callable[[pathlib.Path, pathlib.Path], None], str]] = {
    "empty": (_empty, "the file is empty"),
    "truncated": (_truncated, "could not be read safely"),
    "random bytes": (_random, "could not be read safely"),
    "pickle with code": (_code, "never loaded for safety"),
    "plain pickle with code": (_plain_pickle, "never loaded for safety"),
}


def temp_files(folder: pathlib.Path) -> list[str]:
    """Names of leftover temporary files of atomic writes in ``folder``."""
    return sorted(path.name for path in folder.rglob("*.tmp"))


def error_line(code: int, err: str) -> str:
    """Check the command line's error contract and return its one error line.

    Exit status 1, no traceback, exactly one ``unetkit:`` line, an error, printed last.
    """
    assert code == 1
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("unetkit:")]
    assert len(lines) == 1 and lines[0].startswith("unetkit: error: "), err
    assert err.rstrip().endswith(lines[0])
    return lines[0]
