"""Train and run U-Nets on napari layers.

The engine (model, weight maps, training, prediction, model files, metrics) lives in plain
modules that import neither napari nor Qt; the napari widgets live in
:mod:`napari_unetkit._napari` and only translate layers to engine calls and back.

Importing the package asks PyTorch (on Linux) to back large CPU tensors with transparent huge
pages, unless the environment already says otherwise (``THP_MEM_ALLOC_ENABLE=0``). PyTorch
reads the setting once, when it is first imported, so it takes effect only where
``napari_unetkit`` is imported before ``torch`` (the ``unetkit`` command and the napari plugin
are). Every fresh feature map of a prediction otherwise costs one page fault per 4 KiB: on a
2-core AMD EPYC Zen 5 huge pages cut the minor page faults of predicting a 1024 x 1024 image
elevenfold and its time 1.5-1.7x (training steps, whose smaller maps the C heap reuses, were
unchanged).
"""

import os as _os

_os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

__version__ = "0.1.0"
