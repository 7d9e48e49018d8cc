"""Tests of the trainer (training.py) and its losses (losses.py), on tiny CPU models."""

import json
import threading

import numpy as np
import pytest
import torch

from napari_unetkit.checks import InvalidInput
from napari_unetkit.data import prepare_training_data
from napari_unetkit.losses import soft_dice_loss, training_loss, weighted_cross_entropy
from napari_unetkit.metrics import match_instances
from napari_unetkit.modelfile import load_model, read_description
from napari_unetkit.postprocess import InstanceSettings
from napari_unetkit.prediction import Predictor
from napari_unetkit.progress import Cancelled
from napari_unetkit.synthetic import sample_pairs, synthetic_nuclei, synthetic_stack
from napari_unetkit.training import TrainConfig, TrainProgress, learning_rate_at, train
from napari_unetkit.weightmap import PRESETS

TINY = {
    "depth": 2,
    "base_channels": 8,
    "patch_size": 64,
    "batch_size": 4,
    "dropout": 0.1,
    "device": "cpu",
    "threads": 1,  # robust on a busy 2-core machine; tiny models gain little from more
}


def tiny(**overrides) -> TrainConfig:
    return TrainConfig(**{**TINY, "epochs": 1, "steps_per_epoch": 3, **overrides})


@pytest.fixture(autouse=True)
def _restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def pairs():
    return sample_pairs(2, (96, 96), seed=3)


@pytest.fixture(scope="module")
def prepared(pairs):
    return prepare_training_data(pairs, mode="instances")


# ------------------------------------------------------------------------------------ losses


def _reference_wce(logits: np.ndarray, target: np.ndarray, weights: np.ndarray) -> float:
    """Weighted cross-entropy by an explicit loop over pixels."""
    n, _, h, w = logits.shape
    total, norm = 0.0, 0.0
    for b in range(n):
        for y in range(h):
            for x in range(w):
                z = logits[b, :, y, x].astype(np.float64)
                log_p = z - np.log(np.sum(np.exp(z - z.max()))) - z.max()
                if weights[b, y, x] > 0:
                    total += weights[b, y, x] * -log_p[target[b, y, x]]
                norm += weights[b, y, x]
    return total / norm


def _loss_inputs(rng, n_classes=3):
    logits = rng.normal(0, 2, (2, n_classes, 5, 7)).astype(np.float32)
    target = rng.integers(0, n_classes, (2, 5, 7))
    weights = rng.uniform(0.5, 10, (2, 5, 7)).astype(np.float32)
    weights[rng.random((2, 5, 7)) < 0.4] = 0.0
    target[weights == 0] = -1  # invalid class ids on ignored pixels must not matter
    return logits, target, weights


def test_weighted_cross_entropy_matches_pixel_loop(rng):
    logits, target, weights = _loss_inputs(rng)
    loss = weighted_cross_entropy(
        torch.from_numpy(logits), torch.from_numpy(target), torch.from_numpy(weights)
    )
    assert loss.item() == pytest.approx(_reference_wce(logits, target, weights), rel=1e-5)


def test_soft_dice_matches_numpy_formula(rng):
    logits, target, weights = _loss_inputs(rng)
    z = logits - logits.max(axis=1, keepdims=True)
    probs = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    annotated = weights > 0
    dices = []
    for k in (1, 2):
        p, t = probs[:, k][annotated], (target == k)[annotated]
        dices.append((2 * np.sum(p * t) + 1) / (np.sum(p) + np.sum(t) + 1))
    got = soft_dice_loss(
        torch.from_numpy(logits), torch.from_numpy(target), torch.from_numpy(weights)
    )
    assert got.item() == pytest.approx(1 - np.mean(dices), rel=1e-5)


@pytest.mark.parametrize("loss", ["wce", "wce+dice"])
def test_ignored_pixels_get_exactly_zero_gradient(rng, loss):
    logits, target, weights = _loss_inputs(rng)
    x = torch.from_numpy(logits).requires_grad_(True)
    training_loss(x, torch.from_numpy(target), torch.from_numpy(weights), loss).backward()
    grad = x.grad.numpy()
    ignored = np.broadcast_to((weights == 0)[:, None], grad.shape)
    assert np.all(grad[ignored] == 0.0)
    assert np.all(np.abs(grad).sum(axis=1)[weights > 0] > 0)


