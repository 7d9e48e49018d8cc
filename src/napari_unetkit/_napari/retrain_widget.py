"""The "Correct and retrain" panel: predict, correct, add to the training set, retrain, next.

The panel, top to bottom:

1. **Project**: the one folder the loop lives in (chosen once with the folder dialog, remembered
   across napari restarts): the training set (copies of corrected images, labels and checked
   regions) and every model version (:class:`napari_unetkit.project.Project`).
2. **Training set**: its entries; selected ones can be removed.
3. **Predict**: the current model (the newest version; any earlier one can be chosen again, a
   model file of the models folder can be the starting point, with none the first round trains
   from scratch) and the image. "Predict" predicts the visible slice; "Next" first moves to
   the next slice of the stack (or the next image layer).
4. **Correct**: the Labels layer holding the corrected prediction (or cells painted by hand)
   and, optionally, the region the user checked (unchecked areas are ignored by the loss).
   "Add to training set" copies the visible slice of the image, labels and region into the
   project; the user's layers are never changed. Below it, the panel's messages.
5. **Retrain**: fine-tunes the current version on the whole set for a short budget, with the
   Train panel's progress bar, status line and live plot
   (:class:`~napari_unetkit._napari.train_monitor.TrainingMonitor`); Stop keeps the best model
   so far (Stop before the first step saves nothing). The best model becomes the project's
   next version and the current one, and the visible slice is predicted again with it.

Every prediction is a new Labels layer named ``"<image> · <version>"`` whose metadata says which
model version made it (:data:`~napari_unetkit._napari.layers.METADATA_KEY` ``"prediction"``,
``"model_version"``, ``"model"``, ``"project"``); slices of a stack predicted by the same version
go into the same layer, as long as that slice of it is still empty.
"""

from __future__ import annotations

import contextlib
import datetime
from pathlib import Path

import napari.viewer
import numpy as np
from magicgui.widgets import ComboBox, Container, FileEdit, Label, PushButton, Select, SpinBox
from napari.layers import Image, Labels, Layer, Shapes
from napari.qt.threading import GeneratorWorker
from napari.utils.notifications import show_info

from napari_unetkit import layout
from napari_unetkit._napari.dock_parts import UndockWatch, scroll_body, wrapping_label
from napari_unetkit._napari.jobs import JobRunner, error_message
from napari_unetkit._napari.layers import (
    METADATA_KEY,
    image_data,
    image_dtype_problem,
    made_by_plugin,
    placement,
    unique_name,
)
from napari_unetkit._napari.model_chooser import (
    ChosenModel,
    RecentModel,
    file_key,
    load_model_file,
    model_folders,
    recent_models,
)
from napari_unetkit._napari.predict_widget import (
    PredictSettings,
    RunContext,
    image_problems,
    prediction_job,
    visible_slice,
)
from napari_unetkit._napari.retrain_job import Retrained, retraining_job
from napari_unetkit._napari.retrain_parts import (
    empty_or_missing,
    entry_label,
    fits,
    image_shape,
    next_index,
    round_config,
    slice_words,
    take_correction,
    version_label,
)
from napari_unetkit._napari.session import SESSION, TrainedModel
from napari_unetkit._napari.settings import remember
from napari_unetkit._napari.torch_guard import prepare_torch_for_napari
from napari_unetkit._napari.train_monitor import TrainingMonitor
from napari_unetkit._napari.train_widget import end_status, summary_text
from napari_unetkit.modelfile import ModelFileError
from napari_unetkit.prediction import PredictionResult
from napari_unetkit.progress import JobStarted, SliceProgress
from napari_unetkit.project import ModelVersion, Project, ProjectError
from napari_unetkit.training import TrainConfig

RETRAIN_TEXT, STOP_TEXT, STOPPING_TEXT = "Retrain", "Stop", "Stopping…"
#: The "Current model" choice that trains the next round from scratch.
SCRATCH = "scratch"
#: Default budget of one round: short, so that the loop stays a loop.
DEFAULT_MINUTES = 2
#: Result kind of the panel's prediction layers in ``layer.metadata[METADATA_KEY]``.
PREDICTION_KIND = "prediction"


