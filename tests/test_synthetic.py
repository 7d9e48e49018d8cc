import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_unetkit.synthetic import sample_pairs, synthetic_nuclei, synthetic_stack


def touching_pairs(labels):
    """Set of id pairs (a < b) that are face-adjacent somewhere."""
    pairs = set()
    for axis in range(labels.ndim):
        a = np.moveaxis(labels, axis, 0)
        lo, hi = a[:-1], a[1:]
        contact = (lo > 0) & (hi > 0) & (lo != hi)
        for p, q in zip(lo[contact].tolist(), hi[contact].tolist(), strict=True):
            pairs.add((min(p, q), max(p, q)))
    return pairs


@pytest.fixture(scope="module")
def default_samples():
    return [synthetic_nuclei(seed=seed) for seed in range(3)]


# ---------------------------------------------------------------------------------------------
# 2D
# ---------------------------------------------------------------------------------------------


def test_same_seed_same_arrays_different_seed_different():
    image_a, labels_a = synthetic_nuclei((96, 128), seed=5)
    image_b, labels_b = synthetic_nuclei((96, 128), seed=5)
    np.testing.assert_array_equal(image_a, image_b)
    np.testing.assert_array_equal(labels_a, labels_b)
    image_c, labels_c = synthetic_nuclei((96, 128), seed=6)
    assert not np.array_equal(labels_a, labels_c)
    assert not np.array_equal(image_a, image_c)


def test_dtypes_shapes_and_sequential_ids(default_samples):
    for image, labels in default_samples:
        assert image.dtype == np.uint16 and labels.dtype == np.int32
        assert image.shape == labels.shape == (256, 256)
        ids = np.unique(labels)
        np.testing.assert_array_equal(ids, np.arange(labels.max() + 1))
    image, labels = synthetic_nuclei((70, 190), seed=1)
    assert image.shape == labels.shape == (70, 190)


def test_every_nucleus_is_one_4_connected_piece(default_samples):
    cross = ndi.generate_binary_structure(2, 1)
    for _, labels in default_samples:
        for index, box in enumerate(ndi.find_objects(labels), start=1):
            assert ndi.label(labels[box] == index, structure=cross)[1] == 1


def test_density_count_and_sizes_are_realistic(default_samples):
    for _, labels in default_samples:
        assert 30 <= labels.max() <= 50
        assert 0.18 <= np.mean(labels > 0) <= 0.32
        areas = np.bincount(labels.ravel())[1:]
        radii = np.sqrt(areas / np.pi)
        assert radii.min() >= 3.0 and radii.max() <= 17.0
        assert 7.0 <= np.median(radii) <= 12.0


def test_many_nuclei_touch_and_some_are_isolated(default_samples):
    for _, labels in default_samples:
        pairs = touching_pairs(labels)
        assert len(pairs) >= 8
        touching = {i for pair in pairs for i in pair}
        fraction = len(touching) / labels.max()
        assert 0.3 <= fraction <= 0.8
        # Isolated nuclei are really apart: at least 2 px of background around them.
        isolated = [i for i in range(1, labels.max() + 1) if i not in touching]
        for index in isolated:
            mask = labels == index
            ring = ndi.binary_dilation(mask, iterations=2) & ~mask
            assert not labels[ring].any()


def test_nuclei_are_brighter_than_background(default_samples):
    for image, labels in default_samples:
        inside = image[labels > 0].astype(float)
        outside = image[labels == 0].astype(float)
        assert inside.mean() > 1.6 * outside.mean()
        assert np.median(inside) > np.percentile(outside, 99)
        # Camera offset and no saturation.
        assert outside.min() > 50 and image.max() < 60000