def test_batch_without_weights_gives_zero_loss_not_nan(rng):
    logits, target, weights = _loss_inputs(rng)
    x = torch.from_numpy(logits).requires_grad_(True)
    zero = torch.zeros_like(torch.from_numpy(weights))
    loss = training_loss(x, torch.from_numpy(target), zero, "wce+dice")
    loss.backward()
    assert loss.item() == 0.0
    assert torch.count_nonzero(x.grad) == 0


def test_sparse_normalisation_is_not_diluted(rng):
    logits, target, weights = _loss_inputs(rng)
    target[weights == 0] = 0
    dense = weighted_cross_entropy(*(torch.from_numpy(a) for a in (logits, target, weights)))
    # Adding unannotated pixels (weight 0) around the batch leaves the loss unchanged.
    pad = ((0, 0), (0, 0), (4, 4), (4, 4))
    padded = weighted_cross_entropy(
        torch.from_numpy(np.pad(logits, pad)),
        torch.from_numpy(np.pad(target, pad[1:])),
        torch.from_numpy(np.pad(weights, pad[1:])),
    )
    assert padded.item() == pytest.approx(dense.item(), rel=1e-6)


# ------------------------------------------------------------------------------------ config


def test_config_round_trips_through_json():
    config = TrainConfig(
        mode="classes",
        epochs=None,
        time_limit=30.0,
        loss="wce+dice",
        weightmap=PRESETS["falk2019"],
        optimizer="sgd",
        class_names=["a", "b"],
    )
    restored = TrainConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert restored == config
    assert TrainConfig.from_dict(TrainConfig(weightmap="paper").to_dict()).weightmap == "paper"


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"epochs": 0}, "Nothing to train"),
        ({"epochs": None}, "Nothing to train"),
        ({"time_limit": 0}, "time_limit"),
        ({"epochs": 0, "time_limit": 10}, "epochs must be a whole number >= 1"),
        ({"epochs": 2.5}, "epochs"),
        ({"val_fraction": 1.0}, "val_fraction"),
        ({"val_fraction": -0.1}, "val_fraction"),
        ({"optimizer": "adam"}, "optimizer"),
        ({"weightmap": "nope"}, "weightmap"),
        ({"depth": 0}, "depth"),
    ],
)
def test_config_rejects_invalid_settings(settings, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**settings)


def test_config_reports_every_invalid_setting_by_field():
    with pytest.raises(InvalidInput) as caught:
        TrainConfig(patch_size=0, batch_size=0, learning_rate=-1.0)
    fields = [problem.field for problem in caught.value.problems]
    assert fields == ["patch_size", "batch_size", "learning_rate"]
    assert str(caught.value) == caught.value.problems[0].message


def test_config_from_dict_rejects_unknown_keys():
    with pytest.raises(ValueError, match="Unknown training settings"):
        TrainConfig.from_dict({"epochs": 3, "colour": "red"})


def test_learning_rate_warms_up_then_decays():
    config = TrainConfig(learning_rate=1e-3, warmup=0.1, min_lr_fraction=0.0)
    assert learning_rate_at(config, 0.05) == pytest.approx(5e-4)
    assert learning_rate_at(config, 0.1) == pytest.approx(1e-3)
    assert learning_rate_at(config, 0.55) == pytest.approx(5e-4)
    assert learning_rate_at(config, 1.0) == pytest.approx(0.0, abs=1e-12)
    constant = TrainConfig(schedule="constant", warmup=0.0)
    assert learning_rate_at(constant, 0.9) == constant.learning_rate


# ------------------------------------------------------------------------------------ training


def _f1_on(model, description, image, labels) -> float:
    predictor = Predictor(model, description, device="cpu")
    result = predictor.predict(image)
    return match_instances(labels, result.labels, 0.5).f1


