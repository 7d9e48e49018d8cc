"""The U-Net (Ronneberger, Fischer and Brox, 2015) and its configuration.

The network follows the paper's shape with 'same' padding, so no skip feature is cropped:

- contracting path: at each level two blocks of (3x3 convolution, normalisation, ReLU), then
  2x2 max-pooling; level ``l`` has ``base_channels * 2**l`` channels;
- bottleneck at level ``depth`` with dropout at its end (the paper's "drop-out at the end of the
  contracting path"; active only in training mode);
- expanding path: 2x2 stride-2 transposed convolution (or bilinear up-sampling followed by a 1x1
  convolution) halving the channels, concatenation with the skip features of the same level,
  then two (3x3 convolution, normalisation, ReLU) blocks;
- a final 1x1 (or 3x3) convolution to ``n_classes`` logits.

:meth:`UNet.forward` accepts any image size: it pads the input to a multiple of
``2**depth`` (mirroring the border, as the paper's overlap-tile strategy does) and crops the
logits back to the input size. :func:`receptive_halo` gives the context, in pixels on each side,
that one output pixel sees; the overlap-tile predictor uses it as the tile margin.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from napari_unetkit.checks import MAX_CLASSES, choice_problem, number_problem, whole_number_problem

#: Accepted values of :attr:`UNetConfig.norm`.
NORMS = ("batch", "group", "none")
#: Accepted values of :attr:`UNetConfig.upsampling`.
UPSAMPLINGS = ("transpose", "bilinear")
#: Accepted values of :attr:`UNetConfig.final_kernel`.
FINAL_KERNELS = (1, 3)
#: Upper bounds that keep a (possibly untrusted) configuration from allocating absurd networks.
MAX_DEPTH = 7
MAX_BASE_CHANNELS = 512
MAX_IN_CHANNELS = 1024
#: The most output classes: :data:`napari_unetkit.checks.MAX_CLASSES` (imported above).
#: Largest number of groups used by ``norm="group"``.
MAX_GROUPS = 8


@dataclass(frozen=True)
class UNetConfig:
    """Architecture of a :class:`UNet`.

    Parameters
    ----------
    in_channels : int
        Number of image channels the network reads.
    n_classes : int
        Number of output classes (logit channels); at least 2, probabilities are a softmax.
    depth : int
        Number of 2x2 max-pooling steps (the paper uses 4).
    base_channels : int
        Channels of the first level; level ``l`` has ``base_channels * 2**l`` (paper: 64).
    norm : {"batch", "group", "none"}
        Normalisation after each 3x3 convolution. Group normalisation uses statistics of the
        whole input, so its outputs are not strictly local (see :func:`receptive_halo`).
    upsampling : {"transpose", "bilinear"}
        2x2 stride-2 transposed convolution, or bilinear up-sampling followed by a 1x1
        convolution.
    dropout : float
        Dropout probability at the end of the contracting path, in ``[0, 1)``.
    final_kernel : {1, 3}
        Kernel size of the last convolution producing the logits.
    """

    in_channels: int = 1
    n_classes: int = 2
    depth: int = 4
    base_channels: int = 16
    norm: str = "batch"
    upsampling: str = "transpose"
    dropout: float = 0.5
    final_kernel: int = 1

    def __post_init__(self) -> None:
        problems = [
            whole_number_problem(getattr(self, name), name, low, high)
            for name, low, high in (
                ("in_channels", 1, MAX_IN_CHANNELS),
                ("n_classes", 2, MAX_CLASSES),
                ("depth", 1, MAX_DEPTH),
                ("base_channels", 1, MAX_BASE_CHANNELS),
            )
        ]
        problems += [
            choice_problem(self.norm, "norm", NORMS),
            choice_problem(self.upsampling, "upsampling", UPSAMPLINGS),
            number_problem(self.dropout, "dropout", 0.0, 1.0, open_high=True),
            choice_problem(self.final_kernel, "final_kernel", FINAL_KERNELS),
        ]
        problems = [problem.rstrip(".") for problem in problems if problem is not None]
        if problems:
            raise ValueError("Invalid U-Net configuration: " + "; ".join(problems) + ".")

    @property
    def downsampling_factor(self) -> int:
        """Total down-sampling of the bottleneck, ``2**depth``."""
        return 2**self.depth

    def channels(self, level: int) -> int:
        """Return the number of feature channels at ``level`` (0 = full resolution)."""
        return self.base_channels * 2**level

    def to_dict(self) -> dict:
        """Return a JSON-serialisable description (stored in model files)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: object) -> UNetConfig:
        """Parse :meth:`to_dict` output, rejecting anything else.

        Missing keys take their default values; unknown keys and invalid values raise.

        Parameters
        ----------
        data : dict
            The description, typically read from an (untrusted) model file.

        Returns
        -------
        UNetConfig
            The validated configuration.

        Raises
        ------
        ValueError
            If ``data`` is not a dict, has unknown keys, or holds invalid values.
        """
        if not isinstance(data, dict):
            raise ValueError(
                f"The architecture description must be a dictionary, got {type(data).__name__}."
            )
        known = {field.name for field in fields(cls)}
        unknown = sorted(str(key) for key in data if key not in known)
        if unknown:
            raise ValueError(
                f"The architecture description has unknown keys: {', '.join(unknown)}; "
                "it was probably written by a newer version of napari-unetkit."
            )
        return cls(**data)


