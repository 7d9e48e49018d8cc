"""One manifest: the top-level napari.yaml, put into the package by the build, no symlinks."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = ROOT / "napari.yaml"


def installed_manifest() -> Path:
    """The file npe2 reads for the installed distribution (entry point module + file name)."""
    (entry,) = [
        entry
        for entry in metadata.distribution("napari-unetkit").entry_points
        if entry.group == "napari.manifest"
    ]
    module, name = entry.value.split(":")
    spec = importlib.util.find_spec(module)
    (folder,) = spec.submodule_search_locations
    return Path(folder) / name


def test_the_installed_manifest_is_the_top_level_one():
    installed = installed_manifest()
    assert installed.is_file() and not installed.is_symlink()
    assert installed.read_bytes() == MANIFEST.read_bytes(), (
        "The installed napari.yaml differs from the top-level one: reinstall "
        "(pip install -e .) after editing napari.yaml."
    )


def test_the_source_tree_holds_no_symlinks():
    # A Windows checkout turns symlinks into text files, which breaks an editable install.
    tracked = subprocess.run(
        ["git", "ls-files", "-s"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    if tracked.returncode != 0:
        pytest.skip("not a git checkout")
    links = [line.split("\t")[1] for line in tracked.stdout.splitlines() if line[:6] == "120000"]
    assert links == []


@pytest.mark.slow
def test_a_built_wheel_carries_the_top_level_manifest(tmp_path):
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
        capture_output=True,
        text=True,
        env=dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1"),
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = tmp_path.glob("napari_unetkit-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        assert archive.read("napari_unetkit/napari.yaml") == MANIFEST.read_bytes()
