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
"""

from __future__ import annotations

import math
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from napari_unetkit import __version__, layout, metrics, postprocess
from napari_unetkit import data as data_module
from napari_unetkit.augmentation import AugmentationSettings
from napari_unetkit.calibration import ValidationMap, calibrate_instances, candidate_settings
from napari_unetkit.device import (
    autocast_context,
    autocast_dtype,
    configure_threads,
    describe_device,
    resolve_device,
)
from napari_unetkit.inference import uses_channels_last
from napari_unetkit.losses import LOSSES, training_loss
from napari_unetkit.model import UNet, UNetConfig
from napari_unetkit.modelfile import load_model, read_description, save_model
from napari_unetkit.normalization import NormalizationSettings
from napari_unetkit.precision import computes_16bit_natively
from napari_unetkit.prediction import Predictor
from napari_unetkit.progress import Cancelled
from napari_unetkit.weightmap import DEFAULT_PRESET, PRESETS, WeightMapSettings

#: The message of the :class:`Cancelled` raised by a stop before the first training step.
NOTHING_SAVED = "Stopped before the first training step: no model was saved."

#: Training modes: separated instances (2 classes) or user classes ``1..K``.
MODES = ("instances", "classes")
#: Optimisers: AdamW, or SGD with (the paper's high) momentum.
OPTIMIZERS = ("adamw", "sgd")
#: Learning-rate schedules over the training budget.
SCHEDULES = ("cosine", "constant")
#: Bounds of the automatic number of steps per epoch.
MIN_AUTO_STEPS, MAX_AUTO_STEPS = 10, 100
#: Validation slices up to this many pixels run in one forward pass; larger ones are tiled.
MAX_DIRECT_VALIDATION_PIXELS = 512 * 512
#: Smallest probability used in the validation loss (keeps ``-log p`` finite).
MIN_PROBABILITY = 1e-7
#: Consecutive steps with a non-finite loss after which training is declared diverged.
MAX_NON_FINITE_STEPS = 20
#: Stages reported through :class:`TrainProgress`.
STAGES = ("preparing", "training", "validating", "calibrating", "saving", "done")
#: How training ended.
STOPPED_BY = ("epochs", "time_limit", "cancel")
#: Most patches per step (far beyond what fits in memory with useful patch sizes).
MAX_BATCH_SIZE = 1024
#: Largest seed (NumPy's and PyTorch's generators both take it).
MAX_SEED = 2**32 - 1


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------


def _positive_int(value: Any, name: str, allow_none: bool = False, high: int | None = None) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    if high is not None and value > high:
        raise ValueError(f"{name} must be at most {high}, got {value!r}.")


def _number(value: Any, name: str, low: float, high: float = math.inf) -> None:
    ok = isinstance(value, (int, float, np.floating, np.integer)) and not isinstance(value, bool)
    if not ok or not math.isfinite(float(value)) or not low <= float(value) <= high:
        bounds = (
            f"a finite number of at least {low:g}"
            if math.isinf(high)
            else f"a number from {low:g} to {high:g}"
        )
        raise ValueError(f"{name} must be {bounds}, got {value!r}.")


def _choice(value: Any, name: str, options: Sequence[str]) -> None:
    if value not in options:
        raise ValueError(f"{name} must be one of {', '.join(options)}, got {value!r}.")


@dataclass
class TrainConfig:
    """Every setting of a training run (JSON round trip with :meth:`to_dict` / :meth:`from_dict`).

    The defaults suit a CPU. Measured with benchmarks/training_speed.py on 3 synthetic
    256 x 256 nuclei images (1 more for validation) with a 2-minute time limit: one step of the
    default network (depth 4, 16 base channels, 128 px patches, batches of 8) takes about 0.45 s
    on two idle cores (about 17 patches/s); with AdamW at 2e-3 the validation instance F1
    passed 0.9 after 20-50 steps (23 s on two cores, 18-25 s on one) and reached 0.99-1.0. At
    1e-3 it took 40-50 steps and ended at 0.97-1.0, with a higher validation loss.

    Parameters
    ----------
    mode : {"instances", "classes"}
        ``"instances"``: labels are instance ids, the network learns background / foreground of
        the separated instances (2 classes). ``"classes"``: labels ``1..K`` are classes and 0
        means "not annotated" (scribbles are fine).
    depth, base_channels, norm, upsampling, dropout
        The architecture (see :class:`napari_unetkit.model.UNetConfig`); ignored when resuming
        from a model file, whose architecture is kept.
    patch_size : int
        Side of the square training patches, in pixels.
    batch_size : int
        Patches per step (sampled with replacement, so it may exceed the data).
    epochs : int or None
        Number of epochs; ``None`` when only ``time_limit`` bounds training.
    time_limit : float or None
        Wall-clock budget in seconds, counted from the call (data preparation included).
    steps_per_epoch : int or None
        Optimiser steps between validations; ``None``: enough patches to cover the annotated
        pixels of the training slices about once, clamped to ``[10, 100]``.
    learning_rate : float
        Peak learning rate.
    optimizer : {"adamw", "sgd"}
        AdamW, or SGD with ``momentum`` (the paper: 0.99).
    momentum : float
        SGD momentum (unused by AdamW).
    weight_decay : float
        Decoupled weight decay (AdamW) or L2 penalty (SGD).
    schedule : {"cosine", "constant"}
        Learning rate after the warm-up: cosine decay to ``min_lr_fraction`` of the peak over the
        budget, or constant.
    warmup : float
        Fraction of the budget spent linearly warming the learning rate up.
    min_lr_fraction : float
        Final learning rate of the cosine schedule, as a fraction of the peak.
    loss : {"wce", "wce+dice"}
        Weighted cross-entropy, optionally plus ``dice_weight`` times a soft Dice loss.
    dice_weight : float
        Factor of the Dice term.
    weightmap : WeightMapSettings, str or None
        Weight-map settings or a preset name (a key of
        :data:`napari_unetkit.weightmap.PRESETS`); default
        :data:`napari_unetkit.weightmap.DEFAULT_PRESET`. Instances mode only (classes mode
        balances the painted classes instead). ``None``: ``WeightMapSettings()``.
    augmentation : AugmentationSettings or None
        Patch augmentation; ``None``: none.
    foreground_bias : float
        Fraction of patches centred on a foreground (annotated, non-background) pixel.
    val_fraction : float
        Fraction of the slices held out for validation when no explicit validation data is
        given, in ``[0, 1)``; 0 trains on everything (the last epoch is then "best").
    seed : int
        Seed of the weight initialisation, the split, the patch sampler and dropout.
    device : str
        ``"auto"`` (CUDA, then Apple MPS, then CPU) or an explicit device.
    amp : bool or None
        Mixed precision (autocast); ``None``: on for CUDA and for CPUs that compute bfloat16
        natively (AVX512-BF16 or AMX, :func:`napari_unetkit.precision.cpu_has_native_bfloat16`;
        1.6x more steps in the same time on a 2-core Zen 5, with the same validation scores),
        off elsewhere.
    amp_dtype : {"bf16", "fp16"} or None
        Reduced-precision type; ``None`` picks bfloat16 on CPUs and on CUDA GPUs that support
        it, else float16 (with loss scaling).
    threads : int or None
        CPU threads; ``None``: every core this process may use.
    channel_axis : int or None
        Channel axis of the training images, if any.
    channels : list of int or None
        The channels the model reads, in order (indices into the channel axis, e.g. ``[0, 1]``
        for the nuclei and cytoplasm of an RGB image whose blue is empty); ``None``: all.
        Prediction picks the same channels from images with the training images' channel
        count.
    normalization : NormalizationSettings
        Percentile normalisation (stored in the model and repeated at prediction).
    class_names : list of str or None
        Names of the network's classes; default ``["background", "cell"]`` (instances) or
        ``["class 1", ...]`` (classes).
    data_name : str or None
        Name of the training data (the napari panel gives its first image layer's name),
        stored in the model description so that people can tell models apart; it does not
        change training.
    """

    mode: str = "instances"
    depth: int = 4
    base_channels: int = 16
    norm: str = "batch"
    upsampling: str = "transpose"
    dropout: float = 0.5
    patch_size: int = 128
    batch_size: int = 8
    epochs: int | None = 30
    time_limit: float | None = None
    steps_per_epoch: int | None = None
    learning_rate: float = 2e-3
    optimizer: str = "adamw"
    momentum: float = 0.99
    weight_decay: float = 1e-4
    schedule: str = "cosine"
    warmup: float = 0.05
    min_lr_fraction: float = 0.02
    loss: str = "wce"
    dice_weight: float = 1.0
    weightmap: WeightMapSettings | str | None = DEFAULT_PRESET
    augmentation: AugmentationSettings | None = field(default_factory=AugmentationSettings)
    foreground_bias: float = 0.5
    val_fraction: float = 0.2
    seed: int = 0
    device: str = "auto"
    amp: bool | None = None
    amp_dtype: str | None = None
    threads: int | None = None
    channel_axis: int | None = None
    channels: list[int] | None = None
    normalization: NormalizationSettings = field(default_factory=NormalizationSettings)
    class_names: list[str] | None = None
    data_name: str | None = None

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check every setting; raise ``ValueError`` naming the first problem found.

        Raises
        ------
        ValueError
            For an invalid value, or a budget that allows no training at all.
        """
        _choice(self.mode, "mode", MODES)
        _choice(self.optimizer, "optimizer", OPTIMIZERS)
        _choice(self.schedule, "schedule", SCHEDULES)
        _choice(self.loss, "loss", LOSSES)
        _positive_int(self.patch_size, "patch_size")
        _positive_int(self.batch_size, "batch_size", high=MAX_BATCH_SIZE)
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)):
            raise ValueError(f"seed must be a whole number, got {self.seed!r}.")
        if not 0 <= self.seed <= MAX_SEED:
            raise ValueError(f"seed must be from 0 to {MAX_SEED}, got {self.seed!r}.")
        _positive_int(self.steps_per_epoch, "steps_per_epoch", allow_none=True)
        self._validate_budget()
        _number(self.learning_rate, "learning_rate", 0.0)
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate!r}.")
        _number(self.momentum, "momentum", 0.0, 1.0)
        _number(self.weight_decay, "weight_decay", 0.0)
        _number(self.warmup, "warmup", 0.0, 1.0)
        _number(self.min_lr_fraction, "min_lr_fraction", 0.0, 1.0)
        _number(self.dice_weight, "dice_weight", 0.0)
        _number(self.foreground_bias, "foreground_bias", 0.0, 1.0)
        _number(self.val_fraction, "val_fraction", 0.0, 1.0)
        if self.val_fraction >= 1.0:
            raise ValueError(
                f"val_fraction must lie in [0, 1) (some data must be left for training), "
                f"got {self.val_fraction!r}."
            )
        _positive_int(self.threads, "threads", allow_none=True)
        if self.channels is not None:
            layout.check_channel_choice(self.channels, max(self.channels, default=0) + 1)
        if self.data_name is not None and not isinstance(self.data_name, str):
            raise ValueError(f"data_name must be a string or None, got {self.data_name!r}.")
        self.weightmap_settings()  # raises for an unknown preset
        if self.augmentation is not None and not isinstance(
            self.augmentation, AugmentationSettings
        ):
            raise ValueError("augmentation must be an AugmentationSettings or None.")
        if not isinstance(self.normalization, NormalizationSettings):
            raise ValueError("normalization must be a NormalizationSettings.")
        self.model_config(1, 2)  # raises for an invalid architecture

    def _validate_budget(self) -> None:
        if self.epochs is not None and (
            isinstance(self.epochs, bool) or not isinstance(self.epochs, (int, np.integer))
        ):
            raise ValueError(f"epochs must be an integer or None, got {self.epochs!r}.")
        if self.time_limit is not None:
            _number(self.time_limit, "time_limit", 0.0)
            if self.time_limit <= 0:
                raise ValueError(
                    f"time_limit must be a positive number of seconds, got {self.time_limit!r}."
                )
        if not self.epochs and self.time_limit is None:
            raise ValueError(
                "nothing to train: set epochs to at least 1 or give a time_limit in seconds."
            )
        if self.epochs is not None and self.epochs < 1:
            raise ValueError(
                f"epochs must be at least 1, or None to train until the time limit; "
                f"got {self.epochs!r}."
            )

    def weightmap_settings(self) -> WeightMapSettings:
        """Return :attr:`weightmap` as a :class:`WeightMapSettings` (resolving preset names)."""
        if self.weightmap is None:
            return WeightMapSettings()
        if isinstance(self.weightmap, WeightMapSettings):
            return self.weightmap
        if isinstance(self.weightmap, str) and self.weightmap in PRESETS:
            return PRESETS[self.weightmap]
        raise ValueError(
            f"weightmap must be WeightMapSettings or one of {', '.join(PRESETS)}, "
            f"got {self.weightmap!r}."
        )

    def model_config(self, in_channels: int, n_classes: int) -> UNetConfig:
        """Return the architecture these settings ask for.

        Parameters
        ----------
        in_channels, n_classes : int
            Input channels and output classes (from the data).

        Returns
        -------
        UNetConfig
            The validated architecture.
        """
        return UNetConfig(
            in_channels=in_channels,
            n_classes=n_classes,
            depth=self.depth,
            base_channels=self.base_channels,
            norm=self.norm,
            upsampling=self.upsampling,
            dropout=self.dropout,
        )

    def to_dict(self) -> dict:
        """Return a JSON-serialisable description (stored in the model file)."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        weightmap = values["weightmap"]
        values["weightmap"] = (
            weightmap.to_dict() if isinstance(weightmap, WeightMapSettings) else weightmap
        )
        augmentation = values["augmentation"]
        values["augmentation"] = None if augmentation is None else augmentation.to_dict()
        values["normalization"] = self.normalization.to_dict()
        if values["class_names"] is not None:
            values["class_names"] = list(values["class_names"])
        return values

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        """Parse :meth:`to_dict` output; missing keys take the defaults.

        Parameters
        ----------
        data : dict
            A training description, e.g. from a model file or saved widget settings.

        Returns
        -------
        TrainConfig
            The validated settings.

        Raises
        ------
        ValueError
            For unknown keys or invalid values.
        """
        if not isinstance(data, dict):
            raise ValueError(f"A training description must be a dict, got {data!r}.")
        known = {f.name for f in fields(cls)}
        unknown = sorted(str(key) for key in data if key not in known)
        if unknown:
            raise ValueError(f"Unknown training settings: {', '.join(unknown)}.")
        values = dict(data)
        if isinstance(values.get("weightmap"), dict):
            values["weightmap"] = WeightMapSettings.from_dict(values["weightmap"])
        if isinstance(values.get("augmentation"), dict):
            values["augmentation"] = AugmentationSettings.from_dict(values["augmentation"])
        if isinstance(values.get("normalization"), dict):
            values["normalization"] = NormalizationSettings.from_dict(values["normalization"])
        return cls(**values)


# --------------------------------------------------------------------------------------------
# Progress and result
# --------------------------------------------------------------------------------------------


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

    stage: str
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
    description: dict
    history: list[dict]
    best_score: float | None
    best_epoch: int | None
    epochs_run: int
    steps_run: int
    elapsed: float
    stopped_by: str
    model_path: Path | None


ProgressCallback = Callable[[TrainProgress], None]
#: ``on_epoch_end(model, entry)``: called after every validated epoch (see :func:`train`).
EpochHook = Callable[[UNet, dict], None]


# --------------------------------------------------------------------------------------------
# Learning-rate schedule
# --------------------------------------------------------------------------------------------


def learning_rate_at(config: TrainConfig, fraction: float) -> float:
    """Learning rate after ``fraction`` of the training budget has been used.

    Linear warm-up over the first ``config.warmup`` of the budget, then constant or a cosine
    decay from ``config.learning_rate`` to ``config.min_lr_fraction`` times it.

    Parameters
    ----------
    config : TrainConfig
        The training settings.
    fraction : float
        Used fraction of the budget (clipped to ``[0, 1]``).

    Returns
    -------
    float
        The learning rate.
    """
    fraction = min(max(float(fraction), 0.0), 1.0)
    peak = config.learning_rate
    if config.warmup > 0 and fraction < config.warmup:
        return peak * fraction / config.warmup
    if config.schedule == "constant":
        return peak
    decay = (fraction - config.warmup) / max(1.0 - config.warmup, 1e-12)
    floor = config.min_lr_fraction
    return peak * (floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * decay)))


def _make_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            model.parameters(),
            lr=config.learning_rate,
            momentum=config.momentum,
            weight_decay=config.weight_decay,
        )
    return torch.optim.AdamW(
        model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------


@dataclass
class _Counts:
    """Sums over the validation slices from which the epoch's scores are computed."""

    loss_sum: float = 0.0
    weight_sum: float = 0.0
    tp: int = 0
    n_true: int = 0
    n_pred: int = 0
    intersections: np.ndarray | None = None
    unions: np.ndarray | None = None

    def add_overlap(self, truth: np.ndarray, pred: np.ndarray, n: int) -> None:
        """Count per-class intersections and unions of two class-index images."""
        truth, pred = truth.ravel(), pred.ravel()
        inter = np.bincount(truth[truth == pred], minlength=n)[:n]
        union = np.bincount(truth, minlength=n)[:n] + np.bincount(pred, minlength=n)[:n] - inter
        if self.intersections is None:
            self.intersections, self.unions = inter, union
        else:
            self.intersections = self.intersections + inter
            self.unions = self.unions + union


