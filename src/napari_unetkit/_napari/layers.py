"""Translate napari layers to engine arrays, and engine results to new layers."""

from __future__ import annotations

import numpy as np
from napari.layers import Image, Labels, Layer, Shapes

from napari_unetkit.normalization import check_image_dtype

#: Key under which our result layers carry their provenance in ``layer.metadata``: every layer
#: this plugin adds (prediction, probability, preview, weight map, separated target) has it,
#: with the kind of result as its value. Layers without it were made by the user.
METADATA_KEY = "napari_unetkit"


def image_data(layer: Image):
    """Return the full-resolution data of an Image layer and its channel axis.

    RGB(A) layers carry their channels on the last axis; everything else is treated as
    single-channel (napari splits multichannel files into one layer per channel).
    Multiscale layers give their finest level. The array is not copied (dask stays lazy).
    """
    data = layer.data[0] if layer.multiscale else layer.data
    return data, (-1 if layer.rgb else None)


def image_dtype_problem(layer: Image) -> str | None:
    """Say why an Image layer's pixel type cannot feed a U-Net (``None`` when it can).

    Only the dtype is looked at (no pixel is read), so this is cheap enough to run on every
    change of the widgets' inputs.
    """
    data, _ = image_data(layer)
    try:
        check_image_dtype(data.dtype)
    except ValueError as error:
        return f"{layer.name!r}: {error}"
    return None


def labels_data(layer: Labels | Image):
    """Return the full-resolution data of a Labels layer (or an Image used as labels), uncopied."""
    return layer.data[0] if layer.multiscale else layer.data


def snapshot(data) -> np.ndarray:
    """Return an independent NumPy copy, so that later painting cannot change a running job."""
    return np.array(data, copy=True)


def training_snapshot(data):
    """Return a NumPy copy of in-memory layer data, or lazy data (dask, zarr) as it is.

    Copying a lazily backed layer would read it whole; training reads it patch by patch
    (:mod:`napari_unetkit.lazydata`) instead.
    """
    return snapshot(data) if isinstance(data, np.ndarray) else data


def region_mask(layer: Layer | None, shape: tuple[int, ...]) -> np.ndarray | None:
    """Rasterise an annotated-region layer (Shapes or Labels) to a boolean mask of ``shape``.

    Parameters
    ----------
    layer : Shapes or Labels or None
        Shapes: the union of all shapes; drawn on a 2D plane they apply to every slice.
        Labels: every non-zero pixel.
    shape : tuple of int
        Shape of the labels the mask must match.
    """
    if layer is None:
        return None
    if isinstance(layer, Labels):
        mask = np.asarray(labels_data(layer)) > 0
        if mask.shape != shape:
            raise ValueError(
                f"The region layer {layer.name!r} has shape {mask.shape}, "
                f"but the labels have shape {shape}."
            )
        return mask
    if isinstance(layer, Shapes):
        if layer.nshapes == 0:
            raise ValueError(f"The region layer {layer.name!r} has no shapes: draw a rectangle.")
        plane = shape[-2:]
        masks = layer.to_masks(mask_shape=shape if layer.ndim == len(shape) else plane)
        mask = np.any(masks, axis=0)
        return np.broadcast_to(mask, shape).copy() if mask.shape != shape else mask
    raise ValueError(f"Layer {layer.name!r} cannot be used as an annotated region.")


def placement(layer: Layer) -> dict:
    """Return the keyword arguments that put a result layer exactly over ``layer``."""
    return {"scale": tuple(layer.scale), "translate": tuple(layer.translate)}


def unique_name(viewer, base: str) -> str:
    """Return ``base``, or ``base [2]``, ``base [3]``, ... if that name is taken."""
    names = {layer.name for layer in viewer.layers}
    if base not in names:
        return base
    number = 2
    while f"{base} [{number}]" in names:
        number += 1
    return f"{base} [{number}]"


def made_by_plugin(layer: Layer) -> bool:
    """Whether this plugin added ``layer`` as a result (see :data:`METADATA_KEY`)."""
    return METADATA_KEY in layer.metadata


def integer_image(layer: Layer) -> bool:
    """Whether ``layer`` is a single-channel Image layer of whole numbers (e.g. an opened mask).

    Such a layer can serve as labels: masks opened with File > Open often become Image layers.
    """
    if not isinstance(layer, Image) or layer.rgb:
        return False
    data, _ = image_data(layer)
    return np.issubdtype(data.dtype, np.integer)


def own_layer(viewer, name: str, kind: str) -> Layer | None:
    """Return the layer called ``name`` if this plugin made it as a ``kind`` result."""
    if name in viewer.layers:
        layer = viewer.layers[name]
        if layer.metadata.get(METADATA_KEY) == kind:
            return layer
    return None
