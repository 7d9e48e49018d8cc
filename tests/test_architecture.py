"""The layers of docs/architecture.md hold: who may import whom, checked on the source."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "napari_unetkit"

#: Top-level names no engine or CLI module may import (GUI toolkits and napari).
GUI = ("napari", "qtpy", "magicgui", "PyQt5", "PyQt6", "PySide2", "PySide6", "superqt")


def imported_modules(path: Path) -> set[str]:
    """Return every module a source file imports (absolute names, also lazy imports)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def modules(folder: str | None = None) -> dict[str, set[str]]:
    """Return ``{relative path: imported modules}`` of one subpackage, or of the engine."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE)
        top = relative.parts[0] if len(relative.parts) > 1 else None
        if top == folder or (folder is None and top not in ("_napari", "cli")):
            found[relative.as_posix()] = imported_modules(path)
    return found


def offending(imports: dict[str, set[str]], allowed) -> dict[str, list[str]]:
    return {
        path: sorted(name for name in names if not allowed(name))
        for path, names in imports.items()
        if any(not allowed(name) for name in names)
    }


def is_gui(name: str) -> bool:
    return name.split(".")[0] in GUI


def test_the_engine_imports_no_front_end_and_no_gui():
    def allowed(name: str) -> bool:
        front_end = name.startswith(("napari_unetkit._napari", "napari_unetkit.cli"))
        return not (front_end or is_gui(name))

    engine = modules()
    assert "training/loop.py" in engine and "speed/inference.py" in engine
    assert not offending(engine, allowed)


def test_the_cli_imports_no_napari_side_and_no_gui():
    def allowed(name: str) -> bool:
        return not (name.startswith("napari_unetkit._napari") or is_gui(name))

    cli = modules("cli")
    assert "cli/commands.py" in cli
    assert not offending(cli, allowed)


def test_the_speed_layer_builds_only_on_the_model_and_the_device():
    def allowed(name: str) -> bool:
        if not name.startswith("napari_unetkit"):
            return True
        return name.startswith(
            ("napari_unetkit.speed", "napari_unetkit.model", "napari_unetkit.device")
        )

    speed = modules("speed")
    assert "speed/precision.py" in speed
    assert not offending(speed, allowed)


def test_the_checks_catch_an_offending_import(tmp_path):
    source = tmp_path / "bad.py"
    source.write_text("def f():\n    from napari_unetkit._napari.jobs import JobRunner\n")
    names = imported_modules(source)
    assert "napari_unetkit._napari.jobs" in names
    assert offending({"bad.py": names}, lambda name: "_napari" not in name) == {
        "bad.py": ["napari_unetkit._napari.jobs", "napari_unetkit._napari.jobs.JobRunner"]
    }