def _iou_per_class(counts: _Counts) -> np.ndarray:
    """IoU of each counted class; NaN where a class is absent from both truth and prediction."""
    unions = counts.unions.astype(np.float64)
    return np.where(unions > 0, counts.intersections / np.maximum(unions, 1), np.nan)


def _validation_loss(probs: np.ndarray, target: np.ndarray, weights: np.ndarray) -> float:
    """Sum over pixels of ``w * -log p[target]`` (the weighted cross-entropy numerator)."""
    annotated = weights > 0
    safe = np.where(annotated, target, 0)
    p_true = np.take_along_axis(probs, safe[np.newaxis].astype(np.intp), axis=0)[0]
    nll = -np.log(np.maximum(p_true, MIN_PROBABILITY))
    return float(np.sum(nll * weights, dtype=np.float64))


def _annotated_instances(sl, annotated: np.ndarray, pred: np.ndarray) -> tuple:
    """Truth and predicted instances restricted to the annotated area of a slice."""
    truth = sl.instances
    if truth is None:
        truth = (sl.target == 1).astype(np.int32)
    if not annotated.all():
        truth = np.where(annotated, truth, 0)
        pred = np.where(annotated, pred, 0)
    return truth, pred


class _Validator:
    """Scores the current model on whole validation slices."""

    def __init__(self, slices: list, mode: str, n_classes: int, device, amp: bool, amp_type):
        self.slices = slices
        self.mode = mode
        self.n_classes = n_classes
        self.device = device
        self.amp = amp
        self.amp_type = amp_type
        self.seconds = 0.0  # duration of the last validation
        #: How epochs are scored (instances mode); calibrated once training ends.
        self.instance_settings = postprocess.InstanceSettings()
        self.post_seconds = 0.0  # instance extraction and matching of the last validation
        self.maps: list[ValidationMap] = []  # the last validation's maps (instances mode)

    def probabilities(
        self, model: UNet, image: np.ndarray, description: dict, cancel
    ) -> np.ndarray:
        """Softmax probabilities ``(K, Y, X)`` of one normalised slice, model in eval mode."""
        if image.shape[1] * image.shape[2] > MAX_DIRECT_VALIDATION_PIXELS:
            # Mixed precision for validation only where training itself runs under autocast.
            precision = "auto" if self.amp else "float32"
            predictor = Predictor(model, description, device=self.device, precision=precision)
            return predictor.predict_slice(image, cancel=cancel)
        x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None].to(self.device)
        with torch.inference_mode(), autocast_context(self.device, self.amp, self.amp_type):
            logits = model(x)
        return torch.softmax(logits.float(), dim=1)[0].cpu().numpy()

    def run(self, model: UNet, description: dict, cancel) -> dict:
        """Validate; returns the epoch's metrics (raises Cancelled when cancel is set)."""
        start = time.perf_counter()
        was_training = model.training
        model.eval()
        counts = _Counts()
        self.maps, self.post_seconds = [], 0.0
        try:
            for sl in self.slices:
                if cancel is not None and cancel.is_set():
                    raise Cancelled("Validation was cancelled.")
                probs = self.probabilities(model, sl.image, description, cancel)
                self._count(sl, probs, counts)
        finally:
            model.train(was_training)
            self.seconds = time.perf_counter() - start
        return self._scores(counts)

    def _count(self, sl, probs: np.ndarray, counts: _Counts) -> None:
        weights = np.asarray(sl.weights, dtype=np.float32)
        annotated = weights > 0
        counts.loss_sum += _validation_loss(probs, sl.target, weights)
        counts.weight_sum += float(weights.sum(dtype=np.float64))
        if self.mode == "instances":
            started = time.perf_counter()
            pred = postprocess.instances_from_probabilities(
                probs[1], settings=self.instance_settings
            )
            truth, pred = _annotated_instances(sl, annotated, pred)
            truth_all = sl.instances if sl.instances is not None else (sl.target == 1)
            self.maps.append(
                ValidationMap(
                    probs[1].copy(),
                    np.asarray(truth_all, dtype=np.int32),
                    None if annotated.all() else annotated,
                )
            )
            match = metrics.match_instances(truth, pred, 0.5)
            counts.tp += match.tp
            counts.n_true += match.n_true
            counts.n_pred += match.n_pred
            counts.add_overlap((truth > 0).astype(np.intp), (pred > 0).astype(np.intp), 2)
            self.post_seconds += time.perf_counter() - started
        else:
            pred = np.argmax(probs, axis=0)
            counts.add_overlap(sl.target[annotated], pred[annotated], self.n_classes)

    def _scores(self, counts: _Counts) -> dict:
        loss = counts.loss_sum / counts.weight_sum if counts.weight_sum > 0 else None
        ious = _iou_per_class(counts)
        if self.mode == "instances":
            total = counts.n_true + counts.n_pred
            f1 = 2.0 * counts.tp / total if total else 1.0
            iou = 1.0 if np.isnan(ious[1]) else float(ious[1])
            return {
                "val_loss": loss,
                "val_f1": f1,
                "val_iou": iou,
                "val_objects": counts.n_true,
                "score": f1,
            }
        present = ious[~np.isnan(ious)]
        mean_iou = float(present.mean()) if present.size else 1.0
        per_class = [None if np.isnan(v) else float(v) for v in ious]
        return {
            "val_loss": loss,
            "val_iou": mean_iou,
            "val_class_iou": per_class,
            "score": mean_iou,
        }


