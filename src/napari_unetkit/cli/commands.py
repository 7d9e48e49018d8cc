"""The ``unetkit`` command: train, predict, export, weight maps, evaluation and the demo.

Every subcommand is a thin wrapper over the engine: it reads files, calls the same functions
the napari widgets call and writes files atomically. Errors end in a one-line message and a
non-zero exit status (``--debug`` shows the traceback); existing outputs are never replaced
without ``--overwrite``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from napari_unetkit import __version__
from napari_unetkit.checks import (
    MODES,
    InvalidInput,
    image_channels_problem,
    labels_dtype_problem,
    model_file_name,
    parse_channels,
    predict_problems,
    raise_problems,
    train_problems,
    weightmap_problems,
    whole_number_problem,
)
from napari_unetkit.cli import bigdata as cli_bigdata
from napari_unetkit.cli import project as cli_project
from napari_unetkit.layout import infer_channel_axis
from napari_unetkit.progress import GENERIC_CANCEL, Cancelled
from napari_unetkit.weightmap import BORDER_ON, CLASS_BALANCES, DEFAULT_PRESET, PRESETS

EXIT_ERROR = 1
EXIT_INTERRUPTED = 130


class CommandError(Exception):
    """An error whose message is the whole story (shown without a traceback)."""


# ------------------------------------------------------------------------------------------
# Small shared pieces
# ------------------------------------------------------------------------------------------


def check_output(path: str | Path, overwrite: bool) -> Path:
    """Refuse an existing output (unless ``overwrite``), a missing or read-only folder, early.

    Every output is checked before any work starts, so that a long run never ends in a file
    that cannot be written. Only regular files are ever replaced: a folder, device, FIFO,
    socket or symbolic link loop is refused even with ``overwrite``.
    """
    from napari_unetkit.io import check_target, check_writable, os_error_text

    path = Path(path)
    if path.is_dir():
        raise CommandError(f"{path} is a folder; give a file name to write.")
    try:
        check_target(path)
    except OSError as error:
        raise CommandError(os_error_text(error)) from None
    if os.path.lexists(path) and not overwrite:
        raise CommandError(f"{path} already exists; pass --overwrite to replace it.")
    if not path.parent.is_dir():
        raise CommandError(f"The folder {path.parent} does not exist; create it first.")
    try:
        check_writable(path)
    except OSError as error:
        raise CommandError(f"{os_error_text(error)} Choose another output folder.") from None
    return path


def check_outputs(
    outputs: dict[str, str | Path | None],
    overwrite: bool,
    inputs: dict[str, str | Path | None] | None = None,
) -> dict[str, Path | None]:
    """Check every output of a command together, before any work.

    Each output passes :func:`check_output`; no two outputs may name the same file, no output
    may be one of the command's ``inputs``, and none may be a model file (a ``.unet`` name or
    an existing model archive): a failed or mistaken command never writes over another result.

    Parameters
    ----------
    outputs, inputs : dict
        Option name (e.g. ``"--out"``) -> path (``None``: not given).
    overwrite : bool
        Whether existing outputs may be replaced.

    Returns
    -------
    dict
        Option name -> checked path (``None`` where not given).
    """
    from napari_unetkit.modelfile import SUFFIX

    checked = {name: None if path is None else Path(path) for name, path in outputs.items()}
    given = [(name, path) for name, path in checked.items() if path is not None]
    for name, path in given:
        if path.suffix.lower() == SUFFIX or _is_model_archive(path):
            raise CommandError(
                f"{name} {path} is a model file name or a model file; write the results to a "
                "TIFF file (.tif) instead."
            )
        check_output(path, overwrite)
    sources = [(name, Path(path)) for name, path in (inputs or {}).items() if path is not None]
    for index, (name, path) in enumerate(given):
        for other, other_path in given[index + 1 :] + sources:
            if _same_file(path, other_path):
                role = "an output" if (other, other_path) in given else "an input"
                raise CommandError(
                    f"{name} and {other} name the same file ({path}), which is {role}; give "
                    "each output its own file name."
                )
    return checked


def _same_file(first: Path, second: Path) -> bool:
    try:
        if first.exists() and second.exists():
            return os.path.samefile(first, second)
        return first.resolve() == second.resolve()
    except (OSError, RuntimeError):  # RuntimeError: a symbolic link loop (Python < 3.13)
        return False


def _is_model_archive(path: Path) -> bool:
    """Whether ``path`` is an existing PyTorch archive (a model file under another name)."""
    import zipfile

    try:
        return path.is_file() and zipfile.is_zipfile(path)
    except OSError:
        return False


def format_seconds(seconds: float | None) -> str:
    """Format a duration as ``m:ss`` (or ``h:mm:ss``)."""
    if seconds is None:
        return "?"
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class TextProgress:
    """A one-line progress display on stderr (a line per update when not a terminal)."""

    def __init__(self, stream=None, min_interval: float = 0.2) -> None:
        self.stream = stream or sys.stderr
        self.interactive = self.stream.isatty()
        self.min_interval = min_interval
        self._last = 0.0
        self._width = 0

    def show(self, text: str, *, force: bool = False) -> None:
        """Show ``text`` (rate-limited on a terminal unless ``force``)."""
        now = time.monotonic()
        if not self.interactive:
            if force:
                print(text, file=self.stream, flush=True)
            return
        if not force and now - self._last < self.min_interval:
            return
        self._last = now
        padding = " " * max(0, self._width - len(text))
        self._width = len(text)
        end = "\n" if force else ""
        print(f"\r{text}{padding}", end=end, file=self.stream, flush=True)
        if force:
            self._width = 0

    @staticmethod
    def bar(done: int, total: int, width: int = 24) -> str:
        """Return a text bar such as ``[#######.........]``."""
        filled = int(width * done / total) if total else 0
        return "[" + "#" * filled + "." * (width - filled) + "]"


#: Signals that stop the command as Ctrl-C does: interrupt, terminate (``kill``, ``timeout``,
#: batch-system time limits, ``docker stop``) and hang-up (the terminal closed).
STOP_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)
)


