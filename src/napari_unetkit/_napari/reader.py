"""Open annotation TIFFs as Labels layers: ``*_labels.tif``, ``*_masks.tif``, ``*_mask.tif``.

napari's own reader opens every TIFF as an Image layer, so a mask opened with File > Open or by
drag and drop could not be painted on or chosen as training labels. This reader (an npe2
``readers`` contribution, see ``napari.yaml``) answers only for files named like annotations and
reads them with :func:`napari_unetkit.io.read_image`. It imports neither torch nor the widgets.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from napari_unetkit.io import TIFF_SUFFIXES, read_image

#: File name endings (before ``.tif`` / ``.tiff``) that mark annotations.
LABEL_NAME_ENDINGS = ("_labels", "_masks", "_mask")

LayerData = tuple[np.ndarray, dict, str]


def is_label_file(path: str | Path) -> bool:
    """Whether ``path`` names an annotation TIFF (``cells_masks.tif``; case is ignored)."""
    path = Path(path)
    if path.suffix.lower() not in TIFF_SUFFIXES:
        return False
    return path.stem.lower().endswith(LABEL_NAME_ENDINGS)


def get_reader(path: str | list[str]) -> Callable[[str], list[LayerData]] | None:
    """Return :func:`read_labels` for one annotation TIFF, else ``None`` (napari reads it)."""
    if isinstance(path, (list, tuple)):
        return None
    return read_labels if is_label_file(path) else None


def read_labels(path: str) -> list[LayerData]:
    """Read an annotation TIFF as one layer named after the file.

    Returns
    -------
    list of (data, metadata, layer type)
        A ``"labels"`` layer for whole numbers (yes/no masks become 0/1), or an ``"image"``
        layer if the file holds fractions (those are not labels).

    Raises
    ------
    ValueError
        If the file cannot be decoded (napari shows the message).
    """
    data = read_image(path)
    name = Path(path).stem
    if data.dtype == bool:
        data = data.astype(np.uint8)
    if not np.issubdtype(data.dtype, np.integer):
        return [(data, {"name": name}, "image")]
    return [(data, {"name": name}, "labels")]