class RetrainWidget(Container):
    """Correct predictions, add them to a project's training set, retrain, go on to the next.

    Parameters
    ----------
    viewer : napari.viewer.Viewer
        The viewer whose layers are read (never changed) and where predictions are added.

    Attributes
    ----------
    base_config : TrainConfig
        The settings every round starts from (the panel sets the budget and the data name).
        With no model to fine-tune, its network settings make the first model.
    """

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(labels=False)
        prepare_torch_for_napari()
        self._viewer = viewer
        self._trainer = JobRunner("Retraining")
        self._predictor = JobRunner("Prediction")
        self._project: Project | None = None
        self._versions: list = []
        self._outside: list[RecentModel] = recent_models(model_folders())
        self._loaded: dict[tuple, ChosenModel] = {}
        self._alive = True
        self._outcome: Retrained | str | None = None
        self._closed_while_running = False
        self._config: TrainConfig | None = None
        self.base_config = TrainConfig()
        self._make_widgets()
        self._connect()
        remember(
            "retrain",
            {"project": self._folder, "budget": self._budget, "unit": self._unit},
        )
        self._open_chosen_folder()

    # -- construction -------------------------------------------------------------------------
    def _make_widgets(self) -> None:
        self._folder = FileEdit(label="Project folder", mode="d", nullable=True)
        self._folder.tooltip = (
            "The folder that holds this loop's training set and model versions. Choose an "
            "empty folder (or make one in the dialog) to start a project; it is remembered."
        )
        self._create = PushButton(text="Create project here", visible=False)
        self._about = wrapping_label()
        self._entries = Select(choices=self._entry_choices)
        self._entries.native.setMaximumHeight(110)
        self._entries.tooltip = "The corrected slices in the project. Select some to remove them."
        self._remove = PushButton(text="Remove selected")
        self._remove.tooltip = "Take the selected slices out of the training set (files deleted)."
        self._model = ComboBox(label="Current model", choices=self._model_choices)
        self._model.tooltip = (
            "The model that predicts and that Retrain fine-tunes. Retrain makes a new version "
            "and chooses it; earlier versions stay in the project and can be chosen again."
        )
        self._image = ComboBox(label="Image", choices=self._image_choices)
        self._image.tooltip = "The image you correct; for a stack, the slice you look at."
        self._labels = ComboBox(
            label="Corrected labels", choices=self._labels_choices, nullable=True
        )
        self._labels.tooltip = (
            "The Labels layer you corrected (usually the panel's last prediction, fixed with "
            "napari's paint, erase and fill tools): each cell its own number, 0 = background."
        )
        self._region = ComboBox(
            label="Checked region", choices=self._region_choices, nullable=True, value=None
        )
        self._region.tooltip = (
            "Optional: a Shapes layer (rectangles, polygons) or Labels mask around the part you "
            "checked. Outside it nothing is learned. Empty: the whole slice is correct."
        )
        self._add = PushButton(text="Add to training set")
        self._add.tooltip = "Copy the visible slice of the image, labels and region to the project."
        self._budget = SpinBox(label="Retrain for", value=DEFAULT_MINUTES, min=1, max=100_000)
        self._unit = ComboBox(choices=("minutes", "epochs"), value="minutes")
        self._retrain = PushButton(text=RETRAIN_TEXT)
        self._retrain.tooltip = (
            "Fine-tune the current model on the whole training set (from scratch if there is "
            "none), save the best model as a new version and predict the visible slice with it."
        )
        self._monitor = TrainingMonitor(self._viewer.theme)
        self._summary = wrapping_label()
        self._predict = PushButton(text="Predict")
        self._predict.tooltip = "Predict the visible slice with the current model (a new layer)."
        self._next = PushButton(text="Next")
        self._next.tooltip = (
            "Go to the next slice of the stack (or the next image layer) and predict it."
        )
        self._message = wrapping_label()
        self._body = Container(labels=False, widgets=self._sections())
        self.append(self._body)
        self.scroll_area = scroll_body(self, self._body)

    def _sections(self) -> list:
        def section(title: str, *widgets, labels: bool = True) -> list:
            return [Label(value=f"<b>{title}</b>"), Container(labels=labels, widgets=widgets)]

        budget_row = Container(
            layout="horizontal", labels=False, widgets=[self._budget, self._unit]
        )
        budget_row.margins = (0, 0, 0, 0)
        budget_row.label = "Retrain for"
        buttons = Container(layout="horizontal", labels=False, widgets=[self._predict, self._next])
        buttons.margins = (0, 0, 0, 0)
        return [
            *section("Project", self._folder, self._create, self._about),
            *section("Training set", self._entries, self._remove, labels=False),
            *section("Predict", self._model, self._image, buttons),
            *section("Correct", self._labels, self._region, self._add),
            self._message,
            *section("Retrain", budget_row, self._retrain),
            self._monitor,
            self._summary,
        ]

    def _connect(self) -> None:
        self._folder.changed.connect(self._open_chosen_folder)
        self._create.changed.connect(self.create_project)
        self._remove.changed.connect(self._remove_selected)
        self._image.changed.connect(self._match_labels)
        self._add.changed.connect(self.add_to_training_set)
        self._retrain.changed.connect(self._retrain_or_stop)
        self._predict.changed.connect(self.predict)
        self._next.changed.connect(self.next)
        SESSION.changed.connect(self._on_session_model)
        self.native.destroyed.connect(self._closed)
        self._undock_watch = UndockWatch(self.native, self._stop_if_running)

    def _closed(self, *_: object) -> None:
        """Stop the jobs and touch no widget again: the dock (or the whole viewer) is gone."""
        self._alive = False
        self._trainer.cancel()
        self._predictor.cancel()
        with contextlib.suppress(ValueError, RuntimeError):
            SESSION.changed.disconnect(self._on_session_model)

    def _on_session_model(self, *_: object) -> None:
        """Offer the file of a model just trained (e.g. in the Train panel) as a starting point."""
        if self._alive:
            self._outside = recent_models(model_folders())
            self._show_project(None if self._project is not None else self._about.value)

    def _stop_if_running(self) -> None:
        if self._alive and self._trainer.running:
            self._closed_while_running = True
            self.stop()

    # -- choices ------------------------------------------------------------------------------
    def _image_choices(self, _widget: object) -> list[tuple[str, Image]]:
        return [
            (layer.name, layer)
            for layer in self._viewer.layers
            if isinstance(layer, Image) and not made_by_plugin(layer)
        ]

    def _labels_choices(self, _widget: object) -> list[tuple[str, Labels]]:
        return [(layer.name, layer) for layer in self._viewer.layers if isinstance(layer, Labels)]

    def _region_choices(self, _widget: object) -> list[tuple[str, Layer]]:
        return [
            (layer.name, layer)
            for layer in self._viewer.layers
            if isinstance(layer, (Shapes, Labels)) and not made_by_plugin(layer)
        ]

    def _entry_choices(self, _widget: object) -> list[tuple[str, object]]:
        return [(entry_label(entry), entry.id) for entry in self.entries]

    def _model_choices(self, _widget: object) -> list[tuple[str, object]]:
        newest_first = [version for version in reversed(self._versions) if version.exists]
        choices = [(version_label(version), version.path) for version in newest_first]
        choices.append(("none: train from scratch", SCRATCH))
        inside = {version.path.resolve() for version in self._versions}
        choices.extend(
            (f"file: {model.label}", model.path)
            for model in self._outside
            if model.path.resolve() not in inside
        )
        return choices

    def reset_choices(self, *_: object) -> None:
        """Refresh the layer lists (napari calls this when layers change)."""
        if self._alive:
            super().reset_choices()

    def _match_labels(self, *_: object) -> None:
        """After an image is chosen, choose labels that fit it if the chosen ones do not."""
        image, labels = self._image.value, self._labels.value
        if image is None or (labels is not None and fits(image, labels)):
            return
        fitting = [layer for _, layer in self._labels_choices(None) if fits(image, layer)]
        if fitting:
            self._labels.value = fitting[-1]

    # -- the project --------------------------------------------------------------------------
    @property
    def project(self) -> Project | None:
        """The open project, or ``None``."""
        return self._project

    @property
    def entries(self) -> list:
        """The project's training set (empty without a project or when it cannot be read)."""
        if self._project is None:
            return []
        try:
            return list(self._project.entries())
        except (ProjectError, OSError):
            return []

    @property
    def versions(self) -> list:
        """The project's model versions, oldest first (as last read)."""
        return list(self._versions)

    @property
    def message(self) -> str:
        """The panel's last message (what was done, or why not)."""
        return self._message.value

    def _say(self, text: str) -> None:
        self._message.value = text

    def open_project(self, folder: Path | str) -> bool:
        """Choose ``folder`` as the project folder (as the folder dialog does); return success."""
        self._folder.value = Path(folder)
        return self._project is not None

    def _open_chosen_folder(self, *_: object) -> None:
        """Open the chosen folder as a project; offer to create one where there is none."""
        folder = self._folder.value
        self._project = None
        self._create.visible = False
        if folder is None or not str(folder).strip() or str(folder) == ".":
            self._show_project("Choose a project folder: an empty folder starts a new project.")
            return
        folder = Path(folder).expanduser()
        if folder.is_file():
            self._show_project(f"{folder} is a file: choose a folder.")
            return
        try:
            self._project = Project.open(folder)
        except ProjectError as error:
            self._create.visible = empty_or_missing(folder)
            other_files = (
                ""
                if self._create.visible or not folder.is_dir()
                else (" It holds other files: choose an empty folder for a new project.")
            )
            self._show_project(f"{error}{other_files}", newest=True)
            return
        self._show_project(None, newest=True)

    def create_project(self, *_: object) -> bool:
        """Create a project in the chosen folder (made if missing) and open it; return success."""
        folder = self._folder.value
        if folder is None:
            self._say("Choose a project folder first.")
            return False
        try:
            self._project = Project.create(Path(folder).expanduser())
        except ProjectError as error:
            self._say(str(error))
            return False
        self._create.visible = False
        self._show_project(None, newest=True)
        return True

    def _show_project(self, problem: str | None, newest: bool = False) -> None:
        """Re-read the versions, refresh the lists and say what the project holds.

        Parameters
        ----------
        problem : str or None
            Shown instead of the project's summary.
        newest : bool
            Make the newest version the current model (a project was opened); otherwise the
            current choice stays if it still exists.
        """
        self._versions = []
        if self._project is not None:
            try:
                self._versions = list(self._project.models())
            except ProjectError as error:
                problem = str(error)
        previous = self._model.value if self._model.choices else None
        with self._model.changed.blocked():
            self.reset_choices()
            values = [value for _, value in self._model_choices(None)]
            if newest or previous not in values:
                self._model.value = values[0]  # the newest version, or "from scratch"
        self._about.value = problem if problem is not None else self._project_summary()

    def _project_summary(self) -> str:
        entries, count = self.entries, len(self._versions)
        versions = f"{count} model version{'s' if count != 1 else ''}"
        return (
            f"{self._project.folder}: {len(entries)} corrected slice"
            f"{'s' if len(entries) != 1 else ''} in the training set, {versions}."
        )

    # -- the model ----------------------------------------------------------------------------
    @property
    def current_model(self) -> Path | None:
        """The model file that predicts and that Retrain fine-tunes (``None``: none yet)."""
        value = self._model.value
        return None if value in (None, SCRATCH) else Path(value)

    @current_model.setter
    def current_model(self, path: Path | None) -> None:
        self._model.value = SCRATCH if path is None else Path(path)

    def _version_of(self, path: Path | None) -> ModelVersion | None:
        """Return the project version whose file is ``path`` (``None``: not a version)."""
        if path is None:
            return None
        for version in self._versions:
            if version.path.resolve() == Path(path).resolve():
                return version
        return None

    def version_name(self, path: Path | None) -> str:
        """Return a model's name in layer names: its project version, or its file name."""
        if path is None:
            return "no model"
        version = self._version_of(path)
        return version.name if version is not None else Path(path).stem

    def _chosen_model(self) -> ChosenModel:
        """Load the current model (once per file contents).

        Raises
        ------
        ModelFileError, OSError
            If the file cannot be loaded.
        """
        path = self.current_model
        key = file_key(path)
        if key not in self._loaded:
            self._loaded = {key: load_model_file(path)}
        return self._loaded[key]

    # -- add ----------------------------------------------------------------------------------
    def choose(
        self, image: Image | None = None, labels: Labels | None = None, region: Layer | None = None
    ) -> None:
        """Choose the image, corrected labels and checked region (``None`` leaves one as it is).

        To choose no region, set :attr:`region` to ``None``.
        """
        self.reset_choices()
        if image is not None:
            self._image.value = image
        if labels is not None:
            self._labels.value = labels
        if region is not None:
            self._region.value = region

    @property
    def image(self) -> Image | None:
        """The chosen image layer (what Add copies a slice of, and what Predict and Next use)."""
        return self._image.value

    @property
    def labels(self) -> Labels | None:
        """The chosen Labels layer with the corrections (after a prediction: that layer)."""
        return self._labels.value

    @property
    def region(self) -> Layer | None:
        """The checked-region layer, or ``None`` (the whole slice is correct)."""
        return self._region.value

    @region.setter
    def region(self, layer: Layer | None) -> None:
        self._region.value = layer

    def _slice_of(self, image: Image) -> tuple[int, ...] | None:
        if self._viewer.dims.ndisplay == 3 and layout.n_slices(*image_shape(image)) > 1:
            return None
        return visible_slice(self._viewer, image)

    def add_to_training_set(self, *_: object):
        """Copy the visible slice of the chosen image, labels and region into the project.

        Returns
        -------
        object or None
            The project's new entry, or ``None`` (the message says why).
        """
        image, labels, region = self._image.value, self._labels.value, self._region.value
        problem = self._add_problem(image, labels)
        if problem is not None:
            self._say(problem)
            return None
        index = self._slice_of(image)
        if index is None:
            self._say(
                f"The viewer shows no slice of {image.name!r}: switch to 2D and move onto it."
            )
            return None
        try:
            correction = take_correction(image, labels, region, index)
            entry = self._project.add(
                correction.image,
                correction.labels,
                region=correction.region,
                source=f"{image.name}{slice_words(index)}",
                channel_axis=correction.channel_axis,
            )
        except ValueError as error:  # ProjectError included: the sentence says what to do
            self._say(str(error))
            return None
        self._show_project(None)
        self._say(
            f"Added {image.name}{slice_words(index)} with {labels.name!r} to the training set "
            f"({len(self.entries)} in all). Correct more, or Retrain."
        )
        return entry

    def _add_problem(self, image: Image | None, labels: Layer | None) -> str | None:
        if self._project is None:
            return "Open or create a project first (Project folder)."
        if image is None:
            return "Choose the image you corrected."
        if labels is None:
            return "Choose the Labels layer with your corrections (add one and paint cells)."
        return image_dtype_problem(image)

    def _remove_selected(self, *_: object) -> None:
        self.remove_entries(self._entries.value)

    def remove_entries(self, ids) -> None:
        """Take the entries with these ids out of the training set."""
        if self._project is None or not ids:
            self._say("Select the slices to remove in the training set list.")
            return
        try:
            for entry_id in list(ids):
                self._project.remove(entry_id)
        except ProjectError as error:
            self._say(str(error))
        else:
            count = len(list(ids))
            self._say(f"Removed {count} slice{'s' if count != 1 else ''} from the training set.")
        self._show_project(None)

    # -- retrain ------------------------------------------------------------------------------
    def set_budget(self, amount: int, unit: str = "minutes") -> None:
        """Set the budget of a round: ``amount`` ``"minutes"`` or ``"epochs"``."""
        self._unit.value = unit
        self._budget.value = amount

    @property
    def trainer(self) -> JobRunner:
        """The retraining job runner (its ``worker`` is the running round, if any)."""
        return self._trainer

    @property
    def predictor(self) -> JobRunner:
        """The prediction job runner (its ``worker`` is the running prediction, if any)."""
        return self._predictor

    @property
    def summary(self) -> str:
        """What the last round did (epochs, time, best score, the new version)."""
        return self._summary.value

    @property
    def status(self) -> str:
        """The training status line."""
        return self._monitor.status.value

    @property
    def epochs_shown(self) -> int:
        """How many epochs of the running (or last) round the live plot shows."""
        return len(self._monitor.plot.epochs)

    def _retrain_or_stop(self, *_: object) -> None:
        if self._trainer.running:
            self.stop()
        else:
            self.retrain()

    def stop(self) -> None:
        """Stop the round after the current step; the best model so far becomes a version."""
        self._trainer.cancel()
        self._retrain.text = STOPPING_TEXT
        self._retrain.enabled = False

    def retrain(self) -> GeneratorWorker | None:
        """Start a round of retraining in a worker; return it (``None``: the message says why)."""
        if self._trainer.running:
            return None
        if self._project is None:
            self._say("Open or create a project first (Project folder).")
            return None
        try:
            count = len(self._project.entries())
        except ProjectError as error:  # the folder was deleted, or its manifest damaged
            self._say(str(error))
            return None
        if not count:
            self._say("The training set is empty: correct a prediction (or paint cells) and Add.")
            return None
        init_from = self.current_model
        if init_from is not None and not init_from.is_file():
            self._say(f"The model file {init_from} is gone: choose another model.")
            return None
        name = self._project.folder.name
        try:
            config = round_config(self.base_config, self._budget.value, self._unit.value, name)
        except ValueError as error:
            self._say(f"Settings: {error}")
            return None
        self._config, self._outcome, self._closed_while_running = config, None, False
        self._monitor.begin(config)
        self._summary.value = ""
        start = (
            "Fine-tuning " + self.version_name(init_from) if init_from else "Training from scratch"
        )
        self._say(f"{start} on {count} corrected slice{'s' if count != 1 else ''}…")
        self._set_running(True)
        parent = self._version_of(init_from)
        worker = self._trainer.start(
            retraining_job(
                self._project, config, init_from, None if parent is None else parent.version
            ),
            on_event=self._on_event,
            on_result=self._on_retrained,
            on_error=self._on_error,
            on_finished=self._on_finished,
        )
        worker.aborted.connect(self._trainer.cancel)  # napari quit the worker: stop training
        return worker

    def _set_running(self, running: bool) -> None:
        for part in (self._folder, self._create, self._remove, self._model, self._add):
            part.enabled = not running
        self._retrain.text = STOP_TEXT if running else RETRAIN_TEXT
        self._retrain.enabled = True

    def _on_event(self, event: object) -> tuple[int, int] | None:
        return self._monitor.show(event) if self._alive else None

    def _on_retrained(self, retrained: Retrained) -> None:
        self._outcome = retrained
        if not self._alive or retrained is None:
            return
        result, closed = retrained.result, self._closed_while_running
        self._monitor.finish(end_status(result, self._config, closed))
        self._show_project(None)
        self.current_model = retrained.version.path
        name = retrained.version.name
        lines = summary_text(result, self._config.mode, self._config, closed).splitlines()
        lines = [line for line in lines if "Predict panel" not in line]  # it always gets it
        self._summary.value = "\n".join([*lines, f"It is the project's model {name}."])
        SESSION.publish(TrainedModel(result.model, result.description, retrained.version.path))
        show_info(f"{end_status(result, self._config, closed)} New model version: {name}.")

    def _on_error(self, error: BaseException) -> None:
        self._outcome = error_message(error, "Retraining")
        if self._alive:
            self._monitor.status.value = self._outcome
            self._say(self._outcome)

    def _on_finished(self) -> None:
        if not self._alive:
            return
        self._set_running(False)
        if self._outcome is None:
            self._monitor.status.value = "Stopped before training began: nothing was saved."
            self._say("Stopped before the first step: no new model version.")
        elif isinstance(self._outcome, Retrained) and not self._closed_while_running:
            self.predict()

    # -- predict / next -----------------------------------------------------------------------
    def predict(self, *_: object) -> GeneratorWorker | None:
        """Predict the visible slice of the image with the current model into a Labels layer.

        Returns the worker, or ``None`` (the message says why).
        """
        image = self._image.value
        if self._predictor.running:
            self._say("A prediction is running: wait for it to finish.")
            return None
        problem = self._predict_problem(image)
        index = None if problem else self._slice_of(image)
        if problem is None and index is None:
            problem = f"The viewer shows no slice of {image.name!r}: switch to 2D and move onto it."
        chosen = None
        if problem is None:
            try:
                chosen = self._chosen_model()
            except (ModelFileError, OSError) as error:
                problem = str(error)
        if problem is None:
            problem = next((found.message for found in image_problems(image, chosen)), None)
        if problem is not None:
            self._say(problem)
            return None
        stack = layout.n_slices(*image_shape(image)) > 1
        settings = PredictSettings(
            output="instances" if chosen.mode == "instances" else "semantic",
            slices=[index] if stack else None,
        )
        context = RunContext(image=image, model=chosen, settings=settings)
        data, channel_axis = image_data(image)
        version = self.version_name(self.current_model)
        self._say(f"Predicting {image.name}{slice_words(index)} with {version}…")
        return self._predictor.start(
            prediction_job(chosen, data, channel_axis, settings),
            on_event=lambda event: self._on_prediction_event(event, context),
            on_result=lambda result: self._show_prediction(result, context, index, version),
        )

    def _predict_problem(self, image: Image | None) -> str | None:
        if image is None:
            return "Choose an image layer (open an image, or File > Open Sample > U-Net Kit)."
        if self.current_model is None:
            return (
                "There is no model yet: paint some cells in a Labels layer, Add them to the "
                "training set and Retrain (the first round trains from scratch)."
            )
        return image_dtype_problem(image)

    @staticmethod
    def _on_prediction_event(
        event: JobStarted | SliceProgress, context: RunContext
    ) -> tuple[int, int] | None:
        """Note the device; return the progress in hundredths of slices for the job runner."""
        if isinstance(event, JobStarted):
            context.device = event.device
            return None
        return round(100 * event.done), 100 * event.total

    def _show_prediction(
        self, result: PredictionResult, context: RunContext, index: tuple[int, ...], version: str
    ) -> None:
        if not self._alive or not isinstance(result, PredictionResult) or result.labels is None:
            return
        layer = self._prediction_layer(context, index, version, result.labels)
        count = len(np.unique(result.labels[index] if index else result.labels)) - 1
        self.choose(labels=layer)
        self._viewer.layers.selection.active = layer  # ready to correct with the paint tools
        self._say(
            f"{layer.name!r}: {context.image.name}{slice_words(index)} predicted by {version} "
            f"({count} object{'s' if count != 1 else ''}). Correct it, then Add to training set."
        )

    def _prediction_layer(
        self, context: RunContext, index: tuple[int, ...], version: str, labels: np.ndarray
    ) -> Labels:
        """Put the predicted slice into this version's layer of the image, or a new layer.

        An existing layer is used only if it is the panel's prediction of the same image by
        the same model and its plane ``index`` is still empty (never written over).
        """
        image = context.image
        model_path = str(context.model.path)
        for layer in self._viewer.layers:
            meta = layer.metadata
            if (
                isinstance(layer, Labels)
                and index
                and meta.get(METADATA_KEY) == PREDICTION_KIND
                and meta.get("model") == model_path
                and meta.get("image") == image.name
                and layer.data.shape == labels.shape
                and list(index) not in meta.get("slices", [])
                and not np.any(layer.data[index])
            ):
                layer.data[index] = labels[index]
                meta["slices"] = [*meta.get("slices", []), list(index)]
                layer.refresh()
                return layer
        metadata = {
            **context.layer_metadata(),
            METADATA_KEY: PREDICTION_KIND,
            "model": model_path,
            "model_version": version,
            "project": str(self._project.folder) if self._project is not None else None,
            "slices": [list(index)] if index else [],
            "predicted": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        }
        return self._viewer.add_labels(
            labels,
            name=unique_name(self._viewer, f"{image.name} · {version}"),
            metadata=metadata,
            **placement(image),
        )

    def next(self, *_: object) -> GeneratorWorker | None:
        """Move to the next slice of the stack (or the next image layer) and predict it.

        Returns the prediction worker, or ``None`` (the message says why).
        """
        image = self._image.value
        if image is None:
            self._say("Choose an image layer first.")
            return None
        index = self._slice_of(image)
        sizes = layout.slice_index_shape(*image_shape(image))
        if index is None:
            self._say(f"The viewer shows no slice of {image.name!r}: switch to 2D, move onto it.")
            return None
        following = next_index(sizes, index)
        if following is not None:
            self._show_slice(image, following)
        else:
            layers = [layer for _, layer in self._image_choices(None)]
            later = layers[layers.index(image) + 1 :] if image in layers else []
            if not later:
                last = "the last slice of the last image" if sizes else "the last image"
                self._say(f"{image.name!r} is {last}: open more images to go on.")
                return None
            self._show_only(later[0])
            self._image.value = later[0]
        return self.predict()

    def _show_slice(self, image: Image, index: tuple[int, ...]) -> None:
        """Move the viewer's sliders to slice ``index`` of ``image``."""
        offset = self._viewer.dims.ndim - image.ndim
        for axis, position in enumerate(index):
            world = image.translate[axis] + position * image.scale[axis]
            self._viewer.dims.set_point(offset + axis, world)

    def _show_only(self, image: Image) -> None:
        """Show ``image`` instead of the other images, and hide predictions of other images."""
        for _, layer in self._image_choices(None):
            layer.visible = layer is image
        for layer in self._viewer.layers:
            meta = layer.metadata
            if meta.get(METADATA_KEY) == PREDICTION_KIND and meta.get("image") != image.name:
                layer.visible = False
