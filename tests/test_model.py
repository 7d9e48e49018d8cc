import json

import pytest
import torch
from torch import nn

from napari_unetkit.model import (
    UNet,
    UNetConfig,
    pad_to_multiple,
    receptive_halo,
    receptive_interval,
)


def small(**kwargs) -> UNetConfig:
    options = {"depth": 2, "base_channels": 4}
    options.update(kwargs)
    return UNetConfig(**options)


def logits(model: nn.Module, shape: tuple[int, ...]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.rand(*shape))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.mark.parametrize(
    "size", [(5, 7), (1, 1), (2, 3), (17, 31), (33, 20), (4, 400), (400, 4), (16, 16), (48, 64)]
)
@pytest.mark.slow
def test_output_has_input_size(size):
    model = UNet(small(depth=3)).eval()
    out = logits(model, (2, 1, *size))
    assert out.shape == (2, 2, *size)
    assert torch.isfinite(out).all()


@pytest.mark.slow
@pytest.mark.parametrize("depth", [1, 2, 3, 4, 5])
def test_depths(depth):
    model = UNet(UNetConfig(depth=depth, base_channels=2)).eval()
    assert logits(model, (1, 1, 13, 21)).shape == (1, 2, 13, 21)
    assert len(model.encoders) == depth
    assert model.bottleneck[0].out_channels == 2 * 2**depth


@pytest.mark.parametrize("in_channels", [1, 3, 4])
@pytest.mark.parametrize("n_classes", [2, 3])
def test_channels_and_classes(in_channels, n_classes):
    model = UNet(small(in_channels=in_channels, n_classes=n_classes)).eval()
    assert logits(model, (1, in_channels, 10, 9)).shape == (1, n_classes, 10, 9)


@pytest.mark.parametrize("norm", ["batch", "group", "none"])
@pytest.mark.parametrize("upsampling", ["transpose", "bilinear"])
@pytest.mark.parametrize("final_kernel", [1, 3])
def test_variants(norm, upsampling, final_kernel):
    config = small(base_channels=6, norm=norm, upsampling=upsampling, final_kernel=final_kernel)
    model = UNet(config).eval()
    assert logits(model, (2, 1, 11, 19)).shape == (2, 2, 11, 19)
    norms = [m for m in model.modules() if isinstance(m, (nn.BatchNorm2d, nn.GroupNorm))]
    if norm == "none":
        assert not norms
    else:
        assert len(norms) == 4 * config.depth + 2
    if norm == "group":
        # 6 channels -> 6 groups, 12 -> 6, 24 -> 8: the group count always divides the channels.
        assert all(m.num_channels % m.num_groups == 0 and m.num_groups <= 8 for m in norms)
        assert {m.num_groups for m in norms} == {6, 8}
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m is not model.head]
    convs = [m for m in convs if m.kernel_size == (3, 3)]
    assert all((m.bias is None) == (norm != "none") for m in convs)
    assert model.head.kernel_size == (final_kernel, final_kernel)
    has_transpose = any(isinstance(m, nn.ConvTranspose2d) for m in model.modules())
    assert has_transpose == (upsampling == "transpose")


def test_wrong_input_is_rejected():
    model = UNet(small(in_channels=3)).eval()
    with pytest.raises(ValueError, match="3 input channel"):
        model(torch.rand(1, 1, 8, 8))
    with pytest.raises(ValueError, match="4D"):
        model(torch.rand(3, 8, 8))


def test_eval_mode_is_deterministic_and_dropout_only_in_training():
    model = UNet(small(dropout=0.5)).eval()
    x = torch.rand(2, 1, 12, 12)
    with torch.no_grad():
        assert torch.equal(model(x), model(x))
        model.train()
        a, b = model(x), model(x)
    assert not torch.equal(a, b)  # dropout is active in training mode


def test_batch_items_are_independent_in_eval_mode():
    model = UNet(small()).eval()
    x = torch.rand(3, 1, 16, 16)
    with torch.no_grad():
        together = model(x)
        alone = model(x[1:2])
    torch.testing.assert_close(together[1:2], alone)


def test_padding_mirrors_and_is_undone():
    x = torch.arange(5.0).reshape(1, 1, 1, 5)
    padded, (top, left) = pad_to_multiple(x, 8)
    assert padded.shape == (1, 1, 8, 8)
    assert torch.equal(padded[..., top : top + 1, left : left + 5], x)
    assert padded[0, 0, 0].tolist() == [1, 0, 1, 2, 3, 4, 3, 2]  # reflected, not zeros
    # Pads larger than the axis are reflected in steps; a single pixel is replicated.
    big, _ = pad_to_multiple(torch.rand(1, 2, 3, 1), 32)
    assert big.shape == (1, 2, 32, 32)
    same, offset = pad_to_multiple(x[..., :4].expand(1, 1, 4, 4), 4)
    assert same.shape == (1, 1, 4, 4) and offset == (0, 0)


