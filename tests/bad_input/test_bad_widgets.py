"""The bad-input matrix, napari front: the Train, Predict and Weight-map widgets.

A wrong input is explained in the widget (and its button disabled) before anything runs; what
can only fail while running ends in an inline message and a notification, never a crash. Closing
the viewer or stopping a job at an awkward moment leaves nothing half-done.
"""

import errno
import threading

import numpy as np
import pytest
import torch
from bad_cases import BAD_MODEL_FILES, cells, untrained_model

from napari_unetkit import checks
from napari_unetkit import data as data_module
from napari_unetkit._napari import jobs, predict_widget, weightmap_widget
from napari_unetkit._napari.layers import METADATA_KEY
from napari_unetkit._napari.session import SESSION
from napari_unetkit.prediction import Predictor
from napari_unetkit.training import loop

pytestmark = pytest.mark.gui

TIMEOUT_MS = 60_000


@pytest.fixture(autouse=True)
def _quiet(monkeypatch):
    """One CPU thread, no model left in the session, and notifications recorded."""
    monkeypatch.setattr(SESSION, "latest", None)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    shown: list[str] = []
    monkeypatch.setattr(jobs, "show_error", shown.append)
    yield shown
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    return {"grey": untrained_model(folder / "grey.unet"), "rgb": untrained_model(
        folder / "rgb.unet", in_channels=3)}  # fmt: skip


def dock(viewer, name: str):
    _, widget = viewer.window.add_plugin_dock_widget("napari-unetkit", name)
    return widget


def files(folder) -> list[str]:
    """Names of every file under ``folder`` (temporary files included)."""
    return sorted(path.name for path in folder.rglob("*") if path.is_file())


def tiny_settings(widget, path) -> None:
    settings = widget.settings_form
    settings.show_advanced.value = True
    settings.size.value = "small"
    settings.depth.value = 2
    settings.patch_size.value = 32
    settings.batch_size.value = 2
    settings.train_for.value = "epochs"
    settings.epochs.value = 1
    settings.steps_per_epoch.value = 2
    settings.augment.value = False
    settings.threads.value = 1
    settings.path.value = path


def train_and_wait(qtbot, widget) -> None:
    assert widget.can_start, widget.message
    widget.press_start()
    assert widget.runner.running
    qtbot.waitUntil(lambda: not widget.runner.running, timeout=TIMEOUT_MS)


# ------------------------------------------------------------------------------- Train


def test_train_widget_explains_unusable_inputs(make_napari_viewer, tmp_path, monkeypatch):
    viewer = make_napari_viewer()
    image, labels = cells((32, 40))
    mask = viewer.add_image(image > 50, name="mask")
    layer = viewer.add_labels(labels, name="cells")
    widget = dock(viewer, "Train U-Net")
    row = widget.pairs.rows[0]
    tiny_settings(widget, tmp_path / "models" / "m.unet")
    row.image.value, row.labels_choice.value = mask, layer
    assert not widget.can_start
    assert "'mask': The image is boolean (a mask)" in widget.message

    row.image.value = viewer.add_image(image, name="cells image")
    assert widget.can_start, widget.message
    layer.data = np.where(labels > 0, labels, -1)  # painted with a negative label
    assert not widget.can_start
    assert "The labels hold negative values; use 0 (background)" in widget.message
    layer.data = labels
    assert widget.can_start

    monkeypatch.setattr(checks.os, "access", lambda *args: False)  # as in a locked folder
    widget.settings_form.path.value = tmp_path / "locked" / "m.unet"
    assert not widget.can_start and "the folder is not writable" in widget.message
    monkeypatch.undo()
    widget.settings_form.path.value = tmp_path / "models" / "m.unet"
    assert widget.can_start

    # Budgets that allow no training cannot even be entered.
    settings = widget.settings_form
    for field, value in ((settings.epochs, 0), (settings.minutes, 0.0), (settings.val_fraction, 1)):
        with pytest.raises(ValueError):
            field.value = value
    assert files(tmp_path / "models") == []  # nothing was written while checking


def test_train_widget_reports_failures_and_recovers(
    make_napari_viewer, qtbot, tmp_path, monkeypatch, _quiet
):
    viewer = make_napari_viewer()
    image, labels = cells((32, 40))
    holes = image.astype(np.float32)
    holes[3, 3] = np.nan
    cases = {
        "NaN": (holes, "Training failed: The image contains NaN or infinite values; replace"),
        "constant": (np.full_like(image, 9), "Training failed: Pair 1: the image is constant"),
    }
    layer = viewer.add_labels(labels, name="cells")
    widget = dock(viewer, "Train U-Net")
    row = widget.pairs.rows[0]
    tiny_settings(widget, tmp_path / "models" / "m.unet")
    for name, (data, message) in cases.items():
        row.image.value = viewer.add_image(data, name=name)
        row.labels_choice.value = layer
        train_and_wait(qtbot, widget)
        assert widget.status.startswith(message) and _quiet[-1].startswith(message)
        assert widget.can_start and widget.button_text == "Start training"
    assert files(tmp_path / "models") == []

    # The disk fills up while the model is being saved: a clear message, no stray file.
    def full_disk(payload, file) -> None:
        file.write(b"half a model")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    row.image.value = viewer.add_image(image, name="good")
    train_and_wait(qtbot, widget)
    monkeypatch.undo()
    assert widget.status.startswith("Training failed: No space left on the disk")
    assert "[Errno" not in widget.status and "No space left" in _quiet[-1]
    assert files(tmp_path / "models") == []  # no model, no temporary file
    np.testing.assert_array_equal(layer.data, labels)  # the user's layer is untouched


