"""The ``unetkit`` command line: the second front end on the engine, next to napari's panels.

Modules
    :mod:`~napari_unetkit.cli.commands`
        Argument parsing and the subcommands (``train``, ``predict``, ``export``,
        ``weightmap``, ``evaluate``, ``demo``): TIFF in and out, the progress line, one-line
        errors, exit statuses.
    :mod:`~napari_unetkit.cli.bigdata`
        ``predict`` with zarr outputs, file patterns and folders, ``--workers`` /
        ``--scheduler``; :mod:`~napari_unetkit.cli.commands` hands such commands over to it.

:func:`main` is the console entry point (``unetkit = "napari_unetkit.cli:main"``);
``python -m napari_unetkit.cli`` runs the same.
"""

from napari_unetkit.cli.commands import main

__all__ = ["main"]
