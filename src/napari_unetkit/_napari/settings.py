"""Remember each widget's last-used settings across napari sessions (a small JSON file)."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from napari_unetkit.io import atomic_write

logger = logging.getLogger(__name__)

#: Environment variable that moves the settings folder (used by the tests).
CONFIG_DIR_VARIABLE = "NAPARI_UNETKIT_CONFIG_DIR"


def settings_path() -> Path:
    """Return the settings file: ``$XDG_CONFIG_HOME/napari-unetkit/widgets.json`` by default."""
    folder = os.environ.get(CONFIG_DIR_VARIABLE)
    if not folder:
        base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
        folder = Path(base) / "napari-unetkit"
    return Path(folder) / "widgets.json"


def _read_all() -> dict:
    path = settings_path()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as error:
        logger.warning("Ignoring unreadable settings file %s: %s", path, error)
        return {}
    return data if isinstance(data, dict) else {}


def load_widget_settings(widget: str) -> dict:
    """Return the saved settings of one widget (empty if none or unreadable)."""
    values = _read_all().get(widget, {})
    return values if isinstance(values, dict) else {}


def save_widget_settings(widget: str, values: dict) -> None:
    """Save one widget's settings; failures are logged, never raised into the GUI."""
    data = _read_all()
    data[widget] = values
    path = settings_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path, mode="w") as handle:
            json.dump(data, handle, indent=1, sort_keys=True, default=str)
    except OSError as error:
        logger.warning("Could not save widget settings to %s: %s", path, error)


def remember(widget: str, fields: dict) -> None:
    """Restore ``fields`` from the saved settings and save them whenever one changes.

    Parameters
    ----------
    widget : str
        Name of the widget in the settings file.
    fields : dict
        Setting name -> magicgui value widget. Saved values that no longer fit a field
        (removed choice, out of range) are skipped.
    """
    saved = load_widget_settings(widget)
    for name, field in fields.items():
        if name in saved:
            try:
                field.value = saved[name]
            except (ValueError, TypeError) as error:
                logger.info("Skipping saved setting %s=%r: %s", name, saved[name], error)

    def save(*_: object) -> None:
        save_widget_settings(widget, {name: field.value for name, field in fields.items()})

    for field in fields.values():
        field.changed.connect(save)
