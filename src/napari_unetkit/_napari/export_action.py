"""The Predict panel's "Export to bioimage.io..." action for the chosen model.

One button below the panel: it asks where to save, then writes the package
(:func:`napari_unetkit.bioimageio.export_package`) in a :class:`~napari_unetkit._napari.jobs.
JobRunner` worker and reports the file in a notification. The panel only has to expose its
chosen model as ``widget.model`` (a ``ChosenModel`` or ``None``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from magicgui.widgets import Container, PushButton
from napari.utils.notifications import show_info

from napari_unetkit._napari.jobs import Job, JobRunner

EXPORT_TEXT = "Export to bioimage.io..."
EXPORT_TOOLTIP = (
    "Save the chosen model as a bioimage.io package (.bioimageio.zip) for deepImageJ, QuPath, "
    "ilastik or bioimageio.core. It holds the probabilities network; instances need "
    "napari-unetkit, which also loads such packages back."
)
NO_MODEL_TEXT = "Choose or train a model first: there is no model to export."


def ask_package_path(parent: Any, suggested: Path) -> Path | None:
    """Ask where to save the package (a save dialog); ``None`` if the user cancels."""
    from qtpy.QtWidgets import QFileDialog

    name, _ = QFileDialog.getSaveFileName(
        parent, "Export to bioimage.io", str(suggested), "bioimage.io package (*.zip)"
    )
    return Path(name) if name else None


def suggested_path(chosen: Any) -> Path:
    """``<model>.bioimageio.zip`` beside the model file, or in the home folder."""
    from napari_unetkit.bioimageio import PACKAGE_SUFFIX
    from napari_unetkit.checks import MODEL_SUFFIX

    path = getattr(chosen, "path", None)
    if path is None:
        return Path.home() / f"model{PACKAGE_SUFFIX}"
    stem = Path(path).name
    for suffix in (PACKAGE_SUFFIX, ".zip", MODEL_SUFFIX):
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    return Path(path).with_name(stem + PACKAGE_SUFFIX)


def export_job(chosen: Any, out: Path) -> Job:
    """Return a job writing ``chosen`` (model and description) as a package at ``out``."""

    def job(emit: Callable[[Any], None], cancel) -> Path:
        from napari_unetkit.bioimageio import export_package

        return export_package(chosen.model, out, description=chosen.description, cancel=cancel)

    return job


class ExportAction:
    """The export button and its job runner, attached to a panel with a ``model`` property.

    Parameters
    ----------
    panel : magicgui.widgets.Container
        The Predict panel; the button is appended to it.
    """

    def __init__(self, panel: Container) -> None:
        self._panel = panel
        self.runner = JobRunner("Exporting to bioimage.io")
        self.button = PushButton(text=EXPORT_TEXT, tooltip=EXPORT_TOOLTIP)
        self.button.changed.connect(self.export)
        panel.append(self.button)

    def export(self, *_: object) -> None:
        """Ask for a file and export the panel's chosen model there, in a worker."""
        if self.runner.running:
            return
        chosen = self._panel.model
        if chosen is None:
            show_info(NO_MODEL_TEXT)
            return
        out = ask_package_path(self._panel.native, suggested_path(chosen))
        if out is None:
            return
        self.button.enabled = False
        self.runner.start(
            export_job(chosen, out),
            on_result=lambda path: show_info(f"bioimage.io package written to {path}."),
            on_finished=self._finished,
        )

    def _finished(self) -> None:
        with contextlib.suppress(RuntimeError):  # the panel may have been closed meanwhile
            self.button.enabled = True
