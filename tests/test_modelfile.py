import io as stdio
import json
import os
import pathlib
import pickle
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch

from napari_unetkit import __version__
from napari_unetkit.device import resolve_device
from napari_unetkit.model import UNet, UNetConfig
from napari_unetkit.modelfile import (
    FORMAT,
    ModelFileError,
    describe_model,
    load_model,
    read_description,
    save_model,
)

CONFIG = UNetConfig(depth=2, base_channels=4)


def trained_like(config: UNetConfig = CONFIG) -> UNet:
    """A model whose BatchNorm statistics and weights differ from a fresh one."""
    torch.manual_seed(1)
    model = UNet(config).train()
    with torch.no_grad():
        model(torch.rand(4, config.in_channels, 16, 16) * 3)
    return model.eval()


@pytest.fixture
def saved(tmp_path):
    model = trained_like()
    description = {"mode": "instances", "class_names": ["background", "cell"]}
    path = save_model(tmp_path / "cells.unet", model, description)
    return path, model


def test_round_trip_gives_same_outputs(saved):
    path, model = saved
    loaded, description = load_model(path)
    assert not loaded.training
    assert loaded.config == model.config
    x = torch.rand(2, 1, 19, 23)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    assert description["mode"] == "instances"
    assert description["class_names"] == ["background", "cell"]
    assert description["architecture"] == CONFIG.to_dict()
    assert description["package_version"] == __version__
    assert "T" in description["created"]


@pytest.mark.slow
def test_loading_and_predicting_stay_light(saved):
    """Checking a file builds the network on the meta device, which must not pull in the
    compiler stack (sympy and some 900 modules, 150 MiB): a fresh process loads the model and
    predicts with only what the package itself imports."""
    path, _ = saved
    code = (
        "import sys, numpy as np\n"
        "from napari_unetkit.modelfile import load_model\n"
        "from napari_unetkit.prediction import Predictor\n"
        f"model, description = load_model({str(path)!r})\n"
        "Predictor(model, description).predict(np.zeros((32, 32), np.float32))\n"
        "heavy = sorted(m for m in ('sympy', 'torch._dynamo', 'torch._inductor') "
        "if m in sys.modules)\n"
        "print(heavy)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


@pytest.mark.slow
def test_save_is_atomic_and_names_the_file(tmp_path):
    model = trained_like()
    path = save_model(tmp_path / "model", model, {})
    assert path.name == "model.unet"
    save_model(path, model, {"mode": "semantic"})  # replaces in place
    assert os.listdir(tmp_path) == ["model.unet"]
    assert read_description(path)["mode"] == "semantic"


def test_save_keeps_given_fields_and_overrides_architecture(tmp_path):
    description = {"created": "2020-01-01", "architecture": {"depth": 9}, "history": [1, 2]}
    path = save_model(tmp_path / "m.unet", trained_like(), description)
    info = read_description(path)
    assert info["created"] == "2020-01-01"
    assert info["architecture"] == CONFIG.to_dict()
    assert description["architecture"] == {"depth": 9}  # the caller's dict is not modified


def test_numpy_values_in_description_are_converted(tmp_path):
    description = {
        "metrics": {"best": np.float32(0.5), "epoch": np.int64(3)},
        "shape": np.array([2, 3]),
        "folder": tmp_path,
    }
    info = read_description(save_model(tmp_path / "np.unet", trained_like(), description))
    assert info["metrics"] == {"best": 0.5, "epoch": 3}
    assert info["shape"] == [2, 3]
    assert info["folder"] == str(tmp_path)


def test_save_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="JSON"):
        save_model(tmp_path / "m.unet", trained_like(), {"x": object()})
    with pytest.raises(TypeError, match="UNet"):
        save_model(tmp_path / "m.unet", torch.nn.Linear(2, 2), {})
    assert os.listdir(tmp_path) == []


def test_weights_are_stored_on_cpu(saved):
    path, _ = saved
    payload = torch.load(path, map_location="cpu", weights_only=True)
    assert payload["format"] == FORMAT and payload["format_version"] == 1
    assert all(t.device.type == "cpu" for t in payload["state_dict"].values())
    assert json.loads(payload["description"])["mode"] == "instances"


def test_three_channel_model(tmp_path):
    config = UNetConfig(in_channels=3, n_classes=3, depth=2, base_channels=4, norm="group")
    description = {"mode": "classes", "class_names": ["a", "b", "c"], "normalization": {"low": 1}}
    path = save_model(tmp_path / "rgb.unet", trained_like(config), description)
    model, info = load_model(path, device="auto")
    assert model.config == config
    assert info["class_names"] == ["a", "b", "c"]
    assert info["normalization"] == {"low": 1}
    assert next(model.parameters()).device.type == resolve_device("auto").type


def expect_rejected(path: pathlib.Path, reason: str | None = None) -> ModelFileError:
    for reader in (load_model, read_description):
        with pytest.raises(ModelFileError, match=reason) as info:
            reader(path)
        assert str(path) in str(info.value)
        assert "\n" not in str(info.value)
    return info.value


def test_rejects_empty_file(tmp_path):
    path = tmp_path / "empty.unet"
    path.write_bytes(b"")
    expect_rejected(path, "is empty")


