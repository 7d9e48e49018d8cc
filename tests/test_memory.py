"""Returning the C heap's free pages to the system; huge pages for large tensors."""

import os
import subprocess
import sys

import numpy as np
import pytest

from napari_unetkit.speed.memory import _malloc_trim, release_free_memory

MIB = 2**20


def resident_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * 4096


@pytest.mark.skipif(_malloc_trim() is None, reason="needs glibc's malloc_trim")
def test_free_heap_pages_are_returned():
    # 64 KiB blocks come from the heap (below glibc's mmap threshold); a block allocated after
    # them keeps the heap from shrinking on its own, so their pages stay resident when freed.
    blocks = [np.ones(8192) for _ in range(3200)]  # 200 MiB
    pin = np.ones(8192)
    del blocks
    before = resident_bytes()
    assert release_free_memory()
    after = resident_bytes()
    assert before - after > 100 * MIB
    assert pin.sum() == 8192  # memory in use is untouched


def test_without_malloc_trim_nothing_is_released_and_nothing_fails(monkeypatch):
    import napari_unetkit.speed.memory as memory

    monkeypatch.setattr(memory, "_malloc_trim", lambda: None)
    data = np.arange(1000)
    assert memory.release_free_memory() is False
    np.testing.assert_array_equal(data, np.arange(1000))


#: Prints the setting and the page faults of filling a new 64 MiB tensor, in a fresh process that
#: imports {module} before torch: 16,384 faults with 4 KiB pages, a few hundred with huge pages.
HUGE_PAGE_PROBE = """
import {module}, os, resource, torch
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
tensor = torch.ones(64 * 2**20, dtype=torch.uint8)
after = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
print(os.environ.get("THP_MEM_ALLOC_ENABLE", "unset"), after - before)
"""


def huge_page_mode() -> str | None:
    """The kernel's transparent huge page mode ("always", "madvise", "never"), None if unknown."""
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as handle:
            text = handle.read()
    except OSError:
        return None
    return text.split("[", 1)[1].split("]", 1)[0] if "[" in text else None


def probe_huge_pages(module: str, env_value: str | None) -> tuple[str, int]:
    env = dict(os.environ)
    env.pop("THP_MEM_ALLOC_ENABLE", None)
    if env_value is not None:
        env["THP_MEM_ALLOC_ENABLE"] = env_value
    completed = subprocess.run(
        [sys.executable, "-c", HUGE_PAGE_PROBE.format(module=module)],
        env=env,
        capture_output=True,
        text=True,
    )
    assert completed.returncode == 0, completed.stderr
    setting, faults = completed.stdout.split()
    return setting, int(faults)


@pytest.mark.slow
@pytest.mark.skipif(
    huge_page_mode() not in ("always", "madvise"), reason="transparent huge pages are off here"
)
def test_the_command_gives_large_tensors_huge_pages():
    setting, faults = probe_huge_pages("napari_unetkit.cli", None)
    assert setting == "1"
    assert faults < 8192  # 64 MiB in 4 KiB pages would take 16,384


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PyTorch's THP is Linux-only")
def test_the_plugin_leaves_other_torch_users_alone():
    # What napari does: import the package (and its widgets' engine modules), then torch.
    setting, faults = probe_huge_pages("napari_unetkit, napari_unetkit.prediction", None)
    assert setting == "unset"
    if huge_page_mode() == "madvise":  # huge pages only where asked for: here they are not
        assert faults >= 16384


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PyTorch's THP is Linux-only")
def test_the_users_huge_page_setting_wins():
    setting, faults = probe_huge_pages("napari_unetkit.cli", "0")
    assert setting == "0"
    if huge_page_mode() == "madvise":
        assert faults >= 16384


def test_huge_pages_are_not_requested_once_torch_is_imported(monkeypatch):
    import torch  # noqa: F401

    from napari_unetkit.speed.memory import request_huge_pages

    monkeypatch.delenv("THP_MEM_ALLOC_ENABLE", raising=False)
    assert request_huge_pages() is False
    assert "THP_MEM_ALLOC_ENABLE" not in os.environ
