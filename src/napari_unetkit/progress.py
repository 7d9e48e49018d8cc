"""Cancellation shared by every long engine job (training, prediction, weight maps)."""

from __future__ import annotations

import threading

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
