import numpy as np
import pytest

from napari_unetkit import normalization
from napari_unetkit.normalization import NormalizationSettings


def test_percentiles_per_channel_over_the_whole_stack():
    rng = np.random.default_rng(1)
    stack = rng.integers(0, 4000, size=(3, 20, 30, 2)).astype(np.uint16)
    low, high = normalization.image_percentiles(stack, channel_axis=-1)
    for c in range(2):
        np.testing.assert_allclose([low[c], high[c]], np.percentile(stack[..., c], [1.0, 99.8]))


def test_apply_maps_percentiles_to_zero_and_one():
    rng = np.random.default_rng(2)
    image = rng.normal(500, 50, size=(1, 64, 64))
    out = normalization.percentile_normalize(image, 1.0, 99.0)
    assert out.dtype == np.float32
    np.testing.assert_allclose(np.percentile(out, [1.0, 99.0]), [0.0, 1.0], atol=1e-5)


def test_large_stacks_use_a_deterministic_subsample(monkeypatch):
    monkeypatch.setattr(normalization, "MAX_PERCENTILE_SLICES", 4)
    monkeypatch.setattr(normalization, "MAX_PERCENTILE_SAMPLES", 1000)
    rng = np.random.default_rng(3)
    stack = rng.normal(100, 10, size=(40, 64, 64)).astype(np.float32)
    first = normalization.image_percentiles(stack)
    second = normalization.image_percentiles(stack)
    np.testing.assert_array_equal(first, second)
    exact = np.percentile(stack, [1.0, 99.8])
    assert abs(first[0][0] - exact[0]) < 3 and abs(first[1][0] - exact[1]) < 3


def test_constant_image_maps_to_zero():
    out = normalization.percentile_normalize(np.full((1, 8, 8), 7.0))
    np.testing.assert_array_equal(out, 0.0)


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (np.zeros((8, 8), bool), "boolean"),
        (np.zeros((8, 8), complex), "complex"),
        (np.array([[1.0, np.nan], [0.0, 2.0]]), "NaN"),
        (np.array([[1.0, np.inf], [0.0, 2.0]]), "NaN or infinite"),
    ],
)
def test_unusable_images_get_a_clear_message(image, message):
    with pytest.raises(ValueError, match=message):
        normalization.image_percentiles(image)


def test_settings_round_trip_and_validation():
    settings = NormalizationSettings(2.0, 99.0)
    assert NormalizationSettings.from_dict(settings.to_dict()) == settings
    with pytest.raises(ValueError, match="low < high"):
        NormalizationSettings(50.0, 10.0)
    with pytest.raises(ValueError, match="normalisation"):
        NormalizationSettings.from_dict({"method": "zscore"})
