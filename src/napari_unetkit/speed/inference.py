"""Inference-ready copies of a network: eval mode, batch norm folded, channels-last.

:class:`napari_unetkit.prediction.Predictor` never runs the model it was given directly: it
runs an :func:`inference_copy` of it, a separate module that computes the same function
(to float32 rounding, plus the rounding of any 16-bit levels ``precision`` asks for) faster.

Input: a :class:`~napari_unetkit.model.UNet` (or any module with the same forward contract), a
device and a precision. Output: a new module in eval mode whose tensors do not require
gradients, called like the model on ``(N, C, Y, X)`` float32 input and returning logits of the
same shape as the model's. The original model is never modified (a trainer validates with a
predictor built on the model it is training, then continues training it).

What the copy does differently:

- **eval mode, no autograd**: dropout is the identity, batch norm uses its running statistics;
- **batch norm folded into the preceding convolution**: in eval mode ``BN(conv(x))`` is the
  affine map ``gamma * (W x + b - mean) / sqrt(var + eps) + beta``, which is again a
  convolution with weights ``W * s`` and bias ``beta + (b - mean) * s``, ``s = gamma /
  sqrt(var + eps)`` (:func:`fold_batch_norm`, computed in float64). Group normalisation
  (statistics of the input itself) is left alone;
- **channels-last memory format** on CPU and CUDA (:data:`CHANNELS_LAST_DEVICES`): oneDNN and
  cuDNN run 3x3 convolutions on ``NHWC`` data without reordering every feature map;
- **no concatenation** (a :class:`~napari_unetkit.model.UNet` only, see
  :class:`InferenceUNet`): the first convolution of every decoder reads the skip features and
  the up-sampled features concatenated, ``W [s; u] = W_s s + W_u u``, so the copy splits its
  weights along the input channels, convolves the skip features (bias included), frees them,
  and adds the convolution of the up-sampled features in place; the concatenated map is never
  allocated;
- **no up-sampled map** at float32 levels
  (:class:`~napari_unetkit.speed.fused_layers.UpsamplingConv`): the 2x2 stride-2 transposed
  convolution and the 3x3 convolution of its output are one 2x2 convolution of the coarse map
  with four times the output channels, whose blocks are interleaved into the decoder's map;
- **ReLU applied by the convolution** (:class:`~napari_unetkit.speed.fused_layers.ConvReLU`)
  where oneDNN can do it as it writes the output;
- **16-bit coarse levels** (``precision="mixed"``, see :mod:`napari_unetkit.speed.precision`):
  the levels from 3 down and the bottleneck run in bfloat16 (float16 on older GPUs) with their
  weights stored in that type, the three finest levels and the output layer in float32; each
  level casts its input to its own type. ``"half"`` runs every level in 16 bits.

Invariant: a predictor keeps its copy only while :func:`state_fingerprint` of the model
(random projections of every parameter and buffer) is unchanged, so it always predicts with the
model's current weights, whatever changed them: an optimiser step (fused optimisers do not bump
tensor version counters, so those cannot be trusted), ``load_state_dict``, batch-norm
statistics updated by a training-mode forward pass.

Why each of these is here, what it gained and what was tried and rejected: ``docs/performance.md``.
"""

from __future__ import annotations

import copy
import itertools

import torch
from torch import nn

from napari_unetkit.model import UNet, pad_to_multiple
from napari_unetkit.speed.fused_layers import fuse_conv_relu, upsampling_conv
from napari_unetkit.speed.precision import level_dtypes, reduced_dtype

#: Device types on which the copy uses the channels-last memory format.
CHANNELS_LAST_DEVICES = ("cpu", "cuda")
#: Seed of the projection vectors of :func:`state_fingerprint`.
FINGERPRINT_SEED = 20150518

_projections: dict[torch.device, torch.Tensor] = {}


def _projection(length: int, device: torch.device) -> torch.Tensor:
    """Return a fixed pseudo-random float64 vector of ``length`` values in [0.5, 1.5)."""
    vector = _projections.get(device)
    if vector is None or vector.numel() < length:
        generator = torch.Generator().manual_seed(FINGERPRINT_SEED)
        size = max(length, 1 << 20)
        vector = (torch.rand(size, dtype=torch.float64, generator=generator) + 0.5).to(device)
        _projections[device] = vector
    return vector[:length]


