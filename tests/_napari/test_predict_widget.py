import os
import subprocess
import sys

import dask.array as da
import numpy as np
import pytest
import torch
from napari.layers import Image, Labels

from napari_unetkit._napari import model_chooser
from napari_unetkit._napari.layers import METADATA_KEY
from napari_unetkit._napari.session import SESSION, TrainedModel
from napari_unetkit._napari.torch_guard import protect_from_triton_crash
from napari_unetkit.checks import predict_problems
from napari_unetkit.model import UNet, UNetConfig
from napari_unetkit.modelfile import load_model, save_model
from napari_unetkit.normalization import NormalizationSettings
from napari_unetkit.prediction import Predictor
from napari_unetkit.synthetic import synthetic_nuclei
from napari_unetkit.tiling import default_halo
from napari_unetkit.training import TrainConfig, train

pytestmark = pytest.mark.gui


# ------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="session")
def instance_model(tmp_path_factory):
    """A tiny instance model trained in about a second: it finds most synthetic nuclei."""
    pairs = [synthetic_nuclei(shape=(128, 128), seed=seed) for seed in range(4)]
    config = TrainConfig(
        depth=2,
        base_channels=8,
        patch_size=64,
        batch_size=4,
        epochs=1,
        steps_per_epoch=20,
        learning_rate=3e-3,
        val_fraction=0.0,  # the last model is good enough here
        device="cpu",
        threads=1,  # many times faster than 2 threads on a busy 2-core machine
    )
    path = tmp_path_factory.mktemp("models") / "nuclei.unet"
    # Creating the optimiser imports Triton, which crashes next to a viewer's Mesa LLVM.
    protect_from_triton_crash()
    threads = torch.get_num_threads()
    try:
        train(pairs, config, out=path)
    finally:
        torch.set_num_threads(threads)
    return path


@pytest.fixture(scope="session")
def class_model(tmp_path_factory):
    """An untrained 3-class model (random weights): enough to check shapes and choices."""
    torch.manual_seed(0)
    config = UNetConfig(depth=2, base_channels=4, n_classes=3)
    description = {
        "mode": "classes",
        "class_names": ["nucleus", "membrane", "debris"],
        "normalization": NormalizationSettings().to_dict(),
    }
    path = tmp_path_factory.mktemp("models") / "classes.unet"
    return save_model(path, UNet(config), description)


@pytest.fixture(autouse=True)
def _no_session_model(monkeypatch):
    """Each test starts without a model trained in this session (and leaves none behind)."""
    monkeypatch.setattr(SESSION, "latest", None)


# ------------------------------------------------------------------------------------ helpers


def dock(viewer):
    _, widget = viewer.window.add_plugin_dock_widget("napari-unetkit", "Predict with U-Net")
    return widget


def run_and_wait(qtbot, widget):
    assert widget.can_start, widget.message
    widget.press_start()
    assert widget.runner.running
    # Not waitSignal(worker.finished): a job that fails at once may finish before the signal
    # is connected. The runner forgets its worker in the GUI thread once it has finished.
    qtbot.waitUntil(lambda: not widget.runner.running, timeout=60_000)


def predictions(viewer):
    return [layer for layer in viewer.layers if layer.metadata.get(METADATA_KEY) == "prediction"]


# ------------------------------------------------------------------------------------ validation


def test_without_a_model_run_is_disabled_with_a_reason(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((32, 32)))
    widget = dock(viewer)
    assert not widget.can_start
    assert "model" in widget.message and ".unet" in widget.message
    widget.fields["source"].value = "session"
    assert not widget.can_start
    assert "No model has been trained in this session" in widget.message


def test_bad_model_file_is_explained(make_napari_viewer, tmp_path):
    bad = tmp_path / "broken.unet"
    bad.write_bytes(np.random.default_rng(0).bytes(2000))
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((32, 32)))
    widget = dock(viewer)
    widget.fields["model_file"].value = bad
    assert not widget.can_start
    assert "broken.unet is not a napari-unetkit model file" in widget.message
    widget.fields["model_file"].value = tmp_path / "missing.unet"
    assert "does not exist" in widget.message


