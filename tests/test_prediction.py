import threading

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from napari_unetkit import layout
from napari_unetkit.metrics import evaluate
from napari_unetkit.model import UNet, UNetConfig
from napari_unetkit.modelfile import save_model
from napari_unetkit.normalization import (
    NormalizationSettings,
    apply_percentiles,
    image_percentiles,
    percentile_normalize,
)
from napari_unetkit.postprocess import instances_from_probabilities
from napari_unetkit.prediction import PredictionResult, Predictor
from napari_unetkit.progress import Cancelled
from napari_unetkit.synthetic import synthetic_nuclei
from napari_unetkit.tiling import (
    DEFAULT_MAX_HALO,
    MAX_AUTO_TILE_CPU,
    auto_tile_size,
    default_halo,
    exact_halo,
)

# ------------------------------------------------------------------------------------ helpers


def description(config: UNetConfig, mode: str = "instances") -> dict:
    names = ["nucleus"] if mode == "instances" else [f"class {k}" for k in range(config.n_classes)]
    return {
        "architecture": config.to_dict(),
        "mode": mode,
        "normalization": NormalizationSettings().to_dict(),
        "class_names": names,
    }


def set_batchnorm_statistics(model: nn.Module, images: torch.Tensor) -> None:
    """Give batch norm the exact mean/variance of a few training-mode passes, then eval."""
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average
    model.train()
    with torch.no_grad():
        for image in images:
            model(image[None])
    model.eval()


def random_model(seed: int = 0, **kwargs) -> UNet:
    options = {"depth": 2, "base_channels": 4, "dropout": 0.0}
    options.update(kwargs)
    config = UNetConfig(**options)
    torch.manual_seed(seed)
    model = UNet(config)
    images = torch.rand(3, config.in_channels, 48, 48) * 2
    set_batchnorm_statistics(model, images)
    return model


def normalised_nuclei(shape, seed=0) -> np.ndarray:
    image, _ = synthetic_nuclei(shape, seed=seed)
    return percentile_normalize(image[None])


def plain_reference(model: nn.Module, image_cyx: np.ndarray) -> np.ndarray:
    """Slow reference of ``border="network"``: the whole image in one plain eval-mode call."""
    with torch.inference_mode():
        return torch.softmax(model.eval()(torch.from_numpy(image_cyx)[None]), dim=1)[0].numpy()


def reference(model: nn.Module, image_cyx: np.ndarray, predictor: Predictor) -> np.ndarray:
    """The whole-image result the predictor's tiles must reproduce, for its border mode."""
    if predictor.border == "network":
        return plain_reference(model, image_cyx)
    return whole_image_reference(model, image_cyx, predictor.halo)


def whole_image_reference(model: nn.Module, image_cyx: np.ndarray, halo: int) -> np.ndarray:
    """Slow reference of ``border="mirror"``: one pass on the image mirror-padded by ``halo``.

    The bottom/right padding is extended so that the padded image is a multiple of ``2**depth``
    (the network then adds no padding of its own and the pooling grid starts ``halo`` pixels
    before the image, as for the tiles).
    """
    factor = model.config.downsampling_factor
    pads = [(0, 0)]
    for size in image_cyx.shape[1:]:
        pads.append((halo, halo + (-(size + 2 * halo)) % factor))
    padded = np.pad(image_cyx, pads, mode="reflect")
    with torch.inference_mode():
        probs = torch.softmax(model.eval()(torch.from_numpy(padded)[None]), dim=1)[0].numpy()
    height, width = image_cyx.shape[1:]
    return probs[:, halo : halo + height, halo : halo + width]


