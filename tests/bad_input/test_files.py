"""Writing files safely against races, odd targets, full disks and leftovers of killed processes.

The writer under test is :func:`napari_unetkit.io.atomic_write`, through which every file the
package writes goes (TIFFs, model files).
"""

import errno
import os
import subprocess
import sys
import time
from types import SimpleNamespace

import numpy as np
import pytest
import tifffile
import torch
from bad_cases import cells, error_line, temp_files, untrained_model

from napari_unetkit import io
from napari_unetkit.cli import commands as cli
from napari_unetkit.model import UNet, UNetConfig
from napari_unetkit.modelfile import save_model

ARRAY = np.arange(12, dtype=np.uint16).reshape(3, 4)


def _appearing_meanwhile(monkeypatch, target, content: bytes) -> None:
    """Make ``target`` appear (another process's result) while the TIFF is being written."""
    real = tifffile.imwrite

    def imwrite(file, data, **kwargs) -> None:
        real(file, data, **kwargs)
        target.write_bytes(content)

    monkeypatch.setattr(tifffile, "imwrite", imwrite)


@pytest.mark.parametrize("publish", ["renameat2", "hard link"])
def test_no_overwrite_never_replaces_a_file_that_appeared_while_writing(
    publish, tmp_path, monkeypatch
):
    if publish == "hard link":
        monkeypatch.setattr(io, "_RENAMEAT2", None)
    elif io._RENAMEAT2 is None:
        pytest.skip("no renameat2 here")
    target = tmp_path / "labels.tif"
    _appearing_meanwhile(monkeypatch, target, b"the other process's labels")
    with pytest.raises(FileExistsError, match="already exists"):
        io.write_tiff(target, ARRAY)
    assert target.read_bytes() == b"the other process's labels"
    assert temp_files(tmp_path) == []


def test_no_overwrite_publishes_a_new_file(tmp_path, monkeypatch):
    for publish in ("renameat2", "hard link"):
        if publish == "hard link":
            monkeypatch.setattr(io, "_RENAMEAT2", None)
        target = tmp_path / f"{publish}.tif"
        io.write_tiff(target, ARRAY)
        np.testing.assert_array_equal(tifffile.imread(target), ARRAY)
    assert temp_files(tmp_path) == []


RACER = """
import sys, numpy as np
from napari_unetkit import io
start = float(sys.argv[2])
import time
while time.time() < start:
    pass
try:
    io.write_tiff(sys.argv[1], np.full((64, 64), int(sys.argv[3]), np.uint16))
except FileExistsError:
    sys.exit(3)
"""


@pytest.mark.slow
def test_two_processes_writing_one_new_name(tmp_path):
    """Several real processes race for one name: exactly one wins, the others are refused."""
    target = tmp_path / "same.tif"
    start = time.time() + 4.0
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    racers = [
        subprocess.Popen([sys.executable, "-c", RACER, str(target), str(start), str(n)], env=env)
        for n in (1, 2, 3)
    ]
    codes = [racer.wait(timeout=120) for racer in racers]
    assert sorted(codes) == [0, 3, 3]
    winner = codes.index(0) + 1
    assert (tifffile.imread(target) == winner).all()
    assert temp_files(tmp_path) == []


def test_model_file_no_overwrite(tmp_path, monkeypatch):
    model = UNet(UNetConfig(depth=2, base_channels=4))
    target = tmp_path / "m.unet"
    real = torch.save

    def save(payload, file) -> None:
        real(payload, file)
        target.write_bytes(b"someone else's model")

    monkeypatch.setattr(torch, "save", save)
    with pytest.raises(FileExistsError):
        save_model(target, model, overwrite=False)
    assert target.read_bytes() == b"someone else's model"
    assert temp_files(tmp_path) == []


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_overwrite_never_replaces_a_fifo_or_a_folder(tmp_path):
    fifo = tmp_path / "pipe.tif"
    os.mkfifo(fifo)
    with pytest.raises(OSError, match="named pipe"):
        io.write_tiff(fifo, ARRAY, overwrite=True)
    folder = tmp_path / "folder.tif"
    folder.mkdir()
    with pytest.raises(IsADirectoryError):
        io.write_tiff(folder, ARRAY, overwrite=True)
    loop = tmp_path / "loop.tif"
    os.symlink(loop, loop)
    with pytest.raises(OSError, match="symbolic link loop"):
        io.write_tiff(loop, ARRAY, overwrite=True)
    assets = {p.name: p.is_fifo() for p in tmp_path.iterdir()}
    assert assets == {"pipe.tif": True, "folder.tif": False, "loop.tif": False}


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_cli_overwrite_refuses_a_fifo_before_any_work(tmp_path, capsys):
    model = untrained_model(tmp_path / "m.unet")
    np.save(tmp_path / "image.npy", cells((16, 16))[0])
    fifo = tmp_path / "out.tif"
    os.mkfifo(fifo)
    argv = ["predict", "--model", model, "--image", tmp_path / "image.npy", "--out", fifo,
            "--overwrite", "--device", "cpu"]  # fmt: skip
    code = cli.main([str(arg) for arg in argv])
    line = error_line(code, capsys.readouterr().err)
    assert "is a named pipe (FIFO), not a regular file" in line
    assert fifo.is_fifo()


