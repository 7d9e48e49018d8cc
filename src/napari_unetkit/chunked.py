"""Prediction of images larger than memory into a chunked zarr store, resumable, distributable.

The image is read lazily (:mod:`napari_unetkit.bigio`) and the output is written chunk by
chunk as it is computed; nothing ever holds the whole image or the whole result.

Units of work
    The labels are cut into *units*, each written by exactly one task and covering whole
    output chunks (so tasks never write the same chunk): one unit per slice when a slice has at
    most :data:`PLANE_PIXELS` pixels, else square *blocks* of ``block`` pixels (a multiple of
    the chunk size). A unit reads only the tile windows it needs
    (:meth:`~napari_unetkit.prediction.Predictor.predict_region`, which keeps the pooling grid
    of the whole slice, so its probabilities equal the whole slice's), normalised with the
    percentiles of the whole image (:func:`~napari_unetkit.normalization.image_percentiles`,
    a strided subsample).

Instances across block borders
    A slice unit labels the whole slice with the predictor's per-slice instance step
    (:meth:`~napari_unetkit.prediction.Predictor.instances`), exactly as in memory. A block
    unit predicts its block grown by ``margin`` pixels on every inner side, labels that, and
    keeps only the block's core. Every object gets the id ``1 + `` the position (C-order index
    in the labels array) of its first pixel in raster order, its *anchor*: an object that lies
    wholly inside two neighbouring blocks' grown regions gets the same id from both, so objects
    crossing block faces keep one id without any exchange between tasks, whatever the number of
    workers or the order of the blocks, and the ids of the whole result are deterministic. For
    any per-slice instance function whose result for an object depends only on the pixels
    within ``margin`` of it (thresholding, connected components, size filter, gap filling,
    seeded watershed of small objects), the labels equal the in-memory labels up to
    renumbering when every object is smaller than ``margin``; an object touching the cut edge
    of a grown region while reaching into the core (so larger than the margin) is counted in
    :attr:`ChunkedResult.cut_objects` and may be split at block faces.

Resume
    After a unit's chunks are written, the driver (never a worker) creates an empty marker file
    ``unetkit-done/<unit>`` inside the store. A rerun with the same settings skips the units
    with a marker: a killed run continues where it stopped and gives the identical result.

Distributed
    With a ``dask.distributed`` client the units run as tasks; each worker process loads the
    model once (:func:`_worker_predictor`, keyed by the model file's path and SHA-256) and
    opens the image once, and writes its chunks to the shared store.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from napari_unetkit import bigio, layout
from napari_unetkit.bigio import DEFAULT_BLOCK, DEFAULT_CHUNK, DEFAULT_MARGIN, PLANE_PIXELS
from napari_unetkit.normalization import apply_percentiles, image_percentiles
from napari_unetkit.postprocess import InstanceSettings, semantic_from_probabilities
from napari_unetkit.prediction import Predictor, _normalization_settings
from napari_unetkit.progress import Cancelled, check_cancel
from napari_unetkit.tiling import reflect_indices

#: Folder of completion markers inside the output store.
DONE_FOLDER = "unetkit-done"
#: Largest id an ``int32`` labels array can hold.
_INT32_MAX = np.iinfo(np.int32).max


@dataclass(frozen=True)
class Unit:
    """One task: the region ``(y0, y1, x0, x1)`` of slice ``index``."""

    index: tuple[int, ...]
    region: tuple[int, int, int, int]

    @property
    def key(self) -> str:
        """A file-name-safe name, unique within a run."""
        return "_".join(str(i) for i in (*self.index, self.region[0], self.region[2])) or "0"


@dataclass
class ChunkSettings:
    """Everything a unit needs besides the predictor, the image and the store (picklable).

    Attributes
    ----------
    kind : str
        ``"instances"``, ``"semantic"`` or ``"probabilities"``.
    channel_axis : int or None
        The image's channel axis.
    low, high : list of float
        Normalisation percentiles of the whole image, per channel.
    instances : dict
        The instance settings (:meth:`InstanceSettings.to_dict
        <napari_unetkit.postprocess.InstanceSettings.to_dict>`), as
        :meth:`Predictor.post_settings` resolves them.
    probabilities : bool
        Also write probabilities.
    margin : int
        Context of a block for instances (pixels).
    labels_shape : tuple of int
        Shape of the labels.
    channels : list of int or None
        The image channels the network reads, in order (``None``: all).
    """

    kind: str
    channel_axis: int | None
    low: list[float]
    high: list[float]
    instances: dict
    probabilities: bool
    margin: int
    labels_shape: tuple[int, ...]
    channels: list[int] | None = None


@dataclass
class ChunkedResult:
    """What :func:`predict_to_zarr` returns.

    Attributes
    ----------
    path : pathlib.Path
        The output store.
    units : int
        Number of units of the run.
    computed : int
        Units computed by this call (the others were done by an earlier, interrupted run).
    cut_objects : int
        Objects larger than the block margin that may be split at block faces (0 when every
        slice was labelled whole).
    output : str
        The output kind.
    """

    path: Path
    units: int
    computed: int
    cut_objects: int
    output: str


@dataclass
class WorkerJob:
    """What a distributed worker needs to compute units on its own (picklable).

    Attributes
    ----------
    model : str
        The model file.
    digest : str
        Its SHA-256 (the key of the per-worker model cache).
    predictor_options : dict
        :class:`Predictor` keyword arguments.
    image : str
        The image path (opened lazily on the worker).
    out : str
        The output store.
    settings : ChunkSettings
        The unit settings.
    threads : int or None
        Torch threads per worker (``None``: leave as is).
    """

    model: str
    digest: str
    predictor_options: dict
    image: str
    out: str
    settings: ChunkSettings
    threads: int | None = None
    _cache: dict = field(default_factory=dict, repr=False, compare=False)


# ------------------------------------------------------------------------------- planning


def labels_dtype(kind: str, n_classes: int, mode: str, labels_shape: tuple[int, ...]):
    """Return the labels dtype: anchor ids need ``int64`` once the array has 2**31 pixels."""
    if kind == "probabilities":
        return None
    if kind == "semantic":
        offset = 1 if mode == "classes" else 0
        return np.dtype(np.uint8 if n_classes - 1 + offset <= 255 else np.uint16)
    total = math.prod(labels_shape)
    return np.dtype(np.int32 if total < _INT32_MAX else np.int64)


def output_chunks(labels_shape: tuple[int, ...], chunk: int = DEFAULT_CHUNK) -> tuple[int, ...]:
    """Chunks of the labels: one slice deep, ``chunk`` px along Y and X (clipped)."""
    height, width = labels_shape[-2:]
    return (1,) * (len(labels_shape) - 2) + (min(chunk, height), min(chunk, width))


def plan_units(
    labels_shape: tuple[int, ...],
    chunks: tuple[int, ...],
    indices: Sequence[tuple[int, ...]],
    block: int = DEFAULT_BLOCK,
    plane_pixels: int = PLANE_PIXELS,
) -> list[Unit]:
    """Cut the selected slices into units (whole slices, or chunk-aligned blocks).

    Parameters
    ----------
    labels_shape : tuple of int
        Shape of the labels.
    chunks : tuple of int
        The output chunks (``(..., cy, cx)``).
    indices : sequence of tuple of int
        The slices to predict.
    block : int
        Block side for slices with more than ``plane_pixels`` pixels, rounded up to a
        multiple of the chunk.
    plane_pixels : int
        Largest slice (pixels) that is one unit.

    Returns
    -------
    list of Unit
        In slice order, blocks in raster order.
    """
    height, width = labels_shape[-2:]
    cy, cx = chunks[-2:]
    units = []
    for index in indices:
        if height * width <= plane_pixels:
            units.append(Unit(tuple(index), (0, height, 0, width)))
            continue
        by, bx = -(-block // cy) * cy, -(-block // cx) * cx
        for y0 in range(0, height, by):
            for x0 in range(0, width, bx):
                region = (y0, min(y0 + by, height), x0, min(x0 + bx, width))
                units.append(Unit(tuple(index), region))
    return units


# ----------------------------------------------------------------------------- one unit


def window_reader(
    predictor: Predictor,
    image,
    index: tuple[int, ...],
    channel_axis: int | None,
    low: np.ndarray,
    high: np.ndarray,
    channels: list[int] | None = None,
) -> Callable[[tuple[int, int, int, int]], np.ndarray]:
    """Return ``read_window`` for :meth:`Predictor.predict_region` on slice ``index``.

    Each call reads only the rows and columns of the slice under the window (mirrored where
    the window covers the padding), keeps ``channels`` (the network's, of
    :attr:`Predictor.input_channels`; ``None``: all) and normalises them with ``low`` and
    ``high`` (one value per kept channel). A slice too small for one mirror step
    of the network's padding is read whole and padded as :meth:`Predictor.predict_slice` pads.
    """
    shape = layout.slice_shape(image.shape, channel_axis)
    pads = [predictor.padding(size) for size in shape]
    simple = predictor.border == "mirror" or all(
        max(pad) <= size - 1 for pad, size in zip(pads, shape, strict=True)
    )
    if not simple:
        whole = layout.get_slice(image, index, channel_axis)
        whole = apply_percentiles(whole if channels is None else whole[channels], low, high)
        padded = predictor._padded(whole)
        return lambda window: padded[:, window[0] : window[1], window[2] : window[3]]

    def read(window: tuple[int, int, int, int]) -> np.ndarray:
        axes = []
        for (start, stop), (before, _), size in zip(
            (window[:2], window[2:]), pads, shape, strict=True
        ):
            positions = reflect_indices(start - before, stop - before, size)
            first, last = int(positions.min()), int(positions.max()) + 1
            axes.append((slice(first, last), positions - first, last - first))
        (rows, row_take, n_rows), (cols, col_take, n_cols) = axes
        data = layout.get_slice(image, index, channel_axis, rows, cols)
        if channels is not None:
            data = data[channels]
        if len(row_take) != n_rows or np.any(row_take != np.arange(n_rows)):
            data = data[:, row_take]
        if len(col_take) != n_cols or np.any(col_take != np.arange(n_cols)):
            data = data[:, :, col_take]
        return apply_percentiles(data, low, high)

    return read


def compute_unit(
    predictor: Predictor,
    image,
    root,
    settings: ChunkSettings,
    unit: Unit,
    *,
    cancel: threading.Event | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> int:
    """Predict one unit and write its chunks; returns the number of objects cut by its edges.

    Parameters
    ----------
    predictor : Predictor
        The predictor.
    image : array-like
        The (lazy) image.
    root : zarr.Group
        The output store (:func:`napari_unetkit.bigio.create_output`).
    settings : ChunkSettings
        Output kind and options.
    unit : Unit
        What to compute.
    cancel, progress
        As for :meth:`Predictor.predict_slice` (per tile batch).

    Returns
    -------
    int
        Objects of this unit's core larger than the margin (see the module docstring).
    """
    shape = settings.labels_shape[-2:]
    y0, y1, x0, x1 = unit.region
    whole = unit.region == (0, shape[0], 0, shape[1])
    margin = settings.margin if settings.kind == "instances" and not whole else 0
    outer = (max(y0 - margin, 0), min(y1 + margin, shape[0]))
    outer += (max(x0 - margin, 0), min(x1 + margin, shape[1]))
    low, high = np.asarray(settings.low), np.asarray(settings.high)
    read = window_reader(
        predictor, image, unit.index, settings.channel_axis, low, high, settings.channels
    )
    classes = [1] if predictor.mode == "instances" and settings.kind != "semantic" else None
    probs = predictor.predict_region(
        read, shape, outer, cancel=cancel, progress=progress, classes=classes
    )
    core = (slice(y0 - outer[0], y1 - outer[0]), slice(x0 - outer[2], x1 - outer[2]))
    target = (*unit.index, slice(y0, y1), slice(x0, x1))
    if settings.probabilities:
        if predictor.mode == "instances":
            root["probabilities/0"][target] = probs[-1][core]
        else:
            root["probabilities/0"][(slice(None), *target)] = probs[(slice(None), *core)]
    if settings.kind == "semantic":
        offset = 1 if predictor.mode == "classes" else 0
        root["0"][target] = semantic_from_probabilities(probs[(slice(None), *core)], offset)
        return 0
    if settings.kind != "instances":
        return 0
    post = InstanceSettings.from_dict(settings.instances)
    labels = predictor.instances(probs[-1], post)
    del probs
    plane = int(np.ravel_multi_index(unit.index, settings.labels_shape[:-2])) if unit.index else 0
    dtype = root["0"].dtype
    ids, cut = anchor_ids(labels, outer, shape, plane * shape[0] * shape[1], core, dtype)
    del labels
    root["0"][target] = ids
    return cut


def anchor_ids(
    labels: np.ndarray,
    outer: tuple[int, int, int, int],
    shape: tuple[int, int],
    base: int,
    core: tuple[slice, slice],
    dtype=np.int64,
) -> tuple[np.ndarray, int]:
    """Give each object of a region's labels its anchor id and cut out the core.

    Parameters
    ----------
    labels : numpy.ndarray
        Labels of the region ``outer`` of a slice: 0 = background, objects ``1..N`` (ids may
        be unused; memory grows with ``N``, as :meth:`Predictor.instances` returns them).
    outer : tuple of int
        ``(y0, y1, x0, x1)`` of the region in the slice.
    shape : tuple of int
        ``(Y, X)`` of the slice.
    base : int
        C-order index of the slice's first pixel in the labels array.
    core : tuple of slice
        The part of the region to return.
    dtype : numpy.dtype
        Type of the returned ids (large enough for ``1 + base + Y * X``).

    Returns
    -------
    ids : numpy.ndarray
        Labels of the core: ``1 + base + y * X + x`` of each object's first pixel ``(y, x)``
        (raster order, slice coordinates), 0 for background.
    cut : int
        Objects in the core that touch an edge of the region other than the slice border
        (larger than the margin: their id and extent may differ from the whole slice's).
    """
    table = np.zeros(int(labels.max(initial=0)) + 1, dtype=dtype)
    for number, box in enumerate(ndi.find_objects(labels), start=1):
        if box is None:
            continue
        row = box[0].start  # the first pixel is in the object's top row, leftmost
        col = box[1].start + int(np.argmax(labels[row, box[1]] == number))
        table[number] = 1 + base + (row + outer[0]) * shape[1] + (col + outer[2])
    core_labels = labels[core]
    ids = table[core_labels]
    edges = []
    if outer[0] > 0:
        edges.append(labels[0])
    if outer[1] < shape[0]:
        edges.append(labels[-1])
    if outer[2] > 0:
        edges.append(labels[:, 0])
    if outer[3] < shape[1]:
        edges.append(labels[:, -1])
    cut = 0
    if edges:
        in_core = np.zeros(table.size, dtype=bool)
        in_core[core_labels] = True
        touching = np.unique(np.concatenate(edges))
        cut = int(in_core[touching[touching > 0]].sum())
    return ids, cut


# ------------------------------------------------------------------------------ the driver


def file_digest(path: str | os.PathLike) -> str:
    """SHA-256 of a file (hex)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def model_digest(predictor: Predictor) -> str:
    """SHA-256 of the predictor's weights and description: which model a store came from."""
    import torch

    digest = hashlib.sha256(json.dumps(_plain(predictor.description), sort_keys=True).encode())
    for name, tensor in predictor.model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def _done_folder(out: Path) -> Path:
    return Path(out) / DONE_FOLDER


def done_units(out: str | os.PathLike) -> set[str]:
    """Keys of the units an earlier run of this store completed."""
    folder = _done_folder(Path(out))
    return {p.name for p in folder.iterdir()} if folder.is_dir() else set()


def _mark_done(out: Path, unit: Unit) -> None:
    (_done_folder(out) / unit.key).touch()


def prepare(
    predictor: Predictor,
    image,
    out: str | os.PathLike,
    *,
    channel_axis: int | None = None,
    output: str = "auto",
    threshold: float | None = None,
    min_size: int | None = None,
    instances: InstanceSettings | None = None,
    probabilities: bool = False,
    slices: Sequence | None = None,
    axes: str | None = None,
    scale: Sequence[float] | None = None,
    units_names: Sequence[str | None] | None = None,
    run: dict | None = None,
    overwrite: bool = False,
    chunk: int = DEFAULT_CHUNK,
    block: int = DEFAULT_BLOCK,
    margin: int = DEFAULT_MARGIN,
    plane_pixels: int = PLANE_PIXELS,
) -> tuple[Any, ChunkSettings, list[Unit], list[Unit]]:
    """Check the options, create (or reopen, to resume) the store and plan the units.

    Returns
    -------
    root, settings, units, todo
        The store's root group, the unit settings, all units and those still to compute.

    Raises
    ------
    ValueError
        For bad options, or an existing store from another run (without ``overwrite``).
    """
    kind = predictor._resolve_output(output, False)
    post = predictor.post_settings(threshold, min_size, instances).to_dict()
    shape = tuple(image.shape)
    pick, indices = predictor.check_input(shape, channel_axis, slices)
    labels_shape = layout.labels_shape(shape, channel_axis)
    chunks = output_chunks(labels_shape, chunk)
    units = plan_units(labels_shape, chunks, indices, block, plane_pixels)
    settings_key = {
        "kind": kind,
        "instances": post if kind == "instances" else None,
        "probabilities": bool(probabilities),
        "margin": int(margin),
        "chunks": list(chunks),
        "units": [u.key for u in units],
        "image_shape": list(shape),
        "channel_axis": channel_axis,
        "model_digest": model_digest(predictor),
        **(run or {}),
    }
    settings_key = json.loads(json.dumps(settings_key, default=str))
    out = Path(out)
    root = None if overwrite else bigio.open_output(out)
    if out.exists() and root is None and not overwrite:
        raise ValueError(f"{out} already exists; pass --overwrite to replace it.")
    if root is not None and root.attrs["unetkit"].get("run") != settings_key:
        raise ValueError(
            f"{out} holds the result of a run with other settings (model, image or options); "
            "pass --overwrite to replace it."
        )
    low, high = image_percentiles(
        image, channel_axis, _normalization_settings(predictor.description)
    )
    low, high = low[pick], high[pick]
    settings = ChunkSettings(
        kind=kind,
        channel_axis=channel_axis,
        low=[float(v) for v in low],
        high=[float(v) for v in high],
        instances=post,
        probabilities=bool(probabilities or kind == "probabilities"),
        margin=int(margin),
        labels_shape=labels_shape,
        channels=None if isinstance(pick, slice) else [int(c) for c in pick],
    )
    if root is None:
        root = _create_store(
            predictor, out, settings, chunks, axes, scale, units_names, settings_key
        )
    finished = done_units(out)
    todo = [u for u in units if u.key not in finished]
    return root, settings, units, todo


def _create_store(predictor, out, settings, chunks, axes, scale, units_names, run) -> Any:
    labels_shape = settings.labels_shape
    names = (
        axes if axes and len(axes) == len(labels_shape) else bigio.default_axes(len(labels_shape))
    )
    spec = bigio.OutputSpec(
        labels_shape=labels_shape,
        labels_dtype=labels_dtype(settings.kind, predictor.n_classes, predictor.mode, labels_shape),
        probabilities_shape=(
            None
            if not settings.probabilities
            else labels_shape
            if predictor.mode == "instances"
            else (predictor.n_classes, *labels_shape)
        ),
        chunks=chunks,
        axes=names,
        scale=tuple(float(s) for s in scale) if scale else (1.0,) * len(labels_shape),
        units=tuple(units_names) if units_names else None,
    )
    attrs = {"run": run, "description": _plain(predictor.description), "complete": False}
    root = bigio.create_output(out, spec, attrs)
    _done_folder(out).mkdir(exist_ok=True)
    return root


def _plain(description: dict) -> dict:
    """Return the description as plain JSON (numbers, strings, lists, dicts)."""
    return json.loads(json.dumps(description, default=str))


def predict_to_zarr(
    predictor: Predictor,
    image,
    out: str | os.PathLike,
    *,
    client=None,
    job: WorkerJob | None = None,
    progress: Callable[[float, int], None] | None = None,
    cancel: threading.Event | None = None,
    **options,
) -> ChunkedResult:
    """Predict ``image`` into the zarr store ``out``, unit by unit (see the module docstring).

    Parameters
    ----------
    predictor : Predictor
        The predictor (used in this process; workers load their own from ``job``).
    image : array-like
        A lazy image (zarr, memory-mapped, dask) or a NumPy array.
    out : str or os.PathLike
        The output store (``.zarr`` / ``.ome.zarr``). An existing store of the same run is
        resumed; another one is refused unless ``overwrite``.
    client : distributed.Client, optional
        Run the units on this cluster (then ``job`` is required).
    job : WorkerJob, optional
        How workers load the model and the image.
    progress : callable, optional
        ``progress(done, total)`` in units (fractional within a unit when run here).
    cancel : threading.Event, optional
        Stops between tile batches (here) or between units (cluster); the units written so
        far stay, and a rerun resumes.
    **options
        :func:`prepare`'s keywords (``channel_axis``, ``output``, ``threshold``, ``min_size``,
        ``instances``, ``probabilities``, ``slices``, ``axes``, ``scale``, ``units_names``, ``run``,
        ``overwrite``, ``chunk``, ``block``, ``margin``, ``plane_pixels``).

    Returns
    -------
    ChunkedResult
        Where the result is and how much was computed.
    """
    root, settings, units, todo = prepare(predictor, image, out, **options)
    out = Path(out)
    total = len(units)
    finished = total - len(todo)
    if progress is not None:
        progress(finished, total)
    cut = 0
    if client is None:
        for unit in todo:
            check_cancel(cancel)
            done_before = finished

            def tiles(done: int, count: int, base: int = done_before) -> None:
                if progress is not None:
                    progress(base + done / count, total)

            cut += compute_unit(
                predictor, image, root, settings, unit, cancel=cancel, progress=tiles
            )
            _mark_done(out, unit)
            finished += 1
            if progress is not None:
                progress(finished, total)
    else:
        if job is None:
            raise ValueError("A cluster run needs a WorkerJob (model and image paths).")
        job.settings = settings
        job.out = str(out)
        for unit, unit_cut in _run_on_cluster(client, job, todo, cancel):
            cut += unit_cut
            _mark_done(out, unit)
            finished += 1
            if progress is not None:
                progress(finished, total)
    attrs = dict(root.attrs["unetkit"])
    attrs["complete"] = True
    root.attrs["unetkit"] = attrs
    return ChunkedResult(out, total, len(todo), cut, settings.kind)


def _run_on_cluster(client, job: WorkerJob, units: list[Unit], cancel):
    """Yield ``(unit, cut)`` as the cluster finishes units; cancel stops between units."""
    distributed = bigio.require("distributed", "distributed")
    futures = {client.submit(run_worker_unit, job, unit, pure=False): unit for unit in units}
    pending = set(futures)
    try:
        while pending:
            if cancel is not None and cancel.is_set():
                raise Cancelled
            try:
                done, pending = distributed.wait(
                    pending, timeout=0.5, return_when="FIRST_COMPLETED"
                )
            except (TimeoutError, distributed.TimeoutError):
                continue
            for future in done:
                check_cancel(cancel)
                yield futures[future], future.result()
    finally:
        if pending:
            client.cancel(list(pending))


# ------------------------------------------------------------------------------- workers


def start_local_cluster(workers: int):
    """Start a ``distributed.LocalCluster`` of ``workers`` worker processes, one thread each.

    The workers keep glibc's adaptive allocator: the ``MALLOC_TRIM_THRESHOLD_`` that dask's
    nannies set by default is left out for them (one set in this process's environment still
    reaches them), because with it every large tensor is mapped and unmapped afresh (see
    ``docs/big-data.md``). The caller closes the cluster.
    """
    dask = bigio.require("dask", "distributed")
    distributed = bigio.require("distributed", "distributed")
    key = "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_"
    with dask.config.set({key: None}):
        return distributed.LocalCluster(
            n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None
        )


_WORKER_CACHE: dict[tuple, Any] = {}
_WORKER_LOCK = threading.Lock()


def _worker_predictor(job: WorkerJob) -> Predictor:
    """Return the worker's predictor for this model file, loaded once per process (thread-safe)."""
    key = ("predictor", job.model, job.digest, json.dumps(job.predictor_options, sort_keys=True))
    with _WORKER_LOCK:
        predictor = _WORKER_CACHE.get(key)
        if predictor is None:
            if job.threads:
                import torch

                torch.set_num_threads(job.threads)
            options = dict(job.predictor_options)
            options["device"] = _worker_device(options.get("device", "auto"))
            predictor = Predictor.from_file(job.model, **options)
            _WORKER_CACHE[key] = predictor
        return predictor


def _worker_device(device: str) -> str:
    """One GPU per worker: ``auto``/``cuda`` become ``cuda:<worker number mod GPUs>``.

    Workers of a ``LocalCluster`` are named 0, 1, ...; other names, one GPU or none leave the
    device as given.
    """
    if device not in ("auto", "cuda"):
        return device
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count < 2:
        return device
    try:
        from distributed import get_worker

        number = int(get_worker().name)
    except (ImportError, ValueError, TypeError):
        return device
    return f"cuda:{number % count}"


def _worker_open(kind: str, path: str, opener: Callable[[str], Any]) -> Any:
    key = (kind, path)
    with _WORKER_LOCK:
        value = _WORKER_CACHE.get(key)
        if value is None:
            value = _WORKER_CACHE[key] = opener(path)
        return value


def _open_store(path: str) -> Any:
    return bigio.require("zarr").open_group(path, mode="r+")


def run_worker_unit(job: WorkerJob, unit: Unit) -> int:
    """Compute one unit on a worker (the task function); returns its cut-object count."""
    predictor = _worker_predictor(job)
    image = _worker_open("image", job.image, bigio.open_image).array
    root = _worker_open("store", job.out, _open_store)
    return compute_unit(predictor, image, root, job.settings, unit)


def worker_job(
    model: str | os.PathLike, image: str | os.PathLike, **predictor_options
) -> WorkerJob:
    """Return a :class:`WorkerJob` for a model file and an image path (settings filled in later)."""
    return WorkerJob(
        model=str(Path(model).resolve()),
        digest=file_digest(model),
        predictor_options=predictor_options,
        image=str(Path(image).resolve()),
        out="",
        settings=None,  # type: ignore[arg-type]
    )
