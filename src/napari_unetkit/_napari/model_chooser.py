"""The Predict panel's model chooser: which model predicts, and what it is.

:class:`ModelChooser` is the top of the "Predict with U-Net" panel: where the model comes from
(the one trained in this session, :data:`napari_unetkit._napari.session.SESSION`, or a
``.unet`` file or a bioimage.io package exported by napari-unetkit), the "Recent models" list,
the file field and a read-only description of the chosen model. It loads a chosen file (small
files at once, large ones in a worker), keeps the result or the reason it failed, and tells the
panel when the choice changed. Its :attr:`ModelChooser.model` is a :class:`ChosenModel` or
``None``; :meth:`ModelChooser.problem` says why there is none.

The "Recent models" list (:class:`RecentModels`) looks for model files in the Train panel's
models folder (the remembered one and the default ``~/unetkit-models``) and next to the Predict
panel's remembered model file. Each is shown with its date, the name of its training data and
its best validation score, read from the file's description
(:func:`napari_unetkit.modelfile.read_description`: the file is validated as when it is loaded,
but no network is built). At most :data:`MAX_RECENT` files are read, when the panel opens and
after each training. Unreadable files are left out.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from magicgui.widgets import ComboBox, Container, FileEdit, TextEdit
from qtpy.QtWidgets import QSizePolicy

from napari_unetkit._napari.jobs import Job, JobRunner
from napari_unetkit._napari.session import SESSION, TrainedModel
from napari_unetkit._napari.settings import load_widget_settings
from napari_unetkit._napari.train_settings import DEFAULT_MODEL_FOLDER
from napari_unetkit.model import UNet
from napari_unetkit.modelfile import (
    SUFFIX,
    ModelDescription,
    ModelFileError,
    describe_model,
    load_model,
    read_description,
)
from napari_unetkit.postprocess import InstanceSettings
from napari_unetkit.prediction import instance_settings_of

logger = logging.getLogger(__name__)

#: At most this many models are offered (the newest files first).
MAX_RECENT = 12
#: Short names of the validation scores, by model mode.
SCORE_NAMES = {"instances": "F1", "classes": "IoU"}
#: Model files up to this size are loaded in the GUI thread when chosen (well under a second);
#: larger ones are loaded in a worker.
GUI_LOAD_LIMIT_BYTES = 64 * 1024**2

SESSION_SOURCE = "session"
FILE_SOURCE = "file"


@dataclass(frozen=True)
class RecentModel:
    """A model file found on disk, with what tells it apart from the others.

    Attributes
    ----------
    path : pathlib.Path
        The file.
    created : datetime.datetime
        When it was written (local time).
    data_name : str or None
        Name of its training data, if stored.
    score : float or None
        Best validation score, if it was validated.
    score_name : str
        ``"F1"``, ``"IoU"`` or ``"score"``.
    """

    path: Path
    created: datetime.datetime
    data_name: str | None
    score: float | None
    score_name: str

    @property
    def label(self) -> str:
        """One line for the list: ``"cells-2.unet · 2026-12-02 09:14 · cells · F1 0.812"``."""
        parts = [self.path.name, self.created.strftime("%Y-%m-%d %H:%M")]
        if self.data_name:
            parts.append(f"trained on {self.data_name}")
        if self.score is not None:
            parts.append(f"{self.score_name} {self.score:.3f}")
        return " · ".join(parts)


def model_folders() -> list[Path]:
    """Return the folders to look in: remembered Train/Predict folders, then the default."""
    folders = []
    train_path = load_widget_settings("train").get("path")
    model_file = load_widget_settings("predict").get("model_file")
    for value in (train_path, model_file):
        if isinstance(value, str) and value.strip():
            folders.append(Path(value).expanduser().parent)
    folders.append(DEFAULT_MODEL_FOLDER.expanduser())
    unique: list[Path] = []
    for folder in folders:
        if folder not in unique:
            unique.append(folder)
    return unique


def _created(description: dict, path: Path) -> datetime.datetime:
    text = description.get("created")
    if isinstance(text, str):
        try:
            return datetime.datetime.fromisoformat(text).astimezone()
        except ValueError:
            pass
    return datetime.datetime.fromtimestamp(path.stat().st_mtime).astimezone()


def describe_file(path: Path) -> RecentModel:
    """Read what the list shows about one model file (validated; no network is built).

    Raises
    ------
    ModelFileError, OSError
        If the file is not a readable model file.
    """
    description = read_description(path)
    training = description.get("training")
    data_name = training.get("data_name") if isinstance(training, dict) else None
    metrics = description.get("metrics")
    score = metrics.get("best_validation_score") if isinstance(metrics, dict) else None
    return RecentModel(
        path=path,
        created=_created(description, path),
        data_name=data_name if isinstance(data_name, str) else None,
        score=float(score) if isinstance(score, (int, float)) else None,
        score_name=SCORE_NAMES.get(str(description.get("mode")), "score"),
    )


def recent_models(folders: Iterable[Path], limit: int = MAX_RECENT) -> list[RecentModel]:
    """Return the newest readable model files of ``folders``, newest first.

    Parameters
    ----------
    folders : iterable of pathlib.Path
        Where to look (not recursively); missing folders are skipped.
    limit : int
        At most this many models.
    """
    files: dict[Path, float] = {}
    for folder in folders:
        try:
            for path in folder.iterdir():
                if path.suffix.lower() == SUFFIX and path.is_file():
                    files[path.resolve()] = path.stat().st_mtime
        except OSError as error:
            logger.info("Cannot list models in %s: %s", folder, error)
    found = []
    for path in sorted(files, key=files.__getitem__, reverse=True):
        try:
            found.append(describe_file(path))
        except (ModelFileError, OSError) as error:
            logger.info("Leaving %s out of the recent models: %s", path, error)
        if len(found) == limit:
            break
    return found


class RecentModels(ComboBox):
    """A list of recent model files; choosing one calls ``on_choose(path)``.

    Parameters
    ----------
    on_choose : callable
        Called with the chosen file's path.
    folders : callable, optional
        Returns the folders to look in (default :func:`model_folders`).
    """

    def __init__(
        self,
        on_choose: Callable[[Path], None],
        folders: Callable[[], list[Path]] = model_folders,
    ) -> None:
        self._models: list[RecentModel] = []
        super().__init__(
            label="Recent models",
            choices=self._choices,  # a callable: napari's reset_choices keeps the list
            nullable=True,
            value=None,
            tooltip="Models saved in your models folder, newest first: file, date, training "
            "data and best validation score. Choosing one loads it as the model file.",
        )
        self._on_choose = on_choose
        self._folders = folders
        self.refresh()
        self.changed.connect(self._chosen)

    def refresh(self, *_: object) -> None:
        """Look for model files again (the choice itself is reset to none)."""
        self._models = recent_models(self._folders())
        with self.changed.blocked():
            self.reset_choices()
            self.value = None

    def _choices(self, _widget: object) -> list[tuple[str, Path]]:
        return [(model.label, model.path) for model in self._models]

    def _chosen(self, path: Path | None) -> None:
        if path is not None:
            self._on_choose(path)


@dataclass(frozen=True)
class ChosenModel:
    """A model ready to predict with.

    Attributes
    ----------
    model : UNet
        The network (on the CPU, eval mode).
    description : dict
        Its description.
    path : pathlib.Path or None
        Its file, if it has one.
    origin : str
        ``"session"`` or ``"file"``.
    """

    model: UNet
    description: ModelDescription
    path: Path | None
    origin: str

    @property
    def in_channels(self) -> int:
        """Number of channels an input image must have (the network may read some of them)."""
        stored = self.description.get("channels")
        return int(stored["of"]) if stored else self.model.config.in_channels

    @property
    def instance_settings(self) -> InstanceSettings:
        """The instance settings stored with the model."""
        return instance_settings_of(self.description)

    @property
    def mode(self) -> str:
        """``"instances"`` or ``"classes"``."""
        return str(self.description.get("mode"))

    @property
    def label(self) -> str:
        """Where the model comes from, in words (for layer metadata and messages)."""
        if self.origin == SESSION_SOURCE:
            return "trained in this session" + (f" (saved as {self.path})" if self.path else "")
        return str(self.path)


def load_model_file(path: Path) -> ChosenModel:
    """Load a ``.unet`` file onto the CPU.

    Raises
    ------
    ModelFileError, OSError
        With a sentence for the user.
    """
    model, description = load_model(path, device="cpu")
    return ChosenModel(model, description, path, FILE_SOURCE)


def model_from_session(trained: TrainedModel) -> ChosenModel:
    """Wrap the session's latest trained model."""
    return ChosenModel(trained.model, trained.description, trained.path, SESSION_SOURCE)


