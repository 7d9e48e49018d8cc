"""The Quick start's first command, `unetkit demo`: files written, scores true to the files."""

import json

import numpy as np
import pytest
from skimage.io import imread

from napari_unetkit.cli import main
from napari_unetkit.demo import DEMO_FILES, TEST_SHAPE, overlay_image, run_demo
from napari_unetkit.io import read_image
from napari_unetkit.metrics import evaluate
from napari_unetkit.modelfile import load_model


@pytest.mark.slow
def test_demo_writes_every_file_and_honest_scores(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--time-limit", "4"]) == 0
    printed = capsys.readouterr().out
    for name in DEMO_FILES.values():
        assert (out / name).is_file(), name
        assert name in printed

    truth = read_image(out / DEMO_FILES["truth"])
    prediction = read_image(out / DEMO_FILES["prediction"])
    image = read_image(out / DEMO_FILES["image"])
    assert truth.shape == prediction.shape == image.shape == TEST_SHAPE
    assert np.issubdtype(prediction.dtype, np.integer)

    # The printed and saved scores are those of the written prediction against the truth.
    summary = json.loads((out / DEMO_FILES["scores"]).read_text())
    recomputed = evaluate(truth, prediction)
    for key in ("f1", "precision", "recall", "foreground_iou", "dice"):
        assert summary["test_scores"][key] == pytest.approx(recomputed[key])
    assert f"instance F1 at IoU 0.5: {recomputed['f1']:.3f}" in printed
    assert summary["stopped_by"] == "time_limit"
    assert summary["steps"] >= 1

    weights = read_image(out / DEMO_FILES["weights"])
    assert weights.shape == TEST_SHAPE and weights.min() > 0  # w_c > 0 everywhere
    # The PNG shows the written prediction's outlines and the written weight map.
    overlay = imread(out / DEMO_FILES["overlay"])[..., :3]
    np.testing.assert_array_equal(overlay, overlay_image(image, prediction, weights))
    _, description = load_model(out / DEMO_FILES["model"])
    assert description["mode"] == "instances"


def test_demo_refuses_to_replace_earlier_results(tmp_path):
    (tmp_path / DEMO_FILES["scores"]).write_text("{}")
    with pytest.raises(FileExistsError, match="--overwrite"):
        run_demo(tmp_path, time_limit=1)
    assert (tmp_path / DEMO_FILES["scores"]).read_text() == "{}"
    assert not (tmp_path / DEMO_FILES["model"]).exists()


def test_demo_command_reports_earlier_results_in_one_line(tmp_path, capsys):
    (tmp_path / DEMO_FILES["overlay"]).write_bytes(b"png")
    assert main(["demo", "--out", str(tmp_path), "--time-limit", "1"]) != 0
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1
    assert "overlay.png" in error and "--overwrite" in error
