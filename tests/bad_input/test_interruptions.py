"""Nothing lost: cancel at any stage, interrupted and failing saves, Ctrl-C on the command line.

After each interruption the previous (best) model file must still load, no temporary file may
remain, and no half-written output may appear.
"""

import errno
import os
import re
import signal
import threading

import numpy as np
import pytest
import tifffile
import torch
from bad_cases import TINY_TRAINING, cells, error_line, temp_files, untrained_model

from napari_unetkit.cli import commands as cli
from napari_unetkit.modelfile import load_model, read_description
from napari_unetkit.progress import Cancelled
from napari_unetkit.training import NOTHING_SAVED, TrainConfig, TrainProgress, train

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(**overrides) -> TrainConfig:
    return TrainConfig(**{**TINY_TRAINING, "epochs": 3, "steps_per_epoch": 3, **overrides})


STACK = cells((3, 48, 64))

#: stage -> (validation fraction, when to cancel, epochs in the saved history)
CANCEL_POINTS = {
    "preparing": (0.0, lambda e: e.stage == "preparing" and "slice 1 of 3" in e.message, None),
    "before the first step": (0.0, lambda e: e.message == "training started", None),
    "training": (0.0, lambda e: e.stage == "training" and e.epoch == 2 and e.step == 1, 1),
    "validating": (0.34, lambda e: e.stage == "validating" and e.epoch == 2, 1),
    "saving": (0.0, lambda e: e.stage == "saving" and "(epoch 2)" in e.message, 2),
}


@pytest.mark.parametrize("stage", list(CANCEL_POINTS))
def test_cancel_at_any_stage_keeps_the_best_model(stage, tmp_path):
    fraction, now, kept_epochs = CANCEL_POINTS[stage]
    out = tmp_path / "model.unet"
    train([STACK], tiny(epochs=1), out=out)  # a previous run's model
    previous = out.read_bytes()
    cancel, seen = threading.Event(), []

    def progress(event: TrainProgress) -> None:
        seen.append(event.stage)
        if now(event):
            cancel.set()

    config = tiny(val_fraction=fraction)
    if kept_epochs is None:  # nothing trained yet: nothing saved, the old model untouched
        with pytest.raises(Cancelled, match="^" + re.escape(NOTHING_SAVED) + "$"):
            train([STACK], config, out=out, progress=progress, cancel=cancel)
        assert out.read_bytes() == previous
    else:
        result = train([STACK], config, out=out, progress=progress, cancel=cancel)
        assert result.stopped_by == "cancel" and stage in seen
        _, description = load_model(out)  # complete and valid
        assert description["stopped_by"] == "cancel"
        assert len(description["history"]) == kept_epochs
        assert description["metrics"]["best_epoch"] == result.best_epoch <= kept_epochs
    assert cancel.is_set()
    assert temp_files(tmp_path) == []


@pytest.mark.parametrize("failure", ["interrupted", "disk full"])
def test_failed_save_leaves_the_previous_best_model(failure, tmp_path, monkeypatch):
    real_save, calls = torch.save, []

    def save_that_fails_the_second_time(payload, file) -> None:
        calls.append(1)
        if len(calls) < 2:
            return real_save(payload, file)
        file.write(b"the first half of a model file")
        if failure == "interrupted":
            raise KeyboardInterrupt  # Ctrl-C, or the process being stopped, mid-write
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", save_that_fails_the_second_time)
    out = tmp_path / "model.unet"
    expected = KeyboardInterrupt if failure == "interrupted" else OSError
    with pytest.raises(expected) as info:
        train([STACK], tiny(), out=out)
    if failure == "disk full":
        assert "No space left on the disk while writing" in str(info.value)
        assert "left unchanged" in str(info.value)
    monkeypatch.undo()
    _, description = load_model(out)
    assert [entry["epoch"] for entry in description["history"]] == [1]
    assert temp_files(tmp_path) == []


# ------------------------------------------------------------------------------- command line


