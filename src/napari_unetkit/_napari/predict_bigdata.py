"""The Predict panel's big-data options: results written to zarr, and a Folder mode.

:class:`BigDataOptions` is a small form inside the "Predict with U-Net" panel
(:mod:`napari_unetkit._napari.predict_widget`), which asks it, at a few points, whether it
takes over:

- **Layer, result to a zarr store.** When the result of the chosen Image layer (labels, and
  probabilities if asked) would take more than :data:`COMFORTABLE_FRACTION` of the memory
  available now, or when the user ticks "Write the result to a zarr store", the prediction
  runs chunk by chunk (:func:`napari_unetkit.chunked.predict_to_zarr`) into
  ``<folder>/<layer name> prediction.ome.zarr``, reading the layer's data (dask, zarr, or the
  finest level of a multiscale image) tile by tile, and the result is added as Labels (and
  Image) layers backed by that store, read lazily by napari.
- **Folder.** Every image file of a folder (TIFF, ``.npy``, zarr) is predicted into an output
  folder, one file per input (:mod:`napari_unetkit.batch`): existing outputs are skipped,
  a file that fails is reported and the others go on.
"""

from __future__ import annotations

import copy
import math
import re
from dataclasses import dataclass
from pathlib import Path

import napari.viewer
from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, Label

from napari_unetkit import batch, layout
from napari_unetkit._napari.layers import METADATA_KEY, image_data, placement, unique_name
from napari_unetkit.device import describe_device
from napari_unetkit.prediction import Predictor
from napari_unetkit.progress import JobStarted, Step

#: A result larger than this fraction of the available memory goes to a zarr store.
COMFORTABLE_FRACTION = 0.25
LAYER_MODE = "layer"
FOLDER_MODE = "folder"


def available_memory() -> int:
    """Bytes of memory available now (psutil, which napari depends on)."""
    import psutil

    return int(psutil.virtual_memory().available)


def result_bytes(
    shape: tuple[int, ...], channel_axis: int | None, n_classes: int, mode: str, probabilities: bool
) -> int:
    """Return the bytes of a result in memory: int32 labels and float32 probabilities."""
    pixels = math.prod(layout.labels_shape(shape, channel_axis))
    planes = (1 if mode == "instances" else n_classes) if probabilities else 0
    return pixels * (4 + 4 * planes)


def gib(count: int) -> str:
    """Format a byte count in GiB (or MiB below one GiB)."""
    return f"{count / 1024**3:.1f} GiB" if count >= 1024**3 else f"{count / 1024**2:.0f} MiB"


def store_name(folder: Path, layer_name: str) -> Path:
    """Return a new store path in ``folder`` for a layer's prediction (never an existing one)."""
    base = re.sub(r"[^\w.\- ]+", "_", layer_name).strip() or "image"
    path = folder / f"{base} prediction.ome.zarr"
    number = 2
    while path.exists():
        path = folder / f"{base} prediction [{number}].ome.zarr"
        number += 1
    return path


@dataclass
class StoreResult:
    """A prediction written to a zarr store (what the store job returns)."""

    path: Path
    output: str
    units: int
    cut_objects: int
    probabilities: bool
    description: dict


