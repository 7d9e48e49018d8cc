"""Opening the panels: napari's menu reaches them, and PyTorch loads with visible feedback."""

import subprocess
import sys

import pytest
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QApplication

from napari_unetkit._napari.panels import (
    PredictPanel,
    RetrainPanel,
    TrainPanel,
    loading_feedback,
)
from napari_unetkit._napari.predict_widget import PredictWidget
from napari_unetkit._napari.retrain_widget import RetrainWidget
from napari_unetkit._napari.train_widget import TrainWidget

pytestmark = pytest.mark.gui


def test_the_entry_points_import_no_torch():
    code = (
        "import sys, napari_unetkit._napari.panels, napari_unetkit._napari.reader;"
        "print('torch' in sys.modules)"
    )
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert found.stdout.strip() == "False"


def test_napari_menus_pass_the_viewer_and_dock_the_real_panels(make_napari_viewer):
    from napari._qt._qplugins._qnpe2 import _get_widget_viewer_param

    assert _get_widget_viewer_param(TrainPanel, "Train U-Net") == "viewer"
    assert _get_widget_viewer_param(PredictPanel, "Predict with U-Net") == "viewer"
    assert _get_widget_viewer_param(RetrainPanel, "Correct and retrain") == "viewer"
    viewer = make_napari_viewer()
    assert isinstance(TrainPanel(viewer), TrainWidget)
    assert isinstance(RetrainPanel(viewer), RetrainWidget)
    _, widget = viewer.window.add_plugin_dock_widget("napari-unetkit", "Predict with U-Net")
    assert isinstance(widget, PredictWidget)


def test_loading_shows_a_message_and_a_wait_cursor(make_napari_viewer):
    viewer = make_napari_viewer()
    with loading_feedback(viewer, "Train U-Net", needed=True):
        assert "loading PyTorch for the Train U-Net panel" in viewer.status
        assert QApplication.overrideCursor().shape() == Qt.CursorShape.WaitCursor
    assert QApplication.overrideCursor() is None
    assert "PyTorch" not in viewer.status
    with loading_feedback(viewer, "Train U-Net", needed=False):  # torch already loaded
        assert QApplication.overrideCursor() is None