class _Stops:
    """The stop signals this command received (``None``: none); read by :func:`run`."""

    #: The signal that asked the running job to stop cleanly.
    cancelled: int | None = None
    #: The signal that aborted the command (a second one, or one outside a job).
    aborted: int | None = None


def _abort(signum: int, frame) -> None:
    """Outside a cancellable job a stop signal aborts at once (writes clean up after themselves)."""
    _Stops.aborted = signum
    raise KeyboardInterrupt


def _signal_name(signum: int) -> str:
    return "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name


class CancelOnInterrupt:
    """First stop signal sets a cancel event (the job stops cleanly); a second one aborts.

    Ctrl-C (SIGINT), SIGTERM and SIGHUP are all handled this way while the job runs.
    """

    def __init__(self) -> None:
        self.event = threading.Event()
        self._previous: dict[int, object] = {}

    def _handler(self, signum, frame) -> None:
        if self.event.is_set():
            _abort(signum, frame)
        _Stops.cancelled = signum
        self.event.set()
        name = _signal_name(signum)
        print(f"\nStopping after the current step ({name} again to abort)...", file=sys.stderr)

    def __enter__(self) -> threading.Event:
        if threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handler)
        return self.event

    def __exit__(self, *exc) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()


def prediction_progress_printer(unit: str) -> Callable[[float, int], None]:
    """Return a ``progress(done, total)`` callback drawing a bar and ``unit n/total``."""
    display = TextProgress()

    def show(done: float, total: int) -> None:
        display.show(
            f"predicting {TextProgress.bar(int(done * 100), total * 100)} "
            f"{unit} {min(int(done) + 1, total)}/{total}",
            force=done >= total,
        )

    return show


def load_predictor(args: argparse.Namespace):
    """Load ``predict``'s model with its options; refuse a tile size below the model's halo.

    Raises
    ------
    InvalidInput
        With the pre-check's problem of the tile size (see :func:`~napari_unetkit.checks.
        predict_problems`).
    """
    from napari_unetkit.prediction import Predictor

    predictor = Predictor.from_file(
        args.model,
        device=args.device,
        tile_size=args.tile_size,
        tta=args.tta,
        border=args.border,
        precision=args.precision,
    )
    raise_problems(predict_problems(tile_size=args.tile_size, halo=predictor.halo))
    return predictor


def refuse_colour_for_grey(name: object, shape: tuple[int, ...], in_channels: int) -> None:
    """Refuse a colour image (3D, last axis of 3 or 4) for a greyscale model.

    Such an image is not a stack of narrow slices; the message says what to do instead.
    """
    message = image_channels_problem(shape, None, in_channels) if in_channels == 1 else None
    if message is not None:
        raise CommandError(message)