class BigDataOptions(Container):
    """Source (layer or folder), output folder and the zarr choice of the Predict panel.

    Parameters
    ----------
    viewer : napari.viewer.Viewer
        The viewer the result layers go to.
    """

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(labels=True)
        self._viewer = viewer
        self.mode = ComboBox(
            label="Images",
            choices=[("a layer", LAYER_MODE), ("a folder of files", FOLDER_MODE)],
            value=LAYER_MODE,
            tooltip="a layer: predict the chosen Image layer. a folder of files: predict every "
            "image file (TIFF, .npy, zarr) of a folder into an output folder.",
        )
        self.input_folder = FileEdit(label="Input folder", mode="d", nullable=True)
        self.format = ComboBox(
            label="Output format",
            choices=[("TIFF", "tiff"), ("OME-Zarr (any size)", "zarr")],
            value="tiff",
            tooltip="One output per input file: name.tif, or name.ome.zarr written chunk by "
            "chunk (for images larger than memory).",
        )
        self.to_store = CheckBox(
            text="Write the result to a zarr store",
            value=False,
            tooltip="Write labels (and probabilities) chunk by chunk into an OME-Zarr store in "
            "the output folder and add them as layers read from it: memory stays small "
            "whatever the image size. Chosen automatically for results too large for memory.",
        )
        self.note = Label(value="")
        self.note.native.setWordWrap(True)
        self.output_folder = FileEdit(label="Output folder", mode="d", nullable=True)
        self.extend(
            [
                self.mode,
                self.input_folder,
                self.format,
                self.to_store,
                self.note,
                self.output_folder,
            ]
        )

    @property
    def inputs(self) -> tuple:
        """The fields whose changes call for validating the panel again."""
        return (self.mode, self.input_folder, self.output_folder, self.to_store)

    # -- what applies ---------------------------------------------------------------------
    @property
    def folder_mode(self) -> bool:
        """Whether a folder of files is predicted instead of a layer."""
        return self.mode.value == FOLDER_MODE

    def too_large(self, layer, chosen, probabilities: bool) -> int | None:
        """Return the estimated result size if it would not fit comfortably in memory, else None."""
        if layer is None or chosen is None:
            return None
        data, channel_axis = image_data(layer)
        size = result_bytes(
            tuple(data.shape),
            channel_axis,
            chosen.model.config.n_classes,
            chosen.mode,
            probabilities,
        )
        return size if size > COMFORTABLE_FRACTION * available_memory() else None

    def writes_store(self, layer, chosen, probabilities: bool) -> bool:
        """Whether a layer's prediction goes to a zarr store (ticked, or too large)."""
        if self.folder_mode:
            return False
        return bool(self.to_store.value) or self.too_large(layer, chosen, probabilities) is not None

    def update(self, layer, chosen, probabilities: bool) -> None:
        """Show the fields that apply, and why the result goes to a store."""
        folder = self.folder_mode
        self.input_folder.visible = self.format.visible = folder
        size = None if folder else self.too_large(layer, chosen, probabilities)
        self.to_store.visible = not folder
        store = self.writes_store(layer, chosen, probabilities)
        self.output_folder.visible = folder or store
        if size is not None:
            self.note.value = (
                f"The result would take about {gib(size)}, more than is comfortable in the "
                f"{gib(available_memory())} of memory available: it is written to a zarr store "
                "in the output folder and read from there."
            )
        else:
            self.note.value = ""
        self.note.visible = bool(self.note.value)

    def problem(self, layer, chosen, probabilities: bool) -> str | None:
        """Say what is missing for the chosen mode (``None`` when ready)."""
        if self.folder_mode:
            folder = self.input_folder.value
            if folder is None or not Path(folder).is_dir():
                return "Choose the folder of images to predict."
            if not batch.find_images(folder):
                return f"{folder} holds no images (TIFF, .npy, zarr)."
        elif not self.writes_store(layer, chosen, probabilities):
            return None
        out = self.output_folder.value
        if out is None or not Path(out).is_dir():
            return "Choose an output folder (it must exist)."
        if self.folder_mode and Path(out).resolve() == Path(self.input_folder.value).resolve():
            return "Choose an output folder other than the input folder."
        return None

    # -- jobs -----------------------------------------------------------------------------
    def job(self, chosen, layer, settings):
        """Return the job for the Predict panel's runner: the layer into a store, or the folder."""
        folder_mode = self.folder_mode
        out_folder = Path(self.output_folder.value)
        input_folder = Path(self.input_folder.value) if folder_mode else None
        fmt = self.format.value
        data, channel_axis = (None, None) if folder_mode else image_data(layer)
        target = None if folder_mode else store_name(out_folder, layer.name)

        def job(emit, cancel):
            predictor = _predictor(chosen, settings)
            emit(JobStarted(describe_device(predictor.device)))
            if folder_mode:
                return _predict_folder(
                    predictor, input_folder, out_folder, fmt, settings, emit, cancel
                )
            from napari_unetkit.chunked import predict_to_zarr

            def progress(done: float, total: int) -> None:
                emit(Step(done, total, f"Part {min(int(done) + 1, total)} of {total}"))

            result = predict_to_zarr(
                predictor,
                data,
                target,
                channel_axis=channel_axis,
                output=settings.output,
                threshold=settings.threshold,
                min_size=settings.min_size,
                probabilities=settings.probabilities,
                slices=settings.slices,
                progress=progress,
                cancel=cancel,
            )
            return StoreResult(
                result.path,
                result.output,
                result.units,
                result.cut_objects,
                settings.probabilities,
                predictor.description,
            )

        return job

    def add_layers(self, result: StoreResult, context) -> list:
        """Add the store's labels (and probabilities) as lazily read layers."""
        import dask.array as da

        source = context.image
        info = {**context.layer_metadata(), "store": str(result.path)}
        added = []
        if result.output != "probabilities":
            labels = da.from_zarr(str(result.path / "0"))
            added.append(
                self._viewer.add_labels(
                    labels,
                    name=unique_name(self._viewer, f"{source.name} prediction"),
                    metadata={METADATA_KEY: "prediction", "output": result.output, **info},
                    **placement(source),
                )
            )
        if result.probabilities:
            probabilities = da.from_zarr(str(result.path / "probabilities" / "0"))
            planes = (
                [probabilities]
                if result.description.get("mode") == "instances"
                else list(probabilities)
            )
            for number, plane in enumerate(planes):
                suffix = "" if len(planes) == 1 else f" {number + 1}"
                added.append(
                    self._viewer.add_image(
                        plane,
                        name=unique_name(self._viewer, f"{source.name} probability{suffix}"),
                        colormap="magma",
                        contrast_limits=(0.0, 1.0),
                        blending="additive",
                        metadata={METADATA_KEY: "probability", **info},
                        **placement(source),
                    )
                )
        return added

    def finish(self, result, context) -> str:
        """Handle a finished store or folder job; return the sentence for the panel."""
        if isinstance(result, batch.BatchSummary):
            text = result.text().splitlines()[0]
            if result.failed:
                first, message = result.failed[0]
                text += f" First failure: {first.name}: {message}"
            return text
        self.add_layers(result, context)
        text = f"Written to {result.path} ({result.units} parts) and added as layers."
        if result.cut_objects:
            text += f" {result.cut_objects} object(s) larger than the block margin may be split."
        return text


