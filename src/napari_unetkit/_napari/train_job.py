"""The engine side of the "Train U-Net" widget: the training job and its live preview.

Everything here runs in the training thread and talks to the GUI only through the events it
emits (see :mod:`napari_unetkit._napari.jobs`): the trainer's
:class:`~napari_unetkit.training.TrainProgress`, plus :class:`EpochEnd` after every validated
epoch and :class:`Preview` when a preview prediction is ready.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from napari_unetkit import layout, postprocess
from napari_unetkit._napari.train_inputs import TrainingPairs
from napari_unetkit.model import UNet
from napari_unetkit.normalization import apply_percentiles, image_percentiles
from napari_unetkit.prediction import Predictor
from napari_unetkit.progress import Cancelled
from napari_unetkit.training import TrainConfig, TrainResult, train

logger = logging.getLogger(__name__)

#: Slices of lazily backed images larger than this (pixels) are not previewed.
MAX_LAZY_PREVIEW_PIXELS = 2048 * 2048
#: How much lower than the viewer the training thread runs (Unix "nice" increment).
TRAINING_NICENESS = 5


def lower_thread_priority(increment: int = TRAINING_NICENESS) -> bool:
    """Run the calling thread at a lower CPU priority, so that the viewer's thread goes first.

    Only on Linux, where a thread's priority can be set on its own (elsewhere the call would
    change the whole process). A busy CPU then serves the GUI first; an idle one still gives
    training all it can take.

    Returns
    -------
    bool
        Whether the priority was lowered.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        thread = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, thread, os.getpriority(os.PRIO_PROCESS, thread) + increment)
    except OSError as error:
        logger.info("Could not lower the training thread's priority: %s", error)
        return False
    return True


@dataclass(frozen=True)
class EpochEnd:
    """An epoch was trained and validated.

    Attributes
    ----------
    entry : dict
        Its history entry: ``epoch``, ``train_loss``, ``val_loss``, ``val_f1`` (instances),
        ``val_iou``, ``score``, ``lr``, ``elapsed``.
    """

    entry: dict


@dataclass(frozen=True)
class Preview:
    """The current model's prediction of one slice of the first image.

    Attributes
    ----------
    index : tuple of int
        The slice (position along the image's slice axes; ``()`` for a 2D image).
    labels : numpy.ndarray
        The predicted labels of that slice, ``(Y, X)``.
    epoch : int
        The epoch after which it was predicted.
    """

    index: tuple[int, ...]
    labels: np.ndarray
    epoch: int


class PreviewRequest:
    """What the GUI wants previewed; it may change these attributes while training runs.

    Parameters
    ----------
    every : int
        Predict after every ``every``-th epoch.
    index : tuple of int
        The slice to predict (the one visible in the viewer).
    """

    def __init__(self, every: int, index: tuple[int, ...] = ()) -> None:
        self.enabled = True
        self.every = max(1, int(every))
        self.index = index

    def due(self, epoch: int) -> bool:
        """Whether a preview is wanted after ``epoch``."""
        return self.enabled and epoch % self.every == 0


class _Previewer:
    """Predicts the requested slice of the first image with a copy of the training model."""

    def __init__(self, request: PreviewRequest, image: np.ndarray, config: TrainConfig) -> None:
        self.request = request
        self.image = image
        self.config = config
        self._percentiles: tuple[np.ndarray, np.ndarray] | None = None

    def _normalised_slice(self, index: tuple[int, ...]) -> np.ndarray:
        channel_axis = self.config.channel_axis
        if self._percentiles is None:
            self._percentiles = image_percentiles(
                self.image, channel_axis, self.config.normalization
            )
        # The channels the model reads (the Channels field), as training and prediction do.
        pick = slice(None) if self.config.channels is None else self.config.channels
        raw = layout.get_slice(self.image, index, channel_axis)[pick]
        low, high = self._percentiles
        return apply_percentiles(raw, low[pick], high[pick])

    def __call__(self, model: UNet, epoch: int, cancel: threading.Event) -> Preview | None:
        index = tuple(self.request.index)
        image = self._normalised_slice(index)
        device = next(model.parameters()).device
        predictor = Predictor(copy.deepcopy(model), {"mode": self.config.mode}, device=device)
        probs = predictor.predict_slice(image, cancel=cancel)
        if self.config.mode == "instances":
            labels = postprocess.instances_from_probabilities(
                probs[1], settings=postprocess.InstanceSettings()
            )
        else:
            labels = postprocess.semantic_from_probabilities(probs, offset=1)
        return Preview(index=index, labels=labels, epoch=epoch)


def previewable(image, channel_axis: int | None) -> bool:
    """Whether the preview may predict whole slices of this image.

    Not for a lazily backed image (dask, zarr) whose slices exceed
    :data:`MAX_LAZY_PREVIEW_PIXELS`: each preview would read and predict such a slice whole.
    """
    if isinstance(image, np.ndarray):
        return True
    return math.prod(layout.slice_shape(tuple(image.shape), channel_axis)) <= (
        MAX_LAZY_PREVIEW_PIXELS
    )


def _epoch_hook(
    emit: Callable[[object], None],
    cancel: threading.Event,
    previewer: _Previewer | None,
) -> Callable[[UNet, dict], None]:
    def on_epoch_end(model: UNet, entry: dict) -> None:
        emit(EpochEnd(dict(entry)))
        if previewer is None or not previewer.request.due(int(entry["epoch"])):
            return
        try:
            preview = previewer(model, int(entry["epoch"]), cancel)
        except Cancelled:
            return
        except (ValueError, RuntimeError, MemoryError) as error:
            logger.warning("The training preview failed and is switched off: %s", error)
            previewer.request.enabled = False
            return
        if preview is not None:
            emit(preview)

    return on_epoch_end


def training_job(
    data: TrainingPairs,
    config: TrainConfig,
    out: Path,
    preview: PreviewRequest | None = None,
) -> Callable[[Callable[[object], None], threading.Event], TrainResult]:
    """Return the job ``job(emit, cancel) -> TrainResult`` that trains on ``data``.

    Parameters
    ----------
    data : TrainingPairs
        Snapshot of the training data.
    config : TrainConfig
        The settings.
    out : pathlib.Path
        Model file to write (the best model so far is always on disk).
    preview : PreviewRequest, optional
        Predict the first image's requested slice after some epochs.
    """

    def job(emit: Callable[[object], None], cancel: threading.Event) -> TrainResult:
        lower_thread_priority()
        out.parent.mkdir(parents=True, exist_ok=True)
        previewer = None
        if preview is not None and previewable(data.pairs[0][0], config.channel_axis):
            previewer = _Previewer(preview, data.pairs[0][0], config)
        result = train(
            data.pairs,
            config,
            out=out,
            regions=data.regions,
            progress=emit,
            cancel=cancel,
            on_epoch_end=_epoch_hook(emit, cancel, previewer),
            overwrite=False,  # the panel chose a free name: never replace a file made since
        )
        result.model.to("cpu")
        return result

    return job