def file_problem(path: Path | None) -> str | None:
    """Say why ``path`` cannot be a model file before reading it (``None`` when it may be)."""
    if path is None:
        return "Choose a model file (.unet), or train a model with 'Train U-Net'."
    if not path.exists():
        return f"The model file {path} does not exist."
    if not path.is_file():
        return f"{path} is a folder: choose a model file (.unet)."
    return None


def file_key(path: Path) -> tuple[str, int, int]:
    """Identify a file's current contents cheaply (path, size, modification time)."""
    stat = path.stat()
    return str(path), stat.st_size, stat.st_mtime_ns


def describe_choice(chosen: ChosenModel) -> str:
    """Return the text shown in the widget's description box."""
    if chosen.origin == SESSION_SOURCE:
        where = "Trained in this session" + (f", saved as {chosen.path}" if chosen.path else "")
    else:
        where = f"File: {chosen.path.name}"
    return f"{where}\n{describe_model(chosen.description)}"


def load_job(path: Path) -> Job:
    """Return a job loading a model file; it returns a :class:`ChosenModel` or an error text."""

    def job(emit, cancel) -> ChosenModel | str:
        return load_or_error(path)

    return job


def load_or_error(path: Path) -> ChosenModel | str:
    """Load a model file; return the error's sentence instead of raising it."""
    try:
        return load_model_file(path)
    except (ModelFileError, OSError) as error:
        return str(error)


