import gc
import time
import weakref

import numpy as np
import pytest
from napari.layers import Image, Labels, Shapes
from qtpy.QtCore import QTimer

from napari_unetkit._napari.session import SESSION
from napari_unetkit._napari.train_inputs import pair_problem, pairs_problem
from napari_unetkit._napari.train_widget import TrainWidget
from napari_unetkit.modelfile import load_model, read_description
from napari_unetkit.synthetic import synthetic_nuclei, synthetic_stack
from napari_unetkit.training import TrainConfig

pytestmark = pytest.mark.gui

TRAINING_TIMEOUT_MS = 60_000


@pytest.fixture(scope="module")
def nuclei():
    return synthetic_nuclei(shape=(128, 128), seed=1)


def dock(viewer) -> TrainWidget:
    _, widget = viewer.window.add_plugin_dock_widget("napari-unetkit", "Train U-Net")
    return widget


def add_sample(viewer, nuclei, name="nuclei"):
    image, labels = nuclei
    viewer.add_image(image, name=name)
    return viewer.add_labels(labels.copy(), name=f"{name} labels")


def make_tiny(widget, path, epochs=2, steps=3):
    """Set tiny settings through the widget's fields, as a user would."""
    settings = widget.settings_form
    settings.show_advanced.value = True
    settings.size.value = "small"
    settings.depth.value = 2
    settings.patch_size.value = 64
    settings.batch_size.value = 4
    settings.train_for.value = "epochs"
    settings.epochs.value = epochs
    settings.steps_per_epoch.value = steps
    settings.path.value = path


def start(widget):
    assert widget.can_start, widget.message
    widget.press_start()
    worker = widget.runner.worker
    assert worker is not None
    return worker


def shown(field) -> bool:
    """Whether a field is shown (in a viewer that is not on screen itself)."""
    return not field.native.isHidden()


def wait(qtbot, worker, timeout=TRAINING_TIMEOUT_MS):
    with qtbot.waitSignal(worker.finished, timeout=timeout):
        pass


def test_docks_with_the_engine_defaults(make_napari_viewer, nuclei):
    viewer = make_napari_viewer()
    add_sample(viewer, nuclei)
    widget = dock(viewer)
    defaults = TrainConfig()
    settings = widget.settings_form
    assert settings.patch_size.value == defaults.patch_size
    assert settings.batch_size.value == defaults.batch_size
    assert settings.epochs.value == defaults.epochs
    assert settings.learning_rate.value == pytest.approx(defaults.learning_rate)
    assert settings.depth.value == defaults.depth
    assert settings.size.value == "medium"  # base_channels 16
    assert not settings.advanced.visible
    assert settings.device_info.value.startswith("CPU")
    assert settings.path.value.name == "nuclei.unet"
    assert widget.pairs.rows[0].labels_choice.value is viewer.layers["nuclei labels"]
    assert widget.can_start, widget.message


def test_validation_follows_the_users_choices(make_napari_viewer, nuclei, tmp_path):
    viewer = make_napari_viewer()
    image, labels = nuclei
    viewer.add_image(image, name="nuclei")
    small = viewer.add_labels(np.zeros((64, 64), np.int32), name="small")
    widget = dock(viewer)
    row = widget.pairs.rows[0]
    widget.settings_form.path.value = tmp_path / "m.unet"
    assert row.labels_choice.value is small
    assert not widget.can_start
    assert "shape (64, 64)" in widget.message

    good = viewer.add_labels(np.zeros_like(labels), name="good")  # reset_choices runs
    row.labels_choice.value = good
    assert not widget.can_start and "empty" in widget.message
    good.data = labels
    assert widget.can_start, widget.message

    row.region.value = small  # a mask of the wrong shape
    assert not widget.can_start and "region" in widget.message
    row.region.value = None
    assert widget.can_start

    good.data = np.where(labels > 0, labels + 100, 0)  # instance ids above 100
    widget.fields["mode"].value = "classes"
    assert not widget.can_start and "instances mode" in widget.message
    good.data = (labels > 0).astype(np.int32)  # only class 1
    assert not widget.can_start and "two painted classes" in widget.message
    good.data = (labels > 0).astype(np.int32) + 1
    assert widget.can_start, widget.message
    widget.fields["mode"].value = "instances"

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    widget.settings_form.path.value = blocker / "m.unet"
    assert not widget.can_start and "not a folder" in widget.message
    widget.settings_form.path.value = tmp_path / "m.unet"
    assert widget.can_start

    second = widget.pairs.add_row()
    assert second.labels_choice.value is small  # a layer that pair 1 does not use
    assert not widget.can_start and widget.message.startswith("Pair 2")
    second.labels_choice.value = good
    assert not widget.can_start and "repeats pair 1" in widget.message
    widget.pairs.remove_row(second)
    assert widget.can_start

    viewer.layers.remove(good)
    viewer.layers.remove(small)
    assert not widget.can_start and "choose a Labels layer" in widget.message


