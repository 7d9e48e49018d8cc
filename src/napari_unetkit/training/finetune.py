"""Fine-tuning: a new run that starts from a model's weights (``train(..., init_from=...)``).

Unlike ``resume`` (which continues an interrupted run and extends its history), fine-tuning
starts a new run: fresh optimiser, schedule and history. The base model fixes what the weights
depend on - architecture, mode, class names, channel choice and normalisation - so these
replace the settings of the :class:`~napari_unetkit.training.config.TrainConfig`; the data must
fit them. The new model's description names the base under ``"parent"``.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from napari_unetkit.model import UNet
from napari_unetkit.modelfile import load_model
from napari_unetkit.normalization import NormalizationSettings
from napari_unetkit.training.config import TrainConfig

#: How the description's ``parent`` names a base passed in memory rather than as a file.
IN_MEMORY = "the given model"


def load_base(init_from: Any, device: torch.device) -> tuple[UNet, dict, str]:
    """Load the model to fine-tune: a file, or a copy of a loaded ``(model, description)``.

    Returns
    -------
    model : UNet
        On ``device``; never the caller's object.
    description : dict
        A copy of its description.
    name : str
        The file name, or :data:`IN_MEMORY`.

    Raises
    ------
    ValueError
        If ``init_from`` is neither (``ModelFileError`` for a bad file).
    """
    if isinstance(init_from, (str, Path)):
        model, description = load_model(init_from, device=device)
        return model, description, Path(init_from).name
    if (
        isinstance(init_from, tuple)
        and len(init_from) == 2
        and isinstance(init_from[0], UNet)
        and isinstance(init_from[1], dict)
    ):
        model = copy.deepcopy(init_from[0]).to(device)  # the caller's model is never changed
        return model, copy.deepcopy(init_from[1]), IN_MEMORY
    raise ValueError(
        "init_from must be a model file path or a (model, description) pair as load_model "
        f"returns, got {type(init_from).__name__}."
    )


def fine_tuning_config(config: TrainConfig, model: UNet, description: dict) -> TrainConfig:
    """Return ``config`` with what the base model fixes.

    Architecture, mode, class names, channel choice and normalisation come from the model (the
    data must fit them); the budget and optimiser settings stay.
    """
    arch = model.config
    stored_norm = description.get("normalization")
    names = description.get("class_names")
    return replace(
        config,
        mode=description.get("mode") or config.mode,
        class_names=[str(n) for n in names] if isinstance(names, list) else config.class_names,
        channels=(description.get("channels") or {}).get("used"),
        normalization=NormalizationSettings.from_dict(stored_norm)
        if isinstance(stored_norm, dict)
        else config.normalization,
        depth=arch.depth,
        base_channels=arch.base_channels,
        norm=arch.norm,
        upsampling=arch.upsampling,
        dropout=arch.dropout,
    )


def parent_record(description: dict, name: str) -> dict:
    """Return what a fine-tuned model's description says about the model it started from."""
    metrics = description.get("metrics")
    metrics = metrics if isinstance(metrics, dict) else {}
    training = description.get("training")
    training = training if isinstance(training, dict) else {}
    return {
        "file": name,
        "created": description.get("created"),
        "data_name": training.get("data_name"),
        "best_validation_score": metrics.get("best_validation_score"),
        "epochs_trained": description.get("epochs_trained"),
    }
