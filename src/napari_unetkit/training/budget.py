"""The training budget of one run: its limits, how much of them is used, what is left.

A run is bounded by ``epochs`` (a number of steps, ``epochs * steps_per_epoch``), by
``time_limit`` (wall-clock seconds counted from the call of
:func:`~napari_unetkit.training.train`, data preparation included), or by both. :class:`Budget`
holds those limits and the two moments they are measured from, and turns the loop's counters
(steps run, seconds spent in steps) into:

- the *used fraction* the learning-rate schedule follows: the larger of
  ``(steps run + 1) / total steps`` and ``training seconds / seconds left for training when the
  loop started``;
- whether the time limit leaves room for another step plus what must follow it (the caller
  says how long that takes);
- estimates of the whole run's steps and of the seconds left, for progress events.

Times are ``time.perf_counter()`` seconds. Nothing here changes state.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

#: Smallest time budget for training (seconds), so that fractions stay finite.
MIN_TRAINING_SECONDS = 1e-3


@dataclass(frozen=True)
class Budget:
    """The limits of one run and the moments they are counted from.

    Attributes
    ----------
    epochs : int or None
        Epochs of this run (``None``: only the time limit bounds it).
    time_limit : float or None
        Seconds from ``start`` (``None``: only the epochs bound it).
    steps_per_epoch : int
        Optimiser steps per epoch.
    start : float
        When :func:`~napari_unetkit.training.train` was called.
    train_start : float
        When the training loop started (after data preparation).
    """

    epochs: int | None
    time_limit: float | None
    steps_per_epoch: int
    start: float
    train_start: float

    def elapsed(self) -> float:
        """Seconds since :attr:`start`."""
        return time.perf_counter() - self.start

    @property
    def total_steps(self) -> int | None:
        """Steps of the run when ``epochs`` bounds it, else ``None``."""
        return None if self.epochs is None else self.epochs * self.steps_per_epoch

    @property
    def training_seconds(self) -> float | None:
        """Seconds of the time limit left for training when the loop started (or ``None``)."""
        if self.time_limit is None:
            return None
        return max(self.time_limit - (self.train_start - self.start), MIN_TRAINING_SECONDS)

    def fraction_used(self, steps_run: int) -> float:
        """Return the used fraction of the budget at the next step (steps or time, the larger)."""
        fractions = []
        if self.total_steps:
            fractions.append((steps_run + 1) / self.total_steps)
        seconds = self.training_seconds
        if seconds is not None:
            fractions.append((time.perf_counter() - self.train_start) / seconds)
        return max(fractions)

    def total_steps_estimate(self, steps_run: int) -> int | None:
        """Estimate the steps of the whole run (exact with epochs; extrapolated in time)."""
        estimates = [] if self.total_steps is None else [self.total_steps]
        seconds = self.training_seconds
        if seconds is not None and steps_run:
            used = (time.perf_counter() - self.train_start) / seconds
            estimates.append(max(steps_run, round(steps_run / max(used, 1e-6))))
        return min(estimates) if estimates else None

    def time_is_up(
        self, steps_run: int, step_seconds: float, after_step: Callable[[float], float]
    ) -> bool:
        """Whether the time limit leaves no room for another step and what follows it.

        Parameters
        ----------
        steps_run : int
            Steps run so far. Before the first step the answer is always no, so every run
            trains at least once.
        step_seconds : float
            Seconds those steps took (validation excluded).
        after_step : callable
            ``after_step(seconds per step)``: seconds that must remain after the next step
            (the final validation and calibration).
        """
        if self.time_limit is None or steps_run == 0:
            return False
        step = step_seconds / steps_run
        return self.elapsed() + step + after_step(step) >= self.time_limit

    def eta(
        self, steps_run: int, step_seconds: float, validations_left: int, validation_seconds: float
    ) -> float | None:
        """Estimate the seconds left: the smaller of the time-limit and the epoch estimates.

        Parameters
        ----------
        steps_run, step_seconds
            Steps run so far and the seconds they took.
        validations_left : int
            Validations still to come (epochs not yet validated).
        validation_seconds : float
            Seconds of one validation.
        """
        estimates = []
        if self.time_limit is not None:
            estimates.append(max(self.time_limit - self.elapsed(), 0.0))
        if self.total_steps and steps_run:
            per_step = step_seconds / steps_run
            remaining = (self.total_steps - steps_run) * per_step
            estimates.append(remaining + max(validations_left, 0) * validation_seconds)
        return min(estimates) if estimates else None
