"""The Train panel on a new user's own data: captions, layer choices, summaries and messages."""

import numpy as np
import pytest
from qtpy.QtWidgets import QLabel

from napari_unetkit._napari import train_job
from napari_unetkit._napari.layers import METADATA_KEY
from napari_unetkit._napari.session import SESSION, TrainedModel
from napari_unetkit._napari.train_inputs import IMAGE_AS_LABELS, annotation_counts
from napari_unetkit._napari.train_widget import (
    TrainWidget,
    end_status,
    status_text,
    summary_text,
)
from napari_unetkit.model import UNet, UNetConfig
from napari_unetkit.synthetic import synthetic_nuclei
from napari_unetkit.training import TrainConfig, TrainProgress, TrainResult

pytestmark = pytest.mark.gui

CAPTIONS = ("Image", "Labels", "Annotated region")


def dock(viewer) -> TrainWidget:
    _, widget = viewer.window.add_plugin_dock_widget("napari-unetkit", "Train U-Net")
    return widget


def shown_captions(container) -> set[str]:
    """Texts of the Qt labels shown (to the container) inside a magicgui container."""
    return {
        label.text().rstrip(":")
        for label in container.native.findChildren(QLabel)
        if label.isVisibleTo(container.native) and label.text()
    }


def combo_texts(combo) -> list[str]:
    return [combo.native.itemText(i) for i in range(combo.native.count())]


def shown(field) -> bool:
    return not field.native.isHidden()


def test_captions_survive_opening_the_panel_on_an_empty_viewer(make_napari_viewer):
    viewer = make_napari_viewer()
    widget = dock(viewer)  # no layer at all, as in the paint-your-own workflow
    row = widget.pairs.rows[0]
    assert set(CAPTIONS) <= shown_captions(row)
    image, labels = synthetic_nuclei(shape=(64, 64), seed=2)
    viewer.add_image(image, name="cells")
    viewer.add_labels(np.zeros_like(labels), name="Labels")
    assert set(CAPTIONS) <= shown_captions(row)
    assert row.labels_choice.value is viewer.layers["Labels"]
    second = widget.pairs.add_row()
    assert set(CAPTIONS) <= shown_captions(second)


