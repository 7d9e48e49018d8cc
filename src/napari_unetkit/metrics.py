"""Segmentation scores: foreground IoU, Dice and one-to-one instance matching.

All functions take integer label images of the same shape (2D or 3D, any ndim): ``0`` is
background, any positive ids (not necessarily contiguous) are instances. Every score is a plain
Python ``float`` or ``int`` and is never NaN: when both images are empty the result is a perfect
score (``1.0``); when only one of them is empty, ratios that would divide by zero are ``0.0``.

Instance matching works on a sparse contingency table (one ``np.unique``/``np.bincount`` pass
over the pixel pairs), so only pairs of instances that actually overlap are ever considered.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from napari_unetkit.checks import number_problem

#: Largest number of (truth, pred) id combinations counted with a dense ``np.bincount``.
_MAX_DENSE_PAIRS = 1 << 24


@dataclass(frozen=True)
class InstanceMatch:
    """Result of a one-to-one instance matching (see :func:`match_instances`).

    Attributes
    ----------
    iou_threshold : float
        A matched pair counts as a true positive when its IoU is ``>=`` this value.
    n_true, n_pred : int
        Number of instances in the ground truth and in the prediction.
    tp, fp, fn : int
        True positives (matched pairs), unmatched predictions, unmatched truth instances.
    precision, recall, f1 : float
        ``tp / n_pred``, ``tp / n_true`` and their harmonic mean ``2 tp / (n_true + n_pred)``.
    accuracy : float
        ``tp / (tp + fp + fn)``, the "average precision" of cell segmentation benchmarks.
    mean_matched_iou : float
        Mean IoU of the true-positive pairs (``0.0`` when there are none, ``1.0`` when both
        images are empty).
    """

    iou_threshold: float
    n_true: int
    n_pred: int
    tp: int
    fp: int
    fn: int
    precision: float
    recall: float
    f1: float
    accuracy: float
    mean_matched_iou: float

    def to_dict(self) -> dict:
        """Return the scores as a JSON-serialisable ``dict`` of plain Python numbers."""
        return asdict(self)


def _check_pair(truth: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return both inputs as arrays after checking that their shapes agree."""
    truth = np.asarray(truth)
    pred = np.asarray(pred)
    if truth.shape != pred.shape:
        raise ValueError(
            f"Ground truth and prediction must have the same shape, got {truth.shape} and "
            f"{pred.shape}."
        )
    return truth, pred


def _as_label_image(labels: np.ndarray, name: str) -> np.ndarray:
    """Return ``labels`` as a flat non-negative integer array (booleans become 0/1)."""
    if labels.dtype == bool:
        return labels.ravel().astype(np.uint8)
    if not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(f"{name} must be an integer label image, got dtype {labels.dtype}.")
    flat = labels.ravel()
    if flat.size and flat.min() < 0:
        raise ValueError(f"{name} contains negative ids; labels must be >= 0.")
    return flat


def _check_threshold(iou_threshold: float) -> None:
    """Reject IoU thresholds outside ``(0, 1]``."""
    message = number_problem(iou_threshold, "iou_threshold", 0.0, 1.0, open_low=True)
    if message is not None:
        raise ValueError(message)


def _ratio(numerator: float, denominator: float, both_empty: bool) -> float:
    """Return ``numerator / denominator``; ``1.0`` if both images are empty, else ``0.0`` on 0."""
    if denominator == 0:
        return 1.0 if both_empty else 0.0
    return float(numerator) / float(denominator)


def foreground_iou(truth: np.ndarray, pred: np.ndarray) -> float:
    """Intersection over union of the foreground (``label > 0``) of two label images.

    Parameters
    ----------
    truth, pred : numpy.ndarray
        Label (or boolean) images of the same shape.

    Returns
    -------
    float
        ``|T & P| / |T | P|``; ``1.0`` when both foregrounds are empty.
    """
    truth, pred = _check_pair(truth, pred)
    t, p = truth > 0, pred > 0
    intersection = np.count_nonzero(t & p)
    union = np.count_nonzero(t | p)
    return _ratio(intersection, union, both_empty=union == 0)


