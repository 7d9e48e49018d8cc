"""The inference copy (batch norm folded, channels-last) against the plain model."""

import copy

import numpy as np
import pytest
import torch
from torch import nn

from napari_unetkit.model import UNet, UNetConfig
from napari_unetkit.normalization import NormalizationSettings
from napari_unetkit.prediction import Predictor
from napari_unetkit.speed.fused_layers import ConvReLU, UpsamplingConv, UpThenConv
from napari_unetkit.speed.inference import (
    fold_all_batch_norms,
    fold_batch_norm,
    inference_copy,
    max_pool_2x2,
    split_input_channels,
    state_fingerprint,
)

pytestmark = pytest.mark.usefixtures("single_thread")


def description(config: UNetConfig) -> dict:
    return {
        "architecture": config.to_dict(),
        "mode": "instances" if config.n_classes == 2 else "classes",
        "normalization": NormalizationSettings().to_dict(),
    }


def randomise_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every normalisation layer non-trivial affine parameters and batch norm statistics.

    The statistics come from training-mode passes over random images (as training would give),
    so the activations keep a realistic scale; the affine parameters are then perturbed.
    """
    generator = torch.Generator().manual_seed(seed)
    norms = [m for m in model.modules() if isinstance(m, (nn.BatchNorm2d, nn.GroupNorm))]
    for norm in norms:
        if isinstance(norm, nn.BatchNorm2d):
            norm.reset_running_stats()
            norm.momentum = None  # cumulative average
    if any(isinstance(norm, nn.BatchNorm2d) for norm in norms):
        model.train()
        channels = model.config.in_channels
        with torch.no_grad():
            for _ in range(3):
                model(torch.rand(2, channels, 32, 32, generator=generator) * 2)
    with torch.no_grad():
        for norm in norms:
            norm.weight.copy_(torch.rand(norm.weight.shape, generator=generator) * 0.5 + 0.75)
            norm.bias.copy_(torch.rand(norm.bias.shape, generator=generator) * 0.5 - 0.25)
    return model


def make_model(seed: int = 0, **options) -> UNet:
    torch.manual_seed(seed)
    return randomise_norms(UNet(UNetConfig(**options)), seed).eval()


def plain_probabilities(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The obviously right reference: a deep copy of the model, eval mode, float32, NCHW."""
    reference = copy.deepcopy(model).eval()
    with torch.inference_mode():
        return torch.softmax(reference(x), dim=1)


def snapshot(model: nn.Module) -> dict:
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def assert_same_state(model: nn.Module, state: dict) -> None:
    current = model.state_dict()
    assert current.keys() == state.keys()
    for name, tensor in state.items():
        assert torch.equal(current[name], tensor), name


# ---------------------------------------------------------------------------------- folding


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("affine", [False, True])
def test_fold_batch_norm_equals_conv_then_norm(bias, affine):
    torch.manual_seed(1)
    conv = nn.Conv2d(3, 5, 3, padding=1, bias=bias)
    norm = nn.BatchNorm2d(5, affine=affine, eps=1e-3)
    with torch.no_grad():
        if affine:
            norm.weight.uniform_(-2, 2)
            norm.bias.uniform_(-1, 1)
        norm.running_mean.uniform_(-1, 1)
        norm.running_var.uniform_(0.05, 3)
    x = torch.randn(2, 3, 17, 13)
    with torch.no_grad():
        expected = norm.eval()(conv(x))
        folded = fold_batch_norm(conv, norm)
        np.testing.assert_allclose(folded(x).numpy(), expected.numpy(), atol=1e-5, rtol=1e-5)
    assert folded is not conv and folded.bias is not None
    assert (conv.bias is None) == (not bias)  # the original is untouched


def test_fold_refuses_norms_without_statistics():
    conv = nn.Conv2d(2, 4, 3)
    with pytest.raises(ValueError, match="running statistics"):
        fold_batch_norm(conv, nn.BatchNorm2d(4, track_running_stats=False))
    with pytest.raises(ValueError, match="channels"):
        fold_batch_norm(conv, nn.BatchNorm2d(3))
    # Inside a model such norms are left alone, not folded.
    sequential = nn.Sequential(conv, nn.BatchNorm2d(4, track_running_stats=False), nn.ReLU())
    assert fold_all_batch_norms(sequential) == 0
    assert isinstance(sequential[1], nn.BatchNorm2d)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize(("kernel", "first"), [(3, 5), (1, 1), (3, 11)])
