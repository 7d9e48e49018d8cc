"""The "Train U-Net" widget: (image, labels) pairs in, a trained model file out.

Layout, top to bottom: what the labels mean (instances / classes); the training pairs (image,
labels, optional annotated region; "Add pair" for more); the settings (advanced ones folded
away); the live preview option; a message saying what is missing; one Start / Stop button; a
progress bar, a status line, a live plot of the losses and the validation score (the
:class:`~napari_unetkit._napari.train_monitor.TrainingMonitor`); the summary of the finished run.

Training runs in a napari thread worker (:class:`~napari_unetkit._napari.jobs.JobRunner`) on
copies of the layer data, so the viewer stays usable (and paintable) meanwhile. Stop keeps the
best model so far. The model file is never written over: an existing name gets a number.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import napari.viewer
import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, Label, PushButton, SpinBox
from napari.layers import Image, Labels
from napari.utils.notifications import show_info

from napari_unetkit import layout
from napari_unetkit._napari.dock_parts import UndockWatch, scroll_body, wrapping_label
from napari_unetkit._napari.jobs import JobRunner, error_message
from napari_unetkit._napari.layers import (
    METADATA_KEY,
    image_data,
    own_layer,
    placement,
    unique_name,
)
from napari_unetkit._napari.loss_plot import LossPlot
from napari_unetkit._napari.problems import FieldMarks
from napari_unetkit._napari.session import SESSION, TrainedModel
from napari_unetkit._napari.settings import remember
from napari_unetkit._napari.surface import PanelSurface
from napari_unetkit._napari.torch_guard import prepare_torch_for_napari
from napari_unetkit._napari.train_inputs import PairList
from napari_unetkit._napari.train_job import Preview, PreviewRequest, training_job
from napari_unetkit._napari.train_monitor import (  # noqa: F401  (status_text: public here too)
    TrainingMonitor,
    duration,
    metric_name,
    status_text,
)
from napari_unetkit._napari.train_settings import TrainSettings
from napari_unetkit.checks import Problem, model_file_name
from napari_unetkit.training import TrainConfig, TrainResult

logger = logging.getLogger(__name__)

START_TEXT, STOP_TEXT, STOPPING_TEXT = "Start training", "Stop", "Stopping…"


def time_limit_text(seconds: float | None) -> str:
    """Format a time limit for a sentence: ``"5 min"``, ``"1 h 30 min"``, ``"2:30"``."""
    if seconds is None or not np.isfinite(seconds):
        return "?"
    whole = round(seconds)
    if whole % 60:
        return duration(whole)
    hours, minutes = divmod(whole // 60, 60)
    if not hours:
        return f"{minutes} min"
    return f"{hours} h" + (f" {minutes} min" if minutes else "")


def stop_reason(stopped_by: str, config: TrainConfig | None, closed: bool = False) -> str:
    """Say why training ended, in the words of a sentence ("the time limit of 5 min ...").

    Parameters
    ----------
    stopped_by : {"epochs", "time_limit", "cancel"}
        The trainer's reason.
    config : TrainConfig or None
        The run's settings (for the number of epochs and the time limit).
    closed : bool
        Whether a cancel came from closing the panel rather than from Stop.
    """
    if stopped_by == "epochs":
        epochs = config.epochs if config is not None else None
        return f"all {epochs} epochs are done" if epochs else "all epochs are done"
    if stopped_by == "time_limit":
        limit = config.time_limit if config is not None else None
        return f"the time limit of {time_limit_text(limit)} was reached"
    if stopped_by == "cancel":
        return "the Train U-Net panel was closed" if closed else "you stopped it"
    return "training ended"


def end_status(result: TrainResult, config: TrainConfig | None, closed: bool = False) -> str:
    """Return the status line after a run: ``"Finished: ..."`` or ``"Stopped: ..."``."""
    if result.stopped_by == "epochs":
        return f"Finished: {stop_reason(result.stopped_by, config)}."
    if result.stopped_by == "cancel" and not closed:
        return "Stopped by you."
    return f"Stopped: {stop_reason(result.stopped_by, config, closed)}."


def zero_score(result: TrainResult) -> bool:
    """Whether a run was validated but its best model scored 0 (it found nothing held out)."""
    return result.best_score is not None and result.best_score <= 0


def summary_text(
    result: TrainResult, mode: str, config: TrainConfig | None = None, closed: bool = False
) -> str:
    """Describe a finished run: epochs, time, why it ended, best score, where it was saved.

    ``config`` and ``closed`` are as for :func:`stop_reason`.

    A model whose best validation score is 0 is not handed to the Predict panel
    automatically (see :func:`zero_score`); the summary then says so.
    """
    lines = [
        f"Trained {result.epochs_run} epoch{'s' if result.epochs_run != 1 else ''} in "
        f"{duration(result.elapsed)}; it ended because "
        f"{stop_reason(result.stopped_by, config, closed)}."
    ]
    if result.best_score is not None:
        held_out = result.description.get("data", {}).get("n_validation_slices")
        objects = result.description.get("metrics", {}).get("val_objects")
        on = f", on {held_out} held-out slice{'s' if held_out != 1 else ''}" if held_out else ""
        if held_out and objects is not None:
            on += f" with {objects} annotated object{'s' if objects != 1 else ''}"
        lines.append(
            f"Best validation {metric_name(mode)}: {result.best_score:.3f} "
            f"(epoch {result.best_epoch}{on})."
        )
    else:
        lines.append("No validation data: the last epoch's model was kept.")
    if result.model_path is not None:
        lines.append(f"Saved to {result.model_path}")
    if zero_score(result):
        lines.append(
            f"Its validation {metric_name(mode)} is 0: it did not find the held-out "
            f"{'objects' if mode == 'instances' else 'classes'} yet, so the Predict panel "
            "keeps its model. Train longer (or annotate more), or use this one anyway."
        )
    else:
        lines.append("The Predict panel now uses this model.")
    return "\n".join(lines)


def visible_slice(viewer: napari.viewer.Viewer, image: Image) -> tuple[int, ...]:
    """Return the slice of ``image`` shown in the viewer (``()`` for a 2D image)."""
    data, channel_axis = image_data(image)
    sizes = layout.slice_index_shape(tuple(data.shape), channel_axis)
    if not sizes:
        return ()
    coords = image.world_to_data(viewer.dims.point)[: len(sizes)]
    return tuple(
        int(np.clip(round(float(c)), 0, n - 1)) for c, n in zip(coords, sizes, strict=True)
    )


class TrainWidget(PanelSurface, Container):
    """Train a U-Net on annotated layers, watch it learn, and keep the best model.

    Its public surface is :class:`~napari_unetkit._napari.surface.PanelSurface` (inputs,
    problems, start / stop / wait) plus :attr:`pairs`, :attr:`settings_form`, :attr:`status`,
    :attr:`summary`, :attr:`progress`, :attr:`plot`, :attr:`score_note`,
    :attr:`can_use_anyway` and :meth:`use_model_anyway`.

    Parameters
    ----------
    viewer : napari.viewer.Viewer
        The viewer whose layers are trained on (and where the preview appears).
    """

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(labels=False)
        prepare_torch_for_napari()
        self._viewer = viewer
        self._runner = JobRunner("Training")
        self._alive = True
        self._config: TrainConfig | None = None
        self._request: PreviewRequest | None = None
        self._preview_source: Image | None = None
        self._preview_name = ""
        self._previewed: tuple[int, ...] | None = None
        self._outcome = ""  # "result" or "error" once the run has ended that way
        self._closed_while_running = False
        self._unused_result: TrainResult | None = None  # a model not handed over (score 0)
        self._problems: list[Problem] = []
        self._marks = FieldMarks({})  # the fields are named at every check
        self._make_widgets()
        self._connect()
        remember("train", self._remembered_fields())
        self._settings.adopt_path_as_suggestion()
        self._suggest_file_name()
        self._mode_changed()

    # -- construction -------------------------------------------------------------------------
    def _make_widgets(self) -> None:
        self._mode = ComboBox(
            label="Labels are",
            choices=(("separate cells (instances)", "instances"), ("classes", "classes")),
            value="instances",
            tooltip="instances: each cell has its own number, 0 = background; the network "
            "learns to separate touching cells. classes: 1, 2, ... are classes (e.g. 1 = "
            "background, 2 = nucleus), 0 = not annotated, so scribbles are fine.",
        )
        self._pairs = PairList(self._viewer, self._validate)
        self._settings = TrainSettings()
        self._preview = CheckBox(
            text="Live preview",
            value=False,
            tooltip="Every few epochs, predict the slice of the first image you are looking at "
            "and show it as a '<image> preview' Labels layer.",
        )
        self._preview_every = SpinBox(label="every", min=1, max=10_000, value=5)
        self._preview_every.tooltip = "Preview after every N-th epoch (each costs a prediction)."
        self._message = wrapping_label()
        self._start = PushButton(text=START_TEXT)
        self._button = self._start
        self._monitor = TrainingMonitor(self._viewer.theme)
        # The monitor's parts, by the names this panel always had.
        self._progress, self._status = self._monitor.progress, self._monitor.status
        self._plot, self._score_note = self._monitor.plot, self._monitor.score_note
        self._summary = wrapping_label()
        self._use_anyway = PushButton(text="Use this model for prediction anyway", visible=False)
        self._use_anyway.tooltip = (
            "Hand this model to the Predict panel although its validation score is 0."
        )
        preview_row = Container(
            layout="horizontal",
            labels=False,
            widgets=[
                self._preview,
                Label(value="every"),
                self._preview_every,
                Label(value="epochs"),
            ],
        )
        preview_row.margins = (0, 0, 0, 0)
        body = Container(
            labels=False,
            widgets=[
                Container(labels=True, widgets=[self._mode]),
                self._pairs,
                self._settings,
                preview_row,
                self._message,
                self._start,
                self._monitor,
                self._summary,
                self._use_anyway,
            ],
        )
        self.append(body)  # a magicgui child, so that napari's reset_choices reaches the pairs
        self.scroll_area = scroll_body(self, body)  # the dock fits smaller screens

    def _connect(self) -> None:
        self._mode.changed.connect(self._mode_changed)
        self._settings.changed.connect(self._validate)
        self._pairs.rows[0].image.changed.connect(self._suggest_file_name)
        self._start.changed.connect(self._start_or_stop)
        self._use_anyway.changed.connect(self._hand_over_unused)
        for field in (self._preview, self._preview_every):
            field.changed.connect(self._update_request)
        self._viewer.dims.events.current_step.connect(self._follow_slice)
        self.native.destroyed.connect(self._closed)
        self._undock_watch = UndockWatch(self.native, self._stop_if_running)

    def _closed(self, *_: object) -> None:
        """Stop training and touch no widget again: the dock (or the whole viewer) is gone.

        A method, not a closure: PyQt holds a connected method's widget weakly, so a closed
        panel that Python collects later is not called half torn down (with its attributes
        already cleared, an exception here aborted napari).
        """
        self._alive = False
        self._runner.cancel()
        self._viewer.dims.events.current_step.disconnect(self._follow_slice)
        self._pairs.stop_watching()

    def _stop_if_running(self) -> None:
        if self._alive and self._runner.running:
            self._closed_while_running = True
            self.stop()

    def _remembered_fields(self) -> dict:
        fields = {"mode": self._mode, "preview": self._preview}
        fields["preview_every"] = self._preview_every
        fields.update(self._settings.remembered_fields())
        return fields

    # -- reactions to edits -------------------------------------------------------------------
    def _mode_changed(self, *_: object) -> None:
        instances = self._mode.value == "instances"
        self._settings.show_weight_fields(instances)
        if not self._runner.running:
            self._monitor.set_mode(self._mode.value)
        self._validate()

    def _suggest_file_name(self, *_: object) -> None:
        image = self._pairs.first_image()
        if image is not None:
            self._settings.suggest_file_name(image.name)

    def reset_choices(self, *_: object) -> None:
        """Refresh the layer lists (napari calls this when layers change) and re-check."""
        if not self._alive:
            return
        super().reset_choices()
        self._validate()

    def _check(self) -> tuple[str | None, list[Problem]]:
        """Run the checks: the pairs (layer choices), then the engine's training pre-check.

        Marks the fields holding problems and returns the sentence to show (``None``: none)
        and every problem found.
        """
        mode = self._mode.value
        fields = dict(self._settings.field_widgets())
        problems = self._settings.problems(mode)
        text = "\n".join(problem.message for problem in problems) or None
        pairs = self._pairs.field_problem(mode)
        if pairs is not None:
            text, problem, widget = pairs
            problems.insert(0, problem)
            if widget is not None:
                fields[problem.field] = widget
        self._marks.fields = fields
        self._marks.show(problems)
        return text, problems

    def _note(self) -> str:
        chosen = model_file_name(Path(self._settings.path.value).expanduser())
        actual = self._settings.model_path()
        if actual != chosen:
            return f"{chosen.name} exists: the model will be saved as {actual.name}."
        return ""

    def _validate(self, *_: object) -> bool:
        """Show what is missing and enable Start only when training can begin."""
        if not self._alive or not hasattr(self, "_start") or self._runner.running:
            return False  # inputs are locked while training: nothing to re-check
        problem, self._problems = self._check()
        self._start.enabled = problem is None
        if problem is None:
            lines = (self._pairs.summary(self._mode.value), self._note())
            self._message.value = "\n".join(line for line in lines if line)
        else:
            self._message.value = problem
        return problem is None

    # -- start / stop ------------------------------------------------------------------------
    def _start_or_stop(self, *_: object) -> None:
        if self._runner.running:
            self.stop()
        else:
            self.start()

    def stop(self) -> None:
        """Ask training to stop after the current step; the best model so far is kept."""
        self._runner.cancel()
        self._start.text = STOPPING_TEXT
        self._start.enabled = False

    def start(self):
        """Start training on copies of the chosen layers; return the worker (None if invalid)."""
        if self._runner.running or not self._validate():
            return None
        mode = self._mode.value
        try:
            data = self._pairs.take_snapshot()
            config = replace(self._settings.config(mode, data.channel_axis), data_name=data.name)
            out = self._settings.model_path()
        except (ValueError, OSError) as error:
            self._message.value = str(error)
            return None
        self._config = config
        self._outcome = ""
        self._closed_while_running = False
        self._unused_result = None
        self._use_anyway.visible = False
        self._prepare_preview(data.name)
        self._monitor.begin(config)
        self._summary.value = ""
        self._message.value = f"Training; the model goes to {out}"
        self._set_running(True)
        worker = self._runner.start(
            training_job(data, config, out, self._request),
            on_event=self._on_event,
            on_result=self._on_result,
            on_error=self._on_error,
            on_finished=self._on_finished,
        )
        # napari quits workers when its window closes; a quit worker stops listening at once
        # but does not stop the training thread: tell it to stop too.
        worker.aborted.connect(self._runner.cancel)
        return worker

    def _set_running(self, running: bool) -> None:
        for part in (self._mode, self._pairs, self._settings):
            part.enabled = not running
        self._start.text = STOP_TEXT if running else START_TEXT
        self._start.enabled = True

    # -- preview ------------------------------------------------------------------------------
    def _prepare_preview(self, name: str) -> None:
        self._preview_source = self._pairs.first_image()
        self._preview_name = f"{name} preview"
        self._previewed = None
        index = visible_slice(self._viewer, self._preview_source)
        self._request = PreviewRequest(self._preview_every.value, index)
        self._update_request()
        layer = own_layer(self._viewer, self._preview_name, "preview")
        if layer is not None:  # an earlier run's preview: start from a blank one
            layer.data[...] = 0
            layer.refresh()

    def _update_request(self, *_: object) -> None:
        if self._request is None:
            return
        self._request.enabled = self._preview.value
        self._request.every = self._preview_every.value
        if self._preview.value:
            self._preview_layer()  # made now, not in the middle of training (it takes a moment)

    def _follow_slice(self, *_: object) -> None:
        if self._request is not None and self._runner.running and self._alive:
            self._request.index = visible_slice(self._viewer, self._preview_source)

    def _preview_layer(self) -> Labels:
        """Return the preview Labels layer, adding it (over the first image) if needed."""
        source = self._preview_source
        data, channel_axis = image_data(source)
        shape = layout.labels_shape(tuple(data.shape), channel_axis)
        layer = own_layer(self._viewer, self._preview_name, "preview")
        if layer is not None and layer.data.shape == shape:
            return layer
        active = self._viewer.layers.selection.active
        layer = self._viewer.add_labels(
            np.zeros(shape, dtype=np.int32),
            name=unique_name(self._viewer, self._preview_name),
            metadata={METADATA_KEY: "preview"},
            **placement(source),
        )
        self._preview_name = layer.name
        self._previewed = None
        if active is not None:
            self._viewer.layers.selection.active = active  # keep painting where you were
        return layer

    def _show_preview(self, preview: Preview) -> None:
        layer = self._preview_layer()
        if self._previewed is not None and self._previewed != preview.index:
            layer.data[self._previewed] = 0
        layer.data[preview.index] = preview.labels
        layer.metadata["epoch"] = preview.epoch
        layer.metadata["slice"] = preview.index
        self._previewed = preview.index
        layer.refresh()

    # -- job callbacks (GUI thread) -----------------------------------------------------------
    def _on_event(self, event: object) -> tuple[int, int] | None:
        if not self._alive:
            return None
        if isinstance(event, Preview):
            self._show_preview(event)
            return None
        return self._monitor.show(event)

    def _on_result(self, result: TrainResult) -> None:
        self._outcome = "result"
        if not self._alive or result is None:
            return
        closed = self._closed_while_running
        self._monitor.finish(end_status(result, self._config, closed))
        self._summary.value = summary_text(result, self._config.mode, self._config, closed)
        if zero_score(result):
            self._unused_result = result
            self._use_anyway.visible = True
        else:
            SESSION.publish(TrainedModel(result.model, result.description, result.model_path))
        if result.model_path is not None:
            held_back = (
                " It scored 0, so the Predict panel keeps its model." if zero_score(result) else ""
            )
            show_info(
                f"{end_status(result, self._config, closed)} The model is saved in "
                f"{result.model_path}.{held_back}"
            )

    def _hand_over_unused(self, *_: object) -> None:
        """Make the model held back for its score of 0 the Predict panel's model (user's choice)."""
        result = self._unused_result
        if result is None:
            return
        SESSION.publish(TrainedModel(result.model, result.description, result.model_path))
        self._unused_result = None
        self._use_anyway.visible = False
        self._summary.value += "\nThe Predict panel now uses this model, as you chose."

    def _on_error(self, error: BaseException) -> None:
        self._outcome = "error"
        if self._alive:
            self._status.value = error_message(error, "Training")

    def _on_finished(self) -> None:
        self._request = None
        if not self._alive:
            return
        if not self._outcome:
            self._status.value = "Stopped before training began: no model was saved."
        self._set_running(False)
        self._validate()

    # -- public surface (see PanelSurface for the shared part) -----------------------------
    def _input_fields(self) -> dict:
        return self._remembered_fields()  # every input is remembered across sessions

    @property
    def settings_form(self) -> TrainSettings:
        """The settings form (its fields are public attributes; see :class:`TrainSettings`)."""
        return self._settings

    @property
    def pairs(self) -> PairList:
        """The training pairs: ``rows`` (each with ``image``, ``labels_choice``, ``region``)."""
        return self._pairs

    @property
    def status(self) -> str:
        """The status line under the progress bar."""
        return str(self._status.value)

    @property
    def summary(self) -> str:
        """The summary of the last finished run ("" before any)."""
        return str(self._summary.value)

    @property
    def score_note(self) -> str:
        """The note explaining the validation score of the chosen mode."""
        return str(self._score_note.value)

    @property
    def progress(self) -> tuple[int, int]:
        """The progress bar: ``(value, maximum)``."""
        return int(self._progress.value), int(self._progress.max)

    @property
    def plot(self) -> LossPlot:
        """The live plot (its ``epochs``, ``train_loss``, ``score`` are the plotted values)."""
        return self._plot

    @property
    def can_use_anyway(self) -> bool:
        """Whether a model held back for its validation score of 0 may be handed over."""
        return not self._use_anyway.native.isHidden() and self._unused_result is not None

    def use_model_anyway(self) -> None:
        """Press "Use this model for prediction anyway" (hand the held-back model over)."""
        self._use_anyway.native.click()