def tile_count(predictor: Predictor, image_cyx: np.ndarray) -> int:
    calls = []
    predictor.predict_slice(image_cyx, progress=lambda done, total: calls.append(total))
    assert calls[-1] == len(predictor.tile_layout(image_cyx.shape[1:]))
    return calls[-1]


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def trained(single_thread) -> UNet:
    """A depth-3 U-Net trained for 30 Adam steps (plain cross-entropy) on synthetic nuclei."""
    torch.manual_seed(0)
    model = UNet(UNetConfig(depth=3, base_channels=8, dropout=0.0))
    image, labels = synthetic_nuclei((192, 192), seed=3)
    x = torch.from_numpy(percentile_normalize(image[None]))[None]
    y = torch.from_numpy((labels > 0).astype(np.int64))[None]
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    rng = np.random.default_rng(0)
    model.train()
    for _ in range(30):
        corners = rng.integers(0, 192 - 64, size=(4, 2))
        patches = [(..., slice(i, i + 64), slice(j, j + 64)) for i, j in corners]
        loss = F.cross_entropy(
            torch.cat([model(x[p]) for p in patches]), torch.cat([y[p] for p in patches])
        )
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    set_batchnorm_statistics(model, x)
    return model


@pytest.fixture(scope="module")
def nuclei_stack() -> np.ndarray:
    return np.stack([synthetic_nuclei((96, 88), seed=s)[0] for s in range(3)])


# ------------------------------------------------------------------------------- geometry


def test_default_halo_is_grid_aligned_and_exact_for_depth_4():
    config = UNetConfig(depth=4)
    assert exact_halo(config) == 94
    assert default_halo(config) == 96
    assert default_halo(UNetConfig(depth=5)) == 192
    for depth in (1, 2, 3, 5, 6):
        for upsampling in ("transpose", "bilinear"):
            config = UNetConfig(depth=depth, upsampling=upsampling)
            halo = default_halo(config)
            assert halo % config.downsampling_factor == 0
            assert halo >= min(exact_halo(config), DEFAULT_MAX_HALO)


def test_auto_tile_size_on_cpu():
    config = UNetConfig()
    tile = auto_tile_size(config, default_halo(config), torch.device("cpu"))
    assert tile % config.downsampling_factor == 0
    assert tile == MAX_AUTO_TILE_CPU
    huge = UNetConfig(base_channels=512)
    small_tile = auto_tile_size(huge, 96, torch.device("cpu"))
    assert 0 < small_tile < tile and small_tile % 16 == 0
    predictor = Predictor(random_model(), description(random_model().config), device="cpu")
    assert predictor.tile_size % 4 == 0 and predictor.halo == default_halo(predictor.config)


@pytest.mark.parametrize("border", ["network", "mirror"])
def test_tile_layout_covers_the_slice_evenly(border):
    model = random_model(depth=3)
    predictor = Predictor(
        model, description(model.config), device="cpu", tile_size=64, border=border
    )
    assert predictor.halo == 48
    tiles = predictor.tile_layout((130, 40))
    covered = np.zeros((130, 40), int)
    for tile in tiles:
        covered[tile.y : tile.y + tile.height, tile.x : tile.x + tile.width] += 1
        assert all(edge % 8 == 0 for edge in tile.window)  # on the pooling grid
    assert (covered == 1).all()
    # 130 rows round up to 136 = 17 blocks of 8: cores of 6, 6 and 5 blocks (not 64 + 64 + 8);
    # the 40 columns fit one core. Rows: (y, height, window top, window bottom, offset).
    rows = [(t.y, t.height, t.window[0], t.window[1], t.offset[0]) for t in tiles]
    if border == "network":
        # Padded by the network's own 3 + 3 rows; the halo is clipped to the padded slice.
        assert rows == [(0, 45, 0, 96, 3), (45, 48, 0, 136, 48), (93, 37, 48, 136, 48)]
        assert {t.window[2:] for t in tiles} == {(0, 40)}
    else:
        # Mirrored by the halo (48) on each side plus 6 rows of rounding below.
        assert rows == [(0, 48, 0, 144, 48), (48, 48, 48, 192, 48), (96, 34, 96, 232, 48)]
        assert {t.window[2:] for t in tiles} == {(0, 136)}


def test_sizes_are_rounded_to_the_pooling_grid():
    model = random_model(depth=3)
    predictor = Predictor(model, description(model.config), device="cpu", tile_size=10, halo=9)
    assert (predictor.tile_size, predictor.halo) == (16, 16)
    for bad in ({"tile_size": 0}, {"halo": -1}, {"batch_size": 0}, {"tile_size": 2.5}):
        with pytest.raises(ValueError):
            Predictor(model, description(model.config), device="cpu", **bad)


