"""Files: atomic writes, reading images, writing TIFFs.

Every file napari-unetkit writes goes through :func:`atomic_write`: the data goes to a temporary
file in the target's folder, is flushed to disk, and only then replaces the target in one
``os.replace``. An interrupted or failed write (an exception, Ctrl+C, a full disk) leaves any
existing file untouched and no temporary file behind.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import numpy as np
import tifffile

#: File extensions :func:`read_image` understands.
TIFF_SUFFIXES = (".tif", ".tiff")
NPY_SUFFIXES = (".npy",)
READABLE_SUFFIXES = TIFF_SUFFIXES + NPY_SUFFIXES

_umask_lock = threading.Lock()


def _current_umask() -> int:
    """Return the process umask, read without changing it where the OS allows."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    with _umask_lock:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def _new_file_mode(target: Path) -> int:
    """Permissions for the written file: the existing target's, else what ``open`` would give."""
    try:
        return target.stat().st_mode & 0o7777
    except OSError:
        return 0o666 & ~_current_umask()


def _check_folder(path: Path) -> Path:
    folder = path.parent
    if not folder.is_dir():
        raise FileNotFoundError(
            f"Cannot write {path.name}: the folder {folder} does not exist.",
        )
    if path.is_dir():
        raise IsADirectoryError(f"Cannot write {path}: it is a folder, not a file.")
    return folder


def _fsync_folder(folder: Path) -> None:
    """Flush the folder entry of a replaced file to disk (best effort, POSIX only)."""
    if os.name != "posix":
        return
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _temporary_file(path: Path, folder: Path) -> tuple[int, Path]:
    """Create the hidden temporary file next to ``path``; explain a refusal in one sentence."""
    try:
        fd, name = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".tmp")
    except PermissionError:
        raise PermissionError(
            f"Cannot write {path.name}: the folder {folder} is not writable (permission denied)."
        ) from None
    except OSError as error:
        raise OSError(
            error.errno, f"Cannot write {path.name} in {folder}: {error.strerror or error}"
        ) from None
    return fd, Path(name)


def check_writable(path: str | os.PathLike) -> Path:
    """Check, before any long work, that :func:`atomic_write` will be able to create ``path``.

    A temporary file is created next to ``path`` and removed at once, which tests the real
    permissions (also for read-only mounts and for the root user, where permission bits alone
    do not tell). An existing file at ``path`` is not touched.

    Parameters
    ----------
    path : str or os.PathLike
        The file that will be written.

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    FileNotFoundError
        If the folder does not exist.
    IsADirectoryError
        If ``path`` is a folder.
    PermissionError
        If the folder is not writable.
    OSError
        If no file can be created there for another reason.
    """
    path = Path(path)
    fd, temp = _temporary_file(path, _check_folder(path))
    os.close(fd)
    with contextlib.suppress(OSError):
        temp.unlink()
    return path


@contextlib.contextmanager
def atomic_write(
    path: str | os.PathLike, mode: str = "wb", *, encoding: str | None = None
) -> Iterator[IO]:
    """Open a file for writing that appears at ``path`` only once it is complete.

    Parameters
    ----------
    path : str or os.PathLike
        The file to create or replace.
    mode : {"wb", "w"}
        Binary or text mode.
    encoding : str, optional
        Text encoding for ``mode="w"`` (default UTF-8).

    Yields
    ------
    file object
        The open temporary file; write to it inside the ``with`` block.

    Raises
    ------
    FileNotFoundError
        If the folder does not exist.
    PermissionError
        If the folder is not writable.
    OSError
        If writing fails (e.g. the disk is full); the existing file is then left unchanged.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_write supports mode 'wb' or 'w', got {mode!r}.")
    path = Path(path)
    folder = _check_folder(path)
    file_mode = _new_file_mode(path)
    fd, temp = _temporary_file(path, folder)
    if mode == "w" and encoding is None:
        encoding = "utf-8"
    file = None
    try:
        # Reopen by name: writers such as tifffile need a file object with a real ``name``.
        file = open(temp, mode, encoding=encoding)  # noqa: SIM115 (closed below)
        os.close(fd)
        fd = -1
        yield file
        file.flush()
        os.fsync(file.fileno())
        file.close()
        with contextlib.suppress(OSError):
            os.chmod(temp, file_mode)
        os.replace(temp, path)
        _fsync_folder(folder)
    except BaseException as error:
        if file is not None:
            with contextlib.suppress(Exception):
                file.close()
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)
        with contextlib.suppress(OSError):
            temp.unlink()
        if isinstance(error, OSError) and error.errno == errno.ENOSPC:
            raise OSError(
                errno.ENOSPC,
                f"No space left on the disk while writing {path}; "
                "any existing file there was left unchanged",
            ) from error
        raise


def os_error_text(error: OSError) -> str:
    """Return an ``OSError`` as a sentence, without Python's ``[Errno N]`` prefix.

    Parameters
    ----------
    error : OSError
        The error.

    Returns
    -------
    str
        E.g. ``"Permission denied: /data/out.tif"``, or the message the error was raised with.
    """
    if not error.strerror:
        return str(error)
    text = error.strerror
    if error.filename is not None:
        text += f": {os.fsdecode(error.filename)}"
    return text


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image from a TIFF (``.tif``, ``.tiff``) or NumPy (``.npy``) file.

    Parameters
    ----------
    path : str or os.PathLike
        The file.

    Returns
    -------
    numpy.ndarray
        The pixel data as stored (the first series of a multi-series TIFF).

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ValueError
        If the extension is not supported or the file cannot be decoded.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in READABLE_SUFFIXES:
        raise ValueError(
            f"Cannot read {path.name}: unsupported file type {suffix or '(no extension)'!r}; "
            f"use a TIFF ({', '.join(TIFF_SUFFIXES)}) or NumPy (.npy) file."
        )
    if not path.is_file():
        raise FileNotFoundError(f"Cannot read {path}: the file does not exist.")
    kind = "TIFF" if suffix in TIFF_SUFFIXES else "NumPy .npy"
    try:
        if suffix in TIFF_SUFFIXES:
            with _tifffile_notes() as notes:
                data = np.asarray(tifffile.imread(path))
            if data.size == 0:  # tifffile reads a damaged file as an empty array
                reason = notes[0] if notes else "it holds no image"
                raise ValueError(reason)
            return data
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, tifffile.TiffFileError) as error:
        detail = " ".join(str(error).split())
        raise ValueError(f"Cannot read {path}: it is not a valid {kind} file ({detail}).") from None


class _Notes(logging.Handler):
    """Collects log messages (instead of printing them)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(" ".join(record.getMessage().split()))