def test_rejects_truncated_file(saved, tmp_path):
    path, _ = saved
    data = path.read_bytes()
    truncated = tmp_path / "half.unet"
    truncated.write_bytes(data[: len(data) // 2])
    expect_rejected(truncated, "not a napari-unetkit model file")


def test_rejects_random_bytes_and_text(tmp_path):
    noise = tmp_path / "noise.unet"
    noise.write_bytes(os.urandom(4096))
    expect_rejected(noise, "not a napari-unetkit model file")
    text = tmp_path / "text.unet"
    text.write_text(json.dumps({"format": FORMAT, "format_version": 1}))
    expect_rejected(text, "not a napari-unetkit model file")


def test_rejects_foreign_zip_and_foreign_torch_file(tmp_path):
    foreign_zip = tmp_path / "archive.unet"
    with zipfile.ZipFile(foreign_zip, "w") as archive:
        archive.writestr("readme.txt", "hello")
    expect_rejected(foreign_zip, "not a napari-unetkit model file")

    other = tmp_path / "other.unet"
    torch.save({"model": UNet(CONFIG).state_dict(), "epoch": 3}, other)
    expect_rejected(other, "no napari-unetkit format marker")

    bare = tmp_path / "bare.unet"
    torch.save(UNet(CONFIG).state_dict(), bare)
    expect_rejected(bare, "no napari-unetkit format marker")


def rewrite(path: pathlib.Path, target: pathlib.Path, change) -> pathlib.Path:
    payload = torch.load(path, map_location="cpu", weights_only=True)
    change(payload)
    torch.save(payload, target)
    return target


def test_rejects_weights_of_another_architecture(saved, tmp_path):
    path, _ = saved

    def swap_architecture(payload):
        description = json.loads(payload["description"])
        description["architecture"]["depth"] = 3
        payload["description"] = json.dumps(description)

    error = expect_rejected(rewrite(path, tmp_path / "deeper.unet", swap_architecture))
    assert "damaged or from an incompatible version" in str(error)
    assert "missing: " in str(error)

    def wrong_shape(payload):
        state = payload["state_dict"]
        state["head.weight"] = torch.zeros(5, 4, 1, 1)

    changed = rewrite(path, tmp_path / "shape.unet", wrong_shape)
    expect_rejected(changed, "do not match its architecture; wrong shape: head.weight")

    def float16_weights(payload):
        state = payload["state_dict"]
        payload["state_dict"] = {k: v.half() for k, v in state.items()}

    # Same names and shapes in another dtype: accepted and converted by load_state_dict.
    model, _ = load_model(rewrite(path, tmp_path / "half.unet", float16_weights))
    assert next(model.parameters()).dtype == torch.float32


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda p: p.update(format_version=2), "newer napari-unetkit"),
        (lambda p: p.update(format_version="1"), "format version"),
        (lambda p: p.update(description="{not json"), "not valid JSON"),
        (lambda p: p.update(description="[1, 2]"), "not a dictionary"),
        (lambda p: p.pop("description"), "description is missing"),
        (lambda p: p.update(description=json.dumps({"mode": "x"})), "architecture is invalid"),
        (
            lambda p: p.update(description=json.dumps({"architecture": {"norm": "magic"}})),
            "architecture is invalid",
        ),
        (lambda p: p.update(state_dict=[1, 2]), "weights are missing"),
        (lambda p: p.update(state_dict={"head.weight": 3}), "weights are missing"),
    ],
)
def test_rejects_invalid_fields(saved, tmp_path, change, reason):
    path, _ = saved
    expect_rejected(rewrite(path, tmp_path / "changed.unet", change), reason)


class _Touch:
    """Unpickling this object would create a file (stands in for arbitrary code)."""

    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def test_malicious_pickle_is_never_executed(tmp_path):
    marker = tmp_path / "pwned"
    # A plain pickle, and a real torch archive carrying the same payload next to our keys.
    raw = tmp_path / "raw.unet"
    raw.write_bytes(pickle.dumps({"format": FORMAT, "payload": _Touch(marker)}, protocol=2))
    archive = tmp_path / "archive.unet"
    buffer = stdio.BytesIO()
    torch.save({"format": FORMAT, "format_version": 1, "evil": _Touch(marker)}, buffer)
    archive.write_bytes(buffer.getvalue())
    for path in (raw, archive):
        error = expect_rejected(path, "could not be read safely")
        assert "never loaded for safety" in str(error)  # refused because of the global
        assert "weights_only" not in str(error)  # no advice to turn the protection off
    assert not marker.exists()
    # The test payload is real: unpickling it without protection does create the marker.
    pickle.loads(raw.read_bytes())
    assert marker.exists()


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model(tmp_path / "missing.unet")
    with pytest.raises(ModelFileError, match=r"\(it is a folder\)"):
        read_description(tmp_path)


def test_describe_model_full_and_partial(saved):
    path, _ = saved
    info = read_description(path)
    info.update(
        epochs_trained=12,
        metrics={
            "best_validation_score": 0.87654,
            "best_validation_metric": "IoU",
            "best_epoch": 9,
        },
        data_shapes=[[3, 64, 64], [1, 128, 96]],
    )
    text = describe_model(info)
    for expected in (
        "Mode: instances",
        "Classes: background, cell",
        "Input channels: 1",
        "depth 2, 4 base channels, batch norm, transpose up-sampling",
        "Trained epochs: 12",
        "Best validation score: 0.8765 (IoU) at epoch 9",
        "Training data: 3x64x64, 1x128x96",
        f"Created: {info['created']}",
    ):
        assert expected in text
    assert describe_model({"history": {"train_loss": [1.0, 0.5, 0.2]}}) == "Trained epochs: 3"
    assert describe_model({}) == "No description available."
    assert "Mode: semantic" in describe_model({"mode": "semantic", "architecture": "garbage"})
