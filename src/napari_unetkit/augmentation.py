"""Random augmentation of training patches: flips, 90-degree rotations, intensity, elastic.

Geometric transforms are applied identically to the image, the target and the loss weights:
the image is interpolated linearly (or cubically), the target by nearest neighbour (so its values
stay in the original set) and the weights linearly (so they stay between their minimum and
maximum); whatever is pulled in from outside the window gets target 0 and weight 0.

The elastic deformation follows Ronneberger et al. (2015): random displacement vectors on a
coarse ``elastic_grid x elastic_grid`` grid spanning the patch, drawn from a Gaussian with
``elastic_std`` pixels standard deviation, are interpolated to a smooth per-pixel field by a cubic
spline. The field is computed once per patch and used for every array. To keep real content at
the patch border, callers cut a window larger than the patch by :meth:`AugmentationSettings.margin`
on each side; the warp reads from that window and returns the central patch.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from napari_unetkit.checks import number_problem, whole_number_problem

__all__ = [
    "AugmentationSettings",
    "adjust_intensity",
    "augment_patch",
    "elastic_field",
    "flip_rotate",
    "warp",
]


def _refuse(message: str | None) -> None:
    if message is not None:
        raise ValueError(message)


def _range(value: Any, name: str, positive: bool) -> tuple[float, float]:
    """Validate a ``(low, high)`` pair of finite numbers with ``low <= high``."""
    try:
        low, high = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a pair (low, high), got {value!r}.") from None
    if not (math.isfinite(low) and math.isfinite(high) and low <= high):
        raise ValueError(f"{name} must be two finite numbers with low <= high, got {value!r}.")
    if positive and low <= 0:
        raise ValueError(f"{name} must be positive, got {value!r}.")
    return low, high


@dataclass(frozen=True)
class AugmentationSettings:
    """Which random augmentations to apply to training patches.

    Parameters
    ----------
    flips : bool
        Random vertical and horizontal flips.
    rotations : bool
        Random rotations by multiples of 90 degrees (only 0 or 180 degrees for non-square
        patches, so the patch keeps its shape).
    intensity : bool
        Random gamma, scale and offset of the (normalised) image; target and weights unchanged.
    elastic : bool
        The paper's smooth elastic deformation.
    elastic_probability : float
        Fraction of patches that are deformed when ``elastic`` is on.
    elastic_grid : int
        Size of the coarse grid of random displacements (paper: 3, for a 3 x 3 grid).
    elastic_std : float
        Standard deviation of the coarse displacements in pixels (paper: 10).
    interpolation_order : int
        Spline order used to warp the image: 1 (linear, fast, default) or 3 (cubic, as in the
        paper, about twice as slow). Targets always use 0 and weights 1.
    intensity_scale : tuple of float
        Range of the multiplicative factor (drawn log-uniformly).
    intensity_offset : float
        Additive offset drawn uniformly from ``[-intensity_offset, intensity_offset]``, in units
        of the normalised image (where the 1st..99.8th percentiles span 0..1).
    gamma : tuple of float
        Range of the gamma exponent (drawn log-uniformly), applied to ``|x|`` keeping the sign,
        so negative normalised values are safe.
    """

    flips: bool = True
    rotations: bool = True
    intensity: bool = True
    elastic: bool = True
    elastic_probability: float = 0.5
    elastic_grid: int = 3
    elastic_std: float = 10.0
    interpolation_order: int = 1
    intensity_scale: tuple[float, float] = (0.8, 1.25)
    intensity_offset: float = 0.1
    gamma: tuple[float, float] = (0.8, 1.25)

    def __post_init__(self) -> None:
        set_field = functools.partial(object.__setattr__, self)
        for name in ("flips", "rotations", "intensity", "elastic"):
            if not isinstance(getattr(self, name), bool | np.bool_):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}.")
            set_field(name, bool(getattr(self, name)))
        _refuse(number_problem(self.elastic_probability, "elastic_probability", 0.0, 1.0))
        set_field("elastic_probability", float(self.elastic_probability))
        _refuse(whole_number_problem(self.elastic_grid, "elastic_grid", 2))
        set_field("elastic_grid", int(self.elastic_grid))
        _refuse(number_problem(self.elastic_std, "elastic_std", 0.0))
        set_field("elastic_std", float(self.elastic_std))
        if self.interpolation_order not in (1, 3):
            raise ValueError(
                f"interpolation_order must be 1 or 3, got {self.interpolation_order!r}."
            )
        set_field("intensity_scale", _range(self.intensity_scale, "intensity_scale", True))
        set_field("gamma", _range(self.gamma, "gamma", True))
        _refuse(number_problem(self.intensity_offset, "intensity_offset", 0.0))
        set_field("intensity_offset", float(self.intensity_offset))

    @classmethod
    def off(cls) -> AugmentationSettings:
        """Return settings that leave every patch unchanged."""
        return cls(flips=False, rotations=False, intensity=False, elastic=False)

    @property
    def enabled(self) -> bool:
        """Whether any augmentation is switched on."""
        return self.flips or self.rotations or self.intensity or self.elastic_active

    @property
    def elastic_active(self) -> bool:
        """Whether elastic deformation can happen at all."""
        return self.elastic and self.elastic_probability > 0 and self.elastic_std > 0

    def margin(self) -> int:
        """Return the extra context (pixels per side) to cut around a patch before warping.

        Four standard deviations of the coarse displacements (0 without elastic deformation):
        the field almost never moves a pixel further, so the warp reads real image content.
        """
        return math.ceil(4.0 * self.elastic_std) if self.elastic_active else 0

    def to_dict(self) -> dict:
        """Return a JSON-serialisable description (tuples become lists)."""
        data = asdict(self)
        for name in ("intensity_scale", "gamma"):
            data[name] = list(data[name])
        return data

    @classmethod
    def from_dict(cls, data: Mapping) -> AugmentationSettings:
        """Parse :meth:`to_dict` output; missing keys take the defaults.

        Raises
        ------
        ValueError
            For unknown keys or invalid values.
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"An augmentation description must be a dict, got {data!r}.")
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"Unknown augmentation settings {sorted(unknown)}.")
        values = dict(data)
        for name in ("intensity_scale", "gamma"):
            if isinstance(values.get(name), list):
                values[name] = tuple(values[name])
        return cls(**values)


