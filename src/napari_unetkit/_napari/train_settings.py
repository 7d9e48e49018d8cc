"""The settings part of the "Train U-Net" widget: fields, defaults, tooltips, TrainConfig.

Every default comes from :class:`napari_unetkit.training.TrainConfig`, so the widget, the CLI
and scripts train the same way unless the user changes something.
"""

from __future__ import annotations

import re
from pathlib import Path

from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    FloatSpinBox,
    Label,
    LineEdit,
    SpinBox,
)
from qtpy.QtWidgets import QAbstractSpinBox

from napari_unetkit.augmentation import AugmentationSettings
from napari_unetkit.checks import MODEL_SUFFIX as SUFFIX
from napari_unetkit.checks import Problem, model_file_name, parse_channels, train_problems
from napari_unetkit.device import available_devices, describe_device, usable_cpu_count
from napari_unetkit.training import OPTIMIZERS, SCHEDULES, TrainConfig
from napari_unetkit.weightmap import DEFAULT_PRESET, PRESETS, WeightMapSettings, settings_from

#: Model sizes offered to the user -> number of feature maps of the first level.
MODEL_SIZES = {"small": 8, "medium": 16, "large": 32}
#: Folder of the suggested model file.
DEFAULT_MODEL_FOLDER = Path("~/unetkit-models")
#: Characters kept when a layer name becomes a file name.
_UNSAFE = re.compile(r"[^\w.+-]+")

_DEFAULTS = TrainConfig()


def default_size() -> str:
    """Return the model size whose width is the :class:`TrainConfig` default."""
    for name, channels in MODEL_SIZES.items():
        if channels == _DEFAULTS.base_channels:
            return name
    return "medium"


def auto_threads() -> int:
    """CPU threads used for training inside napari: one core is left for the viewer."""
    return max(1, usable_cpu_count() - 1)


def file_name_for(layer_name: str) -> str:
    """Return a safe model file name for an image layer, e.g. ``"nuclei.unet"``."""
    stem = _UNSAFE.sub("_", layer_name).strip("._") or "model"
    return stem + SUFFIX


def free_path(path: Path) -> Path:
    """Return ``path`` or, if that file exists, the first free ``<stem>-2.unet``, ``-3``, ...

    An existing model file is never overwritten: a new run next to it gets a new number.
    """
    path = model_file_name(path)
    number = 2
    candidate = path
    while candidate.exists():
        candidate = path.with_name(f"{path.stem}-{number}{path.suffix}")
        number += 1
    return candidate


def device_text(choice: str, threads: int) -> str:
    """Describe where training will run, e.g. ``"CPU (1 thread)"`` or ``"CUDA: A100 (80 GB)"``.

    Parameters
    ----------
    choice : str
        The device field: ``"auto"`` or a device name.
    threads : int
        CPU threads that training will use (the description of a CPU shows this count).
    """
    try:
        text = describe_device(choice)
    except (ValueError, RuntimeError) as error:
        return f"not available ({error})"
    if text.startswith("CPU"):
        return f"CPU ({threads} thread{'s' if threads != 1 else ''})"
    return text


def _lr_box(value: float) -> FloatSpinBox:
    box = FloatSpinBox(
        label="Learning rate",
        min=1e-6,
        max=1.0,
        step=1e-6,  # sets six decimals
        value=value,
        tooltip="How big the learning steps are. The default suits most data; lower it (e.g. "
        "0.0003) if the loss jumps around or training fails with 'diverged'.",
    )
    box.native.setStepType(QAbstractSpinBox.StepType.AdaptiveDecimalStepType)
    return box


