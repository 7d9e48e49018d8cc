import numpy as np
import pytest
from napari.layers import Image

from napari_unetkit.synthetic import synthetic_nuclei
from napari_unetkit.weightmap import DEFAULT_PRESET, PRESETS, weights_and_target

pytestmark = pytest.mark.gui


def dock(viewer):
    _, widget = viewer.window.add_plugin_dock_widget("napari-unetkit", "Boundary weight map")
    return widget


def run_and_wait(qtbot, widget):
    widget.press_start()
    assert widget.runner.worker is not None
    with qtbot.waitSignal(widget.runner.worker.finished, timeout=60_000):
        pass


def test_without_labels_the_button_is_disabled_with_a_reason(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((32, 32)))
    widget = dock(viewer)
    assert not widget.can_start
    assert "Labels layer" in widget.message


def test_widget_layer_equals_the_engine_function(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    _, labels = synthetic_nuclei(shape=(96, 96), seed=3)
    layer = viewer.add_labels(labels, name="cells", scale=(0.5, 0.5), translate=(3, 4))
    widget = dock(viewer)
    widget.fields["labels"].value = layer
    widget.fields["show_target"].value = True
    assert widget.can_start
    run_and_wait(qtbot, widget)
    result = viewer.layers["cells weights"]
    assert isinstance(result, Image)
    assert widget.message == (
        "Done: the weight map of 'cells' is the layer 'cells weights' (bright = heavy)."
    )
    expected, target = weights_and_target(labels, settings=PRESETS[DEFAULT_PRESET])
    np.testing.assert_array_equal(result.data, expected)
    np.testing.assert_array_equal(viewer.layers["cells separated"].data, target)
    assert tuple(result.scale) == (0.5, 0.5) and tuple(result.translate) == (3, 4)
    np.testing.assert_array_equal(layer.data, labels)  # the user's layer is untouched
    # A second run replaces our own weights layer instead of piling up copies.
    widget.fields["preset"].value = "falk2019"
    assert widget.fields["w0"].value == PRESETS["falk2019"].w0
    run_and_wait(qtbot, widget)
    falk, _ = weights_and_target(labels, settings=PRESETS["falk2019"])
    np.testing.assert_array_equal(viewer.layers["cells weights"].data, falk)
    assert [layer.name for layer in viewer.layers].count("cells weights") == 1


def test_stack_is_computed_slice_wise(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    labels = np.stack([synthetic_nuclei(shape=(48, 48), seed=s)[1] for s in range(3)])
    viewer.add_labels(labels, name="stack")
    widget = dock(viewer)
    run_and_wait(qtbot, widget)
    weights = viewer.layers["stack weights"].data
    for z in range(3):
        expected, _ = weights_and_target(labels[z], settings=PRESETS[DEFAULT_PRESET])
        np.testing.assert_array_equal(weights[z], expected)


def test_settings_are_remembered(make_napari_viewer):
    viewer = make_napari_viewer()
    first = dock(viewer)
    first.fields["sigma"].value = 7.5
    assert first.fields["preset"].value == "custom"
    viewer.close()
    second = dock(make_napari_viewer())
    assert second.fields["sigma"].value == 7.5
    assert second.fields["preset"].value == "custom"
