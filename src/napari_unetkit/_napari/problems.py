"""Show the engine's input problems on the fields that hold them.

The widgets run the engine's pre-checks (:mod:`napari_unetkit.checks`) as the user edits and
hand the problems to a :class:`FieldMarks`: each field named by a problem gets a red frame and
the problem's message as its tooltip (the field's own tooltip comes back once it is valid), and
the widget's message line says the first problem in words. The rules and their messages live in
the engine only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from magicgui.widgets import Widget

from napari_unetkit.checks import Problem

#: Style sheet of a field that holds a problem (a red frame, as other napari plugins do).
INVALID_STYLE = "border: 2px solid #e0474c; border-radius: 3px;"
#: Dynamic Qt property set on a marked field (tests and style sheets can select on it).
INVALID_PROPERTY = "unetkitInvalid"


class FieldMarks:
    """Mark the fields of a widget that hold problems, and unmark them once valid.

    Parameters
    ----------
    fields : mapping
        Field name (as :class:`~napari_unetkit.checks.Problem.field` names it) -> the magicgui
        widget showing it. Several names may share a widget.
    """

    def __init__(self, fields: Mapping[str, Widget]) -> None:
        self.fields = dict(fields)
        self._tooltips: dict[int, str | None] = {}
        self._marked: dict[int, Widget] = {}

    def show(self, problems: Sequence[Problem]) -> None:
        """Mark the fields of ``problems`` (their messages as tooltips); unmark the others."""
        messages: dict[int, list[str]] = {}
        widgets: dict[int, Widget] = {}
        for problem in problems:
            widget = self.fields.get(problem.field)
            if widget is not None:
                messages.setdefault(id(widget), []).append(problem.message)
                widgets[id(widget)] = widget
        for key, widget in list(self._marked.items()):
            if key not in widgets:
                self._unmark(key, widget)
        for key, widget in widgets.items():
            self._mark(key, widget, "\n".join(messages[key]))

    def clear(self) -> None:
        """Unmark every field."""
        self.show(())

    def marked(self) -> dict[str, str]:
        """Field name -> the message shown on it, for every marked field."""
        return {
            name: widget.native.toolTip()
            for name, widget in self.fields.items()
            if id(widget) in self._marked
        }

    def _mark(self, key: int, widget: Widget, message: str) -> None:
        native = widget.native
        if key not in self._marked:
            self._tooltips[key] = widget.tooltip
            self._marked[key] = widget
        native.setProperty(INVALID_PROPERTY, True)
        native.setStyleSheet(INVALID_STYLE)
        native.setToolTip(message)

    def _unmark(self, key: int, widget: Widget) -> None:
        native = widget.native
        native.setProperty(INVALID_PROPERTY, False)
        native.setStyleSheet("")
        native.setToolTip(self._tooltips.pop(key, None) or "")
        del self._marked[key]


def is_marked(widget: Widget) -> bool:
    """Whether ``widget`` is marked as holding a problem."""
    return bool(widget.native.property(INVALID_PROPERTY))