def dice(truth: np.ndarray, pred: np.ndarray) -> float:
    """Dice coefficient (F1 score of the pixels) of the foreground of two label images.

    Parameters
    ----------
    truth, pred : numpy.ndarray
        Label (or boolean) images of the same shape.

    Returns
    -------
    float
        ``2 |T & P| / (|T| + |P|)``; ``1.0`` when both foregrounds are empty.
    """
    truth, pred = _check_pair(truth, pred)
    t, p = truth > 0, pred > 0
    total = np.count_nonzero(t) + np.count_nonzero(p)
    return _ratio(2 * np.count_nonzero(t & p), total, both_empty=total == 0)


def _compact_ids(flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Map the ids of a flat label array to ``0..n``: ``0`` stays background.

    Returns
    -------
    ids : numpy.ndarray
        The sorted positive ids present, shape ``(n,)``.
    index : numpy.ndarray
        ``intp`` array like ``flat`` with values in ``0..n`` (``k`` means ``ids[k - 1]``).
    """
    top = int(flat.max()) if flat.size else 0
    if top <= min(max(2 * flat.size, 1 << 16), 1 << 26):
        present = np.bincount(flat, minlength=top + 1) > 0
        present[0] = False
        ids = np.flatnonzero(present)
        lookup = np.zeros(top + 1, dtype=np.intp)
        lookup[ids] = np.arange(1, ids.size + 1)
        return ids, lookup[flat]
    ids, inverse = np.unique(flat, return_inverse=True)
    inverse = inverse.reshape(-1).astype(np.intp)
    if ids[0] == 0:
        return ids[1:], inverse
    return ids, inverse + 1


@dataclass(frozen=True)
class Overlaps:
    """Sparse contingency table of two label images (only pairs that share pixels).

    Attributes
    ----------
    truth_ids, pred_ids : numpy.ndarray
        Sorted positive ids present in each image.
    truth_area, pred_area : numpy.ndarray
        Pixel count of each of those ids.
    rows, cols : numpy.ndarray
        Indices into ``truth_ids`` / ``pred_ids`` of every overlapping pair (each pair once).
    intersection : numpy.ndarray
        Number of pixels each pair shares (``> 0``).
    """

    truth_ids: np.ndarray
    pred_ids: np.ndarray
    truth_area: np.ndarray
    pred_area: np.ndarray
    rows: np.ndarray
    cols: np.ndarray
    intersection: np.ndarray

    @property
    def iou(self) -> np.ndarray:
        """IoU of each overlapping pair (``float64``)."""
        union = self.truth_area[self.rows] + self.pred_area[self.cols] - self.intersection
        return self.intersection / union.astype(np.float64)


def overlaps(truth: np.ndarray, pred: np.ndarray) -> Overlaps:
    """Count the pixels shared by every pair of instances of two label images.

    One pass over the pixels (``np.bincount`` of pair codes, or ``np.unique`` when the number
    of id combinations is very large); pairs that do not overlap are never enumerated.

    Parameters
    ----------
    truth, pred : numpy.ndarray
        Integer label images of the same shape (``0`` = background).

    Returns
    -------
    Overlaps
        The sparse contingency table.
    """
    truth, pred = _check_pair(truth, pred)
    truth_ids, t = _compact_ids(_as_label_image(truth, "truth"))
    pred_ids, p = _compact_ids(_as_label_image(pred, "pred"))
    n_t, n_p = truth_ids.size + 1, pred_ids.size + 1
    both = (t > 0) & (p > 0)
    codes = t[both] * n_p + p[both]
    if n_t * n_p <= _MAX_DENSE_PAIRS:
        counts = np.bincount(codes, minlength=n_t * n_p)
        codes = np.flatnonzero(counts)
        counts = counts[codes]
    else:
        codes, counts = np.unique(codes, return_counts=True)
    return Overlaps(
        truth_ids=truth_ids,
        pred_ids=pred_ids,
        truth_area=np.bincount(t, minlength=n_t)[1:],
        pred_area=np.bincount(p, minlength=n_p)[1:],
        rows=codes // n_p - 1,
        cols=codes % n_p - 1,
        intersection=counts,
    )


def pairwise_iou(
    truth: np.ndarray, pred: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """IoU of every pair of overlapping instances, from a sparse contingency table.

    Parameters
    ----------
    truth, pred : numpy.ndarray
        Integer label images of the same shape (``0`` = background).

    Returns
    -------
    truth_ids, pred_ids : numpy.ndarray
        Sorted positive ids present in ``truth`` and in ``pred``.
    rows, cols : numpy.ndarray
        Indices into ``truth_ids`` and ``pred_ids`` of every pair that shares at least one
        pixel (each pair once).
    iou : numpy.ndarray
        ``float64`` IoU of those pairs.
    """
    table = overlaps(truth, pred)
    return table.truth_ids, table.pred_ids, table.rows, table.cols, table.iou


def _match_component(weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Hungarian matching of one dense block: most pairs first, then largest total score.

    ``weights`` holds the score (in ``[0, 1]``) of admissible pairs and ``-1`` elsewhere.
    Admissible pairs get ``bonus + score`` with ``bonus`` larger than any possible sum of
    scores, so the assignment with the most admissible pairs always wins and the scores only
    break ties.
    """
    admissible = weights >= 0
    bonus = float(min(weights.shape) + 1)
    gain = np.where(admissible, bonus + weights, 0.0)
    rows, cols = linear_sum_assignment(gain, maximize=True)
    keep = admissible[rows, cols]
    return rows[keep], cols[keep]


def match_sparse(
    rows: np.ndarray, cols: np.ndarray, scores: np.ndarray, threshold: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One-to-one matching of a sparse table of pair scores (IoU or any score in ``[0, 1]``).

    Pairs with ``score >= threshold`` are admissible. The matching has the largest possible
    number of pairs and, among those, the largest total score (Hungarian algorithm, run
    separately on each connected group of admissible pairs so the dense matrices stay small).

    Parameters
    ----------
    rows, cols : numpy.ndarray
        Non-negative integer indices of the two sides of each pair (each pair at most once).
    scores : numpy.ndarray
        Score of each pair, in ``[0, 1]``.
    threshold : float
        Smallest admissible score, in ``(0, 1]``.

    Returns
    -------
    rows, cols, scores : numpy.ndarray
        The matched pairs, sorted by row.
    """
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"The matching threshold must be in (0, 1], got {threshold}.")
    keep = scores >= threshold
    rows, cols, scores = rows[keep], cols[keep], scores[keep]
    if rows.size == 0:
        return rows, cols, scores
    n_rows = int(rows.max()) + 1
    n_nodes = n_rows + int(cols.max()) + 1
    graph = coo_matrix((np.ones(rows.size), (rows, n_rows + cols)), shape=(n_nodes, n_nodes))
    _, group = connected_components(graph, directed=False)
    order = np.argsort(group[rows], kind="stable")
    bounds = np.flatnonzero(np.diff(group[rows][order])) + 1
    found = []
    for edges in np.split(order, bounds):
        block_rows, r = np.unique(rows[edges], return_inverse=True)
        block_cols, c = np.unique(cols[edges], return_inverse=True)
        weights = np.full((block_rows.size, block_cols.size), -1.0)
        weights[r, c] = scores[edges]
        mr, mc = _match_component(weights)
        found.append((block_rows[mr], block_cols[mc], weights[mr, mc]))
    r, c, v = (np.concatenate(parts) for parts in zip(*found, strict=True))
    order = np.argsort(r, kind="stable")
    return r[order], c[order], v[order]


def matched_pairs(
    truth: np.ndarray, pred: np.ndarray, iou_threshold: float = 0.5
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One-to-one matching of the instances of two label images.

    Only pairs with ``IoU >= iou_threshold`` can be matched. Among all one-to-one matchings the
    one with the most pairs is chosen and, among those, the one with the largest total IoU
    (Hungarian algorithm, :func:`scipy.optimize.linear_sum_assignment`). The problem is split
    into independent connected groups of admissible pairs, so the dense matrices stay small.
    For ``iou_threshold > 0.5`` every instance has at most one admissible partner and the
    matching is unique; at exactly ``0.5`` the only possible tie is a cell split into two exact
    halves.

    Parameters
    ----------
    truth, pred : numpy.ndarray
        Integer label images of the same shape.
    iou_threshold : float
        Smallest IoU of a matched pair; must be in ``(0, 1]``.

    Returns
    -------
    truth_ids, pred_ids : numpy.ndarray
        Matched ids (same length, ``truth_ids[k]`` is paired with ``pred_ids[k]``), sorted by
        truth id.
    iou : numpy.ndarray
        ``float64`` IoU of each matched pair.
    """
    _check_threshold(iou_threshold)
    table = overlaps(truth, pred)
    r, c, v = match_sparse(table.rows, table.cols, table.iou, iou_threshold)
    return table.truth_ids[r], table.pred_ids[c], v


def match_instances(
    truth: np.ndarray, pred: np.ndarray, iou_threshold: float = 0.5
) -> InstanceMatch:
    """Match predicted instances to ground-truth instances and score the result.

    A predicted and a true instance form a true positive when they are paired by the
    one-to-one matching of :func:`matched_pairs` (IoU ``>=`` ``iou_threshold``). Unmatched
    predictions are false positives, unmatched true instances false negatives; a cell split in
    two costs one false positive (plus a false negative if no piece reaches the threshold), and
    two merged cells cost at least one false negative.

    Parameters
    ----------
    truth, pred : numpy.ndarray
        Integer label images of the same shape (2D, 3D, ...), ``0`` = background.
    iou_threshold : float
        Smallest IoU of a true-positive pair, in ``(0, 1]``.

    Returns
    -------
    InstanceMatch
        Counts and scores; ``f1 = accuracy = 1.0`` when both images are empty, ``0.0`` when only
        one is.
    """
    _check_threshold(iou_threshold)
    table = overlaps(truth, pred)
    _, _, matched = match_sparse(table.rows, table.cols, table.iou, iou_threshold)
    n_true, n_pred, tp = int(table.truth_ids.size), int(table.pred_ids.size), int(matched.size)
    fp, fn = n_pred - tp, n_true - tp
    both_empty = n_true == 0 and n_pred == 0
    return InstanceMatch(
        iou_threshold=float(iou_threshold),
        n_true=n_true,
        n_pred=n_pred,
        tp=tp,
        fp=fp,
        fn=fn,
        precision=_ratio(tp, n_pred, both_empty),
        recall=_ratio(tp, n_true, both_empty),
        f1=_ratio(2 * tp, n_true + n_pred, both_empty),
        accuracy=_ratio(tp, tp + fp + fn, both_empty),
        mean_matched_iou=_ratio(float(matched.sum()), tp, both_empty),
    )


def evaluate(truth: np.ndarray, pred: np.ndarray, iou_threshold: float = 0.5) -> dict:
    """All scores of a predicted label image against the ground truth.

    Parameters
    ----------
    truth, pred : numpy.ndarray
        Integer label images of the same shape.
    iou_threshold : float
        IoU threshold of the instance matching.

    Returns
    -------
    dict
        ``foreground_iou``, ``dice`` and every field of :class:`InstanceMatch` (plain Python
        numbers, JSON-serialisable).
    """
    truth, pred = _check_pair(truth, pred)
    return {
        "foreground_iou": foreground_iou(truth, pred),
        "dice": dice(truth, pred),
        **match_instances(truth, pred, iou_threshold).to_dict(),
    }