# -------------------------------------------------------------------------- predict_slice


def test_probabilities_sum_to_one():
    model = random_model(n_classes=3)
    predictor = Predictor(model, description(model.config, "classes"), device="cpu")
    probs = predictor.predict_slice(normalised_nuclei((37, 50)))
    assert probs.shape == (3, 37, 50) and probs.dtype == np.float32
    assert probs.min() >= 0 and probs.max() <= 1
    np.testing.assert_allclose(probs.sum(axis=0), 1.0, atol=1e-5)


def test_predict_slice_keeps_only_the_requested_classes():
    model = random_model(n_classes=3)
    predictor = Predictor(model, description(model.config, "classes"), device="cpu")
    image = normalised_nuclei((37, 50))
    full = predictor.predict_slice(image)
    np.testing.assert_array_equal(predictor.predict_slice(image, classes=[2]), full[2:])
    np.testing.assert_array_equal(predictor.predict_slice(image, classes=[2, 0]), full[[2, 0]])
    for bad in ([], [3], [-1]):
        with pytest.raises(ValueError, match=r"classes must be among 0\.\.2"):
            predictor.predict_slice(image, classes=bad)


@pytest.mark.slow
def test_instance_model_outputs_agree_with_its_full_probabilities(trained, nuclei_stack):
    """Instance outputs use the foreground alone; semantic ones still see both classes."""
    predictor = Predictor(trained, description(trained.config), device="cpu")
    normalised = predictor.predict(nuclei_stack, output="probabilities").probabilities
    semantic = predictor.predict(nuclei_stack, output="semantic", return_probabilities=True)
    instances = predictor.predict(nuclei_stack, return_probabilities=True)
    np.testing.assert_array_equal(semantic.probabilities, normalised)
    np.testing.assert_array_equal(instances.probabilities, normalised)
    # Two classes: the argmax is class 1 exactly where its probability is above one half.
    np.testing.assert_array_equal(semantic.labels, (normalised > 0.5).astype(np.uint8))
    assert semantic.labels.any() and not semantic.labels.all()
    for z, plane in enumerate(normalised):
        np.testing.assert_array_equal(
            instances.labels[z] > 0, instances_from_probabilities(plane) > 0
        )


@pytest.mark.slow
@pytest.mark.parametrize("border", ["network", "mirror"])
@pytest.mark.parametrize("depth", [3, 4])
def test_tiled_prediction_matches_whole_image(trained, depth, border):
    if depth == 3:
        model, shape = trained, (200, 152)
    else:
        model, shape = random_model(depth=4, base_channels=4, seed=1), (100, 120)
    image = normalised_nuclei(shape, seed=5)
    options = {"device": "cpu", "tile_size": 48, "border": border, "precision": "float32"}
    predictor = Predictor(model, description(model.config), batch_size=3, **options)
    assert tile_count(predictor, image) >= 9
    tiled = predictor.predict_slice(image)
    expected = reference(model, image, predictor)
    assert expected[1].std() > 0.05  # the model's output is not trivially flat
    assert np.abs(tiled - expected).max() <= 0.01
    if border == "network":  # the network's own border: exact, up to float rounding
        assert np.abs(tiled - expected).max() <= 1e-4
    # The check is sensitive: without a halo the tile seams are plainly visible.
    seamy = Predictor(model, description(model.config), halo=0, **options)
    assert np.abs(seamy.predict_slice(image) - expected).max() > 0.01


def test_border_modes_differ_only_near_the_border(trained):
    image = normalised_nuclei((96, 80), seed=3)
    network = Predictor(trained, description(trained.config), device="cpu")
    mirror = Predictor(trained, description(trained.config), device="cpu", border="mirror")
    a, b = network.predict_slice(image), mirror.predict_slice(image)
    assert np.abs(a - b).max() > 0.01  # zero-padded convolutions vs mirrored context
    inner = (slice(None), slice(40, -40), slice(40, -40))
    np.testing.assert_allclose(a[inner], b[inner], atol=1e-3)
    with pytest.raises(ValueError, match="border"):
        Predictor(trained, description(trained.config), device="cpu", border="zeros")


