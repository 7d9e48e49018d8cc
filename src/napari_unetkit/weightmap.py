"""Separated training targets and the U-Net boundary weight map.

The weight map of Ronneberger, Fischer & Brox (2015, arXiv:1505.04597, Eq. 2) is

    w(x) = w_c(x) + w0 * exp(-(d1(x) + d2(x))^2 / (2 sigma^2))

where ``w_c`` balances the class frequencies and ``d1`` / ``d2`` are the Euclidean distances from
``x`` to the nearest pixel of the nearest / second-nearest instance. Touching instances are first
cut apart by a thin background ridge, so that the network learns to predict the gap between them;
the border term then gives the ridge (and narrow gaps between cells) a large weight.

Everything here works on plain NumPy arrays: 2D instance labels, or stacks whose last two axes
are ``(Y, X)`` (each slice is an independent image). See ``docs/weightmap.md`` for the definition,
the presets, the separation rule and the speed algorithm.

Speed: the border term is below ``tol`` once ``d1 + d2`` exceeds
``R = sigma * sqrt(2 ln(w0 / tol))``, so each instance's distance transform is only computed
inside its bounding box grown by ``R``, while a running (nearest, second-nearest) pair of
distances is kept per pixel. The result is exact wherever a term is at least ``tol``.
"""

from __future__ import annotations

import functools
import inspect
import math
import os
import warnings
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, fields, replace
from itertools import pairwise
from typing import Any, TypeVar

import numpy as np
from scipy import ndimage as ndi

from napari_unetkit.checks import (
    choice_problem,
    labels_dtype_problem,
    negative_labels_problem,
    number_problem,
    weightmap_problems,
)

__all__ = [
    "CLASS_BALANCES",
    "DEFAULT_PRESET",
    "PRESETS",
    "WeightMapSettings",
    "boundary_weight_map",
    "class_weights_from_counts",
    "instance_distances",
    "separate_instances",
    "settings_from",
    "weights_and_target",
]

#: Where the border term is added: only on background pixels of the target, or everywhere.
BORDER_ON = ("background", "all")
#: Named class-balance schemes (an explicit ``(w_background, w_foreground)`` pair also works).
CLASS_BALANCES = ("none", "balanced", "bounded", "falk")
#: ``class_balance="bounded"``: largest ratio between the two classes' weights. Beyond it the
#: class term outweighs the border term on sparse images (cells on a few per cent of the
#: pixels), which is what separates touching cells.
MAX_CLASS_WEIGHT_RATIO = 3.0

_Func = TypeVar("_Func", bound=Callable[..., Any])


# --------------------------------------------------------------------------------------------
# Settings and presets
# --------------------------------------------------------------------------------------------


def _term_radius(amplitude: float, sigma: float, tol: float) -> float:
    """Distance beyond which ``amplitude * exp(-d^2 / (2 sigma^2))`` is below ``tol``."""
    if tol == 0.0:
        return math.inf
    if amplitude <= tol:
        return 0.0
    return sigma * math.sqrt(2.0 * math.log(amplitude / tol))


def _non_negative(value: Any, name: str) -> float:
    message = number_problem(value, name, 0.0)
    if message is not None:
        raise ValueError(message)
    return float(value)


def _positive(value: Any, name: str) -> float:
    message = number_problem(value, name, 0.0, open_low=True)
    if message is not None:
        raise ValueError(message)
    return float(value)


def _boolean(value: Any, name: str) -> bool:
    if not isinstance(value, bool | np.bool_):
        raise ValueError(f"{name} must be True or False, got {value!r}.")
    return bool(value)


def _parse_class_balance(value: Any) -> str | tuple[float, float]:
    """Validate a class-balance choice; explicit weights become ``(w_bg, w_fg)`` floats."""
    if isinstance(value, str):
        if value not in CLASS_BALANCES:
            raise ValueError(
                f"class_balance must be one of {CLASS_BALANCES} or a pair "
                f"(w_background, w_foreground), got {value!r}."
            )
        return value
    if isinstance(value, Mapping):
        keys = set(value)
        if keys == {"background", "foreground"}:
            value = (value["background"], value["foreground"])
        elif keys == {0, 1}:
            value = (value[0], value[1])
        else:
            raise ValueError(
                "Explicit class weights need the keys 'background' and 'foreground' "
                f"(or 0 and 1), got {list(value)}."
            )
    try:
        pair = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"Invalid class_balance {value!r}.") from None
    if len(pair) != 2 or not all(math.isfinite(v) and v >= 0 for v in pair):
        raise ValueError(
            f"Explicit class weights must be two finite numbers >= 0 (background, foreground), "
            f"got {value!r}."
        )
    return pair


