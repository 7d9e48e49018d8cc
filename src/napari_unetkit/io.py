"""Files: atomic writes, reading images, writing TIFFs.

Every file napari-unetkit writes goes through :func:`atomic_write`: the data goes to a temporary
file in the target's folder, is flushed to disk, and only then appears under the target's name
in one step: ``os.replace`` when replacing is allowed, otherwise a publication that fails if the
name exists by then (``renameat2(RENAME_NOREPLACE)`` on Linux, else a hard link), so two writers
racing for one new name never silently replace each other's result. Only regular files are ever
replaced (never a folder, device, FIFO or socket). An interrupted or failed write (an exception,
Ctrl+C, a full disk) leaves any existing file untouched and no temporary file behind; temporary
files that a killed process left (``.NAME.PID-XXXXXXXX.tmp``, its process gone, untouched for
:data:`STALE_TEMP_SECONDS`) are removed by the next write to the same name.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import logging
import os
import re
import shutil
import stat
import struct
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import numpy as np
import tifffile

#: File extensions :func:`read_image` understands.
TIFF_SUFFIXES = (".tif", ".tiff")
NPY_SUFFIXES = (".npy",)
READABLE_SUFFIXES = TIFF_SUFFIXES + NPY_SUFFIXES

#: A temporary file whose writer is gone is removed once it is this old (seconds).
STALE_TEMP_SECONDS = 600.0
#: Free space (bytes) under which a failed write is reported as a full disk.
_NEARLY_FULL = 1 << 20

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


def _file_kind(mode: int) -> str | None:
    """Name the kind of a non-regular file in words (``None`` for a regular file)."""
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def check_target(path: str | os.PathLike) -> None:
    """Refuse to write over anything but a regular file (a folder, device, FIFO, socket).

    Parameters
    ----------
    path : str or os.PathLike
        The file that will be written (it need not exist).

    Raises
    ------
    IsADirectoryError
        If ``path`` is a folder.
    OSError
        If ``path`` is a device, FIFO, socket or a symbolic link loop.
    """
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return  # nothing there (a dangling link is replaced by the file, as os.replace does)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise OSError(
                errno.ELOOP, f"Cannot write {path}: it is a symbolic link loop; remove it first."
            ) from None
        raise
    kind = _file_kind(mode)
    if kind == "a folder":
        raise IsADirectoryError(f"Cannot write {path}: it is a folder, not a file.")
    if kind is not None:
        raise OSError(
            errno.EINVAL,
            f"Cannot write {path}: it is {kind}, not a regular file, and is never replaced; "
            "choose a file name",
        )


def not_a_file(path: str | os.PathLike) -> str | None:
    """Say why ``path`` cannot be read as a file (``None`` when it is a regular file).

    Parameters
    ----------
    path : str or os.PathLike
        The file to read.

    Returns
    -------
    str or None
        ``"does not exist"``, ``"is a folder"``, ``"is a named pipe (FIFO)"``, ``"is a
        device"``, ``"is a socket"``, ``"is a symbolic link loop"``, ``"is a broken symbolic
        link"`` or ``"cannot be opened (REASON)"``; ``None`` for a regular file.
    """
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "is a broken symbolic link" if os.path.islink(path) else "does not exist"
    except OSError as error:
        if error.errno == errno.ELOOP:
            return "is a symbolic link loop"
        return f"cannot be opened ({error.strerror or error})"
    kind = _file_kind(mode)
    return None if kind is None else f"is {kind}"


def _check_folder(path: Path) -> Path:
    folder = path.parent
    if not folder.is_dir():
        raise FileNotFoundError(
            f"Cannot write {path.name}: the folder {folder} does not exist.",
        )
    check_target(path)
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


def _temp_prefix(path: Path) -> str:
    return f".{path.name}."


def _temporary_file(path: Path, folder: Path) -> tuple[int, Path]:
    """Create the hidden temporary file next to ``path``; explain a refusal in one sentence.

    Its name, ``.NAME.PID-XXXXXXXX.tmp``, carries the writing process's id, so that a later write
    can tell a temporary file left by a killed process (see :func:`remove_stale_temporaries`).
    """
    try:
        fd, name = tempfile.mkstemp(
            dir=folder, prefix=f"{_temp_prefix(path)}{os.getpid()}-", suffix=".tmp"
        )
    except PermissionError:
        raise PermissionError(
            f"Cannot write {path.name}: the folder {folder} is not writable (permission denied)."
        ) from None
    except OSError as error:
        raise OSError(
            error.errno, f"Cannot write {path.name} in {folder}: {error.strerror or error}"
        ) from None
    return fd, Path(name)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True  # another user's process (or no way to tell): assume alive
    return True


def remove_stale_temporaries(path: str | os.PathLike, max_age: float = STALE_TEMP_SECONDS) -> int:
    """Remove temporary files of :func:`atomic_write` for ``path`` whose writer is gone.

    A file counts as stale when its name is ``.NAME.PID-XXXXXXXX.tmp`` (or the older
    ``.NAME.XXXXXXXX.tmp``; eight random characters, as :func:`tempfile.mkstemp` makes them),
    it is a regular file, no process ``PID`` runs on this machine (unknown
    for the older names) and it was last modified more than ``max_age`` seconds ago; a
    process killed without warning (SIGKILL, power loss) leaves such files. Anything else is
    left alone, so a concurrent writer's file is never removed.

    Parameters
    ----------
    path : str or os.PathLike
        The target file whose temporary files are looked for (in its folder).
    max_age : float
        Seconds since the last modification before a file may be removed.

    Returns
    -------
    int
        The number of files removed.
    """
    path = Path(path)
    prefix = _temp_prefix(path)
    pattern = re.compile(re.escape(prefix) + r"(?:(\d+)-)?[a-z0-9_]{8}\.tmp")
    removed = 0
    try:
        entries = list(os.scandir(path.parent))
    except OSError:
        return 0
    now = time.time()
    for entry in entries:
        match = pattern.fullmatch(entry.name)
        if match is None:
            continue
        with contextlib.suppress(OSError):
            info = entry.stat(follow_symlinks=False)
            pid = match.group(1)
            if not stat.S_ISREG(info.st_mode) or now - info.st_mtime < max_age:
                continue
            if pid is not None and (int(pid) == os.getpid() or _process_alive(int(pid))):
                continue
            os.unlink(entry.path)
            removed += 1
    return removed


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


def _exists_error(path: Path) -> FileExistsError:
    return FileExistsError(
        errno.EEXIST,
        f"{path} already exists; choose another name or allow overwriting "
        "(overwrite=True, --overwrite on the command line)",
    )


_RENAME_NOREPLACE = 1
_AT_FDCWD = -100


def _renameat2():
    """Return the C library's ``renameat2`` (Linux, glibc 2.28+), or ``None``."""
    if os.name != "posix" or os.uname().sysname != "Linux":
        return None
    with contextlib.suppress(OSError, AttributeError, TypeError):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        function = libc.renameat2
        function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p]
        function.argtypes += [ctypes.c_uint]
        function.restype = ctypes.c_int
        return function
    return None


