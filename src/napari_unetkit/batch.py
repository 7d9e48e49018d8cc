"""Many images, one output each: finding inputs, naming outputs, skipping, per-file errors.

Shared by ``unetkit predict --image 'plate/*.tif' --out results/`` and the Predict panel's
Folder mode. Each input gets ``<folder>/<input name without suffix>.tif`` or ``.ome.zarr``; an
output that exists (a zarr store only when its run completed) is skipped unless ``overwrite``;
a file that fails is recorded with its one-sentence reason and the batch goes on.
"""

from __future__ import annotations

import glob
import json
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from napari_unetkit import bigio
from napari_unetkit.layout import infer_channel_axis
from napari_unetkit.progress import Cancelled, check_cancel

#: Files a folder or pattern matches.
IMAGE_SUFFIXES = (".tif", ".tiff", ".npy", ".zarr")
#: Output formats of a batch.
FORMATS = ("tiff", "zarr")


@dataclass
class BatchSummary:
    """What a batch did, file by file."""

    written: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)

    def text(self) -> str:
        """Return one summary line plus one line per failure."""
        lines = [
            f"Batch done: {len(self.written)} written, {len(self.skipped)} skipped (already "
            f"there; overwrite replaces them), {len(self.failed)} failed."
        ]
        lines += [f"  failed: {path}: {message}" for path, message in self.failed]
        return "\n".join(lines)


def find_images(pattern: str | Path) -> list[Path]:
    """Return the images matching a glob pattern, or inside a folder, sorted by name."""
    path = Path(pattern)
    if path.is_dir() and not bigio.is_zarr_path(path):
        matches = [str(p) for p in path.iterdir()]
    else:
        matches = glob.glob(str(pattern))
    names = [Path(m) for m in matches]
    return sorted(
        p for p in names if p.name.lower().endswith(IMAGE_SUFFIXES) and not p.name.startswith(".")
    )


def output_for(image: Path, folder: Path, fmt: str) -> Path:
    """Return the output of one input: ``<folder>/<name without suffix>.tif|.ome.zarr``."""
    name = image.name
    for suffix in (".ome.zarr", ".ome.tiff", ".ome.tif", *IMAGE_SUFFIXES):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    return folder / (name + (".ome.zarr" if fmt == "zarr" else ".tif"))


def plan_outputs(images: Sequence[Path], folder: Path, fmt: str) -> list[Path]:
    """Return the outputs of ``images``; raise ``ValueError`` when two would collide."""
    if fmt not in FORMATS:
        raise ValueError(f"The output format must be one of {', '.join(FORMATS)}, got {fmt!r}.")
    outputs = [output_for(image, folder, fmt) for image in images]
    if len(set(outputs)) != len(outputs):
        raise ValueError("Two inputs have the same name; their outputs would collide.")
    return outputs


def is_finished(out: Path) -> bool:
    """Whether a batch output exists and is complete (an unfinished zarr store resumes)."""
    if not bigio.is_zarr_path(out):
        return out.exists()
    attrs = out / ".zattrs"
    if not attrs.is_file():
        return False
    try:
        return bool(json.loads(attrs.read_text())["unetkit"]["complete"])
    except (OSError, ValueError, KeyError, TypeError):
        return False


def run_batch(
    images: Sequence[Path],
    outputs: Sequence[Path],
    predict_one: Callable[[Path, Path], None],
    *,
    overwrite: bool = False,
    on_file: Callable[[int, int, Path], None] | None = None,
    on_error: Callable[[Path, str], None] | None = None,
    describe_error: Callable[[BaseException], str] = str,
    cancel: threading.Event | None = None,
) -> BatchSummary:
    """Call ``predict_one(image, out)`` for every pair, skipping finished outputs.

    Parameters
    ----------
    images, outputs : sequence of Path
        Inputs and their outputs (:func:`plan_outputs`).
    predict_one : callable
        Predicts one image into one output; any exception it raises fails that file only
        (except :class:`~napari_unetkit.progress.Cancelled` and ``KeyboardInterrupt``, which
        end the batch).
    overwrite : bool
        Predict even when the output is finished.
    on_file : callable, optional
        ``on_file(number, total, image)`` before each file is predicted (1-based).
    on_error : callable, optional
        ``on_error(image, message)`` when a file fails.
    describe_error : callable
        Turns an exception into the message recorded.
    cancel : threading.Event, optional
        Checked before every file.

    Returns
    -------
    BatchSummary
        Written, skipped and failed files.
    """
    summary = BatchSummary()
    for number, (image, out) in enumerate(zip(images, outputs, strict=True), start=1):
        check_cancel(cancel)
        if is_finished(out) and not overwrite:
            summary.skipped.append(out)
            continue
        if on_file is not None:
            on_file(number, len(images), image)
        try:
            predict_one(image, out)
        except (Cancelled, KeyboardInterrupt):
            raise
        except Exception as error:
            message = describe_error(error)
            summary.failed.append((image, message))
            if on_error is not None:
                on_error(image, message)
        else:
            summary.written.append(out)
    return summary


def channel_axis_of(lazy: bigio.LazyImage, channels: int) -> int | None:
    """Return the channel axis of an opened image: its ``c`` axis, else as the CLI guesses it.

    See :func:`napari_unetkit.layout.infer_channel_axis` (the last or first axis of the
    model's channel count, for models of more than one channel).
    """
    if lazy.axes and "c" in lazy.axes:
        return lazy.axes.index("c")
    return infer_channel_axis(tuple(lazy.array.shape), channels=channels)


def predict_file(
    predictor,
    image: Path,
    out: Path,
    *,
    output: str = "auto",
    threshold: float | None = None,
    min_size: int | None = None,
    probabilities: bool = False,
    overwrite: bool = False,
    progress: Callable[[float, int], None] | None = None,
    cancel: threading.Event | None = None,
) -> None:
    """Predict one image file into ``out``: a TIFF (in memory) or a zarr store (chunked).

    A TIFF output holds the labels (probabilities go to ``<out stem>_probabilities.tif``),
    written atomically; a ``.zarr`` output is written by
    :func:`napari_unetkit.chunked.predict_to_zarr` (and resumes an interrupted run). The
    channel axis is found by :func:`channel_axis_of`.
    """
    from napari_unetkit import chunked
    from napari_unetkit.io import write_tiff

    with bigio.open_image(image) as lazy:
        channel_axis = channel_axis_of(lazy, predictor.input_channels[0])
        options = {"output": output, "threshold": threshold, "min_size": min_size}
        if bigio.is_zarr_path(out):
            chunked.predict_to_zarr(
                predictor,
                lazy.array,
                out,
                channel_axis=channel_axis,
                probabilities=probabilities,
                overwrite=overwrite,
                run={"image": str(Path(image).resolve())},
                progress=progress,
                cancel=cancel,
                **options,
                **lazy.labels_metadata(channel_axis),
            )
            return
        result = predictor.predict(
            lazy.array,
            channel_axis,
            return_probabilities=probabilities,
            progress=progress,
            cancel=cancel,
            **options,
        )
    metadata = {"source": str(image)}
    if result.labels is not None:
        write_tiff(out, result.labels, overwrite=True, labels=True, metadata=metadata)
    if probabilities:
        target = out.with_name(out.stem + "_probabilities.tif")
        write_tiff(target, result.probabilities, overwrite=True, metadata=metadata)
