import json
import threading
from dataclasses import replace

import numpy as np
import pytest

from napari_unetkit.augmentation import AugmentationSettings
from napari_unetkit.data import (
    PatchSampler,
    TrainingSlice,
    prepare_training_data,
    split_train_validation,
)
from napari_unetkit.normalization import (
    NormalizationSettings,
    apply_percentiles,
    image_percentiles,
)
from napari_unetkit.progress import Cancelled
from napari_unetkit.synthetic import synthetic_nuclei, synthetic_stack
from napari_unetkit.weightmap import PRESETS, weights_and_target

OFF = AugmentationSettings.off()


@pytest.fixture(scope="module")
def nuclei():
    return synthetic_nuclei((96, 96), seed=1)


@pytest.fixture(scope="module")
def stack():
    return synthetic_stack(4, (48, 48), seed=2)


def check_slice(item, channels, shape):
    assert isinstance(item, TrainingSlice)
    assert item.image.dtype == np.float32 and item.image.shape == (channels, *shape)
    assert item.target.dtype == np.int64 and item.target.shape == shape
    assert item.weights.dtype == np.float32 and item.weights.shape == shape
    assert item.instances is None or item.instances.dtype == np.int32


# --------------------------------------------------------------------------------------------
# prepare_training_data: layouts
# --------------------------------------------------------------------------------------------


def test_2d_instances(nuclei):
    image, labels = nuclei
    data = prepare_training_data([(image, labels)])
    assert (data.n_classes, data.in_channels, data.mode) == (2, 1, "instances")
    assert data.class_names == ("background", "cell")  # the names a trained model stores
    (item,) = data.slices
    check_slice(item, 1, (96, 96))
    assert item.source == (0, ())
    np.testing.assert_array_equal(item.instances, labels)
    weights, separated = weights_and_target(labels, preset="paper")
    np.testing.assert_array_equal(item.target, separated > 0)
    np.testing.assert_array_equal(item.weights, weights)
    assert (item.weights > 0).all()  # full annotation: every pixel counts


def test_rgb_with_channel_axis(nuclei):
    image, labels = nuclei
    rgb = np.stack([image, image // 2, np.full_like(image, 7)], axis=-1)
    data = prepare_training_data([(rgb, labels)], channel_axis=-1)
    (item,) = data.slices
    check_slice(item, 3, (96, 96))
    assert data.in_channels == 3
    low, high = image_percentiles(rgb, -1)
    np.testing.assert_array_equal(item.image, apply_percentiles(np.moveaxis(rgb, -1, 0), low, high))
    assert (item.image[2] == 0).all()  # a constant channel maps to 0


def test_zyx_stack_keeps_slice_indices(stack):
    image, labels = stack
    data = prepare_training_data([(image, labels)])
    annotated = [z for z in range(4) if labels[z].any()]
    assert [s.source for s in data.slices] == [(0, (z,)) for z in annotated]
    for item in data.slices:
        check_slice(item, 1, (48, 48))


def test_4d_stack_and_several_pairs(stack):
    image, labels = stack
    image4, labels4 = image.reshape(2, 2, 48, 48), labels.reshape(2, 2, 48, 48)
    data = prepare_training_data([(image4, labels4), (image[0], labels[0])])
    sources = [s.source for s in data.slices]
    expected = [(0, (t, z)) for t in range(2) for z in range(2) if labels4[t, z].any()]
    assert sources == [*expected, (1, ())]
    summary = data.summary()
    json.dumps(summary)
    assert summary["n_slices"] == len(data) == len(sources)
    assert summary["pairs"][0]["image_shape"] == [2, 2, 48, 48]
    assert summary["class_pixels"][0] + summary["class_pixels"][1] == 48 * 48 * len(data)


def test_normalisation_uses_percentiles_of_the_whole_stack():
    rng = np.random.default_rng(0)
    image = np.stack([rng.integers(0, 100, (32, 32)), rng.integers(500, 4000, (32, 32))])
    image = image.astype(np.uint16)
    labels = np.zeros(image.shape, dtype=np.int32)
    labels[:, 8:16, 8:16] = 1
    settings = NormalizationSettings(2.0, 98.0)
    data = prepare_training_data([(image, labels)], normalization=settings)
    low, high = image_percentiles(image, None, settings)
    for z, item in enumerate(data.slices):
        np.testing.assert_array_equal(item.image, apply_percentiles(image[z][None], low, high))
    assert data.slices[0].image.max() < 0.1  # the dark slice is not stretched on its own
    assert data.summary()["normalization"] == settings.to_dict()


# --------------------------------------------------------------------------------------------
# prepare_training_data: errors
# --------------------------------------------------------------------------------------------


def test_labels_shape_mismatch_names_both_shapes(nuclei):
    image, labels = nuclei
    with pytest.raises(ValueError, match=r"\(96, 95\).*\(96, 96\)"):
        prepare_training_data([(image, labels[:, :95])])
    rgb = np.stack([image] * 3, axis=-1)
    with pytest.raises(ValueError, match="needs labels of shape"):
        prepare_training_data([(rgb, labels)])  # channel axis forgotten


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (np.zeros((16, 16), dtype=np.float32), "labels must be integers"),
        (np.zeros((16, 16), dtype=bool), "labels must be instance ids"),
        (np.full((16, 16), -1, dtype=np.int16), "labels hold negative values"),
    ],
)
def test_bad_labels_are_rejected_with_a_sentence(labels, message):
    image = np.zeros((16, 16), dtype=np.uint8)
    with pytest.raises(ValueError, match=message):
        prepare_training_data([(image, labels)])