def test_masks_opened_as_images_are_offered_as_labels(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    image, labels = synthetic_nuclei(shape=(64, 64), seed=3)
    viewer.add_image(image.astype(np.uint16), name="cells")  # integer microscopy image
    widget = dock(viewer)
    widget.settings_form.path.value = tmp_path / "m.unet"
    row = widget.pairs.rows[0]
    assert row.labels_choice.value is None  # the image itself is never picked as its labels
    assert "Convert to Labels" in widget.message

    viewer.add_image(labels.astype(np.float32), name="cells probability")  # not whole numbers
    masks = viewer.add_image(labels.astype(np.uint16), name="cells_masks")  # File > Open
    texts = combo_texts(row.labels_choice)
    assert "cells_masks" + IMAGE_AS_LABELS in texts
    assert not any(text.startswith("cells probability") for text in texts)
    assert row.labels_choice.value is masks
    assert widget.can_start, widget.message
    snapshot = widget.pairs.take_snapshot()
    np.testing.assert_array_equal(snapshot.pairs[0][1], labels)

    row.labels_choice.value = row.image.value
    assert not widget.can_start and "another layer than the image" in widget.message


def test_the_panels_own_results_are_never_picked(make_napari_viewer):
    viewer = make_napari_viewer()
    image, labels = synthetic_nuclei(shape=(64, 64), seed=4)
    viewer.add_image(image, name="nuclei")
    for kind in ("prediction", "preview"):
        viewer.add_labels(labels, name=f"nuclei {kind}", metadata={METADATA_KEY: kind})
    widget = dock(viewer)
    row = widget.pairs.rows[0]
    assert row.labels_choice.value is None
    assert "choose a Labels layer" in widget.message
    assert combo_texts(row.labels_choice)[1:3] == ["nuclei prediction", "nuclei preview"]

    mine = viewer.add_labels(labels, name="my cells")
    assert row.labels_choice.value is mine
    assert widget.can_start, widget.message
    row.labels_choice.value = viewer.layers["nuclei prediction"]  # chosen on purpose: kept
    viewer.add_labels(np.zeros_like(labels), name="other")
    assert row.labels_choice.value is viewer.layers["nuclei prediction"]


def reference_counts(stack: np.ndarray) -> tuple[int, int]:
    """Annotated frames and objects counted one frame at a time with np.unique."""
    annotated = [frame for frame in stack if frame.any()]
    objects = sum(len(np.unique(frame[frame > 0])) for frame in annotated)
    return len(annotated), objects


def test_summary_before_start_and_a_stack_of_only_the_annotated_frames(make_napari_viewer):
    viewer = make_napari_viewer()
    frames = [synthetic_nuclei(shape=(48, 48), seed=s) for s in range(20)]
    movie = np.stack([image for image, _ in frames])
    labels = np.stack([label for _, label in frames])
    labels[10:] = 0  # frames 10-19 left unannotated, as the user guide says
    viewer.add_image(movie, name="movie")
    viewer.add_labels(labels, name="movie labels")
    widget = dock(viewer)
    annotated, objects = reference_counts(labels)
    assert annotated == 10
    assert widget.can_start, widget.message
    assert (
        f"10 of 20 frames annotated (empty frames are skipped); {objects} objects" in widget.message
    )

    viewer.layers.remove("movie labels")
    short = viewer.add_labels(labels[:10], name="masks")  # only the annotated frames
    row = widget.pairs.rows[0]
    row.labels_choice.value = short
    assert not widget.can_start
    assert "'masks' has 10 frames but 'movie' has 20" in widget.message
    assert "Add empty frames" in widget.message
    assert shown(row.pad_button)
    row.pad_button.native.click()
    padded = viewer.layers["masks (20 frames)"]
    assert row.labels_choice.value is padded
    np.testing.assert_array_equal(padded.data, labels)
    np.testing.assert_array_equal(short.data, labels[:10])  # the user's layer is untouched
    assert not shown(row.pad_button)
    assert widget.can_start, widget.message


def test_annotation_counts_match_a_per_frame_reference(rng):
    stack = rng.integers(0, 6, size=(5, 16, 16)) * (rng.random((5, 1, 1)) > 0.4)
    stack[:, :, :8] *= 1000  # large ids take the np.unique path on some frames
    frames, annotated, objects = annotation_counts(stack, None, "instances")
    assert (frames, (annotated, objects)) == (5, reference_counts(stack))
    region = np.zeros(stack.shape, bool)
    region[0] = True
    assert annotation_counts(stack, region, "classes")[1:] == (
        int(stack[0].any()),
        int(np.count_nonzero(stack[0])),
    )


def tiny_result(score: float | None, stopped_by: str = "cancel") -> TrainResult:
    model = UNet(UNetConfig(depth=1, base_channels=2))
    description = {"mode": "instances", "data": {"n_validation_slices": 1}}
    return TrainResult(
        model=model,
        description=description,
        history=[],
        best_score=score,
        best_epoch=3,
        epochs_run=13,
        steps_run=130,
        elapsed=95.0,
        stopped_by=stopped_by,
        model_path=None,
    )


def test_a_model_scoring_zero_waits_for_the_users_choice(make_napari_viewer, monkeypatch, tmp_path):
    viewer = make_napari_viewer()
    image = np.zeros((32, 32), np.uint8)
    labels = np.zeros((32, 32), np.int32)
    image[8:24, 8:24], labels[8:24, 8:24] = 200, 1
    viewer.add_image(image, name="cells")
    viewer.add_labels(labels, name="cells labels")
    widget = dock(viewer)
    widget.set_inputs(path=tmp_path / "m.unet")
    assert "held out from training" in widget.score_note
    earlier = TrainedModel(UNet(UNetConfig(depth=1, base_channels=2)), {}, None)
    SESSION.publish(earlier)
    results = [tiny_result(0.0)]  # what "training" returns, run after run
    monkeypatch.setattr(train_job, "train", lambda *args, **kwargs: results[-1])
    widget.start()
    widget.wait()
    assert SESSION.latest is earlier
    assert "validation F1 is 0" in widget.summary
    assert "Predict panel keeps its model" in widget.summary
    assert widget.can_use_anyway
    widget.use_model_anyway()
    assert SESSION.latest.model is results[0].model
    assert not widget.can_use_anyway

    results.append(tiny_result(0.8))
    widget.start()
    widget.wait()
    assert SESSION.latest.model is results[1].model and not widget.can_use_anyway
    assert "The Predict panel now uses this model." in widget.summary


def test_end_of_training_is_said_in_words():
    limited = TrainConfig(epochs=None, time_limit=300)
    assert end_status(tiny_result(0.5, "time_limit"), limited) == (
        "Stopped: the time limit of 5 min was reached."
    )
    assert end_status(tiny_result(0.5, "cancel"), limited) == "Stopped by you."
    assert end_status(tiny_result(0.5, "cancel"), limited, closed=True) == (
        "Stopped: the Train U-Net panel was closed."
    )
    assert end_status(tiny_result(0.5, "epochs"), TrainConfig(epochs=30)) == (
        "Finished: all 30 epochs are done."
    )
    summary = summary_text(tiny_result(0.5, "time_limit"), "instances", limited)
    assert "ended because the time limit of 5 min was reached" in summary
    for stopped_by in ("epochs", "time_limit", "cancel"):
        done = TrainProgress(stage="done", message=f"training stopped ({stopped_by})")
        assert stopped_by not in status_text(done, "F1")