def test_pair_checks_for_rgb_stacks_and_regions():
    rgb = Image(np.zeros((32, 40, 3), np.uint8), rgb=True)
    assert pair_problem(1, rgb, Labels(np.ones((32, 40), np.int32)), None, "instances") is None
    wrong = pair_problem(1, rgb, Labels(np.ones((32, 40, 3), np.int32)), None, "instances")
    assert "needs labels of shape (32, 40)" in wrong
    stack = Image(np.zeros((2, 3, 32, 32), np.float32))
    empty = Labels(np.zeros((2, 3, 32, 32), np.int32))
    assert "empty" in pair_problem(1, stack, empty, None, "instances")
    region = Shapes([np.array([[0, 0], [10, 10]])], shape_type="rectangle")
    assert pair_problem(1, stack, empty, region, "instances") is None  # all background there
    assert "empty" in pair_problem(1, stack, empty, region, "classes")
    assert "another layer" in pair_problem(1, stack, empty, empty, "instances")
    labels = [Labels(np.ones((32, 40), np.int32)), Labels(np.ones((2, 3, 32, 32), np.int32))]
    assert "same channels" in pairs_problem([rgb, stack], labels, "instances")


def test_training_through_the_widget(make_napari_viewer, qtbot, nuclei, tmp_path):
    viewer = make_napari_viewer()
    add_sample(viewer, nuclei)
    widget = dock(viewer)
    existing = tmp_path / "nuclei.unet"
    existing.write_bytes(b"keep me")
    make_tiny(widget, existing)
    assert "nuclei-2.unet" in widget.message  # never overwritten: a new number
    widget.fields["preview"].value = True
    widget.fields["preview_every"].value = 1
    wait(qtbot, start(widget))

    saved = tmp_path / "nuclei-2.unet"
    assert existing.read_bytes() == b"keep me"
    _, description = load_model(saved)
    assert description["epochs_trained"] == 2
    assert widget.plot.epochs == [1, 2]
    assert np.isfinite(widget.plot.train_loss).all() and np.isfinite(widget.plot.score).all()
    assert "Trained 2 epochs" in widget.summary
    assert "validation F1" in widget.summary and str(saved) in widget.summary
    assert widget.status == "Finished: all 2 epochs are done."
    # Two tiny epochs may not find any held-out nucleus yet: such a model waits for the user.
    zero = description["metrics"]["best_validation_score"] == 0
    assert widget.can_use_anyway == zero
    if zero:
        widget.use_model_anyway()
    assert SESSION.latest is not None and SESSION.latest.path == saved
    assert SESSION.latest.description["metrics"] == description["metrics"]
    assert widget.progress[0] == widget.progress[1]
    preview = viewer.layers["nuclei preview"]
    assert preview.data.shape == nuclei[1].shape and preview.metadata["epoch"] == 2
    assert widget.button_text == "Start training" and widget.can_start


def test_stop_keeps_the_best_model(make_napari_viewer, qtbot, nuclei, tmp_path):
    viewer = make_napari_viewer()
    add_sample(viewer, nuclei)
    widget = dock(viewer)
    make_tiny(widget, tmp_path / "stopped.unet", epochs=500)
    worker = start(widget)
    assert widget.button_text == "Stop"
    qtbot.waitUntil(lambda: len(widget.plot.epochs) >= 1, timeout=TRAINING_TIMEOUT_MS)
    widget.press_start()
    wait(qtbot, worker)
    _, description = load_model(tmp_path / "stopped.unet")
    assert description["stopped_by"] == "cancel"
    assert widget.status == "Stopped by you."
    if description["metrics"]["best_validation_score"] == 0:
        widget.use_model_anyway()  # held back until the user chooses it
    assert SESSION.latest.description["stopped_by"] == "cancel"
    assert "you stopped it" in widget.summary


def test_painting_during_training_does_not_change_the_run(
    make_napari_viewer, qtbot, nuclei, tmp_path
):
    viewer = make_napari_viewer()
    layer = add_sample(viewer, nuclei)
    widget = dock(viewer)
    make_tiny(widget, tmp_path / "snap.unet", epochs=1)
    worker = start(widget)
    layer.data = np.zeros_like(layer.data)  # erase everything right after Start
    layer.data[5:9, 5:9] = 7
    painted = layer.data.copy()
    wait(qtbot, worker)
    _, description = load_model(tmp_path / "snap.unet")  # trained on the snapshot
    assert description["data"]["annotated_pixels"] == nuclei[1].size
    np.testing.assert_array_equal(layer.data, painted)  # training never writes to user layers


