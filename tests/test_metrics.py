import itertools
import json
import math

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_unetkit.metrics import (
    InstanceMatch,
    dice,
    evaluate,
    foreground_iou,
    match_instances,
    matched_pairs,
    pairwise_iou,
)

# ---------------------------------------------------------------------------------------------
# Slow, obviously correct references
# ---------------------------------------------------------------------------------------------


def brute_iou_matrix(truth, pred):
    """Dense IoU matrix by comparing every pair of boolean masks."""
    t_ids = [i for i in np.unique(truth) if i != 0]
    p_ids = [j for j in np.unique(pred) if j != 0]
    matrix = np.zeros((len(t_ids), len(p_ids)))
    for a, i in enumerate(t_ids):
        for b, j in enumerate(p_ids):
            t, p = truth == i, pred == j
            matrix[a, b] = np.count_nonzero(t & p) / np.count_nonzero(t | p)
    return t_ids, p_ids, matrix


def brute_best_matching(matrix, threshold):
    """Exhaustive search: most admissible pairs, then the largest IoU sum."""
    n_t, n_p = matrix.shape
    best = (0, 0.0)
    # Assign each truth instance a distinct prediction or nothing (-1).
    for choice in itertools.product(range(-1, n_p), repeat=n_t):
        used = [c for c in choice if c >= 0]
        if len(used) != len(set(used)):
            continue
        ious = [matrix[i, c] for i, c in enumerate(choice) if c >= 0 and matrix[i, c] >= threshold]
        score = (len(ious), sum(ious))
        if score[0] > best[0] or (score[0] == best[0] and score[1] > best[1] + 1e-12):
            best = score
    return best


