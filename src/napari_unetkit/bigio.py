"""Lazy image input and chunked OME-Zarr output, for data larger than memory.

Inputs are opened without reading their pixels: a zarr array, an OME-Zarr image (its finest
resolution level), a TIFF through ``tifffile``'s zarr interface (tiles or strips are decoded
only when a region is read) or a ``.npy`` file memory-mapped. Outputs are zarr groups (zarr
format 2, the format OME-NGFF 0.4 readers understand) whose root is an OME-NGFF 0.4 image with
one resolution level ``"0"`` holding the labels; probabilities, when requested, are a second
such image in the subgroup ``"probabilities"``. The NGFF attributes (axes, pixel size) are
written through zarr itself: they are one small JSON object, and the OME-Zarr writer package
would bring an S3 client and an HTTP stack along for it.

``zarr`` (and ``dask`` for dask-backed arrays) are optional dependencies, the ``bigdata``
extra: :func:`require` imports them on first use with a message saying how to install them.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

#: Folder suffix of a zarr store (``.ome.zarr`` ends with it too).
#: Default block side (pixels) for slices larger than a block, rounded up to a multiple of the
#: chunk; it bounds the working memory of one part of a chunked prediction (docs/big-data.md).
DEFAULT_BLOCK = 2048
#: Slices with at most this many pixels are one part, labelled whole (as in memory).
PLANE_PIXELS = DEFAULT_BLOCK * DEFAULT_BLOCK
#: Default output chunk side (pixels) along Y and X.
DEFAULT_CHUNK = 1024
#: Default context (pixels) added to a block for instances: larger than any object.
DEFAULT_MARGIN = 128
ZARR_SUFFIX = ".zarr"
#: The NGFF version of the metadata written.
NGFF_VERSION = "0.4"
#: Axis names NGFF 0.4 knows, with their type.
_AXIS_TYPES = {"t": "time", "c": "channel", "z": "space", "y": "space", "x": "space"}
#: tifffile's axis letters -> NGFF names (S: samples, i.e. RGB channels).
_TIFF_AXES = {"T": "t", "C": "c", "S": "c", "Z": "z", "Y": "y", "X": "x"}


def require(module: str, extra: str = "bigdata") -> ModuleType:
    """Import an optional dependency, or raise a one-sentence ``ImportError`` saying what to do.

    Parameters
    ----------
    module : str
        The module, e.g. ``"zarr"``.
    extra : str
        The package extra that installs it.

    Returns
    -------
    module
        The imported module.
    """
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(
            f"This needs the optional package {module!r}: install it with "
            f"pip install 'napari-unetkit[{extra}]'."
        ) from None


def is_zarr_path(path: str | os.PathLike) -> bool:
    """Return whether ``path`` names a zarr store (``*.zarr`` or ``*.ome.zarr``)."""
    return str(path).rstrip("/\\").lower().endswith(ZARR_SUFFIX)


@dataclass
class LazyImage:
    """An image whose pixels are read only where indexed.

    Attributes
    ----------
    array : array-like
        Supports ``shape``, ``dtype``, ``ndim`` and basic indexing returning NumPy arrays
        (a zarr array, a memory-mapped NumPy array, a dask array).
    axes : str or None
        NGFF axis names of the array's axes (e.g. ``"zyx"``), where the file says.
    scale : tuple of float or None
        Pixel size along each axis, where the file says.
    units : tuple of str or None
        Units of ``scale`` (NGFF unit names, e.g. ``"micrometer"``), where known.
    source : str
        The path it was opened from.
    """

    array: Any
    axes: str | None = None
    scale: tuple[float, ...] | None = None
    units: tuple[str | None, ...] | None = None
    source: str = ""
    _closers: list = field(default_factory=list, repr=False)

    def close(self) -> None:
        """Release open files (a TIFF stays open while its zarr view is in use)."""
        while self._closers:
            self._closers.pop()()

    def labels_metadata(self, channel_axis: int | None) -> dict:
        """Return ``axes``, ``scale`` and ``units_names`` of labels: these without the channels.

        The keywords :func:`napari_unetkit.chunked.predict_to_zarr` takes (``None`` where
        the file does not say).
        """

        def drop(values):
            if values is None:
                return None
            values = list(values)
            if channel_axis is not None:
                del values[channel_axis % len(values)]
            return values

        axes = drop(self.axes)
        return {
            "axes": "".join(axes) if axes else None,
            "scale": drop(self.scale),
            "units_names": drop(self.units),
        }

    def __enter__(self) -> LazyImage:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_image(path: str | os.PathLike) -> LazyImage:
    """Open an image for lazy, region-by-region reading.

    Parameters
    ----------
    path : str or os.PathLike
        A zarr store (``.zarr``: an array, or an OME-Zarr image whose finest level is used), a
        TIFF (first series, full resolution) or a ``.npy`` file.

    Returns
    -------
    LazyImage
        The array and what the file says about its axes and pixel size.

    Raises
    ------
    FileNotFoundError
        If nothing exists at ``path``.
    ValueError
        If the file type is not supported or the store holds no image.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"Cannot read {path}: it does not exist.")
    if is_zarr_path(path):
        return _open_zarr(path)
    suffix = path.suffix.lower()
    if suffix in (".tif", ".tiff"):
        return _open_tiff(path)
    if suffix == ".npy":
        try:
            return LazyImage(np.load(path, mmap_mode="r", allow_pickle=False), source=str(path))
        except (OSError, ValueError) as error:
            raise ValueError(f"Cannot read {path.name} as a NumPy .npy file: {error}") from None
    raise ValueError(
        f"Cannot read {path.name}: use a zarr store (.zarr, .ome.zarr), a TIFF or a .npy file."
    )


