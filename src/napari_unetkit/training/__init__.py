"""The one trainer: every front end (CLI, napari widgets, the demo) trains through :func:`train`.

One call prepares the data (normalisation, separated targets, weight maps; see
:mod:`napari_unetkit.data`), holds out validation slices, then repeats epochs of random-patch
steps minimising the weighted cross-entropy of :mod:`napari_unetkit.losses`, each followed by a
validation pass on whole held-out slices. The model with the best validation score is kept in
memory and written to ``out`` (atomically) whenever it improves, so stopping at any moment
leaves the best model so far on disk.

Budget
    Training is bounded by ``epochs``, by ``time_limit`` (wall-clock seconds counted from the
    call, data preparation included), or by both (whichever comes first). The learning rate
    follows a linear warm-up and a cosine decay over the *fraction of the budget used*: the
    larger of ``steps done / total steps`` and ``training time / time left when training
    started``. With ``epochs`` alone the schedule (and the whole run, on CPU) is deterministic
    given the seed; a time limit makes it depend on the machine's speed. Training stops before
    a step that would leave no time for the final validation, but always takes at least one.

Cancel
    ``cancel`` (a :class:`threading.Event`) is checked before every step and between
    validation slices. When it is set, training stops within one step and :func:`train`
    returns normally with ``stopped_by="cancel"``. A cancel before the first training step
    (during data preparation, or after it but before any step ran) saves nothing, so an
    untrained network never replaces an existing file: :func:`train` then raises
    :class:`napari_unetkit.progress.Cancelled` with :data:`NOTHING_SAVED` as its message.

Modules
    :mod:`~napari_unetkit.training.config`
        :class:`TrainConfig`, its checks and the accepted choices.
    :mod:`~napari_unetkit.training.events`
        :class:`TrainProgress` (progress events) and :class:`TrainResult`.
    :mod:`~napari_unetkit.training.schedule`
        The optimiser and :func:`learning_rate_at`.
    :mod:`~napari_unetkit.training.budget`
        The epochs and time limit: the used fraction, whether time is up, estimates.
    :mod:`~napari_unetkit.training.validation`
        Scoring on whole validation slices.
    :mod:`~napari_unetkit.training.setup`
        Data preparation, the validation split, resuming, building the model, autocast.
    :mod:`~napari_unetkit.training.loop`
        The run: steps, epochs, cancel, keeping and saving the best model.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from napari_unetkit import data as data_module
from napari_unetkit.checks import MODES
from napari_unetkit.device import configure_threads, resolve_device
from napari_unetkit.model import UNet
from napari_unetkit.training.config import (
    MAX_BATCH_SIZE,
    MAX_SEED,
    OPTIMIZERS,
    SCHEDULES,
    TrainConfig,
)
from napari_unetkit.training.events import (
    NOTHING_SAVED,
    STAGES,
    STOPPED_BY,
    EpochHook,
    ProgressCallback,
    TrainProgress,
    TrainResult,
)
from napari_unetkit.training.loop import Run
from napari_unetkit.training.schedule import learning_rate_at
from napari_unetkit.training.setup import amp_settings, prepare_run

__all__ = [
    "MAX_BATCH_SIZE",
    "MAX_SEED",
    "MODES",
    "NOTHING_SAVED",
    "OPTIMIZERS",
    "SCHEDULES",
    "STAGES",
    "STOPPED_BY",
    "EpochHook",
    "ProgressCallback",
    "TrainConfig",
    "TrainProgress",
    "TrainResult",
    "amp_settings",
    "learning_rate_at",
    "train",
]


def train(
    pairs_or_data: Sequence[tuple[Any, Any]] | data_module.TrainingData,
    config: TrainConfig | None = None,
    *,
    out: str | Path | None = None,
    validation: Sequence[tuple[Any, Any]] | data_module.TrainingData | None = None,
    regions: Sequence[Any] | None = None,
    resume: str | Path | None = None,
    init_from: str | Path | tuple[UNet, dict] | None = None,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
    on_epoch_end: EpochHook | None = None,
    overwrite: bool = True,
) -> TrainResult:
    """Train a U-Net (or continue training one) and keep the best model.

    Parameters
    ----------
    pairs_or_data : sequence of (image, labels) or TrainingData or LazyTrainingData
        Raw pairs (prepared here with :func:`napari_unetkit.data.prepare_training_data`; pairs
        in a zarr store or too large for memory, see :func:`napari_unetkit.lazydata.wants_lazy`,
        with :func:`napari_unetkit.lazydata.prepare_lazy_training_data`, read patch by patch)
        or already prepared data.
    config : TrainConfig, optional
        The settings; default ``TrainConfig()``.
    out : str or pathlib.Path, optional
        Model file to write (``.unet`` is appended if missing). It is written atomically
        whenever the validation score improves and once more at the end, with the full history.
    validation : sequence of (image, labels) or TrainingData, optional
        Explicit validation data; without it ``config.val_fraction`` of the slices is held out
        (:func:`napari_unetkit.data.split_train_validation`).
    regions : sequence, optional
        Per training pair, ``None`` or a boolean mask of the area where the annotation is
        complete (sparse annotation); outside it pixels are ignored.
    resume : str or pathlib.Path, optional
        Model file of an interrupted run to continue. Its architecture and normalisation are
        kept (the size settings of ``config`` are ignored, with a note in the description)
        and its history is extended.
    init_from : str, pathlib.Path or (UNet, dict), optional
        A model to fine-tune: a model file, or a loaded ``(model, description)`` pair (copied,
        never changed). A *new* run starts from its weights, with a fresh optimiser, schedule
        and history: its architecture, mode, class names, channel choice and normalisation
        replace those of ``config`` (the data must fit them, else ``ValueError``); the budget
        and optimiser settings of ``config`` apply. The new description records the model
        under ``"parent"`` (``file``, ``created``, ``data_name``, ``best_validation_score``,
        ``epochs_trained``). Not together with ``resume``. See
        :mod:`napari_unetkit.training.finetune`.
    progress : callable, optional
        Called with a :class:`TrainProgress` after every step, at every epoch end and at each
        stage change. It runs in the training thread: keep it cheap.
    cancel : threading.Event, optional
        When set, training stops within one step and the function returns normally (having
        saved the best model), unless no step has run yet (see Raises).
    on_epoch_end : callable, optional
        ``on_epoch_end(model, entry)``, called in the training thread after every validated
        epoch (after the best model was saved) with the live model (in training mode) and the
        epoch's history entry. It must not change the model: copy it to use it (e.g. for a
        preview prediction). Whatever it raises ends training.
    overwrite : bool
        Whether the first save may replace an existing ``out`` file. ``False`` publishes it
        without replacing (an existing file, also one another process wrote since the caller
        checked, is left alone and the save fails with ``FileExistsError``); later saves of
        the same run always replace the run's own file.

    Returns
    -------
    TrainResult
        The best model (in eval mode), its description, the history and how training ended.

    Raises
    ------
    ValueError
        For invalid settings, unusable data, a resumed or base model that does not fit the
        data, or both ``resume`` and ``init_from``.
    napari_unetkit.progress.Cancelled
        Only if ``cancel`` is set before the first training step (while the data is being
        prepared, or before the first step ran); nothing is saved then and the message is
        :data:`NOTHING_SAVED`.
    FloatingPointError
        If the loss stays non-finite for many steps in a row (learning rate far too high).
    """
    start = time.perf_counter()
    config = TrainConfig() if config is None else config
    config.validate()
    device = resolve_device(config.device)
    threads_before = torch.get_num_threads()
    if device.type == "cpu":
        configure_threads(config.threads)
    try:
        setup = prepare_run(
            pairs_or_data,
            config,
            device,
            start,
            out=out,
            validation=validation,
            regions=regions,
            resume=resume,
            progress=progress,
            cancel=cancel,
            overwrite=overwrite,
            init_from=init_from,
        )
        return Run(setup, progress, cancel, on_epoch_end).run()
    finally:
        if torch.get_num_threads() != threads_before:
            torch.set_num_threads(threads_before)
