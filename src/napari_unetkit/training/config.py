"""Training settings: :class:`TrainConfig`, its checks and the choices it accepts.

:class:`TrainConfig` holds every setting of a run; :meth:`TrainConfig.validate` raises a
``ValueError`` (:class:`napari_unetkit.checks.InvalidInput`) carrying every invalid setting,
with the first one's sentence as its message (the rules: :func:`napari_unetkit.checks.
train_problems`), and
:meth:`TrainConfig.to_dict` / :meth:`TrainConfig.from_dict` round-trip it through JSON (the
model file stores it). Nothing here touches data or torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from napari_unetkit.augmentation import AugmentationSettings
from napari_unetkit.checks import raise_problems, train_problems
from napari_unetkit.model import UNetConfig
from napari_unetkit.normalization import NormalizationSettings
from napari_unetkit.weightmap import DEFAULT_PRESET, PRESETS, WeightMapSettings

#: Optimisers: AdamW, or SGD with (the paper's high) momentum.
OPTIMIZERS = ("adamw", "sgd")
#: Learning-rate schedules over the training budget.
SCHEDULES = ("cosine", "constant")
#: Most patches per step (far beyond what fits in memory with useful patch sizes).
MAX_BATCH_SIZE = 1024
#: Largest seed (NumPy's and PyTorch's generators both take it).
MAX_SEED = 2**32 - 1


@dataclass
class TrainConfig:
    """Every setting of a training run (JSON round trip with :meth:`to_dict` / :meth:`from_dict`).

    The defaults suit a CPU: the default network reaches a validation instance F1 of 0.9 on
    the synthetic nuclei within the demo's budget on two cores (how they were chosen:
    ``docs/performance.md``; current figures: ``docs/benchmarks.md``).

    Parameters
    ----------
    mode : {"instances", "classes"}
        ``"instances"``: labels are instance ids, the network learns background / foreground of
        the separated instances (2 classes). ``"classes"``: labels ``1..K`` are classes and 0
        means "not annotated" (scribbles are fine).
    depth, base_channels, norm, upsampling, dropout
        The architecture (see :class:`napari_unetkit.model.UNetConfig`); ignored when resuming
        from a model file, whose architecture is kept.
    patch_size : int
        Side of the square training patches, in pixels.
    batch_size : int
        Patches per step (sampled with replacement, so it may exceed the data).
    epochs : int or None
        Number of epochs; ``None`` when only ``time_limit`` bounds training.
    time_limit : float or None
        Wall-clock budget in seconds, counted from the call (data preparation included).
    steps_per_epoch : int or None
        Optimiser steps between validations; ``None``: enough patches to cover the annotated
        pixels of the training slices about once, clamped to ``[10, 100]``.
    learning_rate : float
        Peak learning rate.
    optimizer : {"adamw", "sgd"}
        AdamW, or SGD with ``momentum`` (the paper: 0.99).
    momentum : float
        SGD momentum (unused by AdamW).
    weight_decay : float
        Decoupled weight decay (AdamW) or L2 penalty (SGD).
    schedule : {"cosine", "constant"}
        Learning rate after the warm-up: cosine decay to ``min_lr_fraction`` of the peak over the
        budget, or constant.
    warmup : float
        Fraction of the budget spent linearly warming the learning rate up.
    min_lr_fraction : float
        Final learning rate of the cosine schedule, as a fraction of the peak.
    loss : {"wce", "wce+dice"}
        Weighted cross-entropy, optionally plus ``dice_weight`` times a soft Dice loss.
    dice_weight : float
        Factor of the Dice term.
    weightmap : WeightMapSettings, str or None
        Weight-map settings or a preset name (a key of
        :data:`napari_unetkit.weightmap.PRESETS`); default
        :data:`napari_unetkit.weightmap.DEFAULT_PRESET`. Instances mode only (classes mode
        balances the painted classes instead). ``None``: ``WeightMapSettings()``.
    augmentation : AugmentationSettings or None
        Patch augmentation; ``None``: none.
    foreground_bias : float
        Fraction of patches centred on a foreground (annotated, non-background) pixel.
    val_fraction : float
        Fraction of the slices held out for validation when no explicit validation data is
        given, in ``[0, 1)``; 0 trains on everything (the last epoch is then "best").
    seed : int
        Seed of the weight initialisation, the split, the patch sampler and dropout.
    device : str
        ``"auto"`` (CUDA, then Apple MPS, then CPU) or an explicit device.
    amp : bool or None
        Mixed precision (autocast); ``None``: on for CUDA and for CPUs that compute bfloat16
        natively (AVX512-BF16 or AMX,
        :func:`napari_unetkit.speed.precision.cpu_has_native_bfloat16`), off elsewhere.
    amp_dtype : {"bf16", "fp16"} or None
        Reduced-precision type; ``None`` picks bfloat16 on CPUs and on CUDA GPUs that support
        it, else float16 (with loss scaling).
    threads : int or None
        CPU threads; ``None``: every core this process may use.
    channel_axis : int or None
        Channel axis of the training images, if any.
    channels : list of int or None
        The channels the model reads, in order (indices into the channel axis, e.g. ``[0, 1]``
        for the nuclei and cytoplasm of an RGB image whose blue is empty); ``None``: all.
        Prediction picks the same channels from images with the training images' channel
        count.
    normalization : NormalizationSettings
        Percentile normalisation (stored in the model and repeated at prediction).
    class_names : list of str or None
        Names of the network's classes; default ``["background", "cell"]`` (instances) or
        ``["class 1", ...]`` (classes).
    data_name : str or None
        Name of the training data (the napari panel gives its first image layer's name),
        stored in the model description so that people can tell models apart; it does not
        change training.
    """

    mode: str = "instances"
    depth: int = 4
    base_channels: int = 16
    norm: str = "batch"
    upsampling: str = "transpose"
    dropout: float = 0.5
    patch_size: int = 128
    batch_size: int = 8
    epochs: int | None = 30
    time_limit: float | None = None
    steps_per_epoch: int | None = None
    learning_rate: float = 2e-3
    optimizer: str = "adamw"
    momentum: float = 0.99
    weight_decay: float = 1e-4
    schedule: str = "cosine"
    warmup: float = 0.05
    min_lr_fraction: float = 0.02
    loss: str = "wce"
    dice_weight: float = 1.0
    weightmap: WeightMapSettings | str | None = DEFAULT_PRESET
    augmentation: AugmentationSettings | None = field(default_factory=AugmentationSettings)
    foreground_bias: float = 0.5
    val_fraction: float = 0.2
    seed: int = 0
    device: str = "auto"
    amp: bool | None = None
    amp_dtype: str | None = None
    threads: int | None = None
    channel_axis: int | None = None
    channels: list[int] | None = None
    normalization: NormalizationSettings = field(default_factory=NormalizationSettings)
    class_names: list[str] | None = None
    data_name: str | None = None

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check every setting with the training pre-check the front ends run too.

        The rules and messages are :func:`napari_unetkit.checks.train_problems`.

        Raises
        ------
        napari_unetkit.checks.InvalidInput
            A ``ValueError`` carrying every problem; its message is the first one's.
        """
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        raise_problems(train_problems(values))

    def weightmap_settings(self) -> WeightMapSettings:
        """Return :attr:`weightmap` as a :class:`WeightMapSettings` (resolving preset names)."""
        if self.weightmap is None:
            return WeightMapSettings()
        if isinstance(self.weightmap, WeightMapSettings):
            return self.weightmap
        if isinstance(self.weightmap, str) and self.weightmap in PRESETS:
            return PRESETS[self.weightmap]
        raise ValueError(
            f"weightmap must be WeightMapSettings or one of {', '.join(PRESETS)}, "
            f"got {self.weightmap!r}."
        )

    def model_config(self, in_channels: int, n_classes: int) -> UNetConfig:
        """Return the architecture these settings ask for.

        Parameters
        ----------
        in_channels, n_classes : int
            Input channels and output classes (from the data).

        Returns
        -------
        UNetConfig
            The validated architecture.
        """
        return UNetConfig(
            in_channels=in_channels,
            n_classes=n_classes,
            depth=self.depth,
            base_channels=self.base_channels,
            norm=self.norm,
            upsampling=self.upsampling,
            dropout=self.dropout,
        )

    def to_dict(self) -> dict:
        """Return a JSON-serialisable description (stored in the model file)."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        weightmap = values["weightmap"]
        values["weightmap"] = (
            weightmap.to_dict() if isinstance(weightmap, WeightMapSettings) else weightmap
        )
        augmentation = values["augmentation"]
        values["augmentation"] = None if augmentation is None else augmentation.to_dict()
        values["normalization"] = self.normalization.to_dict()
        if values["class_names"] is not None:
            values["class_names"] = list(values["class_names"])
        return values

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        """Parse :meth:`to_dict` output; missing keys take the defaults.

        Parameters
        ----------
        data : dict
            A training description, e.g. from a model file or saved widget settings.

        Returns
        -------
        TrainConfig
            The validated settings.

        Raises
        ------
        ValueError
            For unknown keys or invalid values.
        """
        if not isinstance(data, dict):
            raise ValueError(f"A training description must be a dict, got {data!r}.")
        known = {f.name for f in fields(cls)}
        unknown = sorted(str(key) for key in data if key not in known)
        if unknown:
            raise ValueError(f"Unknown training settings: {', '.join(unknown)}.")
        values = dict(data)
        if isinstance(values.get("weightmap"), dict):
            values["weightmap"] = WeightMapSettings.from_dict(values["weightmap"])
        if isinstance(values.get("augmentation"), dict):
            values["augmentation"] = AugmentationSettings.from_dict(values["augmentation"])
        if isinstance(values.get("normalization"), dict):
            values["normalization"] = NormalizationSettings.from_dict(values["normalization"])
        return cls(**values)