def test_stop_during_data_preparation_saves_nothing(
    make_napari_viewer, qtbot, tmp_path, monkeypatch
):
    entered, release = threading.Event(), threading.Event()
    real = data_module._instance_target

    def slow_first_slice(*args, **kwargs):
        if not entered.is_set():
            entered.set()
            release.wait(30)
        return real(*args, **kwargs)

    monkeypatch.setattr(data_module, "_instance_target", slow_first_slice)
    viewer = make_napari_viewer()
    image, labels = cells((3, 32, 32))
    viewer.add_image(image, name="stack")
    viewer.add_labels(labels, name="stack labels")
    widget = dock(viewer, "Train U-Net")
    tiny_settings(widget, tmp_path / "models" / "m.unet")
    widget.press_start()
    qtbot.waitUntil(entered.is_set, timeout=TIMEOUT_MS)
    widget.press_start()  # Stop, while the first slice is being prepared
    assert widget.button_text == "Stopping…" and not widget.can_start
    release.set()
    qtbot.waitUntil(lambda: not widget.runner.running, timeout=TIMEOUT_MS)
    assert widget.status == "Stopped before training began: no model was saved."
    assert files(tmp_path / "models") == []
    assert widget.can_start and widget.button_text == "Start training"


def test_stop_after_preparation_before_the_first_step_saves_nothing(
    make_napari_viewer, qtbot, tmp_path, monkeypatch
):
    entered, release = threading.Event(), threading.Event()
    real = loop.Run.run_epoch

    def wait_before_the_first_step(self) -> None:
        if self.steps_run == 0 and not entered.is_set():
            entered.set()
            release.wait(30)
        real(self)

    monkeypatch.setattr(loop.Run, "run_epoch", wait_before_the_first_step)
    viewer = make_napari_viewer()
    image, labels = cells((32, 32))
    viewer.add_image(image, name="cells")
    viewer.add_labels(labels, name="cells labels")
    widget = dock(viewer, "Train U-Net")
    tiny_settings(widget, tmp_path / "models" / "m.unet")
    widget.press_start()
    qtbot.waitUntil(entered.is_set, timeout=TIMEOUT_MS)  # data prepared, model built
    widget.press_start()  # Stop
    release.set()
    qtbot.waitUntil(lambda: not widget.runner.running, timeout=TIMEOUT_MS)
    assert widget.status == "Stopped before training began: no model was saved."
    assert files(tmp_path / "models") == []


def test_tiny_image_with_a_single_cell_trains_and_previews(make_napari_viewer, qtbot, tmp_path):
    viewer = make_napari_viewer()
    image, labels = cells((5, 7))
    viewer.add_image(image, name="tiny")
    viewer.add_labels((labels == 1).astype(np.int32), name="tiny labels")
    widget = dock(viewer, "Train U-Net")
    tiny_settings(widget, tmp_path / "models" / "tiny.unet")
    widget.fields["preview"].value = True
    widget.fields["preview_every"].value = 1
    train_and_wait(qtbot, widget)
    assert "Trained 1 epoch" in widget.summary, widget.status
    assert files(tmp_path / "models") == ["tiny.unet"]
    assert viewer.layers["tiny preview"].data.shape == (5, 7)


# ------------------------------------------------------------------------------- Predict


def predictions(viewer) -> list:
    return [layer for layer in viewer.layers if layer.metadata.get(METADATA_KEY) == "prediction"]


def test_predict_widget_explains_bad_models_and_images(make_napari_viewer, tmp_path, models):
    viewer = make_napari_viewer()
    grey = viewer.add_image(cells((32, 32))[0], name="grey")
    widget = dock(viewer, "Predict with U-Net")
    marker = tmp_path / "marker"
    for name, (writer, fragment) in BAD_MODEL_FILES.items():
        path = tmp_path / f"{name.replace(' ', '_')}.unet"
        writer(path, marker)
        widget.fields["model_file"].value = path
        assert not widget.can_start, name
        assert f"{path.name} is not a napari-unetkit model file" in widget.message
        assert fragment in widget.message
    assert not marker.exists()  # no code from a model file ever ran

    widget.fields["model_file"].value = models["rgb"]
    widget.fields["image"].value = grey
    assert not widget.can_start
    assert "3 channels (RGB), but the image (shape (32, 32)) has 1 channel" in widget.message
    widget.fields["model_file"].value = models["grey"]
    assert widget.can_start, widget.message
    widget.fields["image"].value = viewer.add_image(np.zeros((16, 16), bool), name="mask")
    assert not widget.can_start and "'mask': The image is boolean" in widget.message
    assert predictions(viewer) == []