@pytest.mark.parametrize("border", ["network", "mirror"])
def test_tile_larger_than_image(trained, border):
    image = normalised_nuclei((50, 70), seed=2)
    predictor = Predictor(
        trained,
        description(trained.config),
        device="cpu",
        tile_size=1024,
        border=border,
        precision="float32",
    )
    assert tile_count(predictor, image) == 1
    expected = reference(trained, image, predictor)
    np.testing.assert_allclose(predictor.predict_slice(image), expected, atol=1e-4)


@pytest.mark.parametrize("border", ["network", "mirror"])
def test_tile_smaller_than_halo(trained, border):
    image = normalised_nuclei((24, 19), seed=4)
    predictor = Predictor(
        trained, description(trained.config), device="cpu", tile_size=8, border=border
    )
    assert predictor.halo > predictor.tile_size
    assert tile_count(predictor, image) == 3 * 3
    expected = reference(trained, image, predictor)
    assert np.abs(predictor.predict_slice(image) - expected).max() <= 0.01


@pytest.mark.parametrize("border", ["network", "mirror"])
@pytest.mark.parametrize("shape", [(5, 7), (4, 400), (1, 30), (101, 67)])
def test_tiny_and_odd_slices_match_reference(shape, border):
    model = random_model(depth=3)
    image = np.random.default_rng(0).random((1, *shape), dtype=np.float32)
    predictor = Predictor(
        model,
        description(model.config),
        device="cpu",
        tile_size=32,
        border=border,
        precision="float32",
    )
    probs = predictor.predict_slice(image)
    assert probs.shape == (2, *shape)
    expected = reference(model, image, predictor)
    assert np.abs(probs - expected).max() <= 0.01


def test_slice_with_wrong_channels_is_rejected():
    model = random_model()
    predictor = Predictor(model, description(model.config), device="cpu")
    with pytest.raises(ValueError, match="C = 1"):
        predictor.predict_slice(np.zeros((2, 16, 16), np.float32))


def test_tta_averages_the_flipped_predictions(trained):
    image = normalised_nuclei((64, 48), seed=6)
    plain = Predictor(trained, description(trained.config), device="cpu")
    tta = Predictor(trained, description(trained.config), device="cpu", tta=True)
    flips = [(), (2,), (1,), (1, 2)]
    expected = np.mean(
        [np.flip(plain.predict_slice(np.flip(image, f).copy()), f) for f in flips], axis=0
    )
    averaged = tta.predict_slice(image)
    assert averaged.shape == (2, 64, 48)
    np.testing.assert_allclose(averaged, expected, atol=1e-5)
    assert np.abs(averaged - plain.predict_slice(image)).max() > 1e-3
    np.testing.assert_allclose(averaged.sum(axis=0), 1.0, atol=1e-5)


def test_training_mode_is_kept(trained):
    """A trainer validating with a predictor gets its model back in training mode."""
    image = normalised_nuclei((32, 32), seed=7)
    expected = plain_reference(trained, image)
    trained.train()
    try:
        predictor = Predictor(
            trained, description(trained.config), device="cpu", precision="float32"
        )
        assert trained.training
        np.testing.assert_allclose(predictor.predict_slice(image), expected, atol=1e-5)
        assert trained.training
    finally:
        trained.eval()


# -------------------------------------------------------------------------------- predict


@pytest.mark.parametrize(
    ("shape", "channel_axis", "in_channels"),
    [
        ((64, 48), None, 1),
        ((40, 52, 3), -1, 3),
        ((3, 40, 36), None, 1),
        ((2, 2, 24, 20), None, 1),
        ((2, 3, 20, 18), 1, 3),
        ((101, 67), None, 1),
        ((5, 7), None, 1),
        ((4, 400), None, 1),
    ],
)
def test_output_shapes(shape, channel_axis, in_channels):
    model = random_model(in_channels=in_channels)
    image = np.random.default_rng(1).integers(0, 1000, size=shape, dtype=np.uint16)
    result = Predictor(model, description(model.config), device="cpu").predict(
        image, channel_axis, return_probabilities=True
    )
    expected = layout.labels_shape(shape, channel_axis)
    assert isinstance(result, PredictionResult)
    assert result.output == "instances"
    assert result.labels.shape == expected and result.labels.dtype == np.int32
    assert result.probabilities.shape == expected
    assert result.probabilities.dtype == np.float32
    assert len(result.slices) == layout.n_slices(shape, channel_axis)


