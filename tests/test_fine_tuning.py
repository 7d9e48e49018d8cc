"""Fine-tuning from a model (train(..., init_from=...)), as the correct-and-retrain loop uses it."""

import threading

import numpy as np
import pytest
import torch

from napari_unetkit.modelfile import describe_model, load_model
from napari_unetkit.progress import Cancelled
from napari_unetkit.synthetic import sample_pairs, synthetic_nuclei
from napari_unetkit.training import TrainConfig, train

TINY = {
    "depth": 2,
    "base_channels": 8,
    "patch_size": 64,
    "batch_size": 4,
    "dropout": 0.1,
    "device": "cpu",
    "threads": 1,
}


def tiny(**overrides) -> TrainConfig:
    return TrainConfig(**{**TINY, "epochs": 1, "steps_per_epoch": 2, **overrides})


@pytest.fixture(autouse=True)
def _restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def pairs():
    return sample_pairs(2, (80, 80), seed=5)


@pytest.fixture(scope="module")
def base(pairs, tmp_path_factory):
    path = tmp_path_factory.mktemp("base") / "base.unet"
    train(pairs, tiny(epochs=2, learning_rate=5e-3), out=path)
    return path


def _parameters(model) -> dict:
    return {name: p.detach().cpu().clone() for name, p in model.named_parameters()}


def test_init_from_starts_from_the_base_weights(pairs, base):
    start = _parameters(load_model(base)[0])
    # A learning rate far too small to move anything: the result must still be the base.
    config = tiny(learning_rate=1e-12, weight_decay=0.0, depth=3, base_channels=4)
    tuned = train(pairs, config, init_from=base)
    for name, value in _parameters(tuned.model).items():
        torch.testing.assert_close(value, start[name], atol=1e-7, rtol=0)
    scratch = train(pairs, tiny(learning_rate=1e-12, weight_decay=0.0))
    differs = [not torch.equal(v, start[k]) for k, v in _parameters(scratch.model).items()]
    assert all(differs)  # a fresh network really is something else

    # The base fixes the architecture; the run is new: its own history, epochs from 1.
    assert tuned.model.config == load_model(base)[0].config
    assert [h["epoch"] for h in tuned.history] == [1] and tuned.description["epochs_trained"] == 1
    parent = tuned.description["parent"]
    assert parent["file"] == "base.unet" and parent["epochs_trained"] == 2
    assert parent["created"] == load_model(base)[1]["created"]
    assert "fine-tuned from base.unet" in tuned.description["notes"]
    assert "Fine-tuned from: base.unet" in describe_model(tuned.description)
    assert "parent" not in scratch.description


def test_fine_tuning_learns(pairs, base):
    """Starting from the base, the first training loss is far below a fresh network's."""
    losses = {}
    for name, init in (("tuned", base), ("scratch", None)):
        result = train(pairs, tiny(steps_per_epoch=1, val_fraction=0.0), init_from=init)
        losses[name] = result.history[0]["train_loss"]
    assert losses["tuned"] < 0.8 * losses["scratch"]


def test_init_from_a_loaded_model_leaves_it_unchanged(pairs, base, tmp_path):
    model, description = load_model(base)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    described = dict(description)
    result = train(pairs, tiny(learning_rate=1e-2), init_from=(model, description))
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name])
    assert description == described
    assert result.description["parent"]["file"] == "the given model"
    changed = [not torch.equal(v.cpu(), before[k]) for k, v in result.model.state_dict().items()]
    assert any(changed)


def test_init_from_takes_mode_and_classes_from_the_model(tmp_path):
    image, labels = synthetic_nuclei((64, 64), seed=1)
    classes = np.where(labels > 0, 2, 1)
    base = tmp_path / "classes.unet"
    train(
        [(image, classes)],
        tiny(mode="classes", class_names=["background", "nucleus"], val_fraction=0.0),
        out=base,
    )
    # The default config says "instances"; the base model's classes mode wins.
    tuned = train([(image, classes)], tiny(val_fraction=0.0), init_from=base)
    assert tuned.description["mode"] == "classes"
    assert tuned.description["class_names"] == ["background", "nucleus"]
    with pytest.raises(ValueError, match=r"Cannot fine-tune classes\.unet: 3 class names"):
        train([(image, np.where(labels > 0, 3, 1))], tiny(val_fraction=0.0), init_from=base)


def test_init_from_refuses_data_that_does_not_fit(pairs, base):
    image, labels = pairs[0]
    rgb = np.stack([image] * 3, axis=-1)
    with pytest.raises(ValueError, match=r"Cannot fine-tune base\.unet: it reads 1 channel"):
        train([(rgb, labels)], tiny(channel_axis=-1, val_fraction=0.0), init_from=base)
    with pytest.raises(ValueError, match=r"either resume .* or init_from"):
        train(pairs, tiny(), init_from=base, resume=base)
    with pytest.raises(ValueError, match="init_from must be a model file path"):
        train(pairs, tiny(), init_from=42)


def test_stop_before_the_first_step_keeps_the_previous_version(pairs, base, tmp_path):
    out = tmp_path / "v002.unet"
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(Cancelled, match="no model was saved"):
        train(pairs, tiny(), init_from=base, out=out, cancel=cancel)
    assert not out.exists()
