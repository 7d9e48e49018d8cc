"""Build hook: the package's napari manifest is the repository's top-level ``napari.yaml``.

There is one manifest file, ``napari.yaml`` at the top of the repository. npe2 finds a plugin's
manifest inside its package (the entry point ``napari_unetkit:napari.yaml``), so every build
puts a copy there: a wheel gets the file at ``napari_unetkit/napari.yaml``; an editable
install, which imports the package from ``src/``, gets it copied to
``src/napari_unetkit/napari.yaml`` (git ignores that copy; reinstall after editing the
manifest, and ``tests/test_manifest.py`` fails when the two differ).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

MANIFEST = "napari.yaml"
PACKAGE_MANIFEST = "napari_unetkit/napari.yaml"


class ManifestHook(BuildHookInterface):
    """Put the top-level manifest into the package of every wheel and editable install."""

    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict) -> None:
        if self.target_name != "wheel":
            return
        source = Path(self.root) / MANIFEST
        if version == "editable":
            copy_atomically(source, Path(self.root) / "src" / PACKAGE_MANIFEST)
        else:
            build_data["force_include"][str(source)] = PACKAGE_MANIFEST


def copy_atomically(source: Path, target: Path) -> None:
    """Copy ``source`` to ``target`` through a temporary file in the same folder."""
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    os.close(handle)
    try:
        shutil.copyfile(source, temporary)
        shutil.copymode(source, temporary)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
