"""Choosing where the network runs: CUDA, Apple MPS or CPU, plus CPU threads and autocast.

``"auto"`` prefers CUDA, then Apple MPS, then the CPU; an explicit name overrides it, and asking
for a device this machine does not have is an error that lists the devices it does have.
"""

from __future__ import annotations

import contextlib
import os

import torch

from napari_unetkit.checks import whole_number_problem

#: Environment variables through which a user sets the CPU thread count themselves.
THREAD_ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def available_devices() -> list[str]:
    """Devices usable on this machine, in the order ``"auto"`` prefers them.

    Returns
    -------
    list of str
        E.g. ``["cuda:0", "cuda:1", "cpu"]`` or ``["mps", "cpu"]``; ``"cpu"`` is always last.
    """
    devices = []
    if torch.cuda.is_available():
        devices.extend(f"cuda:{index}" for index in range(torch.cuda.device_count()))
    if _mps_available():
        devices.append("mps")
    devices.append("cpu")
    return devices


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """Turn a device name into a ``torch.device`` that exists on this machine.

    Parameters
    ----------
    name : str, torch.device or None
        ``"auto"`` (or ``None``): CUDA if available, else Apple MPS, else CPU. Otherwise an
        explicit ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"mps"`` (case-insensitive).

    Returns
    -------
    torch.device
        The device; ``"cuda"`` resolves to the current CUDA device index.

    Raises
    ------
    ValueError
        If the name is not a device name or the device is not available here.
    """
    if name is None:
        name = "auto"
    if isinstance(name, torch.device):
        device = name
    elif isinstance(name, str):
        text = name.strip().lower()
        if text == "auto":
            return torch.device(available_devices()[0])
        try:
            device = torch.device(text)
        except RuntimeError:
            raise ValueError(
                f"Unknown device {name!r}; use 'auto' or one of: {', '.join(available_devices())}."
            ) from None
    else:
        raise TypeError(f"A device name must be a string, got {type(name).__name__}.")

    available = available_devices()
    if device.type == "cpu":
        return torch.device("cpu")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"CUDA was requested but is not available on this machine (available: "
                f"{', '.join(available)})."
            )
        index = torch.cuda.current_device() if device.index is None else device.index
        if index >= torch.cuda.device_count():
            raise ValueError(
                f"CUDA device {index} was requested but this machine has "
                f"{torch.cuda.device_count()} CUDA device(s) (available: {', '.join(available)})."
            )
        return torch.device("cuda", index)
    if device.type == "mps":
        if not _mps_available():
            raise ValueError(
                f"Apple MPS was requested but is not available on this machine (available: "
                f"{', '.join(available)})."
            )
        return torch.device("mps")
    raise ValueError(
        f"Device type {device.type!r} is not supported; use 'auto' or one of: "
        f"{', '.join(available)}."
    )


def describe_device(device: str | torch.device) -> str:
    """Return a short human description, e.g. ``"CPU (2 threads)"``.

    Parameters
    ----------
    device : str or torch.device
        A device name (resolved with :func:`resolve_device`) or device.

    Returns
    -------
    str
        ``"CPU (N threads)"``, ``"CUDA: <GPU name> (<memory> GB)"`` or ``"Apple MPS"``.
    """
    device = resolve_device(device)
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        memory = props.total_memory / 1024**3
        return f"CUDA: {props.name} ({memory:.0f} GB)"
    if device.type == "mps":
        return "Apple MPS"
    threads = torch.get_num_threads()
    return f"CPU ({threads} thread{'s' if threads != 1 else ''})"


def usable_cpu_count() -> int:
    """Count the CPU cores this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        with contextlib.suppress(OSError):
            return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def configure_threads(n: int | None = None) -> int:
    """Set the number of CPU threads torch uses for one operation.

    Parameters
    ----------
    n : int, optional
        The thread count. ``None`` uses the number of usable cores, unless the user already
        chose a count through ``OMP_NUM_THREADS`` or ``MKL_NUM_THREADS``, which is then kept.

    Returns
    -------
    int
        The thread count now in effect.

    Raises
    ------
    ValueError
        If ``n`` is not a positive integer.
    """
    if n is None:
        if any(os.environ.get(var, "").strip() for var in THREAD_ENV_VARS):
            return torch.get_num_threads()
        n = usable_cpu_count()
    elif (message := whole_number_problem(n, "The number of CPU threads", 1)) is not None:
        raise ValueError(message)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return torch.get_num_threads()


_DTYPE_NAMES = {
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
    "half": torch.float16,
}


def _parse_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        parsed = dtype
    elif isinstance(dtype, str) and dtype.strip().lower() in _DTYPE_NAMES:
        parsed = _DTYPE_NAMES[dtype.strip().lower()]
    else:
        parsed = "invalid"
    if parsed not in (None, torch.bfloat16, torch.float16):
        raise ValueError(f"Mixed precision supports 'bf16' or 'fp16', got {dtype!r}.")
    return parsed


def autocast_dtype(
    device: str | torch.device, enabled: bool = True, dtype: str | torch.dtype | None = None
) -> torch.dtype | None:
    """Decide the reduced-precision dtype used by :func:`autocast_context`.

    Parameters
    ----------
    device : str or torch.device
        Where the network runs.
    enabled : bool
        Whether mixed precision is wanted at all.
    dtype : {"bf16", "fp16"}, torch.dtype or None
        An explicit choice. ``None`` picks bfloat16 on CUDA devices that support it, else
        float16; on CPU and MPS mixed precision is used only when ``dtype`` is given.

    Returns
    -------
    torch.dtype or None
        The autocast dtype, or ``None`` for full float32. A result of ``torch.float16`` means
        the trainer should scale the loss (``torch.amp.GradScaler``).
    """
    requested = _parse_dtype(dtype)
    if not enabled:
        return None
    device = resolve_device(device)
    if device.type == "cuda":
        if requested is not None:
            return requested
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return requested


def autocast_context(
    device: str | torch.device, enabled: bool = True, dtype: str | torch.dtype | None = None
) -> contextlib.AbstractContextManager:
    """Return a context manager running the forward pass in mixed precision where sensible.

    Parameters
    ----------
    device : str or torch.device
        Where the network runs.
    enabled : bool
        Whether mixed precision is wanted.
    dtype : {"bf16", "fp16"}, torch.dtype or None
        See :func:`autocast_dtype`; on CPU, pass ``"bf16"`` to use bfloat16 autocast.

    Returns
    -------
    contextlib.AbstractContextManager
        ``torch.autocast(...)`` or a ``contextlib.nullcontext()``.
    """
    chosen = autocast_dtype(device, enabled, dtype)
    if chosen is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=resolve_device(device).type, dtype=chosen)


#: Fragments of the errors PyTorch raises when an allocation fails (CPU, CUDA, MPS).
_OUT_OF_MEMORY_TEXTS = (
    "DefaultCPUAllocator: can't allocate memory",
    "CUDA out of memory",
    "MPS backend out of memory",
)


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` means an allocation failed (Python's, or PyTorch's on any device).

    PyTorch reports a failed CPU allocation as a plain ``RuntimeError`` ("DefaultCPUAllocator:
    can't allocate memory"), CUDA ones as ``torch.OutOfMemoryError``.

    Parameters
    ----------
    error : BaseException
        What a job raised.

    Returns
    -------
    bool
        True for ``MemoryError``, ``OutOfMemoryError`` and PyTorch's allocation failures.
    """
    if isinstance(error, MemoryError) or type(error).__name__ == "OutOfMemoryError":
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and any(part in text for part in _OUT_OF_MEMORY_TEXTS)
