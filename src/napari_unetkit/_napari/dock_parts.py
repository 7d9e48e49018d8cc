"""Qt parts the plugin's long panels share: wrapping labels, a vertical scroll area, undock watch.

A dock panel taller than a laptop screen sits in a :class:`VerticalScrollArea`
(:func:`scroll_body`); :class:`UndockWatch` tells a panel that napari's close button took it out
of its dock (napari does not delete the widget), so that a running job can stop.
"""

from __future__ import annotations

from collections.abc import Callable

from magicgui.widgets import Container, Label
from qtpy.QtCore import QEvent, QObject, QSize, Qt
from qtpy.QtWidgets import QFrame, QScrollArea, QSizePolicy, QWidget


def wrapping_label(lines: int | None = None) -> Label:
    """Return a label that wraps long text; with ``lines``, of a fixed height of that many lines.

    A fixed height matters for text that changes many times a second (the status line):
    otherwise every change may re-layout the dock and resize (redraw) the plot.
    """
    label = Label(value="")
    label.native.setWordWrap(True)
    # The whole width of the dock (magicgui's labels are as wide as their text, so long
    # messages would wrap into a narrow column).
    label.native.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
    if lines is not None:
        spacing = label.native.fontMetrics().lineSpacing()
        label.native.setFixedHeight(lines * spacing + 4)
    return label


class UndockWatch(QObject):
    """Calls ``callback`` when ``widget`` is taken out of its dock (napari's panel close button).

    napari does not delete a removed dock's widget, it only unparents it; without this a
    training started from a closed panel would go on unseen.
    """

    def __init__(self, widget: QWidget, callback: Callable[[], None]) -> None:
        super().__init__(widget)
        self._callback = callback
        widget.installEventFilter(self)

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        """Watch for the parent change that leaves the widget without a parent."""
        if event.type() == QEvent.Type.ParentChange and watched.parent() is None:
            self._callback()
        return False


class VerticalScrollArea(QScrollArea):
    """A scroll area that scrolls vertically only and is always as wide as its content."""

    def __init__(self, content: QWidget) -> None:
        super().__init__()
        self.setWidgetResizable(True)
        self.setFrameShape(QFrame.Shape.NoFrame)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setWidget(content)
        content.installEventFilter(self)

    def minimumSizeHint(self) -> QSize:
        """Return the content's minimum width (plus the scroll bar) and a small height."""
        width = self.widget().minimumSizeHint().width()
        width += self.verticalScrollBar().sizeHint().width()
        return QSize(width, super().minimumSizeHint().height())

    def sizeHint(self) -> QSize:
        """Return at least the minimum width (QScrollArea's own hint may be narrower)."""
        hint = super().sizeHint()
        return QSize(max(hint.width(), self.minimumSizeHint().width()), hint.height())

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        """Follow the content's size: once styled or changed, it may need more width."""
        if watched is self.widget() and event.type() == QEvent.Type.LayoutRequest:
            self.updateGeometry()
        return super().eventFilter(watched, event)


def scroll_body(panel: Container, body: Container) -> VerticalScrollArea:
    """Show ``body`` (a child of ``panel``) in a vertical scroll area filling ``panel``.

    The panels are taller than many laptop screens; without a scroll area napari would make
    its window taller than the screen. (magicgui's ``scrollable=True`` does not help: napari
    docks the container's inner widget, without the scroll area.) ``body`` stays a magicgui
    child of ``panel``, so that napari's ``reset_choices`` reaches its layer lists.

    Returns
    -------
    VerticalScrollArea
        The scroll area (in ``panel``'s layout).
    """
    body.native.layout().addStretch()  # in a tall dock, the fields stay together at the top
    panel.margins = (0, 0, 0, 0)
    area = VerticalScrollArea(body.native)
    panel.native.layout().addWidget(area)
    return area