def test_bad_images_and_inconsistent_pairs_are_rejected(nuclei):
    image, labels = nuclei
    with pytest.raises(ValueError, match="boolean"):
        prepare_training_data([(image > 100, labels)])
    rgb = np.stack([image] * 3)
    two = np.stack([image] * 2)
    with pytest.raises(ValueError, match="same number of channels"):
        prepare_training_data([(rgb, labels), (two, labels)], channel_axis=0)
    with pytest.raises(ValueError, match="mode"):
        prepare_training_data([(image, labels)], mode="semantic")
    with pytest.raises(ValueError, match="regions"):
        prepare_training_data([(image, labels)], regions=[None, None])
    with pytest.raises(ValueError, match="boolean mask"):
        prepare_training_data([(image, labels)], regions=[np.ones((96, 96), np.uint8)])


# --------------------------------------------------------------------------------------------
# Annotation: skipping, regions, classes mode
# --------------------------------------------------------------------------------------------


def test_unannotated_slices_are_skipped_and_annotated_background_kept(stack):
    image, labels = stack
    labels = labels.copy()
    labels[1] = 0
    labels[2] = 0
    region = np.zeros(labels.shape, dtype=bool)
    region[2, 10:30, 10:30] = True  # slice 2: a region with no cells = annotated background
    data = prepare_training_data([(image, labels)], regions=[region])
    assert [s.source[1] for s in data.slices] == [(2,)]  # 0, 3 have cells but no region there

    data = prepare_training_data([(image, labels)])
    assert [s.source[1] for s in data.slices] == [(0,), (3,)]

    labels[2, 10:30, 10:30] = 0
    kept = prepare_training_data([(image[2], labels[2])], regions=[region[2]]).slices[0]
    assert (kept.target == 0).all() and kept.n_annotated == 400

    with pytest.raises(ValueError, match="No annotated slices: paint some cells"):
        prepare_training_data([(image, np.zeros_like(labels))])


def test_region_mask_zeroes_weights_outside_only(nuclei):
    image, labels = nuclei
    region = np.zeros(labels.shape, dtype=bool)
    region[20:70, 10:60] = True
    (item,) = prepare_training_data([(image, labels)], regions=[region]).slices
    assert (item.weights[~region] == 0).all()
    expected, separated = weights_and_target(labels, preset="paper", ignore=~region)
    np.testing.assert_array_equal(item.weights, expected)
    np.testing.assert_array_equal(item.target[region], separated[region] > 0)
    # The class balance counts the annotated area only: both classes carry equal total weight
    # there (border terms aside, which sit on background only).
    foreground = region & (item.target == 1)
    background = region & (item.target == 0)
    balance_fg = item.weights[foreground].sum()
    balance_bg = np.minimum(item.weights[background], item.weights[background].min()).sum()
    assert balance_fg == pytest.approx(balance_bg, rel=1e-4)


