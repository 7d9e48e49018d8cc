"""The "Correct and retrain" panel in real viewers: add, retrain, re-predict, next, reopen."""

import errno
import os
import shutil
import stat
import sys

import numpy as np
import pytest
from napari.layers import Image, Labels

from napari_unetkit._napari.layers import METADATA_KEY
from napari_unetkit._napari.retrain_parts import next_index, round_config, take_correction
from napari_unetkit._napari.retrain_widget import RetrainWidget
from napari_unetkit._napari.session import SESSION, TrainedModel
from napari_unetkit._napari.settings import save_widget_settings
from napari_unetkit.model import UNet, UNetConfig
from napari_unetkit.modelfile import load_model, save_model
from napari_unetkit.project import Project
from napari_unetkit.synthetic import synthetic_stack
from napari_unetkit.training import TrainConfig

pytestmark = pytest.mark.gui

TIMEOUT_MS = 120_000
#: A tiny network and few steps: every round takes seconds.
TINY = TrainConfig(
    depth=2,
    base_channels=8,
    patch_size=48,
    batch_size=4,
    steps_per_epoch=3,
    epochs=2,
    augmentation=None,
    seed=1,
)


@pytest.fixture(scope="module")
def stack():
    return synthetic_stack(n_slices=3, shape=(64, 64), seed=2)


def dock(viewer) -> RetrainWidget:
    _, widget = viewer.window.add_plugin_dock_widget("napari-unetkit", "Correct and retrain")
    widget.base_config = TINY
    widget.set_budget(2, "epochs")
    return widget


def add_stack(viewer, stack, painted_slices=(0,)):
    """The stack, and the labels a user painted on some of its slices (0 elsewhere)."""
    image, truth = stack
    painted = np.zeros_like(truth)
    for index in painted_slices:
        painted[index] = truth[index]
    layers = viewer.add_image(image, name="cells"), viewer.add_labels(painted, name="painted")
    viewer.dims.set_point(0, 0)  # look at slice 0
    return layers


def wait_for(qtbot, runner, timeout=TIMEOUT_MS):
    worker = runner.worker
    if worker is not None:
        with qtbot.waitSignal(worker.finished, timeout=timeout):
            pass


def retrain(qtbot, widget):
    worker = widget.retrain()
    assert worker is not None, widget.message
    wait_for(qtbot, widget.trainer)
    qtbot.waitUntil(lambda: not widget.predictor.running, timeout=TIMEOUT_MS)


def predictions(viewer):
    return [layer for layer in viewer.layers if layer.metadata.get(METADATA_KEY) == "prediction"]


# -- pure helpers ------------------------------------------------------------------------------


def test_next_index_walks_every_slice_in_c_order():
    sizes = (2, 3)
    seen, index = [(0, 0)], (0, 0)
    while (index := next_index(sizes, index)) is not None:
        seen.append(index)
    assert seen == [(t, z) for t in range(2) for z in range(3)]
    assert next_index((), ()) is None


def test_round_config_sets_only_the_budget():
    minutes = round_config(TINY, 3, "minutes", "cells")
    assert (minutes.epochs, minutes.time_limit, minutes.data_name) == (None, 180.0, "cells")
    epochs = round_config(TINY, 4, "epochs", "cells")
    assert (epochs.epochs, epochs.time_limit) == (4, None)
    assert (epochs.depth, epochs.patch_size) == (TINY.depth, TINY.patch_size)


def test_a_correction_is_a_copy_of_the_visible_slice(stack):
    image, truth = stack
    labels = Labels(truth.copy(), name="labels")
    before = labels.data.copy()
    taken = take_correction(Image(image, name="cells"), labels, None, (1,))
    np.testing.assert_array_equal(taken.labels, truth[1])
    np.testing.assert_array_equal(taken.image, image[1])
    taken.labels[:] = 0
    np.testing.assert_array_equal(labels.data, before)  # the layer is untouched
    one_slice = take_correction(Image(image), Labels(truth[2].copy()), None, (2,))
    np.testing.assert_array_equal(one_slice.labels, truth[2])
    with pytest.raises(ValueError, match=r"needs labels of shape \(3, 64, 64\)"):
        take_correction(Image(image), Labels(np.zeros((5, 5), np.int32), name="x"), None, (0,))
    rgb = np.stack([image[0], image[1], image[2]], axis=-1)  # (Y, X, 3)
    colour = take_correction(Image(rgb, rgb=True), Labels(truth[0].copy()), None, ())
    assert colour.channel_axis == 0
    np.testing.assert_array_equal(colour.image, np.moveaxis(rgb, -1, 0))


