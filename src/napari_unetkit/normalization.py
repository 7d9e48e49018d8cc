"""Intensity normalisation: per-image, per-channel percentile scaling.

The percentiles are taken over the whole image (all slices of a stack), so that a slice with no
cells is not stretched into noise. For large stacks the percentiles are estimated from a
deterministic subsample of slices and pixels, so training and prediction of the same image give
the same figures. The settings travel in the model file and prediction repeats them exactly.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from napari_unetkit import layout

#: Upper bound on the number of values read to estimate the percentiles of one channel.
MAX_PERCENTILE_SAMPLES = 4_000_000
#: Upper bound on the number of slices read to estimate the percentiles of a stack.
MAX_PERCENTILE_SLICES = 32


@dataclass(frozen=True)
class NormalizationSettings:
    """Percentile scaling: ``low`` percentile maps to 0, ``high`` percentile to 1."""

    low: float = 1.0
    high: float = 99.8

    def __post_init__(self) -> None:
        if not 0.0 <= self.low < self.high <= 100.0:
            raise ValueError(
                f"Normalisation percentiles must satisfy 0 <= low < high <= 100, "
                f"got low={self.low}, high={self.high}."
            )

    def to_dict(self) -> dict:
        """Return a JSON-serialisable description (stored in model files)."""
        return {"method": "percentile", **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict) -> NormalizationSettings:
        """Parse :meth:`to_dict` output, rejecting anything else with a clear message."""
        if not isinstance(data, dict) or data.get("method", "percentile") != "percentile":
            raise ValueError(f"Unsupported normalisation description: {data!r}.")
        try:
            return cls(low=float(data["low"]), high=float(data["high"]))
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"Invalid normalisation description {data!r}: {error}") from None


def check_image_dtype(dtype: np.dtype) -> None:
    """Raise a clear ``ValueError`` for image dtypes the network cannot use.

    Parameters
    ----------
    dtype : numpy.dtype
        The image's dtype.
    """
    dtype = np.dtype(dtype)
    if dtype.kind == "b":
        raise ValueError(
            "The image is boolean (a mask). A U-Net needs an intensity image: pick the "
            "microscopy image, not a mask or labels layer."
        )
    if np.issubdtype(dtype, np.complexfloating):
        raise ValueError("The image has complex values; convert it to real intensities first.")
    if not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)):
        raise ValueError(f"Images of type {dtype} are not supported; use integer or float data.")


def _sample_slices(array, channel_axis: int | None) -> list[np.ndarray]:
    """Read an evenly spaced, deterministic subset of slices (each ``(C, Y, X)``)."""
    indices = layout.slice_indices(array.shape, channel_axis)
    if len(indices) > MAX_PERCENTILE_SLICES:
        picks = np.linspace(0, len(indices) - 1, MAX_PERCENTILE_SLICES).round().astype(int)
        indices = [indices[i] for i in picks]
    height, width = layout.slice_shape(array.shape, channel_axis)
    total = len(indices) * height * width
    step = int(np.ceil(np.sqrt(total / MAX_PERCENTILE_SAMPLES))) if total else 1
    # Strided reads: a lazy (zarr, dask) slice is never held whole, only its subsample.
    every = slice(None, None, step) if step > 1 else slice(None)
    return [layout.get_slice(array, index, channel_axis, every, every) for index in indices]


def image_percentiles(
    array, channel_axis: int | None = None, settings: NormalizationSettings | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Return the per-channel low and high percentiles of a whole image or stack.

    Parameters
    ----------
    array : array-like
        The image, 2D, 2D with channels, or a stack (leading axes are slices).
    channel_axis : int or None
        Channel axis, if any.
    settings : NormalizationSettings, optional
        Which percentiles; defaults to 1 and 99.8.

    Returns
    -------
    low, high : numpy.ndarray
        Arrays of shape ``(C,)`` (float64).

    Raises
    ------
    ValueError
        For boolean or complex images, and images containing NaN or infinite values.
    """
    settings = settings or NormalizationSettings()
    check_image_dtype(array.dtype)
    slices = _sample_slices(array, channel_axis)
    n_channels = slices[0].shape[0]
    low = np.empty(n_channels)
    high = np.empty(n_channels)
    for channel in range(n_channels):
        values = np.concatenate([s[channel].ravel() for s in slices])
        if np.issubdtype(values.dtype, np.floating) and not np.isfinite(values).all():
            raise ValueError(
                "The image contains NaN or infinite values; replace them (e.g. by 0) first."
            )
        low[channel], high[channel] = np.percentile(values, [settings.low, settings.high])
    return low, high


def apply_percentiles(image_cyx: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Scale a ``(C, Y, X)`` slice so that ``low`` maps to 0 and ``high`` to 1 (float32).

    Values outside the percentile range are kept (not clipped), as the network can use them.
    A constant channel (``high == low``) maps to 0.
    """
    scale = np.where(high > low, high - low, 1.0).astype(np.float32)
    out = image_cyx.astype(np.float32, copy=True)
    out -= low.astype(np.float32)[:, None, None]
    out /= scale[:, None, None]
    if not np.isfinite(out).all():
        raise ValueError(
            "The image contains NaN or infinite values; replace them (e.g. by 0) first."
        )
    return out


def percentile_normalize(image_cyx: np.ndarray, low: float = 1.0, high: float = 99.8) -> np.ndarray:
    """Normalise one ``(C, Y, X)`` image with its own percentiles.

    Parameters
    ----------
    image_cyx : numpy.ndarray
        Image with the channel axis first.
    low, high : float
        Percentiles mapped to 0 and 1.

    Returns
    -------
    numpy.ndarray
        float32 array of the same shape.
    """
    settings = NormalizationSettings(low, high)
    lo, hi = image_percentiles(image_cyx, channel_axis=0, settings=settings)
    return apply_percentiles(image_cyx, lo, hi)
