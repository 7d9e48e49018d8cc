"""Annotation TIFFs (``*_labels.tif``, ``*_masks.tif``, ``*_mask.tif``) open as Labels layers."""

import numpy as np
import pytest
from napari.layers import Image, Labels
from npe2 import PluginManager

from napari_unetkit._napari.reader import get_reader, is_label_file
from napari_unetkit.io import write_tiff
from napari_unetkit.synthetic import synthetic_nuclei

PLUGIN = "napari-unetkit"


@pytest.mark.parametrize(
    ("name", "ours"),
    [
        ("cells_masks.tif", True),
        ("cells_mask.TIFF", True),
        ("frame 3_labels.tiff", True),
        ("cells.tif", False),
        ("masks_of_cells.tif", False),
        ("cells_masks.png", False),
    ],
)
def test_only_annotation_tiffs_are_claimed(name, ours):
    assert is_label_file(name) == ours
    assert (get_reader(name) is not None) == ours


def compatible_plugins(path) -> set[str]:
    manager = PluginManager.instance()
    manager.discover()
    return {reader.plugin_name for reader in manager.iter_compatible_readers([str(path)])}


@pytest.mark.gui
def test_masks_open_as_labels_in_napari(make_napari_viewer, tmp_path):
    _, labels = synthetic_nuclei(shape=(48, 64), seed=5)
    stack = np.stack([labels, np.zeros_like(labels)]).astype(np.uint16)
    mask_file = write_tiff(tmp_path / "movie_masks.tif", stack, labels=True)
    plain = write_tiff(tmp_path / "movie.tif", stack)
    assert PLUGIN in compatible_plugins(mask_file)
    assert PLUGIN not in compatible_plugins(plain)

    viewer = make_napari_viewer()
    [layer] = viewer.open(str(mask_file), plugin=PLUGIN)
    assert isinstance(layer, Labels) and layer.name == "movie_masks"
    np.testing.assert_array_equal(layer.data, stack)

    fractions = write_tiff(tmp_path / "weights_mask.tif", np.full((8, 8), 0.5, np.float32))
    [layer] = viewer.open(str(fractions), plugin=PLUGIN)
    assert isinstance(layer, Image)  # fractions are not labels