# -- the loop ----------------------------------------------------------------------------------


def test_the_whole_loop_and_reopening_the_project(make_napari_viewer, qtbot, stack, tmp_path):
    folder = tmp_path / "project"
    viewer = make_napari_viewer()
    image, painted = add_stack(viewer, stack)
    painted_before = painted.data.copy()
    widget = dock(viewer)
    assert not widget.open_project(folder)  # no project there yet: the panel offers to create
    assert widget.create_project()
    assert widget.current_model is None
    assert widget.predict() is None
    assert "no model yet" in widget.message

    # Round 1: the painted cells of slice 0, trained from scratch.
    widget.choose(image=image, labels=painted)
    entry = widget.add_to_training_set()
    assert entry is not None, widget.message
    assert [e.id for e in widget.entries] == [entry.id]
    np.testing.assert_array_equal(painted.data, painted_before)  # adding is a copy
    retrain(qtbot, widget)
    versions = widget.versions
    assert [v.name for v in versions] == ["v001"]
    assert versions[0].parent is None
    assert widget.current_model == versions[0].path
    assert "v001" in widget.summary
    [first] = predictions(viewer)
    assert first.name == "cells · v001"
    assert first.metadata["model_version"] == "v001"
    assert first.metadata["slices"] == [[0]]
    assert first.data[1:].max() == 0  # only the visible slice was predicted

    # Next: slice 1, predicted by v001 into the same layer (its slice 1 was empty).
    assert widget.next() is not None, widget.message
    wait_for(qtbot, widget.predictor)
    assert viewer.dims.current_step[0] == 1
    assert predictions(viewer) == [first]
    assert first.metadata["slices"] == [[0], [1]]
    # The user corrects slice 1 of the prediction and adds it.
    first.data[1] = stack[1][1]
    widget.choose(labels=first)
    assert widget.add_to_training_set() is not None, widget.message
    assert len(widget.entries) == 2

    # Round 2: fine-tunes v001 on both slices; slice 1 is predicted again by v002.
    retrain(qtbot, widget)
    versions = widget.versions
    assert [v.name for v in versions] == ["v001", "v002"]
    assert versions[1].parent == 1
    assert set(versions[1].entries) == {e.id for e in widget.entries}
    second = viewer.layers["cells · v002"]
    assert second.metadata["model_version"] == "v002"
    assert second.metadata["slices"] == [[1]]
    np.testing.assert_array_equal(first.data[1], stack[1][1])  # corrections never overwritten

    # Closing the viewer and opening a new one: the remembered project comes back.
    viewer.close()
    viewer = make_napari_viewer()
    image = viewer.add_image(stack[0], name="cells")
    widget = dock(viewer)
    assert widget.project is not None and widget.project.folder == folder.absolute()
    assert len(widget.entries) == 2
    assert widget.current_model == versions[1].path  # the newest version
    widget.current_model = versions[0].path  # an earlier version stays choosable
    widget.choose(image=image)
    assert widget.predict() is not None, widget.message
    wait_for(qtbot, widget.predictor)
    assert [layer.name for layer in predictions(viewer)] == ["cells · v001"]


# -- bad input ---------------------------------------------------------------------------------


