"""The one predictor: overlap-tile inference, batched tiles, flip TTA, slice streaming.

Every front end (training validation, the CLI, the napari widgets) predicts through
:class:`Predictor`. Where the tiles lie, their context (``halo``), the image border
(``border``) and the automatic tile size are the geometry of :mod:`napari_unetkit.tiling`.

The network
    Every prediction runs :func:`napari_unetkit.speed.inference.inference_copy` of the model (eval
    mode, batch norm folded into the convolutions, channels-last memory format on CPU and CUDA,
    decoders without concatenation), kept while the model's weights are unchanged; the model
    itself is never modified or switched to eval mode.

Precision
    ``precision="auto"`` (default) runs the coarse levels in 16 bits where the hardware does
    that natively (CUDA; CPUs with AVX512-BF16 or AMX) and everything in float32 elsewhere (see
    :mod:`napari_unetkit.speed.precision`). ``"float32"`` reproduces the plain network to
    float32 rounding on every machine.

Streaming
    :meth:`Predictor.predict` computes the normalisation percentiles over the whole image (the
    same subsampled estimate as training), then reads, normalises and predicts one slice at a
    time, writing labels (and optionally probabilities) into preallocated outputs. For a stack,
    two worker threads overlap the network's work on slice ``i`` with reading and normalising
    slice ``i + 1`` and post-processing slice ``i - 1`` (``OVERLAP_SLICES``). Peak memory is
    the input, the outputs, two normalised slices, two slices of probabilities, the
    post-processing of one slice and the activations of one tile batch. Between slices the
    C heaps of the threads involved give their free pages back to the system
    (:func:`napari_unetkit.speed.memory.release_free_memory`), else each would keep the largest
    amount it ever held.

How fast each part is and why it is built this way: ``docs/performance.md``.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import torch
from torch import nn

from napari_unetkit import layout, postprocess
from napari_unetkit.checks import MODES, predict_problems, raise_problems, whole_number_problem
from napari_unetkit.device import resolve_device
from napari_unetkit.model import UNetConfig
from napari_unetkit.modelfile import load_model
from napari_unetkit.normalization import (
    NormalizationSettings,
    apply_percentiles,
    check_image_dtype,
    image_percentiles,
)
from napari_unetkit.progress import check_cancel
from napari_unetkit.speed.inference import inference_copy, state_fingerprint, uses_channels_last
from napari_unetkit.speed.memory import release_free_memory
from napari_unetkit.speed.precision import Precision, describe_precision, resolve_precision
from napari_unetkit.tiling import (
    BORDERS,
    Border,
    Tile,
    TileGrid,
    auto_tile_size,
    axis_padding,
    batches,
    default_halo,
    pad_slice,
    round_up,
    tile_layout,
)

#: Default number of tiles per forward pass (on CPU more tiles per pass only cost memory).
DEFAULT_BATCH_CPU = 1
DEFAULT_BATCH_CUDA = 4
#: Overlap reading and post-processing of neighbouring slices with the network (a stack).
OVERLAP_SLICES = True
#: Flips averaged by test-time augmentation (dims of an ``(N, C, Y, X)`` tensor).
TTA_FLIPS: tuple[tuple[int, ...], ...] = ((), (-1,), (-2,), (-2, -1))

Output = Literal["auto", "instances", "semantic", "probabilities"]
OUTPUTS = ("auto", "instances", "semantic", "probabilities")
#: Instance settings of model files that store none (written before settings were stored).
LEGACY_INSTANCE_SETTINGS = postprocess.InstanceSettings(
    method="components", threshold=0.5, min_size=10, grow=2
)

#: ``progress(done, total)`` callback type; see :meth:`Predictor.predict`.
ProgressCallback = Callable[[float, int], None]


@dataclass
class PredictionResult:
    """What :meth:`Predictor.predict` returns.

    Attributes
    ----------
    labels : numpy.ndarray or None
        Labels of shape ``layout.labels_shape(image.shape, channel_axis)``: ``int32`` instance
        ids unique across the stack, or ``uint8`` classes (``uint16`` above 255 classes);
        ``None`` for ``output="probabilities"``.
    probabilities : numpy.ndarray or None
        ``float32``; for instance models the foreground probability (labels shape), for class
        models all classes ``(K, *labels shape)``. ``None`` unless requested.
    description : dict
        The model description.
    output : str
        The output kind that was produced (``"instances"``, ``"semantic"`` or
        ``"probabilities"``).
    slices : list of tuple of int
        The slice indices that were predicted (others are 0).
    """

    labels: np.ndarray | None
    probabilities: np.ndarray | None
    description: dict
    output: str
    slices: list[tuple[int, ...]]


# --------------------------------------------------------------------------------------------
# The predictor
# --------------------------------------------------------------------------------------------


def _normalization_settings(description: dict) -> NormalizationSettings:
    data = description.get("normalization")
    return NormalizationSettings() if data is None else NormalizationSettings.from_dict(data)


class Predictor:
    """Overlap-tile U-Net inference on 2D slices, images and stacks.

    Parameters
    ----------
    model : torch.nn.Module
        A :class:`napari_unetkit.model.UNet` (anything with a ``config`` :class:`UNetConfig`
        and the same forward contract). It is moved to ``device`` and otherwise never
        modified: predictions run an eval-mode inference copy of it
        (:func:`napari_unetkit.speed.inference.inference_copy`) under ``torch.inference_mode()``,
        made again whenever its weights changed, so a trainer can validate with a predictor
        built on the model it is training.
    description : dict
        The model description: ``"mode"`` (``"instances"`` or ``"classes"``),
        ``"normalization"`` (``NormalizationSettings.to_dict()``), ``"class_names"`` and
        ``"architecture"`` (must match ``model.config`` when present).
    device : str or torch.device
        ``"auto"`` or an explicit device (see :func:`napari_unetkit.device.resolve_device`).
    tile_size : int or None
        Tile core size in pixels, rounded up to a multiple of ``2**depth``; ``None`` chooses one
        with :func:`~napari_unetkit.tiling.auto_tile_size`. A tile larger than the image is
        shrunk to fit it.
    batch_size : int or None
        Tiles per forward pass; ``None``: 4 on CUDA, 1 elsewhere.
    halo : int or None
        Context in pixels on each side of a tile core, rounded up to a multiple of
        ``2**depth``; ``None`` uses :func:`~napari_unetkit.tiling.default_halo`. It may exceed
        the tile size.
    tta : bool
        Average the probabilities of the identity, x-flip, y-flip and xy-flip of every tile.
    precision : {"auto", "float32", "mixed", "half"}
        Numeric precision of the network (see
        :func:`napari_unetkit.speed.precision.resolve_precision`); the resolved name is kept in
        ``self.precision``. Probabilities are always computed in float32 from the logits.
    border : {"network", "mirror"}
        What the network sees beyond the slice border (see :mod:`napari_unetkit.tiling`):
        ``"network"`` gives exactly one plain whole-slice call of the network, ``"mirror"``
        the paper's mirrored context.

    Raises
    ------
    TypeError
        If ``model`` has no :class:`UNetConfig` ``config``.
    ValueError
        For an invalid description, mode, size or device.
    """

    def __init__(
        self,
        model: nn.Module,
        description: dict,
        device: str | torch.device = "auto",
        tile_size: int | None = None,
        batch_size: int | None = None,
        halo: int | None = None,
        tta: bool = False,
        precision: Precision = "auto",
        border: Border = "network",
    ) -> None:
        config = getattr(model, "config", None)
        if not isinstance(config, UNetConfig):
            raise TypeError("Predictor expects a UNet (a module with a UNetConfig `config`).")
        self.config = config
        self.description = dict(description)
        self._check_description()
        self.device = resolve_device(device)
        self.model = model.to(self.device)
        self._call_network: nn.Module | None = None  # set for the duration of predict()
        self._cached_network: tuple[tuple, nn.Module] | None = None  # (fingerprint, copy)
        self.tta = bool(tta)
        self.precision = resolve_precision(precision, self.device)
        if border not in BORDERS:
            raise ValueError(f"border must be one of {', '.join(BORDERS)}, got {border!r}.")
        self.border = border
        factor = config.downsampling_factor
        self.halo = (
            default_halo(config)
            if halo is None
            else round_up(_positive(halo, 0, "The halo (pixels)"), factor)
        )
        default_batch = DEFAULT_BATCH_CUDA if self.device.type == "cuda" else DEFAULT_BATCH_CPU
        self.batch_size = (
            default_batch
            if batch_size is None
            else _positive(batch_size, 1, "The batch size (tiles)")
        )
        if tile_size is None:
            tile_size = auto_tile_size(config, self.halo, self.device, self.batch_size)
        self.tile_size = round_up(_positive(tile_size, 1, "The tile size (pixels)"), factor)

    @classmethod
    def from_file(cls, path: str | os.PathLike, **kwargs) -> Predictor:
        """Load a model file and build a predictor for it.

        Parameters
        ----------
        path : str or os.PathLike
            A ``.unet`` model file.
        **kwargs
            Any :class:`Predictor` argument except ``model`` and ``description``.

        Returns
        -------
        Predictor
            The predictor.
        """
        device = resolve_device(kwargs.pop("device", "auto"))
        model, description = load_model(path, device=device)
        return cls(model, description, device=device, **kwargs)

    def _check_description(self) -> None:
        mode = self.description.get("mode")
        if mode not in MODES:
            raise ValueError(f"The model mode must be 'instances' or 'classes', got {mode!r}.")
        architecture = self.description.get("architecture")
        if architecture is not None and UNetConfig.from_dict(architecture) != self.config:
            raise ValueError("The description's architecture does not match the model.")
        if mode == "instances" and self.config.n_classes != 2:
            raise ValueError(
                f"An instance model has 2 outputs (background, foreground), this one has "
                f"{self.config.n_classes}."
            )
        _normalization_settings(self.description)  # raises on a malformed entry
        _check_channel_entry(self.description.get("channels"), self.config.in_channels)
        if mode == "instances":
            instance_settings_of(self.description)  # likewise

    @property
    def precision_description(self) -> str:
        """The precision in words, e.g. ``"float32"`` (for progress lines and logs)."""
        return describe_precision(self.precision, self.device)

    @property
    def input_channels(self) -> tuple[int, list[int] | slice]:
        """Channels an input image has, and which of them the network reads (in order)."""
        stored = self.description.get("channels")
        if not stored:
            return self.config.in_channels, slice(None)
        return int(stored["of"]), list(stored["used"])

    @property
    def instance_settings(self) -> postprocess.InstanceSettings:
        """How this model's instances are extracted unless a call overrides it."""
        return instance_settings_of(self.description)

    @property
    def mode(self) -> str:
        """``"instances"`` or ``"classes"``."""
        return self.description["mode"]

    @property
    def n_classes(self) -> int:
        """Number of network outputs ``K``."""
        return self.config.n_classes

    # ---------------------------------------------------------------------------- one slice

    def predict_slice(
        self,
        image_cyx: np.ndarray,
        *,
        cancel: threading.Event | None = None,
        progress: Callable[[int, int], None] | None = None,
        classes: Sequence[int] | None = None,
    ) -> np.ndarray:
        """Class probabilities of one normalised slice, by overlap-tile prediction.

        Parameters
        ----------
        image_cyx : numpy.ndarray
            Normalised image ``(C, Y, X)`` (converted to float32).
        cancel : threading.Event, optional
            Checked before every tile batch.
        progress : callable, optional
            ``progress(done_tiles, total_tiles)``, called after every tile batch.
        classes : sequence of int, optional
            Keep only these classes' probabilities (the softmax is still over all classes);
            ``[1]`` for the foreground of an instance model holds half the memory.

        Returns
        -------
        numpy.ndarray
            float32 softmax probabilities ``(K, Y, X)``, or ``(len(classes), Y, X)``.

        Raises
        ------
        ValueError
            If the slice is not ``(C, Y, X)`` with the model's channel count.
        napari_unetkit.progress.Cancelled
            If ``cancel`` is set.
        """
        image = np.asarray(image_cyx, dtype=np.float32)
        if image.ndim != 3 or image.shape[0] != self.config.in_channels or 0 in image.shape:
            raise ValueError(
                f"predict_slice expects a (C, Y, X) slice with C = {self.config.in_channels}, "
                f"got shape {image.shape}."
            )
        kept = self._kept_classes(classes)
        padded = self._padded(image)
        return self._predict_tiles(
            lambda window: padded[:, window[0] : window[1], window[2] : window[3]],
            self.tile_layout(image.shape[1:]),
            (0, image.shape[1], 0, image.shape[2]),
            kept,
            cancel=cancel,
            progress=progress,
        )

    def predict_region(
        self,
        read_window: Callable[[tuple[int, int, int, int]], np.ndarray],
        shape: tuple[int, int],
        region: tuple[int, int, int, int],
        *,
        cancel: threading.Event | None = None,
        progress: Callable[[int, int], None] | None = None,
        classes: Sequence[int] | None = None,
    ) -> np.ndarray:
        """Class probabilities of a rectangle of a slice whose pixels are read on demand.

        The tiles are those of :meth:`tile_layout` with ``region``: the same pooling grid as
        the whole slice, so (with the default, exact halo) the result equals the region of
        :meth:`predict_slice` of the whole slice up to float rounding, and exactly where the
        tiles coincide. Only the windows of those tiles are read, one batch at a time.

        Parameters
        ----------
        read_window : callable
            ``read_window((top, bottom, left, right))`` returns the normalised float32
            ``(C, bottom - top, right - left)`` window of the *padded* slice (padded as
            :meth:`padding` says); see :func:`napari_unetkit.chunked.window_reader`.
        shape : tuple of int
            ``(Y, X)`` of the whole slice.
        region : tuple of int
            ``(y0, y1, x0, x1)``, the rectangle to predict.
        cancel, progress, classes
            As for :meth:`predict_slice`.

        Returns
        -------
        numpy.ndarray
            float32 probabilities ``(K or len(classes), y1 - y0, x1 - x0)``.
        """
        y0, y1, x0, x1 = region
        if not (0 <= y0 < y1 <= shape[0] and 0 <= x0 < x1 <= shape[1]):
            raise ValueError(f"The region {region} is not inside a slice of shape {shape}.")
        return self._predict_tiles(
            read_window,
            self.tile_layout(shape, region),
            region,
            self._kept_classes(classes),
            cancel=cancel,
            progress=progress,
        )

    def _kept_classes(self, classes: Sequence[int] | None) -> list[int]:
        kept = list(range(self.n_classes)) if classes is None else [int(c) for c in classes]
        if not kept or not all(0 <= c < self.n_classes for c in kept):
            raise ValueError(f"classes must be among 0..{self.n_classes - 1}, got {classes}.")
        return kept

    def _predict_tiles(
        self,
        read_window: Callable[[tuple[int, int, int, int]], np.ndarray],
        tiles: list[Tile],
        region: tuple[int, int, int, int],
        kept: list[int],
        *,
        cancel: threading.Event | None,
        progress: Callable[[int, int], None] | None,
    ) -> np.ndarray:
        """Run the tiles batch by batch and write their cores into the region's array."""
        y0, y1, x0, x1 = region
        out = np.empty((len(kept), y1 - y0, x1 - x0), dtype=np.float32)
        every = len(kept) == self.n_classes and kept == sorted(kept)
        done = 0
        network = self._network()
        for batch in batches(tiles, self.batch_size):
            check_cancel(cancel)
            inputs = np.stack([read_window(tile.window) for tile in batch])
            probs = self._run(network, inputs)
            for tile, prob in zip(batch, probs, strict=True):
                (oy, ox), h, w = tile.offset, tile.height, tile.width
                core = prob[:, oy : oy + h, ox : ox + w]
                top, left = tile.y - y0, tile.x - x0
                out[:, top : top + h, left : left + w] = core if every else core[kept]
            done += len(batch)
            if progress is not None:
                progress(done, len(tiles))
        return out

    def _network(self) -> nn.Module:
        """Return the network to run: an inference copy of the model with its current weights.

        The copy (:func:`~napari_unetkit.speed.inference.inference_copy`) is kept while the model's
        :func:`~napari_unetkit.speed.inference.state_fingerprint` is unchanged, checked once per
        :meth:`predict` call and once per direct :meth:`predict_slice` call, so a predictor
        built on a model that is still being trained always predicts with its latest weights.
        """
        if self._call_network is not None:
            return self._call_network
        fingerprint = state_fingerprint(self.model)
        cached = self._cached_network
        if cached is None or cached[0] != fingerprint:
            cached = (fingerprint, inference_copy(self.model, self.device, self.precision))
            self._cached_network = cached
        return cached[1]

    def padding(self, size: int) -> tuple[int, int]:
        """Return the padding ``(before, after)`` of an axis of ``size`` px before tiling.

        See :func:`napari_unetkit.tiling.axis_padding`.
        """
        before, after, _ = axis_padding(size, self._grid())
        return before, after

    def tile_layout(
        self, shape: tuple[int, int], region: tuple[int, int, int, int] | None = None
    ) -> list[Tile]:
        """Return the tiles that cover a slice of ``shape`` (Y, X), or a region of it.

        See :func:`napari_unetkit.tiling.tile_layout`.
        """
        return tile_layout(shape, self._grid(), region)

    def _padded(self, image: np.ndarray) -> np.ndarray:
        """Return the slice padded as :meth:`tile_layout` assumes (no copy if nothing is added)."""
        return pad_slice(image, self._grid())

    def _grid(self) -> TileGrid:
        return TileGrid(self.config.downsampling_factor, self.tile_size, self.halo, self.border)

    @torch.inference_mode()
    def _run(self, network: nn.Module, inputs: np.ndarray) -> np.ndarray:
        """Return the softmax probabilities of a batch of windows (flip-averaged with TTA)."""
        x = torch.from_numpy(inputs).to(self.device)
        if uses_channels_last(self.device):
            x = x.contiguous(memory_format=torch.channels_last)
        flips = TTA_FLIPS if self.tta else ((),)
        total = None
        for dims in flips:
            logits = network(torch.flip(x, dims) if dims else x)
            probs = torch.softmax(logits.float(), dim=1)
            probs = torch.flip(probs, dims) if dims else probs
            total = probs if total is None else total + probs
        if len(flips) > 1:
            total /= len(flips)
        return total.contiguous(memory_format=torch.contiguous_format).cpu().numpy()

    # ---------------------------------------------------------------------------- whole images

    def predict(
        self,
        image,
        channel_axis: int | None = None,
        *,
        output: Output = "auto",
        threshold: float | None = None,
        min_size: int | None = None,
        instances: postprocess.InstanceSettings | None = None,
        link_3d: bool = False,
        return_probabilities: bool = False,
        slices: Sequence[int | Sequence[int]] | None = None,
        progress: ProgressCallback | None = None,
        cancel: threading.Event | None = None,
    ) -> PredictionResult:
        """Predict a 2D image or a stack, slice by slice.

        Parameters
        ----------
        image : array-like
            2D ``(Y, X)``, 2D with channels, or a stack whose leading axes are slices (NumPy,
            dask, zarr: slices are read one at a time).
        channel_axis : int or None
            The channel axis, if any.
        output : {"auto", "instances", "semantic", "probabilities"}
            ``"auto"``: instances for instance models, classes for class models.
            ``"semantic"``: per-pixel argmax (instance models: 1 = foreground; class models:
            class index ``k`` becomes label ``k + 1``, 0 is never predicted). ``"instances"``
            needs an instance model. ``"probabilities"``: no labels, probabilities only.
        threshold : float, optional
            Foreground probability threshold for instances; ``None`` keeps the one of the
            instance settings in use.
        min_size : int, optional
            Smallest instance in pixels; ``None`` keeps the one of the instance settings in use.
        instances : InstanceSettings, optional
            How instances are extracted; default :attr:`instance_settings` (the model's own,
            chosen on its validation data). ``threshold`` and ``min_size`` override it.
        link_3d : bool
            Join instances of neighbouring slices along the last slice axis into 3D instances
            (:func:`~napari_unetkit.postprocess.link_slices`); instances only, and a no-op for
            a single 2D image.
        return_probabilities : bool
            Also return probabilities (always true for ``output="probabilities"``).
        slices : sequence, optional
            Slice indices to predict (an int or a tuple per index, over the leading slice
            axes), e.g. only the slice shown in the viewer; the others stay 0.
        progress : callable, optional
            ``progress(done, total)`` in units of slices: ``total`` is the number of slices to
            predict (int) and ``done`` (a float) advances after every tile batch, reaching each
            whole number when a slice is finished. It is first called with ``(0, total)``.
        cancel : threading.Event, optional
            Checked before every tile batch; when set, :class:`~napari_unetkit.progress.
            Cancelled` is raised and nothing is returned.

        Returns
        -------
        PredictionResult
            Labels and/or probabilities, the description and the predicted slice indices.

        Raises
        ------
        ValueError
            If the image's channel count does not match the model, its type is unusable, an
            option is invalid, or a slice index is out of range.
        napari_unetkit.progress.Cancelled
            If ``cancel`` is set during the job.
        """
        kind = self._resolve_output(output, link_3d)
        post = self.post_settings(threshold, min_size, instances)
        if not hasattr(image, "shape") or not hasattr(image, "dtype"):
            image = np.asarray(image)
        shape = tuple(image.shape)
        check_image_dtype(image.dtype)
        pick, indices = self.check_input(shape, channel_axis, slices)
        settings = _normalization_settings(self.description)
        low, high = image_percentiles(image, channel_axis, settings)
        low, high = low[pick], high[pick]

        out_shape = layout.labels_shape(shape, channel_axis)
        labels = self._allocate_labels(kind, out_shape)
        probabilities = None
        if return_probabilities or kind == "probabilities":
            prob_shape = out_shape if self.mode == "instances" else (self.n_classes, *out_shape)
            probabilities = np.zeros(prob_shape, dtype=np.float32)

        total = len(indices)
        if progress is not None:
            progress(0, total)

        def read(index: tuple[int, ...]) -> np.ndarray:
            image_cyx = layout.get_slice(image, index, channel_axis)[pick]
            return apply_percentiles(image_cyx, low, high)

        # Instances and probabilities of an instance model need only its foreground (class 1,
        # its last): predicting only it halves the probabilities held per slice.
        classes = [1] if self.mode == "instances" and kind != "semantic" else None

        def store(index: tuple[int, ...], probs: np.ndarray, first_id: int) -> int:
            if probabilities is not None:
                if self.mode == "instances":
                    probabilities[index] = probs[-1]
                else:
                    probabilities[(slice(None), *index)] = probs
            if labels is None:
                return first_id
            next_id = self._write_labels(labels, index, probs, kind, post, first_id)
            release_free_memory()  # what post-processing freed in this thread's heap
            return next_id

        # Pipeline (see the module docstring): while the network predicts slice i, a worker
        # thread reads and normalises slice i + 1 and post-processes slice i - 1. Stores run
        # in slice order because each needs the instance ids used before it.
        workers = _SliceWorkers(OVERLAP_SLICES and total > 1)
        self._call_network = self._network()
        try:
            next_id = 0
            stored = None
            upcoming = workers.submit(read, indices[0]) if indices else None
            for done, index in enumerate(indices):
                normalised = upcoming.result()
                if done + 1 < total:
                    upcoming = workers.submit(read, indices[done + 1])
                release_free_memory()  # what the previous slice's tiles freed
                probs = self.predict_slice(
                    normalised,
                    cancel=cancel,
                    progress=_tile_reporter(progress, done, total),
                    classes=classes,
                )
                del normalised
                if stored is not None:
                    next_id = stored.result()
                stored = workers.submit(store, index, probs, next_id)
                del probs
            if stored is not None:
                stored.result()
        finally:
            workers.close()
            self._call_network = None
        if link_3d and labels is not None and len(out_shape) > 2:
            labels = _link_last_axis(labels)
        return PredictionResult(labels, probabilities, self.description, kind, indices)

    def _resolve_output(self, output: str, link_3d: bool) -> str:
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {', '.join(OUTPUTS)}, got {output!r}.")
        if output == "auto":
            output = "instances" if self.mode == "instances" else "semantic"
        if output == "instances" and self.mode != "instances":
            raise ValueError(
                "Instances need an instance model; this model predicts classes (use 'semantic')."
            )
        if link_3d and output != "instances":
            raise ValueError("3D linking applies to instances only.")
        return output

    def _allocate_labels(self, kind: str, shape: tuple[int, ...]) -> np.ndarray | None:
        if kind == "instances":
            return np.zeros(shape, dtype=np.int32)
        if kind == "semantic":
            offset = 1 if self.mode == "classes" else 0
            dtype = np.uint8 if self.n_classes - 1 + offset <= 255 else np.uint16
            return np.zeros(shape, dtype=dtype)
        return None

    def _write_labels(
        self,
        labels: np.ndarray,
        index: tuple[int, ...],
        probs: np.ndarray,
        kind: str,
        settings: postprocess.InstanceSettings,
        next_id: int,
    ) -> int:
        """Post-process one slice into ``labels[index]``; returns the next free instance id."""
        if kind == "semantic":
            offset = 1 if self.mode == "classes" else 0
            labels[index] = postprocess.semantic_from_probabilities(probs, offset=offset)
            return next_id
        instances = self.instances(probs[-1], settings)
        count = int(instances.max(initial=0))
        instances[instances > 0] += next_id  # in place: no second slice-sized label image
        labels[index] = instances
        return next_id + count

    def instances(self, fg_prob: np.ndarray, settings: postprocess.InstanceSettings) -> np.ndarray:
        """Instances of one 2D foreground probability map, as :meth:`predict` labels a slice.

        The one call of the per-slice instance step
        (:func:`~napari_unetkit.postprocess.instances_from_probabilities`) shared by
        :meth:`predict` and the chunked prediction (:mod:`napari_unetkit.chunked`).

        Parameters
        ----------
        fg_prob : numpy.ndarray
            Foreground probability ``(Y, X)``.
        settings : InstanceSettings
            As :meth:`post_settings` resolves them.

        Returns
        -------
        numpy.ndarray
            ``int32`` labels ``0..N`` of ``fg_prob``'s shape.
        """
        return postprocess.instances_from_probabilities(fg_prob, settings=settings)

    def check_input(
        self, shape: tuple[int, ...], channel_axis: int | None, slices=None
    ) -> tuple[list[int] | slice, list[tuple[int, ...]]]:
        """Check an image's shape for this model; return the channels read and the slices.

        Raises
        ------
        ValueError
            For an empty image, a channel count the model cannot read, or a slice index out
            of range.
        """
        expected, pick = self.input_channels
        problems = predict_problems(
            image_shape=shape, channel_axis=channel_axis, in_channels=expected, guess_colour=False
        )
        raise_problems(problems)
        return pick, _selected_slices(shape, channel_axis, slices)

    def post_settings(
        self,
        threshold: float | None = None,
        min_size: int | None = None,
        instances: postprocess.InstanceSettings | None = None,
    ) -> postprocess.InstanceSettings:
        """Return the instance settings of a call: ``instances`` or the model's, overridden.

        Raises
        ------
        ValueError
            For a threshold outside (0, 1) or a negative minimum size.
        """
        raise_problems(predict_problems(threshold=threshold, min_size=min_size))
        post = self.instance_settings if instances is None else instances
        if threshold is not None:
            post = replace(post, threshold=float(threshold))
        if min_size is not None:
            post = replace(post, min_size=int(min_size))
        return post


