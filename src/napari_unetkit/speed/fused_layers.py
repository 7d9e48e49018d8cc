"""Layers of the inference copy that do the work of two layers in one pass.

- :class:`UpsamplingConv`: a 2x2 stride-2 transposed convolution followed by a 3x3
  convolution, computed as one 2x2 convolution of the coarse map (no up-sampled map);
- :class:`ConvReLU`: a convolution whose ReLU is applied by oneDNN as it writes its output
  (a post-op), instead of in a second pass over the map.

Both compute the same function as the layers they replace, to float rounding (the ReLU fusion
is exact). :func:`napari_unetkit.speed.inference.inference_copy` builds them; the trained
model never contains them.
"""

from __future__ import annotations

import functools
import itertools

import torch
import torch.nn.functional as F
from torch import nn


def _is_2x2_up(up: nn.Module) -> bool:
    return (
        type(up) is nn.ConvTranspose2d
        and up.kernel_size == (2, 2)
        and up.stride == (2, 2)
        and up.padding == (0, 0)
        and up.output_padding == (0, 0)
        and up.dilation == (1, 1)
        and up.groups == 1
    )


def _is_3x3_same(conv: nn.Module) -> bool:
    return (
        type(conv) is nn.Conv2d
        and conv.kernel_size == (3, 3)
        and conv.stride == (1, 1)
        and conv.padding == (1, 1)
        and conv.dilation == (1, 1)
        and conv.groups == 1
        and conv.padding_mode == "zeros"
    )


def _fusable_upsampling(up: nn.Module, conv: nn.Module) -> bool:
    """Whether :class:`UpsamplingConv` can take the place of ``conv(up(x))``."""
    return _is_2x2_up(up) and _is_3x3_same(conv) and conv.in_channels == up.out_channels


def _zero_padded_conv(module: nn.Module) -> bool:
    """Whether ``module`` is a ``Conv2d`` with numeric zero padding (what oneDNN fuses)."""
    return (
        type(module) is nn.Conv2d
        and module.padding_mode == "zeros"
        and not isinstance(module.padding, str)
    )


