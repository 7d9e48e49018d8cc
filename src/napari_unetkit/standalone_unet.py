"""A self-contained U-Net, shipped as the architecture file of exported bioimage.io packages.

This module imports nothing but PyTorch, so that a consumer of a bioimage.io package
(``bioimageio.core``, deepImageJ through its converters, a script) can rebuild the network from
the package's ``pytorch_state_dict`` weights without napari-unetkit. For the same configuration
its state dict has exactly the parameter names and shapes of :class:`napari_unetkit.model.UNet`,
and on inputs whose height and width are multiples of ``2**depth`` it computes the same
logits (napari-unetkit's ``UNet`` pads other sizes internally; this one requires such sizes,
as the package's input description says).

napari-unetkit never imports this file from a package it reads: it loads the weights into its
own ``UNet`` from the configuration stored in the package.
"""

from __future__ import annotations

import torch
from torch import nn


def _group_count(channels: int, max_groups: int = 8) -> int:
    """Largest number of groups (at most ``max_groups``) that divides ``channels``."""
    return max(g for g in range(1, min(max_groups, channels) + 1) if channels % g == 0)


def _norm_layer(norm: str, channels: int) -> nn.Module:
    if norm == "batch":
        return nn.BatchNorm2d(channels)
    if norm == "group":
        return nn.GroupNorm(_group_count(channels), channels)
    return nn.Identity()


def _double_conv(in_channels: int, out_channels: int, norm: str) -> nn.Sequential:
    """Two blocks of (3x3 'same' convolution, normalisation, ReLU)."""
    bias = norm == "none"
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=bias),
        _norm_layer(norm, out_channels),
        nn.ReLU(inplace=True),
        nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=bias),
        _norm_layer(norm, out_channels),
        nn.ReLU(inplace=True),
    )


def _up_layer(upsampling: str, in_channels: int, out_channels: int) -> nn.Module:
    if upsampling == "transpose":
        return nn.ConvTranspose2d(in_channels, out_channels, 2, stride=2)
    return nn.Sequential(
        nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
        nn.Conv2d(in_channels, out_channels, 1),
    )


class UNet(nn.Module):
    """U-Net (Ronneberger et al. 2015, 'same' padding) returning class probabilities.

    Parameters
    ----------
    in_channels, n_classes, depth, base_channels : int
        Image channels, output classes, number of 2x2 poolings, channels of the first level
        (level ``l`` has ``base_channels * 2**l``).
    norm : {"batch", "group", "none"}
        Normalisation after each 3x3 convolution.
    upsampling : {"transpose", "bilinear"}
        2x2 stride-2 transposed convolution, or bilinear up-sampling and a 1x1 convolution.
    dropout : float
        Dropout at the end of the contracting path (active in training mode only).
    final_kernel : {1, 3}
        Kernel size of the last convolution.
    probabilities : bool
        Return the softmax over the classes (default) instead of the logits.

    Notes
    -----
    Input: float32 ``(N, in_channels, Y, X)`` with ``Y`` and ``X`` multiples of ``2**depth``.
    Output: ``(N, n_classes, Y, X)``.
    """

    def __init__(
        self,
        in_channels: int = 1,
        n_classes: int = 2,
        depth: int = 4,
        base_channels: int = 16,
        norm: str = "batch",
        upsampling: str = "transpose",
        dropout: float = 0.5,
        final_kernel: int = 1,
        probabilities: bool = True,
    ) -> None:
        super().__init__()
        self.depth = int(depth)
        self.probabilities = bool(probabilities)

        def ch(level: int) -> int:
            return base_channels * 2**level

        self.encoders = nn.ModuleList(
            _double_conv(in_channels if level == 0 else ch(level - 1), ch(level), norm)
            for level in range(depth)
        )
        self.pool = nn.MaxPool2d(2)
        self.bottleneck = _double_conv(ch(depth - 1), ch(depth), norm)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.ups = nn.ModuleList(
            _up_layer(upsampling, ch(level + 1), ch(level)) for level in range(depth)
        )
        self.decoders = nn.ModuleList(
            _double_conv(2 * ch(level), ch(level), norm) for level in range(depth)
        )
        self.head = nn.Conv2d(ch(0), n_classes, final_kernel, padding=final_kernel // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return class probabilities (or logits) of a batch of images."""
        factor = 2**self.depth
        if not torch.jit.is_tracing() and (x.shape[-2] % factor or x.shape[-1] % factor):
            raise ValueError(
                f"Height and width must be multiples of {factor}, got shape {tuple(x.shape)}."
            )
        skips = []
        for encoder in self.encoders:
            x = encoder(x)
            skips.append(x)
            x = self.pool(x)
        x = self.dropout(self.bottleneck(x))
        for level in reversed(range(self.depth)):
            x = self.decoders[level](torch.cat([skips.pop(), self.ups[level](x)], dim=1))
        x = self.head(x)
        return torch.softmax(x, dim=1) if self.probabilities else x