def test_classes_model_gives_semantic_labels_from_one():
    model = random_model(n_classes=3, seed=2)
    predictor = Predictor(model, description(model.config, "classes"), device="cpu")
    image = synthetic_nuclei((48, 40), seed=1)[0]
    result = predictor.predict(image, return_probabilities=True)
    assert result.output == "semantic" and result.labels.dtype == np.uint8
    assert result.probabilities.shape == (3, 48, 40)
    expected = result.probabilities.argmax(axis=0) + 1
    np.testing.assert_array_equal(result.labels, expected)
    with pytest.raises(ValueError, match="instance model"):
        predictor.predict(image, output="instances")


def test_probabilities_only():
    model = random_model()
    predictor = Predictor(model, description(model.config), device="cpu")
    result = predictor.predict(np.ones((2, 20, 20), np.float32), output="probabilities")
    assert result.labels is None and result.probabilities.shape == (2, 20, 20)


def test_stack_equals_per_slice_prediction(trained, nuclei_stack):
    predictor = Predictor(trained, description(trained.config), device="cpu")
    result = predictor.predict(nuclei_stack, return_probabilities=True, min_size=5)
    low, high = image_percentiles(nuclei_stack)
    previous_ids: set[int] = set()
    for z, plane in enumerate(nuclei_stack):
        probs = predictor.predict_slice(apply_percentiles(plane[None], low, high))
        np.testing.assert_array_equal(result.probabilities[z], probs[1])
        expected = instances_from_probabilities(probs[1], min_size=5)
        labels = result.labels[z]
        assert expected.max() >= 2  # the trained model finds nuclei
        # Same partition, ids shifted so that they are unique across the stack.
        np.testing.assert_array_equal(labels > 0, expected > 0)
        shift = np.unique(labels[expected > 0] - expected[expected > 0])
        assert shift.size == 1
        ids = set(np.unique(labels[labels > 0]).tolist())
        assert not ids & previous_ids
        previous_ids |= ids


def test_only_requested_slices_are_predicted(trained, nuclei_stack):
    predictor = Predictor(trained, description(trained.config), device="cpu")
    full = predictor.predict(nuclei_stack, return_probabilities=True)
    part = predictor.predict(nuclei_stack, slices=[1], return_probabilities=True)
    assert part.slices == [(1,)]
    assert not part.labels[[0, 2]].any() and not part.probabilities[[0, 2]].any()
    np.testing.assert_array_equal(part.probabilities[1], full.probabilities[1])
    np.testing.assert_array_equal(part.labels[1] > 0, full.labels[1] > 0)
    stack_4d = nuclei_stack[:, None]
    result = predictor.predict(stack_4d, slices=[(2, 0)], output="semantic")
    assert result.labels[2, 0].any() and not result.labels[:2].any()
    for bad in ([3], [(0,)], [-1]):
        with pytest.raises(ValueError, match="Slice index"):
            predictor.predict(stack_4d if bad == [(0,)] else nuclei_stack, slices=bad)


def test_link_3d_joins_instances_across_slices(trained):
    plane = synthetic_nuclei((96, 96), seed=8)[0]
    stack = np.stack([plane] * 3)
    predictor = Predictor(trained, description(trained.config), device="cpu")
    unlinked = predictor.predict(stack).labels
    linked = predictor.predict(stack, link_3d=True).labels
    per_slice = int(unlinked[0].max())
    assert per_slice >= 2
    assert len(np.unique(unlinked[unlinked > 0])) == 3 * per_slice
    assert len(np.unique(linked[linked > 0])) == per_slice
    np.testing.assert_array_equal(linked[0], linked[2])
    with pytest.raises(ValueError, match="instances only"):
        predictor.predict(stack, output="semantic", link_3d=True)


