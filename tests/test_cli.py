"""The ``unetkit`` command, end to end on small synthetic data."""

import json

import numpy as np
import pytest
import tifffile

from napari_unetkit.cli.commands import main
from napari_unetkit.layout import infer_channel_axis
from napari_unetkit.metrics import evaluate
from napari_unetkit.modelfile import load_model
from napari_unetkit.prediction import Predictor
from napari_unetkit.synthetic import synthetic_nuclei
from napari_unetkit.weightmap import weights_and_target

TINY = [
    "--epochs", "1", "--steps-per-epoch", "3", "--patch-size", "64", "--batch-size", "2",
    "--base-channels", "4", "--depth", "2", "--device", "cpu",
]  # fmt: skip


@pytest.fixture
def nuclei(tmp_path):
    image, labels = synthetic_nuclei(shape=(96, 96), seed=5)
    tifffile.imwrite(tmp_path / "image.tif", image)
    tifffile.imwrite(tmp_path / "labels.tif", labels)
    return tmp_path, image, labels


def test_weightmap_command_writes_the_engine_result(nuclei):
    folder, _, labels = nuclei
    out, target = folder / "weights.tif", folder / "target.tif"
    args = ["weightmap", "--labels", str(folder / "labels.tif"), "--out", str(out)]
    assert main([*args, "--preset", "falk2019", "--target", str(target)]) == 0
    expected, separated = weights_and_target(labels, preset="falk2019")
    np.testing.assert_array_equal(tifffile.imread(out), expected)
    np.testing.assert_array_equal(tifffile.imread(target), separated)


def test_existing_output_is_refused_without_overwrite(nuclei, capsys):
    folder, _, _ = nuclei
    out = folder / "weights.tif"
    out.write_bytes(b"precious")
    args = ["weightmap", "--labels", str(folder / "labels.tif"), "--out", str(out)]
    assert main(args) == 1
    assert out.read_bytes() == b"precious"
    error = capsys.readouterr().err
    assert "--overwrite" in error and "Traceback" not in error
    assert main([*args, "--overwrite", "--w0", "3"]) == 0
    assert tifffile.imread(out).dtype == np.float32