@pytest.mark.slow
def test_training_learns_synthetic_nuclei(tmp_path):
    train_pairs = sample_pairs(3, (128, 128), seed=21)
    image, labels = synthetic_nuclei((128, 128), seed=22)
    config = tiny(depth=3, epochs=10, steps_per_epoch=10, batch_size=8, learning_rate=3e-3)
    untrained = train(train_pairs, tiny(depth=3, steps_per_epoch=1, learning_rate=1e-9))
    result = train(train_pairs, config, validation=[(image, labels)], out=tmp_path / "m.unet")
    before = _f1_on(untrained.model, untrained.description, image, labels)
    after = _f1_on(result.model, result.description, image, labels)
    assert after >= before + 0.3
    best = next(h for h in result.history if h["epoch"] == result.best_epoch)
    assert best["val_iou"] > 0.75
    assert result.best_score == pytest.approx(max(h["val_f1"] for h in result.history))
    assert result.best_score == pytest.approx(after, abs=0.1)  # validation ~ the predictor
    assert result.stopped_by == "epochs" and result.epochs_run == 10
    model, description = load_model(result.model_path)
    assert description["metrics"]["best_epoch"] == result.best_epoch
    assert _f1_on(model, description, image, labels) == pytest.approx(after)


def test_cancel_from_progress_stops_within_one_step(pairs, tmp_path):
    cancel = threading.Event()
    stages = []

    def progress(event: TrainProgress) -> None:
        stages.append(event.stage)
        if event.stage == "training" and event.epoch == 2 and event.step == 2:
            cancel.set()

    config = tiny(epochs=5, steps_per_epoch=4)
    result = train(pairs, config, out=tmp_path / "c.unet", progress=progress, cancel=cancel)
    assert result.stopped_by == "cancel"
    assert result.steps_run == 4 + 2
    assert result.epochs_run == 1 and result.best_epoch == 1
    assert not result.model.training
    model, description = load_model(tmp_path / "c.unet")
    assert description["stopped_by"] == "cancel"
    assert len(description["history"]) == 1
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, result.model.state_dict()[name])
    assert stages[0] == "preparing" and stages[-1] == "done"


def test_cancel_before_first_epoch_saves_current_weights(prepared, tmp_path):
    cancel = threading.Event()

    def progress(event: TrainProgress) -> None:
        if event.stage == "training" and event.step == 1:
            cancel.set()

    result = train(prepared, tiny(), out=tmp_path / "early", progress=progress, cancel=cancel)
    assert result.stopped_by == "cancel" and result.steps_run == 1 and result.history == []
    assert result.model_path == tmp_path / "early.unet"
    assert load_model(result.model_path)[1]["stopped_by"] == "cancel"


def test_cancel_during_preparation_raises(pairs):
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(Cancelled):
        train(pairs, tiny(), cancel=cancel)


@pytest.mark.slow
def test_time_limit_stops_training(prepared):
    events = []
    config = tiny(epochs=None, time_limit=2.0, steps_per_epoch=5)
    result = train(prepared, config, progress=events.append)
    assert result.stopped_by == "time_limit"
    assert 1.0 < result.elapsed < 2.0 + 10.0  # generous: the machine may be busy
    assert result.epochs_run >= 1 and result.steps_run >= 1
    assert all(e.n_epochs is None for e in events)
    assert any(e.eta is not None and e.eta <= 2.0 for e in events if e.stage == "training")


def test_epochs_and_time_limit_whichever_comes_first(prepared):
    result = train(prepared, tiny(epochs=2, time_limit=600.0))
    assert result.stopped_by == "epochs" and result.epochs_run == 2


@pytest.mark.slow
def test_same_seed_gives_identical_losses(prepared):
    config = tiny(epochs=2, steps_per_epoch=3, seed=7)
    first = train(prepared, config)
    second = train(prepared, config)
    losses = [(h["train_loss"], h["val_loss"]) for h in first.history]
    assert losses == [(h["train_loss"], h["val_loss"]) for h in second.history]
    third = train(prepared, tiny(epochs=2, steps_per_epoch=3, seed=8))
    assert [h["train_loss"] for h in third.history] != [h["train_loss"] for h in first.history]


def test_resume_continues_from_the_file(prepared, tmp_path):
    first = train(prepared, tiny(epochs=2), out=tmp_path / "a.unet")
    saved, _ = load_model(first.model_path)
    before = first.model_path.read_bytes()
    cancel = threading.Event()
    cancel.set()  # stop before the first step: nothing trained, so nothing is saved
    with pytest.raises(Cancelled, match="no model was saved"):
        train(prepared, tiny(depth=3), resume=first.model_path, out=first.model_path, cancel=cancel)
    assert first.model_path.read_bytes() == before
    resumed = train(prepared, tiny(epochs=1, depth=3), resume=first.model_path)
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3]
    assert resumed.history[:2] == first.history
    assert resumed.model.config == saved.config  # the file's architecture is kept
    assert any("architecture" in note for note in resumed.description["notes"])


