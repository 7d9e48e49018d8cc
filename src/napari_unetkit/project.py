"""A project folder: a training set that grows by corrections, and the model versions trained on it.

The correct-and-retrain loop (predict, fix the mistakes, add the fixed slice, fine-tune, predict
the next slice) keeps its state in one folder, so that it survives restarts and can run headless
(``unetkit train --init-from base.unet --project FOLDER``)::

    FOLDER/
        unetkit-project.json        the manifest (JSON, versioned; see MANIFEST_NAME)
        entries/e0001.image.tif     one 2D slice: (Y, X), or (C, Y, X) when C > 1
        entries/e0001.labels.tif    its labels (Y, X), uint16 or uint32, 0 = background
        entries/e0001.region.tif    optional: uint8 (Y, X), 1 where the annotation is complete
        models/v001.unet            model versions (written by the trainer, then recorded)
        .lock                       serialises writers (POSIX advisory lock)

Invariants
    * Adding copies: the caller's arrays are never changed and are stored in a canonical layout
      (channels first, see :meth:`Project.add`). Every entry of a project has the same number
      of channels (set by the first entry), so the whole set trains with one ``channel_axis``.
    * Every file is written atomically (:func:`napari_unetkit.io.write_tiff`,
      :func:`napari_unetkit.io.atomic_write`); entry files are written *before* the manifest
      and the manifest last, so a crash at any moment leaves a manifest that points only at
      complete files (at worst a few unreferenced files, which later ids skip). Removing
      rewrites the manifest first and deletes the files after.
    * File names are derived from ids and version numbers (never read from the manifest), so a
      hand-edited manifest cannot make the project read or delete files outside its folder.
    * Writers hold an exclusive lock on ``FOLDER/.lock`` (where the OS offers ``fcntl``) and
      re-read the manifest under it, so two processes adding at once never lose an entry.
    * Entry ids (``"e0001"``, ...) and model versions (1, 2, ...) are never reused.

Every refusal raises :class:`ProjectError` with one sentence that says what to do.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import json
import math
import os
import re
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from napari_unetkit import __version__, layout
from napari_unetkit.checks import labels_dtype_problem, negative_labels_problem
from napari_unetkit.io import atomic_write, check_writable, os_error_text, read_image, write_tiff

try:  # POSIX advisory locks; elsewhere writers are not serialised between processes
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

#: The manifest's file name inside a project folder.
MANIFEST_NAME = "unetkit-project.json"
#: Value of the manifest's ``"format"`` key.
FORMAT = "napari-unetkit-project"
#: Manifest format written here; a larger version is refused (made by a newer release).
FORMAT_VERSION = 1
#: Sub-folders of a project.
ENTRIES_FOLDER, MODELS_FOLDER = "entries", "models"
#: The lock file writers hold.
LOCK_NAME = ".lock"
#: Longest source name kept (longer ones are shortened).
MAX_SOURCE_LENGTH = 200

_ENTRY_ID = re.compile(r"e(\d{4,9})")
_MODEL_FILE = re.compile(r"v(\d{3,9})\.unet")
_ENTRY_FILE = re.compile(r"(e\d{4,9})\.(?:image|labels|region)\.tif")


class ProjectError(ValueError):
    """A project folder cannot be used as asked; the message says what to do."""


@dataclass(frozen=True)
class Entry:
    """One slice of the training set (as listed in the manifest).

    Attributes
    ----------
    id : str
        ``"e0001"``, ``"e0002"``, ...; never reused within a project.
    source : str
        Where the slice came from (e.g. a layer or file name and slice index); free text.
    shape : tuple of int
        ``(Y, X)`` of the slice.
    channels : int
        Channels of the image (1 for a greyscale image).
    n_objects : int
        Distinct positive label ids in the labels.
    labelled_pixels : int
        Pixels with a positive label.
    annotated_pixels : int
        Pixels the annotation vouches for: those inside the region, or ``Y * X`` without one.
    has_region : bool
        Whether a region mask limits the annotation (outside it the loss ignores pixels).
    added : str
        When it was added, ISO 8601 in UTC (``"2026-12-02T10:15:00+00:00"``).
    """

    id: str
    source: str
    shape: tuple[int, int]
    channels: int
    n_objects: int
    labelled_pixels: int
    annotated_pixels: int
    has_region: bool
    added: str


@dataclass(frozen=True)
class ModelVersion:
    """A model file of the project and where it came from.

    Attributes
    ----------
    version : int
        1, 2, ...; the file is ``models/v001.unet``, ``models/v002.unet``, ...
    path : pathlib.Path
        The model file (absolute). It may have been deleted by hand since (see ``exists``).
    parent : int or None
        The project version it was fine-tuned from, or ``None``.
    base : str or None
        The model file it was initialised from when that is not a project version (e.g. a
        model trained elsewhere), as given to :meth:`Project.record_model`; else ``None``.
    entries : tuple of str
        Ids of the entries it was trained on.
    score : float or None
        Its validation score (instance F1, or mean IoU in classes mode), if known.
    created : str
        When it was recorded, ISO 8601 in UTC.
    """

    version: int
    path: Path
    parent: int | None
    base: str | None
    entries: tuple[str, ...]
    score: float | None
    created: str

    @property
    def name(self) -> str:
        """``"v001"``, ``"v002"``, ... (shown next to the Labels layers it predicted)."""
        return f"v{self.version:03d}"

    @property
    def exists(self) -> bool:
        """Whether the model file is still there."""
        return self.path.is_file()


@dataclass(frozen=True)
class TrainingSet:
    """The whole training set, ready for :func:`napari_unetkit.training.train`.

    ``train(ts.pairs, replace(config, channel_axis=ts.channel_axis), regions=ts.regions)``
    trains on every entry.

    Attributes
    ----------
    pairs : list of (numpy.ndarray, numpy.ndarray)
        ``(image, labels)`` per entry: image ``(Y, X)`` or ``(C, Y, X)``, labels ``(Y, X)``.
    regions : list of (numpy.ndarray or None)
        Per pair, ``None`` or a boolean ``(Y, X)`` mask of the completely annotated area.
    channel_axis : int or None
        ``0`` when the images have channels (C > 1), else ``None``.
    entry_ids : list of str
        The entry of each pair, in the same order.
    """

    pairs: list[tuple[np.ndarray, np.ndarray]]
    regions: list[np.ndarray | None]
    channel_axis: int | None
    entry_ids: list[str]


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _entry_id(number: int) -> str:
    return f"e{number:04d}"


def _model_name(version: int) -> str:
    return f"v{version:03d}.unet"


# --------------------------------------------------------------------------------------------
# Checking what the caller adds
# --------------------------------------------------------------------------------------------


def _image_cyx(image: Any, channel_axis: int | None) -> np.ndarray:
    """Copy a 2D slice into the stored layout: ``(Y, X)``, or ``(C, Y, X)`` when C > 1."""
    array = np.array(image, copy=True)
    if array.dtype == bool or array.dtype.kind not in "uif":
        raise ProjectError(
            f"The image must hold numbers (integers or floats), not {array.dtype}; "
            "add an intensity image."
        )
    if array.size == 0:
        raise ProjectError("The image is empty; add a slice with pixels.")
    expected = 2 if channel_axis is None else 3
    if array.ndim != expected:
        hint = (
            " (for an image with channels, give its channel axis)"
            if channel_axis is None and array.ndim == 3
            else ""
        )
        raise ProjectError(
            f"Add one 2D slice at a time: the image has {array.ndim} axes, expected "
            f"{expected}{hint}."
        )
    if channel_axis is not None:
        try:
            axis = layout.normalize_channel_axis(array.ndim, channel_axis)
        except ValueError as error:
            raise ProjectError(str(error)) from None
        array = np.ascontiguousarray(np.moveaxis(array, axis, 0))
        if array.shape[0] == 1:
            array = array[0]
    return array


def _labels_yx(labels: Any, shape: tuple[int, int]) -> np.ndarray:
    array = np.array(labels, copy=True)
    message = labels_dtype_problem(array.dtype)
    if message is not None:
        raise ProjectError(message)
    if array.shape != shape:
        raise ProjectError(
            f"The labels ({'x'.join(map(str, array.shape))}) do not match the image's Y, X "
            f"({'x'.join(map(str, shape))}); give the labels of this slice."
        )
    message = negative_labels_problem(array)
    if message is not None:
        raise ProjectError(message)
    return array


def _region_yx(region: Any, shape: tuple[int, int]) -> np.ndarray | None:
    if region is None:
        return None
    array = np.asarray(region)
    if array.dtype != bool and array.dtype.kind not in "ui":
        raise ProjectError(
            f"The region must be a boolean mask (or 0/1 integers), not {array.dtype}."
        )
    if array.shape != shape:
        raise ProjectError(
            f"The region ({'x'.join(map(str, array.shape))}) does not match the image's Y, X "
            f"({'x'.join(map(str, shape))}); draw it on this slice."
        )
    return array != 0


# --------------------------------------------------------------------------------------------
# Reading and checking the manifest
# --------------------------------------------------------------------------------------------


def _damaged(path: Path, reason: str) -> ProjectError:
    return ProjectError(
        f"The project manifest {path} is damaged ({reason}); restore it from a backup or "
        "start a new project."
    )


def _int(value: Any, low: int = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _parse_entry(item: Any, path: Path) -> Entry:
    if not isinstance(item, dict):
        raise _damaged(path, "an entry is not an object")
    entry_id = item.get("id")
    if not isinstance(entry_id, str) or not _ENTRY_ID.fullmatch(entry_id):
        raise _damaged(path, f"bad entry id {entry_id!r}")
    shape = item.get("shape")
    counts = [item.get(k) for k in ("channels", "n_objects", "labelled_pixels")]
    counts.append(item.get("annotated_pixels"))
    ok = (
        isinstance(shape, list)
        and len(shape) == 2
        and all(_int(n, 1) for n in shape)
        and all(_int(n) for n in counts)
        and counts[0] >= 1
        and isinstance(item.get("source", ""), str)
        and isinstance(item.get("has_region"), bool)
        and isinstance(item.get("added", ""), str)
    )
    if not ok:
        raise _damaged(path, f"entry {entry_id} has missing or invalid fields")
    return Entry(
        id=entry_id,
        source=item.get("source", ""),
        shape=(shape[0], shape[1]),
        channels=counts[0],
        n_objects=counts[1],
        labelled_pixels=counts[2],
        annotated_pixels=counts[3],
        has_region=item["has_region"],
        added=item.get("added", ""),
    )


def _parse_model(item: Any, path: Path, folder: Path) -> ModelVersion:
    if not isinstance(item, dict) or not _int(item.get("version"), 1):
        raise _damaged(path, "a model version has no valid version number")
    version = item["version"]
    parent, base, score = item.get("parent"), item.get("base"), item.get("score")
    entries = item.get("entries", [])
    ok = (
        (parent is None or (_int(parent, 1) and parent < version))
        and (base is None or isinstance(base, str))
        and (score is None or (_is_number(score) and math.isfinite(score)))
        and isinstance(entries, list)
        and all(isinstance(e, str) and _ENTRY_ID.fullmatch(e) for e in entries)
        and isinstance(item.get("created", ""), str)
    )
    if not ok:
        raise _damaged(path, f"model version {version} has invalid fields")
    return ModelVersion(
        version=version,
        path=folder / MODELS_FOLDER / _model_name(version),
        parent=parent,
        base=base,
        entries=tuple(entries),
        score=None if score is None else float(score),
        created=item.get("created", ""),
    )


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass
class _State:
    """The manifest's content, parsed and checked."""

    channels: int | None
    next_entry: int
    next_version: int
    entries: list[Entry]
    models: list[ModelVersion]

    def to_json(self) -> dict:
        return {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "written_by": f"napari-unetkit {__version__}",
            "channels": self.channels,
            "next_entry": self.next_entry,
            "next_version": self.next_version,
            "entries": [_entry_json(e) for e in self.entries],
            "models": [_model_json(m) for m in self.models],
        }


