"""The "Boundary weight map" widget: Labels layer in, weight map Image layer out."""

from __future__ import annotations

import napari.viewer
import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FloatSpinBox,
    Label,
    PushButton,
    create_widget,
)
from napari.layers import Image, Labels
from napari.utils.notifications import show_error

from napari_unetkit._napari.jobs import JobRunner, error_message
from napari_unetkit._napari.layers import (
    METADATA_KEY,
    labels_data,
    own_layer,
    placement,
    snapshot,
    unique_name,
)
from napari_unetkit._napari.problems import FieldMarks
from napari_unetkit._napari.settings import remember
from napari_unetkit._napari.surface import PanelSurface
from napari_unetkit._napari.train_inputs import MAX_SCANNED_PIXELS
from napari_unetkit.checks import Problem, weightmap_problems
from napari_unetkit.progress import Step
from napari_unetkit.weightmap import (
    BORDER_ON,
    CLASS_BALANCES,
    DEFAULT_PRESET,
    PRESETS,
    WeightMapSettings,
    weights_and_target,
)

CLASS_BALANCE_CHOICES = CLASS_BALANCES


def compute_weight_map_job(labels: np.ndarray, settings: WeightMapSettings):
    """Return a job computing weights and separated target slice by slice (for JobRunner)."""

    def job(emit, cancel):
        planes = labels.reshape((-1, *labels.shape[-2:]))
        weights = np.empty(planes.shape, np.float32)
        target = np.empty_like(planes)
        for index, plane in enumerate(planes):
            if cancel.is_set():
                return None
            weights[index], target[index] = weights_and_target(plane, settings=settings)
            emit(Step(index + 1, len(planes)))
        return weights.reshape(labels.shape), target.reshape(labels.shape)

    return job


