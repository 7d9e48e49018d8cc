"""The Predict panel's zarr output and Folder mode, in a real viewer."""

import numpy as np
import pytest
import tifffile
import torch

zarr = pytest.importorskip("zarr")
da = pytest.importorskip("dask.array")

from napari.layers import Labels  # noqa: E402

from napari_unetkit._napari import predict_bigdata  # noqa: E402
from napari_unetkit._napari.layers import METADATA_KEY  # noqa: E402
from napari_unetkit._napari.session import SESSION  # noqa: E402
from napari_unetkit.model import UNet, UNetConfig  # noqa: E402
from napari_unetkit.modelfile import save_model  # noqa: E402
from napari_unetkit.normalization import NormalizationSettings  # noqa: E402
from napari_unetkit.prediction import Predictor  # noqa: E402
from napari_unetkit.synthetic import synthetic_nuclei  # noqa: E402

pytestmark = pytest.mark.gui


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    torch.manual_seed(0)
    config = UNetConfig(depth=2, base_channels=4, dropout=0.0)
    description = {
        "architecture": config.to_dict(),
        "mode": "instances",
        "normalization": NormalizationSettings().to_dict(),
        "class_names": ["nucleus"],
    }
    path = tmp_path_factory.mktemp("model") / "cells.unet"
    return save_model(path, UNet(config).eval(), description)


@pytest.fixture(autouse=True)
def _no_session_model(monkeypatch):
    monkeypatch.setattr(SESSION, "latest", None)


def dock(viewer, model_file):
    _, widget = viewer.window.add_plugin_dock_widget("napari-unetkit", "Predict with U-Net")
    widget.fields["model_file"].value = model_file
    widget.fields["device"].value = "cpu"
    return widget


def run_and_wait(qtbot, widget):
    assert widget.can_start, widget.message
    widget.press_start()
    qtbot.waitUntil(lambda: not widget.runner.running, timeout=120_000)


def same_up_to_renumbering(a, b) -> bool:
    if a.shape != b.shape or not np.array_equal(a > 0, b > 0):
        return False
    pairs = np.unique(np.stack([a.ravel(), b.ravel()]), axis=1)
    return len(np.unique(pairs[0])) == pairs.shape[1] == len(np.unique(pairs[1]))


def test_a_zarr_backed_multiscale_layer_is_predicted_into_a_store(
    make_napari_viewer, qtbot, model_file, tmp_path
):
    stack = np.stack([synthetic_nuclei((64, 72), seed=s)[0] for s in range(3)])
    source = zarr.create_array(str(tmp_path / "in.zarr"), shape=stack.shape, chunks=(1, 32, 32),
                               dtype=stack.dtype)  # fmt: skip
    source[...] = stack
    finest = da.from_zarr(source)
    viewer = make_napari_viewer()
    viewer.add_image([finest, finest[:, ::2, ::2]], multiscale=True, name="cells", scale=(2, 1, 1))
    widget = dock(viewer, model_file)
    widget.bigdata.to_store.value = True
    assert not widget.can_start and "output folder" in widget.message
    widget.bigdata.output_folder.value = tmp_path
    run_and_wait(qtbot, widget)
    (layer,) = [lyr for lyr in viewer.layers if lyr.metadata.get(METADATA_KEY) == "prediction"]
    assert isinstance(layer, Labels) and isinstance(layer.data, da.Array)  # read lazily
    assert layer.metadata["store"] == str(tmp_path / "cells prediction.ome.zarr")
    assert tuple(layer.scale) == (2, 1, 1)
    expected = Predictor.from_file(model_file, device="cpu").predict(stack).labels
    assert same_up_to_renumbering(np.asarray(layer.data), expected)
    assert "Written to" in widget.message


def test_a_result_too_large_for_memory_goes_to_a_store(
    make_napari_viewer, model_file, tmp_path, monkeypatch
):
    monkeypatch.setattr(predict_bigdata, "available_memory", lambda: 64 * 1024)
    viewer = make_napari_viewer()
    viewer.add_image(synthetic_nuclei((128, 128), seed=1)[0], name="cells")
    widget = dock(viewer, model_file)
    note = widget.bigdata.note.value
    assert "about 64 MiB" not in note and "64 KiB" not in note
    assert "would take about" in note and "zarr store" in note
    assert not widget.can_start and not widget.bigdata.output_folder.native.isHidden()
    widget.bigdata.output_folder.value = tmp_path
    assert widget.can_start


def test_folder_mode_reports_a_broken_file_and_goes_on(
    make_napari_viewer, qtbot, model_file, tmp_path
):
    plate, results = tmp_path / "plate", tmp_path / "results"
    plate.mkdir()
    results.mkdir()
    images = {name: synthetic_nuclei((48, 48), seed=s)[0] for s, name in enumerate(("a", "c"))}
    for name, image in images.items():
        tifffile.imwrite(plate / f"{name}.tif", image)
    (plate / "b.tif").write_bytes(b"broken")
    viewer = make_napari_viewer()
    widget = dock(viewer, model_file)
    widget.bigdata.mode.value = predict_bigdata.FOLDER_MODE
    assert widget.fields["image"].native.isHidden() and "folder of images" in widget.message
    widget.bigdata.input_folder.value = plate
    widget.bigdata.output_folder.value = results
    widget.fields["tile_size"].value = 8  # below the model's halo: refused as by the CLI
    assert not widget.can_start and set(widget.marked_fields()) == {"tile_size"}
    widget.fields["tile_size"].value = 0
    run_and_wait(qtbot, widget)
    assert "2 written, 0 skipped" in widget.message and "1 failed" in widget.message
    assert "b.tif" in widget.message
    predictor = Predictor.from_file(model_file, device="cpu")
    for name, image in images.items():
        labels = tifffile.imread(results / f"{name}.tif")
        np.testing.assert_array_equal(labels, predictor.predict(image).labels)
    assert len(viewer.layers) == 0
