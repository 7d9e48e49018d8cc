"""Chunked (zarr) prediction: lazy reads, block-wise instances, resume, equality with memory."""

import threading

import numpy as np
import pytest
import torch
import torch.nn.functional as F

zarr = pytest.importorskip("zarr")

from napari_unetkit import bigio, chunked, normalization  # noqa: E402
from napari_unetkit.model import UNet, UNetConfig  # noqa: E402
from napari_unetkit.normalization import (  # noqa: E402
    NormalizationSettings,
    apply_percentiles,
    image_percentiles,
    percentile_normalize,
)
from napari_unetkit.postprocess import InstanceSettings  # noqa: E402
from napari_unetkit.prediction import Predictor  # noqa: E402
from napari_unetkit.progress import Cancelled  # noqa: E402
from napari_unetkit.synthetic import synthetic_nuclei  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread")


def description(config: UNetConfig, mode: str = "instances") -> dict:
    names = ["nucleus"] if mode == "instances" else [f"class {k}" for k in range(config.n_classes)]
    return {
        "architecture": config.to_dict(),
        "mode": mode,
        "normalization": NormalizationSettings().to_dict(),
        "class_names": names,
    }


@pytest.fixture(scope="module")
def trained(single_thread) -> UNet:
    """A depth-2 U-Net trained for 40 Adam steps on synthetic nuclei (nucleus-sized objects)."""
    torch.manual_seed(0)
    model = UNet(UNetConfig(depth=2, base_channels=8, dropout=0.0))
    image, labels = synthetic_nuclei((128, 128), seed=3)
    x = torch.from_numpy(percentile_normalize(image[None]))[None]
    y = torch.from_numpy((labels > 0).astype(np.int64))[None]
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    rng = np.random.default_rng(0)
    model.train()
    for _ in range(40):
        corners = rng.integers(0, 128 - 64, size=(4, 2))
        patches = [(..., slice(i, i + 64), slice(j, j + 64)) for i, j in corners]
        loss = F.cross_entropy(
            torch.cat([model(x[p]) for p in patches]), torch.cat([y[p] for p in patches])
        )
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    model.eval()
    return model


def predictor_for(model, **kwargs) -> Predictor:
    options = {"device": "cpu", "tile_size": 32, "precision": "float32"}
    options.update(kwargs)
    return Predictor(model, description(model.config), **options)


class CountingStore(zarr.storage.WrapperStore):
    """Counts the chunk reads of the wrapped store, per key."""

    def __init__(self, store):
        super().__init__(store)
        self.reads: dict[str, int] = {}

    def _with_store(self, store):
        return type(self)(store)

    async def get(self, key, prototype, byte_range=None):
        if key.rsplit("/", 1)[-1][0].isdigit():
            self.reads[key] = self.reads.get(key, 0) + 1
        return await super().get(key, prototype, byte_range)


class RecordingArray:
    """A lazy array recording, for every read, its pixels and the chunks it fetched."""

    def __init__(self, array, store: CountingStore):
        self.array, self.store, self.reads = array, store, []
        self.shape, self.dtype, self.ndim = array.shape, array.dtype, array.ndim

    def __getitem__(self, selector):
        before = dict(self.store.reads)
        data = np.asarray(self.array[selector])
        fetched = [k for k, n in self.store.reads.items() if n > before.get(k, 0)]
        self.reads.append((data.size, len(fetched)))
        return data


