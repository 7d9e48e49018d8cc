"""A small live plot of a training run: losses and the validation score, one point per epoch.

Redrawing a whole matplotlib figure (axes, ticks, text) is too slow for a GUI that must stay
responsive while training. So the axes limits only grow in steps (the epoch
axis doubles, the loss axis grows by half), and between those rare full redraws a new point
only redraws the three curves over a saved background (matplotlib "blitting").
"""

from __future__ import annotations

import math

from magicgui.widgets import Container
from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

#: Colours of the curves (readable on dark and light napari themes).
TRAIN_COLOUR, VALIDATION_COLOUR, SCORE_COLOUR = "#4c9be8", "#f0a030", "#5cc16b"
#: Epochs shown before the first point (the epoch axis then doubles when needed).
INITIAL_EPOCHS = 5


def _finite(value: float | None) -> float:
    """Return ``value`` as a float, NaN for ``None`` (matplotlib leaves a gap)."""
    return math.nan if value is None else float(value)


def grown_limit(current: float, needed: float, factor: float) -> float:
    """Return ``current`` if it already holds ``needed``, else grow it by ``factor`` until it does.

    Parameters
    ----------
    current : float
        The present upper limit (> 0).
    needed : float
        The value that must fit.
    factor : float
        Growth factor (> 1).
    """
    while current < needed:
        current *= factor
    return current