_RENAMEAT2 = _renameat2()


def _rename_noreplace(temp: Path, path: Path) -> bool:
    """Rename without replacing; ``False`` where the system or file system cannot do it."""
    if _RENAMEAT2 is None:
        return False
    old, new = os.fsencode(temp), os.fsencode(path)
    result = _RENAMEAT2(_AT_FDCWD, old, _AT_FDCWD, new, _RENAME_NOREPLACE)
    if result == 0:
        return True
    code = ctypes.get_errno()
    if code == errno.EEXIST:
        raise _exists_error(path)
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EPERM):
        return False  # e.g. a file system without RENAME_NOREPLACE: fall back to a link
    raise OSError(code, os.strerror(code), os.fspath(path))


def _publish(temp: Path, path: Path, overwrite: bool) -> None:
    """Give the complete temporary file its final name (replacing only if ``overwrite``)."""
    if overwrite:
        check_target(path)
        os.replace(temp, path)
        return
    if _rename_noreplace(temp, path):
        return
    try:
        os.link(temp, path)  # fails if the name exists, however recently it appeared
    except FileExistsError:
        raise _exists_error(path) from None
    except OSError as error:
        if error.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
            raise
        # No hard links here (some FAT / network file systems): check, then rename.
        if os.path.lexists(path):
            raise _exists_error(path) from None
        os.replace(temp, path)
        return
    with contextlib.suppress(OSError):
        temp.unlink()


