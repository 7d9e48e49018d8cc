"""The fused layers of the inference copy against the layers they replace."""

import pytest
import torch
from torch import nn
from torch.profiler import profile

from napari_unetkit.speed.fused_layers import (
    ConvReLU,
    UpsamplingConv,
    UpThenConv,
    fuse_conv_relu,
    fused_relu_available,
    upsampling_conv,
)

# ------------------------------------------------------------------------------ up-sampling


@pytest.mark.parametrize("up_bias", [True, False])
@pytest.mark.parametrize("conv_bias", [False, True])
@pytest.mark.parametrize("size", [(1, 1), (1, 3), (2, 2), (5, 3), (8, 9)])
def test_fused_upsampling_equals_transposed_then_3x3_convolution(up_bias, conv_bias, size):
    torch.manual_seed(sum(size))
    up = nn.ConvTranspose2d(6, 4, 2, stride=2, bias=up_bias).double()
    conv = nn.Conv2d(4, 5, 3, padding=1, bias=conv_bias).double()
    with torch.no_grad():
        for module in (up, conv):
            if module.bias is not None:
                module.bias.normal_(0, 2)  # large biases: every border case shows
    x = torch.randn(2, 6, *size, dtype=torch.float64)
    start = torch.randn(2, 5, 2 * size[0], 2 * size[1], dtype=torch.float64)
    with torch.no_grad():
        expected = start + conv(up(x))
        fused = UpsamplingConv(up, conv)
        out = start.clone()
        result = fused(x, out)
    assert result is out  # added in place
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)
    # The two layers are left alone and the fused one holds copies.
    assert up.weight.shape == (6, 4, 2, 2) and fused.weight.shape == (20, 6, 2, 2)


def test_fused_upsampling_in_float32_channels_last():
    torch.manual_seed(1)
    up = nn.ConvTranspose2d(8, 4, 2, stride=2)
    conv = nn.Conv2d(4, 4, 3, padding=1, bias=False)
    fused = upsampling_conv(up, conv).to(memory_format=torch.channels_last)
    assert isinstance(fused, UpsamplingConv)
    x = torch.randn(1, 8, 12, 10).contiguous(memory_format=torch.channels_last)
    start = torch.randn(1, 4, 24, 20).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        out = fused(x, start.clone())
        expected = start + conv(up(x))
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "up, conv",
    [
        (nn.Upsample(scale_factor=2), nn.Conv2d(4, 4, 3, padding=1)),
        (nn.ConvTranspose2d(4, 4, 3, stride=2), nn.Conv2d(4, 4, 3, padding=1)),
        (nn.ConvTranspose2d(4, 4, 2, stride=2), nn.Conv2d(4, 4, 5, padding=2)),
        (nn.ConvTranspose2d(4, 4, 2, stride=2), nn.Conv2d(4, 4, 3, padding=1, groups=2)),
        (
            nn.ConvTranspose2d(4, 4, 2, stride=2),
            nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect"),
        ),
    ],
)
def test_upsampling_that_cannot_be_fused_runs_unfused(up, conv):
    module = upsampling_conv(up, conv)
    assert isinstance(module, UpThenConv)
    with pytest.raises(ValueError, match="UpsamplingConv fuses"):
        UpsamplingConv(up, conv)
    x = torch.randn(1, 4, 5, 6)
    fine = up(x)
    start = torch.randn_like(fine)
    with torch.no_grad():
        torch.testing.assert_close(module(x, start.clone()), start + conv(fine))


# ------------------------------------------------------------------------------ conv + ReLU


def operator_names(function) -> set[str]:
    with profile() as prof:
        function()
    return {event.key for event in prof.key_averages()}


def test_fused_relu_is_available_for_float32_and_bfloat16_only():
    assert fused_relu_available(torch.float32) == torch.backends.mkldnn.is_available()
    # bfloat16 needs oneDNN's AVX-512 kernels (or newer): probed, so either answer is right
    assert isinstance(fused_relu_available(torch.bfloat16), bool)
    assert not fused_relu_available(torch.float64)
    assert not fused_relu_available(torch.float16)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("channels_last", [True, False])
def test_conv_relu_equals_convolution_then_relu(dtype, channels_last):
    torch.manual_seed(2)
    conv = nn.Conv2d(5, 7, 3, padding=1).to(dtype)
    fused = ConvReLU(conv)
    x = torch.randn(2, 5, 17, 12, dtype=dtype)
    if channels_last:
        fused.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        expected = torch.relu(conv(x))
        result = fused(x)
        operators = operator_names(lambda: fused(x))
    assert result.dtype == dtype
    torch.testing.assert_close(result, expected, rtol=0, atol=0)
    assert (result == 0).any() and (result > 0).any()
    one_pass = "mkldnn::_convolution_pointwise" in operators
    assert one_pass == fused_relu_available(dtype)  # float64 takes the two-pass path
    assert ("aten::relu_" in operators) == (not one_pass)


@pytest.mark.filterwarnings("ignore:TF32 acceleration")
def test_conv_relu_respects_onednn_switched_off():
    torch.manual_seed(3)
    fused = ConvReLU(nn.Conv2d(3, 4, 3, padding=1, bias=False))
    x = torch.randn(1, 3, 9, 9)
    with torch.inference_mode(), torch.backends.mkldnn.flags(enabled=False):
        operators = operator_names(lambda: fused(x))
        result = fused(x)
    assert "mkldnn::_convolution_pointwise" not in operators
    torch.testing.assert_close(result, torch.relu(fused.conv(x)))


def test_conv_relu_refuses_what_it_cannot_fuse():
    with pytest.raises(ValueError, match="zero-padded Conv2d"):
        ConvReLU(nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect"))
    with pytest.raises(ValueError, match="zero-padded Conv2d"):
        ConvReLU(nn.Conv2d(3, 4, 3, padding="same"))


def test_fuse_conv_relu_merges_pairs_and_keeps_the_function():
    torch.manual_seed(4)
    layers = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1),
        nn.Identity(),
        nn.ReLU(inplace=True),
        nn.Conv2d(4, 4, 3, padding=1),
        nn.GroupNorm(2, 4),
        nn.ReLU(inplace=True),
        nn.Conv2d(4, 3, 1),
        nn.ReLU(),
        nn.Conv2d(3, 3, 3, padding=1, padding_mode="reflect"),
        nn.ReLU(),
    )
    x = torch.randn(1, 2, 10, 11)
    with torch.no_grad():
        expected = layers(x)
        fused = fuse_conv_relu(layers)
        result = fused(x)
    kinds = [type(m).__name__ for m in fused]
    assert kinds == ["ConvReLU", "Conv2d", "GroupNorm", "ReLU", "ConvReLU", "Conv2d", "ReLU"]
    torch.testing.assert_close(result, expected)