# --------------------------------------------------------------------------------------------
# Data, resume and description helpers
# --------------------------------------------------------------------------------------------


#: Class names of instance models.
INSTANCE_CLASS_NAMES = ("background", "cell")


def _requested_class_names(config: TrainConfig) -> list[str] | None:
    """Class names to ask data preparation for (None: "class 1".."class K" once K is known)."""
    if config.class_names is not None:
        return list(config.class_names)
    return list(INSTANCE_CLASS_NAMES) if config.mode == "instances" else None


def _class_names(config: TrainConfig, data: data_module.TrainingData) -> list[str]:
    """Class names stored in the model description."""
    if config.mode == "instances" and config.class_names is None:
        return list(INSTANCE_CLASS_NAMES)
    return [str(name) for name in (config.class_names or data.class_names)]


def _prepare(
    source: Any,
    config: TrainConfig,
    normalization: NormalizationSettings,
    regions: Sequence[Any] | None,
    cancel: threading.Event | None,
    report: Callable[[int, int], None],
) -> data_module.TrainingData:
    """Prepare the training data from pairs (or check the given TrainingData)."""
    if isinstance(source, data_module.TrainingData):
        if source.mode != config.mode:
            raise ValueError(
                f"The prepared data is for {source.mode!r} mode but the settings ask for "
                f"{config.mode!r}."
            )
        if regions is not None:
            raise ValueError("regions apply to raw (image, labels) pairs, not to prepared data.")
        return source
    return data_module.prepare_training_data(
        list(source),
        mode=config.mode,
        channel_axis=config.channel_axis,
        channels=config.channels,
        regions=regions,
        weightmap=config.weightmap_settings(),
        normalization=normalization,
        class_names=_requested_class_names(config),
        cancel=cancel,
        progress=report,
    )