def test_rgb_image_with_a_grey_model_is_explained(make_napari_viewer, instance_model):
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((32, 32, 3), np.uint8), name="photo", rgb=True)
    widget = dock(viewer)
    widget.fields["model_file"].value = instance_model
    assert "Mode: instances" in widget.about
    assert not widget.can_start
    message = widget.message
    assert "1 channel (greyscale)" in message and "has 3 channels (RGB)" in message
    viewer.add_image(np.zeros((32, 32)), name="grey")
    widget.fields["image"].value = viewer.layers["grey"]
    assert widget.can_start and widget.message == ""


def test_large_model_files_load_in_a_worker(
    make_napari_viewer, qtbot, monkeypatch, instance_model, tmp_path
):
    monkeypatch.setattr(model_chooser, "GUI_LOAD_LIMIT_BYTES", 0)
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((32, 32)))
    widget = dock(viewer)
    widget.fields["model_file"].value = instance_model
    assert "Loading" in widget.message and not widget.can_start
    qtbot.waitUntil(lambda: not widget.loading, timeout=30_000)
    assert widget.can_start
    assert "Input channels: 1" in widget.about

    # A file chosen while another one loads is loaded next; the first one's result is dropped.
    copy = tmp_path / "copy.unet"
    copy.write_bytes(instance_model.read_bytes())
    bad = tmp_path / "bad.unet"
    bad.write_bytes(b"not a model")
    widget.fields["model_file"].value = copy
    assert widget.loading
    widget.fields["model_file"].value = bad
    expected = "bad.unet is not a napari-unetkit model file"
    qtbot.waitUntil(lambda: expected in widget.message, timeout=30_000)
    qtbot.waitUntil(lambda: not widget.loading, timeout=30_000)
    assert widget.about == "" and not widget.can_start


# ------------------------------------------------------------------------------------ prediction


def test_widget_prediction_equals_the_engine(make_napari_viewer, qtbot, instance_model):
    image, _ = synthetic_nuclei(shape=(160, 144), seed=11)
    viewer = make_napari_viewer()
    viewer.add_image(image, name="cells", scale=(0.5, 0.25), translate=(3, 4))
    viewer.add_labels(np.zeros((8, 8), np.int32), name="cells prediction")  # the user's
    widget = dock(viewer)
    widget.fields["model_file"].value = instance_model
    widget.fields["own_instance_settings"].value = False
    widget.fields["threshold"].value = 0.6
    widget.fields["min_size"].value = 7
    widget.fields["device"].value = "cpu"
    run_and_wait(qtbot, widget)

    (layer,) = predictions(viewer)
    assert isinstance(layer, Labels) and layer.name == "cells prediction [2]"
    assert viewer.layers["cells prediction"].data.shape == (8, 8)  # untouched
    assert layer.data.shape == image.shape and np.issubdtype(layer.data.dtype, np.integer)
    assert layer.data.max() >= 5  # several instances
    assert tuple(layer.scale) == (0.5, 0.25) and tuple(layer.translate) == (3, 4)
    assert layer.metadata["model"] == str(instance_model)
    assert "Mode: instances" in layer.metadata["model_summary"]
    predictor = Predictor.from_file(instance_model, device="cpu")
    expected = predictor.predict(image, threshold=0.6, min_size=7)
    np.testing.assert_array_equal(layer.data, expected.labels)
    assert "instances" in widget.message and widget.button_text == "Run"


def test_the_model_s_own_instance_settings_are_shown_and_used(
    make_napari_viewer, qtbot, instance_model
):
    image, _ = synthetic_nuclei(shape=(96, 96), seed=12)
    viewer = make_napari_viewer()
    viewer.add_image(image, name="cells")
    widget = dock(viewer)
    widget.fields["model_file"].value = instance_model
    predictor = Predictor.from_file(instance_model, device="cpu")
    stored = predictor.instance_settings
    assert widget.fields["own_instance_settings"].value
    assert not widget.fields["threshold"].enabled and not widget.fields["min_size"].enabled
    assert widget.fields["threshold"].value == pytest.approx(stored.threshold, abs=0.01)
    assert widget.fields["min_size"].value == stored.min_size
    assert "Instances: " in widget.about
    assert widget.settings.threshold is None and widget.settings.min_size is None
    run_and_wait(qtbot, widget)
    np.testing.assert_array_equal(predictions(viewer)[0].data, predictor.predict(image).labels)
    widget.fields["own_instance_settings"].value = False
    assert widget.fields["threshold"].enabled and widget.fields["min_size"].enabled