def _disk_full(error: BaseException, folder: Path) -> bool:
    """Whether a failed write ran out of disk space (also when a library hides the cause)."""
    seen: BaseException | None = error
    for _ in range(8):
        if seen is None:
            break
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        seen = seen.__cause__ or seen.__context__
    if not isinstance(error, (OSError, RuntimeError)):
        return False
    try:  # a short write (numpy's "N requested and M written") fills the disk to the brim
        return shutil.disk_usage(folder).free < _NEARLY_FULL
    except OSError:
        return False


def _interrupted(error: BaseException) -> bool:
    """Whether ``error`` is, or hides (e.g. torch's RuntimeError), a KeyboardInterrupt."""
    seen: BaseException | None = error
    for _ in range(8):
        if seen is None:
            return False
        if isinstance(seen, KeyboardInterrupt):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


@contextlib.contextmanager
def atomic_write(
    path: str | os.PathLike,
    mode: str = "wb",
    *,
    encoding: str | None = None,
    overwrite: bool = True,
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
    overwrite : bool
        Replace an existing regular file (default). With ``False`` the file is published only
        if the name is still free at the very end (checked and taken in one step), so a file
        that another process created meanwhile is never replaced.

    Yields
    ------
    file object
        The open temporary file; write to it inside the ``with`` block.

    Raises
    ------
    FileNotFoundError
        If the folder does not exist.
    FileExistsError
        If ``overwrite`` is false and ``path`` exists (also if it appeared while writing).
    IsADirectoryError
        If ``path`` is a folder.
    PermissionError
        If the folder is not writable.
    OSError
        If ``path`` is a device, FIFO or socket (never replaced), or writing fails; a full disk
        gives "No space left on the disk while writing ...". The existing file is then left
        unchanged. A KeyboardInterrupt that a library turned into its own error is raised as
        KeyboardInterrupt.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_write supports mode 'wb' or 'w', got {mode!r}.")
    path = Path(path)
    folder = _check_folder(path)
    if not overwrite and os.path.lexists(path):
        raise _exists_error(path)
    file_mode = _new_file_mode(path)
    remove_stale_temporaries(path)
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
        _publish(temp, path, overwrite)
        _fsync_folder(folder)
    except BaseException as error:
        if file is not None:
            with contextlib.suppress(Exception):
                file.close()
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)
        full = not isinstance(error, FileExistsError) and _disk_full(error, folder)
        with contextlib.suppress(OSError):
            temp.unlink()
        if isinstance(error, Exception) and _interrupted(error):
            raise KeyboardInterrupt from error
        if full:
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
    problem = not_a_file(path)
    if problem == "does not exist":
        raise FileNotFoundError(f"Cannot read {path}: the file does not exist.")
    if problem is not None:
        raise ValueError(f"Cannot read {path}: it {problem}, not an image file.")
    kind = "TIFF" if suffix in TIFF_SUFFIXES else "NumPy .npy"
    try:
        if suffix in TIFF_SUFFIXES:
            _check_tiff_size(path)
            with _tifffile_notes() as notes:
                data = np.asarray(tifffile.imread(path))
            if data.size == 0:  # tifffile reads a damaged file as an empty array
                reason = notes[0] if notes else "it holds no image"
                raise ValueError(reason)
            return data
        _check_npy(path)
        return np.load(path, allow_pickle=False)
    except _Refused as error:
        raise ValueError(f"Cannot read {path}: {error}.") from None
    except MemoryError:
        raise
    except Exception as error:
        detail = _safe_detail(error)
        raise ValueError(f"Cannot read {path}: it is not a valid {kind} file ({detail}).") from None