def _split(
    data: data_module.TrainingData,
    validation: Any,
    config: TrainConfig,
    normalization: NormalizationSettings,
    cancel: threading.Event | None,
) -> tuple[list, list]:
    """Split into training and validation slices (explicit validation data, or a share).

    Explicit validation pairs count as completely annotated (a region covering everything),
    so an image without any cell is a valid validation example.
    """
    if validation is None:
        return data_module.split_train_validation(data, config.val_fraction, config.seed)
    if isinstance(validation, data_module.TrainingData):
        val_data = validation
    else:
        pairs = list(validation)
        val_data = data_module.prepare_training_data(
            pairs,
            mode=config.mode,
            channel_axis=config.channel_axis,
            channels=data.channels,
            regions=[np.ones(np.shape(labels), dtype=bool) for _, labels in pairs],
            weightmap=config.weightmap_settings(),
            normalization=normalization,
            cancel=cancel,
            require_contrast=False,  # a blank image is a fair (all background) validation case
        )
    if val_data.in_channels != data.in_channels or val_data.n_classes > data.n_classes:
        raise ValueError(
            f"The validation data ({val_data.in_channels} channel(s), {val_data.n_classes} "
            f"classes) does not match the training data ({data.in_channels} channel(s), "
            f"{data.n_classes} classes)."
        )
    return list(data.slices), list(val_data.slices)