class WeightMapWidget(PanelSurface, Container):
    """Compute the U-Net boundary weight map of a Labels layer and show it as an Image layer.

    Its public surface is :class:`~napari_unetkit._napari.surface.PanelSurface` (inputs,
    problems, start / stop / wait) plus :attr:`settings`.

    Parameters
    ----------
    viewer : napari.viewer.Viewer
        The viewer whose layers are read and written.
    """

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(labels=False)
        self._viewer = viewer
        self._runner = JobRunner("Weight map")
        self._alive = True  # False once Qt has deleted the widget (panel or viewer closed)
        self._error = ""
        self._done = ""  # what the finished run added, for the message
        self._labels = create_widget(annotation=Labels, label="Labels")
        self._labels.tooltip = "Instance labels: each cell painted with its own id, 0 = background."
        self._problems: list[Problem] = []
        self._marks = FieldMarks({"labels": self._labels})
        self._preset = ComboBox(
            label="Preset",
            choices=(*PRESETS, "custom"),
            value=DEFAULT_PRESET,
            tooltip="paper: Ronneberger et al. 2015 (w0 10, sigma 5, balanced classes), what "
            "training uses by default. bounded: the same, but neither class weighs more than 3 "
            "times the other (sparse images). falk2019: the authors' Fiji tool (ridge weight "
            "50, sigma 6, smooth background weights).",
        )
        self._w0 = FloatSpinBox(
            label="w0",
            value=10.0,
            min=0.0,
            max=1000.0,
            step=1.0,
            tooltip="Weight added on the gaps between touching cells (paper: 10).",
        )
        self._sigma = FloatSpinBox(
            label="sigma (px)",
            value=5.0,
            min=0.5,
            max=100.0,
            step=0.5,
            tooltip="How far the gap weight reaches, in pixels (paper: about 5).",
        )
        self._balance = ComboBox(
            label="Class balance",
            choices=CLASS_BALANCE_CHOICES,
            value=PRESETS[DEFAULT_PRESET].class_balance,
            tooltip="balanced: the rarer class weighs more (on sparse images much more); "
            "bounded: the same, but never more than 3 times the other class, so the gap weight "
            "still counts; none: 1 everywhere; falk: smooth background weights as in Falk et "
            "al. 2019.",
        )
        self._separate = CheckBox(
            text="Separate touching cells",
            value=True,
            tooltip="Cut a 1-2 px background line between touching cells, as for training.",
        )
        self._border_on = ComboBox(
            label="Gap weight on",
            choices=BORDER_ON,
            value="background",
            tooltip="background: only background pixels get the gap weight (paper); all: every "
            "pixel.",
        )
        self._show_target = CheckBox(
            text="Also add the separated target",
            value=False,
            tooltip="Adds the labels with the separating lines cut, as the network will see them.",
        )
        self._message = Label(value="")
        self._run = PushButton(text="Compute weight map")
        self._button = self._run
        self.extend(
            [
                self._labels,
                self._preset,
                self._w0,
                self._sigma,
                self._balance,
                self._separate,
                self._border_on,
                self._show_target,
                self._message,
                self._run,
            ]
        )
        self._preset.changed.connect(self._apply_preset)
        for field in (self._w0, self._sigma, self._balance):
            field.changed.connect(self._mark_custom)
        self._labels.changed.connect(self._validate)
        self._run.changed.connect(self._run_or_cancel)
        self.native.destroyed.connect(self._closed)
        remember(
            "weightmap",
            {
                "preset": self._preset,
                "w0": self._w0,
                "sigma": self._sigma,
                "class_balance": self._balance,
                "separate": self._separate,
                "border_on": self._border_on,
                "show_target": self._show_target,
            },
        )
        self._validate()

    def _closed(self, *_: object) -> None:
        """Stop the job once the widget is gone (panel or viewer closed); touch no widget."""
        self._alive = False
        self._runner.cancel()

    # -- settings -----------------------------------------------------------------------------
    def _apply_preset(self, name: str) -> None:
        if name not in PRESETS:
            return
        preset = PRESETS[name]
        with self._preset.changed.blocked():
            self._w0.value, self._sigma.value = preset.w0, preset.sigma
            self._balance.value = preset.class_balance
        self._preset.value = name

    def _mark_custom(self, *_: object) -> None:
        preset = PRESETS.get(self._preset.value)
        if preset is None:
            return
        matches = (preset.w0, preset.sigma, preset.class_balance) == (
            self._w0.value,
            self._sigma.value,
            self._balance.value,
        )
        if not matches:
            with self._preset.changed.blocked():
                self._preset.value = "custom"

    @property
    def settings(self) -> WeightMapSettings:
        """The weight-map settings currently shown in the widget."""
        base = PRESETS.get(self._preset.value, PRESETS[DEFAULT_PRESET])
        return WeightMapSettings(
            w0=self._w0.value,
            sigma=self._sigma.value,
            class_balance=self._balance.value,
            separate=self._separate.value,
            border_on=self._border_on.value,
            background_ratio=base.background_ratio,
            background_sigma=base.background_sigma,
        )

    # -- validation ---------------------------------------------------------------------------
    def _problem(self) -> str | None:
        layer = self._labels.value
        if layer is None:
            choose = "Choose a Labels layer (paint cells, or open File > Open Sample)."
            self._problems = [Problem("labels", choose)]
        else:
            data = labels_data(layer)
            self._problems = weightmap_problems(data, scan=_in_memory(data))
        self._marks.show(self._problems)
        return self._problems[0].message if self._problems else None

    def _notice(self) -> str:
        """Return a remark that does not stop the computation (an empty labels layer)."""
        layer = self._labels.value
        data = None if layer is None else labels_data(layer)
        if data is not None and _in_memory(data) and not np.any(data):
            return f"{layer.name!r} is empty: paint some cells first."
        return ""

    def _validate(self, *_: object) -> bool:
        problem = self._problem()
        if not self._runner.running:
            self._run.enabled = problem is None
        self._message.value = problem or self._notice()
        return problem is None

    def reset_choices(self, *_: object) -> None:
        """Refresh the layer list (napari calls this when layers change)."""
        if not self._alive:
            return
        super().reset_choices()
        self._validate()

    # -- running ------------------------------------------------------------------------------
    def _run_or_cancel(self, *_: object) -> None:
        if self._runner.running:
            self.stop()
            return
        self.start()

    def stop(self) -> None:
        """Cancel the running computation (no layer is added)."""
        self._runner.cancel()

    def _input_fields(self) -> dict:
        return {
            "labels": self._labels,
            "preset": self._preset,
            "w0": self._w0,
            "sigma": self._sigma,
            "class_balance": self._balance,
            "separate": self._separate,
            "border_on": self._border_on,
            "show_target": self._show_target,
        }

    def start(self):
        """Compute the weight map of the chosen layer in a worker; return the worker."""
        if not self._validate():
            return None
        layer = self._labels.value
        labels = snapshot(labels_data(layer))
        job = compute_weight_map_job(labels, self.settings)
        self._run.text = "Cancel"
        self._error = self._done = ""
        return self._runner.start(
            job,
            total=int(np.prod(labels.shape[:-2], dtype=np.int64)),
            on_event=lambda step: step.position,
            on_result=lambda result: self._show(layer, result),
            on_error=self._on_error,
            on_finished=self._finished,
        )

    def _on_error(self, error: BaseException) -> None:
        self._error = error_message(error, "Weight map")

    def _finished(self) -> None:
        if not self._alive:
            return
        self._run.text = "Compute weight map"
        if not self._validate():
            return
        if self._error:
            self._message.value = self._error
            return
        outcome = self._done or "Cancelled: no layer was added."
        # A remark about the labels (empty?) stays under the outcome.
        self._message.value = "\n".join(text for text in (outcome, self._notice()) if text)

    def _show(self, source: Labels, result) -> None:
        if result is not None and self._alive:  # None: cancelled
            layer = show_weight_map(
                self._viewer, source, *result, self.settings, self._show_target.value
            )
            self._done = (
                f"Done: the weight map of {source.name!r} is the layer {layer.name!r} "
                "(bright = heavy)."
            )


