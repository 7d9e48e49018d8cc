"""The retraining job of the "Correct and retrain" panel (runs in a worker thread).

:func:`retraining_job` trains on a project's whole training set, fine-tuning the current model
version (or from scratch when there is none), and records the best model as the project's next
version. It emits the events the :class:`~napari_unetkit._napari.train_monitor.TrainingMonitor`
shows (the trainer's :class:`~napari_unetkit.training.TrainProgress` and
:class:`~napari_unetkit._napari.train_job.EpochEnd`). Stop before the first training step
raises :class:`~napari_unetkit.progress.Cancelled` and records nothing.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from napari_unetkit._napari.train_job import EpochEnd, lower_thread_priority
from napari_unetkit.project import ModelVersion, Project
from napari_unetkit.training import TrainConfig, TrainResult, train


@dataclass(frozen=True)
class Retrained:
    """A finished round of retraining.

    Attributes
    ----------
    result : TrainResult
        What the trainer returned (the best model, on the CPU).
    version : ModelVersion
        The new model version, as recorded in the project.
    init_from : pathlib.Path or None
        The model it was fine-tuned from (``None``: trained from scratch).
    """

    result: TrainResult
    version: ModelVersion
    init_from: Path | None


def retraining_job(
    project: Project,
    config: TrainConfig,
    init_from: Path | None,
    parent: int | None = None,
) -> Callable[[Callable[[object], None], threading.Event], Retrained]:
    """Return the job ``job(emit, cancel) -> Retrained`` for the panel's job runner.

    Parameters
    ----------
    project : Project
        Whose whole training set is trained on and where the new version is recorded.
    config : TrainConfig
        The round's settings (budget included; the channel axis is the project's). With
        ``init_from`` the model's architecture and normalisation are kept.
    init_from : pathlib.Path or None
        The model file to fine-tune, or ``None`` to train from scratch.
    parent : int or None
        The project version ``init_from`` is (``None``: a file from outside the project, which
        is recorded as the new version's base).
    """

    def job(emit: Callable[[object], None], cancel: threading.Event) -> Retrained:
        lower_thread_priority()
        data = project.training_pairs()
        out = project.new_model_path()
        result = train(
            data.pairs,
            replace(config, channel_axis=data.channel_axis),
            out=out,
            regions=data.regions,
            init_from=init_from,
            progress=emit,
            cancel=cancel,
            on_epoch_end=lambda _model, entry: emit(EpochEnd(dict(entry))),
            overwrite=False,  # never replace a file: the version number is new
        )
        result.model.to("cpu")
        version = project.record_model(
            result.model_path,
            parent=parent,
            base=None if parent is not None or init_from is None else init_from,
            entries=data.entry_ids,
        )
        return Retrained(result=result, version=version, init_from=init_from)

    return job