def _check_resume(description: dict, model: UNet, data: data_module.TrainingData, path) -> None:
    """Raise a clear ValueError when a model file cannot be fine-tuned on this data."""
    mode = description.get("mode")
    problems = []
    if mode is not None and mode != data.mode:
        problems.append(f"it was trained in {mode!r} mode, the data is for {data.mode!r} mode")
    used = (description.get("channels") or {}).get("used")
    if used != data.channels:
        problems.append(
            f"it reads the channels {used or 'all'}, this training uses {data.channels or 'all'}"
        )
    elif model.config.in_channels != data.in_channels:
        problems.append(
            f"it reads {model.config.in_channels} channel(s), the images have {data.in_channels}"
        )
    if model.config.n_classes != data.n_classes:
        problems.append(
            f"it predicts {model.config.n_classes} classes, the labels have {data.n_classes}"
        )
    if problems:
        raise ValueError(f"Cannot continue training {path}: " + "; ".join(problems) + ".")


def _resume_notes(config: TrainConfig, model: UNet, path: Any) -> list[str]:
    wanted = config.model_config(model.config.in_channels, model.config.n_classes)
    notes = [f"continued from {Path(path).name}"]
    if wanted != model.config:
        notes.append(
            "the architecture of the resumed model file was kept; the size settings of the "
            "training configuration were ignored"
        )
    return notes


def _empty_channel_note(data: data_module.TrainingData) -> str:
    """Say which channels hold nothing, and how to leave them out."""
    empty = data.empty_channels
    used = data.channels if data.channels is not None else list(range(data.source_channels))
    rest = [c for c in used if c not in empty]
    if len(empty) == 1:
        which = f"channel {empty[0]} holds"
    else:
        which = f"channels {', '.join(map(str, empty[:-1]))} and {empty[-1]} hold"
    note = f"{which} one constant value in every annotated slice, so it carries nothing"
    if rest:
        option = ",".join(map(str, rest))
        note += f"; train on the others with channels={rest} (--channels {option})"
    return note


def _auto_steps(config: TrainConfig, train_slices: list) -> int:
    """Return the steps per epoch: one pass over the annotated pixels, clamped."""
    if config.steps_per_epoch is not None:
        return int(config.steps_per_epoch)
    annotated = sum(s.n_annotated for s in train_slices)
    per_step = config.batch_size * config.patch_size**2
    return int(min(max(math.ceil(annotated / per_step), MIN_AUTO_STEPS), MAX_AUTO_STEPS))


def _plain(value: Any) -> Any:
    """Python scalars for NumPy ones (for JSON)."""
    if isinstance(value, np.generic):
        return value.item()
    return value


# --------------------------------------------------------------------------------------------
# The training run
# --------------------------------------------------------------------------------------------


@dataclass
class _Setup:
    """Everything a run needs, fixed before the first step."""

    config: TrainConfig
    data: data_module.TrainingData
    train_slices: list
    val_slices: list
    model: UNet
    device: torch.device
    amp: bool
    amp_type: torch.dtype | None
    steps_per_epoch: int
    start: float
    previous_history: list[dict]
    notes: list[str]
    normalization: NormalizationSettings
    class_names: list[str]
    out: Path | None
    overwrite: bool = True


