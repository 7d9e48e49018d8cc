"""``unetkit predict`` for big data and many files: zarr output, folders, dask clusters.

:mod:`napari_unetkit.cli` hands ``predict`` over to :func:`predict_command` when the command
asks for something beyond one TIFF in and one TIFF out:

- ``--out x.zarr`` / ``x.ome.zarr``: the image (zarr, OME-Zarr, TIFF or ``.npy``) is read
  lazily and the labels (and, with ``--probabilities``, probabilities) are written chunk by
  chunk into an OME-Zarr store (:mod:`napari_unetkit.chunked`); a killed run resumes.
- ``--image 'plate/*.tif'`` (a pattern) or ``--image folder/``: every matching image is
  predicted into ``--out`` (a folder), one output per input, existing outputs skipped unless
  ``--overwrite``; a file that fails is reported and the batch goes on; a summary ends it.
- ``--workers N`` (a local cluster) or ``--scheduler ADDRESS`` (an existing one, e.g. started
  by ``dask-jobqueue``): zarr outputs are computed by ``dask.distributed`` workers.

One TIFF in and one TIFF out stays with :func:`napari_unetkit.cli.commands.cmd_predict`, unchanged.
"""

from __future__ import annotations

import argparse
import os
import sys
from contextlib import ExitStack
from pathlib import Path

from napari_unetkit import bigio
from napari_unetkit.checks import Problem, raise_problems, whole_number_problem

#: ``--probabilities`` given without a path: into the zarr store / next to each output.
BESIDE = ""


def add_options(parser: argparse.ArgumentParser) -> None:
    """Add the big-data options to the ``predict`` parser."""
    from napari_unetkit.batch import FORMATS

    group = parser.add_argument_group(
        "big data, many files, clusters (see docs/big-data.md)",
        "--out x.zarr or x.ome.zarr writes a chunked OME-Zarr store (any input size; a killed "
        "run resumes). --image with a pattern ('plate/*.tif') or a folder predicts every "
        "image into the folder --out.",
    )
    group.add_argument(
        "--format",
        choices=FORMATS,
        default="tiff",
        help="Output format of each file of a pattern or folder (default tiff).",
    )
    group.add_argument(
        "--workers", type=int, help="Run zarr outputs on a local dask cluster of N workers."
    )
    group.add_argument("--scheduler", help="Run zarr outputs on this dask scheduler address.")
    group.add_argument(
        "--chunk-size",
        type=int,
        default=bigio.DEFAULT_CHUNK,
        help=f"Output chunk side in pixels (default {bigio.DEFAULT_CHUNK}).",
    )
    group.add_argument(
        "--block-size",
        type=int,
        default=bigio.DEFAULT_BLOCK,
        help="Slices with more pixels than this side squared are predicted in square blocks of "
        f"this side, rounded up to the chunk size; smaller slices whole (default "
        f"{bigio.DEFAULT_BLOCK}).",
    )
    group.add_argument(
        "--margin",
        type=int,
        default=bigio.DEFAULT_MARGIN,
        help="Context in pixels around each block (see --block-size); larger than the largest "
        f"object (default {bigio.DEFAULT_MARGIN}).",
    )


def _is_pattern(text: str) -> bool:
    folder = Path(text).is_dir() and not bigio.is_zarr_path(text)
    return folder or any(char in text for char in "*?[")


def wants_this(args: argparse.Namespace) -> bool:
    """Whether ``predict`` goes beyond one TIFF in, one TIFF out (see the module docstring)."""
    return (
        bigio.is_zarr_path(args.out)
        or _is_pattern(args.image)
        or args.workers is not None
        or args.scheduler is not None
    )


def check_plain(args: argparse.Namespace) -> None:
    """Refuse big-data options that a plain TIFF-to-TIFF prediction cannot use."""
    from napari_unetkit.cli.commands import CommandError

    if args.probabilities == BESIDE:
        raise CommandError(
            "--probabilities needs a TIFF file name here (it takes no name only with a zarr "
            "output or a folder of images)."
        )


def predict_command(args: argparse.Namespace) -> int:
    """Run ``unetkit predict`` for a zarr output, a pattern or folder, or a cluster."""
    from napari_unetkit.cli.commands import CommandError

    sizes = (
        ("workers", whole_number_problem(args.workers, "--workers", 1, allow_none=True)),
        ("chunk_size", whole_number_problem(args.chunk_size, "--chunk-size", 16)),
        ("block_size", whole_number_problem(args.block_size, "--block-size", 16)),
        ("margin", whole_number_problem(args.margin, "--margin", 0)),
    )
    raise_problems([Problem(field, message) for field, message in sizes if message])
    if args.link_3d:
        raise CommandError(
            "--link-3d needs the whole stack in memory; it works with a TIFF output only."
        )
    if _is_pattern(args.image):
        return _predict_many(args)
    if not bigio.is_zarr_path(args.out):
        raise CommandError(
            "--workers and --scheduler need a zarr output (--out result.zarr or .ome.zarr)."
        )
    with ExitStack() as stack:
        predictor = _predictor(args)
        client = _client(args, stack)
        _predict_zarr(args, predictor, Path(args.image), Path(args.out), client)
    return 0


# ------------------------------------------------------------------------------ one image


def _predictor_options(args: argparse.Namespace) -> dict:
    return {
        "device": args.device,
        "tile_size": args.tile_size,
        "tta": args.tta,
        "border": args.border,
        "precision": args.precision,
    }