def test_resume_rejects_incompatible_data(prepared, tmp_path):
    first = train(prepared, tiny(), out=tmp_path / "a.unet")
    image, labels = synthetic_nuclei((64, 64), seed=1)
    classes = np.where(labels > 0, 2, 1)
    with pytest.raises(ValueError, match="mode"):
        train([(image, classes)], tiny(mode="classes", val_fraction=0.0), resume=first.model_path)
    rgb = np.stack([image] * 3, axis=-1)
    with pytest.raises(ValueError, match="channel"):
        train([(rgb, labels)], tiny(channel_axis=-1, val_fraction=0.0), resume=first.model_path)


@pytest.mark.slow
def test_slice_wise_training_on_a_stack(tmp_path):
    image, labels = synthetic_stack(n_slices=6, shape=(64, 64), seed=2)
    result = train([(image, labels)], tiny(epochs=2), out=tmp_path / "s.unet")
    data = result.description["data"]
    assert data["n_training_slices"] + data["n_validation_slices"] == data["n_slices"]
    assert data["n_validation_slices"] >= 1
    assert result.description["data_shapes"] == [[6, 64, 64]]
    prediction = Predictor(result.model, result.description, device="cpu").predict(image)
    assert prediction.labels.shape == image.shape


def _scribbles(labels: np.ndarray) -> np.ndarray:
    """A few painted strokes: class 1 on background rows, class 2 through some nuclei."""
    scribbles = np.zeros_like(labels)
    rows = np.arange(labels.shape[0]) % 16 == 3
    background = rows[:, None] & (labels == 0)
    scribbles[background] = 1
    for cell in range(1, labels.max() + 1, 2):
        ys, xs = np.nonzero(labels == cell)
        centre = ys.mean().round().astype(int)
        scribbles[centre, xs[ys == centre]] = 2
    return scribbles


@pytest.mark.slow
def test_classes_mode_learns_from_scribbles():
    image, labels = synthetic_nuclei((128, 128), seed=5)
    scribbles = _scribbles(labels)
    assert np.count_nonzero(scribbles) < 0.15 * scribbles.size
    config = tiny(mode="classes", depth=3, epochs=4, steps_per_epoch=10, learning_rate=3e-3)
    result = train([(image, scribbles)], config)
    assert result.description["class_names"] == ["class 1", "class 2"]
    assert result.best_score is not None and np.isfinite(result.best_score)
    predicted = Predictor(result.model, result.description, device="cpu").predict(image).labels
    assert set(np.unique(predicted)) == {1, 2}
    # The cells (all of them, painted or not) come out mostly as class 2.
    assert np.mean(predicted[labels > 0] == 2) > 0.7
    assert np.mean(predicted[labels == 0] == 1) > 0.7


def test_region_mask_ignores_pixels_outside(pairs):
    regions = [np.zeros(labels.shape, bool) for _, labels in pairs]
    for region in regions:
        region[:, :48] = True
    data = prepare_training_data(pairs, regions=regions)
    weights = np.stack([s.weights for s in data.slices])
    assert np.all(weights[:, :, 48:] == 0) and np.all(weights[:, :, :48] > 0)
    # The trainer's loss gives those pixels exactly zero gradient.
    logits = torch.randn(len(data.slices), 2, 96, 96, requires_grad=True)
    target = torch.from_numpy(np.stack([s.target for s in data.slices]))
    training_loss(logits, target, torch.from_numpy(weights), "wce+dice").backward()
    assert torch.count_nonzero(logits.grad[..., 48:]) == 0
    result = train(pairs, tiny(epochs=2), regions=regions)
    assert result.epochs_run == 2
    assert result.description["data"]["annotated_pixels"] == int(np.count_nonzero(weights))


