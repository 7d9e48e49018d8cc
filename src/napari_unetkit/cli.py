"""The ``unetkit`` command: train, predict, weight maps, evaluation and the demo, from a shell.

Every subcommand is a thin wrapper over the engine: it reads files, calls the same functions
the napari widgets call and writes files atomically. Errors end in a one-line message and a
non-zero exit status (``--debug`` shows the traceback); existing outputs are never replaced
without ``--overwrite``.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from napari_unetkit import __version__
from napari_unetkit.progress import Cancelled

EXIT_ERROR = 1
EXIT_INTERRUPTED = 130


class CommandError(Exception):
    """An error whose message is the whole story (shown without a traceback)."""


# ------------------------------------------------------------------------------------------
# Small shared pieces
# ------------------------------------------------------------------------------------------


def check_output(path: str | Path, overwrite: bool) -> Path:
    """Refuse an existing output (unless ``overwrite``) and a missing folder, before any work."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise CommandError(f"{path} already exists; pass --overwrite to replace it.")
    if not path.parent.is_dir():
        raise CommandError(f"The folder {path.parent} does not exist; create it first.")
    return path


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


class CancelOnInterrupt:
    """First Ctrl-C sets a cancel event (the job stops cleanly); a second one aborts."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self._previous = None

    def _handler(self, signum, frame) -> None:
        if self.event.is_set():
            raise KeyboardInterrupt
        self.event.set()
        print("\nStopping after the current step (Ctrl-C again to abort)...", file=sys.stderr)

    def __enter__(self) -> threading.Event:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handler)
        return self.event

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


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
        choices=("paper", "falk2019"),
        default="paper",
        help="paper: w0 10, sigma 5 (Ronneberger et al. 2015); falk2019: the authors' Fiji "
        "tool (ridge weight 50, sigma 6, smooth background weights). Default: paper.",
    )
    group.add_argument("--w0", type=float, help="Border weight amplitude (overrides preset).")
    group.add_argument("--sigma", type=float, help="Border width in pixels (overrides preset).")
    group.add_argument(
        "--class-balance", choices=("none", "balanced", "falk"), help="Class weights w_c."
    )
    group.add_argument(
        "--no-separate", action="store_true", help="Do not cut ridges between touching cells."
    )
    group.add_argument(
        "--border-on",
        choices=("background", "all"),
        help="Where the border term is added (default: background).",
    )


# ------------------------------------------------------------------------------------------
# Subcommands
# ------------------------------------------------------------------------------------------


def cmd_weightmap(args: argparse.Namespace) -> int:
    """``unetkit weightmap``: labels TIFF in, weight-map TIFF out."""
    from napari_unetkit.io import read_image, write_tiff
    from napari_unetkit.weightmap import weights_and_target

    out = check_output(args.out, args.overwrite)
    target_out = check_output(args.target, args.overwrite) if args.target else None
    settings = _weightmap_settings(args)
    labels = read_image(args.labels)
    weights, target = weights_and_target(labels, settings=settings)
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
    """Return the ``unetkit`` argument parser."""
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
    return parser


def run(handler: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run a subcommand, turning expected errors into one-line messages."""
    from napari_unetkit.modelfile import ModelFileError

    expected = (CommandError, ModelFileError, ValueError, OSError)
    try:
        return handler(args)
    except Cancelled:
        print("unetkit: cancelled.", file=sys.stderr)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        print("\nunetkit: interrupted.", file=sys.stderr)
        return EXIT_INTERRUPTED
    except expected as error:
        if args.debug:
            raise
        message = str(error) or type(error).__name__
        print(f"unetkit: error: {message}", file=sys.stderr)
        return EXIT_ERROR


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``unetkit`` command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    return run(args.handler, args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