class TrainSettings(Container):
    """Every training setting, with the advanced ones folded away behind a checkbox."""

    def __init__(self) -> None:
        super().__init__(labels=True)
        self._make_basic_fields()
        self._make_advanced_fields()
        self._suggested_name: str | None = None
        self.extend(
            [
                self.size,
                self.patch_size,
                self.batch_size,
                self.train_for,
                self.epochs,
                self.minutes,
                self.learning_rate,
                self.val_fraction,
                self.channels,
                self.weight_preset,
                self.w0,
                self.sigma,
                self.augment,
                self.device,
                self.device_info,
                self.path,
                self.show_advanced,
                self.advanced,
            ]
        )
        self.train_for.changed.connect(self._show_budget_field)
        self.show_advanced.changed.connect(self._show_advanced)
        self.weight_preset.changed.connect(self._apply_preset)
        for field in (self.w0, self.sigma):
            field.changed.connect(self._mark_custom)
        for field in (self.device, self.threads):
            field.changed.connect(self._update_device_info)
        self._show_budget_field()
        self._show_advanced()
        self._update_device_info()

    # -- construction -------------------------------------------------------------------------
    def _make_basic_fields(self) -> None:
        self.size = ComboBox(
            label="Model size",
            choices=tuple(MODEL_SIZES),
            value=default_size(),
            tooltip="small: fastest, fine for simple, clearly separated objects. medium: a good "
            "default. large: for difficult images (textures, many classes); slower, needs more "
            "annotated data.",
        )
        self.patch_size = SpinBox(
            label="Patch size (px)",
            min=32,
            max=1024,
            step=16,
            value=_DEFAULTS.patch_size,
            tooltip="Side of the square image pieces the network learns from. It should "
            "comfortably hold a few objects; larger patches need more memory.",
        )
        self.batch_size = SpinBox(
            label="Batch size",
            min=1,
            max=256,
            value=_DEFAULTS.batch_size,
            tooltip="Patches per learning step. Lower it if you run out of (GPU) memory.",
        )
        self.channels = LineEdit(
            label="Channels",
            value="all",
            tooltip="Colour or multichannel images: the channels the model reads, counted from "
            "0 (e.g. 0, 1 for the red nuclei and green cytoplasm of an RGB image whose blue is "
            "empty). 'all' reads every channel. Prediction picks the same channels.",
        )
        self.train_for = ComboBox(
            label="Train for",
            choices=(("a number of epochs", "epochs"), ("a time limit", "minutes")),
            value="epochs",
            tooltip="Stop after a fixed number of epochs, or when the time limit is reached. "
            "Either way the best model seen so far is kept.",
        )
        self.epochs = SpinBox(
            label="Epochs",
            min=1,
            max=100_000,
            value=_DEFAULTS.epochs or 50,
            tooltip="An epoch is a round of learning steps followed by a check on the "
            "validation part of your data.",
        )
        self.minutes = FloatSpinBox(
            label="Time limit (min)",
            min=0.1,
            max=100_000.0,
            step=1.0,
            value=10.0,
            tooltip="Wall-clock minutes, data preparation included.",
        )
        self.learning_rate = _lr_box(_DEFAULTS.learning_rate)
        self.val_fraction = FloatSpinBox(
            label="Validation fraction",
            min=0.0,
            max=0.9,
            step=0.05,
            value=_DEFAULTS.val_fraction,
            tooltip="Share of your annotated data kept aside to measure how well the model "
            "does on data it has not learned from (whole slices of a stack, or a strip of a "
            "single image). 0: no validation, the last epoch is kept.",
        )
        self._make_weight_fields()
        self.augment = CheckBox(
            text="Augment patches",
            value=_DEFAULTS.augmentation is not None,
            tooltip="Show the network flipped, rotated, brightness-changed and elastically "
            "deformed copies of your patches, so that it learns more from few annotations.",
        )
        self.device = ComboBox(
            label="Device",
            choices=("auto", *available_devices()),
            value="auto",
            tooltip="auto: a CUDA GPU, else Apple MPS, else the CPU.",
        )
        self.device_info = Label(label="Runs on", value="")
        self.path = FileEdit(
            label="Save model to",
            mode="w",
            filter=f"*{SUFFIX}",
            value=DEFAULT_MODEL_FOLDER / "model.unet",
            tooltip="The model file. An existing file is never overwritten: a number is "
            "appended instead (model-2.unet, ...).",
        )
        self.show_advanced = CheckBox(text="Show advanced settings", value=False)

    def _make_weight_fields(self) -> None:
        self.weight_preset = ComboBox(
            label="Weight map",
            choices=(*PRESETS, "custom"),
            value=_DEFAULTS.weightmap if _DEFAULTS.weightmap in PRESETS else "custom",
            tooltip="Instances mode: how strongly the network is pushed to keep the thin gaps "
            "between touching cells. paper: Ronneberger et al. 2015 (the default); bounded: "
            "the same gap weight with class weights that never drown it on sparse images; "
            "falk2019: the authors' Fiji tool (stronger gaps).",
        )
        preset = _DEFAULTS.weightmap_settings()
        self.w0 = FloatSpinBox(
            label="Gap weight (w0)",
            min=0.0,
            max=1000.0,
            step=1.0,
            value=preset.w0,
            tooltip="Extra weight on the gaps between touching cells (paper: 10).",
        )
        self.sigma = FloatSpinBox(
            label="Gap width (sigma, px)",
            min=0.5,
            max=100.0,
            step=0.5,
            value=preset.sigma,
            tooltip="How far the gap weight reaches, in pixels (paper: 5; about the gap size).",
        )

    def _make_advanced_fields(self) -> None:
        self.depth = SpinBox(
            label="Depth",
            min=2,
            max=6,
            value=_DEFAULTS.depth,
            tooltip="Number of down-sampling levels. Deeper sees more context (bigger objects).",
        )
        self.steps_per_epoch = SpinBox(
            label="Steps per epoch",
            min=0,
            max=100_000,
            value=_DEFAULTS.steps_per_epoch or 0,
            tooltip="Learning steps between two validations. 0: automatic (about one pass over "
            "the annotated pixels, 10 to 100 steps).",
        )
        self.seed = SpinBox(
            label="Random seed",
            min=0,
            max=2**31 - 1,
            value=_DEFAULTS.seed,
            tooltip="The same seed and settings give the same model on the CPU.",
        )
        self.schedule = ComboBox(
            label="LR schedule",
            choices=SCHEDULES,
            value=_DEFAULTS.schedule,
            tooltip="cosine: the learning rate slowly decreases to the end; constant: it stays.",
        )
        self.optimizer = ComboBox(
            label="Optimizer",
            choices=OPTIMIZERS,
            value=_DEFAULTS.optimizer,
            tooltip="adamw: robust default; sgd: the original paper's (momentum 0.99).",
        )
        self.foreground_bias = FloatSpinBox(
            label="Foreground bias",
            min=0.0,
            max=1.0,
            step=0.05,
            value=_DEFAULTS.foreground_bias,
            tooltip="Share of patches centred on an object rather than anywhere. Raise it for "
            "small, sparse objects.",
        )
        self.dice = CheckBox(
            text="Add a Dice loss",
            value=_DEFAULTS.loss == "wce+dice",
            tooltip="Adds a Dice term to the loss; can help when objects are very small or rare.",
        )
        self.threads = SpinBox(
            label="CPU threads",
            min=0,
            max=usable_cpu_count(),
            value=0,
            tooltip=f"Threads for CPU training. 0: automatic ({auto_threads()} here: all cores "
            "but one, so that napari stays responsive).",
        )
        self.advanced = Container(
            labels=True,
            widgets=[
                self.depth,
                self.steps_per_epoch,
                self.seed,
                self.schedule,
                self.optimizer,
                self.foreground_bias,
                self.dice,
                self.threads,
            ],
        )
        self.advanced.margins = (0, 0, 0, 0)

    # -- reactions ----------------------------------------------------------------------------
    def _show_budget_field(self, *_: object) -> None:
        by_epochs = self.train_for.value == "epochs"
        self.epochs.visible = by_epochs
        self.minutes.visible = not by_epochs

    def _show_advanced(self, *_: object) -> None:
        self.advanced.visible = self.show_advanced.value

    def _apply_preset(self, name: str) -> None:
        if name not in PRESETS:
            return
        with self.w0.changed.blocked(), self.sigma.changed.blocked():
            self.w0.value, self.sigma.value = PRESETS[name].w0, PRESETS[name].sigma

    def _mark_custom(self, *_: object) -> None:
        preset = PRESETS.get(self.weight_preset.value)
        if preset is not None and (preset.w0, preset.sigma) != (self.w0.value, self.sigma.value):
            self.weight_preset.value = "custom"

    def _update_device_info(self, *_: object) -> None:
        self.device_info.value = device_text(self.device.value, self.cpu_threads)

    def show_weight_fields(self, visible: bool) -> None:
        """Show the weight-map fields (instances mode) or hide them (classes mode)."""
        for field in (self.weight_preset, self.w0, self.sigma):
            field.visible = visible

    # -- values -------------------------------------------------------------------------------
    @property
    def cpu_threads(self) -> int:
        """CPU threads training will use (the field, or all cores but one when it is 0)."""
        return self.threads.value or auto_threads()

    def weightmap(self) -> WeightMapSettings:
        """Return the weight-map settings shown (a preset, or the default's with new w0/sigma)."""
        name = self.weight_preset.value
        if name in PRESETS:
            return PRESETS[name]
        return settings_from(DEFAULT_PRESET, w0=self.w0.value, sigma=self.sigma.value)

    def values(self, mode: str, channel_axis: int | None) -> dict:
        """Return the :class:`TrainConfig` keyword arguments the fields show.

        Raises
        ------
        ValueError
            If the Channels field cannot be read (see
            :func:`napari_unetkit.checks.parse_channels`).
        """
        by_epochs = self.train_for.value == "epochs"
        return {
            "mode": mode,
            "depth": self.depth.value,
            "base_channels": MODEL_SIZES[self.size.value],
            "patch_size": self.patch_size.value,
            "batch_size": self.batch_size.value,
            "epochs": self.epochs.value if by_epochs else None,
            "time_limit": None if by_epochs else self.minutes.value * 60.0,
            "steps_per_epoch": self.steps_per_epoch.value or None,
            "learning_rate": self.learning_rate.value,
            "optimizer": self.optimizer.value,
            "schedule": self.schedule.value,
            "loss": "wce+dice" if self.dice.value else "wce",
            "weightmap": self.weightmap(),
            "augmentation": AugmentationSettings() if self.augment.value else None,
            "foreground_bias": self.foreground_bias.value,
            "val_fraction": self.val_fraction.value,
            "seed": self.seed.value,
            "device": self.device.value,
            "threads": self.cpu_threads,
            "channel_axis": channel_axis,
            "channels": parse_channels(self.channels.value),
        }

    def problems(self, mode: str) -> list[Problem]:
        """Run the engine's training pre-check on these settings and the model file."""
        try:
            values = self.values(mode, channel_axis=None)
        except ValueError as error:  # the Channels field
            return [Problem("channels", str(error))]
        return train_problems(values, out=Path(self.path.value))

    def config(self, mode: str, channel_axis: int | None) -> TrainConfig:
        """Build the training configuration from the fields.

        Parameters
        ----------
        mode : {"instances", "classes"}
            What the labels mean.
        channel_axis : int or None
            Channel axis of the training images (-1 for RGB).

        Raises
        ------
        ValueError
            If the combination of settings is invalid (see :meth:`problems`).
        """
        return TrainConfig(**self.values(mode, channel_axis))

    def field_widgets(self) -> dict[str, object]:
        """Pre-check field name (a :class:`TrainConfig` name, or ``"out"``) -> its widget."""
        return {
            "base_channels": self.size,
            "patch_size": self.patch_size,
            "batch_size": self.batch_size,
            "epochs": self.epochs,
            "time_limit": self.minutes,
            "learning_rate": self.learning_rate,
            "val_fraction": self.val_fraction,
            "channels": self.channels,
            "weightmap": self.weight_preset,
            "device": self.device,
            "out": self.path,
            "depth": self.depth,
            "steps_per_epoch": self.steps_per_epoch,
            "seed": self.seed,
            "schedule": self.schedule,
            "optimizer": self.optimizer,
            "foreground_bias": self.foreground_bias,
            "loss": self.dice,
            "threads": self.threads,
        }

    def remembered_fields(self) -> dict:
        """Fields whose values are remembered across napari sessions (name -> widget)."""
        return {
            "size": self.size,
            "patch_size": self.patch_size,
            "batch_size": self.batch_size,
            "train_for": self.train_for,
            "epochs": self.epochs,
            "minutes": self.minutes,
            "learning_rate": self.learning_rate,
            "val_fraction": self.val_fraction,
            "channels": self.channels,
            "weight_preset": self.weight_preset,
            "w0": self.w0,
            "sigma": self.sigma,
            "augment": self.augment,
            "device": self.device,
            "path": self.path,
            "show_advanced": self.show_advanced,
            "depth": self.depth,
            "steps_per_epoch": self.steps_per_epoch,
            "seed": self.seed,
            "schedule": self.schedule,
            "optimizer": self.optimizer,
            "foreground_bias": self.foreground_bias,
            "dice": self.dice,
            "threads": self.threads,
        }

    # -- the model file -----------------------------------------------------------------------
    def suggest_file_name(self, image_name: str) -> None:
        """Name the model after the image, unless the user typed a file name of their own.

        The folder is kept; the name is replaced only if it is still the previous suggestion.
        """
        current = Path(self.path.value)
        if str(current) in ("", "."):
            current = DEFAULT_MODEL_FOLDER / "model.unet"
        if self._suggested_name not in (None, current.name):
            return
        name = file_name_for(image_name)
        self._suggested_name = name
        if current.name != name:
            self.path.value = current.with_name(name)

    def adopt_path_as_suggestion(self) -> None:
        """Treat the current (e.g. restored) file name as a suggestion that may be replaced."""
        self._suggested_name = Path(self.path.value).name

    def model_path(self) -> Path:
        """Return the file the next model goes to (``~`` expanded, never an existing file)."""
        return free_path(Path(self.path.value).expanduser())
