"""Cancellation and progress events shared by every long job (training, prediction, weights).

A job reports progress through typed events (frozen dataclasses), never tagged tuples: the
receiver dispatches on the event's class. Training sends
:class:`napari_unetkit.training.TrainProgress`; the other jobs send :class:`JobStarted` once,
then :class:`SliceProgress` (slices of an in-memory prediction, fractions allowed) or
:class:`Step` (any other unit, with a line of text).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

#: The message of a :class:`Cancelled` that has nothing more to say than that.
GENERIC_CANCEL = "The job was cancelled."


class Cancelled(Exception):
    """Raised inside a long job when its ``cancel`` event is set; callers catch it."""


def check_cancel(cancel: threading.Event | None) -> None:
    """Raise :class:`Cancelled` if ``cancel`` is set.

    Parameters
    ----------
    cancel : threading.Event or None
        The job's cancel flag; ``None`` means the job cannot be cancelled.
    """
    if cancel is not None and cancel.is_set():
        raise Cancelled(GENERIC_CANCEL)


@dataclass(frozen=True)
class JobStarted:
    """A job has started on a device.

    Attributes
    ----------
    device : str
        The device in words (e.g. ``"CPU (2 threads)"``).
    tiles_per_slice : int
        Tiles a prediction cuts each slice into (1 for other jobs).
    """

    device: str
    tiles_per_slice: int = 1


@dataclass(frozen=True)
class SliceProgress:
    """Slices of an in-memory prediction done so far.

    Attributes
    ----------
    done : float
        Slices done, with the fraction of the current slice.
    total : int
        Slices to predict.
    """

    done: float
    total: int


@dataclass(frozen=True)
class Step:
    """Progress of a job counted in its own units (parts, files, slices of a weight map).

    Attributes
    ----------
    done : float
        Units done (fractions allowed).
    total : int
        Units in all.
    text : str
        What is being done, for a status line (``""``: nothing to say).
    """

    done: float
    total: int
    text: str = ""

    @property
    def position(self) -> tuple[int, int]:
        """``(done, total)`` in whole units, for a progress bar."""
        return int(self.done), self.total