def same_up_to_renumbering(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two label images hold the same objects (a one-to-one id map, 0 fixed)."""
    if a.shape != b.shape or not np.array_equal(a > 0, b > 0):
        return False
    pairs = np.unique(np.stack([a.ravel(), b.ravel()]), axis=1)
    return len(np.unique(pairs[0])) == pairs.shape[1] == len(np.unique(pairs[1]))


def nuclei_image(shape, seed=0):
    return synthetic_nuclei(shape, seed=seed)[0]


# ------------------------------------------------------------------------ regions and reads


@pytest.mark.parametrize("border", ["network", "mirror"])
@pytest.mark.parametrize("shape", [(70, 90), (64, 64), (9, 13), (40, 3)])
def test_window_reader_reads_what_the_padded_slice_holds(trained, border, shape):
    predictor = predictor_for(trained, border=border, tile_size=16)
    image = nuclei_image((max(shape[0], 16), max(shape[1], 16)))[: shape[0], : shape[1]]
    low, high = image_percentiles(image)
    padded = predictor._padded(apply_percentiles(image[None], low, high))
    read = chunked.window_reader(predictor, image, (), None, low, high)
    for tile in predictor.tile_layout(shape):
        top, bottom, left, right = tile.window
        np.testing.assert_array_equal(read(tile.window), padded[:, top:bottom, left:right])


@pytest.mark.parametrize("border", ["network", "mirror"])
def test_region_equals_the_same_part_of_the_whole_slice(trained, border):
    predictor = predictor_for(trained, border=border)
    image = percentile_normalize(nuclei_image((100, 120))[None])
    whole = predictor.predict_slice(image)
    padded = predictor._padded(image)

    def read(window):
        return padded[:, window[0] : window[1], window[2] : window[3]]

    for region in [(0, 100, 0, 120), (10, 47, 33, 34), (96, 100, 0, 5), (31, 70, 60, 120)]:
        part = predictor.predict_region(read, (100, 120), region)
        y0, y1, x0, x1 = region
        np.testing.assert_allclose(part, whole[:, y0:y1, x0:x1], atol=2e-6)
    with pytest.raises(ValueError, match="not inside"):
        predictor.predict_region(read, (100, 120), (0, 101, 0, 5))


# ------------------------------------------------------------------------------ anchor ids


def test_anchor_ids_number_objects_by_their_first_pixel(rng):
    from scipy import ndimage as ndi

    for _ in range(5):
        labels, count = ndi.label(rng.random((30, 41)) > 0.6)
        outer, shape, base = (5, 35, 0, 41), (60, 41), 1000
        core = (slice(4, 20), slice(3, 41))
        ids, cut = chunked.anchor_ids(labels, outer, shape, base, core)
        expected = np.zeros(labels.shape, np.int64)
        for number in range(1, count + 1):
            y, x = np.argwhere(labels == number)[0]  # first in raster order
            expected[labels == number] = 1 + base + (y + outer[0]) * shape[1] + x + outer[2]
        np.testing.assert_array_equal(ids, expected[core])
        top_or_bottom = set(labels[0]) | set(labels[-1])  # x spans the whole slice: no cut
        assert cut == len((top_or_bottom - {0}) & set(np.unique(labels[core])))


# ------------------------------------------------------------ chunked == in-memory prediction


def write_zarr(path, image, chunks):
    array = zarr.create_array(str(path), shape=image.shape, chunks=chunks, dtype=image.dtype)
    array[...] = image
    return path


@pytest.mark.slow
@pytest.mark.parametrize("method", ["components", "watershed"])
def test_blocks_give_the_in_memory_instances_without_a_full_read(
    trained, tmp_path, monkeypatch, method
):
    # Percentiles from a strided sample (as for any image above 4 Mpx), in memory and here.
    monkeypatch.setattr(normalization, "MAX_PERCENTILE_SAMPLES", 2000)
    image = nuclei_image((160, 176), seed=3)  # objects up to 50 px across
    predictor = predictor_for(trained)
    post = InstanceSettings(method=method)
    expected = predictor.predict(image, return_probabilities=True, instances=post)
    source = write_zarr(tmp_path / "in.zarr", image, (16, 16))
    store = CountingStore(zarr.storage.LocalStore(str(source), read_only=True))
    lazy = RecordingArray(zarr.open_array(store, mode="r"), store)
    result = chunked.predict_to_zarr(
        predictor,
        lazy,
        tmp_path / "out.zarr",
        probabilities=True,
        instances=post,
        chunk=16,
        block=32,
        margin=56,
        plane_pixels=32 * 32,
    )
    assert result.units == 30 and result.computed == 30 and result.cut_objects == 0
    root = zarr.open_group(str(tmp_path / "out.zarr"), mode="r")
    labels = root["0"][...]
    assert labels.dtype == np.int32 and root["0"].chunks == (16, 16)
    assert labels.max() > 0 and same_up_to_renumbering(labels, expected.labels)
    np.testing.assert_allclose(root["probabilities/0"][...], expected.probabilities, atol=2e-6)
    # The first read is the strided percentile sample (every chunk, a 16th of the pixels);
    # every other read is one tile window: a few chunks, never the image.
    (sample_size, sample_chunks), *windows = lazy.reads
    assert sample_size == image[::4, ::4].size and sample_chunks == 10 * 11
    window = (32 + 2 * predictor.halo) ** 2
    assert max(size for size, _ in windows) <= window
    assert max(n for _, n in windows) <= (-(-(32 + 2 * predictor.halo) // 16) + 1) ** 2 < 110


def test_a_stack_of_whole_slices_equals_memory_and_ids_are_unique(trained, tmp_path):
    stack = np.stack([nuclei_image((48, 56), seed=s) for s in range(3)])
    predictor = predictor_for(trained)
    expected = predictor.predict(stack).labels
    result = chunked.predict_to_zarr(predictor, stack, tmp_path / "out.ome.zarr", chunk=16)
    assert result.units == 3 and result.cut_objects == 0
    root = zarr.open_group(str(tmp_path / "out.ome.zarr"), mode="r")
    assert root["0"].chunks == (1, 16, 16)
    assert same_up_to_renumbering(root["0"][...], expected)
    axes = [a["name"] for a in root.attrs["multiscales"][0]["axes"]]
    assert axes == ["z", "y", "x"] and root.attrs["unetkit"]["complete"]


def test_objects_larger_than_the_margin_are_counted(trained, tmp_path):
    image = nuclei_image((96, 96), seed=2)
    predictor = predictor_for(trained)
    result = chunked.predict_to_zarr(
        predictor, image, tmp_path / "o.zarr", chunk=16, block=16, margin=2, plane_pixels=1
    )
    assert result.cut_objects > 0


def test_semantic_and_class_probabilities(tmp_path):
    torch.manual_seed(1)
    model = UNet(UNetConfig(depth=2, base_channels=4, n_classes=3, dropout=0.0)).eval()
    predictor = Predictor(
        model, description(model.config, "classes"), device="cpu", tile_size=16, precision="float32"
    )
    image = nuclei_image((40, 50))
    expected = predictor.predict(image, return_probabilities=True)
    chunked.predict_to_zarr(
        predictor, image, tmp_path / "c.zarr", probabilities=True, chunk=16, block=16,
        plane_pixels=100,
    )  # fmt: skip
    root = zarr.open_group(str(tmp_path / "c.zarr"), mode="r")
    np.testing.assert_array_equal(root["0"][...], expected.labels)
    np.testing.assert_allclose(root["probabilities/0"][...], expected.probabilities, atol=2e-6)
    names = [a["name"] for a in root["probabilities"].attrs["multiscales"][0]["axes"]]
    assert names == ["c", "y", "x"]


def test_the_models_channel_choice_is_repeated(tmp_path):
    torch.manual_seed(2)
    model = UNet(UNetConfig(in_channels=2, depth=2, base_channels=4, dropout=0.0)).eval()
    info = {**description(model.config), "channels": {"used": [2, 0], "of": 3}}
    predictor = Predictor(model, info, device="cpu", tile_size=16, precision="float32")
    image = np.stack([nuclei_image((40, 48), seed=s) for s in range(3)], axis=-1)
    expected = predictor.predict(image, -1, output="probabilities").probabilities
    chunked.predict_to_zarr(
        predictor, image, tmp_path / "p.zarr", channel_axis=-1, output="probabilities",
        chunk=16, block=16, plane_pixels=1,
    )  # fmt: skip
    probabilities = zarr.open_array(str(tmp_path / "p.zarr" / "probabilities" / "0"), mode="r")
    np.testing.assert_allclose(probabilities[...], expected, atol=2e-6)


# ---------------------------------------------------------------------------------- resume


@pytest.mark.slow
def test_an_interrupted_run_resumes_with_the_identical_result(trained, tmp_path):
    image = nuclei_image((96, 96), seed=4)
    predictor = predictor_for(trained)
    options = {"chunk": 16, "block": 32, "margin": 40, "plane_pixels": 1}
    reference = tmp_path / "ref.zarr"
    chunked.predict_to_zarr(predictor, image, reference, **options)
    cancel = threading.Event()
    seen = []

    def stop_at_half(done, total):
        seen.append(done)
        if done >= total / 2:
            cancel.set()

    out = tmp_path / "out.zarr"
    with pytest.raises(Cancelled):
        chunked.predict_to_zarr(
            predictor, image, out, progress=stop_at_half, cancel=cancel, **options
        )
    finished = len(chunked.done_units(out))
    assert 0 < finished < 9
    result = chunked.predict_to_zarr(predictor, image, out, **options)
    assert result.computed == 9 - finished
    np.testing.assert_array_equal(
        zarr.open_array(str(out / "0"), mode="r")[...],
        zarr.open_array(str(reference / "0"), mode="r")[...],
    )
    with pytest.raises(ValueError, match="other settings"):
        chunked.predict_to_zarr(predictor, image, out, threshold=0.6, **options)
    result = chunked.predict_to_zarr(predictor, image, out, overwrite=True, **options)
    assert result.computed == 9


def test_a_foreign_existing_path_is_refused(trained, tmp_path):
    (tmp_path / "x.zarr").mkdir()
    with pytest.raises(ValueError, match="already exists"):
        chunked.predict_to_zarr(predictor_for(trained), nuclei_image((32, 32)), tmp_path / "x.zarr")


# ------------------------------------------------------------------------------ lazy input


def test_open_image_reads_ome_zarr_tiff_and_npy_lazily(tmp_path):
    import tifffile

    data = np.arange(2 * 40 * 48, dtype=np.uint16).reshape(2, 40, 48)
    spec = bigio.OutputSpec(
        labels_shape=data.shape, labels_dtype=np.uint16, probabilities_shape=None,
        chunks=(1, 16, 16), axes="zyx", scale=(2.0, 0.5, 0.5),
        units=("micrometer",) * 3,
    )  # fmt: skip
    root = bigio.create_output(tmp_path / "img.ome.zarr", spec, {})
    root["0"][...] = data
    lazy = bigio.open_image(tmp_path / "img.ome.zarr")
    assert lazy.axes == "zyx" and lazy.scale == (2.0, 0.5, 0.5)
    np.testing.assert_array_equal(lazy.array[1, 3:5], data[1, 3:5])
    tifffile.imwrite(tmp_path / "img.tif", data, tile=(16, 16), resolution=(4.0, 4.0))
    with bigio.open_image(tmp_path / "img.tif") as tif:
        assert not isinstance(tif.array, np.ndarray) and tif.array.shape == data.shape
        assert tif.scale == (1.0, 0.25, 0.25)
        np.testing.assert_array_equal(tif.array[1, 10:30, 5:40], data[1, 10:30, 5:40])
    np.save(tmp_path / "img.npy", data)
    assert isinstance(bigio.open_image(tmp_path / "img.npy").array, np.memmap)
    with pytest.raises(ValueError, match="use a zarr store"):
        (tmp_path / "img.png").write_bytes(b"")
        bigio.open_image(tmp_path / "img.png")
    with pytest.raises(FileNotFoundError):
        bigio.open_image(tmp_path / "missing.zarr")