def test_contacts_are_slightly_darker_than_the_cells(default_samples):
    cross = ndi.generate_binary_structure(2, 1)
    for image, labels in default_samples:
        image = ndi.uniform_filter(image.astype(float), 3)  # average out the noise
        contact = np.zeros(labels.shape, dtype=bool)
        for axis in (0, 1):
            for step in (1, -1):
                other = np.roll(labels, step, axis=axis)
                contact |= (labels > 0) & (other > 0) & (other != labels)
        touching = np.isin(labels, np.unique(labels[contact]))
        core = touching & ndi.binary_erosion(labels > 0, cross, iterations=4)
        core &= ~ndi.binary_dilation(contact, iterations=4)
        ratio = image[contact].mean() / image[core].mean()
        assert 0.6 < ratio < 0.95


def test_parameters_are_honoured():
    _, none = synthetic_nuclei((64, 64), n_cells=0, seed=0)
    assert not none.any()
    _, few = synthetic_nuclei((128, 128), n_cells=5, seed=0)
    assert 1 <= few.max() <= 5
    _, alone = synthetic_nuclei((256, 256), seed=0, touching_fraction=0.0)
    assert not touching_pairs(alone)
    _, small = synthetic_nuclei((128, 128), seed=0, radius_range=(4.0, 6.0))
    assert np.sqrt(np.bincount(small.ravel())[1:].max() / np.pi) <= 7.0
    with pytest.raises(ValueError):
        synthetic_nuclei((8, 8))
    with pytest.raises(ValueError):
        synthetic_nuclei((64, 64, 64))


def test_sample_pairs_are_independent_and_reproducible():
    pairs = sample_pairs(3, shape=(64, 64), seed=2)
    assert len(pairs) == 3
    for image, labels in pairs:
        assert image.dtype == np.uint16 and labels.dtype == np.int32 and image.shape == (64, 64)
    again = sample_pairs(3, shape=(64, 64), seed=2)
    for (a, la), (b, lb) in zip(pairs, again, strict=True):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(la, lb)
    images = [p[0] for p in pairs] + [sample_pairs(2, (64, 64), seed=3)[1][0]]
    images.append(synthetic_nuclei((64, 64), seed=2)[0])
    for i in range(len(images)):
        for j in range(i):
            assert not np.array_equal(images[i], images[j])


# ---------------------------------------------------------------------------------------------
# 3D
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stack():
    return synthetic_stack(seed=0)


def test_stack_dtypes_shapes_and_determinism(stack):
    image, labels = stack
    assert image.dtype == np.uint16 and labels.dtype == np.int32
    assert image.shape == labels.shape == (16, 128, 128)
    again = synthetic_stack(seed=0)
    np.testing.assert_array_equal(image, again[0])
    np.testing.assert_array_equal(labels, again[1])
    other = synthetic_stack(n_slices=8, shape=(64, 96), seed=1)
    assert other[0].shape == (8, 64, 96)
    assert not np.array_equal(other[1], labels[:8, :64, :96])


def test_stack_ids_span_contiguous_slices_and_are_connected(stack):
    _, labels = stack
    assert 15 <= labels.max() <= 45
    assert 0.12 <= np.mean(labels > 0) <= 0.32
    np.testing.assert_array_equal(np.unique(labels), np.arange(labels.max() + 1))
    six = ndi.generate_binary_structure(3, 1)
    spans = []
    for index, box in enumerate(ndi.find_objects(labels), start=1):
        mask = labels[box] == index
        assert ndi.label(mask, structure=six)[1] == 1
        slices = np.flatnonzero(mask.any(axis=(1, 2))) + box[0].start
        np.testing.assert_array_equal(slices, np.arange(slices[0], slices[-1] + 1))
        spans.append(slices.size)
    assert np.median(spans) >= 4


def test_stack_has_touching_nuclei_and_bright_cells(stack):
    image, labels = stack
    assert len(touching_pairs(labels)) >= 5
    # Touching within single slices too, so slice-wise training sees contacts.
    assert sum(bool(touching_pairs(plane)) for plane in labels) >= 8
    assert image[labels > 0].mean() > 1.6 * image[labels == 0].mean()


def test_single_slice_stack():
    image, labels = synthetic_stack(n_slices=1, shape=(64, 64), seed=0)
    assert image.shape == labels.shape == (1, 64, 64)
    with pytest.raises(ValueError):
        synthetic_stack(n_slices=0)