def test_wrong_shapes_and_empty_corrections_are_refused(make_napari_viewer, stack, tmp_path):
    viewer = make_napari_viewer()
    image, painted = add_stack(viewer, stack)
    widget = dock(viewer)
    assert widget.add_to_training_set() is None
    assert "project" in widget.message
    widget.open_project(tmp_path / "p")
    assert widget.create_project()
    wrong = viewer.add_labels(np.ones((10, 10), np.int32), name="wrong")
    widget.choose(image=image, labels=wrong)
    assert widget.add_to_training_set() is None
    assert "'wrong' have shape (10, 10)" in widget.message
    assert "(3, 64, 64)" in widget.message
    empty = viewer.add_labels(np.zeros_like(painted.data), name="empty")
    widget.choose(image=image, labels=empty)
    assert widget.add_to_training_set() is None
    assert "labels are empty" in widget.message
    widget.choose(labels=painted, region=empty)  # a region that marks nothing
    assert widget.add_to_training_set() is None
    assert "region marks no pixel" in widget.message
    assert widget.entries == []
    assert widget.retrain() is None
    assert "training set is empty" in widget.message


def test_a_deleted_project_folder_gives_a_message(make_napari_viewer, stack, tmp_path):
    viewer = make_napari_viewer()
    image, painted = add_stack(viewer, stack)
    widget = dock(viewer)
    widget.open_project(tmp_path / "p")
    assert widget.create_project()
    widget.choose(image=image, labels=painted)
    assert widget.add_to_training_set() is not None, widget.message
    shutil.rmtree(tmp_path / "p")
    assert widget.add_to_training_set() is None
    assert "no longer exists" in widget.message
    assert widget.retrain() is None
    assert "no longer exists" in widget.message
    assert widget.entries == []


@pytest.mark.skipif(
    sys.platform == "win32" or (hasattr(os, "geteuid") and os.geteuid() == 0),
    reason="root (and Windows) can write into read-only folders",
)
def test_a_read_only_project_gives_a_message(make_napari_viewer, stack, tmp_path):
    viewer = make_napari_viewer()
    image, painted = add_stack(viewer, stack)
    widget = dock(viewer)
    widget.open_project(tmp_path / "p")
    assert widget.create_project()
    widget.choose(image=image, labels=painted)
    folder = tmp_path / "p"
    mode = folder.stat().st_mode
    folder.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        assert widget.add_to_training_set() is None
        assert "read-only" in widget.message
    finally:
        folder.chmod(mode)


def test_a_refused_write_gives_a_message_also_as_root(
    make_napari_viewer, stack, tmp_path, monkeypatch
):
    """What the OS says for a read-only folder, raised where the project checks it can write."""
    viewer = make_napari_viewer()
    image, painted = add_stack(viewer, stack)
    widget = dock(viewer)
    widget.open_project(tmp_path / "p")
    assert widget.create_project()
    widget.choose(image=image, labels=painted)

    def refuse(path):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr("napari_unetkit.project.check_writable", refuse)
    assert widget.add_to_training_set() is None
    assert "read-only (permission denied)" in widget.message
    assert widget.entries == []