@contextlib.contextmanager
def _tifffile_notes() -> Iterator[list[str]]:
    """Collect tifffile's warnings while reading, so that a damaged file gives one sentence.

    tifffile logs problems of damaged files (and reads them as empty arrays); printed by the
    logging fallback they would break the command line's one-line errors.
    """
    logger = logging.getLogger("tifffile")
    notes = _Notes()
    propagate = logger.propagate
    logger.addHandler(notes)
    logger.propagate = False
    try:
        yield notes.messages
    finally:
        logger.removeHandler(notes)
        logger.propagate = propagate


def labels_dtype_for(array: np.ndarray) -> np.dtype:
    """Choose the unsigned integer type used to store a label image.

    Parameters
    ----------
    array : numpy.ndarray
        Integer or boolean labels (0 = background).

    Returns
    -------
    numpy.dtype
        ``uint16`` if the largest label is below 65536, else ``uint32`` (``uint64`` beyond
        ``2**32 - 1``).

    Raises
    ------
    ValueError
        If the array is not integer/boolean or holds negative values.
    """
    array = np.asarray(array)
    if not (np.issubdtype(array.dtype, np.integer) or array.dtype == bool):
        raise ValueError(f"Labels must be integers, got an array of type {array.dtype}.")
    if array.size == 0:
        return np.dtype(np.uint16)
    if array.min() < 0:
        raise ValueError(f"Labels must not be negative (smallest value: {array.min()}).")
    largest = int(array.max())
    if largest < 2**16:
        return np.dtype(np.uint16)
    if largest < 2**32:
        return np.dtype(np.uint32)
    return np.dtype(np.uint64)


def _storage_array(array: np.ndarray, labels: bool) -> np.ndarray:
    array = np.asarray(array)
    if labels:
        return array.astype(labels_dtype_for(array), copy=False)
    if array.dtype == bool:
        return array.astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating):
        return array.astype(np.float32, copy=False)
    if np.issubdtype(array.dtype, np.integer):
        return array
    raise ValueError(f"Cannot write an array of type {array.dtype} to TIFF.")


def write_tiff(
    path: str | os.PathLike,
    array: np.ndarray,
    *,
    overwrite: bool = False,
    compression: str | None = None,
    metadata: dict | None = None,
    labels: bool = False,
) -> Path:
    """Write an array to a TIFF file atomically.

    Parameters
    ----------
    path : str or os.PathLike
        The file to write.
    array : numpy.ndarray
        The data. Floating-point data (probabilities, weights) is written as float32; integer
        data is written as is, booleans as uint8.
    overwrite : bool
        Replace an existing file; by default an existing file is an error.
    compression : str, optional
        A tifffile compression name, e.g. ``"zlib"``; ``None`` writes uncompressed.
    metadata : dict, optional
        JSON-serialisable metadata stored in the TIFF description.
    labels : bool
        The array is a label image: it is stored as :func:`labels_dtype_for` (uint16 or uint32).

    Returns
    -------
    pathlib.Path
        The written file.

    Raises
    ------
    FileExistsError
        If the file exists and ``overwrite`` is false.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(
            f"{path} already exists; choose another name or allow overwriting "
            "(overwrite=True, --overwrite on the command line)."
        )
    data = _storage_array(array, labels)
    with atomic_write(path, "wb") as file:
        tifffile.imwrite(file, data, compression=compression, metadata=metadata)
    return path
