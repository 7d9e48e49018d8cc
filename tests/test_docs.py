"""The documentation agrees with the code: the module map, links, the tile-size limit."""

from __future__ import annotations

import re
from pathlib import Path

from napari_unetkit.tiling import MAX_AUTO_TILE_CPU

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "napari_unetkit"
DOCS = ROOT / "docs"

#: A module map entry: a name at indent 0 (top level) or 2 (inside the folder above it).
ENTRY = re.compile(r"^(?P<indent> {0,2})(?P<name>[\w.]+(?:/|\.py))(?:\s|$)")


def module_map(text: str) -> set[str]:
    """Return the package paths the first code block under "## Module map" lists."""
    section = text.split("\n## Module map\n", 1)[1].split("\n## ", 1)[0]
    block = section.split("```", 2)[1]
    paths, folder = set(), ""
    for line in block.splitlines():
        match = ENTRY.match(line)
        if match is None:
            continue
        name, nested = match["name"], len(match["indent"]) == 2
        if name.endswith("/"):
            folder = name
            paths.add(name)
        else:
            paths.add(folder + name if nested else name)
            if not nested:
                folder = ""
    return paths


def package_paths() -> set[str]:
    """Return every module and subpackage folder of the source tree."""
    paths = set()
    for path in PACKAGE.rglob("*"):
        if "__pycache__" in path.parts:
            continue
        relative = path.relative_to(PACKAGE).as_posix()
        if path.is_dir():
            paths.add(relative + "/")
        elif path.suffix == ".py":
            paths.add(relative)
    return paths


def test_the_parser_reads_top_level_and_nested_entries():
    text = (
        "# Page\n\n## Module map\n\n```\n__init__.py    the package\n"
        "ENGINE\nmodel.py       the network\n               more words about x.py\n"
        "training/      the trainer\n  loop.py      the loop\n"
        "tiling.py      tiles\n```\n## Next\n"
    )
    assert module_map(text) == {
        "__init__.py",
        "model.py",
        "training/",
        "training/loop.py",
        "tiling.py",
    }


def test_the_architecture_module_map_matches_the_package():
    listed = module_map((DOCS / "architecture.md").read_text(encoding="utf-8"))
    present = package_paths()
    assert not listed - present, f"docs/architecture.md lists missing modules: {listed - present}"
    assert not present - listed, f"modules missing from docs/architecture.md: {present - listed}"


def test_relative_links_in_readme_and_docs_point_to_files():
    link = re.compile(r"\]\((?!https?://|#|mailto:)([^)#\s]+)")
    broken = []
    for page in [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]:
        for target in link.findall(page.read_text(encoding="utf-8")):
            if not (page.parent / target).exists():
                broken.append(f"{page.relative_to(ROOT)} -> {target}")
    assert not broken, broken


def test_the_user_guide_states_the_automatic_cpu_tile_limit_of_the_code():
    guide = (DOCS / "user-guide.md").read_text(encoding="utf-8")
    assert f"CPU: up to {MAX_AUTO_TILE_CPU} px" in guide