def test_description_round_trips_through_the_model_file(prepared, tmp_path):
    config = tiny(epochs=2, loss="wce+dice", weightmap="falk2019")
    result = train(prepared, config, out=tmp_path / "d.unet")
    stored = read_description(result.model_path)
    assert stored == result.description
    assert json.loads(json.dumps(stored)) == stored
    assert TrainConfig.from_dict(stored["training"]) == config
    assert stored["mode"] == "instances" and stored["class_names"] == ["background", "cell"]
    assert stored["architecture"]["depth"] == 2 and stored["in_channels"] == 1
    assert [h["epoch"] for h in stored["history"]] == [1, 2]
    assert set(stored["history"][0]) >= {"train_loss", "val_loss", "val_f1", "val_iou", "lr"}
    assert stored["metrics"]["best_epoch"] == result.best_epoch
    assert stored["normalization"] == prepared.normalization.to_dict()
    assert stored["package_version"] and stored["created"]


def test_without_validation_the_last_epoch_is_kept(prepared, tmp_path):
    result = train(prepared, tiny(epochs=2, val_fraction=0.0), out=tmp_path / "n.unet")
    assert result.best_score is None and result.best_epoch == 2
    assert "val_loss" not in result.history[-1]
    assert load_model(result.model_path)[1]["metrics"]["best_epoch"] == 2


def test_all_background_validation_is_not_nan(prepared):
    image = np.full((64, 64), 100, np.uint16)
    empty = np.zeros((64, 64), np.int32)
    result = train(prepared, tiny(epochs=1), validation=[(image, empty)])
    entry = result.history[0]
    assert all(np.isfinite(entry[k]) for k in ("val_loss", "val_f1", "val_iou", "score"))


def test_train_rejects_mismatched_prepared_data(prepared):
    with pytest.raises(ValueError, match="mode"):
        train(prepared, tiny(mode="classes"))


def test_large_validation_slices_are_tiled(prepared, monkeypatch):
    from napari_unetkit.training import validation

    monkeypatch.setattr(validation, "MAX_DIRECT_VALIDATION_PIXELS", 32 * 32)
    image, labels = synthetic_nuclei((80, 80), seed=9)
    result = train(prepared, tiny(epochs=1), validation=[(image, labels)])
    assert 0.0 <= result.history[0]["val_f1"] <= 1.0
    assert np.isfinite(result.history[0]["val_loss"])


def test_cpu_bfloat16_autocast_when_asked(prepared):
    result = train(prepared, tiny(amp=True, amp_dtype="bf16"))
    assert np.isfinite(result.history[0]["train_loss"])
    assert next(result.model.parameters()).dtype == torch.float32


@pytest.mark.parametrize(
    ("amp", "amp_dtype", "native", "expected"),
    [
        (None, None, True, torch.bfloat16),  # default: bfloat16 autocast where it is native
        (None, None, False, None),  # ... and float32 where the CPU would emulate it
        (False, None, True, None),
        (True, None, False, torch.bfloat16),  # asked for: bfloat16 even if emulated
        (True, "bf16", True, torch.bfloat16),
    ],
)
def test_cpu_mixed_precision_defaults_follow_native_bfloat16(
    monkeypatch, amp, amp_dtype, native, expected
):
    from napari_unetkit import training
    from napari_unetkit.speed import precision

    monkeypatch.setattr(precision, "cpu_has_native_bfloat16", lambda: native)
    config = tiny(amp=amp, amp_dtype=amp_dtype)
    assert training.amp_settings(config, torch.device("cpu")) == (expected is not None, expected)


def test_training_runs_channels_last_and_saves_contiguous_weights(prepared, tmp_path):
    result = train(prepared, tiny(), out=tmp_path / "cl.unet")
    conv = next(
        m for m in result.model.modules() if isinstance(m, torch.nn.Conv2d) and m.in_channels > 1
    )
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert not conv.weight.is_contiguous()
    saved = torch.load(tmp_path / "cl.unet", weights_only=True)["state_dict"]
    assert all(tensor.is_contiguous() for tensor in saved.values())


def test_progress_reports_every_step_and_stage(prepared, tmp_path):
    events = []
    torch.set_num_threads(2)
    result = train(prepared, tiny(epochs=2), out=tmp_path / "p.unet", progress=events.append)
    assert torch.get_num_threads() == 2  # the trainer's thread setting does not leak
    steps = [(e.epoch, e.step) for e in events if e.stage == "training" and e.step > 0]
    assert steps[0] == (1, 1) and (2, 3) in steps and len(set(steps)) == result.steps_run == 6
    assert {"preparing", "training", "validating", "saving", "done"} <= {e.stage for e in events}
    assert all(e.n_epochs == 2 and e.total_steps_estimate == 6 for e in events[1:])
    last = events[-1]
    assert last.stage == "done" and last.eta == 0.0 and last.best_score == result.best_score
    assert last.metrics["val_f1"] == result.history[-1]["val_f1"]


