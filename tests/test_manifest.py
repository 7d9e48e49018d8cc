"""The plugin as napari sees it: manifest found, every widget docks, every sample opens."""

import numpy as np
import pytest
from npe2 import PluginManager
from qtpy.QtWidgets import QWidget

pytestmark = pytest.mark.gui

PLUGIN = "napari-unetkit"


def manifest():
    manager = PluginManager.instance()
    manager.discover()
    return manager.get_manifest(PLUGIN)


def test_manifest_is_found_with_its_contributions():
    found = manifest()
    assert found.display_name == "U-Net Kit"
    widget_names = {widget.display_name for widget in found.contributions.widgets}
    assert widget_names == {
        "Train U-Net",
        "Predict with U-Net",
        "Correct and retrain",
        "Boundary weight map",
    }
    assert found.contributions.sample_data
    assert "Segmentation" in found.categories


def test_every_declared_widget_docks(make_napari_viewer):
    viewer = make_napari_viewer()
    names = [widget.display_name for widget in manifest().contributions.widgets]
    for name in names:
        dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, name)
        assert dock is not None
        native = getattr(widget, "native", widget)
        assert isinstance(native, QWidget)
    assert len(viewer.window.dock_widgets) >= len(names)


def test_every_sample_opens_as_image_and_labels(make_napari_viewer):
    viewer = make_napari_viewer()
    for sample in manifest().contributions.sample_data:
        before = len(viewer.layers)
        viewer.open_sample(PLUGIN, sample.key)
        added = list(viewer.layers)[before:]
        kinds = sorted(type(layer).__name__ for layer in added)
        assert kinds == ["Image", "Labels"]
        image, labels = sorted(added, key=lambda layer: type(layer).__name__)
        assert image.data.shape == labels.data.shape
        assert np.issubdtype(labels.data.dtype, np.integer)
        assert labels.data.max() > 1  # several instances, not a mask
