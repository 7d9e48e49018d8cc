"""Numeric precision of prediction: float32, mixed (coarse levels in 16 bits) or all 16-bit.

A U-Net's coarse levels are where 16-bit floats pay: they hold most of the channels and the
multiply-accumulates per pixel that are cheapest to speed up. But rounding a level's weights to
bfloat16's 8-bit mantissa perturbs the network itself, and the finer the level, the more
directly that shows in the probabilities of pixels near the decision boundary: rounding only
the weights of levels 2 and below (computing in float32) moved the probabilities about as much
as computing those levels in bfloat16 (0.0143 against 0.0138, and 0.0093 against 0.0127, on
two networks), so the weights, not the feature maps, carry most of the error. Measured with
five default networks (depth 4, 16 base channels) trained for 25 to 120 s on synthetic nuclei
with different seeds, on two 2048 x 2048 images each, against the float32 network (largest
probability difference over the image), and the speed of a 1120 x 1120 tile against float32
(best of 20 alternating calls):

============================== ================ ==================
levels in float32              max |diff|       speed vs float32
============================== ================ ==================
all (``"float32"``)            2e-6 to 4e-6     1.00x
0 to 3 (bottleneck in 16 bits) 0.0009-0.0010    1.04x
0 to 2 (``"mixed"``)           0.0022-0.0082    1.12x
0 and 1                        0.0051-0.0155    1.29x
none (``"half"``)              0.029-0.092      1.85x
============================== ================ ==================

(AMD EPYC Zen 5 with AVX512-BF16, 2 threads, oneDNN through PyTorch 2.14, 2026-12-01.)
Keeping only levels 0 and 1 in float32 (what ``"mixed"`` was until then, measured then at
0.0044-0.0071 on three networks) went over 0.01 on four of the five networks. ``"mixed"`` is the
split that kept every probability within 0.01 of float32 in all ten measurements, with room to
spare; ``"half"`` is the fastest, for users who accept probability changes of a few percent.

Without native bfloat16 arithmetic (AVX512-BF16 or AMX) a CPU emulates it, which is slower than
float32, so ``"auto"`` uses float32 there.
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
        coarser levels and the bottleneck in :func:`reduced_dtype`; probabilities stayed within
        0.01 of float32 in every measurement (see the module docstring). ``"half"``: the
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