def _predictor(args: argparse.Namespace):
    from napari_unetkit.cli.commands import load_predictor

    return load_predictor(args)


def _client(args: argparse.Namespace, stack: ExitStack):
    """Return a client for --workers / --scheduler (closed with ``stack``), or ``None``."""
    if args.workers is None and args.scheduler is None:
        return None
    from napari_unetkit import chunked

    distributed = bigio.require("distributed", "distributed")
    if args.scheduler is not None:
        client = distributed.Client(args.scheduler)
    else:
        cluster = chunked.start_local_cluster(args.workers)
        stack.callback(cluster.close)
        client = distributed.Client(cluster)
    stack.callback(client.close)
    return client


def _predict_zarr(args, predictor, image: Path, out: Path, client) -> None:
    """Predict one image into a zarr store, with a progress line; print what was done."""
    from napari_unetkit import batch, chunked
    from napari_unetkit.cli.commands import (
        CancelOnInterrupt,
        CommandError,
        prediction_progress_printer,
        refuse_colour_for_grey,
    )

    if not out.parent.is_dir():
        raise CommandError(f"The folder {out.parent} does not exist; create it first.")
    with bigio.open_image(image) as lazy:
        channel_axis = args.channel_axis
        if channel_axis is None:
            channel_axis = batch.channel_axis_of(lazy, predictor.input_channels[0])
            if lazy.axes is None:  # OME-Zarr axes say what each axis is
                refuse_colour_for_grey(image, tuple(lazy.array.shape), predictor.input_channels[0])
        job = None
        if client is not None:
            job = chunked.worker_job(args.model, image, **_predictor_options(args))
            cores = os.cpu_count() or 1
            job.threads = max(1, cores // max(args.workers or 1, 1)) if args.workers else None
        run = {
            "model": str(Path(args.model).resolve()),
            "model_sha256": job.digest if job else chunked.file_digest(args.model),
            "image": str(image.resolve()),
            "predictor": _predictor_options(args),
        }
        show = prediction_progress_printer("part")
        with CancelOnInterrupt() as cancel:
            result = chunked.predict_to_zarr(
                predictor,
                lazy.array,
                out,
                client=client,
                job=job,
                progress=show,
                cancel=cancel,
                channel_axis=channel_axis,
                output=args.output,
                threshold=args.threshold,
                min_size=args.min_size,
                probabilities=args.probabilities is not None,
                run=run,
                overwrite=args.overwrite,
                chunk=args.chunk_size,
                block=args.block_size,
                plane_pixels=args.block_size**2,
                margin=args.margin,
                **lazy.labels_metadata(channel_axis),
            )
    resumed = result.units - result.computed
    note = f", {resumed} of {result.units} parts were already done" if resumed else ""
    print(f"Labels written to {out} ({result.output}, OME-Zarr{note}).")
    if result.cut_objects:
        print(
            f"unetkit: warning: {result.cut_objects} object(s) larger than --margin "
            f"({args.margin} px) may be split at block borders; rerun with a larger --margin.",
            file=sys.stderr,
        )


# ---------------------------------------------------------------------------- many images


def _predict_many(args: argparse.Namespace) -> int:
    from napari_unetkit import batch
    from napari_unetkit.cli.commands import CommandError, cmd_predict, error_message

    images = batch.find_images(args.image)
    if not images:
        raise CommandError(f"No images (TIFF, .npy, zarr) match {args.image}.")
    folder = Path(args.out)
    if bigio.is_zarr_path(folder) or folder.suffix.lower() in (".tif", ".tiff"):
        raise CommandError(f"With several images --out is a folder, got {folder}.")
    if not folder.parent.is_dir():
        raise CommandError(f"The folder {folder.parent} does not exist; create it first.")
    if args.format == "tiff" and (args.workers is not None or args.scheduler is not None):
        raise CommandError("--workers and --scheduler need --format zarr.")
    try:
        outputs = batch.plan_outputs(images, folder, args.format)
    except ValueError as error:
        raise CommandError(str(error)) from None
    folder.mkdir(exist_ok=True)
    print(f"Predicting {len(images)} image(s) into {folder}.", file=sys.stderr)
    with ExitStack() as stack:
        client = _client(args, stack) if args.format == "zarr" else None
        predictor = _predictor(args) if args.format == "zarr" else None

        def predict_one(image: Path, out: Path) -> None:
            if args.format == "zarr":
                _predict_zarr(args, predictor, image, out, client)
            else:  # exactly the one-file command
                cmd_predict(_single(args, image, out))

        def describe(error: BaseException) -> str:
            if args.debug:
                raise error
            return error_message(error)

        summary = batch.run_batch(
            images,
            outputs,
            predict_one,
            overwrite=args.overwrite,
            on_file=lambda n, total, image: print(f"[{n}/{total}] {image.name}", file=sys.stderr),
            on_error=lambda image, message: print(
                f"unetkit: error: {image.name}: {message}", file=sys.stderr
            ),
            describe_error=describe,
        )
    print(summary.text())
    return 1 if summary.failed else 0


def _single(args: argparse.Namespace, image: Path, out: Path) -> argparse.Namespace:
    """Return the arguments of a one-TIFF prediction of ``image`` into ``out``."""
    single = argparse.Namespace(**vars(args))
    single.image, single.out = str(image), str(out)
    if args.probabilities is not None:
        single.probabilities = str(out.with_name(out.stem + "_probabilities.tif"))
    return single
