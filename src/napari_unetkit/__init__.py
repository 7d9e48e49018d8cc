"""Train and run U-Nets on napari layers.

The engine (model, weight maps, training, prediction, model files, metrics) lives in plain
modules that import neither napari nor Qt; the napari widgets live in
:mod:`napari_unetkit._napari` and only translate layers to engine calls and back.

Importing the package asks PyTorch (on Linux) to back large CPU tensors with transparent huge
pages, unless the environment already says otherwise (``THP_MEM_ALLOC_ENABLE=0``). PyTorch
reads the setting once, when it is first imported, so it takes effect only where
``napari_unetkit`` is imported before ``torch`` (the ``unetkit`` command and the napari plugin
are). Every fresh feature map of a prediction otherwise costs one page fault per 4 KiB
(the measured effect: ``docs/performance.md``).
"""

import os as _os

_os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

__version__ = "0.1.0"
