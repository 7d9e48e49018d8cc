"""bioimage.io packages: export, `bioimageio test`, round trip, safe reading of bad packages."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from napari_unetkit import bioimageio as bio
from napari_unetkit import cli, standalone_unet
from napari_unetkit.io import read_image, write_tiff
from napari_unetkit.model import UNet, UNetConfig
from napari_unetkit.modelfile import ModelFileError, load_model, read_description, save_model
from napari_unetkit.normalization import apply_percentiles, image_percentiles
from napari_unetkit.prediction import Predictor
from napari_unetkit.synthetic import synthetic_nuclei

# Exporting and test-running packages takes seconds per test: outside `make test-fast`.
pytestmark = pytest.mark.slow

# bioimageio.core loads TorchScript weights with torch.jit.load, which PyTorch now deprecates.
JIT_LOAD = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")

NORMALIZATION = {"method": "percentile", "low": 2.0, "high": 99.5}
INSTANCES = {
    "method": "watershed",
    "threshold": 0.4,
    "seed_threshold": 0.7,
    "min_size": 5,
    "grow": 1,
}


def _tiny(config: UNetConfig, seed: int = 0) -> UNet:
    """A random network whose batch-norm statistics are not the identity."""
    torch.manual_seed(seed)
    model = UNet(config)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(2, config.in_channels, 32, 32) * 2 + 0.5)
    return model.eval()


@pytest.fixture(scope="module")
def instance_model(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("bio")
    model = _tiny(UNetConfig(depth=2, base_channels=4))
    description = {
        "mode": "instances",
        "class_names": ["cells"],
        "normalization": NORMALIZATION,
        "weightmap": {"w0": 10.0, "sigma": 5.0},
        "instances": INSTANCES,
    }
    return save_model(folder / "cells.unet", model, description)


@pytest.fixture(scope="module")
def instance_package(instance_model) -> Path:
    image, _ = synthetic_nuclei((72, 68), seed=1)
    out = instance_model.with_name("cells.bioimageio.zip")
    return bio.export_package(instance_model, out, test_image=image, authors=["Ada Tester"])


@pytest.fixture(scope="module")
def class_package(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("bio_classes")
    config = UNetConfig(
        in_channels=2, n_classes=3, depth=2, base_channels=4, norm="group", upsampling="bilinear"
    )
    model = _tiny(config, seed=1)
    description = {
        "mode": "classes",
        "class_names": ["nucleus", "cytoplasm", "bright spot"],
        "normalization": NORMALIZATION,
    }
    path = save_model(folder / "classes.unet", model, description)
    rng = np.random.default_rng(0)
    image = np.stack(
        [rng.gamma(2.0, 300.0, (64, 80)), rng.normal(-5.0, 0.01, (64, 80))], axis=-1
    ).astype(np.float32)
    return bio.export_package(path, folder / "classes.zip", test_image=image, channel_axis=-1)


# ------------------------------------------------------------------------- the architecture


@pytest.mark.parametrize(
    "config",
    [
        UNetConfig(depth=2, base_channels=4),
        UNetConfig(in_channels=3, n_classes=4, depth=3, base_channels=3, norm="group"),
        UNetConfig(depth=1, base_channels=5, norm="none", upsampling="bilinear", final_kernel=3),
    ],
)
def test_standalone_unet_equals_model(config):
    model = _tiny(config)
    standalone = standalone_unet.UNet(**config.to_dict(), probabilities=False)
    expected = {k: v.shape for k, v in model.state_dict().items()}
    assert {k: v.shape for k, v in standalone.state_dict().items()} == expected
    standalone.load_state_dict(model.state_dict(), strict=True)
    standalone.eval()
    factor = config.downsampling_factor
    x = torch.randn(2, config.in_channels, 3 * factor, 5 * factor)
    with torch.no_grad():
        logits = model(x)
        assert torch.equal(standalone(x), logits)
        probs = bio.standalone_network(model)(x)
    assert torch.equal(probs, torch.softmax(logits, dim=1))
    with pytest.raises(ValueError, match="multiples of"):
        standalone(torch.randn(1, config.in_channels, factor + 1, factor))


def test_size_rule_follows_depth():
    for depth in (1, 2, 4):
        config = UNetConfig(depth=depth)
        factor = 2**depth
        halo = bio.tile_halo(config)
        assert halo % factor == 0
        assert bio.min_input_size(config) == 2 * halo + factor
    assert bio.min_input_size(UNetConfig(depth=4)) == 208  # 96 px halo on each side


def test_instance_settings_are_those_the_predictor_uses():
    from napari_unetkit.prediction import LEGACY_INSTANCE_SETTINGS

    assert bio.instance_settings({"instances": INSTANCES}) == INSTANCES
    assert bio.instance_settings({}) == LEGACY_INSTANCE_SETTINGS.to_dict()


# ------------------------------------------------------------------------- the package


def _rdf(package: Path) -> dict:
    with zipfile.ZipFile(package) as zf:
        return yaml.safe_load(zf.read("rdf.yaml"))


def test_package_contents(instance_package, instance_model):
    rdf = _rdf(instance_package)
    with zipfile.ZipFile(instance_package) as zf:
        names = set(zf.namelist())
        readme = zf.read("README.md").decode()
        test_input = np.load(io.BytesIO(zf.read("test_input.npy")))
        test_output = np.load(io.BytesIO(zf.read("test_output.npy")))
    expected = {"rdf.yaml", "weights.pt", "weights_torchscript.pt", "weights.onnx", "unet.py"}
    assert expected | {"cover.png", "README.md", "sample_input.tif"} <= names
    assert set(rdf["weights"]) == {"pytorch_state_dict", "torchscript", "onnx"}
    assert test_input.shape == (1, 1, 72, 68) and test_input.dtype == np.float32
    assert test_output.shape == (1, 2, 72, 68) and test_output.dtype == np.float32
    (space_y,) = [a for a in rdf["inputs"][0]["axes"] if a.get("id") == "y"]
    assert space_y["size"] == {"min": 52, "step": 4}
    scale = rdf["inputs"][0]["preprocessing"][-1]
    assert scale["id"] == "scale_range"
    assert scale["kwargs"] == {"axes": ["y", "x"], "min_percentile": 2.0, "max_percentile": 99.5}
    assert rdf["authors"] == [{"name": "Ada Tester"}]
    assert {"doi": bio.U_NET_DOI}.items() <= rdf["cite"][0].items()
    ours = rdf["config"]["napari_unetkit"]
    original = read_description(instance_model)
    assert ours["description"] == original
    assert ours["instances"] == INSTANCES
    assert "## Validation" in readme and "watershed" in readme and "seed_threshold=0.7" in readme
    # The probabilities come from this package's predictor on the raw test image.
    description = dict(original)
    model, _ = load_model(instance_model)
    predictor = Predictor(model, description, device="cpu", precision="float32")
    low, high = image_percentiles(test_input[0], 0, bio._normalization(description))
    expected = predictor.predict_slice(apply_percentiles(test_input[0], low, high))
    np.testing.assert_allclose(test_output[0], expected, rtol=0, atol=1e-6)


def _bioimageio_test(package: Path):
    core = pytest.importorskip("bioimageio.core")
    summary = core.test_model(package, devices=["cpu"])
    failed = [d for d in summary.details if d.status == "failed"]
    assert summary.status == "passed", summary.format()
    assert not failed
    passed = {d.name for d in summary.details if d.status == "passed"}
    for weights in ("pytorch_state_dict", "torchscript", "onnx"):
        assert f"Reproduce test outputs from test inputs ({weights})" in passed
    return summary


@pytest.mark.slow
@JIT_LOAD
def test_instance_package_passes_bioimageio_test(instance_package):
    _bioimageio_test(instance_package)


@pytest.mark.slow
@JIT_LOAD
def test_class_package_passes_bioimageio_test(class_package):
    _bioimageio_test(class_package)


@pytest.mark.slow
@JIT_LOAD
def test_scale_range_reproduces_percentile_normalization(class_package):
    core = pytest.importorskip("bioimageio.core")
    from bioimageio.core.digest_spec import create_sample_for_model

    descr = core.load_model_description(class_package)
    rng = np.random.default_rng(5)
    images = [
        rng.integers(0, 4000, (1, 2, 64, 64)).astype(np.uint16),
        np.stack([rng.gamma(1.5, 10.0, (68, 72)), -rng.random((68, 72)) * 1e4])[None],
    ]
    with core.create_prediction_pipeline(descr, weight_format="torchscript") as pipeline:
        for image in images:
            sample = create_sample_for_model(descr, inputs={"image": image})
            pipeline.apply_preprocessing(sample)
            theirs = sample.members["image"].data.values[0]
            settings = bio._normalization({"normalization": NORMALIZATION})
            low, high = image_percentiles(image[0], channel_axis=0, settings=settings)
            ours = apply_percentiles(image[0], low, high)
            # Same percentiles (linear interpolation, per channel over y, x); the spec's
            # eps = 1e-6 in the denominator is the only difference.
            np.testing.assert_allclose(theirs, ours, rtol=2e-6, atol=1e-6)


@pytest.mark.slow
def test_torchscript_runs_without_this_package(instance_package, tmp_path):
    script = """
