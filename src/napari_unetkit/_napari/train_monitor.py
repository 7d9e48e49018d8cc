"""What a panel shows of a running training: progress bar, status line, live plot, score note.

:class:`TrainingMonitor` is shared by the "Train U-Net" and "Correct and retrain" panels. The
panel hands it every event of :func:`~napari_unetkit._napari.train_job.training_job`'s kind
(the trainer's :class:`~napari_unetkit.training.TrainProgress` and
:class:`~napari_unetkit._napari.train_job.EpochEnd`); the monitor updates itself (per-step
events at most every :data:`STEP_UPDATE_INTERVAL` seconds) and returns the position for the
job runner's progress bar.
"""

from __future__ import annotations

import time

import numpy as np
from magicgui.widgets import Container, ProgressBar
from napari.utils.theme import get_theme

from napari_unetkit._napari.dock_parts import wrapping_label
from napari_unetkit._napari.loss_plot import LossPlot
from napari_unetkit._napari.train_job import EpochEnd
from napari_unetkit.training import TrainConfig, TrainProgress

#: Resolution of the in-widget progress bar.
PROGRESS_STEPS = 1000
#: Shortest time between two GUI updates for the (frequent) per-step events, in seconds.
STEP_UPDATE_INTERVAL = 0.2
#: Explains the validation score under the plot (instances mode: F1; classes mode: IoU).
SCORE_NOTES = {
    "instances": (
        "Validation F1 (0 to 1): the share of annotated objects the model finds, each "
        "overlapping its annotation by at least half (IoU 0.5), measured on data held out from "
        "training (whole frames, or a band at the edge of a single image). It often stays at 0 "
        "for the first epochs, until touching objects come out separated."
    ),
    "classes": (
        "Validation IoU (0 to 1): how well the painted classes are predicted (intersection "
        "over union, averaged over the classes), measured on data held out from training."
    ),
}


def duration(seconds: float | None) -> str:
    """Format seconds as ``m:ss`` or ``h:mm:ss``."""
    if seconds is None or not np.isfinite(seconds):
        return "?"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def metric_name(mode: str) -> str:
    """Return the name of the validation score: F1 (instances) or IoU (classes)."""
    return "F1" if mode == "instances" else "IoU"


def status_text(event: TrainProgress, metric: str) -> str:
    """One status line for a progress event, e.g. ``"Epoch 3/50 · step 7/20 · loss 0.41 ..."``.

    Parameters
    ----------
    event : TrainProgress
        The trainer's event.
    metric : str
        Name of the validation score (``"F1"`` or ``"IoU"``).
    """
    if event.stage == "preparing":
        return f"Preparing the data ({event.message})…" if event.message else "Preparing…"
    if event.stage == "done":
        return "Finishing…"  # the widget then says why training ended, from the result
    if event.stage in ("calibrating", "saving"):
        return event.message[:1].upper() + event.message[1:] if event.message else "Saving…"
    epochs = f"/{event.n_epochs}" if event.n_epochs else ""
    parts = [f"Epoch {event.epoch}{epochs}"]
    if event.stage == "validating":
        parts.append("validating")
    elif event.steps_per_epoch:
        parts.append(f"step {event.step}/{event.steps_per_epoch}")
    if event.train_loss is not None:
        parts.append(f"loss {event.train_loss:.4f}")
    if event.val_loss is not None:
        parts.append(f"val loss {event.val_loss:.4f}")
    if event.best_score is not None:
        parts.append(f"best {metric} {event.best_score:.3f}")
    timing = f"{duration(event.elapsed)} elapsed"
    if event.eta is not None:
        timing += f", about {duration(event.eta)} left"
    parts.append(timing)
    return " · ".join(parts)