def test_stack_slice_wise_and_current_slice_only(make_napari_viewer, qtbot, instance_model):
    stack = np.stack([synthetic_nuclei(shape=(96, 96), seed=s)[0] for s in range(3)])
    lazy = da.from_array(stack, chunks=(1, 96, 96))
    viewer = make_napari_viewer()
    viewer.add_image(lazy, name="stack", scale=(2, 1, 1), translate=(10, 0, 0))
    widget = dock(viewer)
    widget.fields["model_file"].value = instance_model
    run_and_wait(qtbot, widget)
    full = predictions(viewer)[0].data
    expected = Predictor.from_file(instance_model, device="cpu").predict(stack)
    np.testing.assert_array_equal(full, expected.labels)
    assert all(full[z].max() > 0 for z in range(3))

    viewer.dims.set_point(0, 14.0)  # world z 14 = data slice (14 - 10) / 2 = 2
    widget.fields["current_slice"].value = True
    assert widget.settings.slices == [(2,)]
    run_and_wait(qtbot, widget)
    preview = predictions(viewer)[1].data
    assert not preview[:2].any()
    np.testing.assert_array_equal(preview[2] > 0, full[2] > 0)


def test_probabilities_layer(make_napari_viewer, qtbot, instance_model):
    image, _ = synthetic_nuclei(shape=(96, 96), seed=5)
    viewer = make_napari_viewer()
    viewer.add_image(image, name="cells")
    widget = dock(viewer)
    widget.fields["model_file"].value = instance_model
    widget.fields["probabilities"].value = True
    run_and_wait(qtbot, widget)
    probability = viewer.layers["cells probability"]
    assert isinstance(probability, Image) and probability.data.shape == image.shape
    assert probability.data.min() >= 0 and probability.data.max() <= 1
    assert probability.colormap.name == "magma"
    assert tuple(probability.contrast_limits) == (0, 1)


def test_class_model_offers_semantic_output_only(make_napari_viewer, qtbot, class_model):
    viewer = make_napari_viewer()
    viewer.add_image(synthetic_nuclei(shape=(64, 64), seed=1)[0], name="cells")
    widget = dock(viewer)
    widget.fields["model_file"].value = class_model
    assert tuple(widget.fields["output"].choices) == ("semantic",)
    assert not widget.fields["threshold"].enabled
    widget.fields["probabilities"].value = True
    run_and_wait(qtbot, widget)
    labels = predictions(viewer)[0].data
    assert labels.dtype == np.uint8 and set(np.unique(labels)) <= {1, 2, 3}
    for name in ("nucleus", "membrane", "debris"):
        assert viewer.layers[f"cells probability {name}"].data.shape == (64, 64)


def test_cancel_adds_no_layer(make_napari_viewer, qtbot, instance_model):
    viewer = make_napari_viewer()
    viewer.add_image(np.random.default_rng(0).random((3, 256, 256), np.float32), name="big")
    widget = dock(viewer)
    widget.fields["model_file"].value = instance_model
    widget.fields["tile_size"].value = 24  # the model's halo: hundreds of tiles
    widget.press_start()
    assert widget.runner.running and widget.button_text == "Cancel"
    widget.press_start()
    qtbot.waitUntil(lambda: not widget.runner.running, timeout=60_000)
    assert predictions(viewer) == [] and [layer.name for layer in viewer.layers] == ["big"]
    assert "Cancelled" in widget.message
    assert widget.button_text == "Run" and widget.can_start


