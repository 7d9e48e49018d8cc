"""Choose a model's instance settings on its validation data.

After training, the trainer hands the validation slices' foreground probabilities (from the best
model) and their true instances to :func:`calibrate_instances`, which tries a fixed grid of
:class:`~napari_unetkit.postprocess.InstanceSettings` (method and levels first, then the
smallest kept instance for the best of them) and returns the one with the highest pooled
instance F1 at IoU 0.5; among equal ones, the one whose outlines fit best (the mean F1 over IoU
0.5 to 0.9). The model file stores the result, and prediction uses it unless the user
overrides it. Where every candidate scores the same on both (no validation objects), the
defaults win: candidates are tried in a fixed order with the defaults first and a later one
must score strictly higher.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from napari_unetkit.metrics import match_sparse, overlaps
from napari_unetkit.postprocess import InstanceSettings, instances_from_probabilities

#: Foreground levels tried for the seeded watershed, and seed levels above each.
WATERSHED_THRESHOLDS = (0.5, 0.3, 0.4, 0.6)
SEED_THRESHOLDS = (0.8, 0.6, 0.7, 0.9, 0.95)
#: Foreground levels tried for plain connected components (with gap filling).
COMPONENT_THRESHOLDS = (0.5, 0.6, 0.7)
#: Smallest kept instance as a fraction of the median validation object area (besides the
#: default absolute size).
MIN_SIZE_FRACTIONS = (0.1, 0.25)
#: IoU thresholds of the tie-break score: settings with equal F1 at 0.5 are told apart by how
#: well their outlines fit, the mean F1 over these.
TIE_BREAK_IOUS = (0.5, 0.6, 0.7, 0.8, 0.9)


@dataclass(frozen=True)
class ValidationMap:
    """One validation slice: foreground probability, true instances, annotated area.

    Attributes
    ----------
    fg_prob : numpy.ndarray
        Foreground probability ``(Y, X)``.
    truth : numpy.ndarray
        True instance ids ``(Y, X)``, 0 = background.
    annotated : numpy.ndarray or None
        Where the annotation is complete (sparse annotation); ``None``: everywhere. Truth and
        prediction are both cut to it before matching.
    """

    fg_prob: np.ndarray
    truth: np.ndarray
    annotated: np.ndarray | None = None


def candidate_settings(base: InstanceSettings) -> list[InstanceSettings]:
    """Every method and level tried, ``base`` first (see the module constants for the grid)."""
    candidates = [base]
    for threshold in WATERSHED_THRESHOLDS:
        for seed in SEED_THRESHOLDS:
            if seed > threshold:
                candidates.append(
                    replace(base, method="watershed", threshold=threshold, seed_threshold=seed)
                )
    for threshold in COMPONENT_THRESHOLDS:
        candidates.append(replace(base, method="components", threshold=threshold))
    return list(dict.fromkeys(candidates))


def size_candidates(
    settings: InstanceSettings, median_area: float | None
) -> list[InstanceSettings]:
    """Return ``settings`` with the smallest instance at fractions of the median object area."""
    if not median_area:
        return []
    sizes = sorted({round(f * median_area) for f in MIN_SIZE_FRACTIONS} - {settings.min_size})
    return [replace(settings, min_size=size) for size in sizes]


def pooled_scores(maps: Sequence[ValidationMap], settings: InstanceSettings) -> tuple[float, float]:
    """Return the pooled instance F1 over all maps with ``settings`` applied.

    Two numbers: the F1 at IoU 0.5, and its mean over :data:`TIE_BREAK_IOUS`; both 1.0 when
    neither truth nor prediction holds an object.
    """
    tp = np.zeros(len(TIE_BREAK_IOUS))
    n_objects = 0
    for item in maps:
        pred = instances_from_probabilities(item.fg_prob, settings=settings)
        truth = item.truth
        if item.annotated is not None:
            truth = np.where(item.annotated, truth, 0)
            pred = np.where(item.annotated, pred, 0)
        table = overlaps(truth, pred)
        n_objects += table.truth_ids.size + table.pred_ids.size
        iou = table.iou
        for k, threshold in enumerate(TIE_BREAK_IOUS):
            tp[k] += match_sparse(table.rows, table.cols, iou, threshold)[2].size
    if n_objects == 0:
        return 1.0, 1.0
    f1 = 2.0 * tp / n_objects
    return float(f1[0]), float(f1.mean())


def pooled_f1(maps: Sequence[ValidationMap], settings: InstanceSettings) -> float:
    """Instance F1 at IoU 0.5 over all maps (matches pooled), with ``settings`` applied."""
    return pooled_scores(maps, settings)[0]


def median_object_area(maps: Sequence[ValidationMap]) -> float | None:
    """Median area in pixels of the true objects of the maps (None without objects)."""
    areas = []
    for item in maps:
        counts = np.bincount(np.asarray(item.truth).ravel().astype(np.int64))[1:]
        areas.append(counts[counts > 0])
    areas = np.concatenate(areas) if areas else np.zeros(0)
    return float(np.median(areas)) if areas.size else None


def calibrate_instances(
    maps: Sequence[ValidationMap],
    base: InstanceSettings | None = None,
    *,
    should_stop: Callable[[], bool] | None = None,
) -> tuple[InstanceSettings, float | None, float | None]:
    """Pick the instance settings with the best pooled validation F1.

    Parameters
    ----------
    maps : sequence of ValidationMap
        The validation slices; with none, ``base`` is returned unscored.
    base : InstanceSettings, optional
        The defaults, tried first and kept on ties; default ``InstanceSettings()``.
    should_stop : callable, optional
        Polled between candidates; when it returns true the best setting so far is returned.

    Returns
    -------
    settings, score, base_score : InstanceSettings, float or None, float or None
        The chosen settings, their validation F1 and the F1 of ``base`` (None without maps).
    """
    base = base or InstanceSettings()
    if not maps:
        return base, None, None
    best, best_scores = base, pooled_scores(maps, base)
    base_score = best_scores[0]

    def try_all(candidates: list[InstanceSettings]) -> bool:
        nonlocal best, best_scores
        for candidate in candidates:
            if should_stop is not None and should_stop():
                return False
            scores = pooled_scores(maps, candidate)
            if scores > best_scores:  # F1 at 0.5 first, the outline fit on ties
                best, best_scores = candidate, scores
        return True

    # Method and levels first, then the smallest instance size for the winner.
    if try_all(candidate_settings(base)[1:]):
        try_all(size_candidates(best, median_object_area(maps)))
    return best, best_scores[0], base_score
