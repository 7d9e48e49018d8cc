"""The bad-input matrix, command-line front: ``unetkit`` with wrong files, data and options.

Every refusal must exit with status 1 and print exactly one ``unetkit: error:`` line (no
traceback unless ``--debug``), and leave no output file behind; odd but valid input must work.
"""

import os
import pathlib

import numpy as np
import pytest
import tifffile
from bad_cases import (
    BAD_MODEL_FILES,
    IMAGE_DTYPES,
    LABEL_DTYPES,
    TouchOnLoad,
    cells,
    error_line,
    untrained_model,
)

from napari_unetkit import io
from napari_unetkit.cli import main
from napari_unetkit.modelfile import ModelFileError, load_model

TINY = [
    "--epochs", "1", "--steps-per-epoch", "1", "--patch-size", "32", "--batch-size", "2",
    "--base-channels", "4", "--depth", "2", "--device", "cpu", "--no-augment",
    "--val-fraction", "0",
]  # fmt: skip


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def grey_model(tmp_path_factory) -> pathlib.Path:
    return untrained_model(tmp_path_factory.mktemp("models") / "grey.unet")


@pytest.fixture(scope="module")
def rgb_model(tmp_path_factory) -> pathlib.Path:
    return untrained_model(tmp_path_factory.mktemp("models") / "rgb.unet", in_channels=3)


def save(folder: pathlib.Path, name: str, array: np.ndarray) -> pathlib.Path:
    """Write ``array`` as ``name`` (.npy keeps every dtype exactly; .tif as TIFF)."""
    path = folder / name
    if path.suffix == ".npy":
        np.save(path, array)
    else:
        tifffile.imwrite(path, array)
    return path


