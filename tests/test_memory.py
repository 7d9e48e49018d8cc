"""Returning the C heap's free pages to the system."""

import numpy as np
import pytest

from napari_unetkit.memory import _malloc_trim, release_free_memory

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


def test_release_is_harmless_when_nothing_is_free():
    data = np.arange(1000)
    release_free_memory()
    release_free_memory()
    np.testing.assert_array_equal(data, np.arange(1000))