def _predictor(chosen, settings) -> Predictor:
    model = chosen.model
    if chosen.origin == "session":
        model = copy.deepcopy(model)  # Predictor moves the model; the session's stays put
    return Predictor(
        model,
        chosen.description,
        device=settings.device,
        tile_size=settings.tile_size,
        tta=settings.tta,
    )


def _predict_folder(predictor, input_folder, out_folder, fmt, settings, emit, cancel):
    from napari_unetkit._napari.jobs import error_message

    images = batch.find_images(input_folder)
    outputs = batch.plan_outputs(images, out_folder, fmt)
    state = {"number": 0, "name": ""}

    def on_file(number: int, total: int, image: Path) -> None:
        state.update(number=number, name=image.name)
        emit(Step(number - 1, total, f"File {number} of {total}: {image.name}"))

    def progress(done: float, total: int) -> None:
        fraction = done / total if total else 0.0
        count = len(images)
        text = f"File {state['number']} of {count}: {state['name']}"
        emit(Step(state["number"] - 1 + fraction, count, text))

    def predict_one(image: Path, out: Path) -> None:
        batch.predict_file(
            predictor,
            image,
            out,
            output=settings.output,
            threshold=settings.threshold,
            min_size=settings.min_size,
            probabilities=settings.probabilities,
            progress=progress,
            cancel=cancel,
        )

    return batch.run_batch(
        images,
        outputs,
        predict_one,
        on_file=on_file,
        describe_error=lambda error: error_message(error, image_name(state)),
        cancel=cancel,
    )


def image_name(state: dict) -> str:
    """Return the action text of a folder file's error message."""
    return f"Predicting {state['name']}"