class _Run:
    """State and loop of one training run (see :func:`train`)."""

    def __init__(
        self,
        setup: _Setup,
        progress: ProgressCallback | None,
        cancel,
        on_epoch_end: EpochHook | None = None,
    ) -> None:
        self.s = setup
        self.config = setup.config
        self.model = setup.model
        self.progress = progress
        self.cancel = cancel
        self.on_epoch_end = on_epoch_end
        self.sampler = data_module.PatchSampler(
            setup.train_slices,
            patch_size=self.config.patch_size,
            foreground_bias=self.config.foreground_bias,
            augmentation=self.config.augmentation or AugmentationSettings.off(),
            seed=self.config.seed,
        )
        self.optimizer = _make_optimizer(self.model, self.config)
        fp16 = setup.amp_type == torch.float16
        self.scaler = torch.amp.GradScaler(setup.device.type) if fp16 else None
        self.validator = _Validator(
            setup.val_slices,
            self.config.mode,
            setup.data.n_classes,
            setup.device,
            setup.amp,
            setup.amp_type,
        )
        self.first_epoch = len(setup.previous_history)
        self.history: list[dict] = []
        self.steps_run = 0
        self.epoch_steps = 0
        self.epoch_loss_sum = 0.0
        self.epoch_loss_n = 0
        self.non_finite = 0
        self.lr = 0.0
        self.best_state: dict | None = None
        self.best_entry: dict | None = None
        self.best_maps: list[ValidationMap] = []
        self.instance_settings = self.validator.instance_settings
        self.calibration: dict | None = None
        self.model_path: Path | None = None
        self.train_start = time.perf_counter()
        self.step_seconds = 0.0  # total duration of the steps (validation excluded)
        self.stopped_by: str | None = None

    # ------------------------------------------------------------------ budget and timing

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.s.start

    @property
    def n_epochs(self) -> int | None:
        epochs = self.config.epochs
        return None if epochs is None else self.first_epoch + epochs

    @property
    def total_steps(self) -> int | None:
        epochs = self.config.epochs
        return None if epochs is None else epochs * self.s.steps_per_epoch

    def total_steps_estimate(self) -> int | None:
        """Estimate the steps of the whole run (exact with epochs; extrapolated in time)."""
        estimates = [] if self.total_steps is None else [self.total_steps]
        budget = self._time_budget()
        if budget is not None and self.steps_run:
            used = (time.perf_counter() - self.train_start) / budget
            estimates.append(max(self.steps_run, round(self.steps_run / max(used, 1e-6))))
        return min(estimates) if estimates else None

    def _time_budget(self) -> float | None:
        """Seconds of the time limit left for training when the loop started."""
        if self.config.time_limit is None:
            return None
        return max(self.config.time_limit - (self.train_start - self.s.start), 1e-3)

    def budget_fraction(self) -> float:
        """Return the used fraction of the budget (steps or time, whichever is ahead)."""
        fractions = []
        if self.total_steps:
            fractions.append((self.steps_run + 1) / self.total_steps)
        budget = self._time_budget()
        if budget is not None:
            fractions.append((time.perf_counter() - self.train_start) / budget)
        return max(fractions)

    def time_is_up(self) -> bool:
        """Whether the time limit leaves no room for another step plus a validation.

        The first step always runs, so every run trains (and validates) at least once.
        """
        if self.config.time_limit is None or self.steps_run == 0:
            return False
        step = self.step_seconds / self.steps_run
        reserve = step
        if self.s.val_slices:
            validation = self.validator.seconds or self.first_validation_estimate(step)
            reserve += validation + self.calibration_estimate()
        return self.elapsed + reserve >= self.config.time_limit

    def first_validation_estimate(self, step_seconds: float) -> float:
        """Estimate a validation's seconds before the first one has run.

        The validation pixels at the speed of a training step's forward pass (about a third of
        the step's time).
        """
        pixels = sum(s.shape[0] * s.shape[1] for s in self.s.val_slices)
        per_step = self.config.batch_size * self.config.patch_size**2
        return step_seconds / 3 * pixels / per_step

    def calibration_estimate(self) -> float:
        """Seconds the instance calibration at the end will take (from the last validation)."""
        if self.config.mode != "instances":
            return 0.0
        return (len(candidate_settings(self.instance_settings)) + 2) * self.validator.post_seconds

    def eta(self) -> float | None:
        """Estimated seconds left (the smaller of the epoch and time-limit estimates)."""
        estimates = []
        if self.config.time_limit is not None:
            estimates.append(max(self.config.time_limit - self.elapsed, 0.0))
        if self.total_steps and self.steps_run:
            per_step = self.step_seconds / self.steps_run
            remaining = (self.total_steps - self.steps_run) * per_step
            validations_left = (self.n_epochs or 0) - self.first_epoch - len(self.history)
            estimates.append(remaining + max(validations_left, 0) * self.validator.seconds)
        return min(estimates) if estimates else None

    @property
    def current_epoch(self) -> int:
        return self.first_epoch + len(self.history) + 1

    # ------------------------------------------------------------------ reporting

    def report(self, stage: str, message: str = "", epoch: int | None = None) -> None:
        """Send a progress event (``epoch`` defaults to the one in progress or just done)."""
        if self.progress is None:
            return
        if epoch is None:
            in_progress = stage in ("training", "validating")
            epoch = self.current_epoch if in_progress else self.first_epoch + len(self.history)
        last = self.history[-1] if self.history else {}
        best = self.best_entry.get("score") if self.best_entry else None
        mean = self.epoch_loss_sum / self.epoch_loss_n if self.epoch_loss_n else None
        self.progress(
            TrainProgress(
                stage=stage,
                epoch=epoch,
                n_epochs=self.n_epochs,
                step=self.epoch_steps,
                steps_per_epoch=self.s.steps_per_epoch,
                total_steps_estimate=self.total_steps_estimate(),
                train_loss=mean if stage == "training" else last.get("train_loss", mean),
                val_loss=last.get("val_loss"),
                metrics={k: last[k] for k in ("val_f1", "val_iou", "score") if k in last},
                best_score=best,
                elapsed=self.elapsed,
                eta=self.eta(),
                message=message,
            )
        )

    # ------------------------------------------------------------------ one step

    def step(self) -> None:
        """One optimiser step on a fresh batch of patches."""
        images, targets, weights = self.sampler.sample_batch(self.config.batch_size)
        self.lr = learning_rate_at(self.config, self.budget_fraction())
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr
        self.steps_run += 1
        self.epoch_steps += 1
        if not np.any(weights > 0):
            return  # nothing annotated in this batch: no update (never a NaN loss)
        device = self.s.device
        x = torch.from_numpy(images).to(device)
        if uses_channels_last(device):
            x = x.contiguous(memory_format=torch.channels_last)
        t = torch.from_numpy(targets).to(device)
        w = torch.from_numpy(weights).to(device)
        with autocast_context(device, self.s.amp, self.s.amp_type):
            logits = self.model(x)
        loss = training_loss(
            logits,
            t,
            w,
            self.config.loss,
            include_background=self.config.mode == "classes",
            dice_weight=self.config.dice_weight,
        )
        self.optimizer.zero_grad(set_to_none=True)
        if not torch.isfinite(loss):
            self._non_finite()
            return
        self.non_finite = 0
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()
        self.epoch_loss_sum += float(loss.detach())
        self.epoch_loss_n += 1

    def _non_finite(self) -> None:
        self.non_finite += 1
        if self.non_finite >= MAX_NON_FINITE_STEPS:
            raise FloatingPointError(
                f"Training diverged: the loss was not finite for {MAX_NON_FINITE_STEPS} steps in "
                f"a row. Lower the learning rate (now {self.config.learning_rate:g})."
            )

    # ------------------------------------------------------------------ epochs

    def run_epoch(self) -> None:
        """Run the steps of one epoch, stopping early for cancel or the time limit."""
        self.epoch_steps = 0
        self.epoch_loss_sum, self.epoch_loss_n = 0.0, 0
        for _ in range(self.s.steps_per_epoch):
            if self.cancel is not None and self.cancel.is_set():
                self.stopped_by = "cancel"
                return
            if self.time_is_up():
                self.stopped_by = "time_limit"
                return
            started = time.perf_counter()
            self.step()
            self.step_seconds += time.perf_counter() - started
            self.report("training")

    def finish_epoch(self) -> None:
        """Validate the epoch just trained, record it and keep/save the best model."""
        entry = {
            "epoch": self.current_epoch,
            "steps": self.epoch_steps,
            "train_loss": self.epoch_loss_sum / self.epoch_loss_n if self.epoch_loss_n else None,
        }
        if self.s.val_slices:
            self.report("validating", f"validating epoch {entry['epoch']}")
            try:
                scores = self.validator.run(self.model, self.predictor_description(), self.cancel)
            except Cancelled:
                self.stopped_by = "cancel"
                return
            entry.update(scores)
        entry["lr"] = self.lr
        entry["elapsed"] = self.elapsed
        self.history.append({k: _plain(v) for k, v in entry.items()})
        if self._improved(entry):
            self.best_entry = entry
            self.best_maps = self.validator.maps
            self.best_state = {
                k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()
            }
            self.save(stage_message=f"saving the best model (epoch {entry['epoch']})")
        if self.on_epoch_end is not None:
            self.on_epoch_end(self.model, dict(self.history[-1]))
        self.report("training", self._epoch_message(entry), epoch=entry["epoch"])

    def _improved(self, entry: dict) -> bool:
        if self.best_entry is None or "score" not in entry:
            return True
        best, score = self.best_entry["score"], entry["score"]
        if score != best:
            return score > best
        loss, best_loss = entry.get("val_loss"), self.best_entry.get("val_loss")
        return loss is not None and best_loss is not None and loss < best_loss

    def _epoch_message(self, entry: dict) -> str:
        text = f"epoch {entry['epoch']}"
        if entry.get("train_loss") is not None:
            text += f": loss {entry['train_loss']:.4f}"
        if entry.get("val_loss") is not None:
            text += f", val loss {entry['val_loss']:.4f}"
        if "val_f1" in entry:
            text += f", val F1 {entry['val_f1']:.3f}"
        elif "val_iou" in entry:
            text += f", val IoU {entry['val_iou']:.3f}"
        return text

    def run(self) -> TrainResult:
        """Train until the budget is used or cancel is set; return the result."""
        self.model.train()
        self.report("training", "training started")
        while self.stopped_by is None:
            if self.n_epochs is not None and len(self.history) >= self.config.epochs:
                self.stopped_by = "epochs"
                break
            self.run_epoch()
            if self.stopped_by == "cancel" and self.steps_run == 0:
                raise Cancelled(NOTHING_SAVED)  # nothing trained: keep any existing file
            if self.stopped_by == "cancel" or self.epoch_steps == 0:
                break
            self.finish_epoch()
        return self.finish()

    # ------------------------------------------------------------------ saving and result

    def calibrate(self) -> None:
        """Choose the instance settings on the best model's validation maps (instances mode)."""
        if self.config.mode != "instances" or not self.best_maps:
            return
        self.report("calibrating", "choosing the instance settings on the validation data")
        cancel = self.cancel
        settings, score, base_score = calibrate_instances(
            self.best_maps,
            self.instance_settings,
            should_stop=None if cancel is None else cancel.is_set,
        )
        self.instance_settings = settings
        self.calibration = {"val_f1": score, "val_f1_defaults": base_score}

    def predictor_description(self) -> dict:
        return {
            "mode": self.config.mode,
            "normalization": self.s.normalization.to_dict(),
            "class_names": self.s.class_names,
        }

    def description(self) -> dict:
        best = self.best_entry or {}
        s = self.s
        history = s.previous_history + self.history
        summary = s.data.summary()
        return {
            "mode": self.config.mode,
            "n_classes": s.data.n_classes,
            "class_names": s.class_names,
            "in_channels": s.data.in_channels,
            "channel_axis": self.config.channel_axis,
            "channels": None
            if s.data.channels is None
            else {"used": s.data.channels, "of": s.data.source_channels},
            "normalization": s.normalization.to_dict(),
            "weightmap": None if s.data.weightmap is None else s.data.weightmap.to_dict(),
            "instances": self.instance_settings.to_dict()
            if self.config.mode == "instances"
            else None,
            "calibration": self.calibration,
            "training": self.config.to_dict(),
            "history": history,
            "epochs_trained": len(history),
            "metrics": {
                "best_validation_score": best.get("score"),
                "best_validation_metric": self._metric_name()
                if best.get("score") is not None
                else None,
                "best_epoch": best.get("epoch"),
                "val_loss": best.get("val_loss"),
                "val_f1": best.get("val_f1"),
                "val_iou": best.get("val_iou"),
                "val_objects": best.get("val_objects"),
            },
            "data": {
                "n_slices": summary["n_slices"],
                "n_training_slices": len(s.train_slices),
                "n_validation_slices": len(s.val_slices),
                "annotated_pixels": summary["annotated_pixels"],
                "class_pixels": summary["class_pixels"],
                "slice_shape_min": summary["slice_shape_min"],
                "slice_shape_max": summary["slice_shape_max"],
                "pairs": summary["pairs"],
            },
            "data_shapes": [p["image_shape"] for p in summary["pairs"]],
            "device": describe_device(s.device),
            "stopped_by": self.stopped_by,
            "steps_run": self.steps_run,
            "notes": list(s.notes),
        }

    def _metric_name(self) -> str:
        return "instance F1 at IoU 0.5" if self.config.mode == "instances" else "mean IoU"

    def save(self, stage_message: str) -> None:
        if self.s.out is None:
            return
        self.report("saving", stage_message)
        # The first save may not replace a file someone else wrote meanwhile; later saves
        # replace this run's own file.
        overwrite = self.s.overwrite or self.model_path is not None
        self.model_path = save_model(
            self.s.out, self.model, self.description(), overwrite=overwrite
        )

    def finish(self) -> TrainResult:
        """Load the best weights, write the final model file and build the result."""
        if self.stopped_by is None:
            self.stopped_by = "epochs"
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state)
        self.model.eval()
        self.calibrate()
        self.save(stage_message="saving the model")
        if self.model_path is not None:
            description = read_description(self.model_path)
        else:
            description = self.description()
            description["architecture"] = self.model.config.to_dict()
            description["package_version"] = __version__
        best = self.best_entry or {}
        self.report("done", f"training stopped ({self.stopped_by})")
        return TrainResult(
            model=self.model,
            description=description,
            history=list(self.s.previous_history) + list(self.history),
            best_score=best.get("score"),
            best_epoch=best.get("epoch"),
            epochs_run=len(self.history),
            steps_run=self.steps_run,
            elapsed=self.elapsed,
            stopped_by=self.stopped_by,
            model_path=self.model_path,
        )


