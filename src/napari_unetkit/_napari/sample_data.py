"""Sample data contributions: synthetic nuclei with exact labels, generated on the fly."""

from __future__ import annotations

from napari_unetkit.synthetic import synthetic_nuclei, synthetic_stack


def nuclei_2d() -> list[tuple]:
    """Return a 2D image of touching fluorescent nuclei and its instance labels.

    Returns
    -------
    list of tuple
        napari layer data tuples: the image and the labels.
    """
    image, labels = synthetic_nuclei(shape=(256, 256), seed=0)
    return [
        (image, {"name": "nuclei"}, "image"),
        (labels, {"name": "nuclei labels", "opacity": 0.5}, "labels"),
    ]


def nuclei_3d() -> list[tuple]:
    """Return a 3D stack of nuclei and its instance labels (for slice-wise training).

    Returns
    -------
    list of tuple
        napari layer data tuples: the stack and its labels.
    """
    image, labels = synthetic_stack(n_slices=16, shape=(128, 128), seed=0)
    return [
        (image, {"name": "nuclei stack"}, "image"),
        (labels, {"name": "nuclei stack labels", "opacity": 0.5}, "labels"),
    ]