def test_the_project_is_created_only_when_asked(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    widget = dock(viewer)
    typed = tmp_path / "not" / "yet"
    assert not widget.open_project(typed)
    assert not typed.exists()  # typing a path creates nothing
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    assert not widget.open_project(other)
    assert not widget.create_project()
    assert "not empty" in widget.message


# -- stop --------------------------------------------------------------------------------------


def test_stop_before_the_first_step_saves_nothing(make_napari_viewer, qtbot, stack, tmp_path):
    viewer = make_napari_viewer()
    image, painted = add_stack(viewer, stack)
    widget = dock(viewer)
    widget.open_project(tmp_path / "p")
    assert widget.create_project()
    widget.choose(image=image, labels=painted)
    assert widget.add_to_training_set() is not None, widget.message
    assert widget.retrain() is not None
    widget.stop()  # before the training thread took its first step
    wait_for(qtbot, widget.trainer)
    assert widget.versions == []
    assert list((tmp_path / "p" / "models").glob("*.unet")) == []
    assert widget.status == "Stopped before training began: nothing was saved."
    assert predictions(viewer) == []
    assert widget.current_model is None


def test_stop_during_training_keeps_the_best_model(make_napari_viewer, qtbot, stack, tmp_path):
    viewer = make_napari_viewer()
    image, painted = add_stack(viewer, stack)
    widget = dock(viewer)
    widget.set_budget(1000, "epochs")
    widget.open_project(tmp_path / "p")
    assert widget.create_project()
    widget.choose(image=image, labels=painted)
    assert widget.add_to_training_set() is not None, widget.message
    assert widget.retrain() is not None
    qtbot.waitUntil(lambda: widget.epochs_shown >= 1, timeout=TIMEOUT_MS)
    widget.stop()
    wait_for(qtbot, widget.trainer)
    qtbot.waitUntil(lambda: not widget.predictor.running, timeout=TIMEOUT_MS)
    assert widget.status == "Stopped by you."
    assert [v.name for v in widget.versions] == ["v001"]
    assert Project.open(tmp_path / "p").latest_model().name == "v001"
    assert [layer.name for layer in predictions(viewer)] == ["cells · v001"]


def test_next_goes_on_to_the_next_image_layer(make_napari_viewer, stack, tmp_path):
    viewer = make_napari_viewer()
    first = viewer.add_image(stack[0][0], name="first")
    second = viewer.add_image(stack[0][1], name="second")
    widget = dock(viewer)
    widget.open_project(tmp_path / "p")
    assert widget.create_project()
    widget.choose(image=first)
    assert widget.next() is None  # moved on, but there is no model to predict with yet
    assert widget.image is second
    assert second.visible and not first.visible
    assert "no model yet" in widget.message
    assert widget.next() is None
    assert widget.image is second
    assert widget.message == "'second' is the last image: open more images to go on."


def test_entries_can_be_removed(make_napari_viewer, stack, tmp_path):
    viewer = make_napari_viewer()
    image, painted = add_stack(viewer, stack, painted_slices=(0, 1))
    widget = dock(viewer)
    widget.open_project(tmp_path / "p")
    assert widget.create_project()
    widget.choose(image=image, labels=painted)
    kept = widget.add_to_training_set()
    viewer.dims.set_point(0, 1)
    removed = widget.add_to_training_set()
    assert [e.source for e in widget.entries] == ["cells slice 0", "cells slice 1"]
    widget.remove_entries([removed.id])
    assert [e.id for e in widget.entries] == [kept.id]
    assert widget.message == "Removed 1 slice from the training set."


def test_closing_the_viewer_stops_retraining(make_napari_viewer, qtbot, stack, tmp_path):
    viewer = make_napari_viewer()
    image, painted = add_stack(viewer, stack)
    widget = dock(viewer)
    widget.set_budget(1000, "epochs")
    widget.open_project(tmp_path / "p")
    assert widget.create_project()
    widget.choose(image=image, labels=painted)
    assert widget.add_to_training_set() is not None
    worker = widget.retrain()
    qtbot.waitUntil(lambda: widget.epochs_shown >= 1, timeout=TIMEOUT_MS)
    with qtbot.waitSignal(worker.finished, timeout=30_000):  # listen before closing
        viewer.close()
    project = Project.open(tmp_path / "p")
    # The training thread stops by itself and its best model becomes a version.
    qtbot.waitUntil(lambda: [v.name for v in project.models()] == ["v001"], timeout=30_000)


def test_a_model_trained_elsewhere_is_a_starting_point(make_napari_viewer, qtbot, stack, tmp_path):
    viewer = make_napari_viewer()
    image, painted = add_stack(viewer, stack)
    widget = dock(viewer)
    widget.open_project(tmp_path / "p")
    assert widget.create_project()
    assert widget.current_model is None  # no version: from scratch
    # The Train panel saves a model into its models folder and hands it over.
    folder = tmp_path / "models"
    folder.mkdir()
    save_widget_settings("train", {"path": str(folder / "cells.unet")})
    network = UNet(UNetConfig(depth=2, base_channels=4))
    base = save_model(folder / "cells.unet", network, {"mode": "instances"})
    SESSION.publish(TrainedModel(*load_model(base), base))
    widget.current_model = base  # offered as "file: cells.unet ..."
    assert widget.version_name(widget.current_model) == "cells"
    widget.choose(image=image, labels=painted)
    assert widget.add_to_training_set() is not None, widget.message
    retrain(qtbot, widget)
    [version] = widget.versions
    assert version.parent is None and version.base == str(base)
    assert widget.current_model == version.path
