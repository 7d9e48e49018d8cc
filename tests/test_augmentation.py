import json
from dataclasses import replace

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_unetkit.augmentation import (
    AugmentationSettings,
    adjust_intensity,
    augment_patch,
    elastic_field,
    flip_rotate,
    warp,
)

OFF = AugmentationSettings.off()
ELASTIC = replace(OFF, elastic=True, elastic_probability=1.0)


def blob_target(shape, n_classes=4, seed=0):
    """Piecewise-constant class map made of large smooth blobs."""
    rng = np.random.default_rng(seed)
    noise = ndi.gaussian_filter(rng.normal(size=shape), 8)
    edges = np.quantile(noise, np.linspace(0, 1, n_classes + 1)[1:-1])
    return np.digitize(noise, edges).astype(np.int64)


def window_for(target):
    """Image equal to the target, and weights that encode it too (target + 1)."""
    image = target.astype(np.float32)[np.newaxis]
    weights = (target + 1).astype(np.float32)
    return image, target, weights


def test_settings_round_trip_through_json():
    settings = AugmentationSettings(elastic_std=7.5, gamma=(0.7, 1.4), interpolation_order=3)
    restored = AugmentationSettings.from_dict(json.loads(json.dumps(settings.to_dict())))
    assert restored == settings
    assert AugmentationSettings.from_dict({}) == AugmentationSettings()


@pytest.mark.parametrize(
    "bad",
    [
        {"elastic_probability": 1.5},
        {"elastic_grid": 1},
        {"elastic_std": -1.0},
        {"gamma": (1.2, 0.8)},
        {"intensity_scale": (0.0, 1.0)},
        {"interpolation_order": 2},
        {"flips": "yes"},
    ],
)
def test_invalid_settings_are_rejected(bad):
    with pytest.raises(ValueError):
        AugmentationSettings(**bad)


def test_unknown_setting_in_dict_is_rejected():
    with pytest.raises(ValueError, match="Unknown augmentation"):
        AugmentationSettings.from_dict({"shear": 0.1})


def test_off_returns_the_patch_unchanged():
    image, target, weights = window_for(blob_target((40, 40)))
    out = augment_patch(image, target, weights, OFF, np.random.default_rng(0))
    for before, after in zip((image, target, weights), out, strict=True):
        np.testing.assert_array_equal(after, before)
    assert not OFF.enabled and OFF.margin() == 0


def test_flips_and_rotations_move_all_arrays_together():
    image, target, weights = window_for(blob_target((48, 48)))
    settings = replace(OFF, flips=True, rotations=True)
    seen = set()
    for seed in range(24):
        out_image, out_target, out_weights = augment_patch(
            image, target, weights, settings, np.random.default_rng(seed)
        )
        np.testing.assert_array_equal(out_image[0], out_target)
        np.testing.assert_array_equal(out_weights, out_target + 1)
        seen.add(out_target.tobytes())
    assert len(seen) == 8  # all eight symmetries of the square occur


def test_flip_rotate_matches_numpy():
    array = np.arange(12).reshape(3, 4)
    (out,) = flip_rotate((array,), True, False, 1)
    np.testing.assert_array_equal(out, np.rot90(array[::-1], 1))


def test_rotations_keep_the_shape_of_non_square_patches():
    image, target, weights = window_for(blob_target((32, 48)))
    settings = replace(OFF, rotations=True)
    for seed in range(8):
        out = augment_patch(image, target, weights, settings, np.random.default_rng(seed))
        assert out[0].shape == (1, 32, 48) and out[1].shape == out[2].shape == (32, 48)


def test_elastic_with_zero_std_is_the_identity():
    margin = 5
    image, target, weights = window_for(blob_target((64 + 2 * margin, 64 + 2 * margin)))
    field = elastic_field((64, 64), 3, 0.0, np.random.default_rng(0))
    assert not field.any()
    out_image, out_target, out_weights = warp(image, target, weights, field, margin)
    centre = (slice(margin, -margin), slice(margin, -margin))
    np.testing.assert_array_equal(out_image, image[(slice(None), *centre)])
    np.testing.assert_array_equal(out_target, target[centre])
    np.testing.assert_array_equal(out_weights, weights[centre])


def test_elastic_field_interpolates_the_coarse_grid_smoothly():
    std, size = 10.0, 129
    field = elastic_field((size, size), 3, std, np.random.default_rng(3))
    knots = np.random.default_rng(3).normal(0.0, std, size=(2, 3, 3))
    assert field.shape == (2, size, size) and field.dtype == np.float32
    for (i, j), (y, x) in {(0, 0): (0, 0), (1, 1): (64, 64), (2, 0): (128, 0)}.items():
        np.testing.assert_allclose(field[:, y, x], knots[:, i, j], rtol=1e-5, atol=1e-4)
    # Smooth: neighbouring pixels move by a small fraction of the displacement scale.
    assert np.abs(np.diff(field, axis=1)).max() < 0.2 * std
    assert np.abs(np.diff(field, axis=2)).max() < 0.2 * std


