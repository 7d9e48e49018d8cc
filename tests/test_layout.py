import dask.array as da
import numpy as np
import pytest

from napari_unetkit import layout


@pytest.mark.parametrize(
    ("shape", "channel_axis", "reference"),
    [
        ((6, 7), None, lambda a, i: a[np.newaxis]),
        ((6, 7, 3), -1, lambda a, i: np.moveaxis(a, -1, 0)),
        ((2, 6, 7), 0, lambda a, i: a),
        ((4, 6, 7), None, lambda a, i: a[i[0]][np.newaxis]),
        ((3, 4, 6, 7), None, lambda a, i: a[i[0], i[1]][np.newaxis]),
        ((4, 6, 7, 2), 3, lambda a, i: np.moveaxis(a[i[0]], -1, 0)),
        ((2, 4, 6, 7), 0, lambda a, i: a[:, i[0]]),
        ((4, 2, 6, 7), 1, lambda a, i: a[i[0]]),
    ],
)
def test_slices_match_direct_indexing(shape, channel_axis, reference):
    array = np.arange(np.prod(shape)).reshape(shape)
    indices = layout.slice_indices(shape, channel_axis)
    assert len(indices) == layout.n_slices(shape, channel_axis)
    seen = list(layout.iter_slices(array, channel_axis))
    assert [index for index, _ in seen] == indices
    for index, data in seen:
        np.testing.assert_array_equal(data, reference(array, index))
        assert data.shape == (layout.n_channels(shape, channel_axis), 6, 7)
    assert layout.slice_shape(shape, channel_axis) == (6, 7)
    expected_labels = layout.slice_index_shape(shape, channel_axis) + (6, 7)
    assert layout.labels_shape(shape, channel_axis) == expected_labels


def test_dask_slices_are_read_one_at_a_time():
    array = da.from_array(np.random.default_rng(0).random((5, 8, 9)), chunks=(1, 8, 9))
    for (z,), data in layout.iter_slices(array):
        assert isinstance(data, np.ndarray)
        np.testing.assert_array_equal(data[0], array[z].compute())


@pytest.mark.parametrize(("shape", "channel_axis"), [((5,), None), ((5, 6), 0), ((5, 6, 3), 3)])
def test_bad_axes_are_refused(shape, channel_axis):
    with pytest.raises(ValueError, match=r"axis|axes"):
        layout.slice_shape(shape, channel_axis)
