"""What a training run reports (:class:`TrainProgress`) and returns (:class:`TrainResult`)."""

from __future__ import annotations

import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from napari_unetkit.model import UNet
from napari_unetkit.modelfile import ModelDescription

#: The message of the :class:`Cancelled` raised by a stop before the first training step.
NOTHING_SAVED = "Stopped before the first training step: no model was saved."
#: Stages reported through :class:`TrainProgress` (the type, and its values in order).
Stage = Literal["preparing", "training", "validating", "calibrating", "saving", "done"]
STAGES: tuple[Stage, ...] = typing.get_args(Stage)
#: How training ended (the type, and its values).
StoppedBy = Literal["epochs", "time_limit", "cancel"]
STOPPED_BY: tuple[StoppedBy, ...] = typing.get_args(StoppedBy)


@dataclass
class TrainProgress:
    """One progress event, sent after every step and at the end of every epoch.

    Attributes
    ----------
    stage : {"preparing", "training", "validating", "calibrating", "saving", "done"}
        What the trainer is doing.
    epoch : int
        Current epoch (1-based; 0 before training; continues the file's count when resuming).
    n_epochs : int or None
        Final epoch number when ``epochs`` bounds training, else ``None``.
    step : int
        Step within the current epoch (1-based after a step, 0 at its start).
    steps_per_epoch : int
        Steps per epoch.
    total_steps_estimate : int or None
        Steps of the whole run: exact when ``epochs`` bounds it, extrapolated from the speed
        so far under a time limit (``None`` before the first step).
    train_loss : float or None
        Mean training loss of the current epoch so far.
    val_loss : float or None
        Validation loss of the last validated epoch.
    metrics : dict
        Validation metrics of the last validated epoch (``val_f1``, ``val_iou``, ``score``).
    best_score : float or None
        Best validation score so far.
    elapsed : float
        Seconds since the call started.
    eta : float or None
        Estimated seconds left, when it can be estimated.
    message : str
        A one-line human description.
    """

    stage: Stage
    epoch: int = 0
    n_epochs: int | None = None
    step: int = 0
    steps_per_epoch: int = 0
    total_steps_estimate: int | None = None
    train_loss: float | None = None
    val_loss: float | None = None
    metrics: dict = field(default_factory=dict)
    best_score: float | None = None
    elapsed: float = 0.0
    eta: float | None = None
    message: str = ""


@dataclass
class TrainResult:
    """What :func:`train` returns.

    Attributes
    ----------
    model : UNet
        The network with the best weights loaded, in eval mode.
    description : dict
        Its description (as stored in the model file).
    history : list of dict
        One entry per epoch: ``epoch``, ``steps``, ``train_loss``, ``val_loss``, ``val_f1``
        (instances), ``val_iou``, ``score``, ``lr``, ``elapsed``.
    best_score : float or None
        Best validation score (``None`` without validation data).
    best_epoch : int or None
        Epoch of the kept weights.
    epochs_run : int
        Epochs completed in this call (a partial last epoch cut by the time limit counts).
    steps_run : int
        Optimiser steps taken in this call.
    elapsed : float
        Seconds the call took.
    stopped_by : {"epochs", "time_limit", "cancel"}
        Why training ended.
    model_path : pathlib.Path or None
        The model file written, if ``out`` was given.
    """

    model: UNet
    description: ModelDescription
    history: list[dict]
    best_score: float | None
    best_epoch: int | None
    epochs_run: int
    steps_run: int
    elapsed: float
    stopped_by: StoppedBy
    model_path: Path | None


ProgressCallback = Callable[[TrainProgress], None]
#: ``on_epoch_end(model, entry)``: called after every validated epoch (see :func:`train`).
EpochHook = Callable[[UNet, dict], None]