def _entry_json(entry: Entry) -> dict:
    return {
        "id": entry.id,
        "source": entry.source,
        "shape": list(entry.shape),
        "channels": entry.channels,
        "n_objects": entry.n_objects,
        "labelled_pixels": entry.labelled_pixels,
        "annotated_pixels": entry.annotated_pixels,
        "has_region": entry.has_region,
        "added": entry.added,
    }


def _model_json(model: ModelVersion) -> dict:
    return {
        "version": model.version,
        "file": f"{MODELS_FOLDER}/{_model_name(model.version)}",
        "parent": model.parent,
        "base": model.base,
        "entries": list(model.entries),
        "score": model.score,
        "created": model.created,
    }


def _read_manifest(folder: Path) -> _State:
    path = folder / MANIFEST_NAME
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ProjectError(
            f"{folder} is not a napari-unetkit project (it has no {MANIFEST_NAME}); "
            "choose a project folder or create a new project."
        ) from None
    except (OSError, UnicodeDecodeError) as error:
        detail = os_error_text(error) if isinstance(error, OSError) else "not UTF-8 text"
        raise ProjectError(f"Cannot read the project manifest {path}: {detail}.") from None
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        raise _damaged(path, "it is not valid JSON") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise _damaged(path, "it is not a napari-unetkit project manifest")
    version = data.get("version")
    if not _int(version, 1):
        raise _damaged(path, f"bad format version {version!r}")
    if version > FORMAT_VERSION:
        raise ProjectError(
            f"The project {folder} was written by a newer napari-unetkit (format {version}, "
            f"this version reads up to {FORMAT_VERSION}); update napari-unetkit to open it."
        )
    return _parse_state(data, path, folder)


