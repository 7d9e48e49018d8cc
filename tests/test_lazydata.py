"""Training from lazy data (lazydata.py): equality with the in-memory path, reads, the trainer."""

import numpy as np
import pytest
import tifffile

zarr = pytest.importorskip("zarr")

from napari_unetkit import data as data_module  # noqa: E402
from napari_unetkit import lazydata  # noqa: E402
from napari_unetkit.augmentation import AugmentationSettings  # noqa: E402
from napari_unetkit.cli import main  # noqa: E402
from napari_unetkit.modelfile import read_description  # noqa: E402
from napari_unetkit.synthetic import synthetic_nuclei  # noqa: E402
from napari_unetkit.training import TrainConfig, train  # noqa: E402
from napari_unetkit.weightmap import instance_distances  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread")

TINY = {
    "depth": 2,
    "base_channels": 4,
    "patch_size": 32,
    "batch_size": 2,
    "dropout": 0.0,
    "device": "cpu",
    "threads": 1,
    "epochs": 1,
    "steps_per_epoch": 3,
}


def windows(height, width):
    """Windows (top, left, shape) inside, across the borders of and larger than a slice."""
    return [
        (height // 3, width // 3, (height // 4, width // 4)),
        (-10, -5, (80, 90)),
        (height - 50, width - 50, (64, 64)),
        (0, 0, (height, width)),
        (-20, -20, (height + 40, width + 40)),
    ]


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
    """A lazy array recording the shape of every read."""

    def __init__(self, array):
        self.array, self.reads = array, []
        self.shape, self.dtype, self.ndim = array.shape, array.dtype, array.ndim

    def __getitem__(self, selector):
        data = np.asarray(self.array[selector])
        self.reads.append(data.shape)
        return data


def write_zarr(path, array, chunks):
    stored = zarr.create_array(str(path), shape=array.shape, chunks=chunks, dtype=array.dtype)
    stored[...] = array
    return path


def nuclei(shape=(300, 280), seed=1):
    image, labels = synthetic_nuclei(shape, seed=seed)
    return image, labels.astype(np.int32)


def classes_case():
    image, labels = nuclei()
    painted = np.where(labels > 0, 2, 1).astype(np.uint8)
    painted[:, 200:] = 0  # not annotated
    return [(image, painted)], {"mode": "classes"}


def region_case():
    image, labels = nuclei()
    region = np.zeros(labels.shape, dtype=bool)
    region[40:220, 30:250] = True
    return [(image, labels)], {"regions": [region]}


def stack_case():
    stack, labels = zip(*(nuclei((120, 130), seed=s) for s in range(3)), strict=True)
    labels = np.stack(labels)
    labels[1] = 0  # an unannotated slice is skipped
    rgb = np.stack([np.stack(stack), np.stack(stack)[:, ::-1], np.zeros_like(np.stack(stack))], -1)
    return [(rgb, labels)], {"channel_axis": -1, "channels": [0, 1]}


CASES = {
    "instances": lambda: ([nuclei()], {}),
    "region": region_case,
    "falk2019": lambda: ([nuclei()], {"weightmap": "falk2019"}),
    "bounded": lambda: ([nuclei()], {"weightmap": "bounded"}),
    "classes": classes_case,
    "stack": stack_case,
}


# ------------------------------------------------------------------------ equality with memory


@pytest.mark.parametrize("case", list(CASES))
def test_windows_equal_the_in_memory_slices(case):
    """Image, target and weights of any window equal the in-memory slice's, exactly."""
    pairs, options = CASES[case]()
    eager = data_module.prepare_training_data(pairs, **options)
    lazy = lazydata.prepare_lazy_training_data(pairs, **options)
    assert [s.source for s in lazy.slices] == [s.source for s in eager.slices]
    assert (lazy.n_classes, lazy.in_channels) == (eager.n_classes, eager.in_channels)
    assert lazy.summary()["class_pixels"] == eager.summary()["class_pixels"]
    for fast, slow in zip(lazy.slices, eager.slices, strict=True):
        annotated = slow.weights > 0
        assert fast.n_annotated == np.count_nonzero(annotated)
        assert fast.foreground.sum() == np.count_nonzero(annotated & (slow.target > 0))
        for top, left, shape in windows(*slow.shape):
            image, target, weights, _ = lazy.window(fast, top, left, shape)
            expected = data_module._cut_window(slow, top, left, shape)
            for got, want in zip((image, target, weights), expected, strict=True):
                assert got.dtype == want.dtype
                np.testing.assert_array_equal(got, want)


def test_weights_are_exact_where_the_distances_lie_within_the_margin(monkeypatch):
    """A margin below the weight map's radius: exact where both distances are within it."""
    monkeypatch.setattr(lazydata, "MAX_WEIGHT_MARGIN", 6)
    pairs = [nuclei()]
    eager = data_module.prepare_training_data(pairs).slices[0]
    lazy = lazydata.prepare_lazy_training_data(pairs)
    assert lazy.weight_margin == 6
    top, left, shape = 100, 90, (96, 96)
    weights = lazy.window(lazy.slices[0], top, left, shape)[2]
    expected = eager.weights[top : top + 96, left : left + 96]
    _, d2 = instance_distances(pairs[0][1])
    near = d2[top : top + 96, left : left + 96] <= 6
    np.testing.assert_array_equal(weights[near], expected[near])
    assert not np.array_equal(weights, expected)  # beyond the margin the border term differs


def test_lazy_patches_are_the_in_memory_windows():
    """Without augmentation each patch is the in-memory window at the position drawn."""
    pairs, options = region_case()
    eager = data_module.prepare_training_data(pairs, **options)
    lazy = lazydata.prepare_lazy_training_data(pairs, **options)
    train_set, _ = lazy.split(0.0)
    sampler = lazydata.LazyPatchSampler(
        train_set, patch_size=48, foreground_bias=0.5, augmentation=AugmentationSettings.off()
    )
    drawn = []
    window = sampler._window
    sampler._window = lambda k, top, left, shape: (
        drawn.append((k, top, left, shape)) or window(k, top, left, shape)
    )
    for _ in range(3):
        images, targets, weights = sampler.sample_batch(4)
        for b, (k, top, left, shape) in enumerate(drawn[-4:]):
            expected = data_module._cut_window(eager.slices[k], top, left, shape)
            np.testing.assert_array_equal(images[b], expected[0])
            np.testing.assert_array_equal(targets[b], expected[1])
            np.testing.assert_array_equal(weights[b], expected[2])
            assert np.any(weights[b] > 0)
    assert sampler.n_annotated == eager.slices[0].n_annotated


def test_patch_centres_are_annotated_and_foreground_as_asked():
    pairs, options = region_case()
    lazy = lazydata.prepare_lazy_training_data(pairs, **options)
    eager = data_module.prepare_training_data(pairs, **options).slices[0]
    sampler = lazydata.LazyPatchSampler(lazy.split(0.0)[0], 32, foreground_bias=1.0)
    centres = [sampler._centre(0) for _ in range(200)]
    assert all(eager.target[c] == 1 and eager.weights[c] > 0 for c in centres)
    sampler = lazydata.LazyPatchSampler(lazy.split(0.0)[0], 32, foreground_bias=0.0)
    centres = np.array([sampler._centre(0) for _ in range(400)])
    assert all(eager.weights[tuple(c)] > 0 for c in centres)
    share = np.mean([eager.target[tuple(c)] for c in centres])
    expected = np.mean(eager.target[eager.weights > 0])
    assert abs(share - expected) < 0.1  # uniform over the annotated pixels


def test_the_validation_window_is_hidden_from_training():
    pairs = [nuclei()]
    lazy = lazydata.prepare_lazy_training_data(pairs)
    train_set, validation = lazy.split(0.2, seed=3)
    (window,) = validation
    side = round(np.sqrt(0.2 * lazy.slices[0].n_annotated))
    assert window.shape == (side, side)
    eager = data_module.prepare_training_data(pairs).slices[0]
    top, left = window.origin
    np.testing.assert_array_equal(
        window.weights, eager.weights[top : top + side, left : left + side]
    )
    np.testing.assert_array_equal(
        window.instances, pairs[0][1][top : top + side, left : left + side]
    )
    (kept,) = train_set
    y0, y1, x0, x1 = kept.hidden
    assert (y0, x0) == (max(top - 16, 0), max(left - 16, 0))
    hidden = np.zeros(eager.shape, dtype=bool)
    hidden[y0:y1, x0:x1] = True
    assert kept.n_annotated == np.count_nonzero((eager.weights > 0) & ~hidden)
    sampler = lazydata.LazyPatchSampler(train_set, 32, augmentation=AugmentationSettings.off())
    assert not any(hidden[sampler._centre(0)] for _ in range(300))
    weights = lazy.window(kept, 0, 0, eager.shape)[2]
    assert not weights[hidden].any() and np.array_equal(weights[~hidden], eager.weights[~hidden])


def test_bad_lazy_input_gets_the_in_memory_messages():
    image, labels = nuclei()
    with pytest.raises(ValueError, match="labels hold negative values"):
        lazydata.prepare_lazy_training_data([(image, labels - 1)])
    with pytest.raises(ValueError, match="No annotated slices"):
        lazydata.prepare_lazy_training_data([(image, np.zeros_like(labels))])
    with pytest.raises(ValueError, match="the image is constant"):
        lazydata.prepare_lazy_training_data([(np.ones_like(image), labels)])
    with pytest.raises(ValueError, match="labels have shape"):
        lazydata.prepare_lazy_training_data([(image, labels[:-1])])


# ------------------------------------------------------------------------ what is read


@pytest.mark.slow
def test_training_never_reads_the_whole_image(tmp_path, monkeypatch):
    """Counting stores: training reads a part of the image, and labels only tile by tile."""
    monkeypatch.setattr(lazydata, "NORMALIZATION_BLOCKS", 4)
    monkeypatch.setattr(lazydata, "SCAN_TILE", 256)
    image, labels = nuclei((1024, 1024), seed=2)
    arrays = []
    for name, array in (("image", image), ("labels", labels)):
        write_zarr(tmp_path / f"{name}.zarr", array, (128, 128))
        path = str(tmp_path / f"{name}.zarr")
        store = CountingStore(zarr.storage.LocalStore(path, read_only=True))
        arrays.append((store, RecordingArray(zarr.open_array(store, mode="r"))))
    (image_store, lazy_image), (labels_store, lazy_labels) = arrays
    config = TrainConfig(
        **{**TINY, "val_fraction": 0.01, "steps_per_epoch": 4, "augmentation": None}
    )
    data = lazydata.prepare_lazy_training_data([(lazy_image, lazy_labels)])
    result = train(data, config)
    assert result.steps_run == 4 and result.description["data"]["pairs"][0]["lazy"]
    chunks = 64
    assert len(image_store.reads) < chunks / 2  # a sample of blocks and a few patches
    assert max(np.prod(shape) for shape in lazy_image.reads) <= 256 * 256  # a sampled block
    assert max(np.prod(shape) for shape in lazy_labels.reads) <= 258 * 258
    assert len(labels_store.reads) == chunks  # the index: every labels chunk is scanned


def test_wants_lazy(tmp_path, monkeypatch):
    image, labels = nuclei((64, 64))
    stored = zarr.open_array(str(write_zarr(tmp_path / "l.zarr", labels, (32, 32))), mode="r")
    assert not lazydata.wants_lazy([(image, labels)])
    assert lazydata.wants_lazy([(image, stored)])
    monkeypatch.setattr(lazydata, "LAZY_MIN_PIXELS", 64 * 64)
    assert lazydata.wants_lazy([(image, labels)])


# ------------------------------------------------------------------------ front ends


def test_train_chooses_the_lazy_path_for_zarr_and_validates_on_a_window(tmp_path):
    image, labels = nuclei((256, 256))
    pairs = [
        (
            zarr.open_array(str(write_zarr(tmp_path / "i.zarr", image, (64, 64))), mode="r"),
            zarr.open_array(str(write_zarr(tmp_path / "l.zarr", labels, (64, 64))), mode="r"),
        )
    ]
    stages = []
    result = train(pairs, TrainConfig(**TINY), progress=lambda e: stages.append(e.stage))
    data = result.description["data"]
    assert data["pairs"][0]["lazy"] and data["n_validation_slices"] == 1
    assert result.history[-1]["val_f1"] is not None and "preparing" in stages
    eager = train([(image, labels)], TrainConfig(**TINY))
    assert "lazy" not in eager.description["data"]["pairs"][0]
    held_out = [synthetic_nuclei((96, 96), seed=9)]
    explicit = train(pairs, TrainConfig(**TINY), validation=held_out)
    data = explicit.description["data"]
    assert data["pairs"][0]["lazy"] and data["n_validation_slices"] == 1
    assert data["n_training_slices"] == 1 and data["annotated_pixels"] == 256 * 256


def test_cli_trains_on_a_zarr_pair_and_on_a_big_tiff(tmp_path, monkeypatch, capsys):
    image, labels = nuclei((192, 192))
    write_zarr(tmp_path / "image.zarr", image, (64, 64))
    write_zarr(tmp_path / "labels.zarr", labels, (64, 64))
    options = ["--epochs", "1", "--steps-per-epoch", "2", "--depth", "2", "--base-channels",
               "4", "--patch-size", "32", "--batch-size", "2", "--device", "cpu"]  # fmt: skip
    out = tmp_path / "zarr.unet"
    args = ["train", "--image", str(tmp_path / "image.zarr"), "--labels"]
    assert main([*args, str(tmp_path / "labels.zarr"), "--out", str(out), *options]) == 0
    assert "read lazily" in capsys.readouterr().err
    assert read_description(out)["data"]["pairs"][0]["lazy"]
    tifffile.imwrite(tmp_path / "image.tif", image, tile=(64, 64))
    tifffile.imwrite(tmp_path / "labels.tif", labels, tile=(64, 64))
    monkeypatch.setattr(lazydata, "LAZY_MIN_PIXELS", 100 * 100)  # "big" from 10,000 pixels
    out = tmp_path / "tiff.unet"
    args = ["train", "--image", str(tmp_path / "image.tif"), "--labels"]
    assert main([*args, str(tmp_path / "labels.tif"), "--out", str(out), *options]) == 0
    assert read_description(out)["data"]["pairs"][0]["lazy"]
