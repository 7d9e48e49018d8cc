"""Train and run U-Nets on napari layers.

The engine (model, weight maps, training, prediction, model files, metrics) lives in plain
modules that import neither napari nor Qt; the napari widgets live in
:mod:`napari_unetkit._napari` and only translate layers to engine calls and back.
"""

__version__ = "0.1.0"
