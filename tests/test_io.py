import errno
import os
import re
import stat

import numpy as np
import pytest
import tifffile

from napari_unetkit import io


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_atomic_write_creates_file_and_no_temp(tmp_path):
    target = tmp_path / "out.bin"
    with io.atomic_write(target) as file:
        file.write(b"hello")
        assert not target.exists()  # nothing visible before the block ends
    assert target.read_bytes() == b"hello"
    assert os.listdir(tmp_path) == ["out.bin"]


def test_atomic_write_text_and_replace(tmp_path):
    target = tmp_path / "notes.txt"
    target.write_text("old")
    with io.atomic_write(target, "w") as file:
        file.write("nouveau ✓")
    assert target.read_text(encoding="utf-8") == "nouveau ✓"
    assert leftovers(tmp_path) == []


def test_new_file_gets_normal_permissions(tmp_path):
    target = tmp_path / "perm.bin"
    with io.atomic_write(target) as file:
        file.write(b"x")
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~mask
    target.chmod(0o640)
    with io.atomic_write(target) as file:
        file.write(b"y")
    assert stat.S_IMODE(target.stat().st_mode) == 0o640  # an existing file keeps its mode


@pytest.mark.parametrize("exception", [RuntimeError, KeyboardInterrupt])
def test_interrupted_write_keeps_old_file(tmp_path, exception):
    target = tmp_path / "model.unet"
    target.write_bytes(b"original")
    with pytest.raises(exception), io.atomic_write(target) as file:
        file.write(b"partial")
        raise exception("stop")
    assert target.read_bytes() == b"original"
    assert os.listdir(tmp_path) == ["model.unet"]


def test_disk_full_keeps_old_file(tmp_path, monkeypatch):
    target = tmp_path / "image.tif"
    target.write_bytes(b"original")

    def full_disk(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(io.os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space left on the disk") as info:
        io.write_tiff(target, np.zeros((4, 4), np.uint8), overwrite=True)
    assert info.value.errno == errno.ENOSPC
    assert target.read_bytes() == b"original"
    assert os.listdir(tmp_path) == ["image.tif"]


def test_missing_folder_is_named(tmp_path):
    folder = tmp_path / "nowhere"
    with (
        pytest.raises(FileNotFoundError, match="nowhere does not exist"),
        io.atomic_write(folder / "x.bin"),
    ):
        pass
    with pytest.raises(IsADirectoryError):
        io.write_tiff(tmp_path, np.zeros((2, 2)), overwrite=True)


def test_read_only_folder(tmp_path):
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        if os.access(folder, os.W_OK):
            pytest.skip("permission bits are not enforced for this user (running as root)")
        with (
            pytest.raises(PermissionError, match="is not writable"),
            io.atomic_write(folder / "x.bin"),
        ):
            pass
        assert os.listdir(folder) == []
    finally:
        folder.chmod(0o755)


def test_overwrite_refused_by_default(tmp_path):
    target = tmp_path / "labels.tif"
    io.write_tiff(target, np.ones((3, 3), np.uint8))
    with pytest.raises(FileExistsError, match="--overwrite"):
        io.write_tiff(target, np.zeros((3, 3), np.uint8))
    assert io.read_image(target).max() == 1
    io.write_tiff(target, np.zeros((3, 3), np.uint8), overwrite=True)
    assert io.read_image(target).max() == 0


@pytest.mark.parametrize(
    ("largest", "dtype"),
    [(0, np.uint16), (65535, np.uint16), (65536, np.uint32), (2**32 - 1, np.uint32)],
)
def test_labels_dtype(largest, dtype):
    labels = np.array([[0, largest]], dtype=np.int64)
    assert io.labels_dtype_for(labels) == dtype


def test_labels_dtype_rejects_bad_labels():
    assert io.labels_dtype_for(np.zeros((0, 3), np.int32)) == np.uint16
    assert io.labels_dtype_for(np.ones((2, 2), bool)) == np.uint16
    with pytest.raises(ValueError, match="negative"):
        io.labels_dtype_for(np.array([-1, 2]))
    with pytest.raises(ValueError, match="integers"):
        io.labels_dtype_for(np.array([0.5]))


def test_round_trip_dtypes(tmp_path):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 70000, (2, 5, 6), dtype=np.int64)
    path = io.write_tiff(tmp_path / "labels.tif", labels, labels=True, compression="zlib")
    back = io.read_image(path)
    assert back.dtype == np.uint32 and np.array_equal(back, labels)

    small = io.write_tiff(tmp_path / "small.tif", labels % 300, labels=True)
    assert io.read_image(small).dtype == np.uint16

    probs = rng.random((2, 8, 8))  # float64 -> float32
    back = io.read_image(io.write_tiff(tmp_path / "probs.tif", probs))
    assert back.dtype == np.float32
    np.testing.assert_allclose(back, probs.astype(np.float32))

    raw = rng.integers(0, 255, (7, 9), dtype=np.uint8)  # images keep their type
    assert np.array_equal(io.read_image(io.write_tiff(tmp_path / "raw.tif", raw)), raw)

    mask = io.read_image(io.write_tiff(tmp_path / "mask.tif", raw > 100))
    assert mask.dtype == np.uint8 and np.array_equal(mask, raw > 100)
    assert leftovers(tmp_path) == []


def test_metadata_is_stored(tmp_path):
    path = io.write_tiff(tmp_path / "m.tif", np.zeros((2, 2), np.float32), metadata={"k": 3})
    with tifffile.TiffFile(path) as tif:
        assert tif.shaped_metadata[0]["k"] == 3


def test_read_npy_and_errors(tmp_path):
    array = np.arange(6, dtype=np.int16).reshape(2, 3)
    np.save(tmp_path / "a.npy", array)
    assert np.array_equal(io.read_image(tmp_path / "a.npy"), array)

    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match="Python objects other than numbers") as info:
        io.read_image(tmp_path / "obj.npy")  # pickled objects are never loaded
    assert "allow_pickle" not in str(info.value)

    (tmp_path / "bad.tif").write_bytes(b"not a tiff at all")
    with pytest.raises(ValueError, match="not a valid TIFF"):
        io.read_image(tmp_path / "bad.tif")
    (tmp_path / "img.png").write_bytes(b"\x89PNG")
    with pytest.raises(ValueError, match=r"unsupported file type '\.png'"):
        io.read_image(tmp_path / "img.png")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        io.read_image(tmp_path / "missing.tif")


def test_atomic_write_rejects_other_modes(tmp_path):
    with pytest.raises(ValueError, match="mode"), io.atomic_write(tmp_path / "x", "a"):
        pass


def test_permission_error_names_the_folder(tmp_path, monkeypatch):
    # Simulates a read-only folder even when running as root.
    def refuse(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(io.tempfile, "mkstemp", refuse)
    with pytest.raises(PermissionError, match=re.escape(f"{tmp_path.name} is not writable")):
        io.write_tiff(tmp_path / "x.tif", np.zeros((2, 2), np.uint8))
    assert os.listdir(tmp_path) == []