@pytest.mark.slow
def test_instance_settings_are_calibrated_on_validation_and_stored(tmp_path):
    train_pairs = sample_pairs(2, (96, 96), seed=31)
    validation = [synthetic_nuclei((96, 96), seed=32)]
    events = []
    result = train(
        train_pairs,
        tiny(epochs=3, steps_per_epoch=4),
        validation=validation,
        out=tmp_path / "c.unet",
        progress=events.append,
    )
    assert "calibrating" in {e.stage for e in events}
    _, description = load_model(result.model_path)
    chosen = InstanceSettings.from_dict(description["instances"])
    calibration = description["calibration"]
    assert calibration["val_f1"] >= calibration["val_f1_defaults"]
    assert calibration["val_f1_defaults"] == pytest.approx(result.best_score)
    truth = validation[0][1]
    assert description["metrics"]["val_objects"] == len(np.unique(truth[truth > 0]))
    assert Predictor(result.model, description).instance_settings == chosen
    # The stored choice is what the predictor applies to the validation image.
    image, labels = validation[0]
    predicted = Predictor(result.model, description).predict(image).labels
    f1 = match_instances(labels, predicted, 0.5).f1
    assert f1 == pytest.approx(calibration["val_f1"], abs=0.05)


def test_classes_models_store_no_instance_settings(tmp_path):
    image = np.zeros((64, 64), np.float32)
    image[:, 32:] = 1.0
    scribbles = np.zeros((64, 64), np.uint8)
    scribbles[5:60, 5:20], scribbles[5:60, 40:60] = 1, 2
    result = train([(image, scribbles)], tiny(mode="classes", val_fraction=0.0))
    assert result.description["instances"] is None
    assert result.description["calibration"] is None


@pytest.mark.slow
def test_a_channel_choice_is_stored_and_repeated_at_prediction(tmp_path):
    image, labels = synthetic_nuclei((96, 96), seed=41)
    rgb = np.stack([image, np.zeros_like(image), np.zeros_like(image)], axis=-1)
    with pytest.warns(UserWarning, match="Channels 1 and 2 hold one constant value"):
        train([(rgb, labels)], tiny(channel_axis=-1, val_fraction=0.0))
    result = train([(rgb, labels)], tiny(channel_axis=-1, channels=[0], val_fraction=0.0))
    assert result.model.config.in_channels == 1
    assert result.description["channels"] == {"used": [0], "of": 3}
    predictor = Predictor(result.model, result.description)
    from_rgb = predictor.predict(rgb, channel_axis=-1, return_probabilities=True)
    grey = Predictor(result.model, {**result.description, "channels": None})
    from_grey = grey.predict(image, return_probabilities=True)
    np.testing.assert_array_equal(from_rgb.probabilities, from_grey.probabilities)
    with pytest.raises(ValueError, match="reads images of 3 channels"):
        predictor.predict(image)
    with pytest.raises(ValueError, match="channels"):
        train(
            [(rgb, labels)],
            tiny(channel_axis=-1, channels=[1, 0], val_fraction=0.0),
            resume=save_path(result, tmp_path),
        )


def save_path(result, tmp_path):
    from napari_unetkit.modelfile import save_model

    return save_model(tmp_path / "choice.unet", result.model, result.description)


def test_first_save_never_replaces_a_file_made_meanwhile_unless_allowed(prepared, tmp_path):
    out = tmp_path / "race.unet"

    def someone_else_writes(event):
        if event.stage == "training" and not out.exists():
            out.write_bytes(b"another process's model")

    with pytest.raises(FileExistsError):
        train(prepared, tiny(epochs=2), out=out, progress=someone_else_writes, overwrite=False)
    assert out.read_bytes() == b"another process's model"
    out.unlink()
    result = train(prepared, tiny(epochs=2), out=out, overwrite=False)  # saves every epoch
    assert result.model_path == out and load_model(out)[1]["epochs_trained"] == 2
    out.write_bytes(b"old")
    train(prepared, tiny(), out=out, progress=someone_else_writes)  # overwrite=True: replaced
    assert load_model(out)[1]["epochs_trained"] == 1
