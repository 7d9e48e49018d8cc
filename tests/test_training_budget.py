"""The training budget's arithmetic (training/budget.py), with a fixed clock."""

from __future__ import annotations

import pytest

from napari_unetkit.training import budget as budget_module
from napari_unetkit.training.budget import MIN_TRAINING_SECONDS, Budget


@pytest.fixture
def clock(monkeypatch):
    """A settable ``time.perf_counter`` as the budget sees it."""
    now = {"t": 0.0}
    monkeypatch.setattr(budget_module.time, "perf_counter", lambda: now["t"])
    return now


def test_epochs_alone_give_exact_steps_and_a_step_fraction(clock):
    budget = Budget(epochs=3, time_limit=None, steps_per_epoch=10, start=0.0, train_start=2.0)
    clock["t"] = 50.0
    assert budget.total_steps == 30 and budget.training_seconds is None
    assert budget.fraction_used(0) == pytest.approx(1 / 30)
    assert budget.fraction_used(29) == pytest.approx(1.0)
    assert budget.total_steps_estimate(7) == 30
    assert not budget.time_is_up(29, 100.0, lambda step: 1e9)  # no time limit, never up


def test_a_time_limit_counts_from_the_call_and_training_gets_what_is_left(clock):
    budget = Budget(epochs=None, time_limit=100.0, steps_per_epoch=10, start=0.0, train_start=20.0)
    assert budget.training_seconds == 80.0
    clock["t"] = 60.0  # 40 of the 80 training seconds used
    assert budget.fraction_used(5) == pytest.approx(0.5)
    assert budget.total_steps_estimate(10) == 20  # 10 steps in half the time
    assert budget.eta(10, 40.0, 0, 0.0) == pytest.approx(40.0)


def test_the_larger_fraction_wins_when_both_limits_are_set(clock):
    budget = Budget(epochs=1, time_limit=100.0, steps_per_epoch=100, start=0.0, train_start=0.0)
    clock["t"] = 10.0
    assert budget.fraction_used(49) == pytest.approx(0.5)  # steps ahead of time (0.1)
    clock["t"] = 90.0
    assert budget.fraction_used(49) == pytest.approx(0.9)  # time ahead of steps
    assert budget.total_steps_estimate(50) == 56  # min(100 steps, round(50 / 0.9))


def test_time_is_up_reserves_one_step_and_what_follows_it(clock):
    budget = Budget(epochs=None, time_limit=100.0, steps_per_epoch=10, start=0.0, train_start=0.0)
    clock["t"] = 80.0
    assert not budget.time_is_up(0, 0.0, lambda step: 1e9)  # the first step always runs
    after = lambda step: 3 * step  # noqa: E731
    assert not budget.time_is_up(4, 16.0, after)  # 80 + 4 + 12 = 96 < 100
    assert budget.time_is_up(4, 20.0, after)  # 80 + 5 + 15 = 100


def test_eta_is_the_smaller_of_the_epoch_and_time_estimates(clock):
    budget = Budget(epochs=2, time_limit=1000.0, steps_per_epoch=5, start=0.0, train_start=0.0)
    clock["t"] = 10.0
    # 5 of 10 steps in 10 s: 5 more steps (10 s) and 2 validations of 3 s; time left 990 s.
    assert budget.eta(5, 10.0, 2, 3.0) == pytest.approx(16.0)
    assert budget.eta(0, 0.0, 2, 3.0) == pytest.approx(990.0)  # no step yet: the time limit


def test_training_never_gets_less_than_the_minimum(clock):
    budget = Budget(epochs=None, time_limit=1.0, steps_per_epoch=1, start=0.0, train_start=5.0)
    assert budget.training_seconds == MIN_TRAINING_SECONDS
