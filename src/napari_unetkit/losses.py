"""Training losses: weighted cross-entropy (the paper's loss) and an optional soft Dice term.

Both losses take logits ``(N, K, Y, X)``, integer targets ``(N, Y, X)`` and per-pixel weights
``(N, Y, X)``. A weight of 0 means "not annotated": such a pixel contributes nothing to the
loss and receives exactly zero gradient, whatever its target value.

The weighted cross-entropy is normalised by the sum of the weights in the batch rather than by
the number of pixels, so a sparsely annotated batch (few pixels with weight > 0) produces a loss
of the same size as a dense one instead of being diluted by the unannotated pixels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

#: Accepted values of the ``loss`` training setting.
LOSSES = ("wce", "wce+dice")
#: Smoothing term of the soft Dice ratio (keeps it defined for classes absent from a batch).
DICE_SMOOTH = 1.0


def _check_shapes(logits: torch.Tensor, target: torch.Tensor, weights: torch.Tensor) -> None:
    if logits.ndim != 4:
        raise ValueError(f"logits must have shape (N, K, Y, X), got {tuple(logits.shape)}.")
    expected = (logits.shape[0], *logits.shape[2:])
    for name, tensor in (("target", target), ("weights", weights)):
        if tuple(tensor.shape) != expected:
            raise ValueError(
                f"{name} must have shape {expected} to match logits {tuple(logits.shape)}, "
                f"got {tuple(tensor.shape)}."
            )


def _safe_target(target: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Targets with every ignored pixel (weight 0) set to class 0, so any value is allowed there."""
    ignored = weights <= 0
    if not bool(ignored.any()):
        return target
    return torch.where(ignored, torch.zeros_like(target), target)


def weighted_cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """Pixel-wise soft-max cross-entropy weighted by a weight map.

    ``loss = sum_x w(x) * (-log softmax(logits(x))[target(x)]) / sum_x w(x)`` over every pixel
    ``x`` of the batch.

    Parameters
    ----------
    logits : torch.Tensor
        Network output, shape ``(N, K, Y, X)``; computed in float32 whatever its dtype.
    target : torch.Tensor
        Class indices ``0..K-1``, shape ``(N, Y, X)`` (any value where the weight is 0).
    weights : torch.Tensor
        Non-negative per-pixel weights, shape ``(N, Y, X)``; 0 = ignore the pixel.

    Returns
    -------
    torch.Tensor
        A scalar. When all weights are 0 the result is 0 with zero gradient (never NaN).
    """
    _check_shapes(logits, target, weights)
    logits = logits.float()
    weights = weights.to(logits.dtype)
    target = _safe_target(target.long(), weights)
    per_pixel = F.cross_entropy(logits, target, reduction="none")
    total = weights.sum()
    weighted = (per_pixel * weights).sum()
    return weighted / total.clamp_min(torch.finfo(logits.dtype).tiny)


def soft_dice_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    weights: torch.Tensor,
    include_background: bool = False,
) -> torch.Tensor:
    """Soft Dice loss over the annotated pixels, averaged over classes.

    For each class ``k`` counted, ``dice_k = (2 sum p_k t_k + s) / (sum p_k + sum t_k + s)``
    with ``p_k`` the soft-max probability, ``t_k`` the one-hot target and the sums over every
    pixel of the batch whose weight is > 0 (the weight's size does not matter, only whether the
    pixel is annotated). The loss is ``1 - mean_k dice_k``.

    Parameters
    ----------
    logits, target, weights : torch.Tensor
        As in :func:`weighted_cross_entropy`.
    include_background : bool
        Count class 0 too. Instance models leave it out (class 0 is background); class models,
        whose every class is a real annotation, include it.

    Returns
    -------
    torch.Tensor
        A scalar in ``[0, 1]``; unannotated pixels get exactly zero gradient.
    """
    _check_shapes(logits, target, weights)
    n_classes = logits.shape[1]
    annotated = (weights > 0).unsqueeze(1).float()
    target = _safe_target(target.long(), weights)
    probs = torch.softmax(logits.float(), dim=1) * annotated
    one_hot = F.one_hot(target, n_classes).permute(0, 3, 1, 2).float() * annotated
    first = 0 if include_background else 1
    dims = (0, 2, 3)
    intersection = (probs * one_hot).sum(dims)[first:]
    sizes = probs.sum(dims)[first:] + one_hot.sum(dims)[first:]
    dice = (2.0 * intersection + DICE_SMOOTH) / (sizes + DICE_SMOOTH)
    return 1.0 - dice.mean()


def training_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    weights: torch.Tensor,
    loss: str = "wce",
    include_background: bool = False,
    dice_weight: float = 1.0,
) -> torch.Tensor:
    """Compute the loss the trainer minimises: ``"wce"`` or ``"wce+dice"``.

    Parameters
    ----------
    logits, target, weights : torch.Tensor
        As in :func:`weighted_cross_entropy`.
    loss : {"wce", "wce+dice"}
        Weighted cross-entropy alone, or plus ``dice_weight`` times :func:`soft_dice_loss`.
    include_background : bool
        Passed to :func:`soft_dice_loss`.
    dice_weight : float
        Factor of the Dice term.

    Returns
    -------
    torch.Tensor
        A scalar.
    """
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {loss!r}.")
    value = weighted_cross_entropy(logits, target, weights)
    if loss == "wce+dice":
        value = value + dice_weight * soft_dice_loss(logits, target, weights, include_background)
    return value
