"""Choosing the numeric precision, and the 16-bit levels of the inference copy."""

import numpy as np
import pytest
import torch

from napari_unetkit.model import UNet, UNetConfig
from napari_unetkit.prediction import Predictor
from napari_unetkit.speed import precision as precision_module
from napari_unetkit.speed.inference import InferenceUNet, inference_copy
from napari_unetkit.speed.precision import (
    level_dtypes,
    reduced_dtype,
    resolve_precision,
)

CPU = torch.device("cpu")
F32, BF16 = torch.float32, torch.bfloat16


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.mark.parametrize("native", [True, False])
def test_auto_uses_mixed_precision_only_on_cpus_with_native_bfloat16(monkeypatch, native):
    monkeypatch.setattr(precision_module, "cpu_has_native_bfloat16", lambda: native)
    assert resolve_precision("auto", CPU) == ("mixed" if native else "float32")
    assert resolve_precision(" AUTO ", CPU) == resolve_precision("auto", CPU)


def test_auto_is_float32_on_apple_mps_and_mixed_on_cuda(monkeypatch):
    monkeypatch.setattr(precision_module, "cpu_has_native_bfloat16", lambda: True)
    assert resolve_precision("auto", torch.device("mps")) == "float32"
    assert resolve_precision("auto", torch.device("cuda", 0)) == "mixed"


@pytest.mark.parametrize("name", ["float32", "mixed", "half"])
def test_explicit_precisions_are_kept_whatever_the_cpu(monkeypatch, name):
    for native in (True, False):
        monkeypatch.setattr(precision_module, "cpu_has_native_bfloat16", lambda n=native: n)
        assert resolve_precision(name, CPU) == name


@pytest.mark.parametrize("bad", ["fp8", "", None, 16, "bfloat16"])
def test_unknown_precisions_are_named(bad):
    with pytest.raises(ValueError, match="The precision must be one of auto, float32, mixed"):
        resolve_precision(bad, CPU)


def test_native_bfloat16_detection_answers_a_bool():
    assert isinstance(precision_module.cpu_has_native_bfloat16(), bool)


def test_cpus_use_bfloat16():
    assert reduced_dtype(CPU) == BF16


def test_level_dtypes_keep_the_three_finest_levels_float32():
    assert level_dtypes(4, "float32", BF16) == [F32] * 5
    assert level_dtypes(4, "mixed", BF16) == [F32, F32, F32, BF16, BF16]
    assert level_dtypes(4, "half", BF16) == [BF16] * 5
    # depth 2: levels 0, 1 and the bottleneck (level 2) are the three finest levels
    assert level_dtypes(2, "mixed", BF16) == [F32, F32, F32]
    assert level_dtypes(3, "mixed", BF16) == [F32, F32, F32, BF16]
    with pytest.raises(ValueError, match="Unresolved precision"):
        level_dtypes(4, "auto", BF16)


def parameter_dtypes(modules) -> set:
    return {p.dtype for p in modules.parameters()}


def test_mixed_copy_stores_each_level_in_its_type_and_leaves_the_model_alone():
    torch.manual_seed(0)
    model = UNet(UNetConfig(depth=4, base_channels=4)).eval()
    net = inference_copy(model, CPU, "mixed")
    assert isinstance(net, InferenceUNet)
    assert net.dtypes == [F32, F32, F32, BF16, BF16]
    for level, dtype in enumerate(net.dtypes[:-1]):
        for modules in (net.encoders, net.skip_convs, net.up_convs, net.decoders):
            assert parameter_dtypes(modules[level]) == {dtype}
    assert parameter_dtypes(net.bottleneck) == {BF16}
    assert parameter_dtypes(net.head) == {F32}
    assert parameter_dtypes(model) == {F32}
    out = net(torch.rand(1, 1, 40, 24).contiguous(memory_format=torch.channels_last))
    assert out.dtype == F32 and out.shape == (1, 2, 40, 24)


def test_half_copy_computes_in_bfloat16_and_is_close_to_float32():
    torch.manual_seed(0)
    model = UNet(UNetConfig(depth=2, base_channels=4)).eval()
    x = torch.rand(1, 1, 32, 32)
    net = inference_copy(model, CPU, "half")
    with torch.inference_mode():
        half = net(x)
        exact = model(x)
    assert parameter_dtypes(net) == {BF16}
    assert half.dtype == BF16
    difference = (half.float() - exact).abs().max().item()
    assert 0 < difference < 0.05 * exact.abs().max().item()


def test_other_modules_stay_float32_whatever_the_precision():
    module = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3, padding=1))
    assert parameter_dtypes(inference_copy(module, CPU, "half")) == {F32}


def test_predictor_reports_its_resolved_precision(monkeypatch):
    monkeypatch.setattr(precision_module, "cpu_has_native_bfloat16", lambda: False)
    model = UNet(UNetConfig(depth=2, base_channels=4))
    predictor = Predictor(model, {"mode": "instances"}, device="cpu")
    assert predictor.precision == "float32"
    assert predictor.precision_description == "float32"
    mixed = Predictor(model, {"mode": "instances"}, device="cpu", precision="mixed")
    assert mixed.precision == "mixed"
    assert "bfloat16" in mixed.precision_description
    probs = mixed.predict_slice(np.random.default_rng(0).random((1, 24, 40), np.float32))
    assert probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=0), 1, atol=1e-5)
