"""Fixtures shared by the whole suite."""

import numpy as np
import pytest


@pytest.fixture(autouse=True)
def _isolated_widget_settings(tmp_path, monkeypatch):
    """Keep the widgets' remembered settings out of the user's real config folder."""
    monkeypatch.setenv("NAPARI_UNETKIT_CONFIG_DIR", str(tmp_path / "unetkit-config"))


@pytest.fixture
def rng():
    return np.random.default_rng(12345)
