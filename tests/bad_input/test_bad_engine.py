"""The bad-input matrix, engine front: training and prediction of odd, wrong or broken input.

Every wrong input must end in a ``ValueError`` whose message says what is wrong and what to do;
every odd but valid input (tiny, elongated, 4D/5D, any dtype) must simply work. Cases already
covered elsewhere (model-file parsing in test_modelfile.py, weight-map labels in
test_weightmap.py, dtype checks of prepare_training_data in test_data.py) are not repeated.
"""

import re
import warnings

import numpy as np
import pytest
import torch
from bad_cases import IMAGE_DTYPES, LABEL_DTYPES, TINY_TRAINING, cells, temp_files

from napari_unetkit.model import UNet, UNetConfig
from napari_unetkit.modelfile import load_model
from napari_unetkit.prediction import Predictor
from napari_unetkit.training import TrainConfig, train


@pytest.fixture(autouse=True)
def _one_thread():
    """One CPU thread: these tiny networks gain nothing from more, and CI machines are busy."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny(**overrides) -> TrainConfig:
    return TrainConfig(**{**TINY_TRAINING, **overrides})


def _with(array: np.ndarray, value: float) -> np.ndarray:
    out = array.astype(np.float32)
    out[1, 1] = value
    return out


def _negative(labels: np.ndarray) -> np.ndarray:
    out = labels.astype(np.int32)
    out[0, 0] = -3
    return out


# ------------------------------------------------------------------------------- training: errors

IMAGE, LABELS = cells((48, 64))

#: name -> (pairs, TrainConfig overrides, fragment of the message)
TRAINING_ERRORS = {
    "shapes differ": ([(IMAGE, LABELS[:, :60])], {}, "Choose the labels drawn on this image"),
    "float labels": ([(IMAGE, LABELS.astype(np.float32))], {}, "labels.astype(int)"),
    "negative labels": ([(IMAGE, _negative(LABELS))], {}, "use 0 (background)"),
    "all-zero labels": ([(IMAGE, np.zeros_like(LABELS))], {}, "No annotated slices: paint"),
    "constant image": ([(np.full_like(IMAGE, 7), LABELS)], {}, "the image is constant"),
    "NaN in image": ([(_with(IMAGE, np.nan), LABELS)], {}, "NaN or infinite values; replace"),
    "inf in image": ([(_with(IMAGE, np.inf), LABELS)], {}, "NaN or infinite values; replace"),
    "boolean image": ([(IMAGE > 50, LABELS)], {}, "pick the microscopy image"),
    "complex image": ([(IMAGE.astype(np.complex64), LABELS)], {}, "convert it to real"),
    "RGB without channel axis": (
        [(np.stack([IMAGE] * 3, axis=-1), LABELS)],
        {},
        "set the channel axis to -1",
    ),
    "grey image with a channel axis": ([(IMAGE, LABELS)], {"channel_axis": -1}, "leave it unset"),
    "RGB and grey pairs": (
        [(np.stack([IMAGE] * 3), LABELS), (IMAGE[None], LABELS)],
        {"channel_axis": 0},
        "same number of channels",
    ),
    "1D image": ([(IMAGE[0], LABELS[0])], {}, "needs at least two axes (Y, X)"),
}


@pytest.mark.parametrize("case", list(TRAINING_ERRORS))
def test_wrong_training_data_is_refused_before_any_file(case, tmp_path):
    pairs, overrides, fragment = TRAINING_ERRORS[case]
    out = tmp_path / "model.unet"
    with pytest.raises(ValueError, match=re.escape(fragment)) as info:
        train(pairs, tiny(**overrides), out=out)
    assert "\n" not in str(info.value)
    assert list(tmp_path.iterdir()) == []  # no model file, no temporary file


@pytest.mark.parametrize(
    ("settings", "fragment"),
    [
        ({"val_fraction": 1.0}, "val_fraction must be a finite number from 0 to below 1"),
        ({"epochs": 0}, "set epochs to at least 1 or give a time_limit"),
        ({"epochs": None, "time_limit": 0}, "time_limit must be a finite number > 0"),
        ({"batch_size": 0}, "batch_size must be a whole number from 1 to 1024"),
        ({"patch_size": 0}, "patch_size must be a whole number >= 1"),
    ],
)
def test_impossible_budgets_and_sizes_are_refused(settings, fragment):
    with pytest.raises(ValueError, match=re.escape(fragment)):
        tiny(**settings)


# ------------------------------------------------------------------------------- training: works


def _check_trained(result, out) -> None:
    assert result.steps_run >= 1 and result.model_path == out
    _, description = load_model(out)
    assert description["stopped_by"] == "epochs"
    assert temp_files(out.parent) == []


#: name -> (image shape, TrainConfig overrides)
ODD_TRAINING_DATA = {
    "single instance": ((48, 20), {}),
    "smaller than the down-sampling factor (5x7)": ((5, 7), {}),
    "smaller than a patch, size not divisible by 16 (50x70)": ((50, 70), {}),
    "very elongated (4x4000)": ((4, 4000), {}),
    "4D stack": ((2, 3, 24, 24), {}),
    "5D stack": ((1, 2, 2, 24, 24), {}),
    "one image, validation split": ((64, 64), {"val_fraction": 0.3}),
    "one tiny image, validation fraction too small to cut": ((20, 20), {"val_fraction": 0.2}),
    "batch larger than the data": ((8, 8), {"batch_size": 16}),
    "patch larger than the image": ((20, 30), {"patch_size": 64}),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(ODD_TRAINING_DATA))
def test_odd_but_valid_training_data_trains(case, tmp_path):
    shape, overrides = ODD_TRAINING_DATA[case]
    image, labels = cells(shape)
    if case == "single instance":
        labels = (labels == 1).astype(np.int32)
    out = tmp_path / "model.unet"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = train([(image, labels)], tiny(**overrides), out=out)
    _check_trained(result, out)
    notes = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    if "too small to cut" in case:
        assert len(notes) == 1 and "No validation band was cut" in notes[0]
        assert "val_f1" not in result.history[0]
    else:
        assert notes == []
    if case == "one image, validation split":
        assert "val_f1" in result.history[0]


def test_colour_images_train_with_their_channel_axis(tmp_path):
    image, labels = cells((32, 40))
    rgb, rgba = np.stack([image] * 3, axis=-1), np.stack([image] * 4, axis=-1)
    for name, data in (("rgb", rgb), ("rgba", rgba)):
        out = tmp_path / f"{name}.unet"
        result = train([(data, labels)], tiny(channel_axis=-1), out=out)
        assert result.model.config.in_channels == data.shape[-1]
        _check_trained(result, out)


@pytest.mark.parametrize("dtype", IMAGE_DTYPES)
def test_every_image_dtype_trains(dtype):
    image, labels = cells((24, 24), dtype)
    result = train([(image, labels)], tiny(steps_per_epoch=1))
    assert np.isfinite(result.history[0]["train_loss"])


@pytest.mark.parametrize("dtype", LABEL_DTYPES)
def test_every_integer_labels_dtype_trains(dtype):
    image, labels = cells((24, 24))
    result = train([(image, labels.astype(dtype))], tiny(steps_per_epoch=1))
    assert np.isfinite(result.history[0]["train_loss"])


# ------------------------------------------------------------------------------- prediction


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    torch.manual_seed(0)
    model = UNet(UNetConfig(depth=2, base_channels=4))
    return Predictor(model, {"mode": "instances"}, device="cpu")


@pytest.fixture(scope="module")
def rgb_predictor() -> Predictor:
    torch.manual_seed(0)
    model = UNet(UNetConfig(in_channels=3, depth=2, base_channels=4))
    return Predictor(model, {"mode": "instances"}, device="cpu")


GREY = cells((32, 32))[0]

#: name -> (image, channel axis, predict keywords, fragment of the message)
PREDICTION_ERRORS = {
    "NaN in image": (_with(GREY, np.nan), None, {}, "replace them (e.g. by 0)"),
    "inf in image": (_with(GREY, -np.inf), None, {}, "replace them (e.g. by 0)"),
    "boolean image": (GREY > 50, None, {}, "not a mask or labels layer"),
    "complex image": (GREY.astype(np.complex128), None, {}, "convert it to real intensities"),
    "RGB image, greyscale model": (
        np.stack([GREY] * 3, axis=-1),
        -1,
        {},
        "reads images of 1 channel (greyscale), but the image (shape",
    ),
    "empty image": (np.zeros((0, 32), np.uint8), None, {}, "The image is empty"),
    "empty stack": (np.zeros((0, 16, 16), np.uint8), None, {}, "The image is empty"),
    "1D image": (GREY[0], None, {}, "needs at least two axes"),
    "threshold above 1": (GREY, None, {"threshold": 1.5}, "between 0 and 1 (exclusive)"),
    "threshold NaN": (GREY, None, {"threshold": float("nan")}, "between 0 and 1 (exclusive)"),
    "negative minimum size": (GREY, None, {"min_size": -1}, "min_size must be a whole number"),
    "slice out of range": (np.stack([GREY] * 2), None, {"slices": [5]}, "is not in an image"),
}


@pytest.mark.parametrize("case", list(PREDICTION_ERRORS))
def test_wrong_prediction_input_is_explained(case, predictor):
    image, channel_axis, keywords, fragment = PREDICTION_ERRORS[case]
    with pytest.raises(ValueError, match=re.escape(fragment)):
        predictor.predict(image, channel_axis, **keywords)


@pytest.mark.parametrize(
    ("image", "channel_axis", "fragment"),
    [
        (GREY, None, "reads images of 3 channels (RGB), but the image (shape (32, 32)) has 1"),
        (
            np.stack([GREY] * 4, axis=-1),
            -1,
            "3 channels (RGB), but the image (shape (32, 32, 4)) has 4",
        ),
    ],
    ids=["grey image", "RGBA image"],
)
def test_colour_model_on_other_channels_is_explained(rgb_predictor, image, channel_axis, fragment):
    with pytest.raises(ValueError, match=re.escape(fragment)):
        rgb_predictor.predict(image, channel_axis)


@pytest.mark.parametrize(
    ("keywords", "fragment"),
    [
        ({"tile_size": 0}, "The tile size (pixels) must be a whole number >= 1"),
        ({"tile_size": 2.5}, "The tile size (pixels) must be a whole number >= 1"),
        ({"batch_size": 0}, "The batch size (tiles) must be a whole number >= 1"),
        ({"halo": -16}, "The halo (pixels) must be a whole number >= 0"),
        ({"precision": "fp8"}, "The precision must be one of auto, float32, mixed, half"),
        ({"precision": None}, "The precision must be one of auto, float32, mixed, half"),
    ],
)
def test_wrong_tiling_options_are_named(keywords, fragment):
    model = UNet(UNetConfig(depth=2, base_channels=4))
    with pytest.raises(ValueError, match=re.escape(fragment)):
        Predictor(model, {"mode": "instances"}, device="cpu", **keywords)


#: name -> (image shape, predictor keywords)
ODD_PREDICTION_INPUT = {
    "1x1": ((1, 1), {}),
    "smaller than the down-sampling factor (5x7)": ((5, 7), {}),
    "size not divisible by 16 (50x70)": ((50, 70), {}),
    "very elongated (4x4000)": ((4, 4000), {}),
    "4D stack": ((2, 2, 24, 24), {}),
    "5D stack": ((1, 2, 2, 24, 24), {}),
    "tile larger than the image": ((40, 24), {"tile_size": 4096}),
    "tile smaller than the halo": ((40, 24), {"tile_size": 4}),
}


@pytest.mark.parametrize("case", list(ODD_PREDICTION_INPUT))
def test_odd_but_valid_images_are_predicted(case):
    shape, keywords = ODD_PREDICTION_INPUT[case]
    torch.manual_seed(0)
    model = UNet(UNetConfig(depth=2, base_channels=4))
    predictor = Predictor(model, {"mode": "instances"}, device="cpu", **keywords)
    image, _ = cells(shape) if min(shape[-2:]) > 1 else (np.ones(shape, np.uint8), None)
    result = predictor.predict(image, return_probabilities=True)
    assert result.labels.shape == shape and result.labels.dtype == np.int32
    assert result.probabilities.shape == shape
    assert np.isfinite(result.probabilities).all()


@pytest.mark.parametrize("dtype", IMAGE_DTYPES)
def test_every_image_dtype_is_predicted_alike(predictor, dtype):
    image, _ = cells((32, 32), dtype)
    result = predictor.predict(image, return_probabilities=True)
    reference = predictor.predict(image.astype(np.float64), return_probabilities=True)
    # The same intensities give the same prediction (float16 rounds them a little).
    tolerance = 1e-2 if dtype == "float16" else 1e-5
    np.testing.assert_allclose(result.probabilities, reference.probabilities, atol=tolerance)


def test_constant_image_is_predicted_without_nan(predictor):
    result = predictor.predict(np.full((24, 40), 9, np.uint16), return_probabilities=True)
    assert np.isfinite(result.probabilities).all() and result.labels.shape == (24, 40)


def test_user_arrays_are_never_modified(predictor, tmp_path):
    image, labels = cells((32, 32), "float32")
    image_copy, labels_copy = image.copy(), labels.copy()
    train([(image, labels)], tiny(), out=tmp_path / "m.unet")
    predictor.predict(image)
    np.testing.assert_array_equal(image, image_copy)
    np.testing.assert_array_equal(labels, labels_copy)