def state_fingerprint(model: nn.Module) -> tuple:
    """Return a checksum of every parameter and buffer of ``model`` (names, shapes, values).

    Each tensor contributes its name, dtype, shape and the dot product of its values (as
    float64) with a fixed pseudo-random vector, so any change of the values is detected except
    with negligible probability. Computed where the tensors are, and read back as Python floats.

    Parameters
    ----------
    model : torch.nn.Module
        The model.

    Returns
    -------
    tuple
        Equal for equal states; compare with ``==``.
    """
    names, sums = [], []
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            names.append((name, str(tensor.dtype), tuple(tensor.shape), str(tensor.device)))
            values = tensor.detach().reshape(-1).to(torch.float64)
            sums.append(torch.dot(values, _projection(values.numel(), values.device)))
    totals = torch.stack([value.cpu() for value in sums]).tolist() if sums else []
    return tuple(names), tuple(totals)


def fold_batch_norm(conv: nn.Conv2d, norm: nn.BatchNorm2d) -> nn.Conv2d:
    """Return a convolution equal to ``norm(conv(x))`` with ``norm`` in eval mode.

    Parameters
    ----------
    conv : torch.nn.Conv2d
        The convolution (any kernel, stride, padding, groups; with or without bias).
    norm : torch.nn.BatchNorm2d
        The batch normalisation that follows it, with running statistics
        (``track_running_stats=True``) over ``conv.out_channels`` channels.

    Returns
    -------
    torch.nn.Conv2d
        A new convolution with a bias; ``conv`` and ``norm`` are not modified.

    Raises
    ------
    ValueError
        If ``norm`` has no running statistics or a different channel count.
    """
    if norm.running_mean is None or norm.running_var is None:
        raise ValueError("Batch norm without running statistics cannot be folded.")
    if norm.num_features != conv.out_channels:
        raise ValueError(
            f"The batch norm has {norm.num_features} channels, the convolution {conv.out_channels}."
        )
    with torch.no_grad():
        weight = conv.weight.detach().double()
        mean = norm.running_mean.detach().double()
        scale = torch.rsqrt(norm.running_var.detach().double() + norm.eps)
        if norm.weight is not None:
            scale = scale * norm.weight.detach().double()
        shift = -mean * scale
        if norm.bias is not None:
            shift = shift + norm.bias.detach().double()
        if conv.bias is not None:
            shift = shift + conv.bias.detach().double() * scale
        folded = nn.Conv2d(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            stride=conv.stride,
            padding=conv.padding,
            dilation=conv.dilation,
            groups=conv.groups,
            bias=True,
            padding_mode=conv.padding_mode,
            device="meta",  # no (slow, useless) random initialisation
        )
        shape = (-1,) + (1,) * (weight.ndim - 1)
        dtype = conv.weight.dtype
        folded.weight = nn.Parameter(
            (weight * scale.reshape(shape)).to(dtype), requires_grad=conv.weight.requires_grad
        )
        folded.bias = nn.Parameter(shift.to(dtype), requires_grad=conv.weight.requires_grad)
    return folded


def _foldable(conv: nn.Module, norm: nn.Module) -> bool:
    return (
        type(conv) is nn.Conv2d
        and type(norm) is nn.BatchNorm2d
        and norm.track_running_stats
        and norm.running_mean is not None
        and norm.num_features == conv.out_channels
    )


def fold_all_batch_norms(module: nn.Module) -> int:
    """Fold every ``Conv2d`` directly followed by a ``BatchNorm2d`` inside a ``Sequential``.

    The pair is replaced in place by the folded convolution and an ``nn.Identity``; call this
    on a copy. Batch norms anywhere else (or without running statistics) are left alone.

    Parameters
    ----------
    module : torch.nn.Module
        The module to transform (modified in place).

    Returns
    -------
    int
        The number of batch norms folded.
    """
    count = 0
    for sequential in [m for m in module.modules() if isinstance(m, nn.Sequential)]:
        names = list(sequential._modules)
        for first, second in itertools.pairwise(names):
            conv, norm = sequential._modules[first], sequential._modules[second]
            if _foldable(conv, norm):
                sequential._modules[first] = fold_batch_norm(conv, norm)
                sequential._modules[second] = nn.Identity()
                count += 1
    return count