def show_weight_map(
    viewer: napari.viewer.Viewer,
    source: Labels,
    weights: np.ndarray,
    target: np.ndarray,
    settings: WeightMapSettings,
    add_target: bool = False,
) -> Image:
    """Add (or refresh) the ``<labels> weights`` Image layer, and optionally the target.

    The weights layer is replaced on later runs only if this plugin made it; the separated
    target always goes to a new Labels layer, since a user may have painted on an older one.
    Returns the weights layer.
    """
    name = f"{source.name} weights"
    existing = own_layer(viewer, name, "weightmap")
    limits = (0.0, float(max(weights.max(initial=0.0), 1e-6)))
    if existing is not None:
        existing.data = weights
        existing.contrast_limits = limits
        existing.metadata["settings"] = settings.to_dict()
        layer = existing
    else:
        layer = viewer.add_image(
            weights,
            name=unique_name(viewer, name),
            colormap="inferno",
            contrast_limits=limits,
            blending="additive",
            metadata={METADATA_KEY: "weightmap", "settings": settings.to_dict()},
            **placement(source),
        )
    if add_target:
        viewer.add_labels(
            target,
            name=unique_name(viewer, f"{source.name} separated"),
            metadata={METADATA_KEY: "separated"},
            **placement(source),
        )
    return layer


def _in_memory(data: object) -> bool:
    """Whether a labels array is a NumPy array small enough to scan on every check."""
    return isinstance(data, np.ndarray) and data.size <= MAX_SCANNED_PIXELS


#: Runners of menu-started jobs, kept alive until their job ends.
_MENU_JOBS: set[JobRunner] = set()


def weight_map_of_active_layer(viewer: napari.viewer.Viewer) -> None:
    """Layer-menu command: the default weight map of the selected Labels layer, in a worker."""
    layer = viewer.layers.selection.active
    if not isinstance(layer, Labels):
        show_error("Select a Labels layer to compute its boundary weight map.")
        return
    settings = PRESETS[DEFAULT_PRESET]
    labels = snapshot(labels_data(layer))
    runner = JobRunner("Weight map")
    _MENU_JOBS.add(runner)
    runner.start(
        compute_weight_map_job(labels, settings),
        total=int(np.prod(labels.shape[:-2], dtype=np.int64)),
        on_event=lambda step: step.position,
        on_result=lambda result: result and show_weight_map(viewer, layer, *result, settings),
        on_finished=lambda: _MENU_JOBS.discard(runner),
    )
