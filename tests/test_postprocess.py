import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_unetkit.metrics import match_instances
from napari_unetkit.postprocess import (
    fill_gaps,
    gap_pixels,
    instances_from_probabilities,
    link_slices,
    remove_small_instances,
    semantic_from_probabilities,
)
from napari_unetkit.synthetic import synthetic_stack

CROSS = ndi.generate_binary_structure(2, 1)


def contact_ridge(labels):
    """Pixels of a cell with a 4-neighbour in another cell: a 2 px ridge along each contact."""
    ridge = np.zeros(labels.shape, dtype=bool)
    for axis in range(labels.ndim):
        for step in (1, -1):
            other = np.roll(labels, step, axis=axis)
            ridge |= (labels > 0) & (other > 0) & (other != labels)
    return ridge


def probabilities_from(labels, ridge=None, inside=0.9, outside=0.1):
    """An ideal network output: high on the separated cells, low on background and ridges."""
    foreground = labels > 0
    if ridge is not None:
        foreground &= ~ridge
    return np.where(foreground, inside, outside)


def two_touching_disks():
    """Two overlapping disks; the overlap goes to the disk a pixel is most inside of."""
    yy, xx = np.mgrid[:40, :60]
    rho1 = np.hypot(yy - 20, xx - 20) / 12
    rho2 = np.hypot(yy - 21, xx - 38) / 10
    labels = np.zeros((40, 60), dtype=np.int32)
    labels[rho1 < 1] = 1
    labels[(rho2 < 1) & (rho2 < rho1)] = 2
    return labels


def same_partition(a, b):
    """Whether two label images are equal up to a renaming of the ids."""
    pairs = np.unique(np.stack([a.ravel(), b.ravel()]), axis=1)
    return len(set(pairs[0])) == len(set(pairs[1])) == pairs.shape[1] and np.array_equal(
        a > 0, b > 0
    )


# ---------------------------------------------------------------------------------------------
# Semantic labels
# ---------------------------------------------------------------------------------------------


def test_semantic_is_argmax_plus_offset():
    rng = np.random.default_rng(0)
    probs = rng.random((3, 7, 9))
    labels = semantic_from_probabilities(probs)
    assert labels.dtype == np.uint8 and labels.shape == (7, 9)
    np.testing.assert_array_equal(labels, probs.argmax(axis=0))
    shifted = semantic_from_probabilities(probs, offset=1)
    np.testing.assert_array_equal(shifted, probs.argmax(axis=0) + 1)
    assert set(np.unique(shifted)) <= {1, 2, 3}


def test_semantic_dtype_grows_with_the_number_of_classes_and_ties_go_low():
    probs = np.zeros((300, 2, 2))
    probs[299, 0, 0] = 1.0
    labels = semantic_from_probabilities(probs)
    assert labels.dtype == np.uint16
    assert labels[0, 0] == 299 and labels[1, 1] == 0  # all-equal pixels -> class 0
    assert semantic_from_probabilities(np.zeros((256, 1, 1)), offset=0).dtype == np.uint8
    assert semantic_from_probabilities(np.zeros((256, 1, 1)), offset=1).dtype == np.uint16


def test_semantic_works_on_stacks_and_rejects_bad_input():
    probs = np.zeros((2, 3, 4, 5))
    probs[1, 2] = 1.0
    labels = semantic_from_probabilities(probs)
    assert labels.shape == (3, 4, 5) and labels[2].all() and not labels[:2].any()
    with pytest.raises(ValueError):
        semantic_from_probabilities(np.zeros(5))
    with pytest.raises(ValueError):
        semantic_from_probabilities(probs, offset=-1)


# ---------------------------------------------------------------------------------------------
# Instances
# ---------------------------------------------------------------------------------------------