class _Refused(Exception):
    """A file refused before decoding; the message is the reason (after "Cannot read X: ")."""


#: Largest ratio of decoded to stored bytes accepted for a compressed TIFF (zstd of zeros
#: reaches about 30000:1; nothing real goes further).
MAX_TIFF_RATIO = 1 << 16


def _check_tiff_size(path: Path) -> None:
    """Refuse a TIFF whose declared image cannot come from a file of its size.

    The first page is checked (every page's pixels lie in the file that holds the page). An
    uncompressed page cannot hold more pixel bytes than the file; a compressed one at most
    :data:`MAX_TIFF_RATIO` times the file. A damaged or forged header declaring, say, 200000 x
    200000 pixels in 200 bytes is refused before anything is allocated.
    """
    with tifffile.TiffFile(path) as tif:
        if not len(tif.pages):
            return
        page = tif.pages[0]  # every page lies in this file (a series may span several)
        shape, dtype = tuple(page.shape), page.dtype
        compressed = int(page.compression) != 1
    if dtype is None:
        return  # an unknown sample format: tifffile explains it when decoding
    declared = int(np.prod(shape, dtype=object)) * np.dtype(dtype).itemsize
    size = path.stat().st_size
    limit = size * (MAX_TIFF_RATIO if compressed else 1)
    if declared > limit:
        shape = " x ".join(str(n) for n in shape)
        raise _Refused(
            f"the file declares an image of {shape} pixels ({declared} bytes) but holds only "
            f"{size} bytes, so it is damaged or not a real image"
        )


def _check_npy(path: Path) -> None:
    """Refuse ``.npy`` files holding Python objects, and sizes the file cannot hold."""
    with open(path, "rb") as file:
        start = file.read(6)
        if start[:1] == b"\x80":
            raise _Refused(
                "it is a pickle, not a NumPy array: it holds Python objects other than numbers, "
                "which are never loaded"
            )
        if start != b"\x93NUMPY":
            raise _Refused("it is not a NumPy .npy file (it has no .npy header)")
        file.seek(0)
        version = np.lib.format.read_magic(file)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(file)
        else:
            shape, _, dtype = np.lib.format.read_array_header_2_0(file)
        offset = file.tell()
    if dtype.hasobject:
        raise _Refused("it holds Python objects other than numbers, which are never loaded")
    declared = int(np.prod(shape, dtype=object)) * dtype.itemsize
    held = path.stat().st_size - offset
    if declared > held:
        raise _Refused(
            f"its header declares {declared} bytes of data but the file holds only {held}, so "
            "it is damaged or truncated"
        )


def _safe_detail(error: BaseException) -> str:
    """Return a decoder's complaint in one line, never a library's advice to load unsafely."""
    if isinstance(error, (struct.error, EOFError)):
        return "it ends too early: the file is truncated or damaged"
    detail = " ".join(str(error).split()) or type(error).__name__
    if "allow_pickle" in detail or "pickle" in detail.lower():
        return "it holds Python objects, which are never loaded"
    if len(detail) > 160:
        detail = detail[:157].rstrip() + "..."
    return detail


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
        If the file exists and ``overwrite`` is false (also if another process created it
        while this one was writing: it is never replaced).
    """
    path = Path(path)
    if os.path.lexists(path) and not overwrite:
        raise _exists_error(path)
    data = _storage_array(array, labels)
    with atomic_write(path, "wb", overwrite=overwrite) as file:
        tifffile.imwrite(file, data, compression=compression, metadata=metadata)
    return path