def test_weightmap_preset_is_used_and_recorded(nuclei):
    image, labels = nuclei
    data = prepare_training_data([(image, labels)], weightmap="falk2019")
    assert data.weightmap == PRESETS["falk2019"]
    expected, _ = weights_and_target(labels, preset="falk2019")
    np.testing.assert_array_equal(data.slices[0].weights, expected)
    assert data.summary()["weightmap"]["w0"] == 50.0


def test_classes_mode_targets_and_balanced_weights():
    image = np.random.default_rng(0).integers(0, 255, (40, 40)).astype(np.uint8)
    labels = np.zeros((40, 40), dtype=np.uint8)
    labels[:10] = 1  # 400 px
    labels[20:25, :20] = 2  # 100 px
    labels[30:32, 30:40] = 3  # 20 px
    data = prepare_training_data([(image, labels)], mode="classes")
    assert data.n_classes == 3 and data.class_names == ("class 1", "class 2", "class 3")
    (item,) = data.slices
    check_slice(item, 1, (40, 40))
    assert item.instances is None and data.weightmap is None
    painted = labels > 0
    np.testing.assert_array_equal(item.target[painted], labels[painted].astype(int) - 1)
    assert (item.weights[~painted] == 0).all() and (item.weights[painted] > 0).all()
    sums = [item.weights[labels == k].sum() for k in (1, 2, 3)]
    np.testing.assert_allclose(sums, 520 / 3, rtol=1e-5)

    region = np.zeros_like(painted)
    region[:, :15] = True
    (masked,) = prepare_training_data(
        [(image, labels)], mode="classes", regions=[region], class_names=["bg", "a", "b"]
    ).slices
    assert (masked.weights[~region] == 0).all()
    assert set(np.unique(masked.target[masked.weights > 0])) == {0, 1}


def test_classes_mode_needs_two_classes_and_skips_unpainted_slices():
    image = np.random.default_rng(0).integers(0, 1000, (3, 16, 16), dtype=np.uint16)
    labels = np.zeros((3, 16, 16), dtype=np.int32)
    labels[0, :4] = 1
    with pytest.raises(ValueError, match="at least two painted classes"):
        prepare_training_data([(image, labels)], mode="classes")
    labels[2, 8:] = 2
    data = prepare_training_data([(image, labels)], mode="classes")
    assert [s.source for s in data.slices] == [(0, (0,)), (0, (2,))]
    assert data.n_classes == 2


def test_progress_and_cancel(stack):
    image, labels = stack
    calls = []
    prepare_training_data(
        [(image, labels)], progress=lambda done, total: calls.append((done, total))
    )
    assert calls == [(1, 4), (2, 4), (3, 4), (4, 4)]
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(Cancelled):
        prepare_training_data([(image, labels)], cancel=cancel)


# --------------------------------------------------------------------------------------------
# Train / validation split
# --------------------------------------------------------------------------------------------


def make_slices(n, shape=(24, 24)):
    rng = np.random.default_rng(0)
    return [
        TrainingSlice(
            image=rng.normal(size=(1, *shape)).astype(np.float32),
            target=(rng.random(shape) > 0.5).astype(np.int64),
            weights=np.ones(shape, dtype=np.float32),
            source=(0, (i,)),
        )
        for i in range(n)
    ]


def test_whole_slices_are_held_out_when_there_are_enough():
    slices = make_slices(10)
    train, val = split_train_validation(slices, 0.2, seed=1)
    assert len(train) == 8 and len(val) == 2
    assert {s.source for s in train}.isdisjoint({s.source for s in val})
    assert all(any(s is t for t in slices) for s in train + val)  # untouched, no copies
    again = split_train_validation(slices, 0.2, seed=1)[1]
    assert [s.source for s in again] == [s.source for s in val]
    others = {
        tuple(s.source for s in split_train_validation(slices, 0.2, seed=k)[1]) for k in range(6)
    }
    assert len(others) > 1