def cli(capsys, *argv) -> tuple[int, str, str]:
    """Run ``unetkit`` in-process; return the exit status, stdout and stderr."""
    code = main([str(arg) for arg in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def warning_lines(err: str) -> list[str]:
    assert "Traceback" not in err and "UserWarning" not in err
    return [line for line in err.splitlines() if line.startswith("unetkit: warning: ")]


IMAGE, LABELS = cells((48, 64))


def _with(array: np.ndarray, value: float) -> np.ndarray:
    out = array.astype(np.float32)
    out[2, 2] = value
    return out


# ------------------------------------------------------------------------------- train

#: name -> (image, labels, extra options, fragment of the message)
TRAIN_ERRORS = {
    "shapes differ": (IMAGE, LABELS[:40], [], "needs labels of shape (48, 64)"),
    "float labels": (IMAGE, LABELS.astype(np.float64), [], "labels must be integers"),
    "negative labels": (IMAGE, -LABELS, [], "labels hold negative values"),
    "all-zero labels": (IMAGE, 0 * LABELS, [], "No annotated slices"),
    "constant image": (np.full_like(IMAGE, 3), LABELS, [], "the image is constant"),
    "NaN in image": (_with(IMAGE, np.nan), LABELS, [], "NaN or infinite"),
    "inf in image": (_with(IMAGE, np.inf), LABELS, [], "NaN or infinite"),
    "boolean image": (IMAGE > 50, LABELS, [], "The image is boolean (a mask)"),
    "complex image": (IMAGE.astype(np.complex64), LABELS, [], "complex values"),
    "validation fraction 1": (IMAGE, LABELS, ["--val-fraction", "1"], "from 0 to below 1"),
    "epochs 0": (IMAGE, LABELS, ["--epochs", "0"], "set epochs to at least 1"),
    "time limit 0": (
        IMAGE,
        LABELS,
        ["--time-limit", "0"],
        "time_limit must be a finite number > 0",
    ),
    "batch size 0": (IMAGE, LABELS, ["--batch-size", "0"], "batch_size must be a whole number"),
    "batch size 100000": (IMAGE, LABELS, ["--batch-size", "100000"], "from 1 to 1024, got 100000"),
    "seed 2**70": (
        IMAGE,
        LABELS,
        ["--seed", str(2**70)],
        "seed must be a whole number from 0 to 4294967295",
    ),
    "infinite learning rate": (IMAGE, LABELS, ["--lr", "inf"], "must be a finite number"),
    "patch size 0": (
        IMAGE,
        LABELS,
        ["--patch-size", "0"],
        "patch_size must be a whole number >= 1",
    ),
}


@pytest.mark.parametrize("case", list(TRAIN_ERRORS))
def test_train_refuses_wrong_input_in_one_line(case, tmp_path, capsys):
    image, labels, options, fragment = TRAIN_ERRORS[case]
    args = ["train", "--image", save(tmp_path, "image.npy", image)]
    args += ["--labels", save(tmp_path, "labels.npy", labels), "--out", tmp_path / "m.unet"]
    # The budget options come last: a repeated option replaces the earlier value.
    line = error_line(*cli(capsys, *args, *TINY, *options)[::2])
    assert fragment in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["image.npy", "labels.npy"]


def test_train_refuses_bad_files_and_resume_models(tmp_path, capsys, grey_model):
    image = save(tmp_path, "image.npy", IMAGE)
    labels = save(tmp_path, "labels.npy", LABELS)
    out = ["--out", tmp_path / "m.unet", *TINY]
    (tmp_path / "broken.tif").write_bytes(b"II*\x00garbage")
    cases = {
        "missing image": (["--image", tmp_path / "nope.tif", "--labels", labels], "does not exist"),
        "damaged TIFF": (
            ["--image", tmp_path / "broken.tif", "--labels", labels],
            "broken.tif: it is not a valid TIFF file (",
        ),
        "unsupported type": (["--image", tmp_path / "a.png", "--labels", labels], "use a TIFF"),
        "labels missing for an image": (
            ["--image", image, "--image", image, "--labels", labels],
            "Give one training labels file per image: 2 image(s), 1 labels file(s)",
        ),
    }
    hostile = tmp_path / "objects.npy"  # a .npy file holding a pickled object, not pixels
    np.save(hostile, np.array([TouchOnLoad(tmp_path / "marker")], dtype=object))
    cases["NumPy file holding objects"] = (
        ["--image", hostile, "--labels", labels],
        "objects.npy: it holds Python objects other than numbers, which are never loaded.",
    )
    rgb = save(tmp_path, "rgb.npy", np.stack([IMAGE] * 3, axis=-1))
    cases["resume a greyscale model on RGB"] = (
        ["--image", rgb, "--labels", labels, "--resume", grey_model],
        "it reads 1 channel(s), the images have 3",
    )
    for name, (writer, fragment) in BAD_MODEL_FILES.items():
        model = tmp_path / f"{name.replace(' ', '_')}.unet"
        writer(model, tmp_path / "marker")
        options = ["--image", image, "--labels", labels, "--resume", model]
        cases[f"resume {name}"] = (options, fragment)
    before = sorted(p.name for p in tmp_path.iterdir())
    for name, (options, fragment) in cases.items():
        line = error_line(*cli(capsys, "train", *options, *out)[::2])
        assert fragment in line, name
    assert not (tmp_path / "marker").exists()  # no code from a model file ever ran
    assert sorted(p.name for p in tmp_path.iterdir()) == before


@pytest.mark.slow
def test_train_accepts_rgb_and_tiny_images(tmp_path, capsys):
    rgb = save(tmp_path, "rgb.tif", np.stack([IMAGE] * 3, axis=-1))
    labels = save(tmp_path, "labels.tif", LABELS)
    code, out, err = cli(capsys, "train", "--image", rgb, "--labels", labels, "--out",
                         tmp_path / "rgb.unet", *TINY)  # fmt: skip
    assert code == 0 and "Model saved" in out and warning_lines(err) == []
    assert load_model(tmp_path / "rgb.unet")[0].config.in_channels == 3  # channel axis found

    image, labels = cells((5, 7))
    args = ["train", "--image", save(tmp_path, "tiny.npy", image)]
    args += ["--labels", save(tmp_path, "tiny_labels.npy", labels), "--out", tmp_path / "tiny"]
    code, out, err = cli(capsys, *args, *TINY, "--val-fraction", "0.2")
    assert code == 0 and (tmp_path / "tiny.unet").is_file()
    (warning,) = warning_lines(err)  # one line, not Python's two-line warning format
    assert "No validation band was cut" in warning


# ------------------------------------------------------------------------------- predict


@pytest.mark.parametrize("case", list(BAD_MODEL_FILES) + ["missing"])
def test_predict_refuses_bad_model_files_without_running_them(case, tmp_path, capsys):
    model, marker = tmp_path / "model.unet", tmp_path / "marker"
    fragment = "does not exist"
    if case != "missing":
        writer, fragment = BAD_MODEL_FILES[case]
        writer(model, marker)
    image = save(tmp_path, "image.tif", IMAGE)
    args = ["predict", "--model", model, "--image", image, "--out", tmp_path / "out.tif"]
    line = error_line(*cli(capsys, *args)[::2])
    assert fragment in line and "model.unet" in line
    assert "weights_only" not in line  # never the advice to switch the protection off
    assert not marker.exists() and not (tmp_path / "out.tif").exists()


#: name -> (image, model fixture, extra options, fragment of the message)
PREDICT_ERRORS = {
    "RGB model, greyscale image": (
        IMAGE,
        "rgb_model",
        [],
        "reads images of 3 channels (RGB), but the image",
    ),
    "greyscale model, RGB image": (
        np.stack([IMAGE] * 3, axis=-1),
        "grey_model",
        [],
        "has 3 channels (RGB); convert the image to greyscale",
    ),
    "greyscale model, RGBA image": (
        np.stack([IMAGE] * 4, axis=-1),
        "grey_model",
        [],
        "has 4 channels (RGBA); convert the image to greyscale",
    ),
    "RGB model, RGBA image": (
        np.stack([IMAGE] * 4, axis=-1),
        "rgb_model",
        ["--channel-axis", "-1"],
        "3 channels (RGB), but the image (shape (48, 64, 4)) has 4 channels",
    ),
    "NaN in image": (_with(IMAGE, np.nan), "grey_model", [], "NaN or infinite"),
    "boolean image": (IMAGE > 50, "grey_model", [], "The image is boolean"),
    "complex image": (IMAGE.astype(np.complex64), "grey_model", [], "complex values"),
    "empty image": (np.zeros((0, 16), np.uint8), "grey_model", [], "The image is empty"),
    "tile size 0": (IMAGE, "grey_model", ["--tile-size", "0"], "tile size (pixels) must be"),
    "tile size 1": (
        IMAGE,
        "grey_model",
        ["--tile-size", "1"],
        "The tile size must be at least 24 pixels for this model",
    ),
    "threshold 1.5": (IMAGE, "grey_model", ["--threshold", "1.5"], "between 0 and 1"),
    "negative minimum size": (IMAGE, "grey_model", ["--min-size", "-1"], "min_size must be"),
}


@pytest.mark.parametrize("case", list(PREDICT_ERRORS))
def test_predict_refuses_wrong_input_in_one_line(case, tmp_path, capsys, request):
    image, model, options, fragment = PREDICT_ERRORS[case]
    path = save(tmp_path, "image.npy", image)
    model = request.getfixturevalue(model)
    args = ["predict", "--model", model, "--image", path, "--out", tmp_path / "out.tif"]
    line = error_line(*cli(capsys, *args, "--device", "cpu", *options)[::2])
    assert fragment in line
    assert [p.name for p in tmp_path.iterdir()] == ["image.npy"]


#: name -> (image shape, extra options)
PREDICT_ODD = {
    "5x7": ((5, 7), []),
    "50x70 (not divisible by 16)": ((50, 70), []),
    "4x4000": ((4, 4000), []),
    "4D stack": ((2, 2, 16, 24), []),
    "5D stack": ((1, 2, 2, 16, 24), []),
    "tile larger than the image": ((40, 30), ["--tile-size", "4096"]),
    "tile as small as the halo": ((40, 30), ["--tile-size", "24"]),
}


@pytest.mark.parametrize("case", list(PREDICT_ODD))
def test_predict_accepts_odd_images(case, tmp_path, capsys, grey_model):
    shape, options = PREDICT_ODD[case]
    image = save(tmp_path, "image.tif", cells(shape)[0])
    out, probabilities = tmp_path / "labels.tif", tmp_path / "prob.tif"
    code, stdout, err = cli(capsys, "predict", "--model", grey_model, "--image", image,
                            "--out", out, "--probabilities", probabilities, "--device", "cpu",
                            *options)  # fmt: skip
    assert code == 0 and "Labels written" in stdout and warning_lines(err) == []
    labels = tifffile.imread(out)
    assert labels.shape == shape and np.issubdtype(labels.dtype, np.integer)
    assert tifffile.imread(probabilities).shape == shape


def test_predict_accepts_every_image_dtype_and_a_constant_image(tmp_path, capsys, grey_model):
    images = {dtype: cells((24, 32), dtype)[0] for dtype in IMAGE_DTYPES}
    images["constant"] = np.full((24, 32), 5, np.uint16)
    for name, image in images.items():
        path = save(tmp_path, f"{name}.npy", image)
        out = tmp_path / f"{name}.tif"
        code, _, err = cli(capsys, "predict", "--model", grey_model, "--image", path, "--out",
                           out, "--device", "cpu")  # fmt: skip
        assert code == 0, err
        assert tifffile.imread(out).shape == (24, 32), name


# ------------------------------------------------------------------------------- outputs


def _command(kind: str, folder: pathlib.Path, model: pathlib.Path, out: pathlib.Path) -> list:
    image = save(folder, "image.tif", IMAGE)
    labels = save(folder, "labels.tif", LABELS)
    if kind == "train":
        return ["train", "--image", image, "--labels", labels, "--out", out, *TINY]
    if kind == "predict":
        return ["predict", "--model", model, "--image", image, "--out", out, "--device", "cpu"]
    return ["weightmap", "--labels", labels, "--out", out]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["train", "predict"])
def test_existing_output_is_refused_unless_overwrite(kind, tmp_path, capsys, grey_model):
    out = tmp_path / ("m.unet" if kind == "train" else "out.tif")
    out.write_bytes(b"precious")
    command = _command(kind, tmp_path, grey_model, out)
    line = error_line(*cli(capsys, *command)[::2])
    assert "already exists; pass --overwrite" in line and out.read_bytes() == b"precious"
    assert cli(capsys, *command, "--overwrite")[0] == 0
    assert out.read_bytes() != b"precious"


@pytest.mark.parametrize("kind", ["train", "predict", "weightmap"])
def test_unusable_output_folder_is_refused_before_any_work(
    kind, tmp_path, capsys, grey_model, monkeypatch
):
    data = tmp_path / "data"
    data.mkdir()
    missing = data / "missing" / "out.tif"
    line = error_line(*cli(capsys, *_command(kind, data, grey_model, missing))[::2])
    assert "does not exist; create it first" in line

    folder = data / ("folder.unet" if kind == "train" else "folder.tif")
    folder.mkdir()
    line = error_line(*cli(capsys, *_command(kind, data, grey_model, folder))[::2])
    # The model file is checked by the training pre-check (the message the panel shows too).
    fragment = "is a folder: choose a file name" if kind == "train" else "is a folder; give"
    assert fragment in line

    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        if os.access(locked, os.W_OK):  # root ignores permission bits: simulate the refusal

            def refuse(*args, **kwargs):
                raise PermissionError(13, "Permission denied")

            monkeypatch.setattr(io.tempfile, "mkstemp", refuse)
        line = error_line(*cli(capsys, *_command(kind, data, grey_model, locked / "out.tif"))[::2])
        if kind == "train" and not os.access(locked, os.W_OK):
            assert "the folder is not writable" in line  # the training pre-check
        else:
            assert "locked is not writable (permission denied)" in line
            assert "Choose another output folder" in line
        assert list(locked.iterdir()) == []
    finally:
        locked.chmod(0o755)


# ------------------------------------------------------------------------------- weightmap

WEIGHTMAP_ERRORS = {
    "float labels": (LABELS.astype(np.float32), "labels.astype(int)"),
    "negative labels": (-LABELS, "labels hold negative values"),
    "1D labels": (LABELS[0], "Labels must be 2D (Y, X) or a stack"),
    "complex labels": (LABELS.astype(np.complex64), "but labels must be integers"),
}


@pytest.mark.parametrize("case", list(WEIGHTMAP_ERRORS))
def test_weightmap_refuses_wrong_labels_in_one_line(case, tmp_path, capsys):
    labels, fragment = WEIGHTMAP_ERRORS[case]
    args = ["weightmap", "--labels", save(tmp_path, "labels.npy", labels)]
    line = error_line(*cli(capsys, *args, "--out", tmp_path / "w.tif")[::2])
    assert fragment in line
    assert [p.name for p in tmp_path.iterdir()] == ["labels.npy"]


@pytest.mark.parametrize(
    ("labels", "fragment"),
    [(0 * LABELS, "holds no cells (every label is 0)"), (LABELS > 0, "boolean mask")],
    ids=["all zeros", "boolean mask"],
)
def test_weightmap_of_doubtful_labels_warns_in_one_line(labels, fragment, tmp_path, capsys):
    args = ["weightmap", "--labels", save(tmp_path, "labels.npy", labels)]
    code, _, err = cli(capsys, *args, "--out", tmp_path / "w.tif")
    assert code == 0 and (tmp_path / "w.tif").is_file()
    (line,) = warning_lines(err)
    assert fragment in line


def test_weightmap_accepts_every_integer_labels_dtype(tmp_path, capsys):
    expected = None
    for dtype in LABEL_DTYPES:
        path = save(tmp_path, f"{dtype}.npy", LABELS.astype(dtype))
        out = tmp_path / f"{dtype}.tif"
        assert cli(capsys, "weightmap", "--labels", path, "--out", out)[0] == 0, dtype
        weights = tifffile.imread(out)
        expected = weights if expected is None else expected
        np.testing.assert_array_equal(weights, expected)


# ------------------------------------------------------------------------------- tracebacks


def test_debug_shows_the_exception(tmp_path, capsys):
    model = tmp_path / "empty.unet"
    model.write_bytes(b"")
    image = save(tmp_path, "image.tif", IMAGE)
    args = ["predict", "--model", model, "--image", image, "--out", tmp_path / "o.tif"]
    with pytest.raises(ModelFileError, match="the file is empty"):
        main(["--debug", *map(str, args)])


@pytest.mark.parametrize(
    ("error", "fragment"),
    [
        (RuntimeError("boom\nsecond line"), "unexpected RuntimeError: boom second line (run "),
        (MemoryError(), "out of memory; use a smaller --tile-size"),
    ],
)
def test_unexpected_errors_are_one_line_too(error, fragment, tmp_path, capsys, monkeypatch):
    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr("napari_unetkit.weightmap.weights_and_target", fail)
    args = ["weightmap", "--labels", save(tmp_path, "labels.tif", LABELS)]
    line = error_line(*cli(capsys, *args, "--out", tmp_path / "w.tif")[::2])
    assert fragment in line
    with pytest.raises(type(error)):
        main(["--debug", *map(str, args), "--out", str(tmp_path / "w.tif")])