def _group_count(channels: int) -> int:
    """Largest number of groups (at most :data:`MAX_GROUPS`) that divides ``channels``."""
    return max(g for g in range(1, min(MAX_GROUPS, channels) + 1) if channels % g == 0)


def _norm_layer(norm: str, channels: int) -> nn.Module:
    if norm == "batch":
        return nn.BatchNorm2d(channels)
    if norm == "group":
        return nn.GroupNorm(_group_count(channels), channels)
    return nn.Identity()


class _DoubleConv(nn.Sequential):
    """Two blocks of (3x3 'same' convolution, normalisation, ReLU)."""

    def __init__(self, in_channels: int, out_channels: int, norm: str) -> None:
        bias = norm == "none"  # a normalisation layer has its own shift
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=bias),
            _norm_layer(norm, out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=bias),
            _norm_layer(norm, out_channels),
            nn.ReLU(inplace=True),
        )


class _BilinearUp(nn.Sequential):
    """Bilinear 2x up-sampling followed by a 1x1 convolution that sets the channel count."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
            nn.Conv2d(in_channels, out_channels, 1),
        )


def _up_layer(config: UNetConfig, in_channels: int, out_channels: int) -> nn.Module:
    if config.upsampling == "transpose":
        return nn.ConvTranspose2d(in_channels, out_channels, 2, stride=2)
    return _BilinearUp(in_channels, out_channels)


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Mirror-pad the last two axes of ``x`` up to a multiple of ``multiple``.

    The padding is split between both sides. Reflection needs a pad smaller than the axis, so
    large pads are reflected in several steps (a mirrored tiling); an axis of length 1 is
    replicated.

    Parameters
    ----------
    x : torch.Tensor
        Tensor of shape ``(N, C, Y, X)``.
    multiple : int
        The target multiple (``2**depth``).

    Returns
    -------
    padded : torch.Tensor
        The padded tensor.
    offset : tuple of int
        ``(top, left)`` padding, where the original image starts in ``padded``.
    """
    offset = []
    for axis in (-2, -1):
        size = x.shape[axis]
        total = -size % multiple
        before = total // 2
        after = total - before
        offset.append(before)
        while before or after:
            current = x.shape[axis]
            if current == 1:
                step_before, step_after, mode = before, after, "replicate"
            else:
                step_before = min(before, current - 1)
                step_after = min(after, current - 1)
                mode = "reflect"
            pads = (
                (step_before, step_after, 0, 0) if axis == -1 else (0, 0, step_before, step_after)
            )
            x = F.pad(x, pads, mode=mode)
            before -= step_before
            after -= step_after
    return x, (offset[0], offset[1])