def _parse_state(data: dict, path: Path, folder: Path) -> _State:
    channels = data.get("channels")
    next_entry, next_version = data.get("next_entry"), data.get("next_version")
    entries_raw, models_raw = data.get("entries"), data.get("models")
    if not (channels is None or _int(channels, 1)):
        raise _damaged(path, f"bad channel count {channels!r}")
    if not (_int(next_entry, 1) and _int(next_version, 1)):
        raise _damaged(path, "bad id counters")
    if not isinstance(entries_raw, list) or not isinstance(models_raw, list):
        raise _damaged(path, "entries and models must be lists")
    entries = [_parse_entry(item, path) for item in entries_raw]
    models = [_parse_model(item, path, folder) for item in models_raw]
    ids = [e.id for e in entries]
    versions = [m.version for m in models]
    if len(set(ids)) != len(ids) or len(set(versions)) != len(versions):
        raise _damaged(path, "an entry id or model version appears twice")
    if entries and any(e.channels != channels for e in entries):
        raise _damaged(path, "the entries' channel counts disagree with the project's")
    return _State(
        channels=channels,
        next_entry=max([next_entry] + [int(i[1:]) + 1 for i in ids]),
        next_version=max([next_version] + [v + 1 for v in versions]),
        entries=entries,
        models=sorted(models, key=lambda m: m.version),
    )