class UpThenConv(nn.Module):
    """Add ``conv(up(x))`` to a map in place: up-sampling, then a convolution.

    The general form of :class:`UpsamplingConv`, for up-sampling layers it cannot fuse (the
    bilinear up-sampling of ``upsampling="bilinear"``).

    Parameters
    ----------
    up : torch.nn.Module
        Any 2x up-sampling layer.
    conv : torch.nn.Conv2d
        The convolution of its output.
    """

    def __init__(self, up: nn.Module, conv: nn.Conv2d) -> None:
        super().__init__()
        self.up = up
        self.conv = conv

    def forward(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """Add ``conv(up(x))`` to ``out`` in place and return ``out``."""
        up = self.up(x)
        return out.add_(self.conv(up))


class UpsamplingConv(nn.Module):
    """A 2x2 stride-2 transposed convolution and a 3x3 convolution, as one 2x2 convolution.

    Both are linear, so ``conv(up(x))`` is a linear function of the coarse map ``x``. Output
    pixel ``(2i + a, 2j + b)`` of the 3x3 convolution reads up-sampled pixels of rows ``2i + a
    - 1 .. 2i + a + 1``, which come from two coarse rows (``i - 1, i`` for ``a = 0``, ``i, i +
    1`` for ``a = 1``), and likewise for columns. So each of the four phases ``(a, b)`` is a
    2x2 convolution of ``x`` whose weights are products of the two layers' weights. One 2x2
    convolution with ``padding=1`` and the four phases as output-channel blocks computes all of
    them at the coarse resolution (output ``(h + 1) x (w + 1)``; phase ``(a, b)`` is its window
    starting at ``(a, b)``), and four strided additions interleave them into the fine map.

    The transposed convolution's bias reaches a fine pixel only through taps inside the map
    (the 3x3 convolution pads the up-sampled map with zeros): in the interior it is one
    constant per channel, folded into the fused convolution's bias; the first and last rows and
    columns get a correction each (:attr:`border`, corners included).

    Same result as the two layers to float rounding, without the up-sampled map: the
    multiply-accumulates per fine pixel drop from ``c_coarse * c + 9 c * c`` to ``4 c_coarse *
    c``, computed at the coarse resolution with four times the output channels (where oneDNN's
    kernels are more efficient), and one full-resolution map less is alive at a time.

    Parameters
    ----------
    up : torch.nn.ConvTranspose2d
        Kernel 2, stride 2, no padding, groups or dilation.
    conv : torch.nn.Conv2d
        3x3 kernel, stride 1, zero padding 1, no groups or dilation, reading ``up``'s output
        channels.
    """

    def __init__(self, up: nn.ConvTranspose2d, conv: nn.Conv2d) -> None:
        super().__init__()
        if not _fusable_upsampling(up, conv):
            raise ValueError(
                "UpsamplingConv fuses a 2x2 stride-2 transposed convolution and a 3x3 'same' "
                f"convolution of its output, got {up} and {conv}."
            )
        dtype = conv.weight.dtype
        with torch.no_grad():
            up_weight = up.weight.detach().double()  # (coarse, fine, 2, 2)
            weight = conv.weight.detach().double()  # (out, fine, 3, 3)
            out_channels = weight.shape[0]
            fused = weight.new_zeros(2, 2, out_channels, up_weight.shape[0], 2, 2)
            for a, b, dy, dx in itertools.product((0, 1), (0, 1), (-1, 0, 1), (-1, 0, 1)):
                coarse_y, r = divmod(a + dy, 2)  # coarse row offset and transposed-kernel row
                coarse_x, s = divmod(b + dx, 2)
                fused[a, b, :, :, coarse_y + 1 - a, coarse_x + 1 - b] += (
                    weight[:, :, dy + 1, dx + 1] @ up_weight[:, :, r, s].T
                )
            if up.bias is not None:
                taps = torch.einsum("ofyx,f->oyx", weight, up.bias.detach().double())
                # Bias reaching each pixel of a 3 x 3 map: corners, edges and the interior are
                # the nine cases of any map of two or more rows and columns.
                table = F.conv2d(weight.new_ones(1, 1, 3, 3), taps[:, None], padding=1)[0]
            else:
                table = weight.new_zeros(out_channels, 3, 3)
            interior = table[:, 1, 1].clone()
            border = table - interior[:, None, None]
            for i, j in itertools.product((0, 2), (0, 2)):
                border[:, i, j] -= border[:, i, 1] + border[:, 1, j]  # rows and columns add those
            bias = interior if conv.bias is None else interior + conv.bias.detach().double()
        self.out_channels = out_channels
        self.weight = nn.Parameter(
            fused.reshape(4 * out_channels, -1, 2, 2).to(dtype), requires_grad=False
        )
        self.bias = nn.Parameter(bias.repeat(4).to(dtype), requires_grad=False)
        self.register_buffer("border", border.to(dtype))
        self.has_border = up.bias is not None

    def forward(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """Add ``conv(up(x))`` to ``out`` (``(N, C, 2h, 2w)`` for ``x`` of ``h x w``) in place.

        Returns
        -------
        torch.Tensor
            ``out``.
        """
        height, width = x.shape[-2:]
        channels = self.out_channels
        phases = F.conv2d(x, self.weight, self.bias, padding=1)
        for a, b in itertools.product((0, 1), (0, 1)):
            block = 2 * a + b
            out[:, :, a::2, b::2] += phases[
                :, block * channels : (block + 1) * channels, a : a + height, b : b + width
            ]
        del phases
        if self.has_border:
            border = self.border
            out[:, :, 0, :] += border[:, 0, 1, None]
            out[:, :, -1, :] += border[:, 2, 1, None]
            out[:, :, :, 0] += border[:, 1, 0, None]
            out[:, :, :, -1] += border[:, 1, 2, None]
            for i, j in itertools.product((0, -1), (0, -1)):
                out[:, :, i, j] += border[:, 2 * (i < 0), 2 * (j < 0)]
        return out


def upsampling_conv(
    up: nn.Module, conv: nn.Conv2d, dtype: torch.dtype = torch.float32
) -> nn.Module:
    """Return a module adding ``conv(up(x))`` to a map: fused where possible and faster.

    Parameters
    ----------
    up : torch.nn.Module
        The up-sampling layer.
    conv : torch.nn.Conv2d
        The convolution of its output.
    dtype : torch.dtype
        The type the module will compute in. Only float32 and float64 levels are fused: in
        16 bits the strided additions that interleave the phases make the fused form slower
        than the two layers (see ``docs/performance.md``).

    Returns
    -------
    UpsamplingConv or UpThenConv
        Called as ``module(x, out)``.
    """
    if _fusable_upsampling(up, conv) and dtype in (torch.float32, torch.float64):
        return UpsamplingConv(up, conv)
    return UpThenConv(up, conv)


#: Floating-point types oneDNN's fused convolution + ReLU runs in on a CPU.
FUSED_RELU_DTYPES = (torch.float32, torch.bfloat16)


@functools.cache
def fused_relu_available(dtype: torch.dtype) -> bool:
    """Whether oneDNN's fused convolution + ReLU works here for ``dtype`` (probed once).

    The operator (``torch.ops.mkldnn._convolution_pointwise``, what ``torch.compile`` emits
    for a convolution followed by a ReLU on a CPU) is internal to PyTorch, so it is tried on a
    small input and compared with the two-pass result; any error or difference means no.
    """
    if dtype not in FUSED_RELU_DTYPES or not torch.backends.mkldnn.is_available():
        return False
    try:
        operator = torch.ops.mkldnn._convolution_pointwise
        generator = torch.Generator().manual_seed(0)
        x = torch.randn(1, 4, 6, 5, generator=generator).to(dtype)
        weight = torch.randn(3, 4, 3, 3, generator=generator).to(dtype)
        bias = torch.randn(3, generator=generator).to(dtype)
        fused = operator(x, weight, bias, [1, 1], [1, 1], [1, 1], 1, "relu", [], "")
        expected = F.relu(F.conv2d(x, weight, bias, padding=1))
        return bool(torch.allclose(fused, expected, rtol=1e-2, atol=1e-2))
    except Exception:  # an internal operator: anything wrong means "don't use it"
        return False


class ConvReLU(nn.Module):
    """``relu(conv(x))`` in one pass where oneDNN can apply the ReLU as a post-op.

    On a CPU, for float32 and bfloat16 input, with oneDNN enabled
    (``torch.backends.mkldnn.enabled``) and :func:`fused_relu_available`, the convolution
    writes rectified values directly; anywhere else (CUDA, float64, oneDNN switched off) it is
    the convolution followed by an in-place ReLU. Both give identical values.

    Parameters
    ----------
    conv : torch.nn.Conv2d
        The convolution (taken over, not copied).
    """

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        if not _zero_padded_conv(conv):
            raise ValueError(f"ConvReLU needs a zero-padded Conv2d, got {conv}.")
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``relu(conv(x))``."""
        conv = self.conv
        if (
            x.device.type == "cpu"
            and x.dtype == conv.weight.dtype
            and torch.backends.mkldnn.enabled
            and fused_relu_available(x.dtype)
        ):
            return torch.ops.mkldnn._convolution_pointwise(
                x,
                conv.weight,
                conv.bias,
                list(conv.padding),
                list(conv.stride),
                list(conv.dilation),
                conv.groups,
                "relu",
                [],
                "",
            )
        return F.relu(conv(x), inplace=True)


def fuse_conv_relu(layers: nn.Sequential) -> nn.Sequential:
    """Return ``layers`` without identities, each ``Conv2d`` + ``ReLU`` a :class:`ConvReLU`.

    Parameters
    ----------
    layers : torch.nn.Sequential
        Layers applied one after the other (modules are taken over, not copied).

    Returns
    -------
    torch.nn.Sequential
        The same function.
    """
    modules = [m for m in layers if type(m) is not nn.Identity]
    fused: list[nn.Module] = []
    for module in modules:
        if type(module) is nn.ReLU and fused and _zero_padded_conv(fused[-1]):
            fused[-1] = ConvReLU(fused[-1])
        else:
            fused.append(module)
    return nn.Sequential(*fused)