def test_channel_count_mismatch_is_explained():
    rgb_model = random_model(in_channels=3)
    predictor = Predictor(rgb_model, description(rgb_model.config), device="cpu")
    with pytest.raises(
        ValueError,
        match=r"reads images of 3 channels \(RGB\), but the image \(shape \(32, 32\)\) has 1",
    ):
        predictor.predict(np.zeros((32, 32), np.uint8))
    with pytest.raises(ValueError, match="channel axis to -1"):
        predictor.predict(np.zeros((32, 32, 3), np.uint8))
    grey = random_model()
    with pytest.raises(
        ValueError,
        match=r"1 channel \(greyscale\), but the image \(shape \(32, 32, 3\)\) has 3",
    ):
        Predictor(grey, description(grey.config), device="cpu").predict(
            np.zeros((32, 32, 3), np.uint8), channel_axis=-1
        )


def test_progress_and_cancel_mid_stack(trained, nuclei_stack):
    predictor = Predictor(trained, description(trained.config), device="cpu", tile_size=32)
    calls = []
    predictor.predict(nuclei_stack, progress=lambda done, total: calls.append((done, total)))
    assert calls[0] == (0, 3) and calls[-1] == (3, 3)
    assert [done for done, _ in calls] == sorted(done for done, _ in calls)
    assert (1, 3) in calls and len(calls) > 4  # finer than one call per slice

    cancel = threading.Event()
    seen = []

    def progress(done, total):
        seen.append(done)
        if done >= 1:
            cancel.set()

    with pytest.raises(Cancelled):
        predictor.predict(nuclei_stack, progress=progress, cancel=cancel)
    assert seen and max(seen) < 2


def test_from_file_round_trip(tmp_path, trained):
    path = save_model(tmp_path / "nuclei.unet", trained, description(trained.config))
    loaded = Predictor.from_file(path, device="cpu", tile_size=24, batch_size=2)
    assert (loaded.tile_size, loaded.batch_size, loaded.mode) == (24, 2, "instances")
    image = synthetic_nuclei((40, 40), seed=9)[0]
    direct = Predictor(trained, description(trained.config), device="cpu", tile_size=24)
    np.testing.assert_allclose(
        loaded.predict(image, output="probabilities").probabilities,
        direct.predict(image, output="probabilities").probabilities,
        atol=1e-6,
    )


def test_invalid_descriptions_and_options():
    model = random_model()
    with pytest.raises(ValueError, match="mode"):
        Predictor(model, {"mode": "cells"}, device="cpu")
    with pytest.raises(ValueError, match="architecture"):
        Predictor(model, {"mode": "instances", "architecture": {"depth": 3}}, device="cpu")
    predictor = Predictor(model, description(model.config), device="cpu")
    with pytest.raises(ValueError, match="output"):
        predictor.predict(np.zeros((16, 16)), output="outlines")
    with pytest.raises(ValueError, match="boolean"):
        predictor.predict(np.zeros((16, 16), bool))


# ------------------------------------------------------------------------------- precision


def precision_predictions(model: nn.Module, image: np.ndarray) -> dict[str, np.ndarray]:
    return {
        name: Predictor(
            model, description(model.config), device="cpu", precision=name
        ).predict_slice(image)
        for name in ("float32", "mixed", "half")
    }


def test_mixed_precision_keeps_probabilities_within_0_01_and_the_instances(trained):
    image = normalised_nuclei((192, 160), seed=9)
    probs = precision_predictions(trained, image)
    exact, mixed = probs["float32"], probs["mixed"]
    assert mixed.dtype == np.float32
    # bfloat16 really ran (the result is not float32's), and it stayed within 0.01.
    assert 0 < np.abs(mixed - exact).max() <= 0.01
    np.testing.assert_allclose(mixed.sum(axis=0), 1, atol=1e-5)
    truth = instances_from_probabilities(exact[1])
    assert evaluate(truth, instances_from_probabilities(mixed[1]))["f1"] == 1.0
