"""The public surface every panel of the plugin shares (for scripts, tests and other plugins).

The Train, Predict and Weight-map panels are driven the way a user drives them, through a small
documented surface rather than their private parts:

- inputs: :attr:`PanelSurface.fields` (field name -> the magicgui widget the user edits) and
  :meth:`PanelSurface.set_inputs`;
- checks: :attr:`PanelSurface.problems` (the engine's pre-check, see
  :mod:`napari_unetkit.checks`), :meth:`PanelSurface.marked_fields`,
  :attr:`PanelSurface.can_start`, :attr:`PanelSurface.message`;
- the job: :meth:`start` (each panel's own), :meth:`PanelSurface.press_start` (the button, as a
  click), :meth:`stop`, :meth:`PanelSurface.wait`, :attr:`PanelSurface.running`,
  :attr:`PanelSurface.runner`, :attr:`PanelSurface.button_text`.

Everything else in a panel is private and may change.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from magicgui.widgets import Label, PushButton, Widget
from qtpy.QtWidgets import QApplication

from napari_unetkit._napari.jobs import JobRunner
from napari_unetkit._napari.problems import FieldMarks
from napari_unetkit.checks import Problem


class PanelSurface:
    """Mixin of the panels' public surface.

    A panel sets ``_button`` (its Start / Run button), ``_message`` (the message line),
    ``_runner`` (its :class:`~napari_unetkit._napari.jobs.JobRunner`), ``_marks`` (its
    :class:`~napari_unetkit._napari.problems.FieldMarks`), ``_problems`` (the problems of its
    last check) and implements ``_input_fields()`` and ``_validate()``.
    """

    _button: PushButton
    _message: Label
    _runner: JobRunner
    _marks: FieldMarks
    _problems: list[Problem]

    def _input_fields(self) -> dict[str, Widget]:
        raise NotImplementedError

    def _validate(self, *_: object) -> bool:
        raise NotImplementedError

    # -- inputs -------------------------------------------------------------------------------
    @property
    def fields(self) -> Mapping[str, Widget]:
        """Every input the user edits: field name -> its magicgui widget (read-only mapping)."""
        return MappingProxyType(self._input_fields())

    def set_inputs(self, **values: Any) -> None:
        """Set fields as a user would, e.g. ``set_inputs(threshold=0.6, device="cpu")``.

        Raises
        ------
        KeyError
            For a name that is not one of :attr:`fields`.
        """
        fields = self._input_fields()
        unknown = sorted(set(values) - set(fields))
        if unknown:
            raise KeyError(f"No such field: {', '.join(unknown)}; the fields are {sorted(fields)}.")
        for name, value in values.items():
            fields[name].value = value

    # -- checks -------------------------------------------------------------------------------
    @property
    def problems(self) -> list[Problem]:
        """The problems of the inputs as they are now (empty: the job may start)."""
        self._validate()
        return list(self._problems)

    def marked_fields(self) -> dict[str, str]:
        """Field name -> the message shown on it, for every field marked as holding a problem."""
        return self._marks.marked()

    @property
    def can_start(self) -> bool:
        """Whether the Start / Run button is enabled."""
        return bool(self._button.enabled)

    @property
    def message(self) -> str:
        """The panel's message line (a problem, a note, or the outcome of the last job)."""
        return str(self._message.value)

    # -- the job ------------------------------------------------------------------------------
    @property
    def runner(self) -> JobRunner:
        """The job runner (its ``worker`` is the running job, if any)."""
        return self._runner

    @property
    def running(self) -> bool:
        """Whether the panel's job is running."""
        return self._runner.running

    @property
    def button_text(self) -> str:
        """The text of the Start / Run button (it says Stop or Cancel while a job runs)."""
        return str(self._button.text)

    def press_start(self) -> None:
        """Click the Start / Run button, as a user would (it stops a running job)."""
        self._button.native.click()

    def wait(self, timeout: float = 60.0) -> None:
        """Process Qt events until the panel's job has ended.

        Raises
        ------
        TimeoutError
            If the job still runs after ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        while self._runner.running:
            if time.monotonic() > deadline:
                raise TimeoutError(f"The job still runs after {timeout:g} s.")
            QApplication.processEvents()
            time.sleep(0.005)
        QApplication.processEvents()