@pytest.mark.parametrize(("shape", "axis"), [((96, 60), 0), ((50, 96), 1)])
def test_a_single_slice_is_split_spatially_along_its_longer_axis(nuclei, shape, axis):
    image, labels = nuclei
    (item,) = prepare_training_data(
        [(image[: shape[0], : shape[1]], labels[: shape[0], : shape[1]])]
    ).slices
    train, val = split_train_validation([item], 0.2)
    (kept,), (band,) = train, val
    length = shape[axis]
    start = length - round(0.2 * length)
    cut = [slice(None), slice(None)]
    cut[axis] = slice(start, None)
    cut = tuple(cut)
    np.testing.assert_array_equal(band.image, item.image[(slice(None), *cut)])
    np.testing.assert_array_equal(band.target, item.target[cut])
    np.testing.assert_array_equal(band.weights, item.weights[cut])
    np.testing.assert_array_equal(band.instances, item.instances[cut])
    assert band.origin[axis] == start and band.source == item.source
    # No training weight in the band or within 16 px of it; the rest is unchanged.
    nonzero = np.nonzero(kept.weights > 0)[axis]
    assert nonzero.max() < start - 16
    hidden = [slice(None), slice(None)]
    hidden[axis] = slice(0, start - 16)
    np.testing.assert_array_equal(kept.weights[tuple(hidden)], item.weights[tuple(hidden)])
    assert kept.image is item.image and kept.shape == item.shape
    assert (item.weights > 0).all()  # the input was not modified


def test_a_sparse_slice_gets_its_band_inside_the_annotated_area():
    shape = (120, 200)
    (item,) = make_slices(1, shape)
    weights = np.zeros(shape, np.float32)
    weights[10:50, 20:120] = 1.0  # annotated only in one corner; the image's end is empty
    item = TrainingSlice(item.image, item.target, weights, source=item.source)
    (kept,), (band,) = split_train_validation([item], 0.2)
    # Along the annotated area's longer axis (X), at its end, with a fifth of its pixels.
    assert band.origin[0] == 0 and band.shape[0] == shape[0]
    assert band.origin[1] + band.shape[1] == 120
    assert (band.weights > 0).sum() == pytest.approx(0.2 * weights.sum(), rel=0.1)
    start = band.origin[1]
    assert not (kept.weights[:, start - 16 :] > 0).any()
    np.testing.assert_array_equal(kept.weights[:, : start - 16], weights[:, : start - 16])


def test_split_edge_cases():
    slices = make_slices(1, shape=(40, 40))
    assert split_train_validation(slices, 0.0) == (slices, [])
    for fraction in (1.0, 1.5, -0.1):
        with pytest.raises(ValueError, match="fraction"):
            split_train_validation(slices, fraction)
    with pytest.warns(UserWarning, match="No validation band"):
        train, val = split_train_validation(slices, 0.2)  # an 8 px band is too thin
    assert val == [] and train[0] is slices[0]


# --------------------------------------------------------------------------------------------
# Patch sampling
# --------------------------------------------------------------------------------------------


def test_patches_are_always_full_size_even_from_small_slices(stack):
    image, labels = stack
    data = prepare_training_data([(image[:, :30, :40], labels[:, :30, :40])])
    sampler = PatchSampler(data, patch_size=64, seed=0)
    images, targets, weights = sampler.sample_batch(6)
    assert images.shape == (6, 1, 64, 64) and images.dtype == np.float32
    assert targets.shape == (6, 64, 64) and targets.dtype == np.int64
    assert weights.shape == (6, 64, 64) and weights.dtype == np.float32
    assert np.isfinite(images).all()
    # Without augmentation the padding is exactly 0 in target and weights: 30 x 40 real pixels.
    plain = PatchSampler(data, patch_size=64, augmentation=OFF, seed=0)
    _, targets, weights = plain.sample_batch(6)
    assert ((weights > 0).sum(axis=(1, 2)) == 30 * 40).all()
    assert ((targets > 0) & (weights == 0)).sum() == 0


