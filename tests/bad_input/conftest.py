"""Fixtures shared by the bad-input tests."""

import pytest
import torch


@pytest.fixture
def one_thread(monkeypatch):
    """One CPU thread (the command keeps a thread count set in OMP_NUM_THREADS)."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