import io, sys, zipfile
sys.modules["napari_unetkit"] = None  # this package must not be needed
import numpy as np, torch, yaml
zf = zipfile.ZipFile(sys.argv[1])
rdf = yaml.safe_load(zf.read("rdf.yaml"))
net = torch.jit.load(io.BytesIO(zf.read(rdf["weights"]["torchscript"]["source"])))
x = np.load(io.BytesIO(zf.read(rdf["inputs"][0]["test_tensor"]["source"])))
y = np.load(io.BytesIO(zf.read(rdf["outputs"][0]["test_tensor"]["source"])))
k = rdf["inputs"][0]["preprocessing"][-1]["kwargs"]
low, high = np.percentile(x, [k["min_percentile"], k["max_percentile"]], axis=(2, 3),
                          keepdims=True)
x = ((x - low) / (high - low + 1e-6)).astype(np.float32)
with torch.no_grad():
    out = net(torch.from_numpy(x)).numpy()
try:
    import napari_unetkit
except ImportError:
    pass
else:
    sys.exit(3)
print(float(np.abs(out - y).max()))
"""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [sys.executable, "-I", "-c", script, str(instance_package)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert float(result.stdout.strip().splitlines()[-1]) < 1e-4


# ------------------------------------------------------------------------- loading back


def test_round_trip_is_exact(instance_model, instance_package):
    image, _ = synthetic_nuclei((90, 101), seed=7)
    a = Predictor.from_file(instance_model, device="cpu")
    b = Predictor.from_file(instance_package, device="cpu")
    assert b.description == a.description
    for name, tensor in a.model.state_dict().items():
        assert torch.equal(b.model.state_dict()[name], tensor)
    probs = a.predict(image, output="probabilities").probabilities
    threshold = float(np.median(probs))  # random weights: make sure there are instances
    ra = a.predict(image, threshold=threshold, return_probabilities=True)
    rb = b.predict(image, threshold=threshold, return_probabilities=True)
    assert ra.labels.max() > 1
    assert np.array_equal(ra.labels, rb.labels)
    assert np.array_equal(ra.probabilities, rb.probabilities)
    assert read_description(instance_package) == read_description(instance_model)


def test_export_of_a_package_reproduces_it(instance_package, tmp_path):
    again = bio.export_package(instance_package, tmp_path / "again.zip")
    model_a, description_a = load_model(instance_package)
    model_b, description_b = load_model(again)
    assert description_a == description_b
    for name, tensor in model_a.state_dict().items():
        assert torch.equal(model_b.state_dict()[name], tensor)


def test_cli_export_and_predict(instance_model, tmp_path, capsys):
    image, _ = synthetic_nuclei((64, 64), seed=2)
    image_path = tmp_path / "image.tif"
    write_tiff(image_path, image)
    package = tmp_path / "cells"
    status = cli.main(
        ["export", "--model", str(instance_model), "--out", str(package), "--author", "Bo"]
    )
    assert status == 0
    written = tmp_path / "cells.bioimageio.zip"
    assert written.is_file() and str(written) in capsys.readouterr().out
    assert _rdf(written)["authors"] == [{"name": "Bo"}]
    assert cli.main(["export", "--model", str(instance_model), "--out", str(written)]) == 1
    assert "already exists" in capsys.readouterr().err
    for model, out in ((instance_model, "a.tif"), (written, "b.tif")):
        args = ["predict", "--model", str(model), "--image", str(image_path)]
        assert cli.main([*args, "--out", str(tmp_path / out), "--precision", "float32"]) == 0
    assert np.array_equal(read_image(tmp_path / "a.tif"), read_image(tmp_path / "b.tif"))


def test_export_of_a_network_with_numpy_values_in_its_description(tmp_path):
    model = _tiny(UNetConfig(depth=1, base_channels=2))
    description = {
        "mode": "instances",
        "normalization": NORMALIZATION,
        "metrics": {"best_validation_score": np.float32(0.5), "best_epoch": np.int64(3)},
    }
    path = bio.export_package(model, tmp_path / "np", description=description)
    assert path.name == "np.bioimageio.zip"
    assert read_description(path)["metrics"] == {"best_validation_score": 0.5, "best_epoch": 3}
    assert model.training is False and next(model.parameters()).device.type == "cpu"


def test_export_refuses_what_a_package_cannot_express(tmp_path):
    model = _tiny(UNetConfig(depth=2, base_channels=2))
    description = {"mode": "instances", "normalization": {"low": 0.0, "high": 1.0}}
    with pytest.raises(ValueError, match="above 1"):
        bio.export_package(model, tmp_path / "x.zip", description=description)
    description = {"mode": "instances", "normalization": NORMALIZATION}
    with pytest.raises(ValueError, match="at least 52 x 52"):
        bio.export_package(
            model, tmp_path / "x.zip", description=description, test_image=np.ones((40, 80))
        )
    with pytest.raises(ValueError, match="channel"):
        bio.export_package(
            model,
            tmp_path / "x.zip",
            description=description,
            test_image=np.ones((64, 64, 2)),
            channel_axis=-1,
        )
    assert not list(tmp_path.iterdir())


# ------------------------------------------------------------------------- bad packages


def _entries(package: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(package) as zf:
        return {name: zf.read(name) for name in zf.namelist()}


def _write(path: Path, entries: dict[str, bytes], rdf: dict | None = None) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            if name == "rdf.yaml" and rdf is not None:
                data = yaml.safe_dump(rdf).encode()
            zf.writestr(name, data)
    return path


def _refused(path: Path, match: str) -> None:
    with pytest.raises(ModelFileError, match=match) as info:
        load_model(path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message


def test_missing_file_is_refused(instance_package, tmp_path):
    entries = _entries(instance_package)
    del entries["weights.pt"]
    _refused(_write(tmp_path / "p.zip", entries), "lists 'weights.pt' but the file is missing")
    entries = _entries(instance_package)
    del entries["rdf.yaml"]
    _refused(_write(tmp_path / "q.zip", entries), "no rdf.yaml")


def test_wrong_hash_is_refused(instance_package, tmp_path):
    entries = _entries(instance_package)
    state = torch.load(io.BytesIO(entries["weights.pt"]), weights_only=True)
    state["head.bias"] = state["head.bias"] + 1
    buffer = io.BytesIO()
    torch.save(state, buffer)
    entries["weights.pt"] = buffer.getvalue()
    _refused(_write(tmp_path / "p.zip", entries), "'weights.pt' does not match its SHA-256")
    entries = _entries(instance_package)
    entries["test_input.npy"] = entries["test_input.npy"][:-4] + b"\0\0\0\0"
    _refused(_write(tmp_path / "q.zip", entries), "'test_input.npy' does not match its SHA-256")


@pytest.mark.parametrize("name", ["../evil.txt", "/etc/evil", "a/../../evil", "C:/evil", "a\\b"])
def test_hostile_paths_are_refused(instance_package, tmp_path, name):
    entries = _entries(instance_package)
    entries[name] = b"x"
    _refused(_write(tmp_path / "p.zip", entries), "path|outside")


def test_zip_bomb_and_too_many_entries_are_refused(instance_package, tmp_path):
    entries = _entries(instance_package)
    entries["bomb.bin"] = bytes(8 * 1024**2)
    _refused(_write(tmp_path / "p.zip", entries), "zip bomb")
    entries = _entries(instance_package)
    entries.update({f"f{i}.txt": b"" for i in range(bio.MAX_ENTRIES)})
    _refused(_write(tmp_path / "q.zip", entries), "entries")


def test_oversized_weights_are_refused(instance_package, tmp_path, monkeypatch):
    monkeypatch.setattr(bio, "WEIGHTS_SLACK_BYTES", 0)
    _refused(instance_package, "larger")


def test_pickled_objects_are_never_loaded(instance_package, tmp_path):
    entries = _entries(instance_package)
    buffer = io.BytesIO()
    torch.save({"head.bias": torch.zeros(2), "evil": Path("/")}, buffer)
    entries["weights.pt"] = buffer.getvalue()
    rdf = yaml.safe_load(entries["rdf.yaml"])
    rdf["weights"]["pytorch_state_dict"]["sha256"] = bio._sha256(entries["weights.pt"])
    _refused(_write(tmp_path / "p.zip", entries, rdf), "could not be read safely")


def test_the_package_source_is_never_run(instance_package, tmp_path):
    marker = tmp_path / "ran"
    entries = _entries(instance_package)
    entries["unet.py"] = f"open({str(marker)!r}, 'w').write('x')\n".encode() + entries["unet.py"]
    rdf = yaml.safe_load(entries["rdf.yaml"])
    architecture = rdf["weights"]["pytorch_state_dict"]["architecture"]
    architecture["sha256"] = bio._sha256(entries["unet.py"])
    package = _write(tmp_path / "p.zip", entries, rdf)
    model, description = load_model(package)
    Predictor(model, description, device="cpu").predict(np.ones((16, 16)))
    assert not marker.exists()


def test_foreign_and_future_packages_get_one_sentence(instance_package, tmp_path):
    entries = _entries(instance_package)
    rdf = yaml.safe_load(entries["rdf.yaml"])
    del rdf["config"]["napari_unetkit"]
    _refused(_write(tmp_path / "other.zip", entries, rdf), "cannot run.*not exported by")
    rdf = yaml.safe_load(entries["rdf.yaml"])
    rdf["config"]["napari_unetkit"]["format_version"] = 99
    _refused(_write(tmp_path / "future.zip", entries, rdf), "newer napari-unetkit")
    not_zip = tmp_path / "broken.zip"
    not_zip.write_bytes(b"not a zip")
    _refused(not_zip, "not a zip file")


def test_unet_files_are_not_taken_for_packages(instance_model):
    assert zipfile.is_zipfile(instance_model)  # torch.save archives are zip files too
    assert not bio.is_package(instance_model)
    assert json.dumps(read_description(instance_model))
