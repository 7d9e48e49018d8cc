import contextlib

import pytest
import torch

from napari_unetkit import device as dev


@pytest.fixture
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def cpu_only(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(dev, "_mps_available", lambda: False)


@pytest.fixture
def two_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(dev, "_mps_available", lambda: False)


def test_cpu_always_available():
    assert dev.available_devices()[-1] == "cpu"
    assert dev.resolve_device("cpu") == torch.device("cpu")
    assert dev.resolve_device(" CPU ") == torch.device("cpu")
    assert dev.resolve_device(torch.device("cpu")) == torch.device("cpu")


def test_auto_on_cpu_machine(cpu_only):
    assert dev.available_devices() == ["cpu"]
    assert dev.resolve_device() == torch.device("cpu")
    assert dev.resolve_device(None) == torch.device("cpu")


def test_auto_prefers_cuda_then_mps(monkeypatch, two_gpus):
    assert dev.available_devices() == ["cuda:0", "cuda:1", "cpu"]
    assert dev.resolve_device("auto") == torch.device("cuda", 0)
    assert dev.resolve_device("cuda") == torch.device("cuda", 0)
    assert dev.resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(ValueError, match=r"2 CUDA device\(s\).*cuda:0, cuda:1, cpu"):
        dev.resolve_device("cuda:2")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(dev, "_mps_available", lambda: True)
    assert dev.available_devices() == ["mps", "cpu"]
    assert dev.resolve_device("auto") == torch.device("mps")


def test_unavailable_or_unknown_devices_are_explained(cpu_only):
    with pytest.raises(ValueError, match=r"CUDA was requested but is not available.*: cpu"):
        dev.resolve_device("cuda")
    with pytest.raises(ValueError, match="Apple MPS was requested but is not available"):
        dev.resolve_device("mps")
    with pytest.raises(ValueError, match="Unknown device 'tpu0'"):
        dev.resolve_device("tpu0")
    with pytest.raises(ValueError, match="not supported"):
        dev.resolve_device("meta")
    with pytest.raises(TypeError):
        dev.resolve_device(3)


def test_describe_cpu(restore_threads):
    torch.set_num_threads(1)
    assert dev.describe_device("cpu") == "CPU (1 thread)"
    torch.set_num_threads(2)
    assert dev.describe_device(torch.device("cpu")) == "CPU (2 threads)"


def test_configure_threads(monkeypatch, restore_threads):
    for var in dev.THREAD_ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(dev, "usable_cpu_count", lambda: 1)
    assert dev.configure_threads() == 1
    assert torch.get_num_threads() == 1
    assert dev.configure_threads(2) == 2
    # A thread count chosen by the user in the environment is respected.
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert dev.configure_threads() == 2
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="must be a whole number >= 1"):
            dev.configure_threads(bad)


def test_usable_cpu_count_is_positive():
    assert dev.usable_cpu_count() >= 1


def test_autocast_on_cpu_only_when_asked(cpu_only):
    assert dev.autocast_dtype("cpu", enabled=True) is None
    assert isinstance(dev.autocast_context("cpu", enabled=True), contextlib.nullcontext)
    assert dev.autocast_dtype("cpu", enabled=False, dtype="bf16") is None
    assert dev.autocast_dtype("cpu", enabled=True, dtype="bf16") is torch.bfloat16
    layer = torch.nn.Linear(4, 4)
    with dev.autocast_context("cpu", enabled=True, dtype="bf16"):
        assert layer(torch.rand(2, 4)).dtype == torch.bfloat16
    with dev.autocast_context("cpu", enabled=True):
        assert layer(torch.rand(2, 4)).dtype == torch.float32
    with pytest.raises(ValueError, match="'bf16' or 'fp16'"):
        dev.autocast_dtype("cpu", dtype="int8")


def test_autocast_dtype_on_cuda(monkeypatch, two_gpus):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    assert dev.autocast_dtype("cuda") is torch.bfloat16
    assert dev.autocast_dtype("cuda", dtype="fp16") is torch.float16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: False)
    assert dev.autocast_dtype("cuda:1") is torch.float16
    assert dev.autocast_dtype("cuda", enabled=False) is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_real_cuda_device():
    assert dev.resolve_device("auto").type == "cuda"
    assert dev.describe_device("cuda").startswith("CUDA: ")
    with dev.autocast_context("cuda", enabled=True):
        out = torch.nn.Linear(4, 4).cuda()(torch.rand(2, 4, device="cuda"))
    assert out.dtype in (torch.bfloat16, torch.float16)
