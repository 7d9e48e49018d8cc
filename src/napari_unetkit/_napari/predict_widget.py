"""The "Predict with U-Net" widget: a model and an Image layer in, a new Labels layer out.

The model is either the one trained in this session (:data:`napari_unetkit._napari.session.
SESSION`) or a ``.unet`` file (or a bioimage.io package exported by napari-unetkit); the
"Export to bioimage.io..." button (:mod:`~napari_unetkit._napari.export_action`) packages the
chosen model. Every input is checked as the user edits it; the reason Run is
disabled is written in the widget. Prediction runs in a :class:`~napari_unetkit._napari.jobs.
JobRunner` worker; its result is always added as new layers, and a cancelled run adds nothing.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field

import napari.viewer
import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FloatSpinBox,
    Label,
    ProgressBar,
    PushButton,
    SpinBox,
    create_widget,
)
from napari.layers import Image, Layer
from napari.qt.threading import GeneratorWorker
from numpy.typing import ArrayLike
from qtpy.QtWidgets import QSizePolicy

from napari_unetkit import layout
from napari_unetkit._napari.export_action import ExportAction
from napari_unetkit._napari.jobs import Job, JobRunner, error_message
from napari_unetkit._napari.layers import (
    METADATA_KEY,
    image_data,
    image_dtype_problem,
    placement,
    unique_name,
)
from napari_unetkit._napari.model_chooser import (
    SESSION_SOURCE,
    ChosenModel,
    ModelChooser,
    RecentModels,
)
from napari_unetkit._napari.predict_bigdata import BigDataOptions
from napari_unetkit._napari.problems import FieldMarks
from napari_unetkit._napari.settings import remember
from napari_unetkit._napari.surface import PanelSurface
from napari_unetkit._napari.torch_guard import protect_from_triton_crash
from napari_unetkit.checks import Problem, predict_problems
from napari_unetkit.device import available_devices, describe_device
from napari_unetkit.modelfile import describe_model
from napari_unetkit.prediction import PredictionResult, Predictor
from napari_unetkit.progress import JobStarted, SliceProgress, Step
from napari_unetkit.tiling import MAX_AUTO_TILE_CPU, default_halo

RUN_TEXT = "Run"
CANCEL_TEXT = "Cancel"

TILE_TOOLTIP = (
    "Size of the square tiles the image is cut into, in pixels (rounded up to a multiple of "
    "2**depth). 0 = automatic: the largest tile that fits the memory of the device (CPU: up "
    f"to {MAX_AUTO_TILE_CPU} px). Each tile also reads some context around it, so the result "
    "does not depend on the tile size; choose a smaller size if you run out of memory."
)


@dataclass(frozen=True)
class PredictSettings:
    """What the user chose in the widget, as passed to :meth:`Predictor.predict`."""

    output: str = "instances"
    threshold: float | None = None  # None: the model's own
    min_size: int | None = None  # None: the model's own
    link_3d: bool = False
    probabilities: bool = False
    tta: bool = False
    tile_size: int | None = None
    device: str = "auto"
    slices: list[tuple[int, ...]] | None = None

    def to_dict(self) -> dict:
        """Return the settings as a JSON-friendly dictionary (for layer metadata)."""
        values = {name: getattr(self, name) for name in self.__dataclass_fields__}
        if self.slices is not None:
            values["slices"] = [list(index) for index in self.slices]
        return values


@dataclass
class RunContext:
    """What a running prediction needs to turn its result into layers."""

    image: Image
    model: ChosenModel
    settings: PredictSettings
    started: float = field(default_factory=time.perf_counter)
    device: str = ""
    tiles_per_slice: int = 1

    def layer_metadata(self) -> dict:
        """Where a result layer comes from: model, its summary, image, settings, device."""
        return {
            "model": self.model.label,
            "model_summary": describe_model(self.model.description),
            "image": self.image.name,
            "settings": self.settings.to_dict(),
            "device": self.device,
        }


# ------------------------------------------------------------------------------ validation


def image_problems(
    layer: Image, chosen: ChosenModel, tile_size: int | None = None
) -> list[Problem]:
    """Run the engine's prediction pre-check on an image layer for a model.

    ``tile_size`` (``None``: automatic) is checked against the model's halo as ``unetkit
    predict --tile-size`` is (field ``tile_size``); the image's problems have field ``image``.
    """
    data, channel_axis = image_data(layer)
    return predict_problems(
        image_shape=tuple(data.shape),
        channel_axis=channel_axis,
        in_channels=chosen.in_channels,
        tile_size=tile_size,
        halo=default_halo(chosen.model.config),
    )


def tile_problems(chosen: ChosenModel, tile_size: int | None) -> list[Problem]:
    """Run the pre-check of the tile size alone (see :func:`image_problems`), for Folder mode."""
    return predict_problems(tile_size=tile_size, halo=default_halo(chosen.model.config))


def visible_slice(viewer: napari.viewer.Viewer, layer: Image) -> tuple[int, ...] | None:
    """Return the index of ``layer``'s slice shown in the viewer (``None`` if none is shown).

    The viewer's world position is mapped into the layer's data coordinates, so layers with a
    scale, a translation or fewer dimensions than the viewer are handled; the leading
    (non-YX) data axes give the slice index.
    """
    data, channel_axis = image_data(layer)
    sizes = layout.slice_index_shape(tuple(data.shape), channel_axis)
    position = np.asarray(layer.world_to_data(viewer.dims.point))
    index = tuple(int(value) for value in np.round(position[: len(sizes)]))
    if not all(0 <= i < n for i, n in zip(index, sizes, strict=True)):
        return None
    return index


# ------------------------------------------------------------------------------ the job


def tiles_per_slice(shape: tuple[int, int], tile_size: int) -> int:
    """Return how many tiles :class:`Predictor` cuts a ``(Y, X)`` slice into."""
    return math.ceil(shape[0] / tile_size) * math.ceil(shape[1] / tile_size)


def prediction_job(
    chosen: ChosenModel, image: ArrayLike, channel_axis: int | None, settings: PredictSettings
) -> Job:
    """Return a job that predicts ``image`` with ``chosen`` (for :class:`JobRunner`).

    The job first emits a :class:`~napari_unetkit.progress.JobStarted` (device, tiles per
    slice), then a :class:`~napari_unetkit.progress.SliceProgress` after every tile batch; it
    returns the :class:`PredictionResult`. The image is read slice by slice (dask stays lazy).
    """

    def job(emit, cancel) -> PredictionResult:
        model = chosen.model
        if chosen.origin == SESSION_SOURCE:
            model = copy.deepcopy(model)  # Predictor moves the model; the session's stays put
        predictor = Predictor(
            model,
            chosen.description,
            device=settings.device,
            tile_size=settings.tile_size,
            tta=settings.tta,
        )
        yx = layout.slice_shape(tuple(image.shape), channel_axis)
        emit(
            JobStarted(describe_device(predictor.device), tiles_per_slice(yx, predictor.tile_size))
        )
        return predictor.predict(
            image,
            channel_axis,
            output=settings.output,
            threshold=settings.threshold,
            min_size=settings.min_size,
            link_3d=settings.link_3d,
            return_probabilities=settings.probabilities,
            slices=settings.slices,
            progress=lambda done, total: emit(SliceProgress(done, total)),
            cancel=cancel,
        )

    return job


# ------------------------------------------------------------------------------ results


def _class_names(description: dict, count: int) -> list[str]:
    names = description.get("class_names")
    if isinstance(names, list) and len(names) == count:
        return [str(name) for name in names]
    return [f"class {k + 1}" for k in range(count)]


def add_prediction_layers(
    viewer: napari.viewer.Viewer, result: PredictionResult, context: RunContext
) -> list[Layer]:
    """Add the labels (and probability) layers of a finished prediction; return them."""
    source = context.image
    info = context.layer_metadata()
    added = []
    if result.labels is not None:
        added.append(
            viewer.add_labels(
                result.labels,
                name=unique_name(viewer, f"{source.name} prediction"),
                metadata={METADATA_KEY: "prediction", "output": result.output, **info},
                **placement(source),
            )
        )
    if result.probabilities is not None:
        added.extend(_add_probabilities(viewer, result, source, info))
    return added


def _add_probabilities(
    viewer: napari.viewer.Viewer, result: PredictionResult, source: Image, info: dict
) -> list[Image]:
    probabilities = result.probabilities
    if result.description.get("mode") == "instances":
        planes = [(f"{source.name} probability", probabilities)]
    else:  # one layer per class
        names = _class_names(result.description, probabilities.shape[0])
        planes = [
            (f"{source.name} probability {name}", plane)
            for name, plane in zip(names, probabilities, strict=True)
        ]
    return [
        viewer.add_image(
            plane,
            name=unique_name(viewer, name),
            colormap="magma",
            contrast_limits=(0.0, 1.0),
            blending="additive",
            metadata={METADATA_KEY: "probability", **info},
            **placement(source),
        )
        for name, plane in planes
    ]


def summary(result: PredictionResult, context: RunContext) -> str:
    """One sentence about a finished prediction, for the widget."""
    elapsed = time.perf_counter() - context.started
    count = len(result.slices)
    what = f"{count} slice{'s' if count != 1 else ''}"
    found = ""
    if result.labels is not None and result.output == "instances":
        found = f": {int(result.labels.max(initial=0))} instances"  # ids are 1..N
    return f"Predicted {what}{found} in {elapsed:.1f} s on {context.device}."


# ------------------------------------------------------------------------------ the widget


class PredictWidget(PanelSurface, Container):
    """Predict instance or semantic labels of an Image layer with a trained U-Net.

    Its public surface is :class:`~napari_unetkit._napari.surface.PanelSurface` (inputs,
    problems, start / stop / wait) plus :attr:`model`, :attr:`settings`, :attr:`about`,
    :attr:`loading`, :attr:`progress`, :attr:`bigdata`, :attr:`export` and :attr:`recent`.

    Parameters
    ----------
    viewer : napari.viewer.Viewer
        The viewer whose layers are read and written.
    """

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(labels=True)
        # Loading a model file imports torch._dynamo, hence Triton: refuse it where it would
        # crash napari (next to the OpenGL driver's LLVM).
        protect_from_triton_crash()
        self._viewer = viewer
        self._runner = JobRunner("Prediction")
        self._context: RunContext | None = None
        self._cancelled = False
        self._outcome: str | None = None
        self._alive = True  # False once Qt has deleted the widget (panel or viewer closed)
        self._problems: list[Problem] = []
        self._build_fields()
        self._marks = FieldMarks(
            {
                "model": self._chooser.file,
                "image": self._image,
                "tile_size": self._tile_size,
                "threshold": self._threshold,
                "min_size": self._min_size,
            }
        )
        self._export = ExportAction(self)
        remember(
            "predict",
            {
                "model_file": self._chooser.file,
                "output": self._output,
                "own_instance_settings": self._own_settings,
                "link_3d": self._link_3d,
                "probabilities": self._probabilities,
                "tta": self._tta,
                "tile_size": self._tile_size,
                "device": self._device,
            },
        )
        self._connect()
        self._chooser.start()

    # -- construction -------------------------------------------------------------------------
    def _build_fields(self) -> None:
        self._chooser = ModelChooser(on_change=self._validate)
        self._image = create_widget(annotation=Image, label="Image")
        self._image.tooltip = "2D, RGB, or a stack (3D/4D) predicted slice by slice."
        self._output = ComboBox(
            label="Output",
            choices=("instances", "semantic"),
            value="instances",
            tooltip="instances: every object gets its own id. semantic: one label per class "
            "(instance models: 1 = foreground).",
        )
        self._own_settings = CheckBox(
            text="Use the model's instance settings",
            value=True,
            tooltip="The threshold and smallest object size chosen for this model on its "
            "validation data after training. Untick to set your own.",
        )
        self._threshold = FloatSpinBox(
            label="Threshold",
            value=0.5,
            min=0.05,
            max=0.95,
            step=0.05,
            tooltip="Foreground probability above which a pixel belongs to an object. Lower "
            "it if objects are missed or too small, raise it if they merge.",
        )
        self._min_size = SpinBox(
            label="Smallest object (px)",
            value=10,
            min=0,
            max=1_000_000,
            tooltip="Objects with fewer pixels are removed (debris, noise). Raise it if small "
            "fragments appear.",
        )
        self._link_3d = CheckBox(
            text="Link instances across slices (3D)",
            value=False,
            tooltip="Give an object the same id in neighbouring slices where it overlaps, to "
            "get 3D objects from a Z stack.",
        )
        self._probabilities = CheckBox(
            text="Also add probabilities",
            value=False,
            tooltip="Add the network's probabilities (0..1) as an image layer.",
        )
        self._tta = CheckBox(
            text="Test-time augmentation (4x slower)",
            value=False,
            tooltip="Average the predictions of the image and its flips: smoother, slower.",
        )
        # "0 = auto" is in the label: magicgui's spin box cannot show a text instead of 0.
        self._tile_size = SpinBox(
            label="Tile size (px, 0 = auto)",
            value=0,
            min=0,
            max=8192,
            step=16,
            tooltip=TILE_TOOLTIP,
        )
        self._device = ComboBox(
            label="Device",
            choices=device_choices(),
            value="auto",
            tooltip="Where the network runs. auto: CUDA GPU, else Apple MPS, else CPU.",
        )
        self._current_slice = CheckBox(
            text="Current slice only (preview)",
            value=False,
            tooltip="Predict only the slice shown in the viewer; the other slices stay 0.",
        )
        self._message = Label(value="")
        self._message.native.setWordWrap(True)
        wide = QSizePolicy.Policy.Expanding  # not as narrow as the text: long messages wrap less
        self._message.native.setSizePolicy(wide, QSizePolicy.Policy.Preferred)
        self._progress = ProgressBar(label="Progress", value=0, min=0, max=1, visible=False)
        self._run = PushButton(text=RUN_TEXT)
        self._button = self._run
        self._bigdata = BigDataOptions(self._viewer)  # zarr output, Folder mode
        self.extend(
            [
                self._chooser,
                self._bigdata,
                self._image,
                self._output,
                self._own_settings,
                self._threshold,
                self._min_size,
                self._link_3d,
                self._probabilities,
                self._tta,
                self._tile_size,
                self._device,
                self._current_slice,
                self._message,
                self._progress,
                self._run,
            ]
        )

    def _connect(self) -> None:
        for field_ in (
            self._image,
            self._output,
            self._current_slice,
            self._own_settings,
            self._tile_size,
        ):
            field_.changed.connect(self._validate)
        for field_ in (*self._bigdata.inputs, self._probabilities):
            field_.changed.connect(self._validate)
        self._run.changed.connect(self._run_or_cancel)
        self._viewer.dims.events.point.connect(self._validate_if_previewing)
        self._viewer.dims.events.ndisplay.connect(self._validate_if_previewing)
        # The viewer may outlive the widget: stop listening when Qt deletes it.
        self.native.destroyed.connect(self._disconnect)

    def _disconnect(self, *_: object) -> None:
        # The widget is gone (its panel or the viewer was closed): stop the jobs, whose
        # callbacks then touch no widget and add no layer.
        self._alive = False
        self._runner.cancel()
        self._chooser.stop()
        for emitter in (self._viewer.dims.events.point, self._viewer.dims.events.ndisplay):
            emitter.disconnect(self._validate_if_previewing)

    # -- the model ----------------------------------------------------------------------------
    @property
    def model(self) -> ChosenModel | None:
        """The selected model, or ``None`` if there is none (yet)."""
        return self._chooser.model

    # -- validation ---------------------------------------------------------------------------
    def _problem(self) -> str | None:
        self._problems = []
        problem = self._chooser.problem()
        if problem is not None:
            self._problems = [Problem("model", problem)]
            return problem
        layer = self._image.value
        folder_or_store = self._bigdata.problem(layer, self.model, self._probabilities.value)
        if folder_or_store is not None:
            return folder_or_store
        if self._bigdata.folder_mode:  # no image layer: only the tile size to check here
            self._problems = tile_problems(self.model, int(self._tile_size.value) or None)
            return self._problems[0].message if self._problems else None
        if layer is None:
            problem = "Choose an image layer (open an image, or File > Open Sample > U-Net Kit)."
            self._problems = [Problem("image", problem)]
            return problem
        problem = image_dtype_problem(layer)
        if problem is not None:
            self._problems = [Problem("image", problem)]
            return problem
        self._problems = image_problems(layer, self.model, int(self._tile_size.value) or None)
        if self._problems:
            return self._problems[0].message
        if self._current_slice.value and self._is_stack(layer):
            return self._preview_problem(layer)
        return None

    def _preview_problem(self, layer: Image) -> str | None:
        if self._viewer.dims.ndisplay == 3:
            return "'Current slice only' needs the 2D view: switch to 2D or untick it."
        if visible_slice(self._viewer, layer) is None:
            return f"The viewer shows no slice of {layer.name!r}: move the slider onto it."
        return None

    @staticmethod
    def _is_stack(layer: Image | None) -> bool:
        if layer is None:
            return False
        data, channel_axis = image_data(layer)
        return layout.n_slices(tuple(data.shape), channel_axis) > 1

    def _validate(self, *_: object) -> bool:
        """Update the dependent fields and the message; enable Run only for valid inputs."""
        self._update_fields()
        problem = self._problem()
        if problem is not None and not self._problems:
            self._problems = [Problem("output", problem)]  # the zarr store or folder options
        self._marks.show(self._problems)
        if not self._runner.running:
            self._run.enabled = problem is None
            self._message.value = problem or ""
        return problem is None

    def _validate_if_previewing(self, *_: object) -> None:
        if self._current_slice.value:
            self._validate()

    def _update_fields(self) -> None:
        """Show what applies to the chosen model, output and image."""
        chosen = self._chooser.update()
        self._set_output_choices(chosen)
        instances = self._output.value == "instances"
        stack = self._is_stack(self._image.value)
        self._show_instance_settings(chosen, instances)
        self._bigdata.update(self._image.value, chosen, self._probabilities.value)
        self._image.visible = not self._bigdata.folder_mode
        self._link_3d.enabled = instances and stack
        self._current_slice.enabled = stack

    def _show_instance_settings(self, chosen: ChosenModel | None, instances: bool) -> None:
        """Show the model's own threshold and size (read-only) or let the user set them."""
        own = bool(self._own_settings.value)
        self._own_settings.enabled = instances
        for field_ in (self._threshold, self._min_size):
            field_.enabled = instances and not own
        if not own or chosen is None or chosen.mode != "instances":
            return
        stored = chosen.instance_settings
        with self._threshold.changed.blocked(), self._min_size.changed.blocked():
            self._threshold.value = round(stored.threshold, 2)
            self._min_size.value = stored.min_size

    def _set_output_choices(self, chosen: ChosenModel | None) -> None:
        wanted = ("semantic",) if chosen and chosen.mode == "classes" else ("instances", "semantic")
        if tuple(self._output.choices) != wanted:
            with self._output.changed.blocked():
                self._output.choices = wanted

    def reset_choices(self, *_: object) -> None:
        """Refresh the layer list (napari calls this when layers change)."""
        if not self._alive:
            return
        super().reset_choices()
        self._validate()

    # -- running ------------------------------------------------------------------------------
    @property
    def settings(self) -> PredictSettings:
        """The prediction settings currently shown in the widget."""
        layer = self._image.value
        stack = self._is_stack(layer)
        instances = self._output.value == "instances"
        slices = None
        if stack and self._current_slice.value:
            slices = [visible_slice(self._viewer, layer)]
        own = bool(self._own_settings.value)
        return PredictSettings(
            output=self._output.value,
            threshold=None if own else float(self._threshold.value),
            min_size=None if own else int(self._min_size.value),
            link_3d=bool(self._link_3d.value and instances and stack),
            probabilities=bool(self._probabilities.value),
            tta=bool(self._tta.value),
            tile_size=int(self._tile_size.value) or None,
            device=self._device.value,
            slices=slices,
        )

    def _run_or_cancel(self, *_: object) -> None:
        if self._runner.running:
            self.stop()
            return
        self.start()

    def stop(self) -> None:
        """Cancel the running prediction (no layer is added)."""
        if self._runner.running:
            self._cancelled = True
            self._runner.cancel()
            self._message.value = "Cancelling..."

    # -- public surface (see PanelSurface for the shared part) -----------------------------
    def _input_fields(self) -> dict:
        return {
            "source": self._chooser.source,
            "model_file": self._chooser.file,
            "image": self._image,
            "output": self._output,
            "own_instance_settings": self._own_settings,
            "threshold": self._threshold,
            "min_size": self._min_size,
            "link_3d": self._link_3d,
            "probabilities": self._probabilities,
            "tta": self._tta,
            "tile_size": self._tile_size,
            "device": self._device,
            "current_slice": self._current_slice,
        }

    @property
    def about(self) -> str:
        """The description of the chosen model ("" when there is none)."""
        return str(self._chooser.about.value)

    @property
    def loading(self) -> bool:
        """Whether a large model file is being loaded in the background."""
        return self._chooser.loader.running

    @property
    def progress(self) -> tuple[int, int]:
        """The progress bar: ``(value, maximum)``."""
        return int(self._progress.value), int(self._progress.max)

    @property
    def bigdata(self) -> BigDataOptions:
        """The zarr-output and Folder-mode options."""
        return self._bigdata

    @property
    def export(self) -> ExportAction:
        """The "Export to bioimage.io..." action (its ``button`` and ``runner``)."""
        return self._export

    @property
    def recent(self) -> RecentModels:
        """The "Recent models" list."""
        return self._chooser.recent

    def start(self) -> GeneratorWorker | None:
        """Predict the chosen image in a worker and return the worker (``None`` if invalid)."""
        if not self._validate():
            return None
        layer = self._image.value
        context = RunContext(image=layer, model=self.model, settings=self.settings)
        self._context, self._cancelled, self._outcome = context, False, None
        self._run.text = CANCEL_TEXT
        self._message.value = "Starting..."
        self._progress.visible = True
        self._progress.max, self._progress.value = 1, 0
        if self._bigdata.folder_mode or self._bigdata.writes_store(
            layer, context.model, context.settings.probabilities
        ):
            job = self._bigdata.job(context.model, layer, context.settings)
        else:
            data, channel_axis = image_data(layer)  # not copied: read slice by slice
            job = prediction_job(context.model, data, channel_axis, context.settings)
        return self._runner.start(
            job,
            on_event=self._on_event,
            on_result=self._on_result,
            on_error=self._on_error,
            on_finished=self._finished,
        )

    def _on_event(self, event: JobStarted | SliceProgress | Step) -> tuple[int, int] | None:
        """Show progress in tiles; return ``(done, total)`` for the activity dock."""
        context = self._context
        if context is None or not self._alive:
            return None
        if isinstance(event, JobStarted):
            context.device, context.tiles_per_slice = event.device, event.tiles_per_slice
            return None
        if isinstance(event, Step):  # a zarr store or folder job
            done, total = event.done, event.total
            self._progress.max, self._progress.value = 100 * total, round(100 * done)
            self._message.value = event.text if not self._cancelled else self._message.value
            return round(100 * done), 100 * total
        done, total = event.done, event.total
        per_slice = context.tiles_per_slice
        done_tiles, total_tiles = round(done * per_slice), total * per_slice
        self._progress.max = max(total_tiles, 1)
        self._progress.value = min(done_tiles, total_tiles)
        if not self._cancelled:
            slice_number = min(int(done) + 1, total)
            tile = done_tiles - (slice_number - 1) * per_slice
            self._message.value = (
                f"Slice {slice_number} of {total}, tile {tile} of {per_slice} "
                f"on {context.device}..."
            )
        return done_tiles, total_tiles

    def _on_result(self, result: PredictionResult) -> None:
        context = self._context
        if context is None or result is None or not self._alive:
            return
        if not isinstance(result, PredictionResult):  # a zarr store or a folder
            self._outcome = self._bigdata.finish(result, context)
            return
        add_prediction_layers(self._viewer, result, context)
        self._outcome = summary(result, context)

    def _on_error(self, error: BaseException) -> None:
        self._outcome = error_message(error, "Prediction")

    def _finished(self) -> None:
        outcome = "Cancelled: no layer was added." if self._cancelled else self._outcome
        self._context, self._outcome = None, None
        if not self._alive:
            return
        self._run.text = RUN_TEXT
        self._progress.visible = False
        if self._validate() and outcome:
            self._message.value = outcome


def device_choices() -> list[tuple[str, str]]:
    """Return ``(label, value)`` device choices: auto (saying what it picks), then each device."""
    choices = [(f"auto: {describe_device('auto')}", "auto")]
    choices.extend((describe_device(name), name) for name in available_devices())
    return choices