def _open_zarr(path: Path) -> LazyImage:
    zarr = require("zarr")
    try:
        node = zarr.open(str(path), mode="r")
    except Exception as error:  # zarr raises several types for a damaged store
        raise ValueError(f"Cannot open {path} as a zarr store: {error}") from None
    if hasattr(node, "shape"):
        return LazyImage(node, source=str(path))
    attrs = dict(node.attrs)
    multiscales = attrs.get("multiscales") or attrs.get("ome", {}).get("multiscales")
    if multiscales:
        image = multiscales[0]
        dataset = image["datasets"][0]
        array = node[dataset["path"]]
        axes = image.get("axes")
        names = "".join(a["name"] if isinstance(a, dict) else a for a in axes) if axes else None
        units = tuple(a.get("unit") for a in axes if isinstance(a, dict)) if axes else None
        scale = None
        for transform in dataset.get("coordinateTransformations", []):
            if transform.get("type") == "scale":
                scale = tuple(float(v) for v in transform["scale"])
        if names is not None and len(names) != array.ndim:
            names, units = None, None
        return LazyImage(array, axes=names, scale=scale, units=units, source=str(path))
    arrays = [name for name, _ in node.arrays()]
    if len(arrays) == 1:
        return LazyImage(node[arrays[0]], source=str(path))
    raise ValueError(
        f"{path} is a zarr group without OME-Zarr image metadata; give the path of one of its "
        f"arrays ({', '.join(arrays) or 'it has none'})."
    )


def _open_tiff(path: Path) -> LazyImage:
    import tifffile

    zarr = require("zarr")
    try:
        tif = tifffile.TiffFile(path)
    except (OSError, ValueError, tifffile.TiffFileError) as error:
        detail = " ".join(str(error).split())
        raise ValueError(f"Cannot read {path.name} as a TIFF: {detail}") from None
    try:
        series = tif.series[0]
        array = zarr.open(series.aszarr(level=0), mode="r")
        axes = "".join(_TIFF_AXES.get(letter, "?") for letter in series.axes)
        scale = _tiff_scale(tif, axes)
    except Exception as error:
        tif.close()
        raise ValueError(f"Cannot read {path.name} as a TIFF: {error}") from None
    valid = "?" not in axes and len(set(axes)) == len(axes)
    return LazyImage(
        array,
        axes=axes if valid else None,
        scale=scale,
        units=_tiff_units(axes, scale),
        source=str(path),
        _closers=[tif.close],
    )


def _tiff_scale(tif, axes: str) -> tuple[float, ...] | None:
    """Pixel size per axis from the resolution tags and ImageJ spacing (None if unknown)."""
    page = tif.pages.first
    tags = page.tags
    x_res, y_res = tags.get("XResolution"), tags.get("YResolution")
    if x_res is None or y_res is None:
        return None
    (xn, xd), (yn, yd) = x_res.value, y_res.value
    if not (xn and yn):
        return None
    size = {"x": xd / xn, "y": yd / yn}
    if tif.is_imagej and tif.imagej_metadata and "spacing" in tif.imagej_metadata:
        size["z"] = float(tif.imagej_metadata["spacing"])
    if size == {"x": 1.0, "y": 1.0}:
        return None
    return tuple(float(size.get(name, 1.0)) for name in axes)


def _tiff_units(axes: str, scale) -> tuple[str | None, ...] | None:
    if scale is None:
        return None
    return tuple("micrometer" if name in "zyx" else None for name in axes)


# ------------------------------------------------------------------------------------ output


def default_axes(ndim: int) -> str:
    """NGFF axis names for a labels array of ``ndim`` axes without metadata (``"zyx"`` ...)."""
    return "tczyx"[-ndim:] if ndim <= 3 else "t" * (ndim - 3) + "zyx"