def _parse_ignore_label(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool | np.bool_) or not isinstance(value, int | np.integer):
        raise ValueError(f"An ignore label must be a positive integer, got {value!r}.")
    if value < 1:
        raise ValueError(
            f"An ignore label must be a positive integer (0 is the background), got {value}."
        )
    return int(value)


def _parse_spacing(value: Any) -> tuple[float, float] | None:
    if value is None:
        return None
    try:
        pair = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"spacing must be a pair (dy, dx), got {value!r}.") from None
    if len(pair) != 2 or not all(math.isfinite(v) and v > 0 for v in pair):
        raise ValueError(f"spacing must be two positive numbers (dy, dx), got {value!r}.")
    return pair


@dataclass(frozen=True)
class WeightMapSettings:
    """Every parameter that determines a weight map (JSON round-trip with ``to_dict``).

    Parameters
    ----------
    w0 : float
        Amplitude of the border term (paper: 10).
    sigma : float
        Width of the border term, in pixels, or in the units of ``spacing`` (paper: 5).
    class_balance : str or tuple of float
        ``"none"`` (``w_c = 1``), ``"balanced"`` (``w_c(k) = N / (K N_k)`` over the ``K``
        classes present in the separated target), ``"bounded"`` (as ``"balanced"``, but the
        ratio of the two weights is limited to :data:`MAX_CLASS_WEIGHT_RATIO`, the mean weight
        staying 1), ``"falk"`` (foreground 1, background
        ``r + (1 - r) exp(-d1^2 / (2 s^2))`` with ``r = background_ratio``,
        ``s = background_sigma``), or explicit weights ``(w_background, w_foreground)``; a
        mapping with keys ``"background"`` / ``"foreground"`` (or ``0`` / ``1``) is accepted and
        stored as such a pair.
    separate : bool
        Cut a background ridge between touching instances (see :func:`separate_instances`).
    border_on : {"background", "all"}
        Add the border term only where the separated target is background, or everywhere.
    ignore : int or None
        A label value whose pixels get weight 0 and are not an instance. (A boolean mask is
        per-image data: pass it to the functions directly.)
    spacing : tuple of float or None
        Pixel size ``(dy, dx)``; distances, ``sigma`` and ``background_sigma`` are then physical.
    tol : float
        Absolute accuracy of each weight term: distances are only computed where a term can
        reach ``tol``; elsewhere the term is 0 (its true value is below ``tol``). ``0`` means
        exact everywhere (slow: one full-image distance transform per instance).
    background_ratio : float
        ``class_balance="falk"`` only: background weight far from cells (Falk et al.: 0.1).
    background_sigma : float
        ``class_balance="falk"`` only: decay length of the background weight (Falk et al.: 10).
    """

    w0: float = 10.0
    sigma: float = 5.0
    class_balance: str | tuple[float, float] = "balanced"
    separate: bool = True
    border_on: str = "background"
    ignore: int | None = None
    spacing: tuple[float, float] | None = None
    tol: float = 1e-6
    background_ratio: float = 0.1
    background_sigma: float = 10.0

    def __post_init__(self) -> None:
        set_field = functools.partial(object.__setattr__, self)
        set_field("w0", _non_negative(self.w0, "w0"))
        set_field("sigma", _positive(self.sigma, "sigma"))
        set_field("class_balance", _parse_class_balance(self.class_balance))
        set_field("separate", _boolean(self.separate, "separate"))
        message = choice_problem(self.border_on, "border_on", BORDER_ON)
        if message is not None:
            raise ValueError(message)
        set_field("ignore", _parse_ignore_label(self.ignore))
        set_field("spacing", _parse_spacing(self.spacing))
        set_field("tol", _non_negative(self.tol, "tol"))
        message = number_problem(self.background_ratio, "background_ratio", 0.0, 1.0)
        if message is not None:
            raise ValueError(message)
        set_field("background_ratio", float(self.background_ratio))
        set_field("background_sigma", _positive(self.background_sigma, "background_sigma"))

    def to_dict(self) -> dict:
        """Return a JSON-serialisable description (tuples become lists)."""
        data = asdict(self)
        for name in ("class_balance", "spacing"):
            if isinstance(data[name], tuple):
                data[name] = list(data[name])
        return data

    @classmethod
    def from_dict(cls, data: Mapping) -> WeightMapSettings:
        """Parse :meth:`to_dict` output; missing keys take the defaults.

        Raises
        ------
        ValueError
            For unknown keys or invalid values.
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"A weight-map description must be a dict, got {data!r}.")
        unknown = set(data) - set(_SETTING_NAMES)
        if unknown:
            raise ValueError(f"Unknown weight-map settings {sorted(unknown)} in {dict(data)!r}.")
        values = dict(data)
        for name in ("class_balance", "spacing"):
            if isinstance(values.get(name), list):
                values[name] = tuple(values[name])
        return cls(**values)

    def radius(self) -> float:
        """Return the distance beyond which no weight term reaches ``tol``.

        ``inf`` when ``tol`` is 0; 0 when no term ever reaches ``tol``.
        """
        radius = _term_radius(self.w0, self.sigma, self.tol)
        if self.class_balance == "falk":
            smooth = 1.0 - self.background_ratio
            radius = max(radius, _term_radius(smooth, self.background_sigma, self.tol))
        return radius


#: The preset training uses unless told otherwise (and the weight-map panel and command show).
DEFAULT_PRESET = "paper"

#: Names of the settings, in signature order (the keywords the public functions share).
_SETTING_NAMES: tuple[str, ...] = tuple(f.name for f in fields(WeightMapSettings))

#: Named presets: ``"paper"`` (Ronneberger et al. 2015; what training uses by default),
#: ``"bounded"`` (the paper's border term with bounded class weights, for sparse images) and
#: ``"falk2019"`` (the authors' Fiji U-Net tool, Falk et al. 2019).
PRESETS: dict[str, WeightMapSettings] = {
    "paper": WeightMapSettings(w0=10.0, sigma=5.0, class_balance="balanced"),
    "bounded": WeightMapSettings(w0=10.0, sigma=5.0, class_balance="bounded"),
    "falk2019": WeightMapSettings(
        w0=50.0, sigma=6.0, class_balance="falk", background_ratio=0.1, background_sigma=10.0
    ),
}


def settings_from(
    preset: str | WeightMapSettings | None = None, **overrides: Any
) -> WeightMapSettings:
    """Return settings from a preset (name or object) with some values replaced.

    Parameters
    ----------
    preset : str or WeightMapSettings or None
        A key of :data:`PRESETS`, a settings object, or None for the defaults (= ``"paper"``).
    **overrides
        Any :class:`WeightMapSettings` field.

    Returns
    -------
    WeightMapSettings
        The validated settings.

    Examples
    --------
    >>> settings_from("falk2019", sigma=4.0).w0
    50.0
    """
    unknown = set(overrides) - set(_SETTING_NAMES)
    if unknown:
        raise TypeError(
            f"Unknown weight-map settings {sorted(unknown)}; valid names are {_SETTING_NAMES}."
        )
    if preset is None:
        base = WeightMapSettings()
    elif isinstance(preset, WeightMapSettings):
        base = preset
    elif isinstance(preset, str) and preset in PRESETS:
        base = PRESETS[preset]
    else:
        raise ValueError(f"Unknown weight-map preset {preset!r}; choose one of {list(PRESETS)}.")
    return replace(base, **overrides)


def _fill_from_preset(func: _Func) -> _Func:
    """Let ``preset=`` / ``settings=`` supply every setting the caller did not pass.

    The wrapped function keeps its documented defaults. Precedence: explicit argument, then
    ``settings`` (an object) or ``preset`` (a name), then the default.
    """
    signature = inspect.signature(func)

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        bound = signature.bind(*args, **kwargs)
        passed = dict(bound.arguments)
        preset, settings = passed.pop("preset", None), passed.pop("settings", None)
        if preset is not None and settings is not None:
            raise ValueError("Pass either preset (a name) or settings (an object), not both.")
        if settings is not None and not isinstance(settings, WeightMapSettings):
            raise TypeError(f"settings must be a WeightMapSettings, got {type(settings)}.")
        if isinstance(preset, WeightMapSettings):
            raise TypeError("preset is a name; pass a WeightMapSettings object as settings=.")
        bound.apply_defaults()
        if preset is not None or settings is not None:
            base = settings_from(settings if settings is not None else preset)
            for name in _SETTING_NAMES:
                if name not in passed:
                    bound.arguments[name] = getattr(base, name)
        bound.arguments["preset"] = bound.arguments["settings"] = None
        return func(*bound.args, **bound.kwargs)

    return wrapper  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------
# Input checks and slicing
# --------------------------------------------------------------------------------------------


def _check_labels(labels: Any) -> np.ndarray:
    """Return ``labels`` as an integer array of >= 2 dimensions, or raise ``ValueError``."""
    labels = np.asarray(labels)
    if labels.ndim < 2:
        raise ValueError(weightmap_problems(labels)[0].message)
    if labels.dtype == bool:
        _warn_caller(
            "The labels are a boolean mask, used as a single instance: touching cells cannot "
            "be separated and get no border weight. Boundary weights need instance labels "
            "(one id per cell)."
        )
        return labels.view(np.uint8)
    message = labels_dtype_problem(labels.dtype) or negative_labels_problem(labels)
    if message is not None:
        raise ValueError(message)
    return labels


def _warn_caller(message: str) -> None:
    """Issue a ``UserWarning`` attributed to the first caller outside this module."""
    frame, level = inspect.currentframe(), 1
    while frame is not None and frame.f_globals.get("__name__") == __name__:
        frame, level = frame.f_back, level + 1
    warnings.warn(message, UserWarning, stacklevel=level)


def _ignore_mask(ignore: Any, labels: np.ndarray) -> np.ndarray | None:
    """Turn ``ignore`` (None, a label value or a boolean mask) into a mask or None."""
    if ignore is None:
        return None
    if isinstance(ignore, int | np.integer):
        return labels == _parse_ignore_label(ignore)
    mask = np.asarray(ignore)
    if mask.dtype != bool:
        raise ValueError(
            f"ignore must be a boolean mask or a label value, got an array of {mask.dtype}."
        )
    if mask.shape != labels.shape:
        raise ValueError(f"The ignore mask has shape {mask.shape}, the labels have {labels.shape}.")
    return mask


def _as_slices(array: np.ndarray) -> np.ndarray:
    """View (or copy, if needed) an ``(..., Y, X)`` array as ``(n, Y, X)``."""
    return array.reshape((math.prod(array.shape[:-2]), *array.shape[-2:]))


def _run_parallel(function: Callable[[int], None], n: int, workers: int | None) -> None:
    """Call ``function(i)`` for ``i < n`` (independent tasks), in a thread pool if workers > 1.

    SciPy's distance transform and NumPy's ufuncs release the GIL, so threads over independent
    slices or image bands scale with the cores.
    """
    workers = _worker_count(workers, n)
    if workers == 1:
        for i in range(n):
            function(i)
        return
    with ThreadPoolExecutor(workers) as pool:
        for _ in pool.map(function, range(n)):
            pass


def _worker_count(workers: int | None, n_tasks: int) -> int:
    if workers is None:
        workers = os.cpu_count() or 1
    if int(workers) < 1:
        raise ValueError(f"workers must be >= 1 or None, got {workers!r}.")
    return max(1, min(int(workers), n_tasks))


# --------------------------------------------------------------------------------------------
# Separation
# --------------------------------------------------------------------------------------------

#: The four neighbour offsets (dy, dx) that, with their opposites, make the 8-neighbourhood.
_HALF_NEIGHBOURHOOD = ((0, 1), (1, 0), (1, 1), (1, -1))


def _neighbour_pairs(shape: tuple[int, int]) -> Iterator[tuple[tuple[slice, ...], ...]]:
    """Yield ``(a, b)`` index pairs so that ``x[a][i]`` and ``x[b][i]`` are 8-neighbours."""
    height, width = shape
    for dy, dx in _HALF_NEIGHBOURHOOD:
        rows_a, rows_b = slice(0, height - dy), slice(dy, height)
        if dx >= 0:
            cols_a, cols_b = slice(0, width - dx), slice(dx, width)
        else:
            cols_a, cols_b = slice(-dx, width), slice(0, width + dx)
        yield (rows_a, cols_a), (rows_b, cols_b)


def _ridge_2d(labels: np.ndarray) -> np.ndarray:
    """Mask of instance pixels with an 8-neighbour that belongs to a different instance."""
    ridge = np.zeros(labels.shape, dtype=bool)
    for a, b in _neighbour_pairs(labels.shape):
        first, second = labels[a], labels[b]
        clash = first != second
        clash &= first > 0
        clash &= second > 0
        ridge[a] |= clash
        ridge[b] |= clash
    return ridge


def separate_instances(labels: np.ndarray) -> np.ndarray:
    """Cut a background ridge between touching instances.

    Rule: an instance pixel becomes background (0) if any of its 8 neighbours belongs to a
    *different* instance (in the input). Both sides of a contact lose their contact pixels, so
    the ridge is 2 px wide (1 px per instance) along any contact, whatever its orientation.

    The rule is symmetric (it does not depend on the ids, a scan order, flips or 90-degree
    rotations, so it commutes with those augmentations), deterministic, and guarantees that
    no two different instances are 8-connected afterwards: any two 8-adjacent pixels of
    different instances are both removed. Only pixels touching another instance are removed.
    The authors' Fiji tool scans in raster order and removes only the later pixel, which gives
    1 px ridges across horizontal contacts and 2 px across vertical ones. An instance all of
    whose pixels touch another one (e.g. a 1 px wide sliver) disappears from the target.

    Parameters
    ----------
    labels : numpy.ndarray
        Integer instance labels, 0 = background; 2D or a stack ``(..., Y, X)`` (slice-wise).

    Returns
    -------
    numpy.ndarray
        A copy of ``labels`` (same dtype) with ridge pixels set to 0.
    """
    checked = _check_labels(labels)
    out = np.array(labels, copy=True)
    work = _as_slices(checked)
    out_slices = _as_slices(out)
    for i in range(work.shape[0]):
        out_slices[i][_ridge_2d(work[i])] = 0
    return out_slices.reshape(out.shape)


# --------------------------------------------------------------------------------------------
# Distances: bounded per-instance EDT with a running (nearest, second-nearest) pair
# --------------------------------------------------------------------------------------------


def _instance_boxes(labels: np.ndarray) -> tuple[np.ndarray, list]:
    """Return labels with small ids (relabelled only if ids are huge) and their boxes."""
    if labels.size == 0:
        return labels, []
    if int(labels.max()) > 4 * labels.size + 1024:
        _, inverse = np.unique(labels, return_inverse=True)
        has_background = labels.min() == 0
        labels = (inverse.reshape(labels.shape) + (0 if has_background else 1)).astype(np.intp)
    return labels, ndi.find_objects(labels)


def _grown(box: slice, margin: int, size: int) -> slice:
    return slice(max(box.start - margin, 0), min(box.stop + margin, size))


def _distance_pair_2d(
    labels: np.ndarray,
    max_distance: float,
    spacing: tuple[float, float] | None,
    d1: np.ndarray,
    d2: np.ndarray,
    workers: int = 1,
) -> None:
    """Fill ``d1`` / ``d2`` (``labels.shape``, float) with the nearest two instance distances.

    Each instance's exact EDT is computed inside its bounding box grown by ``max_distance``
    (every pixel within ``max_distance`` of the instance lies there), and folded into the
    running pair in place. Distances above ``max_distance`` are then set to ``inf``: there the
    pair may be incomplete, but it is exact wherever the true value is within ``max_distance``.
    The pair is kept as squared distances (the square root is taken once at the end). With
    several workers, each thread fills one horizontal band of rows.
    """
    labels, boxes = _instance_boxes(labels)
    height, width = labels.shape
    dy, dx = spacing or (1.0, 1.0)
    bounded = math.isfinite(max_distance)
    margin_y = math.ceil(max_distance / dy) if bounded else height
    margin_x = math.ceil(max_distance / dx) if bounded else width
    instances = [
        (index + 1, box[0], _grown(box[0], margin_y, height), _grown(box[1], margin_x, width))
        for index, box in enumerate(boxes)
        if box is not None
    ]

    def fill_band(band: slice) -> None:
        band_d1, band_d2 = d1[band], d2[band]
        band_d1.fill(np.inf)
        band_d2.fill(np.inf)
        for label, own_rows, rows, cols in instances:
            start, stop = max(rows.start, band.start), min(rows.stop, band.stop)
            if start >= stop:
                continue
            # The transform must see the whole instance, but only rows start:stop are needed.
            top, bottom = min(own_rows.start, start), max(own_rows.stop, stop)
            squared = _squared_distances(
                labels[top:bottom, cols] != label, start - top, stop - top, spacing, d1.dtype
            )
            _fold_in(d1[start:stop, cols], d2[start:stop, cols], squared)
        for pair in (band_d1, band_d2):
            if bounded:
                pair[pair > max_distance**2] = np.inf
            np.sqrt(pair, out=pair)

    edges = np.linspace(0, height, _worker_count(workers, height) + 1).round().astype(int)
    bands = [slice(int(a), int(b)) for a, b in pairwise(edges)]
    _run_parallel(lambda i: fill_band(bands[i]), len(bands), len(bands))


def _squared_distances(
    outside: np.ndarray,
    start: int,
    stop: int,
    spacing: tuple[float, float] | None,
    dtype: np.dtype,
) -> np.ndarray:
    """Squared Euclidean distance to the nearest ``False`` pixel, for rows ``start:stop``.

    Uses SciPy's exact feature transform (the index of the nearest ``False`` pixel) and
    squares the offsets directly, which is cheaper than ``distance_transform_edt``'s own
    distance step and its square root.
    """
    nearest = ndi.distance_transform_edt(
        outside, sampling=spacing, return_distances=False, return_indices=True
    )
    rows = np.arange(start, stop)[:, None]
    columns = np.arange(outside.shape[1])
    offset_y = np.subtract(nearest[0, start:stop], rows, dtype=dtype)
    offset_x = np.subtract(nearest[1, start:stop], columns, dtype=dtype)
    if spacing is not None:
        offset_y *= spacing[0]
        offset_x *= spacing[1]
    np.square(offset_y, out=offset_y)
    np.square(offset_x, out=offset_x)
    offset_y += offset_x
    return offset_y


def _fold_in(d1: np.ndarray, d2: np.ndarray, distance: np.ndarray) -> None:
    """Update the running (smallest, second smallest) pair with ``distance``, in place."""
    larger = np.maximum(d1, distance)
    np.minimum(d1, distance, out=d1)
    np.minimum(d2, larger, out=d2)


def instance_distances(
    labels: np.ndarray,
    max_distance: float = np.inf,
    spacing: tuple[float, float] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Return the distances to the nearest and second-nearest instance of every pixel.

    ``d1(x)`` / ``d2(x)``: exact Euclidean distance from ``x`` to the nearest pixel of the
    nearest / second-nearest instance (0 on an instance's own pixels, so there ``d2`` is the
    distance to the nearest *other* instance). Equidistant instances give ``d2 == d1``.

    Parameters
    ----------
    labels : numpy.ndarray
        Integer instance labels, 0 = background; 2D or a stack ``(..., Y, X)``, computed per
        slice (no distances across slices).
    max_distance : float
        Distances above this value are reported as ``inf`` (and are not computed).
    spacing : tuple of float, optional
        Pixel size ``(dy, dx)``; distances are then in those units.

    Returns
    -------
    d1, d2 : numpy.ndarray
        float64 arrays of ``labels.shape``; ``inf`` where fewer than one / two instances are
        within ``max_distance``.
    """
    labels = _check_labels(labels)
    spacing = _parse_spacing(spacing)
    max_distance = float(max_distance)
    if not max_distance >= 0:
        raise ValueError(f"max_distance must be >= 0, got {max_distance!r}.")
    d1 = np.empty(labels.shape, dtype=np.float64)
    d2 = np.empty(labels.shape, dtype=np.float64)
    slices, d1_slices, d2_slices = _as_slices(labels), _as_slices(d1), _as_slices(d2)
    for i in range(slices.shape[0]):
        _distance_pair_2d(slices[i], max_distance, spacing, d1_slices[i], d2_slices[i])
    return d1, d2


# --------------------------------------------------------------------------------------------
# Weights
# --------------------------------------------------------------------------------------------


def _class_weights(
    foreground: np.ndarray, valid: np.ndarray | None, balance: str | tuple[float, float]
) -> tuple[float, float]:
    """Return ``(w_background, w_foreground)`` for every scheme but "falk"."""
    if isinstance(balance, tuple):
        return balance
    if balance == "none":
        return 1.0, 1.0
    if valid is None:
        total, n_foreground = foreground.size, int(np.count_nonzero(foreground))
    else:
        total = int(np.count_nonzero(valid))
        n_foreground = int(np.count_nonzero(foreground & valid))
    return class_weights_from_counts(total - n_foreground, n_foreground, balance)


def class_weights_from_counts(
    n_background: int, n_foreground: int, balance: str | tuple[float, float]
) -> tuple[float, float]:
    """Return ``(w_background, w_foreground)`` of a class-balance scheme from pixel counts.

    The class term of :func:`weights_and_target` for an image whose non-ignored pixels hold
    ``n_background`` background and ``n_foreground`` foreground pixels of the separated target
    (so that weights of a part of an image can use the counts of the whole). Not for
    ``"falk"``, whose class term is not constant per class.

    Parameters
    ----------
    n_background, n_foreground : int
        Pixel counts.
    balance : str or tuple of float
        ``"none"``, ``"balanced"``, ``"bounded"`` or explicit weights (returned as they are).

    Returns
    -------
    tuple of float
        The two class weights.
    """
    if isinstance(balance, tuple):
        return balance
    if balance == "falk":
        raise ValueError('class_balance="falk" has no constant class weights.')
    if balance == "none":
        return 1.0, 1.0
    total = n_background + n_foreground
    present = (n_background > 0) + (n_foreground > 0)
    w_background = total / (present * n_background) if n_background else 1.0
    w_foreground = total / (present * n_foreground) if n_foreground else 1.0
    if balance == "bounded" and n_background and n_foreground:
        limit = MAX_CLASS_WEIGHT_RATIO
        ratio = min(max(w_foreground / w_background, 1.0 / limit), limit)
        w_background = total / (n_background + ratio * n_foreground)
        w_foreground = ratio * w_background
    return w_background, w_foreground


def _gaussian_in_place(values: np.ndarray, amplitude: float, sigma: float) -> np.ndarray:
    """Replace ``values`` by ``amplitude * exp(-values^2 / (2 sigma^2))`` (0 at inf)."""
    np.square(values, out=values)
    values *= -1.0 / (2.0 * sigma * sigma)
    np.exp(values, out=values)
    values *= amplitude
    return values


def _weights_2d(
    d1: np.ndarray,
    d2: np.ndarray,
    foreground: np.ndarray,
    valid: np.ndarray | None,
    settings: WeightMapSettings,
    out: np.ndarray,
) -> None:
    """Write the weights of one slice into ``out`` (float32); ``d1`` and ``d2`` are consumed."""
    border = None
    if settings.w0 > 0:
        border = _gaussian_in_place(np.add(d1, d2, out=d2), settings.w0, settings.sigma)
        if settings.border_on == "background":
            border[foreground] = 0.0
    if settings.class_balance == "falk":
        ratio = settings.background_ratio
        out[...] = _gaussian_in_place(d1, 1.0 - ratio, settings.background_sigma)
        out += ratio
        out[foreground] = 1.0
    else:
        w_background, w_foreground = _class_weights(foreground, valid, settings.class_balance)
        out.fill(w_background)
        out[foreground] = w_foreground
    if border is not None:
        out += border
    if valid is not None:
        out[~valid] = 0.0


def _slice_weights_and_target(
    labels: np.ndarray,
    ignore: np.ndarray | None,
    settings: WeightMapSettings,
    weights: np.ndarray,
    target: np.ndarray,
    workers: int = 1,
) -> None:
    """Compute weights and separated target of one 2D slice into the given outputs."""
    instances = labels
    if ignore is not None and ignore.any():
        instances = np.where(ignore, 0, labels)
    # float32 is ample for weights (squared pixel offsets are exact below 2**24) and faster.
    d1 = np.empty(labels.shape, dtype=np.float32)
    d2 = np.empty(labels.shape, dtype=np.float32)
    _distance_pair_2d(instances, settings.radius(), settings.spacing, d1, d2, workers)
    separated = instances
    if settings.separate:
        separated = np.where(_ridge_2d(instances), 0, instances)
    target[...] = separated
    valid = None if ignore is None else ~ignore
    _weights_2d(d1, d2, separated > 0, valid, settings, weights)


@_fill_from_preset
def weights_and_target(
    labels: np.ndarray,
    w0: float = 10.0,
    sigma: float = 5.0,
    class_balance: str | tuple[float, float] | Mapping = "balanced",
    separate: bool = True,
    border_on: str = "background",
    ignore: np.ndarray | int | None = None,
    *,
    preset: str | None = None,
    settings: WeightMapSettings | None = None,
    spacing: tuple[float, float] | None = None,
    tol: float = 1e-6,
    background_ratio: float = 0.1,
    background_sigma: float = 10.0,
    workers: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Return the boundary weight map and the separated target, computed together.

    ``w = w_c + w0 * exp(-(d1 + d2)^2 / (2 sigma^2))`` (Ronneberger et al. 2015, Eq. 2), with
    ``d1`` / ``d2`` the distances to the nearest / second-nearest instance, measured on the
    instance map *before* separation (see :func:`instance_distances`).

    Parameters
    ----------
    labels : numpy.ndarray
        Integer instance labels, 0 = background, any positive ids (uint8 ... int64). 2D, or a
        stack ``(..., Y, X)`` computed slice by slice (independent slices: no distances across
        slices, class balance per slice). A boolean mask is used as one instance (with a
        ``UserWarning``: borders need instance labels).
    w0 : float
        Border amplitude. Default 10.
    sigma : float
        Border width (pixels, or units of ``spacing``). Default 5.
    class_balance : str or pair or mapping
        ``"balanced"`` (default): ``w_c(k) = N / (K N_k)`` for the ``K`` classes present among
        the non-ignored pixels of the separated target (background, foreground). ``"none"``:
        ``w_c = 1``. ``"falk"``: foreground 1, background
        ``background_ratio + (1 - background_ratio) exp(-d1^2 / (2 background_sigma^2))``.
        Or explicit weights ``(w_background, w_foreground)`` / ``{"background": ..,
        "foreground": ..}``.
    separate : bool
        Cut a background ridge between touching instances (default True); see
        :func:`separate_instances` for the rule.
    border_on : {"background", "all"}
        Add the border term only on background pixels of the separated target (default, as
        the paper and the authors' tool) or on every pixel.
    ignore : numpy.ndarray or int, optional
        A boolean mask (``labels.shape``) or a label value. Those pixels get weight 0, are not
        an instance (not used for distances) and are 0 in the target.
    preset : str, optional
        ``"paper"`` or ``"falk2019"`` (see :data:`PRESETS`): supplies every setting not passed
        explicitly.
    settings : WeightMapSettings, optional
        Same as ``preset`` but an object (e.g. stored with a model). Not together with
        ``preset``.
    spacing : tuple of float, optional
        Pixel size ``(dy, dx)``: distances become physical, in the units of ``sigma``.
    tol : float
        Each weight term is exact where it is >= ``tol`` and 0 where its true value is below
        (default 1e-6); ``0`` computes everything exactly (slow). See
        :meth:`WeightMapSettings.radius`.
    background_ratio, background_sigma : float
        Parameters of ``class_balance="falk"`` (defaults 0.1 and 10).
    workers : int, optional
        Threads for stacks (slices in parallel); default: the number of CPUs. The result does
        not depend on it.

    Returns
    -------
    weights : numpy.ndarray
        float32, ``labels.shape``; 0 on ignored pixels.
    target : numpy.ndarray
        The separated instance labels (dtype of ``labels``; ridges and ignored pixels are 0).
        Its foreground (``target > 0``) is the class target the weights were made for.

    Raises
    ------
    ValueError
        For float, negative or non-integer labels, fewer than 2 dimensions, invalid settings,
        or an ignore mask of the wrong shape or dtype.
    """
    checked = _check_labels(labels)
    ignore_mask = _ignore_mask(ignore, checked)
    resolved = WeightMapSettings(
        w0=w0,
        sigma=sigma,
        class_balance=class_balance,  # type: ignore[arg-type]
        separate=separate,
        border_on=border_on,
        ignore=None,
        spacing=spacing,
        tol=tol,
        background_ratio=background_ratio,
        background_sigma=background_sigma,
    )
    weights = np.empty(checked.shape, dtype=np.float32)
    target = np.empty(checked.shape, dtype=checked.dtype)
    label_slices = _as_slices(checked)
    weight_slices, target_slices = _as_slices(weights), _as_slices(target)
    ignore_slices = None if ignore_mask is None else _as_slices(ignore_mask)

    n_slices = label_slices.shape[0]
    threads = _worker_count(workers, 1 << 30)

    def run(i: int) -> None:
        _slice_weights_and_target(
            label_slices[i],
            None if ignore_slices is None else ignore_slices[i],
            resolved,
            weight_slices[i],
            target_slices[i],
            workers=threads if n_slices == 1 else 1,
        )

    _run_parallel(run, n_slices, threads)
    target = target_slices.reshape(checked.shape)
    if np.asarray(labels).dtype == bool:
        target = target.view(bool)
    return weight_slices.reshape(checked.shape), target


@_fill_from_preset
def boundary_weight_map(
    labels: np.ndarray,
    w0: float = 10.0,
    sigma: float = 5.0,
    class_balance: str | tuple[float, float] | Mapping = "balanced",
    separate: bool = True,
    border_on: str = "background",
    ignore: np.ndarray | int | None = None,
    *,
    preset: str | None = None,
    settings: WeightMapSettings | None = None,
    spacing: tuple[float, float] | None = None,
    tol: float = 1e-6,
    background_ratio: float = 0.1,
    background_sigma: float = 10.0,
    workers: int | None = None,
) -> np.ndarray:
    """Return the U-Net boundary weight map (float32, ``labels.shape``).

    The first output of :func:`weights_and_target`, with the same parameters; use that function
    when training, so that target and weights come from the same separation.

    Examples
    --------
    >>> labels = np.zeros((32, 32), dtype=np.uint16)
    >>> labels[5:15, 5:15], labels[5:15, 15:25] = 1, 2
    >>> weights = boundary_weight_map(labels, preset="falk2019")
    >>> round(float(weights[10, 15]), 1)  # ridge pixel
    50.3
    """
    # The decorator has already resolved preset/settings into explicit values.
    weights, _ = weights_and_target(
        labels,
        w0,
        sigma,
        class_balance,
        separate,
        border_on,
        ignore,
        spacing=spacing,
        tol=tol,
        background_ratio=background_ratio,
        background_sigma=background_sigma,
        workers=workers,
    )
    return weights