def test_viewer_stays_responsive_while_training(make_napari_viewer, qtbot, nuclei, tmp_path):
    viewer = make_napari_viewer()
    add_sample(viewer, nuclei)
    widget = dock(viewer)
    make_tiny(widget, tmp_path / "smooth.unet", epochs=3, steps=5)
    widget.fields["preview"].value = True
    widget.fields["preview_every"].value = 1
    ticks = []
    timer = QTimer()
    timer.setInterval(10)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    worker = start(widget)
    timer.start()
    ticks.append(time.perf_counter())
    wait(qtbot, worker)
    timer.stop()
    assert len(widget.plot.epochs) == 3
    # The GUI thread kept serving timer events while training ran (how long its largest pause
    # is, is measured by benchmarks/gui_responsiveness.py, not asserted here).
    assert len(ticks) >= 3


def test_closing_the_viewer_stops_training(make_napari_viewer, qtbot, nuclei, tmp_path):
    viewer = make_napari_viewer()
    add_sample(viewer, nuclei)
    widget = dock(viewer)
    make_tiny(widget, tmp_path / "closed.unet", epochs=500)
    worker = start(widget)
    qtbot.waitUntil(lambda: widget.progress[0] > 0, timeout=TRAINING_TIMEOUT_MS)
    # Listen before closing: closing may already deliver the worker's last signals.
    with qtbot.waitSignal(worker.finished, timeout=30_000):
        viewer.close()
    assert widget.runner.worker is None
    model = tmp_path / "closed.unet"

    def stopped() -> bool:  # the training thread itself stops and saves the model
        return model.exists() and read_description(model)["stopped_by"] == "cancel"

    qtbot.waitUntil(stopped, timeout=30_000)


def test_closing_the_panel_stops_training(make_napari_viewer, qtbot, nuclei, tmp_path):
    viewer = make_napari_viewer()
    add_sample(viewer, nuclei)
    widget = dock(viewer)
    make_tiny(widget, tmp_path / "panel.unet", epochs=500)
    worker = start(widget)
    qtbot.waitUntil(lambda: widget.progress[0] > 0, timeout=TRAINING_TIMEOUT_MS)
    with qtbot.waitSignal(worker.finished, timeout=30_000):
        viewer.window.remove_dock_widget(widget.native)  # what the panel's close button does
    assert read_description(tmp_path / "panel.unet")["stopped_by"] == "cancel"
    assert widget.status == "Stopped: the Train U-Net panel was closed."


def test_closed_panels_are_collected_without_crashing_napari(make_napari_viewer, qtbot, nuclei):
    # Python collects a closed panel later, clearing its attributes before Qt deletes it; a
    # slot that then touched the half-cleared widget aborted the whole process (it took two
    # open-close rounds to show).
    viewer = make_napari_viewer()
    add_sample(viewer, nuclei)
    for _ in range(2):
        widget = dock(viewer)
        qtbot.wait(300)
        viewer.window.remove_dock_widget(widget.native)  # the panel's close button
        collected = weakref.ref(widget)
        del widget
        qtbot.wait(200)
        gc.collect()
        qtbot.wait(300)
        assert collected() is None
    viewer.dims.set_current_step(0, 3)  # the viewer no longer calls the closed panels
    viewer.add_image(nuclei[0], name="after")


def test_stack_is_trained_slice_wise_and_previewed_where_you_look(
    make_napari_viewer, qtbot, tmp_path
):
    image, labels = synthetic_stack(n_slices=3, shape=(64, 64), seed=2)
    viewer = make_napari_viewer()
    viewer.add_image(image, name="stack")
    viewer.add_labels(labels, name="stack labels")
    widget = dock(viewer)
    make_tiny(widget, tmp_path / "stack.unet", epochs=1, steps=2)
    viewer.dims.set_current_step(0, 2)
    widget.fields["preview"].value = True
    widget.fields["preview_every"].value = 1
    wait(qtbot, start(widget))
    preview = viewer.layers["stack preview"]
    assert preview.data.shape == labels.shape and preview.metadata["slice"] == (2,)
    assert not preview.data[:2].any()  # only the slice on screen is predicted
    description = read_description(tmp_path / "stack.unet")
    assert description["data"]["n_slices"] == 3


def test_settings_are_remembered(make_napari_viewer, nuclei):
    viewer = make_napari_viewer()
    add_sample(viewer, nuclei)
    first = dock(viewer)
    first.settings_form.patch_size.value = 96
    first.settings_form.size.value = "large"
    first.fields["mode"].value = "classes"
    viewer.close()
    second = dock(make_napari_viewer())
    assert second.settings_form.patch_size.value == 96
    assert second.settings_form.size.value == "large"
    assert second.fields["mode"].value == "classes"
