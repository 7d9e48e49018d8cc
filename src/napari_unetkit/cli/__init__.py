"""The ``unetkit`` command line: the second front end on the engine, next to napari's panels.

Modules
    :mod:`~napari_unetkit.cli.commands`
        Argument parsing and the subcommands (``train``, ``predict``, ``export``,
        ``weightmap``, ``evaluate``, ``demo``): TIFF in and out, the progress line, one-line
        errors, exit statuses.
    :mod:`~napari_unetkit.cli.bigdata`
        ``predict`` with zarr outputs, file patterns and folders, ``--workers`` /
        ``--scheduler``; :mod:`~napari_unetkit.cli.commands` hands such commands over to it.
    :mod:`~napari_unetkit.cli.project`
        ``train --project`` / ``--init-from`` (correct and retrain) and ``project add``,
        ``list``, ``remove``; :mod:`~napari_unetkit.cli.commands` hands ``train --project``
        over to it.

:func:`main` is the console entry point (``unetkit = "napari_unetkit.cli:main"``);
``python -m napari_unetkit.cli`` runs the same. Importing this package asks PyTorch for huge
pages (:func:`~napari_unetkit.speed.memory.request_huge_pages`), so it must come before torch.
"""

from napari_unetkit.speed.memory import request_huge_pages

# The command is a process of its own: huge pages for large tensors, before torch is imported.
request_huge_pages()

from napari_unetkit.cli.commands import main  # noqa: E402

__all__ = ["main"]