def test_evaluate_command_prints_json(nuclei, capsys):
    folder, _, labels = nuclei
    shifted = np.roll(labels, 2, axis=1)
    tifffile.imwrite(folder / "pred.tif", shifted)
    capsys.readouterr()
    args = ["evaluate", "--truth", str(folder / "labels.tif"), "--pred", str(folder / "pred.tif")]
    assert main([*args, "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == pytest.approx(evaluate(labels, shifted))


@pytest.mark.slow
def test_train_then_predict(nuclei, capsys):
    folder, image, _ = nuclei
    model = folder / "cells"
    args = ["train", "--image", str(folder / "image.tif"), "--labels", str(folder / "labels.tif")]
    assert main([*args, "--out", str(model), *TINY]) == 0
    network, description = load_model(folder / "cells.unet")
    assert description["mode"] == "instances"
    assert description["training"]["data_name"] == "image"  # shown in the Recent models list
    assert network.config.base_channels == 4 and network.config.depth == 2
    out, prob = folder / "pred.tif", folder / "prob.tif"
    predict = ["predict", "--model", str(folder / "cells.unet"), "--image"]
    assert main([*predict, str(folder / "image.tif"), "--out", str(out), "--probabilities",
                 str(prob), "--device", "cpu"]) == 0  # fmt: skip
    labels = tifffile.imread(out)
    assert labels.shape == image.shape and np.issubdtype(labels.dtype, np.integer)
    probabilities = tifffile.imread(prob)
    assert probabilities.shape == image.shape
    assert probabilities.min() >= 0.0 and probabilities.max() <= 1.0
    assert "Model saved" in capsys.readouterr().out
    mirrored = folder / "pred_mirror.tif"
    assert main([*predict, str(folder / "image.tif"), "--out", str(mirrored), "--border",
                 "mirror", "--device", "cpu"]) == 0  # fmt: skip
    engine = Predictor.from_file(folder / "cells.unet", device="cpu", border="mirror")
    np.testing.assert_array_equal(tifffile.imread(mirrored), engine.predict(image).labels)
    for precision in ("float32", "half"):
        written = folder / f"prob_{precision}.tif"
        assert main([*predict, str(folder / "image.tif"), "--out", str(folder / "p.tif"),
                     "--overwrite", "--probabilities", str(written), "--precision", precision,
                     "--device", "cpu"]) == 0  # fmt: skip
        engine = Predictor.from_file(folder / "cells.unet", device="cpu", precision=precision)
        expected = engine.predict(image, return_probabilities=True).probabilities
        np.testing.assert_array_equal(tifffile.imread(written), expected)


def test_bad_model_file_is_one_line_without_traceback(nuclei, capsys):
    folder, _, _ = nuclei
    bad = folder / "bad.unet"
    bad.write_bytes(b"\x00garbage" * 50)
    args = ["predict", "--model", str(bad), "--image", str(folder / "image.tif")]
    assert main([*args, "--out", str(folder / "out.tif")]) == 1
    error = capsys.readouterr().err.strip()
    assert error.startswith("unetkit: error:") and "bad.unet" in error
    assert "\n" not in error and "Traceback" not in error
    assert not (folder / "out.tif").exists()


def test_missing_output_folder_is_refused_before_training(nuclei, capsys):
    folder, _, _ = nuclei
    args = ["train", "--image", str(folder / "image.tif"), "--labels", str(folder / "labels.tif")]
    assert main([*args, "--out", str(folder / "missing" / "m.unet"), *TINY]) == 1
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("image_shape", "channels", "labels_shape", "expected"),
    [
        ((64, 64), None, (64, 64), None),
        ((64, 64, 3), None, (64, 64), -1),
        ((3, 64, 64), None, (64, 64), 0),
        ((5, 64, 64), None, (5, 64, 64), None),
        ((64, 64, 3), 3, None, -1),
        ((3, 64, 64), 3, None, 0),
        ((3, 64, 64), 1, None, None),
    ],
)
def test_channel_axis_inference(image_shape, channels, labels_shape, expected):
    assert infer_channel_axis(image_shape, channels, labels_shape) == expected


@pytest.mark.slow
def test_train_on_chosen_channels_and_predict_with_them(nuclei, capsys):
    folder, image, _ = nuclei
    rgb = np.stack([image, np.zeros_like(image), image], axis=-1)
    tifffile.imwrite(folder / "rgb.tif", rgb)
    model = folder / "rgb.unet"
    args = ["train", "--image", str(folder / "rgb.tif"), "--labels", str(folder / "labels.tif")]
    assert main([*args, "--out", str(model), "--channels", "2,0", *TINY]) == 0
    _, description = load_model(model)
    assert description["channels"] == {"used": [2, 0], "of": 3}
    out = folder / "rgb_labels.tif"
    predict = ["predict", "--model", str(model), "--image", str(folder / "rgb.tif")]
    assert main([*predict, "--out", str(out)]) == 0
    expected = Predictor.from_file(model, device="cpu").predict(rgb, channel_axis=-1).labels
    np.testing.assert_array_equal(tifffile.imread(out), expected)
    capsys.readouterr()
    assert main([*args, "--out", str(folder / "x.unet"), "--channels", "0,5", *TINY]) == 1
    error = capsys.readouterr().err
    assert "Channel 5 does not exist" in error and "Traceback" not in error
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--out", str(folder / "y.unet"), "--channels", "red", *TINY])
    assert exit_info.value.code == 2
    assert "channel numbers separated by commas" in capsys.readouterr().err


@pytest.mark.slow
def test_predict_uses_the_model_s_instance_settings_unless_overridden(nuclei, capsys):
    folder, image, _ = nuclei
    model = folder / "m.unet"
    args = ["train", "--image", str(folder / "image.tif"), "--labels", str(folder / "labels.tif")]
    assert main([*args, "--out", str(model), *TINY]) == 0
    assert "Instances: " in capsys.readouterr().out  # what training chose
    predictor = Predictor.from_file(model, device="cpu")
    predict = ["predict", "--model", str(model), "--image", str(folder / "image.tif")]
    assert main([*predict, "--out", str(folder / "own.tif")]) == 0
    own = predictor.predict(image).labels
    np.testing.assert_array_equal(tifffile.imread(folder / "own.tif"), own)
    assert main([*predict, "--out", str(folder / "set.tif"), "--threshold", "0.7"]) == 0
    chosen = predictor.predict(image, threshold=0.7).labels
    np.testing.assert_array_equal(tifffile.imread(folder / "set.tif"), chosen)
