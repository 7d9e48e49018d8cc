import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_unetkit.calibration import (
    ValidationMap,
    calibrate_instances,
    candidate_settings,
    median_object_area,
    pooled_f1,
    pooled_scores,
    size_candidates,
)
from napari_unetkit.metrics import match_instances
from napari_unetkit.postprocess import InstanceSettings, instances_from_probabilities


def touching_cells(shape=(64, 96), valley=0.65):
    """Two touching disks and a probability with a dip (still above 0.5) where they meet."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    d1 = np.hypot(yy - 32, xx - 30)
    d2 = np.hypot(yy - 32, xx - 62)
    truth = np.zeros(shape, np.int32)
    truth[d1 < 17] = 1
    truth[(d2 < 17) & (d2 < d1)] = 2
    prob = np.full(shape, 0.05)
    prob[truth > 0] = 0.95
    contact = (truth > 0) & (np.abs(d1 - d2) < 2.5)
    prob[contact] = valley
    return prob, truth


def test_watershed_separates_what_components_merge():
    prob, truth = touching_cells()
    merged = instances_from_probabilities(prob, 0.5)
    assert merged.max() == 1
    split = instances_from_probabilities(prob, settings=InstanceSettings(seed_threshold=0.8))
    assert match_instances(truth, split, 0.9).f1 == 1.0
    # Every foreground pixel is given to a cell: nothing between them stays background.
    np.testing.assert_array_equal(split > 0, prob > 0.5)


def test_watershed_regions_each_hold_one_seed_and_are_connected():
    rng = np.random.default_rng(3)
    prob = ndi.gaussian_filter(rng.random((80, 80)), 3)
    prob = (prob - prob.min()) / (prob.max() - prob.min())
    settings = InstanceSettings(threshold=0.45, seed_threshold=0.6, min_size=0)
    labels = instances_from_probabilities(prob, settings=settings)
    seeds, n_seeds = ndi.label(prob > 0.6, structure=ndi.generate_binary_structure(2, 1))
    assert labels.max() >= n_seeds >= 2
    cross = ndi.generate_binary_structure(2, 1)
    for k in range(1, labels.max() + 1):
        region = labels == k
        assert ndi.label(region, structure=cross)[1] == 1
        assert np.unique(seeds[region & (seeds > 0)]).size <= 1
    np.testing.assert_array_equal(labels > 0, prob > 0.45)


def test_low_seed_level_equals_components_without_gap_filling():
    prob, _ = touching_cells(valley=0.3)
    for seed in (0.5, 0.3):
        watershed = instances_from_probabilities(
            prob, settings=InstanceSettings(threshold=0.5, seed_threshold=seed, min_size=0)
        )
        components = instances_from_probabilities(prob, 0.5, min_size=0, grow=0)
        np.testing.assert_array_equal(watershed, components)


def test_foreground_without_seed_is_kept_as_its_own_cell():
    prob = np.full((30, 30), 0.1)
    prob[5:12, 5:12] = 0.95
    prob[18:26, 18:26] = 0.7  # above the foreground level, never above the seed level
    labels = instances_from_probabilities(prob, settings=InstanceSettings(seed_threshold=0.9))
    assert labels.max() == 2
    assert (labels[18:26, 18:26] > 0).all()


def test_small_instances_are_removed_after_the_watershed():
    prob = np.full((30, 30), 0.1)
    prob[2:12, 2:12] = 0.95
    prob[20:22, 20:22] = 0.95
    labels = instances_from_probabilities(prob, settings=InstanceSettings(min_size=5))
    assert labels.max() == 1 and (labels[20:22, 20:22] == 0).all()


def test_instance_settings_round_trip_and_validation():
    settings = InstanceSettings("components", 0.4, 0.7, 3, 1)
    assert InstanceSettings.from_dict(settings.to_dict()) == settings
    assert InstanceSettings.from_dict(None) == InstanceSettings()
    assert InstanceSettings.from_dict({"threshold": 0.3}).threshold == 0.3
    for bad in (
        {"method": "magic"},
        {"threshold": 1.0},
        {"seed_threshold": 0.0},
        {"threshold": "0.5"},
        {"min_size": -1},
        {"grow": 1.5},
        {"min_size": True},
    ):
        with pytest.raises(ValueError):
            InstanceSettings(**bad)
    with pytest.raises(ValueError, match="Unknown"):
        InstanceSettings.from_dict({"colour": 1})


def test_calibration_finds_the_setting_that_separates_cells():
    maps = [ValidationMap(*touching_cells(valley=v)) for v in (0.6, 0.7, 0.75)]
    base = InstanceSettings(method="components", threshold=0.5)
    assert pooled_f1(maps, base) < 0.7  # each pair merged into one object
    chosen, score, base_score = calibrate_instances(maps, base)
    assert base_score < 0.7 and score == 1.0
    assert chosen.method == "watershed" and chosen.seed_threshold > 0.75


def test_calibration_keeps_the_defaults_on_ties_and_when_stopped():
    prob = np.full((40, 40), 0.02)
    prob[5:15, 5:15] = 0.99
    truth = (prob > 0.5).astype(np.int32)
    base = InstanceSettings()
    assert calibrate_instances([ValidationMap(prob, truth)], base) == (base, 1.0, 1.0)
    assert calibrate_instances([], base) == (base, None, None)
    maps = [ValidationMap(*touching_cells(valley=0.6))]
    stopped = calibrate_instances(maps, InstanceSettings("components"), should_stop=lambda: True)
    assert stopped[0] == InstanceSettings("components")


def test_calibration_scores_only_the_annotated_area():
    prob, truth = touching_cells(valley=0.6)
    prob[:, 80:90] = 0.95  # an object the annotation does not cover
    annotated = np.zeros(prob.shape, bool)
    annotated[:, :79] = True
    settings = InstanceSettings(seed_threshold=0.8)
    assert pooled_f1([ValidationMap(prob, truth, annotated)], settings) == 1.0
    assert pooled_f1([ValidationMap(prob, truth)], settings) < 1.0


def test_candidates_start_with_the_base_and_are_unique():
    base = InstanceSettings()
    candidates = candidate_settings(base)
    assert candidates[0] == base and len(set(candidates)) == len(candidates)
    assert all(c.seed_threshold > c.threshold for c in candidates if c.method == "watershed")
    sizes = size_candidates(base, 400.0)
    assert [s.min_size for s in sizes] == [40, 100]
    assert size_candidates(base, None) == []
    _, truth = touching_cells()
    assert median_object_area([ValidationMap(truth * 0.0, truth)]) == pytest.approx(
        np.median(np.bincount(truth.ravel())[1:])
    )


def test_ties_at_iou_half_go_to_the_setting_whose_outlines_fit_best():
    yy, xx = np.mgrid[:40, :40]
    radius = np.hypot(yy - 20, xx - 20)
    truth = (radius < 10).astype(np.int32)
    prob = np.where(radius < 8, 0.95, np.where(radius < 10, 0.35, 0.02))
    maps = [ValidationMap(prob, truth)]
    base = InstanceSettings(threshold=0.5)
    assert pooled_scores(maps, base)[0] == 1.0  # matched at IoU 0.64, so F1 at 0.5 ties
    chosen, score, base_score = calibrate_instances(maps, base)
    assert score == base_score == 1.0
    assert chosen.threshold < 0.35  # the whole cell, not only its confident core
    assert pooled_scores(maps, chosen)[1] > pooled_scores(maps, base)[1]