def test_split_convolution_equals_convolution_of_the_concatenation(bias, kernel, first):
    torch.manual_seed(1)
    conv = nn.Conv2d(12, 7, kernel, padding=kernel // 2, bias=bias)
    a, b = torch.randn(2, first, 9, 10), torch.randn(2, 12 - first, 9, 10)
    head, tail = split_input_channels(conv, first)
    with torch.no_grad():
        expected = conv(torch.cat([a, b], dim=1))
        np.testing.assert_allclose((head(a) + tail(b)).numpy(), expected.numpy(), atol=1e-5)
        head.weight.add_(1.0)  # no storage shared with the original
    assert not torch.equal(head.weight, conv.weight[:, :first])
    assert tail.bias is None and (head.bias is not None) == bias


@pytest.mark.parametrize("first", [0, 12, -1])
def test_split_convolution_needs_two_parts(first):
    with pytest.raises(ValueError, match="Cannot split"):
        split_input_channels(nn.Conv2d(12, 7, 3), first)


CONFIGS = [
    {"depth": 2, "base_channels": 4},
    {"depth": 3, "base_channels": 6, "upsampling": "bilinear"},
    {"depth": 4, "base_channels": 4, "norm": "group"},
    {"depth": 4, "base_channels": 8},  # the default architecture at half width
    {"depth": 3, "base_channels": 4, "norm": "none", "final_kernel": 3},
    {"depth": 2, "base_channels": 4, "in_channels": 3, "n_classes": 4, "upsampling": "bilinear"},
]


@pytest.mark.parametrize("options", CONFIGS)
def test_inference_copy_matches_the_plain_model(options):
    model = make_model(**options)
    model.train()  # the copy is in eval mode whatever the original's mode
    config = model.config
    x = torch.randn(2, config.in_channels, 48, 40) * 2
    expected = plain_probabilities(model, x)
    fast = inference_copy(model)
    assert not fast.training
    assert not any(p.requires_grad for p in fast.parameters())
    with torch.inference_mode():
        for inputs in (x, x.contiguous(memory_format=torch.channels_last)):
            probs = torch.softmax(fast(inputs), dim=1)
            np.testing.assert_allclose(probs.numpy(), expected.numpy(), atol=1e-4)
    norms = [m for m in fast.modules() if isinstance(m, (nn.BatchNorm2d, nn.GroupNorm))]
    if config.norm == "batch":
        assert norms == []  # all folded
    elif config.norm == "group":
        assert len(norms) == 2 * (2 * config.depth + 1)  # left alone
    second_conv = [m for m in fast.encoders[0].modules() if isinstance(m, nn.Conv2d)][1]
    assert second_conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert not second_conv.weight.is_contiguous()
    # Every convolution followed by a ReLU (no group norm in between) applies it itself.
    conv_relus = [m for m in fast.modules() if isinstance(m, ConvReLU)]
    relus = [m for m in fast.modules() if isinstance(m, nn.ReLU)]
    if config.norm == "group":
        assert conv_relus == [] and len(relus) == 2 * (2 * config.depth + 1)
    else:
        # two per encoder and bottleneck, one per decoder (its first ReLU follows the sum)
        assert len(conv_relus) == 2 * (config.depth + 1) + config.depth
        assert len(relus) == config.depth
    assert not any(isinstance(m, nn.Dropout) for m in fast.modules())
    # No decoder reads a concatenation: its first convolution is split in two, and the half
    # over the up-sampled features is fused with a transposed-convolution up-sampling.
    for level, (skip_conv, up_conv) in enumerate(zip(fast.skip_convs, fast.up_convs, strict=True)):
        assert skip_conv.in_channels == config.channels(level)
        assert (skip_conv.bias is not None) == (config.norm != "group")
        if config.upsampling == "transpose":
            assert isinstance(up_conv, UpsamplingConv)
            assert up_conv.weight.shape == (
                4 * config.channels(level),
                config.channels(level + 1),
                2,
                2,
            )
        else:
            assert isinstance(up_conv, UpThenConv)
            assert up_conv.conv.in_channels == config.channels(level) and up_conv.conv.bias is None


def test_inference_copy_leaves_the_model_alone():
    model = make_model(depth=2, base_channels=4, dropout=0.5)
    model.train()
    model(torch.randn(2, 1, 32, 32)).sum().backward()
    state = snapshot(model)
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    parameters = list(model.parameters())
    inference_copy(model)
    assert model.training
    assert_same_state(model, state)
    assert list(model.parameters()) == parameters  # the very same objects
    for name, p in model.named_parameters():
        assert torch.equal(p.grad, grads[name]) and p.requires_grad
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert isinstance(model.dropout, nn.Dropout)
    assert model.encoders[0][0].weight.is_contiguous()  # still NCHW


# ------------------------------------------------------------------------------ fingerprint


def test_fingerprint_sees_every_change():
    model = make_model(depth=2, base_channels=4)
    first = state_fingerprint(model)
    assert state_fingerprint(copy.deepcopy(model)) == first
    with torch.no_grad():
        model.encoders[1][0].weight.data[0, 0, 0, 0] += 1e-6  # no version bump through .data
    assert state_fingerprint(model) != first
    with torch.no_grad():
        model.encoders[1][0].weight.data[0, 0, 0, 0] -= 1e-6
    model.train()
    model(torch.randn(2, 1, 16, 16))  # batch norm statistics move
    assert state_fingerprint(model) != first


# -------------------------------------------------------------------------------- predictor


@pytest.mark.parametrize("options", CONFIGS[:4])
def test_predictor_matches_the_plain_model_and_leaves_it_alone(options):
    model = make_model(**options).eval()
    image = np.random.default_rng(0).random((model.config.in_channels, 64, 56), np.float32)
    expected = plain_probabilities(model, torch.from_numpy(image)[None])[0].numpy()
    state = snapshot(model)
    predictor = Predictor(
        model, description(model.config), device="cpu", tile_size=32, precision="float32"
    )
    probs = predictor.predict_slice(image)
    tolerance = 1e-4 if model.config.norm != "group" else 0.05  # group norm: per tile
    assert np.abs(probs - expected).max() <= tolerance
    assert not model.training
    assert_same_state(model, state)
    assert predictor.model is model


@pytest.mark.parametrize("border", ["network", "mirror"])
def test_predictor_accepts_views_and_read_only_slices(border):
    model = make_model(depth=2, base_channels=4)
    predictor = Predictor(model, description(model.config), device="cpu", border=border)
    image = np.random.default_rng(2).random((1, 37, 29), np.float32)
    expected = predictor.predict_slice(np.flip(image, -1).copy())
    np.testing.assert_array_equal(predictor.predict_slice(np.flip(image, -1)), expected)
    read_only = np.flip(image, -1).copy()
    read_only.flags.writeable = False
    np.testing.assert_array_equal(predictor.predict_slice(read_only), expected)


def test_predictor_during_training_uses_the_fresh_weights():
    """A trainer validating with one predictor, between (fused) optimiser steps."""
    model = make_model(depth=2, base_channels=4, dropout=0.5)
    predictor = Predictor(model, description(model.config), device="cpu", precision="float32")
    image = np.random.default_rng(1).random((1, 40, 48), np.float32)
    x = torch.from_numpy(image)[None]
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.05, fused=True)
    target = torch.randint(0, 2, (4, 32, 32))
    previous = None
    for _ in range(3):
        model.train()
        loss = nn.functional.cross_entropy(model(torch.randn(4, 1, 32, 32)), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()  # fused: the parameters' version counters do not move
        assert model.training
        probs = predictor.predict_slice(image)
        assert model.training  # the predictor never switches the model's mode
        expected = plain_probabilities(model, x)[0].numpy()
        np.testing.assert_allclose(probs, expected, atol=1e-4)
        if previous is not None:
            assert np.abs(probs - previous).max() > 1e-3  # the weights did change
        previous = probs
    # Loading other weights into the same model is seen too.
    other = make_model(seed=5, depth=2, base_channels=4, dropout=0.5)
    model.load_state_dict(other.state_dict())
    np.testing.assert_allclose(
        predictor.predict_slice(image), plain_probabilities(other, x)[0].numpy(), atol=1e-4
    )


def test_predictor_keeps_its_copy_while_the_model_is_unchanged():
    model = make_model(depth=2, base_channels=4).eval()
    predictor = Predictor(model, description(model.config), device="cpu")
    first = predictor._network()
    assert predictor._network() is first
    with torch.no_grad():
        model.head.bias.add_(0.5)
    assert predictor._network() is not first


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [True, False])
def test_max_pool_2x2_equals_torch_max_pooling(dtype, channels_last):
    x = torch.randn(2, 8, 32, 18, generator=torch.Generator().manual_seed(0)).to(dtype)
    x[0, 0, :2, :2] = float("-inf")  # a block that is all -inf stays -inf
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    pooled = max_pool_2x2(x)
    assert torch.equal(pooled, torch.nn.functional.max_pool2d(x, 2))
    assert pooled.dtype == dtype
    assert pooled.is_contiguous(memory_format=torch.channels_last) == channels_last
