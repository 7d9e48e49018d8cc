"""Run engine jobs in napari thread workers, with progress, cancel and readable errors.

An engine job is a function ``job(emit, cancel) -> result``: it reports progress by calling
``emit(event)`` with typed events (:class:`napari_unetkit.progress.JobStarted`,
:class:`~napari_unetkit.progress.SliceProgress`, :class:`~napari_unetkit.progress.Step`,
:class:`napari_unetkit.training.TrainProgress` and the training job's own dataclasses; never
tagged tuples) and stops early when the ``threading.Event`` ``cancel`` is set. :class:`JobRunner`
runs it off the GUI thread inside a napari generator worker, shows a progress bar in napari's
activity dock, hands each event to the widget in the GUI thread, and turns exceptions into
notifications with a clear sentence.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Generator
from typing import Any

from napari.qt.threading import GeneratorWorker, create_worker
from napari.utils import progress
from napari.utils.notifications import show_error

from napari_unetkit.device import is_out_of_memory
from napari_unetkit.io import os_error_text
from napari_unetkit.progress import Cancelled

logger = logging.getLogger(__name__)

Job = Callable[[Callable[[Any], None], threading.Event], Any]

_FINISHED = object()

#: Exceptions whose message is written for the user (bad input, missing files, divergence).
USER_ERRORS = (ValueError, OSError, FloatingPointError)


def iterate_job(job: Job, cancel: threading.Event) -> Generator[Any, None, Any]:
    """Run ``job`` in a helper thread and yield the events it emits.

    The generator's return value is the job's result; an exception raised by the job is
    re-raised here. If the generator is closed early (the worker was quit, the viewer closed),
    ``cancel`` is set and the helper thread is given a moment to stop.
    """
    events: queue.Queue = queue.Queue()
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["result"] = job(events.put, cancel)
        except BaseException as error:  # handed over to the worker thread below
            outcome["error"] = error
        finally:
            events.put(_FINISHED)

    thread = threading.Thread(target=target, name="napari-unetkit job", daemon=True)
    thread.start()
    try:
        while (event := events.get()) is not _FINISHED:
            yield event
    finally:
        if thread.is_alive():
            cancel.set()
        thread.join(timeout=30)
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("result")


def error_message(error: BaseException, action: str) -> str:
    """Return the sentence a user sees when a job fails.

    Parameters
    ----------
    error : BaseException
        What the job raised.
    action : str
        What was being done, e.g. ``"Training"``.
    """
    if isinstance(error, OSError):
        return f"{action} failed: {os_error_text(error)}"
    if isinstance(error, USER_ERRORS):
        return f"{action} failed: {error}"
    if is_out_of_memory(error):
        return (
            f"{action} failed: out of memory. Choose a smaller patch or batch size (training) "
            "or tile size (prediction), or the CPU as the device."
        )
    return f"{action} failed unexpectedly ({type(error).__name__}: {error}). See the log."


class JobRunner:
    """Run one engine job at a time for a widget.

    Parameters
    ----------
    action : str
        What the job does, for the progress bar and error messages (e.g. ``"Training"``).
    """

    def __init__(self, action: str) -> None:
        self.action = action
        self.worker: GeneratorWorker | None = None
        self._cancel = threading.Event()
        self._bar: progress | None = None

    @property
    def running(self) -> bool:
        """Whether a job is running now."""
        return self.worker is not None

    def cancel(self) -> None:
        """Ask the running job to stop at its next check (it finishes cleanly)."""
        self._cancel.set()

    def start(
        self,
        job: Job,
        *,
        total: int | None = None,
        on_event: Callable[[Any], tuple[int, int] | None] | None = None,
        on_result: Callable[[Any], None] | None = None,
        on_error: Callable[[BaseException], None] | None = None,
        on_finished: Callable[[], None] | None = None,
    ) -> GeneratorWorker:
        """Start ``job`` in a thread worker and return the worker.

        Parameters
        ----------
        job : callable
            ``job(emit, cancel) -> result``, run off the GUI thread.
        total : int, optional
            Initial number of progress steps (``None`` for an indeterminate bar).
        on_event : callable, optional
            Called in the GUI thread with each emitted event; may return ``(done, total)`` to
            move the progress bar.
        on_result : callable, optional
            Called in the GUI thread with the job's result (not called after cancellation via
            :class:`~napari_unetkit.progress.Cancelled` or an error).
        on_error : callable, optional
            Called with the exception after the notification is shown.
        on_finished : callable, optional
            Called in the GUI thread when the job has ended in any way.
        """
        if self.running:
            raise RuntimeError(f"{self.action} is already running.")
        self._cancel = threading.Event()
        cancel = self._cancel
        self._bar = progress(total=total or 0, desc=self.action)
        worker = create_worker(iterate_job, job, cancel, _start_thread=False, _ignore_errors=True)
        self.worker = worker

        def handle_event(event: Any) -> None:
            position = on_event(event) if on_event else None
            if position is not None and self._bar is not None:
                done, new_total = position
                if self._bar.total != new_total:
                    self._bar.total = new_total
                self._bar.n = min(done, new_total)
                self._bar.refresh()

        def handle_error(error: BaseException) -> None:
            if isinstance(error, Cancelled):
                return
            logger.error("%s failed", self.action, exc_info=error)
            show_error(error_message(error, self.action))
            if on_error is not None:
                on_error(error)

        def handle_finished() -> None:
            if self._bar is not None:
                self._bar.close()
                self._bar = None
            self.worker = None
            if on_finished is not None:
                on_finished()

        worker.yielded.connect(handle_event)
        if on_result is not None:
            worker.returned.connect(on_result)
        worker.errored.connect(handle_error)
        worker.finished.connect(handle_finished)
        worker.start()
        return worker