class LossPlot(Container):
    """Two stacked panels: training / validation loss, and the validation score, per epoch.

    Parameters
    ----------
    background : str
        Figure background colour (e.g. the napari theme's background).
    foreground : str
        Colour of the axes, ticks and text.
    """

    def __init__(self, background: str = "#262930", foreground: str = "#f0f1f2") -> None:
        super().__init__(labels=False)
        self.epochs: list[int] = []
        self.train_loss: list[float] = []
        self.val_loss: list[float] = []
        self.score: list[float] = []
        self.full_redraws = 0
        self._background = None
        # Fixed margins: a constrained layout would triple the cost of every full redraw.
        self.figure = Figure(figsize=(4.0, 3.2), facecolor=background)
        self.figure.subplots_adjust(left=0.17, right=0.97, top=0.97, bottom=0.18, hspace=0.12)
        self.canvas = FigureCanvasQTAgg(self.figure)
        # A fixed height: text changes elsewhere in the dock never resize (and redraw) the plot.
        self.canvas.setFixedHeight(230)
        self.native.layout().addWidget(self.canvas)
        self._loss_axes, self._score_axes = self.figure.subplots(2, 1, sharex=True)
        self._lines = [
            self._loss_axes.plot([], [], "o-", ms=3, color=TRAIN_COLOUR, animated=True)[0],
            self._loss_axes.plot([], [], "o-", ms=3, color=VALIDATION_COLOUR, animated=True)[0],
            self._score_axes.plot([], [], "o-", ms=3, color=SCORE_COLOUR, animated=True)[0],
        ]
        self._lines[0].set_label("training loss")
        self._lines[1].set_label("validation loss")
        self._style(background, foreground)
        self.canvas.mpl_connect("draw_event", self._on_draw)
        self.reset("validation F1")

    def _style(self, background: str, foreground: str) -> None:
        for axes in (self._loss_axes, self._score_axes):
            axes.set_facecolor(background)
            axes.tick_params(colors=foreground, labelsize=8)
            axes.grid(alpha=0.25)
            axes.yaxis.set_major_locator(MaxNLocator(nbins=4))  # few labels: cheaper redraws
            for spine in axes.spines.values():
                spine.set_color(foreground)
        self._loss_axes.set_ylabel("loss", color=foreground, fontsize=9)
        self._score_axes.set_xlabel("epoch", color=foreground, fontsize=9)
        self._score_axes.set_ylim(0.0, 1.0)
        self._score_axes.xaxis.set_major_locator(MaxNLocator(nbins=5, integer=True))
        legend = self._loss_axes.legend(fontsize=7, frameon=False, loc="upper right")
        for text in legend.get_texts():
            text.set_color(foreground)
        self._foreground = foreground

    # -- public -------------------------------------------------------------------------------
    def reset(self, score_name: str) -> None:
        """Forget every point and name the score panel (e.g. ``"validation F1"``).

        Parameters
        ----------
        score_name : str
            Label of the lower panel's y-axis.
        """
        for values in (self.epochs, self.train_loss, self.val_loss, self.score):
            values.clear()
        self._score_axes.set_ylabel(score_name, color=self._foreground, fontsize=9)
        self._score_axes.set_xlim(0.5, INITIAL_EPOCHS + 0.5)
        self._loss_axes.set_ylim(0.0, 1.0)
        self._loss_limit: float | None = None
        self._set_line_data()
        self._full_redraw()

    def expect_loss(self, loss: float | None) -> None:
        """Scale the loss axis for losses up to about ``loss`` (once, before the first epoch).

        Called with the first training loss, this moves the one unavoidable full redraw away
        from the end of the first epoch, when the GUI has other work to do.
        """
        if self._loss_limit is not None or loss is None or not math.isfinite(loss) or loss <= 0:
            return
        self._loss_limit = 1.2 * float(loss)
        self._loss_axes.set_ylim(0.0, self._loss_limit)
        self._full_redraw()

    def add_epoch(
        self,
        epoch: int,
        train_loss: float | None,
        val_loss: float | None,
        score: float | None,
    ) -> None:
        """Append one epoch's values (``None`` where there is none) and show them.

        Parameters
        ----------
        epoch : int
            The epoch number (x coordinate).
        train_loss, val_loss : float or None
            Mean training loss and validation loss of the epoch.
        score : float or None
            Validation score (F1 or IoU, between 0 and 1).
        """
        self.epochs.append(int(epoch))
        self.train_loss.append(_finite(train_loss))
        self.val_loss.append(_finite(val_loss))
        self.score.append(_finite(score))
        self._set_line_data()
        if self._update_limits() or self._background is None:
            self._full_redraw()
        else:
            self._blit()

    # -- drawing ------------------------------------------------------------------------------
    def _set_line_data(self) -> None:
        for line, values in zip(
            self._lines, (self.train_loss, self.val_loss, self.score), strict=True
        ):
            line.set_data(self.epochs, values)

    def _update_limits(self) -> bool:
        """Grow the axes to hold every point; return whether they changed."""
        changed = False
        right = self._score_axes.get_xlim()[1]
        new_right = grown_limit(right - 0.5, max(self.epochs), 2.0) + 0.5
        if new_right != right:
            self._score_axes.set_xlim(0.5, new_right)
            changed = True
        losses = [v for v in (*self.train_loss, *self.val_loss) if math.isfinite(v)]
        if losses:
            highest = max(losses)
            if self._loss_limit is None:
                limit = 1.2 * highest if highest > 0 else 1.0
            else:
                limit = grown_limit(self._loss_limit, highest, 1.5)
            if limit != self._loss_limit:
                self._loss_limit = limit
                self._loss_axes.set_ylim(0.0, limit)
                changed = True
        return changed

    def _full_redraw(self) -> None:
        self._background = None
        self.full_redraws += 1
        self.canvas.draw_idle()

    def _on_draw(self, _event: object) -> None:
        """After a full draw: keep the background, then draw the curves on it."""
        self._background = self.canvas.copy_from_bbox(self.figure.bbox)
        self._draw_lines()

    def _draw_lines(self) -> None:
        for line in self._lines:
            line.axes.draw_artist(line)

    def _blit(self) -> None:
        self.canvas.restore_region(self._background)
        self._draw_lines()
        # update(), not canvas.blit(): blit repaints at once, which in napari's window costs a
        # whole-window (OpenGL) composition; update() joins the next regular paint.
        self.canvas.update()
