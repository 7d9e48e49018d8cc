"""Fixtures shared by the whole suite."""

import numpy as np
import pytest
import torch


@pytest.fixture(autouse=True)
def _isolated_widget_settings(tmp_path, monkeypatch):
    """Keep the widgets' remembered settings out of the user's real config folder."""
    monkeypatch.setenv("NAPARI_UNETKIT_CONFIG_DIR", str(tmp_path / "unetkit-config"))


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


@pytest.fixture(scope="module")
def single_thread():
    """One torch thread for a module of tiny tensors (no oversubscription stalls when shared)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
