"""Real signals to a real ``unetkit`` process: Ctrl-C (SIGINT), SIGTERM and SIGHUP.

Each test starts the command in a child process (``signal_target.py`` holds it at a chosen
moment and prints ``READY``), sends a real signal with ``os.kill`` and checks what a user
relies on: the exit status, the one-line message, that an existing file is unchanged or the
best model kept, and that no temporary file is left.
"""

import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from bad_cases import cells, temp_files, untrained_model

from napari_unetkit.modelfile import read_description

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX signals")

TARGET = pathlib.Path(__file__).with_name("signal_target.py")
SRC = pathlib.Path(__file__).resolve().parents[2] / "src"
TINY = [
    "--steps-per-epoch", "2", "--patch-size", "32", "--batch-size", "2",
    "--base-channels", "4", "--depth", "2", "--device", "cpu", "--no-augment",
    "--val-fraction", "0",
]  # fmt: skip
TIMEOUT = 120


def start(hook: str, *argv) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=f"{SRC}{os.pathsep}"
               f"{os.environ.get('PYTHONPATH', '')}")  # fmt: skip
    command = [sys.executable, str(TARGET), hook, *map(str, argv)]
    return subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )


def wait_ready(process: subprocess.Popen) -> list[str]:
    """Read stderr until the child says READY; return the lines read."""
    lines = []
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        if not line:
            break
        lines.append(line)
        if line.strip() == "READY":
            return lines
    process.kill()
    raise AssertionError("the command never reached the hook: " + "".join(lines))


def finish(process: subprocess.Popen, before: list[str]) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=TIMEOUT)
    return process.returncode, out, "".join(before) + err


def training_files(folder: pathlib.Path) -> list:
    image, labels = cells((2, 48, 64))
    np.save(folder / "image.npy", image)
    np.save(folder / "labels.npy", labels)
    return ["train", "--image", folder / "image.npy", "--labels", folder / "labels.npy"]


@pytest.mark.slow
def test_ctrl_c_before_the_first_step_saves_nothing(tmp_path):
    out = untrained_model(tmp_path / "old.unet")
    previous = out.read_bytes()
    args = [*training_files(tmp_path), "--out", out, "--overwrite", "--epochs", "3", *TINY]
    process = start("first-step", *args)
    before = wait_ready(process)
    process.send_signal(signal.SIGINT)
    code, stdout, err = finish(process, before)
    assert code == 130, err
    assert "Traceback" not in err and "Model saved" not in stdout
    assert err.rstrip().endswith(
        "unetkit: cancelled. Stopped before the first training step: no model was saved."
    )
    assert out.read_bytes() == previous  # the good model was not replaced by a random one
    assert temp_files(tmp_path) == []


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGHUP])
def test_sigterm_and_sighup_stop_training_and_keep_the_best_model(signum, tmp_path):
    out = tmp_path / "m.unet"
    args = [*training_files(tmp_path), "--out", out, "--epochs", "5", *TINY]
    process = start("after-epoch-1", *args)
    before = wait_ready(process)
    process.send_signal(signum)
    code, stdout, err = finish(process, before)
    assert code == 0 and "Traceback" not in err, err
    assert f"Stopping after the current step ({signal.Signals(signum).name} again" in err
    assert "stopped by cancel" in stdout
    description = read_description(out)
    assert description["stopped_by"] == "cancel" and len(description["history"]) == 1
    assert temp_files(tmp_path) == []


@pytest.mark.slow
def test_sigterm_during_a_model_save_finishes_it_and_stops(tmp_path):
    out = tmp_path / "m.unet"
    args = [*training_files(tmp_path), "--out", out, "--epochs", "3", *TINY]
    process = start("model-save", *args)
    before = wait_ready(process)
    process.send_signal(signal.SIGTERM)
    code, _, err = finish(process, before)
    assert code == 0 and "Traceback" not in err, err
    description = read_description(out)  # complete, with both epochs trained
    assert description["stopped_by"] == "cancel"
    assert [entry["epoch"] for entry in description["history"]] == [1, 2]
    assert temp_files(tmp_path) == []


@pytest.mark.slow
@pytest.mark.parametrize("signals", [[signal.SIGINT, signal.SIGINT]])
def test_a_second_signal_during_a_model_save_aborts_and_keeps_the_previous_model(signals, tmp_path):
    out = tmp_path / "m.unet"
    args = [*training_files(tmp_path), "--out", out, "--epochs", "3", *TINY]
    process = start("model-save-abort", *args)
    before = wait_ready(process)
    for signum in signals:  # the first asks to stop, the second aborts the save
        process.send_signal(signum)
        time.sleep(0.3)
    code, _, err = finish(process, before)
    assert code == 128 + signals[-1], err
    assert "Traceback" not in err and err.rstrip().endswith("unetkit: interrupted.")
    description = read_description(out)  # the first epoch's model, complete
    assert [entry["epoch"] for entry in description["history"]] == [1]
    assert temp_files(tmp_path) == []


@pytest.mark.slow
def test_sigterm_while_writing_a_tiff_keeps_the_old_file(tmp_path):
    model = untrained_model(tmp_path / "m.unet")
    np.save(tmp_path / "image.npy", cells((32, 32))[0])
    out = tmp_path / "labels.tif"
    out.write_bytes(b"yesterday's labels")
    args = ["predict", "--model", model, "--image", tmp_path / "image.npy", "--out", out,
            "--overwrite", "--device", "cpu"]  # fmt: skip
    process = start("tiff-write", *args)
    before = wait_ready(process)
    process.send_signal(signal.SIGTERM)
    code, _, err = finish(process, before)
    assert code == 128 + signal.SIGTERM and "Traceback" not in err, err
    assert out.read_bytes() == b"yesterday's labels"
    assert temp_files(tmp_path) == []


#: A child that imports the command (which must not import PyTorch yet), then stalls the
#: import of torch (the slow part of starting up) until the test's Ctrl-C arrives.
STALLED_IMPORT = """
import sys, time
from napari_unetkit import cli
assert "torch" not in sys.modules, "importing the command imported torch"

class Stall:
    def find_spec(self, name, path=None, target=None):
        if name == "torch":
            print("READY", file=sys.stderr, flush=True)
            time.sleep(60)
        return None

sys.meta_path.insert(0, Stall())
sys.exit(cli.main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_ctrl_c_while_torch_is_still_importing(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(SRC))
    args = ["evaluate", "--truth", "a.npy", "--pred", "b.npy"]
    process = subprocess.Popen(
        [sys.executable, "-c", STALLED_IMPORT, *args], stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path,
    )  # fmt: skip
    before = wait_ready(process)
    process.send_signal(signal.SIGINT)
    code, _, err = finish(process, before)
    assert code == 130 and "Traceback" not in err, err
    assert err.rstrip().endswith("unetkit: interrupted.")