def test_predict_widget_handles_odd_images(make_napari_viewer, qtbot, models):
    viewer = make_napari_viewer()
    widget = dock(viewer, "Predict with U-Net")
    widget.fields["model_file"].value = models["grey"]
    shapes = {"5x7": (5, 7), "4x4000": (4, 4000), "4D": (2, 2, 16, 24), "5D": (1, 2, 2, 8, 8)}
    for name, shape in shapes.items():
        image = cells(shape)[0]
        layer = viewer.add_image(image, name=name)
        widget.fields["image"].value = layer
        widget.fields["tile_size"].value = (
            4096 if name == "5x7" else 0
        )  # a tile larger than the image
        assert widget.can_start, widget.message
        widget.press_start()
        qtbot.waitUntil(lambda: not widget.runner.running, timeout=TIMEOUT_MS)
        assert widget.message.startswith("Predicted"), widget.message
        assert viewer.layers[f"{name} prediction"].data.shape == shape
        np.testing.assert_array_equal(layer.data, image)  # never modified


def test_closing_the_viewer_while_predicting_stops_the_job(
    make_napari_viewer, qtbot, monkeypatch, models
):
    entered, release, calls = threading.Event(), threading.Event(), []

    class PausingPredictor(Predictor):
        """Pauses in the second slice until the viewer has been closed."""

        def predict_slice(self, *args, **kwargs):
            calls.append(1)
            if len(calls) == 2:
                entered.set()
                release.wait(30)
            return super().predict_slice(*args, **kwargs)

    monkeypatch.setattr(predict_widget, "Predictor", PausingPredictor)
    viewer = make_napari_viewer()
    viewer.add_image(cells((6, 32, 32))[0], name="stack")
    widget = dock(viewer, "Predict with U-Net")
    widget.fields["model_file"].value = models["grey"]
    runner = widget.runner
    widget.press_start()
    qtbot.waitUntil(entered.is_set, timeout=TIMEOUT_MS)
    viewer.close()
    release.set()
    qtbot.waitUntil(lambda: not runner.running, timeout=TIMEOUT_MS)
    assert len(calls) == 2  # stopped in the slice it was predicting
    assert predictions(viewer) == []


# ------------------------------------------------------------------------------- Weight map


def test_weightmap_widget_explains_and_reports(make_napari_viewer, qtbot, monkeypatch, _quiet):
    viewer = make_napari_viewer()
    _, labels = cells((32, 40))
    layer = viewer.add_labels(np.where(labels > 0, labels, -1), name="cells")
    widget = dock(viewer, "Boundary weight map")
    widget.fields["labels"].value = layer
    assert not widget.can_start
    assert "The labels hold negative values; use 0 (background)" in widget.message

    empty = viewer.add_labels(np.zeros((16, 16), np.int32), name="empty")
    widget.fields["labels"].value = empty
    assert widget.can_start and "'empty' is empty: paint some cells" in widget.message
    widget.press_start()
    qtbot.waitUntil(lambda: not widget.runner.running, timeout=TIMEOUT_MS)
    assert "empty weights" in viewer.layers
    assert "'empty' is empty" in widget.message  # the remark stays after the run

    def fail(*args, **kwargs):
        raise ValueError("The labels cannot be read.")

    monkeypatch.setattr(weightmap_widget, "weights_and_target", fail)
    widget.press_start()
    qtbot.waitUntil(lambda: not widget.runner.running, timeout=TIMEOUT_MS)
    assert widget.message == "Weight map failed: The labels cannot be read."
    assert _quiet == ["Weight map failed: The labels cannot be read."]
    assert widget.can_start and widget.button_text == "Compute weight map"


def test_closing_the_viewer_while_computing_weights_stops_the_job(
    make_napari_viewer, qtbot, monkeypatch
):
    entered, release, calls = threading.Event(), threading.Event(), []
    real = weightmap_widget.weights_and_target

    def pausing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            entered.set()
            release.wait(30)
        return real(*args, **kwargs)

    monkeypatch.setattr(weightmap_widget, "weights_and_target", pausing)
    viewer = make_napari_viewer()
    viewer.add_labels(cells((5, 32, 32))[1], name="stack")
    widget = dock(viewer, "Boundary weight map")
    runner = widget.runner
    widget.press_start()
    qtbot.waitUntil(entered.is_set, timeout=TIMEOUT_MS)
    viewer.close()
    release.set()
    qtbot.waitUntil(lambda: not runner.running, timeout=TIMEOUT_MS)
    assert len(calls) == 2  # the job stopped after the slice it was computing
    assert "stack weights" not in viewer.layers