def test_touching_disks_are_separated_and_grown_back_over_the_ridge():
    truth = two_touching_disks()
    ridge = contact_ridge(truth)
    assert ridge.sum() > 20
    result = instances_from_probabilities(probabilities_from(truth, ridge))
    assert result.dtype == np.int32
    assert sorted(np.unique(result)) == [0, 1, 2]
    # Every pixel of the original cells comes back with its own cell: the ridge is covered and
    # the contact line is where it was.
    inside = truth > 0
    assert same_partition(np.where(inside, result, 0), truth)
    # Outside the cells only a couple of pixels at the ends of the contact line may be filled.
    extra = (result > 0) & ~inside
    assert extra.sum() <= 4
    near_contact = ndi.binary_dilation(ridge, iterations=3)
    assert not (extra & ~near_contact).any()


def test_without_growth_the_ridge_stays_background():
    truth = two_touching_disks()
    ridge = contact_ridge(truth)
    result = instances_from_probabilities(probabilities_from(truth, ridge), grow=0)
    np.testing.assert_array_equal(result > 0, (truth > 0) & ~ridge)
    assert result.max() == 2


def test_isolated_cells_do_not_grow():
    yy, xx = np.mgrid[:50, :80]
    mask = (np.hypot(yy - 25, xx - 15) < 9) | (np.hypot(yy - 25, xx - 45) < 9)
    mask |= (yy > 10) & (yy < 20) & (xx > 58) & (xx < 75)
    result = instances_from_probabilities(probabilities_from(mask.astype(int)), grow=3)
    np.testing.assert_array_equal(result > 0, mask)
    assert result.max() == 3


def test_wide_gaps_are_not_bridged():
    # Two squares 3 px apart: the middle column is within 2 px of both, but filling it alone
    # would leave it floating; nothing may be filled.
    labels = np.zeros((20, 30), dtype=np.int32)
    labels[5:15, 2:12] = 1
    labels[5:15, 15:25] = 2
    assert gap_pixels(labels, 2)[5:15, 13].all()
    np.testing.assert_array_equal(fill_gaps(labels, 2), labels)
    # A 2 px gap is filled, half to each side.
    narrow = np.zeros((20, 30), dtype=np.int32)
    narrow[5:15, 2:12] = 1
    narrow[5:15, 14:24] = 2
    filled = fill_gaps(narrow, 2)
    assert (filled[5:15, 12] == 1).all() and (filled[5:15, 13] == 2).all()
    assert (filled[:5] == 0).all() and (filled[15:] == 0).all()


def brute_gap_pixels(labels, grow):
    """Background pixels with two different ids within Euclidean distance ``grow``."""
    ids_y, ids_x = np.nonzero(labels)
    out = np.zeros(labels.shape, dtype=bool)
    for y, x in zip(*np.nonzero(labels == 0), strict=True):
        near = np.hypot(ids_y - y, ids_x - x) <= grow
        out[y, x] = len(set(labels[ids_y[near], ids_x[near]].tolist())) >= 2
    return out


def random_instances(seed, shape=(40, 40)):
    rng = np.random.default_rng(seed)
    blobs = ndi.gaussian_filter(rng.random(shape), 1.5)
    labels, _ = ndi.label(blobs > np.percentile(blobs, 55), structure=CROSS)
    return labels.astype(np.int32)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("grow", [1, 2, 3])
def test_gap_pixels_equal_brute_force(seed, grow):
    labels = random_instances(seed)
    np.testing.assert_array_equal(gap_pixels(labels, grow), brute_gap_pixels(labels, grow))