# --------------------------------------------------------------------------------------------
# Public entry point
# --------------------------------------------------------------------------------------------


def _preparation_reporter(
    progress: ProgressCallback | None, start: float
) -> Callable[[int, int], None]:
    def report(done: int, total: int) -> None:
        if progress is not None:
            progress(
                TrainProgress(
                    stage="preparing",
                    elapsed=time.perf_counter() - start,
                    message=f"preparing slice {done} of {total}" if total else "preparing data",
                )
            )

    return report


def _build_model(
    config: TrainConfig,
    data: data_module.TrainingData,
    resumed: tuple[UNet, dict] | None,
    device: torch.device,
) -> UNet:
    if resumed is not None:
        model = resumed[0].to(device)
    else:
        torch.manual_seed(config.seed)
        model = UNet(config.model_config(data.in_channels, data.n_classes)).to(device)
    if uses_channels_last(device):
        # NHWC weights and batches: oneDNN / cuDNN skip reordering every feature map (1.36x
        # per step on a 2-core Zen 5 CPU). Saved model files are contiguous either way.
        model.to(memory_format=torch.channels_last)
    return model


def amp_settings(config: TrainConfig, device: torch.device) -> tuple[bool, torch.dtype | None]:
    """Decide whether training runs under autocast, and in which type.

    Parameters
    ----------
    config : TrainConfig
        Its ``amp`` and ``amp_dtype`` (see :class:`TrainConfig`).
    device : torch.device
        Where training runs.

    Returns
    -------
    enabled : bool
        Whether the forward pass runs under ``torch.autocast``.
    dtype : torch.dtype or None
        The autocast type (``None`` when disabled).
    """
    enabled = computes_16bit_natively(device) if config.amp is None else bool(config.amp)
    requested = config.amp_dtype
    if requested is None and device.type == "cpu":
        requested = "bf16"  # the only reduced type CPU autocast computes quickly
    dtype = autocast_dtype(device, enabled, requested)
    return dtype is not None, dtype