def ngff_axes(names: str, units: tuple[str | None, ...] | None = None) -> list[dict] | None:
    """NGFF 0.4 ``axes`` for these names, or ``None`` if NGFF 0.4 cannot describe them.

    NGFF 0.4 allows 2 to 5 axes, unique, in the order time, channel, space, with 2 or 3
    spatial axes.
    """
    if not 2 <= len(names) <= 5 or len(set(names)) != len(names):
        return None
    if any(name not in _AXIS_TYPES for name in names):
        return None
    order = [list(_AXIS_TYPES).index(name) for name in names]
    if order != sorted(order) or sum(_AXIS_TYPES[n] == "space" for n in names) < 2:
        return None
    axes = []
    for i, name in enumerate(names):
        axis = {"name": name, "type": _AXIS_TYPES[name]}
        unit = units[i] if units else None
        if unit:
            axis["unit"] = unit
        axes.append(axis)
    return axes


def multiscales_attrs(
    name: str, names: str, scale: tuple[float, ...], units: tuple[str | None, ...] | None
) -> dict:
    """Return the NGFF 0.4 ``multiscales`` attribute of a one-level image (``{}`` if invalid)."""
    axes = ngff_axes(names, units)
    if axes is None:
        return {}
    return {
        "multiscales": [
            {
                "version": NGFF_VERSION,
                "name": name,
                "axes": axes,
                "datasets": [
                    {
                        "path": "0",
                        "coordinateTransformations": [
                            {"type": "scale", "scale": [float(s) for s in scale]}
                        ],
                    }
                ],
            }
        ]
    }


@dataclass(frozen=True)
class OutputSpec:
    """What a chunked output store holds.

    Attributes
    ----------
    labels_shape : tuple of int
        Shape of the labels (the image without its channel axis).
    labels_dtype : numpy.dtype or None
        ``None`` when no labels are written (probabilities only).
    probabilities_shape : tuple of int or None
        Shape of the probabilities, ``None`` when not written.
    chunks : tuple of int
        Chunk shape of the labels (1 along slice axes); probabilities use the same chunks
        (with all classes in one chunk for class models).
    axes : str
        NGFF names of the labels' axes.
    scale : tuple of float
        Pixel size along the labels' axes.
    units : tuple of str or None, or None
        Their units.
    """

    labels_shape: tuple[int, ...]
    labels_dtype: np.dtype | None
    probabilities_shape: tuple[int, ...] | None
    chunks: tuple[int, ...]
    axes: str
    scale: tuple[float, ...]
    units: tuple[str | None, ...] | None = None


def create_output(path: str | os.PathLike, spec: OutputSpec, attrs: dict) -> Any:
    """Create an empty chunked output store (zarr format 2, OME-NGFF 0.4) and return its group.

    Parameters
    ----------
    path : str or os.PathLike
        The store (a folder). Anything there is replaced: the caller checks ``--overwrite``.
    spec : OutputSpec
        Shapes, types, chunks and axes.
    attrs : dict
        Stored under the root attribute ``"unetkit"`` (run settings, for resuming).

    Returns
    -------
    zarr.Group
        The root group: array ``"0"`` (labels) and group ``"probabilities"`` (array ``"0"``).
    """
    zarr = require("zarr")
    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    root_attrs = {"unetkit": attrs}
    if spec.labels_dtype is not None:
        root.create_array(
            "0", shape=spec.labels_shape, chunks=spec.chunks, dtype=spec.labels_dtype, fill_value=0
        )
        root_attrs.update(multiscales_attrs("labels", spec.axes, spec.scale, spec.units))
    if spec.probabilities_shape is not None:
        group = root.create_group("probabilities")
        classes = len(spec.probabilities_shape) > len(spec.labels_shape)
        chunks = ((spec.probabilities_shape[0],) if classes else ()) + spec.chunks
        group.create_array(
            "0", shape=spec.probabilities_shape, chunks=chunks, dtype=np.float32, fill_value=0.0
        )
        names = ("c" if classes else "") + spec.axes
        scale = ((1.0,) if classes else ()) + spec.scale
        units = ((None,) + spec.units if classes else spec.units) if spec.units else None
        group.attrs.update(multiscales_attrs("probabilities", names, scale, units))
    root.attrs.update(root_attrs)
    return root


def open_output(path: str | os.PathLike) -> Any:
    """Open an existing output store for writing (to resume), or return ``None``."""
    zarr = require("zarr")
    try:
        root = zarr.open_group(str(path), mode="r+")
    except Exception:  # not a zarr group (or damaged): treated as "not ours"
        return None
    return root if "unetkit" in root.attrs else None