@pytest.mark.parametrize("seed", range(4))
def test_fill_gaps_properties(seed):
    labels = random_instances(seed)
    grow = 2
    filled = fill_gaps(labels, grow)
    new = filled != labels
    assert not (new & (labels > 0)).any()  # instances are never overwritten
    assert not (new & ~brute_gap_pixels(labels, grow)).any()  # only gap pixels are filled
    ys, xs = np.nonzero(labels)
    for y, x in zip(*np.nonzero(new), strict=True):
        distance = np.hypot(ys - y, xs - x)
        nearest = set(labels[ys, xs][distance == distance.min()].tolist())
        assert filled[y, x] in nearest
    for label in np.unique(labels)[1:]:  # every instance stays one 4-connected piece
        assert ndi.label(filled == label, structure=CROSS)[1] == 1
    # A gap pixel touching its only nearest instance is always filled.
    gaps = brute_gap_pixels(labels, grow)
    for y, x in zip(
        *np.nonzero(gaps & (ndi.grey_dilation(labels, footprint=CROSS) > 0)), strict=True
    ):
        distance = np.hypot(ys - y, xs - x)
        nearest = set(labels[ys, xs][distance == distance.min()].tolist())
        if len(nearest) == 1 and distance.min() == 1:
            assert filled[y, x] == nearest.pop()


def test_small_fragments_are_removed():
    prob = np.full((30, 30), 0.1)
    prob[2:12, 2:12] = 0.9  # 100 px
    prob[20:23, 20:23] = 0.9  # 9 px
    prob[20:22, 2:7] = 0.9  # 10 px
    result = instances_from_probabilities(prob, min_size=10)
    assert result.max() == 2
    assert not result[20:23, 20:23].any() and result[20:22, 2:7].all()
    assert instances_from_probabilities(prob, min_size=0).max() == 3
    assert instances_from_probabilities(prob, min_size=101).max() == 0


def test_remove_small_instances_keeps_ids_and_input():
    labels = np.array([[5, 5, 0, 7], [5, 0, 0, 0]])
    out = remove_small_instances(labels, 2)
    np.testing.assert_array_equal(out, [[5, 5, 0, 0], [5, 0, 0, 0]])
    assert labels[0, 3] == 7


def test_threshold_is_respected():
    prob = np.zeros((20, 20))
    prob[2:8, 2:8] = 0.5
    prob[10:16, 10:16] = 0.65
    prob[10:16, 2:8] = 0.5 + 1e-6
    result = instances_from_probabilities(prob, threshold=0.5, min_size=1)
    assert not result[2:8, 2:8].any()  # exactly at the threshold is background
    assert result[10:16, 2:8].all() and result[10:16, 10:16].all()
    high = instances_from_probabilities(prob, threshold=0.7, min_size=1)
    assert high.max() == 0
    assert instances_from_probabilities(prob, threshold=0.6, min_size=1).max() == 1


def test_four_connectivity_splits_diagonal_contacts():
    prob = np.zeros((10, 10))
    prob[1:5, 1:5] = 1.0
    prob[5:9, 5:9] = 1.0  # touches the first square only at a corner
    result = instances_from_probabilities(prob, min_size=1, grow=0)
    assert result.max() == 2


def test_ids_are_sequential_int32():
    labels = random_instances(5, (60, 60))
    result = instances_from_probabilities(probabilities_from(labels), min_size=5)
    ids = np.unique(result)
    np.testing.assert_array_equal(ids, np.arange(ids.size))
    assert result.dtype == np.int32


def test_bad_input_is_rejected():
    with pytest.raises(ValueError):
        instances_from_probabilities(np.zeros(5))
    with pytest.raises(ValueError):
        instances_from_probabilities(np.zeros((2, 2, 2, 2)))
    with pytest.raises(ValueError):
        instances_from_probabilities(np.zeros((4, 4)), grow=-1)
    with pytest.raises(ValueError):
        link_slices(np.zeros((4, 4), int))


# ---------------------------------------------------------------------------------------------
# Stacks and slice linking
# ---------------------------------------------------------------------------------------------


def test_stack_is_processed_per_slice_with_unique_ids():
    truth = two_touching_disks()
    prob2d = probabilities_from(truth, contact_ridge(truth))
    stack = np.stack([prob2d, np.full_like(prob2d, 0.1), prob2d])
    result = instances_from_probabilities(stack)
    assert result.shape == stack.shape and result.dtype == np.int32
    np.testing.assert_array_equal(np.unique(result), [0, 1, 2, 3, 4])
    assert not result[1].any()
    assert same_partition(result[0], instances_from_probabilities(prob2d))
    assert set(np.unique(result[0])) & set(np.unique(result[2])) == {0}