def train(
    pairs_or_data: Sequence[tuple[Any, Any]] | data_module.TrainingData,
    config: TrainConfig | None = None,
    *,
    out: str | Path | None = None,
    validation: Sequence[tuple[Any, Any]] | data_module.TrainingData | None = None,
    regions: Sequence[Any] | None = None,
    resume: str | Path | None = None,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
    on_epoch_end: EpochHook | None = None,
    overwrite: bool = True,
) -> TrainResult:
    """Train a U-Net (or continue training one) and keep the best model.

    Parameters
    ----------
    pairs_or_data : sequence of (image, labels) or TrainingData
        Raw pairs (prepared here with :func:`napari_unetkit.data.prepare_training_data`) or
        already prepared data.
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
        Model file to fine-tune. Its architecture and normalisation are kept (the size settings
        of ``config`` are ignored, with a note in the description) and its history is extended.
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
        For invalid settings, unusable data, or a resumed model that does not fit the data.
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
        return _train(
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
            on_epoch_end=on_epoch_end,
            overwrite=overwrite,
        )
    finally:
        if torch.get_num_threads() != threads_before:
            torch.set_num_threads(threads_before)


def _train(
    pairs_or_data: Any,
    config: TrainConfig,
    device: torch.device,
    start: float,
    *,
    out: str | Path | None,
    validation: Any,
    regions: Sequence[Any] | None,
    resume: str | Path | None,
    progress: ProgressCallback | None,
    cancel: threading.Event | None,
    on_epoch_end: EpochHook | None,
    overwrite: bool,
) -> TrainResult:
    """Prepare, build and run (the body of :func:`train`, threads already configured)."""
    resumed = load_model(resume, device=device) if resume is not None else None
    normalization = config.normalization
    if resumed is not None and resumed[1].get("normalization") is not None:
        normalization = NormalizationSettings.from_dict(resumed[1]["normalization"])
    report = _preparation_reporter(progress, start)
    report(0, 0)
    try:
        data = _prepare(pairs_or_data, config, normalization, regions, cancel, report)
        train_slices, val_slices = _split(data, validation, config, data.normalization, cancel)
    except Cancelled:
        raise Cancelled(NOTHING_SAVED) from None
    notes: list[str] = []
    if data.empty_channels:
        notes.append(_empty_channel_note(data))
        warnings.warn(notes[-1][:1].upper() + notes[-1][1:] + ".", UserWarning, stacklevel=3)
    previous_history: list[dict] = []
    if resumed is not None:
        _check_resume(resumed[1], resumed[0], data, resume)
        notes = _resume_notes(config, resumed[0], resume)
        history = resumed[1].get("history")
        previous_history = [dict(h) for h in history] if isinstance(history, list) else []
    model = _build_model(config, data, resumed, device)
    amp, amp_type = amp_settings(config, device)
    setup = _Setup(
        config=config,
        data=data,
        train_slices=train_slices,
        val_slices=val_slices,
        model=model,
        device=device,
        amp=amp,
        amp_type=amp_type,
        steps_per_epoch=_auto_steps(config, train_slices),
        start=start,
        previous_history=previous_history,
        notes=notes,
        normalization=data.normalization,
        class_names=_class_names(config, data),
        out=None if out is None else Path(out),
        overwrite=overwrite,
    )
    return _Run(setup, progress, cancel, on_epoch_end).run()