def test_tile_smaller_than_the_halo_is_refused_as_by_the_cli(
    make_napari_viewer, qtbot, instance_model
):
    viewer = make_napari_viewer()
    viewer.add_image(synthetic_nuclei(shape=(64, 64), seed=1)[0], name="cells")
    widget = dock(viewer)
    widget.fields["model_file"].value = instance_model
    assert widget.can_start  # automatic tile size
    widget.fields["tile_size"].value = 16
    halo = default_halo(load_model(instance_model)[0].config)
    expected = predict_problems(tile_size=16, halo=halo)
    assert halo > 16 and widget.problems == expected
    assert not widget.can_start and set(widget.marked_fields()) == {"tile_size"}
    widget.fields["tile_size"].value = halo
    assert widget.can_start and widget.marked_fields() == {}


# ------------------------------------------------------------------------------------ session


def test_model_trained_in_this_session_becomes_the_selection(
    make_napari_viewer, qtbot, instance_model
):
    viewer = make_napari_viewer()
    viewer.add_image(synthetic_nuclei(shape=(64, 64), seed=2)[0], name="cells")
    widget = dock(viewer)
    assert widget.fields["source"].value == "file" and not widget.can_start
    model, description = load_model(instance_model)
    SESSION.publish(TrainedModel(model, description, None))
    assert widget.fields["source"].value == "session" and widget.can_start
    assert widget.about.startswith("Trained in this session\nMode: instances")
    run_and_wait(qtbot, widget)
    (layer,) = predictions(viewer)
    assert layer.metadata["model"] == "trained in this session"
    assert next(model.parameters()).device.type == "cpu"


def test_settings_are_remembered(make_napari_viewer, instance_model, tmp_path):
    widget = dock(make_napari_viewer())
    widget.fields["model_file"].value = instance_model
    widget.fields["own_instance_settings"].value = False
    widget.fields["tta"].value = True
    widget.fields["tile_size"].value = 256
    widget.fields["output"].value = "semantic"
    widget.fields["device"].value = "cpu"
    second = dock(make_napari_viewer())
    assert second.fields["model_file"].value == instance_model and "Mode: instances" in second.about
    assert second.fields["own_instance_settings"].value is False
    assert (second.fields["tta"].value, second.fields["tile_size"].value) == (True, 256)
    assert (second.fields["output"].value, second.fields["device"].value) == ("semantic", "cpu")

    gone = tmp_path / "gone.unet"
    second.fields["model_file"].value = gone
    third = dock(make_napari_viewer())
    # A remembered file that no longer exists is dropped.
    assert third.fields["model_file"].value is None


def test_engine_errors_are_shown_in_the_widget(make_napari_viewer, qtbot, instance_model):
    image = synthetic_nuclei(shape=(64, 64), seed=3)[0].astype(np.float32)
    image[5, 5] = np.nan
    viewer = make_napari_viewer()
    viewer.add_image(image, name="holes")
    widget = dock(viewer)
    widget.fields["model_file"].value = instance_model
    run_and_wait(qtbot, widget)
    assert predictions(viewer) == []
    assert widget.message.startswith("Prediction failed: The image contains NaN")
    assert widget.can_start and widget.button_text == "Run"


def test_loading_a_model_file_in_a_fresh_napari_does_not_crash(instance_model, tmp_path):
    """Regression: with Mesa OpenGL, Triton (imported while loading a file) crashed napari."""
    script = tmp_path / "open.py"
    script.write_text(
        "import sys, napari, numpy as np\n"
        "from napari_unetkit._napari.predict_widget import PredictWidget\n"
        "viewer = napari.Viewer(show=False)\n"
        "viewer.add_image(np.zeros((32, 32)))\n"
        "widget = PredictWidget(viewer)\n"
        "widget.set_inputs(model_file=sys.argv[1])\n"
        "assert widget.can_start, widget.message\n"
        "viewer.close()\n"
    )
    env = {**os.environ, "NAPARI_UNETKIT_CONFIG_DIR": str(tmp_path / "config")}
    done = subprocess.run(
        [sys.executable, str(script), str(instance_model)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-2000:]