# --------------------------------------------------------------------------------------------
# Elastic deformation
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=32)
def _spline_matrix(length: int, grid: int) -> np.ndarray:
    """Matrix ``(length, grid)`` that interpolates ``grid`` knots to ``length`` pixels.

    The knots sit evenly from the first to the last pixel; the interpolant is a cubic spline
    (mirror boundary), so ``matrix @ knots`` is the smooth dense profile.
    """
    positions = np.linspace(0.0, grid - 1.0, length)[np.newaxis]
    matrix = np.empty((length, grid))
    for knot in range(grid):
        unit = np.zeros(grid)
        unit[knot] = 1.0
        matrix[:, knot] = ndi.map_coordinates(unit, positions, order=3, mode="mirror")
    matrix.flags.writeable = False
    return matrix


def elastic_field(
    shape: tuple[int, int], grid: int, std: float, rng: np.random.Generator
) -> np.ndarray:
    """Draw a smooth random displacement field.

    Parameters
    ----------
    shape : tuple of int
        ``(Y, X)`` size of the patch.
    grid : int
        Size of the coarse grid of random displacements (``grid x grid`` knots).
    std : float
        Standard deviation of each knot's displacement, in pixels.
    rng : numpy.random.Generator
        Source of randomness.

    Returns
    -------
    numpy.ndarray
        float32 array ``(2, Y, X)``: the ``(dy, dx)`` displacement of every pixel.
    """
    knots = rng.normal(0.0, std, size=(2, grid, grid))
    rows, cols = _spline_matrix(shape[0], grid), _spline_matrix(shape[1], grid)
    return (rows @ knots @ cols.T).astype(np.float32)