# --------------------------------------------------------------------------------------------
# The project
# --------------------------------------------------------------------------------------------


class Project:
    """A project folder (see the module description); open it with a class method.

    Every method re-reads the manifest, so two windows (or a window and ``unetkit``) see each
    other's changes; writers serialise through a lock file. Methods raise
    :class:`ProjectError` when the folder was deleted, is read-only (for writes), or its
    manifest is damaged.
    """

    def __init__(self, folder: Path) -> None:
        """Use :meth:`create`, :meth:`open` or :meth:`open_or_create` instead."""
        self.folder = Path(folder)

    # ------------------------------------------------------------------ opening

    @classmethod
    def create(cls, folder: str | os.PathLike) -> Project:
        """Create a new, empty project in ``folder`` (made if missing, or an empty folder).

        Raises
        ------
        ProjectError
            If ``folder`` is a file, already a project, holds other files, or cannot be
            written.
        """
        folder = Path(folder).expanduser().absolute()
        if (folder / MANIFEST_NAME).exists():
            raise ProjectError(
                f"{folder} is already a napari-unetkit project; open it instead of creating one."
            )
        if folder.exists() and not folder.is_dir():
            raise ProjectError(f"{folder} is a file, not a folder; choose a folder.")
        try:
            if folder.is_dir() and any(folder.iterdir()):
                raise ProjectError(
                    f"{folder} is not empty and is not a project; choose an empty or new folder."
                )
            folder.mkdir(parents=True, exist_ok=True)
            check_writable(folder / MANIFEST_NAME)
        except OSError as error:
            raise ProjectError(
                f"Cannot create a project in {folder}: {_os_reason(error)}; choose a writable "
                "folder."
            ) from None
        project = cls(folder)
        with project._locked():
            if (folder / MANIFEST_NAME).exists():
                raise ProjectError(
                    f"{folder} became a project meanwhile; open it instead of creating one."
                )
            project._write(_State(None, 1, 1, [], []))
        return project

    @classmethod
    def open(cls, folder: str | os.PathLike) -> Project:
        """Open an existing project.

        Raises
        ------
        ProjectError
            If the folder does not exist, is not a project, its manifest is damaged, or it
            was written by a newer napari-unetkit.
        """
        folder = Path(folder).expanduser().absolute()
        if not folder.is_dir():
            what = "is a file, not a folder" if folder.exists() else "does not exist"
            raise ProjectError(
                f"The project folder {folder} {what}; choose an existing project folder."
            )
        project = cls(folder)
        project._state()  # refuses a folder that is no project, or a damaged manifest
        return project

    @classmethod
    def open_or_create(cls, folder: str | os.PathLike) -> Project:
        """Open the project in ``folder``, or create one there if it is missing or empty."""
        path = Path(folder).expanduser().absolute()
        if (path / MANIFEST_NAME).exists():
            return cls.open(path)
        return cls.create(path)

    def __repr__(self) -> str:
        return f"Project({str(self.folder)!r})"

    # ------------------------------------------------------------------ reading

    @property
    def manifest_path(self) -> Path:
        """The manifest file."""
        return self.folder / MANIFEST_NAME

    @property
    def channels(self) -> int | None:
        """Channels of every image in the project (``None`` until the first entry)."""
        return self._state().channels

    def entries(self) -> list[Entry]:
        """Return the entries, oldest first."""
        return list(self._state().entries)

    def entry(self, entry_id: str) -> Entry:
        """Return one entry; :class:`ProjectError` if there is no such entry."""
        return self._find(self._state(), entry_id)

    def read_entry(self, entry_id: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Read one entry's arrays.

        Returns
        -------
        image : numpy.ndarray
            ``(Y, X)``, or ``(C, Y, X)`` when the project's images have C > 1 channels; the
            dtype as added (floats as float32, booleans as uint8).
        labels : numpy.ndarray
            ``(Y, X)`` uint16 or uint32, 0 = background.
        region : numpy.ndarray or None
            Boolean ``(Y, X)``, True where the annotation is complete; ``None`` when the
            whole slice is annotated.

        Raises
        ------
        ProjectError
            For an unknown id, or when the entry's files are missing or damaged.
        """
        entry = self._find(self._state(), entry_id)
        return self._read_files(entry)

    def training_pairs(self) -> TrainingSet:
        """Return every entry as training data (see :class:`TrainingSet`).

        Raises
        ------
        ProjectError
            If the project has no entries, or an entry's files are missing or damaged.
        """
        state = self._state()
        if not state.entries:
            raise ProjectError(
                f"The project {self.folder} has no entries yet; add a corrected slice first."
            )
        pairs, regions = [], []
        for entry in state.entries:
            image, labels, region = self._read_files(entry)
            pairs.append((image, labels))
            regions.append(region)
        return TrainingSet(
            pairs=pairs,
            regions=regions,
            channel_axis=0 if (state.channels or 1) > 1 else None,
            entry_ids=[e.id for e in state.entries],
        )

    def models(self) -> list[ModelVersion]:
        """Return the recorded model versions, oldest first."""
        return list(self._state().models)

    def latest_model(self) -> ModelVersion | None:
        """Return the newest recorded version whose file still exists (``None``: none)."""
        existing = [m for m in self._state().models if m.exists]
        return existing[-1] if existing else None

    def model(self, version: int) -> ModelVersion:
        """Return one recorded version; :class:`ProjectError` if there is none."""
        for model in self._state().models:
            if model.version == version:
                return model
        raise ProjectError(f"The project has no model version {version}; choose a listed one.")

    def new_model_path(self) -> Path:
        """Return the file the next model version should be written to (``models/vNNN.unet``).

        The folder is created. The name is neither recorded nor used by any existing file,
        so writing it (with ``overwrite=False``) never replaces a model; the version is
        recorded by :meth:`record_model` once training has written the file.
        """
        self._check_folder()
        state = self._state()
        models = self.folder / MODELS_FOLDER
        try:
            models.mkdir(exist_ok=True)
        except OSError as error:
            raise self._write_error(error) from None
        return models / _model_name(self._next_version(state))

    # ------------------------------------------------------------------ writing

    def add(
        self,
        image: Any,
        labels: Any,
        *,
        region: Any = None,
        source: str = "",
        channel_axis: int | None = None,
    ) -> Entry:
        """Add a copy of one corrected 2D slice to the training set.

        Parameters
        ----------
        image : array-like
            One 2D slice: ``(Y, X)``, or with a channel axis (``channel_axis``), e.g. RGB
            ``(Y, X, 3)`` with ``channel_axis=-1`` or ``(C, Y, X)`` with ``channel_axis=0``.
            Stored as ``(Y, X)`` (one channel) or ``(C, Y, X)``.
        labels : array-like
            Integer labels ``(Y, X)`` (instance ids, or classes ``1..K``), 0 = background
            (instances) or not annotated (classes).
        region : array-like, optional
            Boolean ``(Y, X)`` mask of the area the user checked; outside it the loss
            ignores every pixel. ``None``: the whole slice is annotated.
        source : str
            Where the slice came from (layer or file name, slice index), shown in lists.
        channel_axis : int, optional
            The image's channel axis; ``None`` for a greyscale ``(Y, X)`` slice.

        Returns
        -------
        Entry
            The new entry.

        Raises
        ------
        ProjectError
            For labels whose shape differs from the image's Y, X, non-integer or negative
            labels, a region of another shape, an empty correction (no labelled pixel and no
            region, or a region with no pixel), a channel count other than the project's, a
            deleted or read-only project folder. Nothing is written then.
        """
        stored = _image_cyx(image, channel_axis)
        shape = (stored.shape[-2], stored.shape[-1])
        channels = 1 if stored.ndim == 2 else stored.shape[0]
        labels_copy = _labels_yx(labels, shape)
        region_mask = _region_yx(region, shape)
        labelled = int(np.count_nonzero(labels_copy))
        if region_mask is not None and not region_mask.any():
            raise ProjectError(
                "The region marks no pixel; mark the checked area, or add without a region."
            )
        if labelled == 0 and region_mask is None:
            raise ProjectError(
                "Nothing to add: the labels are empty and no region marks checked background; "
                "paint the objects (or mark a checked region) first."
            )
        source = str(source)
        if len(source) > MAX_SOURCE_LENGTH:
            source = source[: MAX_SOURCE_LENGTH - 3] + "..."
        with self._locked():
            state = self._state()
            if state.channels is not None and state.entries and channels != state.channels:
                raise ProjectError(
                    f"This image has {channels} channel(s) but the project's images have "
                    f"{state.channels}; add images like the others (or start a new project)."
                )
            number = self._next_entry(state)
            entry = Entry(
                id=_entry_id(number),
                source=source,
                shape=shape,
                channels=channels,
                n_objects=int(np.unique(labels_copy[labels_copy > 0]).size),
                labelled_pixels=labelled,
                annotated_pixels=int(region_mask.sum())
                if region_mask is not None
                else math.prod(shape),
                has_region=region_mask is not None,
                added=_now(),
            )
            self._write_entry(entry, stored, labels_copy, region_mask)
            state.entries.append(entry)
            state.channels = channels
            state.next_entry = number + 1
            try:
                self._write(state)
            except BaseException:
                self._delete_files(entry.id)
                raise
        return entry

    def remove(self, entry_id: str) -> None:
        """Remove an entry and its files (model versions keep listing it as trained on).

        Raises
        ------
        ProjectError
            For an unknown id, a deleted or read-only project folder.
        """
        with self._locked():
            state = self._state()
            entry = self._find(state, entry_id)
            state.entries = [e for e in state.entries if e.id != entry.id]
            self._write(state)  # the manifest first: it never names a missing file
            self._delete_files(entry.id)

    def record_model(
        self,
        path: str | os.PathLike,
        *,
        parent: int | None = None,
        base: str | os.PathLike | None = None,
        entries: Sequence[str] = (),
        score: float | None = None,
    ) -> ModelVersion:
        """Record a model file that training wrote to :meth:`new_model_path`.

        Parameters
        ----------
        path : str or os.PathLike
            The model file: ``models/vNNN.unet`` of this project, not yet recorded.
        parent : int, optional
            The project version it was fine-tuned from.
        base : str or os.PathLike, optional
            A model file from outside the project it was initialised from.
        entries : sequence of str
            Ids of the entries it was trained on (:attr:`TrainingSet.entry_ids`).
        score : float, optional
            Its validation score; default: the best validation score in the file's
            description (``None`` if it has none).

        Returns
        -------
        ModelVersion
            The recorded version.

        Raises
        ------
        ProjectError
            If the file is not a new model file in the project's models folder, is not a
            valid model file, ``parent`` is not a recorded version, an entry id is unknown,
            or the folder is deleted or read-only.
        """
        from napari_unetkit.modelfile import ModelFileError, read_description

        path = Path(path).expanduser().absolute()
        match = _MODEL_FILE.fullmatch(path.name)
        if match is None or path.parent != self.folder / MODELS_FOLDER:
            raise ProjectError(
                f"{path} is not a model file of this project; train into the path "
                "new_model_path() gives, then record it."
            )
        version = int(match.group(1))
        try:
            description = read_description(path)
        except (ModelFileError, OSError) as error:
            raise ProjectError(f"Cannot record {path.name}: {error}") from None
        if score is None:
            best = (description.get("metrics") or {}).get("best_validation_score")
            score = float(best) if _is_number(best) and math.isfinite(best) else None
        elif not _is_number(score) or not math.isfinite(score):
            raise ProjectError(f"The score must be a finite number, got {score!r}.")
        with self._locked():
            state = self._state()
            if any(m.version == version for m in state.models):
                raise ProjectError(
                    f"Version {version} is already recorded; train into new_model_path()."
                )
            if parent is not None and not any(m.version == parent for m in state.models):
                raise ProjectError(
                    f"The parent version {parent} is not recorded; give a listed version."
                )
            known = {e.id for e in state.entries}
            unknown = [e for e in entries if e not in known]
            if unknown:
                raise ProjectError(
                    f"Unknown entries {', '.join(map(str, unknown))}; give ids of this project."
                )
            model = ModelVersion(
                version=version,
                path=path,
                parent=parent,
                base=None if base is None else str(base),
                entries=tuple(entries),
                score=None if score is None else float(score),
                created=_now(),
            )
            state.models.append(model)
            state.next_version = max(state.next_version, version + 1)
            self._write(state)
        return model

    # ------------------------------------------------------------------ internals

    def _state(self) -> _State:
        if not self.folder.is_dir():
            raise ProjectError(
                f"The project folder {self.folder} no longer exists; open or create a project."
            )
        return _read_manifest(self.folder)

    def _check_folder(self) -> None:
        if not self.folder.is_dir():
            raise ProjectError(
                f"The project folder {self.folder} no longer exists; open or create a project."
            )

    @staticmethod
    def _find(state: _State, entry_id: str) -> Entry:
        for entry in state.entries:
            if entry.id == entry_id:
                return entry
        raise ProjectError(f"The project has no entry {entry_id!r}; choose a listed entry.")

    def _next_entry(self, state: _State) -> int:
        """Return the next entry number: past the counter and any file a crash left behind."""
        numbers = [state.next_entry]
        with contextlib.suppress(OSError):
            for name in os.listdir(self.folder / ENTRIES_FOLDER):
                match = _ENTRY_FILE.fullmatch(name)
                if match:
                    numbers.append(int(match.group(1)[1:]) + 1)
        return max(numbers)

    def _next_version(self, state: _State) -> int:
        numbers = [state.next_version]
        with contextlib.suppress(OSError):
            for name in os.listdir(self.folder / MODELS_FOLDER):
                match = _MODEL_FILE.fullmatch(name)
                if match:
                    numbers.append(int(match.group(1)) + 1)
        return max(numbers)

    def _files(self, entry_id: str) -> dict[str, Path]:
        folder = self.folder / ENTRIES_FOLDER
        return {kind: folder / f"{entry_id}.{kind}.tif" for kind in ("image", "labels", "region")}

    def _write_entry(
        self, entry: Entry, image: np.ndarray, labels: np.ndarray, region: np.ndarray | None
    ) -> None:
        files = self._files(entry.id)
        try:
            (self.folder / ENTRIES_FOLDER).mkdir(exist_ok=True)
            with warnings.catch_warnings():  # (C, Y, X) with C = 3 or 4 is stored as planar RGB
                warnings.filterwarnings("ignore", ".*data with shape", DeprecationWarning)
                write_tiff(files["image"], image, compression="zlib")
            write_tiff(files["labels"], labels, compression="zlib", labels=True)
            if region is not None:
                write_tiff(files["region"], region.astype(np.uint8), compression="zlib")
        except BaseException as error:
            self._delete_files(entry.id)
            if isinstance(error, OSError):
                raise self._write_error(error) from None
            raise

    def _delete_files(self, entry_id: str) -> None:
        for path in self._files(entry_id).values():
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def _read_files(self, entry: Entry) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        files = self._files(entry.id)
        try:
            image = read_image(files["image"])
            labels = read_image(files["labels"])
            region = read_image(files["region"]).astype(bool) if entry.has_region else None
        except (OSError, ValueError) as error:
            raise ProjectError(
                f"Entry {entry.id} cannot be read ({error}); remove it from the project."
            ) from None
        expected = entry.shape if entry.channels == 1 else (entry.channels, *entry.shape)
        if (
            image.shape != expected
            or labels.shape != entry.shape
            or (region is not None and region.shape != entry.shape)
        ):
            raise ProjectError(
                f"Entry {entry.id}'s files do not match the manifest (changed by hand?); "
                "remove it from the project."
            )
        return image, labels, region

    def _write(self, state: _State) -> None:
        """Write the manifest atomically (the last step of every change)."""
        try:
            with atomic_write(self.manifest_path, "w", encoding="utf-8") as file:
                json.dump(state.to_json(), file, indent=1)
                file.write("\n")
        except OSError as error:
            raise self._write_error(error) from None

    def _write_error(self, error: OSError) -> ProjectError:
        if not self.folder.is_dir():
            return ProjectError(
                f"The project folder {self.folder} no longer exists; open or create a project."
            )
        return ProjectError(
            f"Cannot write to the project {self.folder}: {_os_reason(error)}; make the folder "
            "writable or choose another project."
        )

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold the project's writer lock (and check the folder can be written)."""
        self._check_folder()
        try:
            check_writable(self.folder / LOCK_NAME)
            handle = open(self.folder / LOCK_NAME, "a")  # noqa: SIM115 (closed below)
        except OSError as error:
            raise self._write_error(error) from None
        try:
            if fcntl is not None:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            yield
        finally:
            handle.close()  # releases the lock


def _os_reason(error: OSError) -> str:
    """Return an OSError in words, without a trailing full stop (for use inside a sentence)."""
    if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "it is read-only (permission denied)"
    text = str(error.args[-1]) if error.args and not error.strerror else os_error_text(error)
    return text.rstrip(".")
