"""Run ``unetkit`` in a child process that waits, at a chosen moment, for a test's signal.

Usage: ``python signal_target.py HOOK unetkit-arguments...``. At the moment named by HOOK the
child prints ``READY`` on stderr and waits (at most a minute) for the test to send a real
signal; everything else is the real command. Hooks:

- ``first-step``: data prepared and the model built, before the first training step; waits
  until the command's cancel event is set.
- ``after-epoch-1``: the first epoch trained, validated and saved; waits for the cancel event.
- ``model-save``: inside ``torch.save`` of the second model save, half written (the signal
  arrives while PyTorch's writer calls back into Python, as it does for a real save); waits
  until the command has been asked to stop, then finishes the save.
- ``model-save-abort``: the same, but waits until the command is aborted.
- ``tiff-write``: inside the TIFF writer, half written.
"""

import sys
import time

import tifffile
import torch

from napari_unetkit.cli import commands as cli
from napari_unetkit.training import loop

WAIT_SECONDS = 60.0


def ready() -> None:
    print("READY", file=sys.stderr, flush=True)


def wait_for(condition) -> None:
    """Wait (in Python, so signal handlers run) until ``condition()`` or the time is up."""
    end = time.monotonic() + WAIT_SECONDS
    while not condition() and time.monotonic() < end:
        time.sleep(0.01)


def hook_first_step() -> None:
    original = loop.Run.run_epoch

    def run_epoch(self) -> None:
        if self.steps_run == 0:
            ready()
            wait_for(self.cancel.is_set)
        original(self)

    loop.Run.run_epoch = run_epoch


def hook_after_epoch_1() -> None:
    original = loop.Run.finish_epoch

    def finish_epoch(self) -> None:
        original(self)
        if len(self.history) == 1:
            ready()
            wait_for(self.cancel.is_set)

    loop.Run.finish_epoch = finish_epoch


class SlowFile:
    """A file whose writes stall once, after ``stall_after`` bytes, until ``resume()``."""

    def __init__(self, file, stall_after: int, resume) -> None:
        self.file, self.stall_after, self.written, self.resume = file, stall_after, 0, resume

    def write(self, data) -> int:
        if self.written >= self.stall_after and self.resume is not None:
            ready()
            wait_for(self.resume)
            self.resume = None
        self.written += len(data)
        return self.file.write(data)

    def __getattr__(self, name):
        return getattr(self.file, name)


def hook_model_save(resume=lambda: cli._Stops.cancelled is not None) -> None:
    real, calls = torch.save, []

    def save(payload, file) -> None:
        calls.append(1)
        if len(calls) != 2:
            return real(payload, file)
        return real(payload, SlowFile(file, 2000, resume))

    torch.save = save


def hook_tiff_write() -> None:
    def imwrite(file, data, **kwargs) -> None:
        file.write(b"II*\x00 half a TIFF")
        ready()
        wait_for(lambda: False)

    tifffile.imwrite = imwrite


HOOKS = {
    "first-step": hook_first_step,
    "after-epoch-1": hook_after_epoch_1,
    "model-save": hook_model_save,
    "model-save-abort": lambda: hook_model_save(resume=lambda: False),
    "tiff-write": hook_tiff_write,
}

if __name__ == "__main__":
    HOOKS[sys.argv[1]]()
    sys.exit(cli.main(sys.argv[2:]))
