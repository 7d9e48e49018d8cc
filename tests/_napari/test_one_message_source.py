"""One message source: the same bad input reads the same in the CLI and in the napari panels.

Each case gives one wrong input to the ``unetkit`` command and to the panel (a real viewer
under Xvfb). The command prints the engine pre-check's message on its error line; the panel
lists the same :class:`~napari_unetkit.checks.Problem`, marks the field holding it (its message
as the tooltip), shows the message and refuses to start.
"""

import numpy as np
import pytest
import torch

from napari_unetkit import checks
from napari_unetkit.cli import main
from napari_unetkit.model import UNet, UNetConfig
from napari_unetkit.modelfile import save_model
from napari_unetkit.normalization import NormalizationSettings

pytestmark = pytest.mark.gui

PREFIX = "unetkit: error: "


def cells() -> tuple[np.ndarray, np.ndarray]:
    """A small image with three bright cells and their instance labels."""
    rng = np.random.default_rng(3)
    image = rng.integers(0, 20, (40, 48)).astype(np.uint8)
    labels = np.zeros((40, 48), np.int32)
    for number, x in enumerate((4, 18, 32), start=1):
        labels[12:26, x : x + 10] = number
    image[labels > 0] += 70
    return image, labels


def grey_model(path):
    torch.manual_seed(0)
    description = {"mode": "instances", "normalization": NormalizationSettings().to_dict()}
    return save_model(path, UNet(UNetConfig(depth=2, base_channels=4)), description)


def cli_errors(capsys, *argv) -> list[str]:
    """Run ``unetkit``; return the messages of its error lines."""
    try:
        code = main([str(arg) for arg in argv])
    except SystemExit as stop:  # argparse refused an option value
        code = stop.code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    if code == 2:  # "unetkit train: error: argument --channels: <message>"
        return [err.strip().splitlines()[-1].split(": ", 3)[-1]]
    assert code == 1, err
    return [line[len(PREFIX) :] for line in err.splitlines() if line.startswith(PREFIX)]


def dock(viewer, name: str):
    _, widget = viewer.window.add_plugin_dock_widget("napari-unetkit", name)
    return widget


def assert_shown(widget, field: str, message: str) -> None:
    """The panel holds ``message`` for ``field``: listed, marked on the field, shown, refused."""
    assert checks.Problem(field, message) in widget.problems
    assert message in widget.marked_fields()[field]
    assert message in widget.message
    assert not widget.can_start


def test_negative_labels_for_training(make_napari_viewer, tmp_path, capsys):
    image, labels = cells()
    np.save(tmp_path / "image.npy", image)
    np.save(tmp_path / "labels.npy", -labels)
    [message] = cli_errors(
        capsys, "train", "--image", tmp_path / "image.npy", "--labels", tmp_path / "labels.npy",
        "--out", tmp_path / "m.unet", "--epochs", "1",
    )  # fmt: skip
    assert "negative" in message

    viewer = make_napari_viewer()
    widget = dock(viewer, "Train U-Net")
    row = widget.pairs.rows[0]
    row.image.value = viewer.add_image(image, name="cells image")
    row.labels_choice.value = viewer.add_labels(-labels, name="cells")
    widget.set_inputs(path=tmp_path / "m.unet")
    assert_shown(widget, "labels", message)


def test_model_file_that_is_a_folder(make_napari_viewer, tmp_path, capsys):
    image, labels = cells()
    np.save(tmp_path / "image.npy", image)
    np.save(tmp_path / "labels.npy", labels)
    folder = tmp_path / "taken.unet"
    folder.mkdir()
    [message] = cli_errors(
        capsys, "train", "--image", tmp_path / "image.npy", "--labels", tmp_path / "labels.npy",
        "--out", folder,
    )  # fmt: skip
    assert "is a folder" in message

    viewer = make_napari_viewer()
    viewer.add_image(image, name="cells image")
    viewer.add_labels(labels, name="cells image labels")
    widget = dock(viewer, "Train U-Net")
    widget.set_inputs(path=folder)
    assert_shown(widget, "out", message)
    widget.set_inputs(path=tmp_path / "m.unet")
    assert widget.can_start and widget.marked_fields() == {}  # the mark goes with the mistake


def test_unreadable_channel_list(make_napari_viewer, tmp_path, capsys):
    image, labels = cells()
    np.save(tmp_path / "image.npy", image)
    np.save(tmp_path / "labels.npy", labels)
    [message] = cli_errors(
        capsys, "train", "--image", tmp_path / "image.npy", "--labels", tmp_path / "labels.npy",
        "--out", tmp_path / "m.unet", "--channels", "red",
    )  # fmt: skip
    assert message.startswith("Channels: write the channel numbers")

    viewer = make_napari_viewer()
    viewer.add_image(image, name="cells image")
    viewer.add_labels(labels, name="cells image labels")
    widget = dock(viewer, "Train U-Net")
    widget.set_inputs(path=tmp_path / "m.unet", channels="red")
    assert_shown(widget, "channels", message)


def test_colour_image_for_a_greyscale_model(make_napari_viewer, tmp_path, capsys):
    model = grey_model(tmp_path / "grey.unet")
    rgb = np.stack([cells()[0]] * 3, axis=-1)
    np.save(tmp_path / "rgb.npy", rgb)
    [message] = cli_errors(
        capsys, "predict", "--model", model, "--image", tmp_path / "rgb.npy",
        "--out", tmp_path / "out.tif", "--device", "cpu",
    )  # fmt: skip
    assert "convert the image to greyscale" in message

    viewer = make_napari_viewer()
    layer = viewer.add_image(rgb, name="photo", rgb=True)
    widget = dock(viewer, "Predict with U-Net")
    widget.set_inputs(model_file=model, image=layer)
    assert_shown(widget, "image", message)


def test_negative_labels_for_a_weight_map(make_napari_viewer, tmp_path, capsys):
    _, labels = cells()
    np.save(tmp_path / "labels.npy", -labels)
    [message] = cli_errors(
        capsys, "weightmap", "--labels", tmp_path / "labels.npy", "--out", tmp_path / "w.tif"
    )
    assert "negative" in message

    viewer = make_napari_viewer()
    layer = viewer.add_labels(-labels, name="cells")
    widget = dock(viewer, "Boundary weight map")
    widget.set_inputs(labels=layer)
    assert_shown(widget, "labels", message)


def test_the_command_prints_every_problem_on_its_own_line(tmp_path, capsys):
    image, labels = cells()
    np.save(tmp_path / "image.npy", image)
    np.save(tmp_path / "labels.npy", labels)
    messages = cli_errors(
        capsys, "train", "--image", tmp_path / "image.npy", "--labels", tmp_path / "labels.npy",
        "--out", tmp_path / "m.unet", "--patch-size", "0", "--batch-size", "0",
    )  # fmt: skip
    expected = checks.train_problems({"patch_size": 0, "batch_size": 0})
    assert messages == [problem.message for problem in expected]
    assert not (tmp_path / "m.unet").exists()
