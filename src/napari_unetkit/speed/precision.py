"""Numeric precision of prediction: float32, mixed (coarse levels in 16 bits) or all 16-bit.

A precision name says which levels of the U-Net compute (and store their weights) in a 16-bit
type; level 0 is the finest:

- ``"float32"``: every level in float32 (the plain network to float32 rounding);
- ``"mixed"``: levels 0 to 2 and the output layer in float32, level 3 and coarser and the
  bottleneck in 16 bits (:func:`level_dtypes`); chosen as the split that kept every
  probability within 0.01 of float32 on the trained networks measured;
- ``"half"``: every level in 16 bits (fastest; probabilities may change by a few percent);
- ``"auto"``: ``"mixed"`` where the device computes 16-bit floats natively (CUDA; CPUs with
  AVX512-BF16 or AMX, :func:`cpu_has_native_bfloat16`), else ``"float32"`` (a CPU without them
  emulates bfloat16, slower than float32).

The 16-bit type is bfloat16 on CPUs and on CUDA GPUs that support it, else float16 (older
CUDA GPUs, Apple MPS; :func:`reduced_dtype`). The accuracy and speed of each split:
``docs/performance.md``.
"""

from __future__ import annotations

import functools
from typing import Literal

import torch

from napari_unetkit.device import autocast_dtype

Precision = Literal["auto", "float32", "mixed", "half"]
#: Accepted precision names, ``"auto"`` first.
PRECISIONS = ("auto", "float32", "mixed", "half")
#: Levels (0 = full resolution) that stay float32 in ``"mixed"`` precision.
MIXED_FLOAT32_LEVELS = 3


@functools.cache
def cpu_has_native_bfloat16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX) for oneDNN.

    Returns
    -------
    bool
        ``False`` when PyTorch has no oneDNN or cannot tell.
    """
    if not torch.backends.mkldnn.is_available():
        return False
    checks = [
        getattr(torch.cpu, name, None)
        for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    ]
    for check in checks:
        try:
            if check is not None and check():
                return True
        except (RuntimeError, AttributeError):  # an older or unusual build: assume no
            continue
    return False


def computes_16bit_natively(device: torch.device) -> bool:
    """Whether ``device`` computes 16-bit floats natively: CUDA, or a CPU with native bfloat16.

    Elsewhere 16-bit arithmetic is emulated (slower than float32), so neither prediction's
    ``"auto"`` precision nor training's default autocast uses it there.
    """
    return device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bfloat16())


def reduced_dtype(device: torch.device) -> torch.dtype:
    """Return the 16-bit float type that ``"mixed"`` and ``"half"`` use on ``device``.

    bfloat16 on CPUs and on CUDA GPUs that support it (its float32 range needs no care),
    float16 on older CUDA GPUs and on Apple MPS.
    """
    if device.type == "cpu":
        return torch.bfloat16
    if device.type == "cuda":
        return autocast_dtype(device)  # training's choice: bfloat16 where supported
    return torch.float16


def resolve_precision(precision: str, device: torch.device) -> str:
    """Turn a precision name into the one used on ``device``.

    Parameters
    ----------
    precision : {"auto", "float32", "mixed", "half"}
        ``"auto"``: ``"mixed"`` where :func:`computes_16bit_natively` (CUDA, CPUs with
        native bfloat16), else ``"float32"``. ``"float32"``: everything in
        float32. ``"mixed"``: the three finest levels (and the output layer) in float32, the
        coarser levels and the bottleneck in :func:`reduced_dtype` (see the module docstring).
        ``"half"``: the
        whole network in :func:`reduced_dtype`.
    device : torch.device
        Where the network runs.

    Returns
    -------
    str
        ``"float32"``, ``"mixed"`` or ``"half"``.

    Raises
    ------
    ValueError
        For an unknown name.
    """
    if not isinstance(precision, str) or precision.strip().lower() not in PRECISIONS:
        raise ValueError(
            f"The precision must be one of {', '.join(PRECISIONS)}, got {precision!r}."
        )
    precision = precision.strip().lower()
    if precision != "auto":
        return precision
    return "mixed" if computes_16bit_natively(device) else "float32"


def level_dtypes(depth: int, precision: str, reduced: torch.dtype) -> list[torch.dtype]:
    """Return the dtype of every level of a U-Net of ``depth`` under a resolved ``precision``.

    Parameters
    ----------
    depth : int
        Number of down-sampling steps.
    precision : {"float32", "mixed", "half"}
        A precision resolved by :func:`resolve_precision`.
    reduced : torch.dtype
        The 16-bit type (:func:`reduced_dtype`).

    Returns
    -------
    list of torch.dtype
        ``depth + 1`` entries: levels ``0 .. depth - 1`` (encoder and decoder of each level,
        with the up-sampling into it; level 0 also the output layer), then the bottleneck.
    """
    if precision == "float32":
        return [torch.float32] * (depth + 1)
    if precision == "half":
        return [reduced] * (depth + 1)
    if precision == "mixed":
        return [
            torch.float32 if level < MIXED_FLOAT32_LEVELS else reduced for level in range(depth + 1)
        ]
    raise ValueError(f"Unresolved precision {precision!r}; use resolve_precision first.")


def describe_precision(precision: str, device: torch.device) -> str:
    """Describe a resolved precision in words, e.g. ``"bfloat16 throughout"``."""
    if precision == "float32":
        return "float32"
    name = str(reduced_dtype(device)).removeprefix("torch.")
    if precision == "half":
        return f"{name} throughout"
    return f"mixed: float32 at the {MIXED_FLOAT32_LEVELS} finest levels, {name} below"
