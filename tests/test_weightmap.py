"""Tests for napari_unetkit.weightmap against slow, obviously correct references."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest

from napari_unetkit.weightmap import (
    PRESETS,
    WeightMapSettings,
    boundary_weight_map,
    instance_distances,
    separate_instances,
    settings_from,
    weights_and_target,
)

NEIGHBOURS_8 = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]


# ------------------------------------------------------------------------------------------
# Test images and references
# ------------------------------------------------------------------------------------------


def touching_cells(shape=(28, 32), n_cells=7, seed=0, radius=(3.0, 7.0)) -> np.ndarray:
    """Voronoi regions of random seeds, each cut to a disk: cells that often touch."""
    rng = np.random.default_rng(seed)
    seeds = rng.uniform(0, shape, size=(n_cells, 2))
    radii = rng.uniform(*radius, size=n_cells)
    yy, xx = np.indices(shape)
    distance = np.hypot(yy[..., None] - seeds[:, 0], xx[..., None] - seeds[:, 1])
    nearest = distance.argmin(axis=-1)
    inside = distance.min(axis=-1) < radii[nearest]
    return np.where(inside, nearest + 1, 0).astype(np.int32)


def brute_distances(labels: np.ndarray, spacing=(1.0, 1.0)) -> tuple[np.ndarray, np.ndarray]:
    """Distance from every pixel to every instance pixel, minimum per instance, sorted."""
    coords = np.indices(labels.shape).reshape(2, -1).T * np.asarray(spacing)
    flat = labels.ravel()
    per_instance = [
        np.sqrt(((coords[:, None, :] - coords[flat == i][None]) ** 2).sum(-1)).min(axis=1)
        for i in np.unique(flat[flat > 0])
    ]
    per_instance += [np.full(flat.size, np.inf)] * 2
    ordered = np.sort(np.stack(per_instance), axis=0)
    return ordered[0].reshape(labels.shape), ordered[1].reshape(labels.shape)


def reference_separation(labels: np.ndarray) -> np.ndarray:
    """Pixel loop: an instance pixel with an 8-neighbour of another instance becomes 0."""
    out = labels.copy()
    height, width = labels.shape
    for y in range(height):
        for x in range(width):
            if labels[y, x] == 0:
                continue
            for dy, dx in NEIGHBOURS_8:
                v, u = y + dy, x + dx
                if 0 <= v < height and 0 <= u < width and labels[v, u] not in (0, labels[y, x]):
                    out[y, x] = 0
    return out


def reference_weights(
    labels,
    w0=10.0,
    sigma=5.0,
    class_balance="balanced",
    separate=True,
    border_on="background",
    ignore=None,
    spacing=(1.0, 1.0),
    falk=(0.1, 10.0),
) -> np.ndarray:
    """The weight map written straight from the definition (float64)."""
    labels = np.asarray(labels, dtype=np.int64)
    ignored = np.zeros(labels.shape, bool) if ignore is None else ignore
    instances = np.where(ignored, 0, labels)
    d1, d2 = brute_distances(instances, spacing)
    target = reference_separation(instances) if separate else instances
    fg = target > 0
    valid = ~ignored
    if class_balance == "falk":
        ratio, smooth_sigma = falk
        wc = np.where(fg, 1.0, ratio + (1 - ratio) * np.exp(-(d1**2) / (2 * smooth_sigma**2)))
    else:
        if class_balance == "none":
            w_bg = w_fg = 1.0
        elif class_balance in ("balanced", "bounded"):
            n = valid.sum()
            n_fg, n_bg = (fg & valid).sum(), (~fg & valid).sum()
            k = int(n_fg > 0) + int(n_bg > 0)
            w_bg = n / (k * n_bg) if n_bg else 1.0
            w_fg = n / (k * n_fg) if n_fg else 1.0
            if class_balance == "bounded" and n_fg and n_bg:
                # Solve w_fg = r w_bg with r clipped to [1/3, 3] and a mean weight of 1.
                r = min(max(w_fg / w_bg, 1 / 3), 3.0)
                w_bg = n / (n_bg + r * n_fg)
                w_fg = r * w_bg
        else:
            w_bg, w_fg = class_balance
        wc = np.where(fg, w_fg, w_bg)
    border = w0 * np.exp(-((d1 + d2) ** 2) / (2 * sigma**2))
    if border_on == "background":
        border[fg] = 0
    weights = wc + border
    weights[ignored] = 0
    return weights


def eight_connected_pairs(labels: np.ndarray) -> set[tuple[int, int]]:
    """Pairs of different instance ids that have 8-adjacent pixels."""
    pairs = set()
    height, width = labels.shape
    for y, x in zip(*np.nonzero(labels), strict=True):
        for dy, dx in NEIGHBOURS_8:
            v, u = y + dy, x + dx
            if 0 <= v < height and 0 <= u < width and labels[v, u] not in (0, labels[y, x]):
                pairs.add((int(labels[y, x]), int(labels[v, u])))
    return pairs


IMAGES = [touching_cells(seed=s) for s in range(4)] + [
    touching_cells((20, 20), n_cells=12, seed=9, radius=(2.0, 9.0)),  # dense, at the borders
    touching_cells((16, 24), n_cells=3, seed=5, radius=(1.0, 12.0)),
]


# ------------------------------------------------------------------------------------------
# Distances
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("index", range(len(IMAGES)))
def test_instance_distances_match_brute_force(index):
    labels = IMAGES[index]
    d1, d2 = instance_distances(labels)
    r1, r2 = brute_distances(labels)
    np.testing.assert_allclose(d1, r1, atol=1e-9)
    np.testing.assert_allclose(d2, r2, atol=1e-9)
    assert d1.shape == labels.shape
    assert np.all(d1[labels > 0] == 0)


def test_bounded_distances_are_exact_within_max_distance_and_inf_beyond():
    labels = touching_cells((40, 40), n_cells=6, seed=3)
    r1, r2 = brute_distances(labels)
    d1, d2 = instance_distances(labels, max_distance=4.5)
    for got, want in ((d1, r1), (d2, r2)):
        near = want <= 4.5
        np.testing.assert_allclose(got[near], want[near], atol=1e-9)
        assert np.all(np.isinf(got[~near]))


def test_distances_with_physical_spacing():
    labels = IMAGES[1]
    r1, r2 = brute_distances(labels, spacing=(2.0, 1.0))
    d1, d2 = instance_distances(labels, spacing=(2.0, 1.0))
    np.testing.assert_allclose(d1, r1, atol=1e-9)
    np.testing.assert_allclose(d2, r2, atol=1e-9)
    bounded = instance_distances(labels, max_distance=7.0, spacing=(2.0, 1.0))
    for got, want in zip(bounded, (r1, r2), strict=True):
        np.testing.assert_allclose(got[want <= 7], want[want <= 7], atol=1e-9)


def test_equidistant_instances_give_d2_equal_d1():
    labels = np.zeros((11, 11), np.uint8)
    labels[5, 2], labels[5, 8] = 1, 2
    d1, d2 = instance_distances(labels)
    assert d1[5, 5] == d2[5, 5] == 3.0
    assert d1[0, 5] == d2[0, 5] == pytest.approx(math.hypot(5, 3))
    assert d1[5, 2] == 0 and d2[5, 2] == 6.0


def test_known_values_two_squares():
    labels = np.zeros((12, 20), np.uint8)
    labels[3:8, 3:8] = 1
    labels[3:8, 11:16] = 2
    d1, d2 = instance_distances(labels)
    assert (d1[5, 9], d2[5, 9]) == (2.0, 2.0)  # gap of 3 px between columns 7 and 11
    assert (d1[5, 7], d2[5, 7]) == (0.0, 4.0)
    weights = boundary_weight_map(labels, class_balance="none", separate=False)
    assert weights[5, 9] == pytest.approx(1 + 10 * math.exp(-16 / 50), rel=1e-6)
    assert weights[5, 7] == pytest.approx(1.0)  # foreground: no border term by default
    everywhere = boundary_weight_map(labels, class_balance="none", border_on="all")
    assert everywhere[5, 7] == pytest.approx(1 + 10 * math.exp(-16 / 50), rel=1e-6)


# ------------------------------------------------------------------------------------------
# Weights against the reference
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("index", range(len(IMAGES)))
@pytest.mark.parametrize("border_on", ["background", "all"])
@pytest.mark.parametrize("class_balance", ["balanced", "bounded", "none", (0.5, 2.0)])
def test_weights_match_reference(index, border_on, class_balance):
    labels = IMAGES[index]
    got = boundary_weight_map(labels, class_balance=class_balance, border_on=border_on)
    want = reference_weights(labels, class_balance=class_balance, border_on=border_on)
    assert got.dtype == np.float32 and got.shape == labels.shape
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("index", range(len(IMAGES)))
@pytest.mark.parametrize("border_on", ["background", "all"])
def test_falk2019_preset_matches_reference(index, border_on):
    labels = IMAGES[index]
    got = boundary_weight_map(labels, preset="falk2019", border_on=border_on)
    want = reference_weights(labels, w0=50.0, sigma=6.0, class_balance="falk", border_on=border_on)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("separate", [True, False])
def test_weights_without_or_with_separation_and_other_parameters(separate):
    labels = IMAGES[2]
    got = boundary_weight_map(labels, w0=4.0, sigma=2.5, separate=separate)
    want = reference_weights(labels, w0=4.0, sigma=2.5, separate=separate)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-5)


def test_spacing_one_one_equals_default_and_physical_spacing_matches_reference():
    labels = IMAGES[0]
    np.testing.assert_array_equal(
        boundary_weight_map(labels, spacing=(1, 1)), boundary_weight_map(labels)
    )
    got = boundary_weight_map(labels, spacing=(2.0, 1.0), sigma=6.0)
    want = reference_weights(labels, spacing=(2.0, 1.0), sigma=6.0)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-5)


def test_balanced_classes_have_equal_total_weight():
    labels = IMAGES[3]
    weights, target = weights_and_target(labels, w0=0.0)
    fg = target > 0
    assert weights[fg].sum() == pytest.approx(weights[~fg].sum(), rel=1e-5)
    assert weights.sum() == pytest.approx(labels.size, rel=1e-5)


@pytest.mark.parametrize("fraction", [0.004, 0.05, 0.3, 0.6, 0.9])
def test_bounded_balance_limits_the_ratio_and_keeps_the_mean(fraction):
    labels = np.zeros((100, 100), np.int32)
    labels.flat[: round(fraction * labels.size)] = 1
    weights, target = weights_and_target(labels, w0=0.0, class_balance="bounded")
    fg = target > 0
    ratio = weights[fg].max() / weights[~fg].max()
    balanced = (~fg).sum() / fg.sum()  # the unbounded ratio
    assert ratio == pytest.approx(min(max(balanced, 1 / 3), 3.0), rel=1e-5)
    assert weights.mean() == pytest.approx(1.0, rel=1e-5)


def test_tol_bounds_the_error_against_exact_computation():
    labels = touching_cells((64, 64), n_cells=20, seed=11)
    exact = boundary_weight_map(labels, tol=0.0, preset="falk2019")
    for tol in (1e-6, 1e-3, 1e-1):
        approx = boundary_weight_map(labels, tol=tol, preset="falk2019")
        error = np.abs(approx.astype(np.float64) - exact).max()
        assert error <= 2 * tol + 1e-5
    coarse = boundary_weight_map(labels, tol=1e-1, preset="falk2019")
    assert np.abs(coarse.astype(np.float64) - exact).max() > 1e-3  # tol really cuts off


# ------------------------------------------------------------------------------------------
# Separation
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("index", range(len(IMAGES)))
def test_separation_properties(index):
    labels = IMAGES[index]
    assert bool(eight_connected_pairs(labels)) == (index != 5), "5 is the one without contacts"
    separated = separate_instances(labels)
    assert separated.dtype == labels.dtype
    assert not eight_connected_pairs(separated)
    removed = (labels > 0) & (separated == 0)
    assert np.all(separated[~removed] == labels[~removed])  # nothing else changed
    padded = np.pad(labels, 1)
    for y, x in zip(*np.nonzero(removed), strict=True):
        window = padded[y : y + 3, x : x + 3]
        assert np.any((window > 0) & (window != labels[y, x]))  # touched another instance
    np.testing.assert_array_equal(separated, reference_separation(labels))


def test_separation_is_symmetric_under_flips_and_relabelling():
    labels = IMAGES[4]
    separated = separate_instances(labels)
    np.testing.assert_array_equal(separate_instances(labels[::-1, ::-1]), separated[::-1, ::-1])
    np.testing.assert_array_equal(separate_instances(labels.T), separated.T)
    swapped = np.where(labels > 0, labels.max() + 1 - labels, 0)
    np.testing.assert_array_equal(separate_instances(swapped) > 0, separated > 0)


def test_target_agrees_with_separate_instances():
    labels = IMAGES[0]
    _, target = weights_and_target(labels)
    np.testing.assert_array_equal(target, separate_instances(labels))
    _, unseparated = weights_and_target(labels, separate=False)
    np.testing.assert_array_equal(unseparated, labels)


@pytest.mark.parametrize("index", [0, 1, 3, 4])
def test_ridge_pixels_carry_the_largest_weights(index):
    labels = IMAGES[index]
    weights, target = weights_and_target(labels, preset="paper")
    ridge = (labels > 0) & (target == 0)
    assert ridge.any()
    assert weights[ridge].min() > weights[~ridge].max()


def test_falk_ridge_weight_is_about_50():
    labels = np.zeros((32, 32), np.uint16)
    labels[5:15, 5:15], labels[5:15, 15:25] = 1, 2
    weights = boundary_weight_map(labels, preset="falk2019")
    assert weights[10, 15] == pytest.approx(0.1 + 0.9 + 50 * math.exp(-1 / 72), rel=1e-6)
    assert weights[10, 10] == 1.0


# ------------------------------------------------------------------------------------------
# Edge cases and input validation
# ------------------------------------------------------------------------------------------


def test_no_instance():
    labels = np.zeros((9, 13), np.uint16)
    d1, d2 = instance_distances(labels)
    assert np.all(np.isinf(d1)) and np.all(np.isinf(d2))
    np.testing.assert_array_equal(boundary_weight_map(labels), np.ones((9, 13), np.float32))
    falk = boundary_weight_map(labels, preset="falk2019")
    np.testing.assert_allclose(falk, 0.1)
    assert boundary_weight_map(np.zeros((0, 5), np.uint8)).shape == (0, 5)


def test_one_instance_has_no_border_term():
    labels = np.zeros((15, 15), np.uint8)
    labels[0:6, 0:4] = 7  # touches the image border
    weights = boundary_weight_map(labels, border_on="all")
    assert np.isinf(instance_distances(labels)[1]).all()
    assert len(np.unique(weights)) == 2
    np.testing.assert_allclose(weights, reference_weights(labels, border_on="all"), rtol=1e-6)


def test_one_pixel_instances_and_image_border():
    labels = np.zeros((10, 10), np.int64)
    labels[0, 0], labels[0, 1], labels[9, 9], labels[4, 5] = 1, 2, 3, 4
    got = boundary_weight_map(labels)
    np.testing.assert_allclose(got, reference_weights(labels), rtol=1e-6, atol=1e-5)
    target = separate_instances(labels)
    assert target[0, 0] == target[0, 1] == 0  # two touching single pixels both vanish
    assert target[9, 9] == 3 and target[4, 5] == 4


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.uint32, np.int32, np.int64])
def test_dtypes_and_sparse_ids_give_the_same_result(dtype):
    base = IMAGES[0]
    expected = boundary_weight_map(base)
    ids = np.array([0, 3, 17, 90, 200, 150, 250, 99], dtype=np.int64)
    if np.iinfo(dtype).max > 1000:
        ids[1:4] = [3, 17, 900]
    relabelled = ids[base].astype(dtype)
    weights, target = weights_and_target(relabelled)
    np.testing.assert_array_equal(weights, expected)
    assert target.dtype == dtype
    np.testing.assert_array_equal(target > 0, separate_instances(base) > 0)


def test_huge_ids():
    base = IMAGES[1]
    for ids, dtype in (
        ([0, 2**40, 5, 2**35, 7, 2**50, 1, 3], np.int64),
        ([0, 4e9, 1, 2, 3e9, 5, 6, 2**31], np.uint32),
    ):
        ids = np.array(ids, dtype=np.int64)
        relabelled = ids[base].astype(dtype)
        np.testing.assert_array_equal(boundary_weight_map(relabelled), boundary_weight_map(base))
        np.testing.assert_array_equal(
            instance_distances(relabelled)[1], instance_distances(base)[1]
        )


def test_bool_mask_is_one_instance_with_a_warning():
    mask = IMAGES[0] > 0
    with pytest.warns(UserWarning, match="instance labels"):
        weights, target = weights_and_target(mask)
    np.testing.assert_array_equal(weights, boundary_weight_map(mask.astype(np.uint8)))
    assert target.dtype == bool
    np.testing.assert_array_equal(target, mask)


@pytest.mark.parametrize(
    ("labels", "match"),
    [
        (np.array([[0, 1], [-1, 2]], np.int32), "negative"),
        (np.array([[0.0, 1.0], [2.0, 0.0]]), "integers"),
        (np.array([[0, 1], [2, 0]], np.float32), "integers"),
        (np.array([0, 1, 2]), "2D"),
        (np.array([["a", "b"]]), "integer"),
    ],
)
def test_invalid_labels_raise_clear_errors(labels, match):
    for function in (boundary_weight_map, separate_instances, instance_distances):
        with pytest.raises(ValueError, match=match):
            function(labels)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"sigma": 0},
        {"w0": -1},
        {"border_on": "foreground"},
        {"class_balance": "inverse"},
        {"class_balance": (1.0, 2.0, 3.0)},
        {"class_balance": {"bg": 1, "fg": 2}},
        {"spacing": (1.0,)},
        {"spacing": (0.0, 1.0)},
        {"tol": -1e-3},
        {"ignore": 0},
        {"ignore": np.zeros((3, 3), bool)},
        {"ignore": np.zeros((28, 32), np.uint8)},
        {"preset": "unknown"},
        {"preset": "paper", "settings": WeightMapSettings()},
        {"workers": 0},
    ],
)
def test_invalid_settings_raise(kwargs):
    with pytest.raises((ValueError, TypeError)):
        boundary_weight_map(IMAGES[0], **kwargs)


def test_ignore_mask_and_ignore_label_get_zero_weight():
    labels = IMAGES[1].copy()
    mask = np.zeros(labels.shape, bool)
    mask[:, :9] = True
    got = boundary_weight_map(labels, ignore=mask)
    assert np.all(got[mask] == 0) and np.all(got[~mask] > 0)
    np.testing.assert_allclose(got, reference_weights(labels, ignore=mask), rtol=1e-6, atol=1e-5)

    labels[labels == 2] = 99
    weights, target = weights_and_target(labels, ignore=99)
    ignored = labels == 99
    assert ignored.any() and np.all(weights[ignored] == 0) and np.all(target[ignored] == 0)
    np.testing.assert_allclose(
        weights, reference_weights(labels, ignore=ignored), rtol=1e-6, atol=1e-5
    )
    # The ignored cell is not an instance: same weights as erasing it, outside its pixels,
    # apart from the class balance, which only counts non-ignored pixels.
    erased = boundary_weight_map(np.where(ignored, 0, labels), class_balance="none")
    none = boundary_weight_map(labels, class_balance="none", ignore=99)
    np.testing.assert_array_equal(none[~ignored], erased[~ignored])


# ------------------------------------------------------------------------------------------
# Stacks and threads
# ------------------------------------------------------------------------------------------


def test_stacks_are_computed_slice_by_slice():
    stack = np.stack([IMAGES[0], IMAGES[1], np.zeros_like(IMAGES[0]), IMAGES[3]])
    for workers in (1, 3):
        weights, target = weights_and_target(stack, preset="falk2019", workers=workers)
        for i, labels in enumerate(stack):
            np.testing.assert_array_equal(
                weights[i], boundary_weight_map(labels, preset="falk2019")
            )
            np.testing.assert_array_equal(target[i], separate_instances(labels))
    four_d = stack.reshape(2, 2, *stack.shape[1:])
    np.testing.assert_array_equal(
        boundary_weight_map(four_d), boundary_weight_map(stack).reshape(four_d.shape)
    )
    _, d2 = instance_distances(stack)
    np.testing.assert_array_equal(d2[1], instance_distances(IMAGES[1])[1])
    np.testing.assert_array_equal(separate_instances(stack)[3], separate_instances(IMAGES[3]))


def test_threads_do_not_change_the_result():
    labels = touching_cells((96, 80), n_cells=40, seed=4)
    one = boundary_weight_map(labels, workers=1)
    for workers in (2, 3, 7):
        np.testing.assert_array_equal(boundary_weight_map(labels, workers=workers), one)
    fortran_order = np.ascontiguousarray(labels.T).T  # a non-contiguous view of the same labels
    np.testing.assert_array_equal(boundary_weight_map(fortran_order, workers=2), one)


# ------------------------------------------------------------------------------------------
# Settings and presets
# ------------------------------------------------------------------------------------------


def test_defaults_are_the_paper_preset():
    assert WeightMapSettings() == PRESETS["paper"] == settings_from()
    paper = PRESETS["paper"]
    assert (paper.w0, paper.sigma, paper.class_balance) == (10.0, 5.0, "balanced")
    falk = PRESETS["falk2019"]
    assert (falk.w0, falk.sigma, falk.class_balance) == (50.0, 6.0, "falk")
    assert (falk.background_ratio, falk.background_sigma) == (0.1, 10.0)
    labels = IMAGES[0]
    np.testing.assert_array_equal(
        boundary_weight_map(labels, preset="paper"), boundary_weight_map(labels)
    )


def test_explicit_arguments_override_the_preset():
    labels = IMAGES[2]
    via_preset = boundary_weight_map(labels, preset="falk2019", sigma=3.0, border_on="all")
    spelled_out = boundary_weight_map(
        labels, 50.0, 3.0, "falk", border_on="all", background_ratio=0.1, background_sigma=10.0
    )
    np.testing.assert_array_equal(via_preset, spelled_out)
    settings = settings_from("falk2019", sigma=3.0, border_on="all")
    np.testing.assert_array_equal(boundary_weight_map(labels, settings=settings), spelled_out)
    # An explicit value equal to the default still counts as explicit.
    paper_w0 = boundary_weight_map(labels, w0=10.0, preset="falk2019")
    falk = boundary_weight_map(labels, preset="falk2019")
    assert not np.array_equal(paper_w0, falk)
    np.testing.assert_array_equal(
        paper_w0, boundary_weight_map(labels, settings=settings_from("falk2019", w0=10.0))
    )


def test_settings_ignore_label_is_used():
    labels = IMAGES[1]
    settings = settings_from("paper", ignore=2)
    np.testing.assert_array_equal(
        boundary_weight_map(labels, settings=settings), boundary_weight_map(labels, ignore=2)
    )


@pytest.mark.parametrize(
    "settings",
    [
        PRESETS["paper"],
        PRESETS["falk2019"],
        WeightMapSettings(class_balance={"background": 0.5, "foreground": 3}, spacing=(0.5, 0.25)),
        WeightMapSettings(class_balance=(1, 2), ignore=255, separate=False, tol=0.0),
    ],
)
def test_settings_json_round_trip(settings):
    data = json.loads(json.dumps(settings.to_dict()))
    assert WeightMapSettings.from_dict(data) == settings


def test_settings_validation():
    assert WeightMapSettings(class_balance={0: 1, 1: 4}).class_balance == (1.0, 4.0)
    with pytest.raises(ValueError, match="Unknown"):
        WeightMapSettings.from_dict({"w0": 1.0, "colour": "red"})
    with pytest.raises(TypeError, match="Unknown"):
        settings_from("paper", sigmaa=3)
    with pytest.raises(ValueError):
        WeightMapSettings(background_ratio=1.5)
    with pytest.raises(ValueError):
        WeightMapSettings(separate="yes")
    assert WeightMapSettings(tol=0.0).radius() == math.inf
    assert WeightMapSettings(w0=1e-9).radius() == 0.0
    assert PRESETS["paper"].radius() == pytest.approx(5 * math.sqrt(2 * math.log(1e7)))


def test_no_warnings_on_ordinary_input():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        boundary_weight_map(IMAGES[0], preset="falk2019")
        boundary_weight_map(np.zeros((5, 5), np.uint8))