def test_non_square_patches(nuclei):
    image, labels = nuclei
    data = prepare_training_data([(image, labels)])
    images, targets, _ = PatchSampler(data, patch_size=(32, 48), seed=0).sample_batch(5)
    assert images.shape == (5, 1, 32, 48) and targets.shape == (5, 32, 48)


def test_sampling_is_deterministic_by_seed(nuclei):
    image, labels = nuclei
    data = prepare_training_data([(image, labels)])
    settings = AugmentationSettings(elastic_probability=1.0)
    first = PatchSampler(data, 48, augmentation=settings, seed=3).sample_batch(4)
    second = PatchSampler(data, 48, augmentation=settings, seed=3).sample_batch(4)
    other = PatchSampler(data, 48, augmentation=settings, seed=4).sample_batch(4)
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[0], other[0])


def test_foreground_bias_is_measurable():
    image, labels = synthetic_nuclei((192, 192), n_cells=4, seed=5)
    data = prepare_training_data([(image, labels)])
    fractions = []
    for bias in (0.0, 1.0):
        sampler = PatchSampler(data, 24, foreground_bias=bias, augmentation=OFF, seed=0)
        _, targets, _ = sampler.sample_batch(64)
        fractions.append((targets > 0).mean())
    assert fractions[1] > fractions[0] + 0.2


def test_slices_are_drawn_by_annotated_area_and_never_without_annotation():
    shape = (32, 32)
    slices = []
    for value, annotated_rows in ((1.0, 0), (2.0, 8), (3.0, 24)):
        weights = np.zeros(shape, dtype=np.float32)
        weights[:annotated_rows] = 1.0
        image = np.full((1, *shape), value, dtype=np.float32)
        slices.append(TrainingSlice(image, np.zeros(shape, np.int64), weights))
    sampler = PatchSampler(slices, 16, augmentation=OFF, seed=0)
    images, _, weights = sampler.sample_batch(400)
    drawn = images[:, 0, 0, 0]
    assert not (drawn == 1.0).any()
    assert 0.65 < (drawn == 3.0).mean() < 0.85  # 24 / (24 + 8) = 0.75
    assert (weights.reshape(400, -1) > 0).any(axis=1).all()


def test_every_patch_holds_annotation_even_with_a_tiny_region(nuclei):
    image, labels = nuclei
    region = np.zeros(labels.shape, dtype=bool)
    region[2:6, 90:94] = True  # 16 annotated pixels in a corner
    data = prepare_training_data([(image, labels)], regions=[region])
    settings = AugmentationSettings(elastic_probability=1.0, elastic_std=20.0)
    _, _, weights = PatchSampler(data, 32, augmentation=settings, seed=0).sample_batch(24)
    assert (weights.reshape(24, -1) > 0).any(axis=1).all()


def test_sampler_rejects_unusable_input():
    (item,) = make_slices(1)
    with pytest.raises(ValueError, match="no annotated pixel"):
        PatchSampler([replace(item, weights=np.zeros_like(item.weights))])
    with pytest.raises(ValueError, match="patch_size"):
        PatchSampler([item], patch_size=0)
    with pytest.raises(ValueError, match="foreground_bias"):
        PatchSampler([item], foreground_bias=2.0)


def test_chosen_channels_are_read_in_order_and_checked(nuclei):
    image, labels = nuclei
    rgb = np.stack([image, np.zeros_like(image), image * 2], axis=-1)
    data = prepare_training_data([(rgb, labels)], channel_axis=-1, channels=[2, 0])
    assert data.in_channels == 2 and data.channels == [2, 0] and data.source_channels == 3
    every = prepare_training_data([(rgb, labels)], channel_axis=-1)
    np.testing.assert_array_equal(data.slices[0].image, every.slices[0].image[[2, 0]])
    assert every.empty_channels == [1] and data.empty_channels == []
    for bad, message in (([3], "Channel 3 does not exist"), ([0, 0], "once"), ([], "at least")):
        with pytest.raises(ValueError, match=message):
            prepare_training_data([(rgb, labels)], channel_axis=-1, channels=bad)
