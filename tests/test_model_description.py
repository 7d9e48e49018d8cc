"""The typed model description: the on-disk JSON is unchanged and old files keep loading."""

import json
import typing

import numpy as np
import pytest
import torch

from napari_unetkit.model import UNet, UNetConfig
from napari_unetkit.modelfile import (
    FORMAT,
    FORMAT_VERSION,
    ChannelChoice,
    ModelDescription,
    ModelMetrics,
    TrainingDataSummary,
    load_model,
    read_description,
    save_model,
)
from napari_unetkit.prediction import LEGACY_INSTANCE_SETTINGS, instance_settings_of

CONFIG = UNetConfig(depth=2, base_channels=4)

#: A description as the first released version wrote it: no instance settings, calibration,
#: channel choice or data name yet (the JSON text is kept as it was, keys in its order).
OLD_DESCRIPTION_JSON = json.dumps(
    {
        "mode": "instances",
        "n_classes": 2,
        "class_names": ["background", "cell"],
        "in_channels": 1,
        "channel_axis": None,
        "normalization": {"low": 1.0, "high": 99.8},
        "weightmap": None,
        "training": {"mode": "instances", "depth": 2, "base_channels": 4, "epochs": 1},
        "history": [{"epoch": 1, "train_loss": 0.7, "val_loss": 0.6, "val_f1": 0.5}],
        "epochs_trained": 1,
        "metrics": {"best_validation_score": 0.5, "best_epoch": 1, "val_f1": 0.5},
        "data": {"n_slices": 3, "n_training_slices": 2, "n_validation_slices": 1},
        "data_shapes": [[64, 64]],
        "architecture": CONFIG.to_dict(),
        "package_version": "0.1.0",
        "created": "2026-01-05T10:00:00+00:00",
    }
)


def write_old_file(path) -> UNet:
    """Write a model file byte-for-byte as version 1 of the format is written."""
    torch.manual_seed(0)
    model = UNet(CONFIG).eval()
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "description": OLD_DESCRIPTION_JSON,
        "state_dict": {k: v.detach().clone() for k, v in model.state_dict().items()},
    }
    torch.save(payload, path)
    return model


def declared(typed_dict) -> set[str]:
    return set(typing.get_type_hints(typed_dict))


def test_an_old_file_loads_with_its_description_unchanged(tmp_path):
    path = tmp_path / "old.unet"
    model = write_old_file(path)
    loaded, description = load_model(path)
    assert description == json.loads(OLD_DESCRIPTION_JSON)  # nothing added, nothing dropped
    assert read_description(path) == description
    assert set(description) <= declared(ModelDescription)
    assert instance_settings_of(description) == LEGACY_INSTANCE_SETTINGS
    x = torch.rand(1, 1, 20, 20)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


def test_saving_writes_the_description_as_the_same_json_object(tmp_path):
    description: ModelDescription = json.loads(OLD_DESCRIPTION_JSON)
    description["channels"] = ChannelChoice(used=[0], of=1)
    path = save_model(tmp_path / "new.unet", UNet(CONFIG), description)
    payload = torch.load(path, weights_only=True)
    assert set(payload) == {"format", "format_version", "description", "state_dict"}
    assert json.loads(payload["description"]) == description  # a plain JSON object on disk


@pytest.mark.slow
def test_every_key_training_writes_is_declared(tmp_path):
    from napari_unetkit.training import TrainConfig, train

    rng = np.random.default_rng(0)
    image = rng.normal(100, 10, (48, 48)).astype(np.float32)
    labels = np.zeros((48, 48), np.int32)
    labels[8:20, 8:20], labels[28:40, 26:40] = 1, 2
    image[labels > 0] += 60
    config = TrainConfig(
        depth=2, base_channels=4, patch_size=32, batch_size=2, epochs=1, steps_per_epoch=2,
        augmentation=None, threads=1, device="cpu", val_fraction=0.0,
    )  # fmt: skip
    result = train([(image, labels)], config, out=tmp_path / "m.unet")
    description = read_description(result.model_path)
    assert set(description) <= declared(ModelDescription), set(description) - declared(
        ModelDescription
    )
    assert set(description["metrics"]) <= declared(ModelMetrics)
    assert set(description["data"]) <= declared(TrainingDataSummary)
