"""Prepare torch for training inside napari: no Triton next to OpenGL's LLVM, early imports.

Creating a torch optimiser imports ``torch._dynamo``, which imports Triton when it is installed
(the default Linux torch wheels ship it). Triton's library carries its own LLVM; when the
system's ``libLLVM`` is already in the process, which is the case in napari on Mesa OpenGL
drivers (llvmpipe, Xvfb, most Intel and AMD graphics), loading it crashes the whole process
with a segmentation fault. napari-unetkit never compiles with Triton, so inside napari it is
refused (``import triton`` raises ``ImportError``, which torch handles) whenever a system LLVM
is loaded and Triton is not imported yet.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import logging
import sys
from pathlib import Path

logger = logging.getLogger(__name__)

_MESSAGE = (
    "Triton is not loaded inside napari: it crashes next to the OpenGL driver's LLVM "
    "(napari-unetkit does not need it)."
)


class _RefuseLoader(importlib.abc.Loader):
    def create_module(self, spec):
        raise ImportError(_MESSAGE)

    def exec_module(self, module):
        raise ImportError(_MESSAGE)


class TritonBlocker(importlib.abc.MetaPathFinder):
    """A finder that answers for ``triton`` with a loader that raises ``ImportError``.

    ``importlib.util.find_spec("triton")`` still returns a spec (torch calls it while starting
    CUDA), but importing the package fails cleanly instead of loading its library.
    """

    def find_spec(self, fullname, path=None, target=None):
        if fullname == "triton" or fullname.startswith("triton."):
            return importlib.machinery.ModuleSpec(fullname, _RefuseLoader())
        return None


def system_llvm_loaded() -> bool:
    """Return whether a shared ``libLLVM`` is mapped into this process (Linux only)."""
    try:
        maps = Path("/proc/self/maps").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    return "libLLVM" in maps


def protect_from_triton_crash() -> bool:
    """Refuse Triton imports if loading Triton now would crash the process.

    Returns
    -------
    bool
        Whether Triton is refused in this process.
    """
    if any(isinstance(finder, TritonBlocker) for finder in sys.meta_path):
        return True
    if "triton" in sys.modules or not system_llvm_loaded():
        return False
    sys.meta_path.insert(0, TritonBlocker())
    logger.info(_MESSAGE)
    return True


def prepare_torch_for_napari() -> None:
    """Make training safe and smooth inside napari; call it once from the GUI thread.

    Refuses Triton where it would crash (:func:`protect_from_triton_crash`), then imports
    ``torch._dynamo``, which torch otherwise imports when the first optimiser is created: in
    the training thread, where this second-long import holds the interpreter lock for hundreds
    of milliseconds at a time and freezes the viewer.
    """
    protect_from_triton_crash()
    import torch._dynamo  # noqa: F401
