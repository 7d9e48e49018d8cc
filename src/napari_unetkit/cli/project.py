"""``unetkit train --project`` / ``--init-from`` and ``unetkit project``: correct and retrain.

:mod:`napari_unetkit.cli.commands` hands ``train`` over to :func:`train_project` when
``--project`` is given: the whole training set of a project folder
(:mod:`napari_unetkit.project`) trains into the project's next model version
(``models/vNNN.unet``), which is then recorded with its parent and the entries it saw.
``--init-from`` fine-tunes from a model (a file, or ``latest``: the project's newest version);
without it the first version trains from scratch.

``unetkit project add|list|remove FOLDER`` grows, shows and prunes the training set headless.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

#: ``--init-from latest``: the project's newest model version.
LATEST = "latest"


def add_train_options(parser: argparse.ArgumentParser) -> None:
    """Add ``--project`` and ``--init-from`` to the ``train`` parser."""
    group = parser.add_argument_group(
        "fine-tuning and projects (correct and retrain)",
        "--init-from starts a new run from a model's weights (its architecture, mode, classes, "
        "channels and normalisation; a fresh optimiser and history), unlike --resume, which "
        "continues an interrupted run. --project trains on a project's whole training set and "
        "saves the result as the project's next model version.",
    )
    group.add_argument(
        "--init-from",
        metavar="MODEL",
        help="Model file to fine-tune from (with --project also 'latest': the newest version).",
    )
    group.add_argument(
        "--project",
        metavar="FOLDER",
        help="Project folder (unetkit project add ...): train on all its entries; no --image, "
        "--labels or --out.",
    )


def check_train_arguments(args: argparse.Namespace) -> None:
    """Refuse contradictory ``train`` options in one sentence, before anything is read."""
    from napari_unetkit.cli.commands import CommandError

    if args.init_from is not None and args.resume is not None:
        raise CommandError(
            "--init-from starts a new run from a model and --resume continues an interrupted "
            "one; give only one of them."
        )
    if args.init_from is not None:
        fixed = {"--depth": args.depth, "--base-channels": args.base_channels}
        fixed["--channels"] = args.channels
        for option, value in fixed.items():
            if value is not None:
                raise CommandError(f"{option} is fixed by the --init-from model; leave it out.")
        if args.mode is not None:
            _check_mode(args.init_from, args.mode, args.project)
    if args.project is not None:
        given = [
            name
            for name, value in (
                ("--image", args.image),
                ("--labels", args.labels),
                ("--region", args.region),
                ("--out", args.out),
                ("--resume", args.resume),
                ("--channel-axis", args.channel_axis),
            )
            if value
        ]
        if given:
            raise CommandError(
                f"--project trains on the project's entries into its next model version; "
                f"leave out {', '.join(given)}."
            )
        return
    if args.init_from == LATEST:
        raise CommandError("--init-from latest needs --project; otherwise give a model file.")
    missing = [
        name
        for name, value in (("--image", args.image), ("--labels", args.labels), ("--out", args.out))
        if not value
    ]
    if missing:
        raise CommandError(
            f"Give {' and '.join(missing)} (or --project FOLDER to train on a project)."
        )


def _check_mode(init_from: str, mode: str, project: str | None) -> None:
    """Refuse a ``--mode`` other than the base model's."""
    from napari_unetkit.cli.commands import CommandError
    from napari_unetkit.modelfile import read_description

    if init_from == LATEST:
        return  # checked against the model once the project names it
    stored = read_description(init_from).get("mode")
    if stored is not None and stored != mode:
        raise CommandError(
            f"--mode {mode} differs from the --init-from model's mode ({stored}); leave "
            "--mode out to fine-tune in the model's mode."
        )


def _starting_point(project, init_from: str | None) -> tuple[str | None, int | None, str | None]:
    """Return (model file to start from, parent version, outside base file) for ``--init-from``."""
    from napari_unetkit.cli.commands import CommandError

    if init_from is None:
        return None, None, None
    if init_from == LATEST:
        latest = project.latest_model()
        if latest is None:
            raise CommandError(
                f"The project {project.folder} has no model version yet; train the first one "
                "without --init-from, or give a model file."
            )
        return str(latest.path), latest.version, None
    path = Path(init_from).expanduser().absolute()
    for model in project.models():
        if model.path == path:
            return str(path), model.version, None
    return str(path), None, str(path)