def _channel_list(text: str) -> list[int] | None:
    """Parse ``--channels 0,1`` (the engine's reading of a channel choice)."""
    try:
        return parse_channels(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _weightmap_settings(args: argparse.Namespace):
    """Build WeightMapSettings from the shared --preset/--w0/--sigma/... options."""
    from napari_unetkit.weightmap import settings_from

    overrides = {}
    for option, name in (("w0", "w0"), ("sigma", "sigma"), ("class_balance", "class_balance")):
        value = getattr(args, option, None)
        if value is not None:
            overrides[name] = value
    if getattr(args, "no_separate", False):
        overrides["separate"] = False
    if getattr(args, "border_on", None):
        overrides["border_on"] = args.border_on
    return settings_from(args.preset, **overrides)


def _add_weightmap_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("boundary weight map")
    group.add_argument(
        "--preset",
        choices=tuple(PRESETS),
        default=DEFAULT_PRESET,
        help="paper: w0 10, sigma 5, balanced class weights (Ronneberger et al. 2015); bounded: "
        "the same with class weights never more than 3 times each other (sparse images); "
        "falk2019: the authors' Fiji tool (ridge weight 50, sigma 6, smooth background "
        f"weights). Default: {DEFAULT_PRESET}, what training uses.",
    )
    group.add_argument("--w0", type=float, help="Border weight amplitude (overrides preset).")
    group.add_argument("--sigma", type=float, help="Border width in pixels (overrides preset).")
    group.add_argument("--class-balance", choices=CLASS_BALANCES, help="Class weights w_c.")
    group.add_argument(
        "--no-separate", action="store_true", help="Do not cut ridges between touching cells."
    )
    group.add_argument(
        "--border-on",
        choices=BORDER_ON,
        help="Where the border term is added (default: background).",
    )


# ------------------------------------------------------------------------------------------
# Subcommands
# ------------------------------------------------------------------------------------------


def _train_progress_printer(display: TextProgress):
    """Return a trainer progress callback that draws one status line."""

    def show(event) -> None:
        epochs = f"/{event.n_epochs}" if event.n_epochs else ""
        parts = [f"epoch {event.epoch}{epochs}"]
        if event.steps_per_epoch:
            parts.append(f"step {event.step}/{event.steps_per_epoch}")
        if event.train_loss is not None:
            parts.append(f"loss {event.train_loss:.4f}")
        if event.val_loss is not None:
            parts.append(f"val loss {event.val_loss:.4f}")
        score = event.metrics.get("val_f1", event.metrics.get("val_iou"))
        if score is not None:
            name = "F1" if "val_f1" in event.metrics else "IoU"
            parts.append(f"val {name} {score:.3f}")
        parts.append(f"{format_seconds(event.elapsed)} elapsed, ETA {format_seconds(event.eta)}")
        stage_end = event.stage in ("validating", "calibrating", "done")
        epoch_end = stage_end and event.val_loss is not None
        display.show(f"{event.stage:>10}: " + " | ".join(parts), force=epoch_end)

    return show


def _read_pairs(
    images: list[str], labels: list[str], what: str, stack: contextlib.ExitStack
) -> list[tuple]:
    """Open image/labels pairs: zarr stores and large files lazily, the rest into memory."""
    from napari_unetkit.lazydata import open_training_file

    if len(images) != len(labels):
        raise CommandError(
            f"Give one {what} labels file per image: {len(images)} image(s), "
            f"{len(labels)} labels file(s)."
        )
    return [
        (open_training_file(i, stack), open_training_file(lab, stack))
        for i, lab in zip(images, labels, strict=True)
    ]


def _read_regions(paths: list[str], pairs: list[tuple], stack: contextlib.ExitStack) -> list:
    """Open region masks: in memory as booleans, lazy ones (non-zero = annotated) as they are."""
    from napari_unetkit.lazydata import open_training_file

    if len(paths) != len(pairs):
        raise CommandError("Give one --region mask per --image (or none at all).")
    regions = []
    for path, (_, labels) in zip(paths, pairs, strict=True):
        region = open_training_file(path, stack)
        if isinstance(region, np.ndarray) or isinstance(labels, np.ndarray):
            region = np.asarray(region) > 0
        regions.append(region)
    return regions


def _training_values(
    args: argparse.Namespace, channel_axis: int | None, data_name: str | None = None
) -> dict:
    """Return the ``TrainConfig`` keyword arguments the options ask for.

    ``data_name`` defaults to the first image's name, as the napari panel names its data.
    With ``--init-from`` the trainer replaces what the model fixes (architecture, mode,
    classes, channels, normalisation); fine-tuning uses the same default learning rate as
    training from scratch.
    """
    from napari_unetkit.augmentation import AugmentationSettings
    from napari_unetkit.training import TrainConfig

    defaults = TrainConfig()
    epochs = (
        args.epochs
        if args.epochs is not None
        else (None if args.time_limit is not None else defaults.epochs)
    )
    values = {
        "mode": args.mode or "instances",
        "epochs": epochs,
        "time_limit": args.time_limit,
        "weightmap": _weightmap_settings(args),
        "channel_axis": channel_axis,
        "channels": args.channels,
        "device": args.device,
        "seed": args.seed,
        "augmentation": None if args.no_augment else AugmentationSettings(),
        "data_name": data_name or Path(args.image[0]).stem,
    }
    sizes = (
        "patch_size",
        "batch_size",
        "base_channels",
        "depth",
        "val_fraction",
        "steps_per_epoch",
    )
    for name in sizes:
        if getattr(args, name) is not None:
            values[name] = getattr(args, name)
    if args.lr is not None:
        values["learning_rate"] = args.lr
    return values


def cmd_train(args: argparse.Namespace) -> int:
    """``unetkit train``: train (or fine-tune) a model on images and labels.

    TIFF and ``.npy`` files, and zarr stores; zarr stores and large files are read lazily and
    trained on through :mod:`napari_unetkit.lazydata`.
    """
    with contextlib.ExitStack() as stack:
        return _train(args, stack)


def _train(args: argparse.Namespace, stack: contextlib.ExitStack) -> int:
    from napari_unetkit.lazydata import wants_lazy
    from napari_unetkit.training import TrainConfig, train

    cli_project.check_train_arguments(args)
    if args.project is not None:
        raise_problems(train_problems(_training_values(args, None, data_name="project")))
        return cli_project.train_project(args, stack)
    out = model_file_name(args.out)
    # Every setting and the model file are checked before any data is read.
    raise_problems(train_problems(_training_values(args, args.channel_axis), out=out))
    out = check_output(out, args.overwrite)
    pairs = _read_pairs(args.image, args.labels, "training", stack)
    if not wants_lazy(pairs):  # lazily read labels are checked slice by slice while training
        mode = args.mode or "instances"
        raise_problems(train_problems({"mode": mode}, labels=[lab for _, lab in pairs]))
    validation = None
    if args.val_image or args.val_labels:
        validation = _read_pairs(args.val_image, args.val_labels, "validation", stack)
    regions = _read_regions(args.region, pairs, stack) if args.region else None
    first_image, first_labels = pairs[0]
    channel_axis = args.channel_axis
    if channel_axis is None:
        channel_axis = infer_channel_axis(first_image.shape, labels_shape=first_labels.shape)
    config = TrainConfig(**_training_values(args, channel_axis))
    display = TextProgress()
    how = " (read lazily, patch by patch)" if wants_lazy(pairs) else ""
    print(f"Training on {len(pairs)} image(s){how}; model file: {out}", file=sys.stderr)
    with CancelOnInterrupt() as cancel:
        result = train(
            pairs,
            config,
            out=out,
            validation=validation,
            regions=regions,
            resume=args.resume,
            init_from=args.init_from,
            progress=_train_progress_printer(display),
            cancel=cancel,
            overwrite=args.overwrite,
        )
    display.show("", force=False)
    print_training_result(result)
    return 0


def print_training_result(result) -> None:
    """Print how a training run ended, where the model went and its instance settings."""
    from napari_unetkit.modelfile import instances_summary

    best = "n/a" if result.best_score is None else f"{result.best_score:.3f}"
    print(
        f"Done: {result.epochs_run} epoch(s), {result.steps_run} steps in "
        f"{format_seconds(result.elapsed)} (stopped by {result.stopped_by}); best validation "
        f"score {best} at epoch {result.best_epoch}. Model saved to {result.model_path}."
    )
    instances = instances_summary(result.description)
    if instances:
        print(instances)


def cmd_predict(args: argparse.Namespace) -> int:
    """``unetkit predict``: labels (and probabilities) of an image with a trained model."""
    from napari_unetkit.io import read_image, write_tiff

    if cli_bigdata.wants_this(args):  # zarr output, a pattern or folder, a cluster
        return cli_bigdata.predict_command(args)
    cli_bigdata.check_plain(args)
    outputs = check_outputs(
        {"--out": args.out, "--probabilities": args.probabilities},
        args.overwrite,
        inputs={"--image": args.image, "--model": args.model},
    )
    out, prob_out = outputs["--out"], outputs["--probabilities"]
    predictor = load_predictor(args)
    image = read_image(args.image)
    channel_axis = args.channel_axis
    in_channels = predictor.input_channels[0]
    if channel_axis is None:
        channel_axis = infer_channel_axis(image.shape, channels=in_channels)
    problems = predict_problems(
        image_shape=tuple(image.shape),
        channel_axis=channel_axis,
        in_channels=in_channels,
        threshold=args.threshold,
        min_size=args.min_size,
    )
    raise_problems(problems)
    show = prediction_progress_printer("slice")
    with CancelOnInterrupt() as cancel:
        result = predictor.predict(
            image,
            channel_axis,
            output=args.output,
            threshold=args.threshold,
            min_size=args.min_size,
            link_3d=args.link_3d,
            return_probabilities=prob_out is not None,
            progress=show,
            cancel=cancel,
        )
    metadata = {"model": str(args.model), "source": str(args.image)}
    if result.labels is not None:
        write_tiff(out, result.labels, overwrite=args.overwrite, labels=True, metadata=metadata)
        n = len(np.unique(result.labels)) - 1 if result.output == "instances" else None
        what = f"{n} instances" if n is not None else "semantic labels"
        print(f"Labels written to {out} ({what}).")
    if prob_out is not None:
        write_tiff(prob_out, result.probabilities, overwrite=args.overwrite, metadata=metadata)
        print(f"Probabilities written to {prob_out}.")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """``unetkit export``: write a model as a bioimage.io package (format 0.5)."""
    from napari_unetkit.bioimageio import PACKAGE_SUFFIX, export_package
    from napari_unetkit.io import read_image

    out = Path(args.out)
    if not out.name.lower().endswith(".zip"):
        out = out.with_name(out.name + PACKAGE_SUFFIX)
    out = check_output(out, args.overwrite)
    test_image = read_image(args.test_image) if args.test_image else None
    with CancelOnInterrupt() as cancel:
        path = export_package(
            args.model,
            out,
            test_image=test_image,
            channel_axis=args.channel_axis,
            name=args.name,
            **({"authors": args.author} if args.author else {}),
            license=args.license,
            cancel=cancel,
        )
    print(f"bioimage.io package written to {path} (check it with: bioimageio test {path}).")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """``unetkit demo``: the Quick start job on built-in synthetic nuclei."""
    from napari_unetkit.demo import run_demo
    from napari_unetkit.training import MAX_SEED

    folder = Path(args.out)
    message = whole_number_problem(args.seed, "--seed", 0, MAX_SEED)
    if message is not None:
        raise CommandError(message)
    display = TextProgress()
    print(
        f"napari-unetkit demo: training a U-Net on synthetic nuclei for up to "
        f"{format_seconds(args.time_limit)} (Ctrl-C stops early and keeps the best model)."
    )
    with CancelOnInterrupt() as cancel:
        result = run_demo(
            folder,
            time_limit=args.time_limit,
            seed=args.seed,
            overwrite=args.overwrite,
            progress=_train_progress_printer(display),
            cancel=cancel,
        )
    scores = result.scores
    training = result.training
    print(
        f"Trained {training.epochs_run} epoch(s), {training.steps_run} steps in "
        f"{format_seconds(training.elapsed)}."
    )
    print("Scores on a held-out test image (never seen in training):")
    print(
        f"  instance F1 at IoU 0.5: {scores['f1']:.3f}   precision {scores['precision']:.3f}"
        f"   recall {scores['recall']:.3f}"
    )
    print(f"  foreground IoU: {scores['foreground_iou']:.3f}   Dice: {scores['dice']:.3f}")
    print(f"Results written to {result.folder.resolve()}:")
    for role, path in result.files.items():
        print(f"  {path.name:<24} {role}")
    return 0


def cmd_weightmap(args: argparse.Namespace) -> int:
    """``unetkit weightmap``: labels TIFF in, weight-map TIFF out."""
    from napari_unetkit.io import read_image, write_tiff
    from napari_unetkit.weightmap import weights_and_target

    outputs = check_outputs(
        {"--out": args.out, "--target": args.target},
        args.overwrite,
        inputs={"--labels": args.labels},
    )
    out, target_out = outputs["--out"], outputs["--target"]
    settings = _weightmap_settings(args)
    labels = read_image(args.labels)
    raise_problems(weightmap_problems(labels))  # the pre-check the Weight-map panel runs
    weights, target = weights_and_target(labels, settings=settings)
    if labels.size and not np.any(labels):
        warnings.warn(
            f"{args.labels} holds no cells (every label is 0), so the weight map has no cell "
            "or border weights; check that you chose the labels file.",
            UserWarning,
            stacklevel=1,
        )
    metadata = {"weightmap": settings.to_dict(), "source": str(args.labels)}
    write_tiff(out, weights, overwrite=args.overwrite, metadata=metadata)
    print(f"Weight map written to {out} (min {weights.min():.3g}, max {weights.max():.3g}).")
    if target_out is not None:
        write_tiff(target_out, target, overwrite=args.overwrite, labels=True)
        print(f"Separated target written to {target_out}.")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    """``unetkit evaluate``: scores of a prediction against true labels."""
    from napari_unetkit.io import read_image
    from napari_unetkit.metrics import evaluate

    truth, pred = read_image(args.truth), read_image(args.pred)
    for path, labels in ((args.truth, truth), (args.pred, pred)):
        message = labels_dtype_problem(labels.dtype)
        if message is not None:
            raise CommandError(f"{path}: {message}")
    if truth.shape != pred.shape:
        raise CommandError(f"Shapes differ: truth {truth.shape}, prediction {pred.shape}.")
    scores = evaluate(truth, pred, iou_threshold=args.iou_threshold)
    if args.json:
        print(json.dumps(scores, indent=2, default=float))
    else:
        for name, value in scores.items():
            text = f"{value:.4f}" if isinstance(value, float) else str(value)
            print(f"{name:>20}: {text}")
    return 0


# ------------------------------------------------------------------------------------------
# Parser and entry point
# ------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """Return the ``unetkit`` argument parser (it imports PyTorch, for the defaults)."""
    from napari_unetkit.demo import DEMO_TIME_LIMIT
    from napari_unetkit.prediction import OUTPUTS
    from napari_unetkit.speed.precision import PRECISIONS
    from napari_unetkit.tiling import BORDERS
    from napari_unetkit.training import MAX_BATCH_SIZE, MAX_SEED

    parser = argparse.ArgumentParser(
        prog="unetkit",
        description="Train and run U-Nets for microscopy segmentation (napari-unetkit).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--debug", action="store_true", help="Show full tracebacks for errors.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    weightmap = commands.add_parser(
        "weightmap",
        help="Compute the U-Net boundary weight map of a labels image.",
        description="Labels TIFF in (instance ids, 0 = background), float32 weight map out. "
        "Stacks are processed slice by slice.",
    )
    weightmap.add_argument("--labels", required=True, help="Instance labels (TIFF or .npy).")
    weightmap.add_argument("--out", required=True, help="Output weight map TIFF.")
    weightmap.add_argument("--target", help="Also write the separated target labels here.")
    weightmap.add_argument("--overwrite", action="store_true", help="Replace existing outputs.")
    _add_weightmap_options(weightmap)
    weightmap.set_defaults(handler=cmd_weightmap)

    evaluate = commands.add_parser(
        "evaluate",
        help="Score predicted labels against true labels.",
        description="Foreground IoU, Dice, and instance precision/recall/F1/AP at an IoU "
        "threshold (one-to-one Hungarian matching).",
    )
    evaluate.add_argument("--truth", required=True, help="True labels (TIFF or .npy).")
    evaluate.add_argument("--pred", required=True, help="Predicted labels (TIFF or .npy).")
    evaluate.add_argument("--iou-threshold", type=float, default=0.5, help="Default 0.5.")
    evaluate.add_argument("--json", action="store_true", help="Print JSON.")
    evaluate.set_defaults(handler=cmd_evaluate)

    train = commands.add_parser(
        "train",
        help="Train a U-Net on images and labels (TIFF).",
        description="Train (or fine-tune) a U-Net. Repeat --image/--labels for several pairs. "
        "Stacks (Z, Y, X) are used slice by slice. Ctrl-C stops cleanly and keeps the best "
        "model.",
    )
    data = train.add_argument_group("data")
    data.add_argument("--image", action="append", help="Image (TIFF/.npy/.zarr).")
    data.add_argument("--labels", action="append", help="Labels for --image.")
    data.add_argument(
        "--region", action="append", help="Annotated-region mask per image (sparse labels)."
    )
    data.add_argument("--val-image", action="append", default=[], help="Validation image.")
    data.add_argument("--val-labels", action="append", default=[], help="Validation labels.")
    data.add_argument(
        "--mode",
        choices=MODES,
        help="instances: labels are cell ids (default); classes: 1..K are classes, 0 = "
        "not annotated. With --init-from: the model's mode.",
    )
    data.add_argument("--channel-axis", type=int, help="Channel axis of colour images.")
    data.add_argument(
        "--channels",
        type=_channel_list,
        help="Channels the model reads, counted from 0, e.g. 0,1 for the red (nuclei) and "
        "green (cytoplasm) of an RGB image with an empty blue (default: all). Prediction "
        "picks the same channels.",
    )
    train.add_argument("--out", help="Model file to write (.unet).")
    train.add_argument("--overwrite", action="store_true", help="Replace an existing file.")
    train.add_argument("--resume", help="Model file of an interrupted run to continue.")
    cli_project.add_train_options(train)
    budget = train.add_argument_group("budget")
    budget.add_argument("--epochs", type=int, help="Number of epochs.")
    budget.add_argument("--time-limit", type=float, help="Training time limit in seconds.")
    budget.add_argument("--steps-per-epoch", type=int, help="Steps between validations.")
    knobs = train.add_argument_group("settings")
    knobs.add_argument("--patch-size", type=int, help="Training patch side (pixels).")
    knobs.add_argument("--batch-size", type=int, help=f"Patches per step (1 to {MAX_BATCH_SIZE}).")
    knobs.add_argument("--base-channels", type=int, help="Width of the first level.")
    knobs.add_argument("--depth", type=int, help="Number of down-sampling steps.")
    knobs.add_argument("--lr", type=float, help="Peak learning rate.")
    knobs.add_argument("--val-fraction", type=float, help="Held-out fraction (0 to <1).")
    knobs.add_argument("--no-augment", action="store_true", help="Disable augmentation.")
    knobs.add_argument(
        "--seed", type=int, default=0, help=f"Random seed, 0 to {MAX_SEED} (default 0)."
    )
    knobs.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps.")
    _add_weightmap_options(train)
    train.set_defaults(handler=cmd_train)

    predict = commands.add_parser(
        "predict",
        help="Predict labels of an image with a trained model.",
        description="Overlap-tile prediction of a 2D image or a stack (slice by slice).",
    )
    predict.add_argument(
        "--model", required=True, help="Model file (.unet or an exported .bioimageio.zip)."
    )
    predict.add_argument(
        "--image", required=True, help="Image (TIFF/.npy/.zarr), or a pattern or folder."
    )
    predict.add_argument("--out", required=True, help="Labels TIFF (or .zarr, or a folder).")
    predict.add_argument(
        "--probabilities",
        nargs="?",
        const="",
        help="Also write probabilities to this TIFF (no name: into the zarr store / folder).",
    )
    predict.add_argument("--overwrite", action="store_true", help="Replace existing files.")
    predict.add_argument(
        "--output",
        choices=tuple(output for output in OUTPUTS if output != "probabilities"),
        default="auto",
        help="auto: instances for instance models, classes for class models.",
    )
    predict.add_argument(
        "--threshold",
        type=float,
        help="Foreground threshold (default: the model's own, chosen on its validation data).",
    )
    predict.add_argument(
        "--min-size",
        type=int,
        help="Smallest instance in pixels (default: the model's own).",
    )
    predict.add_argument("--link-3d", action="store_true", help="Link instances across slices.")
    predict.add_argument(
        "--tile-size",
        type=int,
        help="Tile size in pixels (default: auto; at least the model's context margin, e.g. "
        "96 for depth 4).",
    )
    predict.add_argument("--tta", action="store_true", help="Average over flips (slower).")
    predict.add_argument(
        "--border",
        choices=BORDERS,
        default="network",
        help="Beyond the image border: the network's zero padding, as in training and as one "
        "whole-image call (default), or the image mirrored (the paper's overlap-tile).",
    )
    predict.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help="auto (default): 16-bit coarse levels where the CPU or GPU computes them natively, "
        "probabilities within 0.01 of float32; float32: exact everywhere; mixed: force that; "
        "half: everything 16-bit (fastest, probabilities may move by about 0.1).",
    )
    predict.add_argument("--channel-axis", type=int, help="Channel axis of colour images.")
    predict.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps.")
    cli_bigdata.add_options(predict)
    predict.set_defaults(handler=cmd_predict)

    export = commands.add_parser(
        "export",
        help="Write a model as a bioimage.io package (format 0.5).",
        description="Package a model for bioimage.io, deepImageJ, QuPath, ilastik and "
        "bioimageio.core: PyTorch, TorchScript and ONNX weights, percentile pre-processing, "
        "test tensors, README. Instances need napari-unetkit (see docs/bioimageio.md).",
    )
    export.add_argument(
        "--model", required=True, help="Model file (.unet or an exported .bioimageio.zip)."
    )
    export.add_argument("--out", required=True, help="Package to write (.bioimageio.zip).")
    export.add_argument("--overwrite", action="store_true", help="Replace an existing file.")
    export.add_argument(
        "--test-image", help="Raw 2D image for the test tensors (default: synthetic nuclei)."
    )
    export.add_argument("--channel-axis", type=int, help="Channel axis of --test-image.")
    export.add_argument("--name", help="Model name (default: from --out).")
    export.add_argument(
        "--author",
        action="append",
        help="Author name (repeat for several; default 'napari-unetkit user').",
    )
    export.add_argument("--license", default="CC-BY-4.0", help="SPDX licence (CC-BY-4.0).")
    export.set_defaults(handler=cmd_export)

    cli_project.add_project_command(commands)

    demo = commands.add_parser(
        "demo",
        help="Train on built-in synthetic nuclei, predict, score and write results.",
        description="The Quick start job: synthetic touching nuclei -> training -> prediction "
        "of a held-out image -> labels TIFF, weight-map TIFF, PNG overlay, scores.",
    )
    demo.add_argument("--out", default="demo-output", help="Output folder (default demo-output).")
    demo.add_argument("--overwrite", action="store_true", help="Replace earlier demo files.")
    demo.add_argument(
        "--time-limit",
        type=float,
        default=DEMO_TIME_LIMIT,
        help=f"Training seconds (default {DEMO_TIME_LIMIT:g}).",
    )
    demo.add_argument(
        "--seed", type=int, default=0, help=f"Random seed, 0 to {MAX_SEED} (default 0)."
    )
    demo.set_defaults(handler=cmd_demo)
    return parser


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Print a warning as one ``unetkit: warning:`` line (no source location or code)."""
    print(f"unetkit: warning: {_one_line(str(message))}", file=sys.stderr)


def error_message(error: BaseException) -> str:
    """Return the one-line message the command prints for an error."""
    from napari_unetkit.device import is_out_of_memory
    from napari_unetkit.io import os_error_text
    from napari_unetkit.modelfile import ModelFileError

    if isinstance(error, OSError):
        return _one_line(os_error_text(error) or type(error).__name__)
    expected = (CommandError, ModelFileError, ValueError, FloatingPointError)
    if isinstance(error, expected):
        return _one_line(str(error) or type(error).__name__)
    if is_out_of_memory(error):
        return (
            "out of memory; use a smaller --tile-size (predict) or a smaller --patch-size or "
            "--batch-size (train), or the CPU (--device cpu)."
        )
    detail = _one_line(str(error)) or "no details"
    return (
        f"unexpected {type(error).__name__}: {detail} (run again with --debug for the "
        "traceback, and please report it)."
    )


def _exit_status(signum: int | None) -> int:
    """Return the exit status of a command stopped by ``signum`` (128 + it; 130 for Ctrl-C)."""
    return 128 + (signum or signal.SIGINT)


def run(handler: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run a subcommand, turning errors into one-line messages (tracebacks with ``--debug``).

    Ctrl-C, SIGTERM and SIGHUP stop it: a job in progress stops cleanly at its next check
    (a training keeps its best model), a second signal, or one outside a job, aborts; either
    way no partial file is left and the exit status is 128 + the signal number (130 for
    Ctrl-C).
    """
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        try:
            return handler(args)
        except Cancelled as error:
            text = str(error)
            detail = "" if text in ("", GENERIC_CANCEL) else f" {_one_line(text)}"
            print(f"unetkit: cancelled.{detail}", file=sys.stderr)
            return _exit_status(_Stops.cancelled)
        except KeyboardInterrupt:
            print("\nunetkit: interrupted.", file=sys.stderr)
            return _exit_status(_Stops.aborted)
        except InvalidInput as error:
            for problem in error.problems:
                print(f"unetkit: error: {_one_line(problem.message)}", file=sys.stderr)
            return EXIT_ERROR
        except Exception as error:
            if _Stops.aborted is not None:  # a library turned the interrupt into its own error
                print("\nunetkit: interrupted.", file=sys.stderr)
                return _exit_status(_Stops.aborted)
            if args.debug:
                raise
            print(f"unetkit: error: {error_message(error)}", file=sys.stderr)
            return EXIT_ERROR


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``unetkit`` command; returns the exit status.

    From the first line on, Ctrl-C, SIGTERM and SIGHUP end the command with a one-line message
    (never a traceback), also while PyTorch is still being imported.
    """
    _Stops.cancelled = _Stops.aborted = None
    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {signum: signal.signal(signum, _abort) for signum in STOP_SIGNALS}
    try:
        try:
            parser = build_parser()
            args = parser.parse_args(argv)
        except KeyboardInterrupt:
            print("\nunetkit: interrupted.", file=sys.stderr)
            return _exit_status(_Stops.aborted)
        return run(args.handler, args)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
