"""The Train panel hands lazily backed layers (dask, zarr) to training without copying them."""

import numpy as np
import pytest

zarr = pytest.importorskip("zarr")
da = pytest.importorskip("dask.array")

from napari_unetkit._napari import train_job  # noqa: E402
from napari_unetkit.modelfile import read_description  # noqa: E402
from napari_unetkit.synthetic import synthetic_nuclei  # noqa: E402
from napari_unetkit.training import train  # noqa: E402

pytestmark = pytest.mark.gui


def test_training_on_dask_and_zarr_layers_reads_them_lazily(
    make_napari_viewer, qtbot, tmp_path, monkeypatch
):
    image, labels = synthetic_nuclei((192, 192), seed=4)
    stored = zarr.create_array(str(tmp_path / "i.zarr"), shape=image.shape, chunks=(64, 64),
                               dtype=image.dtype)  # fmt: skip
    stored[...] = image
    labels_store = zarr.create_array(str(tmp_path / "l.zarr"), shape=labels.shape,
                                     chunks=(64, 64), dtype=np.int32)  # fmt: skip
    labels_store[...] = labels
    viewer = make_napari_viewer()
    lazy_image = da.from_zarr(stored)
    viewer.add_image(lazy_image, name="cells")
    layer = viewer.add_labels(labels_store, name="cells labels")
    _, widget = viewer.window.add_plugin_dock_widget("napari-unetkit", "Train U-Net")
    (row,) = widget.pairs.rows
    assert row.image.value.name == "cells" and row.labels_choice.value is layer
    given = []

    def spy(pairs, *args, **kwargs):
        given.extend(pairs)
        return train(pairs, *args, **kwargs)

    monkeypatch.setattr(train_job, "train", spy)
    settings = widget.settings_form
    settings.show_advanced.value = True
    settings.size.value = "small"
    settings.depth.value = 2
    settings.patch_size.value = 32
    settings.batch_size.value = 2
    settings.train_for.value = "epochs"
    settings.epochs.value = 1
    settings.steps_per_epoch.value = 2
    settings.path.value = tmp_path / "lazy.unet"
    assert widget.can_start, widget.message
    widget.press_start()
    with qtbot.waitSignal(widget.runner.worker.finished, timeout=60_000):
        pass
    ((image_given, labels_given),) = given
    assert image_given is lazy_image and labels_given is labels_store  # nothing was copied
    description = read_description(tmp_path / "lazy.unet")
    assert description["data"]["pairs"][0]["lazy"], widget.status