def random_labels(rng, shape, n_boxes, max_id=None):
    """Overlapping random boxes painted in order; ids are random and non-contiguous."""
    labels = np.zeros(shape, dtype=np.int64)
    ids = rng.choice(np.arange(1, max_id or 10 * n_boxes + 2), size=n_boxes, replace=False)
    for label in ids:
        lo = [rng.integers(0, s - 1) for s in shape]
        hi = [low + rng.integers(1, max(2, s // 2)) for low, s in zip(lo, shape, strict=True)]
        labels[tuple(slice(low, h) for low, h in zip(lo, hi, strict=True))] = label
    return labels


def perturb(rng, labels):
    """A plausible 'prediction': shifted, partly eroded, with a few ids swapped or merged."""
    shifted = np.roll(
        labels, tuple(rng.integers(-1, 2, labels.ndim)), axis=tuple(range(labels.ndim))
    )
    noise = rng.random(labels.shape) < 0.1
    shifted[noise] = 0
    ids = np.unique(shifted)
    mapping = dict(zip(ids, rng.permutation(ids), strict=True))
    mapping[0] = 0
    return np.vectorize(mapping.get)(shifted)


# ---------------------------------------------------------------------------------------------
# Pixel scores
# ---------------------------------------------------------------------------------------------


def test_foreground_iou_and_dice_match_their_definitions():
    rng = np.random.default_rng(1)
    truth = random_labels(rng, (30, 40), 8)
    pred = random_labels(rng, (30, 40), 8)
    t, p = truth > 0, pred > 0
    inter, union = (t & p).sum(), (t | p).sum()
    assert foreground_iou(truth, pred) == pytest.approx(inter / union)
    assert dice(truth, pred) == pytest.approx(2 * inter / (t.sum() + p.sum()))
    iou = foreground_iou(truth, pred)
    assert dice(truth, pred) == pytest.approx(2 * iou / (1 + iou))


def test_pixel_scores_of_empty_images_are_defined():
    empty = np.zeros((5, 5), dtype=np.uint16)
    full = np.ones((5, 5), dtype=np.uint16)
    assert foreground_iou(empty, empty) == 1.0
    assert dice(empty, empty) == 1.0
    assert foreground_iou(empty, full) == 0.0
    assert dice(full, empty) == 0.0


def test_pixel_scores_ignore_ids():
    truth = np.array([[1, 1, 0], [2, 2, 0]])
    pred = np.array([[5, 7, 0], [9, 0, 0]])
    assert foreground_iou(truth, pred) == pytest.approx(3 / 4)
    assert foreground_iou(truth > 0, pred > 0) == pytest.approx(3 / 4)


def test_shape_mismatch_is_rejected():
    with pytest.raises(ValueError, match="same shape"):
        dice(np.zeros((3, 3), int), np.zeros((3, 4), int))
    with pytest.raises(ValueError, match="same shape"):
        match_instances(np.zeros((3, 3), int), np.zeros((9,), int))


def test_non_label_input_is_rejected():
    with pytest.raises(TypeError):
        match_instances(np.zeros((3, 3)), np.zeros((3, 3), int))
    with pytest.raises(ValueError, match="negative"):
        match_instances(-np.ones((3, 3), int), np.zeros((3, 3), int))
    with pytest.raises(ValueError, match="iou_threshold"):
        match_instances(np.ones((3, 3), int), np.ones((3, 3), int), iou_threshold=0.0)


# ---------------------------------------------------------------------------------------------
# IoU table and matching against the references
# ---------------------------------------------------------------------------------------------


def dense_from_sparse(truth, pred):
    t_ids, p_ids, rows, cols, iou = pairwise_iou(truth, pred)
    dense = np.zeros((t_ids.size, p_ids.size))
    dense[rows, cols] = iou
    assert len(set(zip(rows.tolist(), cols.tolist(), strict=True))) == rows.size  # no duplicates
    assert np.all(iou > 0)
    return list(t_ids), list(p_ids), dense


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("shape", [(24, 31), (6, 10, 12)])
def test_sparse_iou_table_equals_brute_force(seed, shape):
    rng = np.random.default_rng(seed)
    truth = random_labels(rng, shape, 12)
    pred = perturb(rng, truth) if seed % 2 else random_labels(rng, shape, 10)
    t_ids, p_ids, dense = dense_from_sparse(truth, pred)
    ref_t, ref_p, ref = brute_iou_matrix(truth, pred)
    assert t_ids == ref_t and p_ids == ref_p
    np.testing.assert_allclose(dense, ref)


def test_huge_sparse_ids_use_the_same_table():
    rng = np.random.default_rng(3)
    truth = random_labels(rng, (20, 20), 6)
    pred = perturb(rng, truth)
    big_truth = np.where(truth > 0, truth * 1_000_003 + 2**40, 0)
    big_pred = np.where(pred > 0, pred * 999_983 + 2**35, 0)
    np.testing.assert_allclose(
        dense_from_sparse(truth, pred)[2], dense_from_sparse(big_truth, big_pred)[2]
    )
    assert match_instances(truth, pred) == match_instances(big_truth, big_pred)


@pytest.mark.parametrize("seed", range(25))
def test_matching_is_optimal_on_small_cases(seed):
    rng = np.random.default_rng(100 + seed)
    truth = random_labels(rng, (10, 10), int(rng.integers(1, 6)))
    pred = random_labels(rng, (10, 10), int(rng.integers(1, 6)))
    if seed % 3 == 0:
        pred = perturb(rng, truth)
    t_ids, p_ids, matrix = brute_iou_matrix(truth, pred)
    for threshold in (0.1, 0.3, 0.5, 0.75):
        n_best, iou_sum = brute_best_matching(matrix, threshold)
        result = match_instances(truth, pred, iou_threshold=threshold)
        assert result.tp == n_best
        assert result.tp * result.mean_matched_iou == pytest.approx(iou_sum)
        assert (result.n_true, result.n_pred) == (len(t_ids), len(p_ids))
        # Matched pairs really have the IoU they claim, one-to-one.
        mt, mp, miou = matched_pairs(truth, pred, threshold)
        assert len(set(mt.tolist())) == len(mt) and len(set(mp.tolist())) == len(mp)
        for i, j, v in zip(mt, mp, miou, strict=True):
            assert v == pytest.approx(matrix[t_ids.index(i), p_ids.index(j)])
            assert v >= threshold


def greedy_matching(matrix, threshold):
    """Pairs taken by decreasing IoU while both partners are free (optimal for IoU >= 0.5)."""
    free_t, free_p, ious = set(range(matrix.shape[0])), set(range(matrix.shape[1])), []
    for flat in np.argsort(-matrix, axis=None, kind="stable"):
        i, j = np.unravel_index(flat, matrix.shape)
        if matrix[i, j] >= threshold and i in free_t and j in free_p:
            free_t.discard(i)
            free_p.discard(j)
            ious.append(matrix[i, j])
    return len(ious), sum(ious)


@pytest.mark.parametrize("seed", range(3))
def test_matching_at_one_half_equals_greedy_matching(seed):
    rng = np.random.default_rng(seed)
    truth, _ = ndi.label(rng.random((36, 36)) < 0.45)
    pred = perturb(rng, truth)
    _, _, matrix = brute_iou_matrix(truth, pred)
    for threshold in (0.5, 0.7):
        n_pairs, iou_sum = greedy_matching(matrix, threshold)
        result = match_instances(truth, pred, iou_threshold=threshold)
        assert result.tp == n_pairs > 0
        assert result.tp * result.mean_matched_iou == pytest.approx(iou_sum)


def test_matching_prefers_more_pairs_over_one_good_pair():
    # Truth A overlaps pred X strongly and pred Y weakly; truth B overlaps only X (weakly).
    # The best single pair (A, X) would leave B unmatched; at threshold 0.2 two pairs are better.
    truth = np.zeros((1, 20), int)
    pred = np.zeros((1, 20), int)
    truth[0, 0:10] = 1
    truth[0, 10:14] = 2
    pred[0, 2:14] = 8  # IoU with 1: 8/14, with 2: 4/12
    pred[0, 0:2] = 9  # IoU with 1: 2/10
    result = match_instances(truth, pred, iou_threshold=0.2)
    assert result.tp == 2
    mt, mp, _ = matched_pairs(truth, pred, 0.2)
    assert dict(zip(mt.tolist(), mp.tolist(), strict=True)) == {1: 9, 2: 8}
    assert match_instances(truth, pred, iou_threshold=0.5).tp == 1


# ---------------------------------------------------------------------------------------------
# Edge cases and typical errors
# ---------------------------------------------------------------------------------------------


def square(labels, label, y, x, size):
    labels[y : y + size, x : x + size] = label


def scores_are_finite(result: InstanceMatch):
    return all(math.isfinite(v) for v in result.to_dict().values())


def test_both_empty_is_perfect_and_one_empty_is_zero():
    empty = np.zeros((8, 8), int)
    cells = np.zeros((8, 8), int)
    square(cells, 3, 1, 1, 3)
    both = match_instances(empty, empty)
    assert (both.f1, both.accuracy, both.precision, both.recall) == (1.0, 1.0, 1.0, 1.0)
    for truth, pred in ((empty, cells), (cells, empty)):
        result = match_instances(truth, pred)
        assert (result.f1, result.accuracy, result.mean_matched_iou) == (0.0, 0.0, 0.0)
        assert scores_are_finite(result)
    assert match_instances(cells, empty).fn == 1
    assert match_instances(empty, cells).fp == 1


def test_identical_labels_are_perfect_whatever_the_ids():
    rng = np.random.default_rng(7)
    truth = random_labels(rng, (40, 40), 10)
    relabelled = np.where(truth > 0, truth * 3 + 11, 0)
    result = match_instances(truth, relabelled)
    n = len(np.unique(truth)) - 1
    assert (result.tp, result.fp, result.fn) == (n, 0, 0)
    assert result.f1 == 1.0 and result.accuracy == 1.0
    assert result.mean_matched_iou == pytest.approx(1.0)


def test_shifted_cells():
    truth = np.zeros((40, 40), int)
    square(truth, 1, 2, 2, 10)
    square(truth, 2, 20, 20, 10)
    small_shift = np.roll(truth, 1, axis=1)  # IoU 90 / 110
    result = match_instances(truth, small_shift)
    assert result.tp == 2
    assert result.mean_matched_iou == pytest.approx(90 / 110)
    big_shift = np.roll(truth, 4, axis=1)  # IoU 60 / 140 < 0.5
    result = match_instances(truth, big_shift)
    assert (result.tp, result.fp, result.fn) == (0, 2, 2)


def test_split_and_merged_cells():
    truth = np.zeros((20, 40), int)
    square(truth, 1, 0, 0, 20)
    # Split into 60 % / 40 %: the larger piece matches (IoU 0.6), the other is a false positive.
    split = np.zeros_like(truth)
    split[:, 0:12] = 4
    split[:, 12:20] = 5
    result = match_instances(truth, split)
    assert (result.tp, result.fp, result.fn) == (1, 1, 0)
    assert result.accuracy == pytest.approx(0.5)
    # Exact halves have IoU 0.5, which counts (>=), but only one of them can be matched.
    halves = np.zeros_like(truth)
    halves[:, 0:10] = 4
    halves[:, 10:20] = 5
    assert (match_instances(truth, halves).tp, match_instances(truth, halves).fp) == (1, 1)
    assert match_instances(truth, halves, iou_threshold=0.51).tp == 0
    # Split in three: no piece reaches 0.5.
    thirds = np.zeros_like(truth)
    thirds[:, 0:7], thirds[:, 7:14], thirds[:, 14:20] = 1, 2, 3
    result = match_instances(truth, thirds)
    assert (result.tp, result.fp, result.fn) == (0, 3, 1)
    # Two cells merged into one prediction: only one can be matched.
    two = np.zeros_like(truth)
    square(two, 1, 0, 0, 20)
    square(two, 2, 0, 20, 20)
    merged = (two > 0).astype(int)
    result = match_instances(two, merged)
    assert (result.tp, result.fp, result.fn) == (1, 0, 1)
    assert result.precision == 1.0 and result.recall == 0.5
    assert result.f1 == pytest.approx(2 / 3)


def test_three_dimensional_labels():
    truth = np.zeros((6, 20, 20), int)
    truth[1:5, 2:8, 2:8] = 1
    truth[0:3, 10:18, 10:18] = 2
    pred = np.zeros_like(truth)
    pred[1:5, 2:8, 3:9] = 7  # IoU 120 / 168
    pred[3:6, 10:18, 10:18] = 9  # no overlap with 2
    result = match_instances(truth, pred)
    assert (result.tp, result.fp, result.fn) == (1, 1, 1)
    assert result.mean_matched_iou == pytest.approx(120 / 168)


def test_scores_relations_and_serialisation():
    rng = np.random.default_rng(11)
    truth = random_labels(rng, (30, 30), 9)
    pred = perturb(rng, truth)
    result = match_instances(truth, pred)
    assert result.tp + result.fn == result.n_true
    assert result.tp + result.fp == result.n_pred
    p, r = result.precision, result.recall
    assert result.f1 == pytest.approx(2 * p * r / (p + r))
    assert result.accuracy == pytest.approx(result.tp / (result.tp + result.fp + result.fn))
    with pytest.raises(AttributeError):
        result.tp = 0  # frozen
    scores = evaluate(truth, pred)
    assert json.loads(json.dumps(scores)) == scores
    assert scores["foreground_iou"] == foreground_iou(truth, pred)
    assert scores["dice"] == dice(truth, pred)
    assert {k: scores[k] for k in result.to_dict()} == result.to_dict()
    assert isinstance(scores["tp"], int) and isinstance(scores["f1"], float)