def test_elastic_applies_the_same_geometry_to_image_target_and_weights():
    margin = ELASTIC.margin()
    image, target, weights = window_for(blob_target((96 + 2 * margin, 96 + 2 * margin)))
    for seed in range(4):
        out_image, out_target, out_weights = augment_patch(
            image, target, weights, ELASTIC, np.random.default_rng(seed), margin
        )
        assert out_image.shape == (1, 96, 96) and out_target.shape == (96, 96)
        assert not np.array_equal(out_target, target[margin:-margin, margin:-margin])
        # Inside regions (where linear interpolation only mixed equal values) they agree exactly.
        interior = np.abs(out_image[0] - np.round(out_image[0])) < 1e-4
        assert interior.mean() > 0.8
        np.testing.assert_array_equal(np.round(out_image[0][interior]), out_target[interior])
        np.testing.assert_allclose(out_weights[interior], out_target[interior] + 1, atol=1e-4)
        # Everywhere, nearest and linear interpolation of the same field agree almost always.
        assert (np.round(out_image[0]) == out_target).mean() > 0.97


def test_elastic_keeps_target_values_and_weight_range():
    margin = ELASTIC.margin()
    rng = np.random.default_rng(1)
    target = blob_target((64 + 2 * margin, 64 + 2 * margin), n_classes=3) * 2  # values 0, 2, 4
    weights = rng.uniform(0.5, 3.0, target.shape).astype(np.float32)
    image = rng.normal(size=(2, *target.shape)).astype(np.float32)
    for seed in range(6):
        out_image, out_target, out_weights = augment_patch(
            image, target, weights, ELASTIC, np.random.default_rng(seed), margin
        )
        assert out_target.dtype == np.int64 and out_weights.dtype == np.float32
        assert set(np.unique(out_target)) <= {0, 2, 4}
        assert out_weights.min() >= weights.min() - 1e-6
        assert out_weights.max() <= weights.max() + 1e-6
        assert out_image.shape == (2, 64, 64)


def test_content_pulled_in_from_outside_the_window_gets_weight_zero():
    target = np.ones((32, 32), dtype=np.int64)
    image, target, weights = window_for(target)
    field = np.zeros((2, 32, 32), dtype=np.float32)
    field[1] = 8.0  # every pixel reads 8 px to its right: the last 8 columns fall outside
    out_image, out_target, out_weights = warp(image, target, weights, field)
    assert (out_weights[:, -7:] == 0).all() and (out_target[:, -7:] == 0).all()
    assert (out_weights[:, :24] == 2).all() and np.isfinite(out_image).all()


def test_cubic_image_interpolation_is_supported():
    margin = 4
    image, target, weights = window_for(blob_target((40, 40)))
    field = elastic_field((32, 32), 3, 1.0, np.random.default_rng(0))
    linear = warp(image, target, weights, field, margin, order=1)[0]
    cubic = warp(image, target, weights, field, margin, order=3)[0]
    assert cubic.shape == linear.shape == (1, 32, 32)
    assert np.abs(cubic - linear).max() > 0


def test_intensity_is_sign_safe_and_leaves_target_and_weights_alone():
    image = np.linspace(-1.0, 2.0, 2 * 16 * 16, dtype=np.float32).reshape(2, 16, 16)
    out = adjust_intensity(image, np.array([0.5, 2.0]), np.ones(2), np.zeros(2))
    assert np.isfinite(out).all()
    np.testing.assert_array_equal(np.sign(out), np.sign(image))
    np.testing.assert_allclose(out[0], np.sign(image[0]) * np.sqrt(np.abs(image[0])), rtol=1e-6)
    identity = adjust_intensity(image, np.ones(2), np.ones(2), np.zeros(2))
    np.testing.assert_array_equal(identity, image)

    _, target, weights = window_for(blob_target((16, 16)))
    settings = replace(OFF, intensity=True)
    out_image, out_target, out_weights = augment_patch(
        image, target, weights, settings, np.random.default_rng(0)
    )
    assert not np.allclose(out_image, image)
    np.testing.assert_array_equal(out_target, target)
    np.testing.assert_array_equal(out_weights, weights)


def test_augmentation_is_deterministic_given_the_generator():
    margin = AugmentationSettings().margin()
    image, target, weights = window_for(blob_target((48 + 2 * margin, 48 + 2 * margin)))
    settings = AugmentationSettings(elastic_probability=1.0)
    first = augment_patch(image, target, weights, settings, np.random.default_rng(5), margin)
    second = augment_patch(image, target, weights, settings, np.random.default_rng(5), margin)
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)