class _SliceWorkers:
    """Run slice reads and stores in two background threads, or inline when disabled."""

    def __init__(self, enabled: bool) -> None:
        self._pool = (
            ThreadPoolExecutor(max_workers=2, thread_name_prefix="unetkit-slices")
            if enabled
            else None
        )

    def submit(self, function: Callable, *args) -> Future:
        if self._pool is not None:
            return self._pool.submit(function, *args)
        future: Future = Future()
        future.set_result(function(*args))
        return future

    def close(self) -> None:
        """Wait for the running jobs (an error or a cancel ends the job) and drop the rest."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)


def _positive(value: int, minimum: int, name: str = "The value") -> int:
    message = whole_number_problem(value, name, minimum)
    if message is not None:
        raise ValueError(message)
    return int(value)


def _check_channel_entry(stored: object, in_channels: int) -> None:
    """Reject a malformed ``"channels"`` entry of a description (``{"used": [...], "of": n}``)."""
    if stored is None:
        return
    try:
        of = stored["of"]  # type: ignore[index]
        used = layout.check_channel_choice(stored["used"], int(of))  # type: ignore[index]
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"The model's channel choice {stored!r} is not valid ({error}).") from None
    if used is None or len(used) != in_channels:
        raise ValueError(
            f"The model's channel choice {stored!r} does not fit a network reading "
            f"{in_channels} channel(s)."
        )


def instance_settings_of(description: Mapping) -> postprocess.InstanceSettings:
    """Return the instance settings a model description stores.

    Descriptions written before settings were stored give :data:`LEGACY_INSTANCE_SETTINGS`
    (connected components at 0.5 with 2 px gap filling), which those versions used.
    """
    stored = description.get("instances")
    if stored is None:
        return LEGACY_INSTANCE_SETTINGS
    try:
        return postprocess.InstanceSettings.from_dict(stored)
    except (TypeError, ValueError) as error:
        raise ValueError(f"The model's instance settings are not valid: {error}") from None


def _selected_slices(
    shape: tuple[int, ...], channel_axis: int | None, slices
) -> list[tuple[int, ...]]:
    """Validate ``slices`` (ints or tuples) against the image's slice axes."""
    all_indices = layout.slice_indices(shape, channel_axis)
    if slices is None:
        return all_indices
    sizes = layout.slice_index_shape(shape, channel_axis)
    chosen = []
    for item in slices:
        index = (int(item),) if np.isscalar(item) else tuple(int(i) for i in item)
        if len(index) != len(sizes) or not all(
            0 <= i < n for i, n in zip(index, sizes, strict=True)
        ):
            raise ValueError(f"Slice index {item!r} is not in an image with slice axes {sizes}.")
        if index not in chosen:
            chosen.append(index)
    return chosen


def _tile_reporter(progress: ProgressCallback | None, done: int, total: int):
    """Turn per-tile progress within slice ``done`` into fractional slice progress."""
    if progress is None:
        return None
    return lambda tiles_done, tiles_total: progress(done + tiles_done / tiles_total, total)


def _link_last_axis(labels: np.ndarray) -> np.ndarray:
    """Link instances along the last slice axis, separately for each earlier slice index."""
    out = np.zeros_like(labels)
    next_id = 0
    for outer in np.ndindex(labels.shape[:-3]):
        linked = postprocess.link_slices(labels[outer])
        out[outer] = np.where(linked > 0, linked + next_id, 0)
        next_id += int(linked.max(initial=0))
    return out
