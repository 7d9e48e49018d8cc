"""Train and run U-Nets on napari layers.

The engine (model, weight maps, training, prediction, model files, metrics) lives in plain
modules that import neither napari nor Qt; the napari widgets live in
:mod:`napari_unetkit._napari` and only translate layers to engine calls and back.

Importing the package changes nothing in the process: in particular it leaves PyTorch's
allocator settings alone, because inside napari they would apply to every PyTorch user. The
``unetkit`` command, a process of its own, asks for huge pages
(:func:`napari_unetkit.speed.memory.request_huge_pages`).
"""

__version__ = "0.1.0"