class UNet(nn.Module):
    """U-Net for 2D images of any size.

    Parameters
    ----------
    config : UNetConfig, optional
        The architecture; the default is ``UNetConfig()``.

    Notes
    -----
    Input: float32 ``(N, in_channels, Y, X)`` with any ``Y, X >= 1``. Output: logits
    ``(N, n_classes, Y, X)``. The input is mirror-padded to a multiple of ``2**depth``
    internally and the logits are cropped back.
    """

    def __init__(self, config: UNetConfig | None = None) -> None:
        super().__init__()
        config = UNetConfig() if config is None else config
        if not isinstance(config, UNetConfig):
            raise TypeError(f"UNet expects a UNetConfig, got {type(config).__name__}.")
        self.config = config
        ch = config.channels
        self.encoders = nn.ModuleList(
            _DoubleConv(config.in_channels if level == 0 else ch(level - 1), ch(level), config.norm)
            for level in range(config.depth)
        )
        self.pool = nn.MaxPool2d(2)
        self.bottleneck = _DoubleConv(ch(config.depth - 1), ch(config.depth), config.norm)
        self.dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        self.ups = nn.ModuleList(
            _up_layer(config, ch(level + 1), ch(level)) for level in range(config.depth)
        )
        self.decoders = nn.ModuleList(
            _DoubleConv(2 * ch(level), ch(level), config.norm) for level in range(config.depth)
        )
        self.head = nn.Conv2d(
            ch(0), config.n_classes, config.final_kernel, padding=config.final_kernel // 2
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """He (Kaiming normal, fan-in) initialisation of every convolution; norms to identity.

        Tensors on the ``meta`` device (a network built only for its shapes) are left alone:
        random initialisation has no meta kernel in C++, and its Python fallback imports
        about 900 modules (sympy, the compiler stack) and 150 MiB of memory.
        """
        for module in self.modules():
            if any(p.is_meta for p in module.parameters(recurse=False)):
                continue
            if isinstance(module, nn.ConvTranspose2d):
                # Each output pixel of a 2x2 stride-2 transposed convolution receives exactly one
                # tap per input channel, so its fan-in is the number of input channels.
                std = math.sqrt(2.0 / module.in_channels)
                nn.init.normal_(module.weight, 0.0, std)
            elif isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
            elif isinstance(module, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
                continue
            else:
                continue
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    @property
    def n_parameters(self) -> int:
        """Number of trainable parameters."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    @property
    def receptive_halo(self) -> int:
        """Context in pixels on each side of an output pixel; see :func:`receptive_halo`."""
        return receptive_halo(self.config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Compute logits.

        Parameters
        ----------
        x : torch.Tensor
            Images, float ``(N, in_channels, Y, X)``, any ``Y, X >= 1``.

        Returns
        -------
        torch.Tensor
            Logits ``(N, n_classes, Y, X)``.
        """
        if x.ndim != 4:
            raise ValueError(
                f"The U-Net expects a 4D tensor (N, C, Y, X), got shape {tuple(x.shape)}."
            )
        if x.shape[1] != self.config.in_channels:
            raise ValueError(
                f"The U-Net was built for {self.config.in_channels} input channel(s), "
                f"got {x.shape[1]} (input shape {tuple(x.shape)})."
            )
        height, width = x.shape[-2:]
        if height < 1 or width < 1:
            raise ValueError(f"The input image is empty (shape {tuple(x.shape)}).")
        x, (top, left) = pad_to_multiple(x, self.config.downsampling_factor)
        skips = []
        for encoder in self.encoders:
            x = encoder(x)
            skips.append(x)
            x = self.pool(x)
        x = self.dropout(self.bottleneck(x))
        for level in reversed(range(self.config.depth)):
            # One expression, so that the skip features, the up-sampled features and (inside
            # the decoder, after its first convolution) the concatenation are freed as soon as
            # they are used: in inference this lowers the peak memory by about a third.
            x = self.decoders[level](torch.cat([skips.pop(), self.ups[level](x)], dim=1))
        logits = self.head(x)
        return logits[..., top : top + height, left : left + width]


def receptive_interval(config: UNetConfig, position: int) -> tuple[int, int]:
    """Input pixels (along one axis) that can influence the output pixel at ``position``.

    Computed from the layer arithmetic, away from image borders: a 3x3 convolution at level
    ``l`` widens the interval by one level-``l`` pixel (``2**l`` input pixels) on each side;
    2x2 max-pooling maps coarse pixel ``i`` to fine pixels ``2i, 2i + 1``; a 2x2 stride-2
    transposed convolution maps fine pixel ``j`` to coarse pixel ``j // 2``; bilinear
    up-sampling (half-pixel centres) maps it to its two nearest coarse pixels.

    Parameters
    ----------
    config : UNetConfig
        The architecture.
    position : int
        Output pixel index along the axis, in the (padded) grid the network sees.

    Returns
    -------
    tuple of int
        ``(first, last)`` input pixel indices, inclusive.
    """

    def encoder_input(level: int, lo: int, hi: int) -> tuple[int, int]:
        if level == 0:
            return lo, hi
        return encoder_output(level - 1, 2 * lo, 2 * hi + 1)  # through 2x2 max-pooling

    def encoder_output(level: int, lo: int, hi: int) -> tuple[int, int]:
        return encoder_input(level, lo - 2, hi + 2)  # two 3x3 convolutions

    def decoder_output(level: int, lo: int, hi: int) -> tuple[int, int]:
        if level == config.depth:
            return encoder_output(level, lo, hi)  # the bottleneck
        lo, hi = lo - 2, hi + 2  # two 3x3 convolutions after the concatenation
        if config.upsampling == "transpose":
            coarse = lo // 2, hi // 2
        else:
            coarse = math.floor(lo / 2 - 0.25), math.floor(hi / 2 - 0.25) + 1
        skip = encoder_output(level, lo, hi)
        up = decoder_output(level + 1, *coarse)
        return min(skip[0], up[0]), max(skip[1], up[1])

    half = config.final_kernel // 2
    return decoder_output(0, position - half, position + half)


def receptive_halo(config: UNetConfig) -> int:
    """Pixels of context each output pixel sees on each side (worst case over positions).

    Pooling makes the receptive field depend on a pixel's position modulo ``2**depth``; the halo
    is the largest one-sided extent over all positions, so a tile margin of this size makes
    overlap-tile prediction equal to whole-image prediction for ``norm="batch"`` (in eval mode)
    and ``norm="none"``. Group normalisation uses statistics of the whole input, so its outputs
    depend weakly on every pixel; the halo then covers only the convolutional context.

    Parameters
    ----------
    config : UNetConfig
        The architecture.

    Returns
    -------
    int
        The halo in input pixels; e.g. 107 for the default depth 4 with transposed convolutions
        (122 with bilinear up-sampling).
    """
    halo = 0
    for position in range(config.downsampling_factor):
        first, last = receptive_interval(config, position)
        halo = max(halo, position - first, last - position)
    return halo