def train_project(args: argparse.Namespace, stack: contextlib.ExitStack) -> int:
    """``unetkit train --project FOLDER``: train the project's next model version.

    ``stack`` closes the validation files (``--val-image``) when the command ends.
    """
    from napari_unetkit.cli import commands as cli
    from napari_unetkit.project import Project
    from napari_unetkit.training import TrainConfig, train

    project = Project.open(args.project)
    init_from, parent, base = _starting_point(project, args.init_from)
    training_set = project.training_pairs()
    validation = None
    if args.val_image or args.val_labels:
        validation = cli._read_pairs(args.val_image, args.val_labels, "validation", stack)
    values = cli._training_values(args, training_set.channel_axis, project.folder.name)
    config = TrainConfig(**values)
    out = project.new_model_path()
    start = f"fine-tuning {Path(init_from).name}" if init_from else "from scratch"
    print(
        f"Training on the {len(training_set.pairs)} entries of {project.folder} ({start}); "
        f"new version: {out}",
        file=sys.stderr,
    )
    display = cli.TextProgress()
    with cli.CancelOnInterrupt() as cancel:
        result = train(
            training_set.pairs,
            config,
            out=out,
            validation=validation,
            regions=training_set.regions,
            init_from=init_from,
            progress=cli._train_progress_printer(display),
            cancel=cancel,
            overwrite=False,
        )
    display.show("", force=False)
    version = project.record_model(
        result.model_path, parent=parent, base=base, entries=training_set.entry_ids
    )
    cli.print_training_result(result)
    origin = f" from version {parent}" if parent else (f" from {base}" if base else "")
    print(f"Recorded as version {version.name}{origin} of {project.folder}.")
    return 0


# ------------------------------------------------------------------------------------------
# unetkit project add | list | remove
# ------------------------------------------------------------------------------------------


def add_project_command(commands) -> None:
    """Add the ``project`` subcommand (``add``, ``list``, ``remove``) to ``commands``."""
    project = commands.add_parser(
        "project",
        help="Grow, list and prune a project's training set (correct and retrain).",
        description="A project folder holds corrected 2D slices (image, labels, optional "
        "region of checked pixels) and the model versions trained on them; train with "
        "'unetkit train --project FOLDER [--init-from latest]'.",
    )
    actions = project.add_subparsers(dest="action", metavar="ACTION", required=True)
    add = actions.add_parser("add", help="Add a corrected 2D slice (created if missing).")
    add.add_argument("folder", help="Project folder.")
    add.add_argument("--image", required=True, help="2D image (TIFF/.npy), colour allowed.")
    add.add_argument("--labels", required=True, help="Its corrected labels (0 = background).")
    add.add_argument("--region", help="Mask of the checked area (else all of the slice).")
    add.add_argument("--channel-axis", type=int, help="Channel axis of a colour image.")
    add.add_argument("--source", help="Name shown in lists (default: the image file name).")
    add.set_defaults(handler=cmd_project_add)
    show = actions.add_parser("list", help="List the entries and model versions.")
    show.add_argument("folder", help="Project folder.")
    show.set_defaults(handler=cmd_project_list)
    remove = actions.add_parser("remove", help="Remove an entry and its files.")
    remove.add_argument("folder", help="Project folder.")
    remove.add_argument("entry", help="Entry id, e.g. e0003 (see 'list').")
    remove.set_defaults(handler=cmd_project_remove)


def cmd_project_add(args: argparse.Namespace) -> int:
    """``unetkit project add``: copy a corrected slice into the project."""
    from napari_unetkit.io import read_image
    from napari_unetkit.layout import infer_channel_axis
    from napari_unetkit.project import Project

    image, labels = read_image(args.image), read_image(args.labels)
    region = None if args.region is None else read_image(args.region)
    channel_axis = args.channel_axis
    if channel_axis is None:
        channel_axis = infer_channel_axis(image.shape, labels_shape=labels.shape)
    project = Project.open_or_create(args.folder)
    entry = project.add(
        image,
        labels,
        region=region,
        source=args.source if args.source is not None else Path(args.image).name,
        channel_axis=channel_axis,
    )
    total = len(project.entries())
    print(
        f"Added {entry.id} ({entry.n_objects} objects, {entry.annotated_pixels} annotated "
        f"pixels) to {project.folder}; it holds {total} entries."
    )
    return 0


def cmd_project_list(args: argparse.Namespace) -> int:
    """``unetkit project list``: the entries and model versions of a project."""
    from napari_unetkit.project import Project

    project = Project.open(args.folder)
    entries, models = project.entries(), project.models()
    print(f"{project.folder}: {len(entries)} entries, {len(models)} model versions")
    for e in entries:
        region = "region" if e.has_region else "whole"
        print(
            f"  {e.id}  {e.shape[0]}x{e.shape[1]}  {e.channels} ch  {e.n_objects:4d} objects  "
            f"{region:6s}  {e.added}  {e.source}"
        )
    for m in models:
        origin = f"from v{m.parent:03d}" if m.parent else (f"from {m.base}" if m.base else "new")
        score = "n/a" if m.score is None else f"{m.score:.3f}"
        missing = "" if m.exists else "  (file missing)"
        print(
            f"  {m.name}  score {score}  {len(m.entries)} entries  {origin}  {m.created}{missing}"
        )
    return 0


def cmd_project_remove(args: argparse.Namespace) -> int:
    """``unetkit project remove``: remove one entry."""
    from napari_unetkit.project import Project

    project = Project.open(args.folder)
    project.remove(args.entry)
    print(f"Removed {args.entry}; {project.folder} holds {len(project.entries())} entries.")
    return 0
