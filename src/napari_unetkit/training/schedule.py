"""The optimiser and the learning rate over the training budget (warm-up, then cosine)."""

from __future__ import annotations

import math

import torch

from napari_unetkit.training.config import TrainConfig


def learning_rate_at(config: TrainConfig, fraction: float) -> float:
    """Learning rate after ``fraction`` of the training budget has been used.

    Linear warm-up over the first ``config.warmup`` of the budget, then constant or a cosine
    decay from ``config.learning_rate`` to ``config.min_lr_fraction`` times it.

    Parameters
    ----------
    config : TrainConfig
        The training settings.
    fraction : float
        Used fraction of the budget (clipped to ``[0, 1]``).

    Returns
    -------
    float
        The learning rate.
    """
    fraction = min(max(float(fraction), 0.0), 1.0)
    peak = config.learning_rate
    if config.warmup > 0 and fraction < config.warmup:
        return peak * fraction / config.warmup
    if config.schedule == "constant":
        return peak
    decay = (fraction - config.warmup) / max(1.0 - config.warmup, 1e-12)
    floor = config.min_lr_fraction
    return peak * (floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * decay)))


def make_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """Return the optimiser ``config.optimizer`` names over the model's parameters."""
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            model.parameters(),
            lr=config.learning_rate,
            momentum=config.momentum,
            weight_decay=config.weight_decay,
        )
    return torch.optim.AdamW(
        model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )
