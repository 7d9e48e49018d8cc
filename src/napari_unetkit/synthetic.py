"""Synthetic fluorescence nuclei with exact instance labels (the built-in sample data).

Everything is generated on the fly from a seed (no downloads) and is deterministic: the same
arguments give the same arrays (NumPy's ``default_rng`` streams are stable across runs and
platforms for a given NumPy version).

Geometry
    Each nucleus is an ellipse (an ellipsoid in stacks) with its own size, eccentricity,
    orientation and a low-frequency radial wobble. About half of the nuclei are placed in small
    clusters where they overlap their neighbours; every pixel inside several nuclei belongs to
    the one it is "most inside" of (smallest normalised radius), which gives straight-ish
    contact lines with no background between the cells. The other nuclei are isolated, at least
    a few pixels away from everything else.
Image formation
    Per-nucleus brightness (x0.5..x1.5), smooth internal texture, a slightly darker rim
    (stronger along contacts, where the two rims meet), a faint out-of-focus haze, Gaussian blur
    (the PSF), a smooth uneven background, Poisson shot noise, Gaussian read noise and a camera
    offset; the result is ``uint16``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from skimage.segmentation import relabel_sequential

Seed = int | Sequence[int]

#: Default number of nuclei: this fraction of the image (volume) divided by the mean nucleus
#: area (volume). Overlaps and nuclei cut by the border leave 20-30 % foreground.
_FILL_2D = 0.25
_FILL_3D = 0.3
#: Range of the minor / major semi-axis ratio.
_ASPECT = (0.65, 1.0)


@dataclass(frozen=True)
class _Nucleus:
    """One nucleus: centre ``(z, y, x)``, semi-axes, in-plane angle and radial wobble."""

    centre: np.ndarray  # (z, y, x); z is ignored in 2D
    radii: np.ndarray  # (rz, r_major, r_minor)
    angle: float
    wobble_amp: np.ndarray  # amplitudes of the harmonics 2, 3, 4
    wobble_phase: np.ndarray

    def wobble(self, phi: np.ndarray) -> np.ndarray:
        """Radial scale factor (about 1) of the outline at in-plane angle ``phi``."""
        orders = np.arange(2, 2 + self.wobble_amp.size)
        terms = self.wobble_amp * np.cos(np.multiply.outer(phi, orders) + self.wobble_phase)
        return 1.0 + terms.sum(axis=-1)

    def radius_towards(self, direction: np.ndarray) -> float:
        """In-plane radius of the outline in the direction ``(dy, dx)`` (a unit vector)."""
        phi = np.arctan2(direction[0], direction[1]) - self.angle
        a, b = self.radii[1], self.radii[2]
        ellipse = a * b / np.hypot(b * np.cos(phi), a * np.sin(phi))
        return float(ellipse * self.wobble(np.asarray(phi)))

    @property
    def bound(self) -> float:
        """Largest in-plane radius (outline including the wobble)."""
        return float(self.radii[1] * (1.0 + self.wobble_amp.sum()))

    def rho(self, coords: tuple[np.ndarray, ...]) -> np.ndarray:
        """Normalised radius at the given ``(z, y, x)`` coordinate grids: ``< 1`` inside."""
        z, y, x = coords
        dy, dx = y - self.centre[1], x - self.centre[2]
        cos, sin = np.cos(self.angle), np.sin(self.angle)
        u = (dx * cos + dy * sin) / self.radii[1]
        v = (-dx * sin + dy * cos) / self.radii[2]
        w = (z - self.centre[0]) / self.radii[0]
        phi = np.arctan2(v * self.radii[2], u * self.radii[1])
        return np.sqrt(u * u + v * v + w * w) / self.wobble(phi)


# --------------------------------------------------------------------------------------------
# Geometry: random nuclei, placement in clusters, rasterisation to labels
# --------------------------------------------------------------------------------------------


def _random_nucleus(
    rng: np.random.Generator,
    radius_range: tuple[float, float],
    irregularity: float,
    z_radius: float,
) -> _Nucleus:
    """Draw the shape of one nucleus (its centre is set later)."""
    major = rng.uniform(*radius_range)
    minor = major * rng.uniform(*_ASPECT)
    amplitudes = irregularity * rng.dirichlet(np.ones(3)) * rng.uniform(0.5, 1.0)
    return _Nucleus(
        centre=np.zeros(3),
        radii=np.array([z_radius * rng.uniform(0.8, 1.2), major, minor]),
        angle=rng.uniform(0.0, np.pi),
        wobble_amp=amplitudes,
        wobble_phase=rng.uniform(0.0, 2.0 * np.pi, 3),
    )


def _with_centre(nucleus: _Nucleus, centre: np.ndarray) -> _Nucleus:
    """Copy of ``nucleus`` at ``centre``."""
    return _Nucleus(
        np.asarray(centre, float),
        nucleus.radii,
        nucleus.angle,
        nucleus.wobble_amp,
        nucleus.wobble_phase,
    )


@dataclass
class _Placer:
    """Places nuclei one by one, isolated or touching a member of a cluster."""

    shape: tuple[int, int, int]  # (Z, Y, X); Z == 1 in 2D
    z_scale: float  # in-plane pixels per slice, for 3D distances
    min_gap: float
    placed: list[_Nucleus]
    cluster: list[int]

    def _distance(self, a: np.ndarray, b: np.ndarray) -> tuple[float, np.ndarray]:
        """3D distance (z scaled to in-plane units) and in-plane unit direction from a to b."""
        d = b - a
        planar = np.hypot(d[1], d[2])
        direction = d[1:] / planar if planar > 0 else np.array([1.0, 0.0])
        return float(np.hypot(planar, d[0] * self.z_scale)), direction

    def _contact(self, a: _Nucleus, b: _Nucleus, direction: np.ndarray) -> float:
        """Centre distance at which ``a`` and ``b`` just touch along ``direction``."""
        return a.radius_towards(direction) + b.radius_towards(-direction)

    def fits(self, candidate: _Nucleus, cluster: int) -> bool:
        """Whether ``candidate`` keeps clear of other clusters and is not swallowed in its own."""
        for other, other_cluster in zip(self.placed, self.cluster, strict=True):
            distance, direction = self._distance(other.centre, candidate.centre)
            if other_cluster == cluster:
                if distance < 0.62 * self._contact(other, candidate, direction):
                    return False
            elif distance < other.bound + candidate.bound + self.min_gap:
                return False
        return True

    def random_centre(self, rng: np.random.Generator, nucleus: _Nucleus) -> np.ndarray:
        """Uniform centre, keeping at least half of the nucleus inside the image."""
        margin = 0.5 * nucleus.radii[1]
        z = rng.uniform(0.0, self.shape[0]) if self.shape[0] > 1 else 0.0
        y = rng.uniform(margin, self.shape[1] - margin)
        x = rng.uniform(margin, self.shape[2] - margin)
        return np.array([z, y, x])

    def touching_centre(
        self, rng: np.random.Generator, anchor: _Nucleus, nucleus: _Nucleus
    ) -> np.ndarray:
        """Centre that makes ``nucleus`` overlap ``anchor`` by a random amount."""
        angle = rng.uniform(0.0, 2.0 * np.pi)
        direction = np.array([np.sin(angle), np.cos(angle)])
        distance = rng.uniform(0.68, 0.88) * self._contact(anchor, nucleus, direction)
        dz = rng.normal(0.0, 0.3 * anchor.radii[0]) if self.shape[0] > 1 else 0.0
        return anchor.centre + np.array([dz, *(distance * direction)])

    def inside(self, centre: np.ndarray, nucleus: _Nucleus) -> bool:
        """Whether the centre keeps at least half of the nucleus inside the image."""
        margin = 0.5 * nucleus.radii[1]
        ok_y = margin <= centre[1] <= self.shape[1] - margin
        ok_x = margin <= centre[2] <= self.shape[2] - margin
        ok_z = self.shape[0] == 1 or 0.0 <= centre[0] < self.shape[0]
        return bool(ok_y and ok_x and ok_z)

    def add(self, nucleus: _Nucleus, cluster: int) -> None:
        """Accept a nucleus."""
        self.placed.append(nucleus)
        self.cluster.append(cluster)


def _place_nuclei(
    rng: np.random.Generator,
    shape: tuple[int, int, int],
    n_cells: int,
    radius_range: tuple[float, float],
    irregularity: float,
    touching_fraction: float,
    z_radius: float,
    z_scale: float,
) -> list[_Nucleus]:
    """Draw and place up to ``n_cells`` nuclei; clusters of 2-4 plus isolated ones."""
    placer = _Placer(shape, z_scale, min_gap=3.0, placed=[], cluster=[])
    n_cluster_cells = round(touching_fraction * n_cells)
    sizes: list[int] = []
    while sum(sizes) < n_cluster_cells:
        sizes.append(int(rng.integers(2, 5)))
    sizes += [1] * max(n_cells - sum(sizes), 0)
    for cluster, size in enumerate(sizes):
        _place_cluster(rng, placer, cluster, size, radius_range, irregularity, z_radius)
    return placer.placed


def _place_cluster(
    rng: np.random.Generator,
    placer: _Placer,
    cluster: int,
    size: int,
    radius_range: tuple[float, float],
    irregularity: float,
    z_radius: float,
) -> None:
    """Add one cluster (``size`` nuclei, each touching an earlier member); may end up smaller."""
    for _ in range(30):
        first = _random_nucleus(rng, radius_range, irregularity, z_radius)
        first = _with_centre(first, placer.random_centre(rng, first))
        if placer.fits(first, cluster):
            break
    else:
        return
    placer.add(first, cluster)
    members = [first]
    for _ in range(size - 1):
        for _ in range(20):
            nucleus = _random_nucleus(rng, radius_range, irregularity, z_radius)
            anchor = members[int(rng.integers(len(members)))]
            centre = placer.touching_centre(rng, anchor, nucleus)
            nucleus = _with_centre(nucleus, centre)
            if placer.inside(centre, nucleus) and placer.fits(nucleus, cluster):
                placer.add(nucleus, cluster)
                members.append(nucleus)
                break


def _rasterise(nuclei: list[_Nucleus], shape: tuple[int, int, int]) -> np.ndarray:
    """Labels ``1..n`` (in list order): each voxel goes to the nucleus it is most inside of."""
    best = np.full(shape, np.inf)
    labels = np.zeros(shape, dtype=np.int32)
    for index, nucleus in enumerate(nuclei, start=1):
        reach = nucleus.bound + 1.0
        z_reach = nucleus.radii[0] * (1.0 + nucleus.wobble_amp.sum()) + 1.0
        lo = [
            max(int(np.floor(nucleus.centre[0] - z_reach)), 0),
            max(int(np.floor(nucleus.centre[1] - reach)), 0),
            max(int(np.floor(nucleus.centre[2] - reach)), 0),
        ]
        hi = [
            min(int(np.ceil(nucleus.centre[0] + z_reach)) + 1, shape[0]),
            min(int(np.ceil(nucleus.centre[1] + reach)) + 1, shape[1]),
            min(int(np.ceil(nucleus.centre[2] + reach)) + 1, shape[2]),
        ]
        if any(h <= low for low, h in zip(lo, hi, strict=True)):
            continue
        box = tuple(slice(low, h) for low, h in zip(lo, hi, strict=True))
        coords = list(
            np.meshgrid(*(np.arange(s.start, s.stop, dtype=float) for s in box), indexing="ij")
        )
        if shape[0] == 1:
            coords[0] = np.full_like(coords[0], nucleus.centre[0])
        rho = nucleus.rho(tuple(coords))
        wins = (rho < 1.0) & (rho < best[box])
        best[box][wins] = rho[wins]
        labels[box][wins] = index
    return labels


def _clean_labels(labels: np.ndarray, min_size: int) -> np.ndarray:
    """Keep the largest connected piece of each id, drop tiny ids, relabel ``1..N``.

    Connectivity is face-adjacency (4 in 2D, 6 in 3D) over all axes of ``labels``.
    """
    out = np.zeros_like(labels)
    structure = ndi.generate_binary_structure(labels.ndim, 1)
    for index, box in enumerate(ndi.find_objects(labels), start=1):
        if box is None:
            continue
        mask = labels[box] == index
        pieces, count = ndi.label(mask, structure=structure)
        if count > 1:
            sizes = np.bincount(pieces.ravel())
            sizes[0] = 0
            mask = pieces == np.argmax(sizes)
        if np.count_nonzero(mask) >= min_size:
            out[box][mask] = index
    return relabel_sequential(out)[0].astype(np.int32)


# --------------------------------------------------------------------------------------------
# Image formation
# --------------------------------------------------------------------------------------------


def _boundary(labels: np.ndarray, contacts_only: bool) -> np.ndarray:
    """Foreground pixels with a face neighbour of another value (another cell if asked)."""
    edge = np.zeros(labels.shape, dtype=bool)
    for axis in range(labels.ndim):
        if labels.shape[axis] < 2:
            continue
        a = np.take(labels, range(labels.shape[axis] - 1), axis=axis)
        b = np.take(labels, range(1, labels.shape[axis]), axis=axis)
        differ = a != b
        if contacts_only:
            differ &= (a > 0) & (b > 0)
        lo = [slice(None)] * labels.ndim
        hi = [slice(None)] * labels.ndim
        lo[axis], hi[axis] = slice(0, -1), slice(1, None)
        edge[tuple(lo)] |= differ
        edge[tuple(hi)] |= differ
    return edge & (labels > 0)


def _smooth_noise(
    rng: np.random.Generator, shape: tuple[int, ...], sigma: float | tuple[float, ...]
) -> np.ndarray:
    """Gaussian-filtered white noise scaled to unit standard deviation."""
    field = ndi.gaussian_filter(rng.standard_normal(shape), sigma, mode="reflect")
    std = field.std()
    return field / std if std > 0 else field


def _edge_darkening(
    rng: np.random.Generator,
    labels: np.ndarray,
    sampling: tuple[float, ...],
    contact_dip: float,
) -> np.ndarray:
    """Multiplicative factor < 1 near cell outlines and, more strongly, along contacts.

    Each nucleus has its own rim darkening (0-30 %, so some have none to speak of); along a
    contact the two rims meet and an extra ``contact_dip`` is applied, which after the blur
    leaves the faint dark line seen between touching nuclei.
    """
    rim = np.concatenate([[0.0], rng.uniform(0.0, 0.3, int(labels.max()))])
    factor = np.ones(labels.shape)
    for mask, strength, width in (
        (_boundary(labels, contacts_only=False), rim[labels], 1.5),
        (_boundary(labels, contacts_only=True), contact_dip, 1.0),
    ):
        if mask.any():
            distance = ndi.distance_transform_edt(~mask, sampling=sampling)
            factor *= 1.0 - strength * np.exp(-0.5 * (distance / width) ** 2)
    return factor


def _fluorescence(
    rng: np.random.Generator,
    labels: np.ndarray,
    signal: float,
    contact_dip: float,
    sampling: tuple[float, ...],
) -> np.ndarray:
    """Noise-free emitted photons per pixel of the nuclei (before blur), float64.

    Per-nucleus brightness (x0.5..x1.5 of ``signal``), a smooth +-10 % texture, a few small
    bright spots (chromocentre-like) and the darkening of :func:`_edge_darkening`.
    """
    n = int(labels.max())
    brightness = np.concatenate([[0.0], signal * rng.uniform(0.5, 1.5, n)])
    texture_sigma = tuple(1.5 / s for s in sampling)
    texture = 1.0 + 0.1 * _smooth_noise(rng, labels.shape, texture_sigma)
    speckle = _smooth_noise(rng, labels.shape, tuple(0.8 / s for s in sampling))
    spots = 1.0 + 0.5 * np.clip(speckle - 2.0, 0.0, None)
    darkening = _edge_darkening(rng, labels, sampling, contact_dip)
    return brightness[labels] * texture * spots * darkening


def _background(
    rng: np.random.Generator, shape: tuple[int, ...], level: float, unevenness: float
) -> np.ndarray:
    """Smooth uneven background: a random tilt plus very low-frequency blobs."""
    grids = np.meshgrid(*(np.linspace(-1.0, 1.0, n) for n in shape[-2:]), indexing="ij")
    tilt = sum(rng.uniform(-1.0, 1.0) * g for g in grids)
    blobs = _smooth_noise(rng, shape[-2:], max(shape[-2:]) / 6.0)
    field = 1.0 + unevenness * (0.5 * tilt + 0.5 * blobs)
    return level * np.clip(field, 0.3, None)


def _camera(
    rng: np.random.Generator, photons: np.ndarray, gain: float, read_noise: float, offset: float
) -> np.ndarray:
    """Shot noise, gain, read noise and offset; clipped to ``uint16``."""
    electrons = rng.poisson(np.clip(photons, 0.0, None))
    counts = gain * electrons + rng.normal(offset, read_noise, photons.shape)
    return np.clip(np.round(counts), 0, np.iinfo(np.uint16).max).astype(np.uint16)


def _form_image(
    rng: np.random.Generator,
    labels: np.ndarray,
    *,
    signal: float,
    background: float,
    psf_sigma: tuple[float, ...],
    sampling: tuple[float, ...],
    contact_dip: float,
) -> np.ndarray:
    """Microscope image (``uint16``) of the nuclei in ``labels``."""
    emitted = _fluorescence(rng, labels, signal, contact_dip, sampling)
    haze = 0.08 * ndi.gaussian_filter(emitted, tuple(8.0 * s for s in psf_sigma))
    blurred = ndi.gaussian_filter(emitted, psf_sigma, mode="reflect")
    photons = blurred + haze + _background(rng, labels.shape, background, 0.4)
    return _camera(rng, photons, gain=2.0, read_noise=3.0, offset=100.0)


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def _mean_area(radius_range: tuple[float, float]) -> float:
    """Return the mean area of an ellipse whose major semi-axis is uniform in the range."""
    lo, hi = radius_range
    mean_square = (lo * lo + lo * hi + hi * hi) / 3.0
    return float(np.pi * mean_square * np.mean(_ASPECT))


def _check_shape(shape: Sequence[int], name: str) -> tuple[int, int]:
    """Validate a ``(Y, X)`` shape."""
    if len(shape) != 2 or min(shape) < 16:
        raise ValueError(f"{name} must be (Y, X) with both sizes >= 16, got {tuple(shape)}.")
    return int(shape[0]), int(shape[1])


def synthetic_nuclei(
    shape: tuple[int, int] = (256, 256),
    n_cells: int | None = None,
    seed: Seed = 0,
    *,
    radius_range: tuple[float, float] = (7.0, 16.0),
    touching_fraction: float = 0.55,
    irregularity: float = 0.08,
    signal: float = 110.0,
    background: float = 20.0,
    psf_sigma: float = 1.3,
    contact_dip: float = 0.45,
) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic 2D fluorescence image of nuclei with exact instance labels.

    Parameters
    ----------
    shape : tuple of int
        ``(Y, X)`` size in pixels.
    n_cells : int, optional
        Number of nuclei to place; by default a quarter of the image area divided by the mean
        nucleus area (45 in 256 x 256 at the default radii, for 20-30 % foreground). Nuclei that
        do not fit are skipped, so the result may have fewer.
    seed : int or sequence of int
        Seed of :func:`numpy.random.default_rng`; the same seed gives the same arrays.
    radius_range : tuple of float
        Range of the major semi-axis in pixels; minor semi-axes are 0.65-1.0 times the major.
    touching_fraction : float
        Fraction of nuclei placed in clusters of 2-4 overlapping (touching) nuclei.
    irregularity : float
        Total amplitude of the low-frequency radial wobble of the outlines (0 = ellipses).
    signal : float
        Mean peak emission of a nucleus, in photons per pixel (each nucleus x0.5..x1.5).
    background : float
        Mean background, in photons per pixel.
    psf_sigma : float
        Standard deviation of the Gaussian PSF in pixels.
    contact_dip : float
        Relative darkening (before blur) along the contact line of touching nuclei.

    Returns
    -------
    image : numpy.ndarray
        ``uint16`` image of ``shape`` (camera counts: gain 2, offset 100, read noise 3).
    labels : numpy.ndarray
        ``int32`` labels of ``shape``: ``0`` background, nuclei ``1..N``, each one 4-connected.
    """
    height, width = _check_shape(shape, "shape")
    rng = np.random.default_rng(seed)
    if n_cells is None:
        n_cells = max(1, round(_FILL_2D * height * width / _mean_area(radius_range)))
    grid = (1, height, width)
    nuclei = _place_nuclei(
        rng, grid, n_cells, radius_range, irregularity, touching_fraction, 1.0, 1.0
    )
    labels = _clean_labels(_rasterise(nuclei, grid)[0], min_size=20)
    image = _form_image(
        rng,
        labels,
        signal=signal,
        background=background,
        psf_sigma=(psf_sigma, psf_sigma),
        sampling=(1.0, 1.0),
        contact_dip=contact_dip,
    )
    return image, labels


def synthetic_stack(
    n_slices: int = 16,
    shape: tuple[int, int] = (128, 128),
    n_cells: int | None = None,
    seed: Seed = 0,
    *,
    z_step: float = 2.0,
    radius_range: tuple[float, float] = (7.0, 16.0),
    touching_fraction: float = 0.55,
    signal: float = 110.0,
    background: float = 20.0,
    psf_sigma: float = 1.3,
    contact_dip: float = 0.45,
) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic 3D stack of nuclei (ellipsoids) with exact 3D instance labels.

    A nucleus keeps the same id in every slice it spans, and the slices it spans are
    contiguous. The image is blurred with a 3D Gaussian PSF (``psf_sigma`` in-plane,
    ``psf_sigma / z_step`` slices along Z).

    Parameters
    ----------
    n_slices : int
        Number of Z slices.
    shape : tuple of int
        ``(Y, X)`` size of a slice.
    n_cells : int, optional
        Number of nuclei; by default 30 % of the volume divided by the mean nucleus volume
        (33 at the default sizes).
    seed : int or sequence of int
        Seed of :func:`numpy.random.default_rng`.
    z_step : float
        Slice spacing in units of the in-plane pixel size (nuclei are roughly round in 3D, so
        they span about ``2 r / z_step`` slices).
    radius_range, touching_fraction, signal, background, psf_sigma, contact_dip
        As in :func:`synthetic_nuclei`.

    Returns
    -------
    image : numpy.ndarray
        ``uint16`` array ``(n_slices, Y, X)``.
    labels : numpy.ndarray
        ``int32`` array ``(n_slices, Y, X)``, ids ``1..N``, each nucleus 6-connected in 3D.
    """
    height, width = _check_shape(shape, "shape")
    if n_slices < 1:
        raise ValueError(f"n_slices must be >= 1, got {n_slices}.")
    rng = np.random.default_rng(seed)
    z_radius = 0.9 * float(np.mean(radius_range)) / z_step
    if n_cells is None:
        mean_volume = 4.0 / 3.0 * _mean_area(radius_range) * z_radius
        n_cells = max(1, round(_FILL_3D * n_slices * height * width / mean_volume))
    grid = (n_slices, height, width)
    nuclei = _place_nuclei(
        rng, grid, n_cells, radius_range, 0.05, touching_fraction, z_radius, z_step
    )
    labels = _clean_labels(_rasterise(nuclei, grid), min_size=40)
    image = _form_image(
        rng,
        labels,
        signal=signal,
        background=background,
        psf_sigma=(psf_sigma / z_step, psf_sigma, psf_sigma),
        sampling=(z_step, 1.0, 1.0),
        contact_dip=contact_dip,
    )
    return image, labels


def sample_pairs(
    n: int = 4, shape: tuple[int, int] = (256, 256), seed: int = 0, **kwargs
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Several independent ``(image, labels)`` pairs, e.g. for training/validation splits.

    Pair ``i`` is ``synthetic_nuclei(shape, seed=(seed, i + 1), **kwargs)``: pairs of different
    ``seed`` or ``i`` never share a random stream, and none equals ``synthetic_nuclei(seed=s)``
    for an integer ``0 <= s < 2**32`` (NumPy pads seed sequences with zeros, so ``(s, 0)``
    would be the same stream as ``s``).

    Parameters
    ----------
    n : int
        Number of pairs.
    shape : tuple of int
        ``(Y, X)`` size of each image.
    seed : int
        Base seed.
    **kwargs
        Passed on to :func:`synthetic_nuclei`.

    Returns
    -------
    list of tuple of numpy.ndarray
        ``n`` pairs ``(uint16 image, int32 labels)``.
    """
    return [synthetic_nuclei(shape, seed=(seed, i + 1), **kwargs) for i in range(n)]
