"""The "Recent models" list of the Predict panel: find a model again after restarting napari.

Model files are looked for in the Train panel's models folder (the remembered one and the
default ``~/unetkit-models``) and next to the Predict panel's remembered model file. Each is
shown with its date, the name of its training data and its best validation score, read from the
file's description (:func:`napari_unetkit.modelfile.read_description`: the file is validated as
when it is loaded, but no network is built). At most :data:`MAX_RECENT` files are read, when the
panel opens and after each training. Unreadable files are left out.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from magicgui.widgets import ComboBox

from napari_unetkit._napari.settings import load_widget_settings
from napari_unetkit._napari.train_settings import DEFAULT_MODEL_FOLDER
from napari_unetkit.modelfile import SUFFIX, ModelFileError, read_description

logger = logging.getLogger(__name__)

#: At most this many models are offered (the newest files first).
MAX_RECENT = 12
#: Short names of the validation scores, by model mode.
SCORE_NAMES = {"instances": "F1", "classes": "IoU"}


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
            for path in folder.glob(f"*{SUFFIX}"):
                if path.is_file():
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