def test_config_round_trip_through_json():
    config = UNetConfig(
        in_channels=3,
        n_classes=4,
        depth=3,
        base_channels=8,
        norm="group",
        upsampling="bilinear",
        dropout=0.25,
        final_kernel=3,
    )
    assert UNetConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert UNetConfig.from_dict({}) == UNetConfig()
    assert config.downsampling_factor == 8
    assert UNetConfig().downsampling_factor == 16


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"depth": 4, "colour": "red"}, "unknown keys: colour"),
        ({"depth": 0}, "depth must be a whole number"),
        ({"depth": 99}, "depth must be a whole number"),
        ({"depth": "4"}, "depth must be a whole number"),
        ({"depth": 2.0}, "depth must be a whole number"),
        ({"in_channels": True}, "in_channels must be a whole number"),
        ({"n_classes": 1}, "n_classes must be a whole number"),
        ({"base_channels": -3}, "base_channels must be a whole number"),
        ({"base_channels": 10**9}, "base_channels must be a whole number"),
        ({"norm": "layer"}, "norm must be one of"),
        ({"upsampling": "nearest"}, "upsampling must be one of"),
        ({"dropout": 1.0}, "dropout must be a finite number"),
        ({"dropout": "0.5"}, "dropout must be a finite number"),
        ({"final_kernel": 5}, "final_kernel must be one of 1, 3"),
        ([1, 2], "must be a dictionary"),
        (None, "must be a dictionary"),
    ],
)
def test_from_dict_rejects_bad_input(data, message):
    with pytest.raises(ValueError, match=message):
        UNetConfig.from_dict(data)


def test_parameter_count_grows_with_width_and_depth():
    counts = [UNet(small(base_channels=b)).n_parameters for b in (2, 4, 8)]
    assert counts[0] < counts[1] < counts[2]
    assert UNet(small(depth=3)).n_parameters > UNet(small(depth=2)).n_parameters
    model = UNet(small())
    assert model.n_parameters == sum(p.numel() for p in model.parameters())


@pytest.mark.slow
@pytest.mark.parametrize("norm", ["batch", "group", "none"])
@pytest.mark.parametrize("upsampling", ["transpose", "bilinear"])
def test_gradient_reaches_every_parameter(norm, upsampling):
    model = UNet(small(norm=norm, upsampling=upsampling, dropout=0.0)).train()
    x = torch.rand(2, 1, 12, 20)
    target = torch.randint(0, 2, (2, 12, 20))
    loss = nn.functional.cross_entropy(model(x), target)
    loss.backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, name
        assert parameter.grad.abs().sum() > 0, name


def test_he_initialisation():
    model = UNet(UNetConfig(depth=2, base_channels=32, norm="none"))
    conv = model.decoders[0][3]  # 3x3 conv, 32 -> 32 channels: fan-in 288
    assert conv.weight.std().item() == pytest.approx((2 / 288) ** 0.5, rel=0.1)
    assert torch.count_nonzero(conv.bias) == 0
    up = model.ups[1]  # 128 -> 64 channels, one tap per input channel
    assert up.weight.std().item() == pytest.approx((2 / 128) ** 0.5, rel=0.1)


def test_receptive_halo_values():
    # Default U-Net (depth 4, transposed convolutions, 1x1 head).
    assert receptive_halo(UNetConfig()) == 107
    assert receptive_halo(UNetConfig(upsampling="bilinear")) == 122
    assert receptive_halo(UNetConfig(final_kernel=3)) == 108
    halos = [receptive_halo(UNetConfig(depth=d)) for d in range(1, 6)]
    assert halos == sorted(halos) and len(set(halos)) == 5
    # The field is centred apart from the pooling phase.
    first, last = receptive_interval(UNetConfig(), 0)
    assert (first, last) == (-94, 93)


def measured_halo(model: UNet, width: int) -> int:
    """Perturb one input pixel per pooling phase and find the farthest output that changes."""
    factor = model.config.downsampling_factor
    x = torch.rand(1, model.config.in_channels, factor, width, dtype=torch.float64)
    x = x.repeat(factor, 1, 1, 1)
    start = (width // 2) // factor * factor
    perturbed = x.clone()
    for phase in range(factor):
        perturbed[phase, :, factor // 2, start + phase] += 10.0
    with torch.no_grad():
        change = (model(perturbed) - model(x)).abs().amax(dim=(1, 2))
    farthest = 0
    for phase in range(factor):
        columns = torch.nonzero(change[phase] > 0).flatten()
        farthest = max(farthest, int((columns - (start + phase)).abs().max()))
    return farthest


@pytest.mark.parametrize(
    "config",
    [
        small(),
        small(depth=3, final_kernel=3),
        small(upsampling="bilinear", norm="none"),
        small(depth=3, upsampling="bilinear"),
        UNetConfig(depth=4, base_channels=2),
    ],
    ids=["d2", "d3-head3", "d2-bilinear-nonorm", "d3-bilinear", "d4"],
)
@pytest.mark.slow
def test_receptive_halo_matches_perturbation(config):
    model = UNet(config).double().eval()
    with torch.no_grad():  # give BatchNorm non-trivial eval statistics
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    halo = receptive_halo(config)
    factor = config.downsampling_factor
    width = (2 * halo // factor + 4) * factor  # no internal padding, borders out of reach
    assert measured_halo(model, width) == halo