def _interrupt_when(monkeypatch, fragment: str) -> list[str]:
    """Send ourselves SIGINT (Ctrl-C) when the command's progress line contains ``fragment``."""
    shown: list[str] = []
    original = cli.TextProgress.show

    def show(self, text: str, *, force: bool = False) -> None:
        first = fragment in text and not any(fragment in earlier for earlier in shown)
        shown.append(text)
        # Only with the command's own handler in place: never interrupt the test runner.
        handler = getattr(signal.getsignal(signal.SIGINT), "__self__", None)
        if first and isinstance(handler, cli.CancelOnInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
        original(self, text, force=force)

    monkeypatch.setattr(cli.TextProgress, "show", show)
    return shown


def test_ctrl_c_during_stack_prediction_writes_nothing(tmp_path, capsys, monkeypatch):
    model = untrained_model(tmp_path / "m.unet")
    image = tmp_path / "stack.tif"
    tifffile.imwrite(image, cells((6, 64, 64))[0])
    out = tmp_path / "labels.tif"
    shown = _interrupt_when(monkeypatch, "slice 3/6")
    args = ["predict", "--model", model, "--image", image, "--out", out, "--tile-size", "24"]
    code = cli.main([*map(str, args), "--device", "cpu"])
    err = capsys.readouterr().err
    assert any("slice 3/6" in text for text in shown)
    assert code == cli.EXIT_INTERRUPTED and err.rstrip().endswith("unetkit: cancelled.")
    assert "Traceback" not in err
    assert not any("slice 5/6" in text for text in shown)  # it stopped within a tile batch
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.unet", "stack.tif"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored


def test_ctrl_c_during_training_keeps_the_best_model(tmp_path, capsys, monkeypatch):
    image, labels = tmp_path / "image.tif", tmp_path / "labels.tif"
    tifffile.imwrite(image, STACK[0], photometric="minisblack")
    tifffile.imwrite(labels, STACK[1], photometric="minisblack")
    _interrupt_when(monkeypatch, "epoch 2/5 | step 1/3")
    args = ["train", "--image", image, "--labels", labels, "--out", tmp_path / "m.unet"]
    options = ["--epochs", "5", "--steps-per-epoch", "3", "--patch-size", "32", "--depth", "2",
               "--base-channels", "4", "--batch-size", "2", "--val-fraction", "0",
               "--no-augment", "--device", "cpu"]  # fmt: skip
    code = cli.main([*map(str, args), *options])
    captured = capsys.readouterr()
    assert code == 0 and "Stopping after the current step" in captured.err
    assert "stopped by cancel" in captured.out
    description = read_description(tmp_path / "m.unet")
    assert description["stopped_by"] == "cancel" and len(description["history"]) == 1
    assert temp_files(tmp_path) == []


def test_disk_full_while_writing_labels_keeps_the_old_file(tmp_path, capsys, monkeypatch):
    model = untrained_model(tmp_path / "m.unet")
    image = tmp_path / "image.tif"
    tifffile.imwrite(image, cells((32, 32))[0])
    out = tmp_path / "labels.tif"
    out.write_bytes(b"yesterday's labels")

    def full_disk(file, data, **kwargs) -> None:
        file.write(b"II*\x00 half a TIFF")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tifffile, "imwrite", full_disk)
    args = ["predict", "--model", model, "--image", image, "--out", out, "--overwrite"]
    code = cli.main([*map(str, args), "--device", "cpu"])
    line = error_line(code, capsys.readouterr().err)
    assert line.startswith("unetkit: error: No space left on the disk while writing")
    assert line.endswith("any existing file there was left unchanged")
    assert out.read_bytes() == b"yesterday's labels"
    assert temp_files(tmp_path) == []


def test_disk_full_while_saving_a_model_leaves_no_file(tmp_path, capsys, monkeypatch):
    image, labels = tmp_path / "image.npy", tmp_path / "labels.npy"
    np.save(image, STACK[0][0])
    np.save(labels, STACK[1][0])

    def full_disk(payload, file) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    args = ["train", "--image", image, "--labels", labels, "--out", tmp_path / "m.unet"]
    options = ["--epochs", "1", "--steps-per-epoch", "1", "--patch-size", "32", "--depth", "2",
               "--base-channels", "4", "--val-fraction", "0", "--device", "cpu"]  # fmt: skip
    code = cli.main([*map(str, args), *options])
    line = error_line(code, capsys.readouterr().err)
    assert line.startswith("unetkit: error: No space left on the disk while writing")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["image.npy", "labels.npy"]