def progress_position(event: TrainProgress, config: TrainConfig) -> tuple[int, int] | None:
    """Return ``(done, total)`` for the progress bars, or ``None`` to leave them as they are.

    Epoch budgets count optimiser steps; time budgets count seconds.
    """
    if config.epochs is None:
        if config.time_limit is None or event.stage == "preparing":
            return None
        return min(int(event.elapsed), int(config.time_limit)), int(config.time_limit)
    total = event.total_steps_estimate
    if not total or event.stage == "preparing":
        return None
    if event.stage == "training" and event.message:
        return None  # start or epoch summary: its step count is the finished epoch's
    done = (event.epoch - 1) * event.steps_per_epoch + event.step
    if event.stage in ("calibrating", "saving", "done"):
        done = event.epoch * event.steps_per_epoch
    return min(max(done, 0), total), total


class TrainingMonitor(Container):
    """Progress bar, status line, live loss / score plot and the note explaining the score.

    Parameters
    ----------
    theme : str
        The viewer's theme name (the plot takes its colours).
    """

    def __init__(self, theme: str) -> None:
        super().__init__(labels=False)
        self.margins = (0, 0, 0, 0)
        colours = get_theme(theme)
        self.progress = ProgressBar(min=0, max=PROGRESS_STEPS, value=0)
        self.status = wrapping_label(lines=3)
        self.plot = LossPlot(colours.background.as_hex(), colours.text.as_hex())
        self.score_note = wrapping_label()
        self.score_note.native.setStyleSheet("font-size: small;")
        self.extend([self.progress, self.status, self.plot, self.score_note])
        self._config: TrainConfig | None = None
        self._last_step_update = 0.0
        self.set_mode("instances")

    def set_mode(self, mode: str) -> None:
        """Show the score of ``mode`` (``"instances"``: F1, ``"classes"``: IoU); clears the plot."""
        self.plot.reset(f"validation {metric_name(mode)}")
        self.score_note.value = SCORE_NOTES[mode]

    def begin(self, config: TrainConfig) -> None:
        """Start showing a run with settings ``config``: empty plot, empty bar, "Starting…"."""
        self._config = config
        self._last_step_update = 0.0
        self.set_mode(config.mode)
        self.progress.value = 0
        self.status.value = "Starting…"

    def show(self, event: object) -> tuple[int, int] | None:
        """Show one event of the run; return ``(done, total)`` for the job runner, or ``None``.

        :class:`EpochEnd` adds a point to the plot; a
        :class:`~napari_unetkit.training.TrainProgress` updates the status line and the bar
        (per-step events are skipped within :data:`STEP_UPDATE_INTERVAL` of the last shown one).
        Other events are ignored.
        """
        if isinstance(event, EpochEnd):
            entry = event.entry
            score = entry.get("val_f1", entry.get("val_iou"))
            self.plot.add_epoch(
                entry["epoch"], entry.get("train_loss"), entry.get("val_loss"), score
            )
            return None
        if not isinstance(event, TrainProgress) or self._config is None or self._skip(event):
            return None
        if event.stage == "training" and not self.plot.epochs:
            self.plot.expect_loss(event.train_loss)
        self.status.value = status_text(event, metric_name(self._config.mode))
        position = progress_position(event, self._config)
        if position is not None:
            self._show_progress(round(PROGRESS_STEPS * position[0] / position[1]))
        return position

    def finish(self, status: str) -> None:
        """Show the run as ended with the status line ``status`` (a full bar)."""
        self.status.value = status
        self._show_progress(PROGRESS_STEPS)

    def _show_progress(self, value: int) -> None:
        """Move the progress bar without the immediate repaint QProgressBar does.

        An immediate repaint composes napari's whole (OpenGL) window; with updates disabled
        meanwhile, the change joins the next regular paint.
        """
        bar = self.progress.native
        bar.setUpdatesEnabled(False)
        self.progress.value = value
        bar.setUpdatesEnabled(True)

    def _skip(self, event: TrainProgress) -> bool:
        """Whether to skip a per-step event because the last GUI update was a moment ago."""
        if event.stage != "training" or event.message:
            return False  # stage changes and epoch summaries are always shown
        now = time.perf_counter()
        if now - self._last_step_update < STEP_UPDATE_INTERVAL:
            return True
        self._last_step_update = now
        return False