def uses_channels_last(device: torch.device) -> bool:
    """Whether :func:`inference_copy` uses the channels-last memory format on ``device``."""
    return device.type in CHANNELS_LAST_DEVICES


def inference_copy(
    model: nn.Module, device: torch.device | None = None, precision: str = "float32"
) -> nn.Module:
    """Return an eval-mode copy of ``model`` that computes the same outputs faster.

    Parameters
    ----------
    model : torch.nn.Module
        The network (typically a :class:`napari_unetkit.model.UNet`); it is not modified (its
        mode, parameters, buffers and gradients stay as they are).
    device : torch.device, optional
        Where the copy runs (default: where ``model``'s first parameter is).
    precision : {"float32", "mixed", "half"}
        A precision resolved by :func:`napari_unetkit.speed.precision.resolve_precision`. Only a
        :class:`~napari_unetkit.model.UNet` can run in reduced precision; any other module
        stays float32.

    Returns
    -------
    torch.nn.Module
        A copy in eval mode with batch norms folded into their convolutions, no gradients
        required, in the channels-last memory format on CPU and CUDA (feed it channels-last
        float32 input for best speed; any layout gives the same result). Its outputs are
        float32 except with ``precision="half"``.
    """
    if device is None:
        first = next(model.parameters(), None)
        device = first.device if first is not None else torch.device("cpu")
    device = torch.device(device)
    with torch.no_grad():
        net = copy.deepcopy(model)
        net.eval()
        net.requires_grad_(False)
        fold_all_batch_norms(net)
        if isinstance(net, UNet):
            dtypes = level_dtypes(net.config.depth, precision, reduced_dtype(device))
            net = InferenceUNet(net, dtypes)
        net.to(device)
        if uses_channels_last(device):
            net.to(memory_format=torch.channels_last)
    return net


def max_pool_2x2(x: torch.Tensor) -> torch.Tensor:
    """2x2 max-pooling with stride 2 of ``(N, C, Y, X)`` maps with even ``Y`` and ``X``.

    The same values as ``nn.MaxPool2d(2)``, computed as the element-wise maximum of the four
    strided views; it keeps the memory format of ``x`` (and is faster than PyTorch's
    channels-last CPU kernel, see ``docs/performance.md``).
    """
    top = torch.maximum(x[..., 0::2, 0::2], x[..., 0::2, 1::2])
    return torch.maximum(top, torch.maximum(x[..., 1::2, 0::2], x[..., 1::2, 1::2]), out=top)


def split_input_channels(conv: nn.Conv2d, first: int) -> tuple[nn.Conv2d, nn.Conv2d]:
    """Split a convolution over concatenated inputs into one convolution per input.

    ``conv(torch.cat([a, b], 1))`` equals ``head(a) + tail(b)`` where ``a`` has ``first``
    channels; the bias (if any) goes to ``head``.

    Parameters
    ----------
    conv : torch.nn.Conv2d
        A convolution without groups.
    first : int
        Number of input channels of the first input, ``0 < first < conv.in_channels``.

    Returns
    -------
    head, tail : torch.nn.Conv2d
        New convolutions sharing no storage with ``conv``.
    """
    if conv.groups != 1 or not 0 < first < conv.in_channels:
        raise ValueError(
            f"Cannot split a convolution of {conv.in_channels} input channels in "
            f"{conv.groups} groups after channel {first}."
        )
    parts = []
    for start, stop, bias in ((0, first, conv.bias), (first, conv.in_channels, None)):
        part = nn.Conv2d(
            stop - start,
            conv.out_channels,
            conv.kernel_size,
            stride=conv.stride,
            padding=conv.padding,
            dilation=conv.dilation,
            bias=bias is not None,
            padding_mode=conv.padding_mode,
            device="meta",
        )
        part.weight = nn.Parameter(
            conv.weight.detach()[:, start:stop].clone(), requires_grad=conv.weight.requires_grad
        )
        if bias is not None:
            part.bias = nn.Parameter(bias.detach().clone(), requires_grad=bias.requires_grad)
        parts.append(part)
    return parts[0], parts[1]