class ModelChooser(Container):
    """The model fields of the Predict panel: source, recent models, file, description.

    Parameters
    ----------
    on_change : callable
        Called in the GUI thread whenever the choice or the loading state of the file changed
        (the panel checks its inputs again).

    Call :meth:`start` once the panel is built, and :meth:`stop` when it is deleted.
    """

    def __init__(self, on_change: Callable[[], object]) -> None:
        super().__init__(labels=True)
        self._on_change = on_change
        self.loader = JobRunner("Loading model")
        self._file_key: tuple | None = None
        self._file_model: ChosenModel | None = None
        self._file_error: str | None = None
        self._alive = True  # False once the panel is gone
        self.source = ComboBox(
            label="Model",
            choices=[
                ("trained in this session", SESSION_SOURCE),
                ("model file", FILE_SOURCE),
            ],
            value=SESSION_SOURCE if SESSION.latest is not None else FILE_SOURCE,
            tooltip="Use the model the 'Train U-Net' widget trained last, or a saved .unet file "
            "(or a bioimage.io package exported by napari-unetkit).",
        )
        self.file = FileEdit(label="Model file", mode="r", filter="*.unet *.zip", nullable=True)
        self.recent = RecentModels(on_choose=lambda path: setattr(self.file, "value", path))
        self.about = TextEdit(label="About the model", value="")
        self.about.read_only = True
        self.about.native.setMaximumHeight(130)
        # Not "expanding" (a text box's default): the row would take the dock's spare height.
        self.about.native.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Maximum)
        self.extend([self.source, self.recent, self.file, self.about])

    def start(self) -> None:
        """Drop a remembered file that is gone, listen to the fields, load the chosen file."""
        self._forget_missing_file()
        self.file.changed.connect(self._on_file_chosen)
        self.source.changed.connect(self._on_change)
        SESSION.changed.connect(self._on_session_model)
        self._load_file()

    def stop(self) -> None:
        """Stop loading and listening (the panel was deleted)."""
        self._alive = False
        self.loader.cancel()
        with contextlib.suppress(ValueError, RuntimeError):
            SESSION.changed.disconnect(self._on_session_model)

    @property
    def model(self) -> ChosenModel | None:
        """The selected model, or ``None`` if there is none (yet)."""
        if self.source.value == SESSION_SOURCE:
            trained = SESSION.latest
            return None if trained is None else model_from_session(trained)
        return self._file_model

    def problem(self) -> str | None:
        """Say why there is no model to predict with (``None`` when there is one)."""
        if self.source.value == SESSION_SOURCE:
            if SESSION.latest is None:
                return (
                    "No model has been trained in this session yet: train one with 'Train "
                    "U-Net', or choose 'model file' and a .unet file."
                )
            return None
        if self._file_error is not None:
            return self._file_error
        if self._file_model is None:
            return "Loading the model file..."
        return None

    def update(self) -> ChosenModel | None:
        """Show the file field only for a file, describe the chosen model; return it."""
        self.file.visible = self.source.value == FILE_SOURCE
        chosen = self.model
        self.about.value = describe_choice(chosen) if chosen is not None else ""
        return chosen

    def _forget_missing_file(self) -> None:
        """Drop a remembered model file that no longer exists."""
        path = self.file.value
        if path is not None and not path.is_file():
            self.file.value = None

    def _on_session_model(self, trained: TrainedModel) -> None:
        """Select the model just trained (a running job keeps the model it started with)."""
        self.recent.refresh()
        self.source.value = SESSION_SOURCE
        self._on_change()

    def _on_file_chosen(self, *_: object) -> None:
        if self.file.value is not None:
            self.source.value = FILE_SOURCE
        self._load_file()

    def _load_file(self, *_: object) -> None:
        """Load the chosen model file unless it is loaded already, then report the change."""
        if not self._alive:
            return
        path = self.file.value
        problem = file_problem(path)
        key = None if problem else file_key(path)
        if key is None or key != self._file_key:
            self._file_key, self._file_model, self._file_error = key, None, problem
        if key is not None and self._file_model is None and self._file_error is None:
            self._start_loading(path, key)
        self._on_change()

    def _start_loading(self, path: Path, key: tuple) -> None:
        """Load small files now; large ones in a worker, one at a time."""
        if key[1] <= GUI_LOAD_LIMIT_BYTES:
            self._store_loaded(key, load_or_error(path))
        elif not self.loader.running:
            self.loader.start(
                load_job(path),
                on_result=lambda loaded: self._store_loaded(key, loaded),
                on_finished=self._load_file,  # the user may have chosen another file meanwhile
            )

    def _store_loaded(self, key: tuple, loaded: ChosenModel | str) -> None:
        if key != self._file_key:
            return  # another file was chosen while this one loaded
        if isinstance(loaded, str):
            self._file_model, self._file_error = None, loaded
        else:
            self._file_model, self._file_error = loaded, None