def scramble_slices(labels, rng):
    """Give every 2D cross-section an unrelated id (unique over the stack)."""
    out = np.zeros_like(labels)
    next_id = 1
    for z in range(labels.shape[0]):
        ids = np.unique(labels[z])[1:]
        new = rng.permutation(ids.size) + next_id
        lookup = np.zeros(labels.max() + 1, dtype=labels.dtype)
        lookup[ids] = new
        out[z] = lookup[labels[z]]
        next_id += ids.size
    return out


def test_link_slices_reconstructs_synthetic_3d_ids():
    _, truth = synthetic_stack(n_slices=12, shape=(96, 96), seed=3)
    scrambled = scramble_slices(truth, np.random.default_rng(0))
    linked = link_slices(scrambled)
    assert linked.dtype == np.int32
    result = match_instances(truth, linked)
    assert result.n_true == truth.max()
    assert result.f1 >= 0.95
    assert same_partition(linked, truth)


def test_link_slices_after_instance_extraction():
    _, truth = synthetic_stack(n_slices=12, shape=(96, 96), seed=4)
    prob = np.stack([probabilities_from(t, contact_ridge(t)) for t in truth])
    per_slice = instances_from_probabilities(prob, min_size=5)
    assert per_slice.max() > truth.max()  # unlinked: one id per cross-section
    linked = link_slices(per_slice)
    result = match_instances(truth, linked)
    assert result.f1 >= 0.9
    assert result.mean_matched_iou >= 0.85


def test_link_slices_is_one_to_one_and_respects_min_iou():
    stack = np.zeros((3, 10, 20), dtype=np.int32)
    stack[0, 2:8, 2:14] = 4  # one cell ...
    stack[1, 2:8, 2:9] = 1  # ... split in two in the next slice: IoU 42/72 and 30/72
    stack[1, 2:8, 9:14] = 2
    stack[2, 2:8, 2:9] = 1  # same piece again: IoU 1 with slice 1's first piece
    stack[2, 2:8, 16:19] = 9  # a new cell
    linked = link_slices(stack)
    np.testing.assert_array_equal(np.unique(linked), [0, 1, 2, 3])
    assert linked[0, 3, 3] == linked[1, 3, 3] == linked[2, 3, 3] == 1  # larger piece linked
    assert linked[1, 3, 12] == 2  # the smaller piece starts a new instance
    assert linked[2, 3, 17] == 3
    # 42/72 < 0.6: by IoU alone the split pieces are not linked ...
    strict = link_slices(stack, min_iou=0.6, min_overlap=None)
    assert strict[0, 3, 3] != strict[1, 3, 3]
    assert strict[1, 3, 3] == strict[2, 3, 3]
    # ... but both are inside the cell below; the second round links one of them.
    covered = link_slices(stack, min_iou=0.6, min_overlap=0.9)
    assert covered.max() == 3
    assert covered[1, 3, 3] == covered[0, 3, 3] or covered[1, 3, 12] == covered[0, 3, 3]


def test_link_slices_joins_small_caps_by_coverage():
    stack = np.zeros((3, 20, 20), dtype=np.int32)
    stack[0, 9:11, 9:11] = 1  # 4 px cap, IoU 4/100 with the section above
    stack[1, 5:15, 5:15] = 1
    stack[2, 8:12, 8:12] = 1  # 16 px cap
    assert link_slices(stack).max() == 1
    assert link_slices(stack, min_overlap=None).max() == 3
    # A neighbour that merely touches the cell's outline is not linked.
    side = np.zeros((2, 20, 20), dtype=np.int32)
    side[0, 5:15, 5:15] = 1
    side[1, 5:15, 13:18] = 1  # 20 of 50 px covered, IoU 20/130
    assert link_slices(side).max() == 2