class InferenceUNet(nn.Module):
    """A :class:`~napari_unetkit.model.UNet` rearranged for inference.

    Same outputs as the network it is built from in eval mode (dropout is the identity, up to
    float rounding), without concatenations: the first convolution of every decoder is split
    (:func:`split_input_channels`) into ``skip_convs[level]`` over the skip features (with the
    bias) and a convolution over the up-sampled features, which ``up_convs[level]`` (see
    :func:`upsampling_conv`) computes from the coarser features, fused with the transposed
    convolution where the network up-samples by one, and adds in place. Every feature map is
    released right after its last use. Built by :func:`inference_copy`; it takes over the
    modules of ``net``, which should be a copy.

    Parameters
    ----------
    net : UNet
        The network (batch norms already folded, if wanted).
    dtypes : list of torch.dtype, optional
        The floating-point type of each level (see
        :func:`napari_unetkit.speed.precision.level_dtypes`): ``depth`` levels, then the
        bottleneck. The modules of a level are converted to its type and each level casts its
        input to it. Default: float32 throughout.
    """

    def __init__(self, net: UNet, dtypes: list[torch.dtype] | None = None) -> None:
        super().__init__()
        self.config = net.config
        depth = net.config.depth
        self.dtypes = list(dtypes) if dtypes is not None else [torch.float32] * (depth + 1)
        if len(self.dtypes) != depth + 1:
            raise ValueError(f"Expected {depth + 1} level dtypes, got {len(self.dtypes)}.")
        self.encoders = nn.ModuleList(fuse_conv_relu(encoder) for encoder in net.encoders)
        if not (isinstance(net.pool, nn.MaxPool2d) and net.pool.kernel_size in (2, (2, 2))):
            raise ValueError("InferenceUNet expects the U-Net's 2x2 max-pooling.")
        self.bottleneck = fuse_conv_relu(net.bottleneck)
        self.skip_convs, self.up_convs, self.decoders = (
            nn.ModuleList(),
            nn.ModuleList(),
            nn.ModuleList(),
        )
        for level, decoder in enumerate(net.decoders):
            first, *rest = list(decoder)
            skip_conv, up_conv = split_input_channels(first, self.config.channels(level))
            self.skip_convs.append(skip_conv)
            self.up_convs.append(upsampling_conv(net.ups[level], up_conv, self.dtypes[level]))
            self.decoders.append(fuse_conv_relu(nn.Sequential(*rest)))
        self.head = net.head
        self.train(net.training)
        for level in range(depth):
            for modules in (self.encoders, self.skip_convs, self.up_convs, self.decoders):
                modules[level].to(self.dtypes[level])
        self.bottleneck.to(self.dtypes[depth])
        self.head.to(self.dtypes[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Compute logits ``(N, n_classes, Y, X)`` of images ``(N, in_channels, Y, X)``."""
        height, width = x.shape[-2:]
        x, (top, left) = pad_to_multiple(x, self.config.downsampling_factor)
        dtypes = self.dtypes
        skips = []
        for level, encoder in enumerate(self.encoders):
            x = encoder(x.to(dtypes[level]))  # .to() is free where the type is unchanged
            skips.append(x)
            x = max_pool_2x2(x)  # sizes are multiples of 2**depth (pad_to_multiple)
        x = self.bottleneck(x.to(dtypes[-1]))
        for level in reversed(range(self.config.depth)):
            # W [skip; up] = W_skip skip + W_up up(x). The skip features go as soon as they are
            # convolved; with a fused up-sampling at most two maps of this level are alive.
            out = self.skip_convs[level](skips.pop())
            out = self.up_convs[level](x.to(dtypes[level]), out)
            del x
            x = self.decoders[level](out)
            del out
        logits = self.head(x)
        return logits[..., top : top + height, left : left + width]
