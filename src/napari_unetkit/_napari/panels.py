"""The manifest's entry points of the panels that need PyTorch: feedback first, then the panel.

napari imports a widget's module when its menu entry is clicked, before any code of the plugin
runs. The Train, Predict and Correct-and-retrain panels need PyTorch, whose first import takes
seconds (about 9 s from a cold disk), and napari would show nothing meanwhile. The manifest
therefore names the light classes below: napari calls one with the viewer, it shows a wait
cursor and a status message, and only then imports and builds the real panel, which it
returns in its place (``__new__`` returns the real panel, so napari docks exactly that
widget). This module must not import torch or the heavy widget modules.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import napari.viewer
from magicgui.widgets import Container, Widget
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QApplication

#: Shown in napari's status bar while PyTorch loads.
LOADING_MESSAGE = "U-Net Kit: loading PyTorch for the {title} panel (the first time takes a while)…"


def torch_loaded() -> bool:
    """Whether PyTorch is imported already (a panel then opens at once)."""
    return "torch" in sys.modules


@contextmanager
def loading_feedback(viewer: napari.viewer.Viewer, title: str, needed: bool) -> Iterator[None]:
    """Show a wait cursor and a status message in ``viewer`` while the body runs.

    Parameters
    ----------
    viewer : napari.viewer.Viewer
        Whose status bar shows the message.
    title : str
        The panel's name, for the message.
    needed : bool
        Whether there is something slow to wait for; without it nothing is shown.
    """
    if not needed:
        yield
        return
    viewer.status = LOADING_MESSAGE.format(title=title)
    QApplication.setOverrideCursor(Qt.CursorShape.WaitCursor)
    QApplication.processEvents()  # paint the message before the import blocks the GUI thread
    try:
        yield
    finally:
        QApplication.restoreOverrideCursor()
        viewer.status = "Ready"


def open_panel(viewer: napari.viewer.Viewer, module: str, name: str, title: str) -> Widget:
    """Import ``napari_unetkit._napari.<module>`` with feedback and return ``name(viewer)``."""
    with loading_feedback(viewer, title, needed=not torch_loaded()):
        panel = getattr(importlib.import_module(f"napari_unetkit._napari.{module}"), name)
        return panel(viewer)


class TrainPanel(Container):
    """Entry point of "Train U-Net": returns a :class:`~.train_widget.TrainWidget`."""

    def __new__(cls, viewer: napari.viewer.Viewer) -> Widget:
        return open_panel(viewer, "train_widget", "TrainWidget", "Train U-Net")

    def __init__(self, viewer: napari.viewer.Viewer) -> None:  # napari reads this signature
        super().__init__()  # never runs: __new__ returns another class's instance


class PredictPanel(Container):
    """Entry point of "Predict with U-Net": returns a :class:`~.predict_widget.PredictWidget`."""

    def __new__(cls, viewer: napari.viewer.Viewer) -> Widget:
        return open_panel(viewer, "predict_widget", "PredictWidget", "Predict with U-Net")

    def __init__(self, viewer: napari.viewer.Viewer) -> None:  # napari reads this signature
        super().__init__()  # never runs: __new__ returns another class's instance


class RetrainPanel(Container):
    """Entry point of "Correct and retrain": returns a :class:`~.retrain_widget.RetrainWidget`."""

    def __new__(cls, viewer: napari.viewer.Viewer) -> Widget:
        return open_panel(viewer, "retrain_widget", "RetrainWidget", "Correct and retrain")

    def __init__(self, viewer: napari.viewer.Viewer) -> None:  # napari reads this signature
        super().__init__()  # never runs: __new__ returns another class's instance