def test_stale_temporary_files_of_killed_writers_are_removed(tmp_path):
    target = tmp_path / "labels.tif"
    old = time.time() - 2 * io.STALE_TEMP_SECONDS
    dead = 2**22 + 12345  # above Linux's largest process id: no such process
    names = {
        f".labels.tif.{dead}-abc12345.tmp": (old, False),  # killed writer, old: removed
        ".labels.tif.k2j4h5x9.tmp": (old, False),  # older versions' name, old: removed
        f".labels.tif.{dead}-fresh123.tmp": (time.time(), True),  # too recent: kept
        f".labels.tif.{os.getpid()}-mine1234.tmp": (old, True),  # a live writer: kept
        f".other.tif.{dead}-abc12345.tmp": (old, True),  # another target's: kept
        "labels.tif.notes": (old, True),  # not a temporary file: kept
        ".labels.tif.backup.tmp": (old, True),  # not a name of ours: kept
    }
    for name, (mtime, _) in names.items():
        (tmp_path / name).write_bytes(b"partial")
        os.utime(tmp_path / name, (mtime, mtime))
    io.write_tiff(target, ARRAY)
    kept = sorted(name for name, (_, keep) in names.items() if keep)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "labels.tif") == kept


def test_disk_full_short_write_and_torch_error_give_the_documented_sentence(tmp_path, monkeypatch):
    """A full disk, however the library reports it, is reported as a full disk."""
    target = tmp_path / "out.tif"
    target.write_bytes(b"old")

    def short_write(file, data, **kwargs) -> None:  # numpy's tofile on a full disk
        raise OSError("262144 requested and 112488 written")

    monkeypatch.setattr(tifffile, "imwrite", short_write)
    monkeypatch.setattr(io.shutil, "disk_usage", lambda folder: SimpleNamespace(free=0))
    with pytest.raises(OSError, match="No space left on the disk while writing") as info:
        io.write_tiff(target, ARRAY, overwrite=True)
    assert str(info.value).endswith("any existing file there was left unchanged")
    assert target.read_bytes() == b"old" and temp_files(tmp_path) == []


def test_disk_full_inside_torch_save_is_a_full_disk(tmp_path, monkeypatch):
    """torch.save turns the writer's ENOSPC into 'RuntimeError: ... inline_container.cc'."""

    class Full:
        def __init__(self, file) -> None:
            self.file, self.written = file, 0

        def write(self, data) -> int:
            self.written += len(data)
            if self.written > 1000:
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.file.write(data)

        def __getattr__(self, name):
            return getattr(self.file, name)

    real_save = torch.save
    monkeypatch.setattr(torch, "save", lambda payload, file: real_save(payload, Full(file)))
    target = tmp_path / "m.unet"
    with pytest.raises(OSError, match="No space left on the disk while writing"):
        save_model(target, UNet(UNetConfig(depth=2, base_channels=4)))
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ outputs checked together


def _cli(capsys, *argv) -> str:
    """Run a command that must fail; return its one error line."""
    return error_line(cli.main([str(a) for a in argv]), capsys.readouterr().err)


@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]])
def test_outputs_are_checked_together_before_any_work(overwrite, tmp_path, capsys):
    model = untrained_model(tmp_path / "m.unet")
    image, labels = cells((16, 16))
    np.save(tmp_path / "image.npy", image)
    np.save(tmp_path / "labels.npy", labels)
    tifffile.imwrite(tmp_path / "old.tif", ARRAY)
    (tmp_path / "model-copy.tif").write_bytes(model.read_bytes())  # a model under a TIFF name
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    predict = ["predict", "--model", model, "--image", tmp_path / "image.npy", "--device", "cpu"]
    weightmap = ["weightmap", "--labels", tmp_path / "labels.npy"]
    cases = {
        "same labels and probabilities": (
            [*predict, "--out", tmp_path / "same.tif", "--probabilities", tmp_path / "same.tif"],
            "--out and --probabilities name the same file",
        ),
        "same weights and target": (
            [*weightmap, "--out", tmp_path / "x.tif", "--target", tmp_path / "x.tif"],
            "--out and --target name the same file",
        ),
        "labels over the model": (
            [*predict, "--out", model],
            "is a model file name or a model file",
        ),
        "labels named like a model": (
            [*predict, "--out", tmp_path / "new.unet"],
            "is a model file name or a model file",
        ),
        "labels over a model file with a TIFF name": (
            [*predict, "--out", tmp_path / "model-copy.tif"],
            "is a model file name or a model file",
        ),
        "weights over the input labels": (
            [*weightmap, "--out", tmp_path / "old.tif", "--target", tmp_path / "labels.npy"],
            "name the same file",
        ),
    }
    for name, (argv, fragment) in cases.items():
        line = _cli(capsys, *argv, *overwrite)
        if "name the same file" in fragment and not overwrite and "old.tif" in str(argv):
            assert "already exists" in line, name  # the first problem found is reported
            continue
        assert fragment in line, (name, line)
        assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before, name
    assert temp_files(tmp_path) == []


