"""Everything fixed before the first training step (:class:`Setup`), made by :func:`prepare_run`.

:func:`prepare_run` prepares the training data (or checks prepared data), splits off the
validation slices, loads a model file to continue (``resume``) or to fine-tune from
(``init_from``, see :mod:`~napari_unetkit.training.finetune`) or builds a new network, checks
that such a model fits the data, and decides autocast (:func:`amp_settings`) and the steps per
epoch. A cancel during this raises :class:`~napari_unetkit.progress.Cancelled` with
:data:`~napari_unetkit.training.events.NOTHING_SAVED`.
"""

from __future__ import annotations

import math
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from napari_unetkit import data as data_module
from napari_unetkit import lazydata
from napari_unetkit.checks import INSTANCE_CLASS_NAMES
from napari_unetkit.device import autocast_dtype
from napari_unetkit.model import UNet
from napari_unetkit.modelfile import load_model
from napari_unetkit.normalization import NormalizationSettings
from napari_unetkit.progress import Cancelled
from napari_unetkit.speed.inference import uses_channels_last
from napari_unetkit.speed.precision import computes_16bit_natively
from napari_unetkit.training import finetune
from napari_unetkit.training.config import TrainConfig
from napari_unetkit.training.events import NOTHING_SAVED, ProgressCallback, TrainProgress

#: Bounds of the automatic number of steps per epoch.
MIN_AUTO_STEPS, MAX_AUTO_STEPS = 10, 100

#: Class names of instance models.


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
    """Prepare the training data from pairs (or check the given TrainingData).

    Pairs too large for memory, or in a zarr store, are indexed for lazy reading
    (:func:`napari_unetkit.lazydata.wants_lazy`).
    """
    if isinstance(source, data_module.TrainingData | lazydata.LazyTrainingData):
        if source.mode != config.mode:
            raise ValueError(
                f"The prepared data is for {source.mode!r} mode but the settings ask for "
                f"{config.mode!r}."
            )
        if regions is not None:
            raise ValueError("regions apply to raw (image, labels) pairs, not to prepared data.")
        return source
    pairs = list(source)
    lazy = lazydata.wants_lazy(pairs)
    prepare = lazydata.prepare_lazy_training_data if lazy else data_module.prepare_training_data
    return prepare(
        pairs,
        **({"seed": config.seed} if lazy else {}),
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
    lazy = isinstance(data, lazydata.LazyTrainingData)
    if validation is None:
        if lazy:
            return data.split(config.val_fraction, config.seed)
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
    train_slices = data.split(0.0)[0] if lazy else list(data.slices)
    return train_slices, list(val_data.slices)


def _check_resume(
    description: dict,
    model: UNet,
    data: data_module.TrainingData,
    path,
    action: str = "continue training",
) -> None:
    """Raise a clear ValueError when a model file cannot be fine-tuned on this data."""
    mode = description.get("mode")
    problems = []
    source = (description.get("channels") or {}).get("of")
    if source is not None and source != data.source_channels:
        problems.append(
            f"it was trained on images with {source} channels, these have {data.source_channels}"
        )
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
        raise ValueError(f"Cannot {action} {path}: " + "; ".join(problems) + ".")


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


@dataclass
class Setup:
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
    parent: dict | None = None


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
    torch.manual_seed(config.seed)  # weight initialisation (new models) and dropout
    if resumed is not None:
        model = resumed[0].to(device)
    else:
        model = UNet(config.model_config(data.in_channels, data.n_classes)).to(device)
    if uses_channels_last(device):
        # NHWC weights and batches: oneDNN / cuDNN skip reordering every feature map (see
        # docs/performance.md). Saved model files are contiguous either way.
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


def prepare_run(
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
    overwrite: bool,
    init_from: Any = None,
) -> Setup:
    """Prepare and split the data, load or build the model: all that is fixed before step 1."""
    if resume is not None and init_from is not None:
        raise ValueError(
            "Give either resume (continue an interrupted run) or init_from (start a new run "
            "from a model's weights), not both."
        )
    resumed = load_model(resume, device=device) if resume is not None else None
    base = finetune.load_base(init_from, device) if init_from is not None else None
    if base is not None:
        config = finetune.fine_tuning_config(config, base[0], base[1])
        resumed = (base[0], base[1])
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
    except ValueError as error:
        if base is None:
            raise
        # The base model fixed the mode, classes and channels the data did not fit.
        raise ValueError(f"Cannot fine-tune {base[2]}: {error}") from None
    notes: list[str] = []
    if data.empty_channels:
        notes.append(_empty_channel_note(data))
        warnings.warn(notes[-1][:1].upper() + notes[-1][1:] + ".", UserWarning, stacklevel=3)
    previous_history: list[dict] = []
    if base is not None:
        _check_resume(base[1], base[0], data, base[2], action="fine-tune")
        notes.append(f"fine-tuned from {base[2]}")
    elif resumed is not None:
        _check_resume(resumed[1], resumed[0], data, resume)
        notes = _resume_notes(config, resumed[0], resume)
        history = resumed[1].get("history")
        previous_history = [dict(h) for h in history] if isinstance(history, list) else []
    model = _build_model(config, data, resumed, device)
    amp, amp_type = amp_settings(config, device)
    return Setup(
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
        parent=None if base is None else finetune.parent_record(base[1], base[2]),
    )