def warp(
    image: np.ndarray,
    target: np.ndarray,
    weights: np.ndarray,
    field: np.ndarray,
    margin: int = 0,
    order: int = 1,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Deform a window with a displacement field, returning the central patch.

    Output pixel ``p`` takes the window's value at ``p + margin + field[:, p]``. The image
    uses spline ``order`` with mirrored borders; the target nearest-neighbour interpolation and
    the weights linear interpolation, both 0 outside the window.

    Parameters
    ----------
    image : numpy.ndarray
        ``(C, Y + 2 margin, X + 2 margin)`` window.
    target : numpy.ndarray
        Integer ``(Y + 2 margin, X + 2 margin)`` class indices.
    weights : numpy.ndarray
        float32 ``(Y + 2 margin, X + 2 margin)`` loss weights.
    field : numpy.ndarray
        ``(2, Y, X)`` displacements, e.g. from :func:`elastic_field`.
    margin : int
        Context on each side of the window around the patch.
    order : int
        Spline order for the image (1 or 3).

    Returns
    -------
    image, target, weights : numpy.ndarray
        The deformed patch: float32 ``(C, Y, X)``, target of the input dtype ``(Y, X)``,
        float32 ``(Y, X)``.
    """
    out_shape = field.shape[1:]
    expected = (out_shape[0] + 2 * margin, out_shape[1] + 2 * margin)
    if target.shape != expected or weights.shape != expected or image.shape[1:] != expected:
        raise ValueError(
            f"A {out_shape} patch with margin {margin} needs {expected} windows; got image "
            f"{image.shape}, target {target.shape}, weights {weights.shape}."
        )
    coords = _sampling_coordinates(field, margin)
    out_image = np.empty((image.shape[0], *out_shape), dtype=np.float32)
    for channel in range(image.shape[0]):
        ndi.map_coordinates(
            image[channel].astype(np.float32, copy=False),
            coords,
            output=out_image[channel],
            order=order,
            mode="mirror",
            prefilter=order > 1,
        )
    # Nearest neighbour on a float32 copy is exact for class indices and faster than int64.
    out_target = ndi.map_coordinates(
        target.astype(np.float32), coords, output=np.float32, order=0, mode="constant", cval=0.0
    )
    out_weights = ndi.map_coordinates(
        weights.astype(np.float32, copy=False),
        coords,
        output=np.float32,
        order=1,
        mode="constant",
        cval=0.0,
        prefilter=False,
    )
    return out_image, out_target.astype(target.dtype), out_weights


def _sampling_coordinates(field: np.ndarray, margin: int) -> np.ndarray:
    """Absolute window coordinates ``(2, Y, X)`` (float32) read by each output pixel."""
    coords = field.astype(np.float32, copy=True)
    coords[0] += np.arange(margin, margin + field.shape[1], dtype=np.float32)[:, np.newaxis]
    coords[1] += np.arange(margin, margin + field.shape[2], dtype=np.float32)[np.newaxis, :]
    return coords


# --------------------------------------------------------------------------------------------
# Flips, rotations, intensity
# --------------------------------------------------------------------------------------------


def flip_rotate(
    arrays: tuple[np.ndarray, ...], flip_y: bool, flip_x: bool, quarter_turns: int
) -> tuple[np.ndarray, ...]:
    """Flip and rotate every array the same way over its last two axes (views, no copies).

    Parameters
    ----------
    arrays : tuple of numpy.ndarray
        Arrays of shape ``(..., Y, X)``.
    flip_y, flip_x : bool
        Reverse the Y / X axis.
    quarter_turns : int
        Number of counter-clockwise 90-degree rotations, applied after the flips.

    Returns
    -------
    tuple of numpy.ndarray
        The transformed arrays, in the same order.
    """
    out = []
    for array in arrays:
        if flip_y:
            array = array[..., ::-1, :]
        if flip_x:
            array = array[..., :, ::-1]
        out.append(np.rot90(array, quarter_turns, axes=(-2, -1)))
    return tuple(out)


def adjust_intensity(
    image: np.ndarray, gamma: np.ndarray, scale: np.ndarray, offset: np.ndarray
) -> np.ndarray:
    """Return ``sign(x) |x|^gamma * scale + offset`` per channel (float32, new array).

    Parameters
    ----------
    image : numpy.ndarray
        ``(C, Y, X)`` normalised image.
    gamma, scale, offset : numpy.ndarray
        One value per channel, shape ``(C,)``.

    Returns
    -------
    numpy.ndarray
        float32 array of the image's shape.
    """
    per_channel = (-1, 1, 1)
    out = np.abs(image, dtype=np.float32)
    np.power(out, np.asarray(gamma, np.float32).reshape(per_channel), out=out)
    np.copysign(out, image, out=out)
    out *= np.asarray(scale, np.float32).reshape(per_channel)
    out += np.asarray(offset, np.float32).reshape(per_channel)
    return out


def _log_uniform(rng: np.random.Generator, bounds: tuple[float, float], size: int) -> np.ndarray:
    return np.exp(rng.uniform(math.log(bounds[0]), math.log(bounds[1]), size))


def _random_intensity(
    image: np.ndarray, settings: AugmentationSettings, rng: np.random.Generator
) -> np.ndarray:
    channels = image.shape[0]
    gamma = _log_uniform(rng, settings.gamma, channels)
    scale = _log_uniform(rng, settings.intensity_scale, channels)
    offset = rng.uniform(-settings.intensity_offset, settings.intensity_offset, channels)
    return adjust_intensity(image, gamma, scale, offset)


def _crop_centre(array: np.ndarray, margin: int) -> np.ndarray:
    if margin == 0:
        return array
    return array[..., margin:-margin, margin:-margin]


def augment_patch(
    image: np.ndarray,
    target: np.ndarray,
    weights: np.ndarray,
    settings: AugmentationSettings,
    rng: np.random.Generator,
    margin: int = 0,
    *,
    allow_elastic: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Randomly augment one training patch cut with ``margin`` pixels of context per side.

    Order: elastic deformation (with probability ``settings.elastic_probability``), flips,
    90-degree rotations, then intensity changes of the image.

    Parameters
    ----------
    image : numpy.ndarray
        ``(C, Y + 2 margin, X + 2 margin)`` float32 window.
    target : numpy.ndarray
        ``(Y + 2 margin, X + 2 margin)`` class indices.
    weights : numpy.ndarray
        ``(Y + 2 margin, X + 2 margin)`` loss weights.
    settings : AugmentationSettings
        Which augmentations to apply.
    rng : numpy.random.Generator
        Source of randomness (the result is deterministic given its state).
    margin : int
        Context around the patch in the windows; use ``settings.margin()`` for elastic
        deformation without empty borders.
    allow_elastic : bool
        Set False to skip the elastic deformation for this patch.

    Returns
    -------
    image, target, weights : numpy.ndarray
        The ``(C, Y, X)``, ``(Y, X)``, ``(Y, X)`` patch (may be views of the inputs when only
        flips and rotations apply).
    """
    patch_shape = (target.shape[0] - 2 * margin, target.shape[1] - 2 * margin)
    deform = (
        allow_elastic and settings.elastic_active and rng.random() < settings.elastic_probability
    )
    if deform:
        field = elastic_field(patch_shape, settings.elastic_grid, settings.elastic_std, rng)
        image, target, weights = warp(
            image, target, weights, field, margin, settings.interpolation_order
        )
    else:
        image, target, weights = (_crop_centre(a, margin) for a in (image, target, weights))
    flip_y, flip_x = (bool(f) for f in rng.random(2) < 0.5) if settings.flips else (False, False)
    turns = 0
    if settings.rotations:
        turns = (
            int(rng.integers(4)) if patch_shape[0] == patch_shape[1] else 2 * int(rng.integers(2))
        )
    image, target, weights = flip_rotate((image, target, weights), flip_y, flip_x, turns)
    if settings.intensity:
        image = _random_intensity(image, settings, rng)
    return image, target, weights