def test_weightmap_of_an_empty_label_image_writes_nothing(tmp_path, capsys):
    np.save(tmp_path / "labels.npy", np.zeros((0, 16), np.int32))
    line = _cli(capsys, "weightmap", "--labels", tmp_path / "labels.npy", "--out",
                tmp_path / "w.tif")  # fmt: skip
    assert "hold no pixels (shape (0, 16))" in line
    assert [p.name for p in tmp_path.iterdir()] == ["labels.npy"]


def test_evaluate_float_labels_in_one_sentence(tmp_path, capsys):
    np.save(tmp_path / "f.npy", np.random.default_rng(0).random((8, 8)).astype(np.float32))
    line = _cli(capsys, "evaluate", "--truth", tmp_path / "f.npy", "--pred", tmp_path / "f.npy")
    assert "f.npy: The labels hold float32 values, but labels must be integers" in line


def test_settings_are_checked_before_the_data_is_read(tmp_path, capsys):
    argv = ["train", "--image", tmp_path / "missing.npy", "--labels", tmp_path / "missing.npy",
            "--out", tmp_path / "m.unet", "--seed", 2**70]  # fmt: skip
    assert "seed must be a whole number from 0 to 4294967295" in _cli(capsys, *argv)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_inputs_that_are_not_files_are_named_for_what_they_are(tmp_path, capsys):
    os.mkfifo(tmp_path / "pipe.npy")
    (tmp_path / "folder.npy").mkdir()
    os.symlink(tmp_path / "loop.npy", tmp_path / "loop.npy")
    os.symlink(tmp_path / "loop.unet", tmp_path / "loop.unet")
    expected = {
        "pipe.npy": "is a named pipe (FIFO), not an image file",
        "folder.npy": "is a folder, not an image file",
        "loop.npy": "is a symbolic link loop, not an image file",
    }
    for name, fragment in expected.items():
        path = tmp_path / name
        assert fragment in _cli(capsys, "evaluate", "--truth", path, "--pred", path), name
    np.save(tmp_path / "image.npy", cells((16, 16))[0])
    argv = ["predict", "--model", tmp_path / "loop.unet", "--image", tmp_path / "image.npy",
            "--out", tmp_path / "out.tif"]  # fmt: skip
    assert "(it is a symbolic link loop)" in _cli(capsys, *argv)


@pytest.fixture
def tiny_disk(tmp_path):
    """A real 256 KiB file system (tmpfs; needs root and the right to mount, else skipped)."""
    folder = tmp_path / "disk"
    folder.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(folder)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip("cannot mount a small file system here")
    yield folder
    subprocess.run(["umount", str(folder)], check=False)


def test_a_really_full_disk_gives_the_documented_sentence(tiny_disk, capsys):
    (tiny_disk / "out.tif").write_bytes(b"old")
    with pytest.raises(OSError, match="No space left on the disk while writing") as info:
        io.write_tiff(tiny_disk / "out.tif", np.zeros((512, 512), np.float32), overwrite=True)
    assert str(info.value).endswith("any existing file there was left unchanged")
    with pytest.raises(OSError, match="No space left on the disk while writing"):
        save_model(tiny_disk / "m.unet", UNet(UNetConfig(depth=3, base_channels=16)))
    assert sorted(p.name for p in tiny_disk.iterdir()) == ["out.tif"]
    assert (tiny_disk / "out.tif").read_bytes() == b"old"


def test_pytorchs_cpu_allocation_failure_is_out_of_memory():
    error = RuntimeError(
        "[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: "
        "you tried to allocate 429496729600 bytes. Error code 12 (Cannot allocate memory)"
    )
    assert cli.error_message(error).startswith("out of memory; use a smaller --tile-size")
    assert cli.error_message(RuntimeError("something else")).startswith("unexpected")
