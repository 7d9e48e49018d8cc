"""Hostile and forged files: pickles that would run code, zip bombs, absurd declared sizes.

Each payload is real: had it been unpickled it would have run ``os.system("touch MARKER")``,
so every test also checks that the marker file was never created. Pickles are written opcode
by opcode (protocol 0 text opcodes and protocol 2/4 binary ones), both as raw (legacy) files
and inside a PyTorch zip archive in place of its ``data.pkl``.
"""

import io as stdio
import json
import pathlib
import struct
import zipfile

import numpy as np
import pytest
import tifffile
import torch
from bad_cases import cells, error_line, untrained_model

from napari_unetkit import cli, data, io
from napari_unetkit.model import UNet, UNetConfig
from napari_unetkit.modelfile import FORMAT, ModelFileError, load_model, read_description

OBJECTS = "it holds Python objects other than weights, which are never loaded"
UNSAFE_ADVICE = ("Re-running", "weights_only", "allow_pickle", "trust the source")


def _string(text: bytes) -> bytes:
    """Protocol-0 STRING opcode pushing ``text``."""
    return b"S'" + text + b"'\n"


def payloads(marker: pathlib.Path) -> dict[str, bytes]:
    """Pickles that call ``os.system`` (or ``posix.system``) with a command creating ``marker``."""
    command = f"touch {marker}".encode()
    unicode = b"\x8c" + bytes([len(command)]) + command  # SHORT_BINUNICODE
    return {
        "GLOBAL os system": b"cos\nsystem\n(" + _string(command) + b"tR.",
        "GLOBAL posix system": b"cposix\nsystem\n(" + _string(command) + b"tR.",
        "INST": b"(" + _string(command) + b"ios\nsystem\n.",
        "OBJ": b"(cos\nsystem\n" + _string(command) + b"o.",
        "BUILD": b"cos\nsystem\n(" + _string(command) + b"tR}b.",
        "STACK_GLOBAL protocol 4": b"\x80\x04\x8c\x02os\x94\x8c\x06system\x94\x93\x94"
        + unicode
        + b"\x94\x85\x94R\x94.",
        "inside our format's dict": b"\x80\x02}q\x00(X\x06\x00\x00\x00formatq\x01cos\nsystem\n"
        + b"X"
        + len(command).to_bytes(4, "little")
        + command
        + b"\x85Ru.",
    }


def in_archive(pickle_bytes: bytes) -> bytes:
    """A PyTorch zip archive whose ``data.pkl`` is ``pickle_bytes``."""
    buffer = stdio.BytesIO()
    torch.save({"format": FORMAT}, buffer)
    source = zipfile.ZipFile(stdio.BytesIO(buffer.getvalue()))
    out = stdio.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for info in source.infolist():
            content = source.read(info.filename)
            archive.writestr(info, pickle_bytes if info.filename.endswith("data.pkl") else content)
    return out.getvalue()


@pytest.mark.parametrize("container", ["raw pickle", "torch archive"])
def test_pickles_calling_os_system_get_the_documented_message(container, tmp_path):
    marker = tmp_path / "MARKER"
    for name, pickle_bytes in payloads(marker).items():
        path = tmp_path / f"{name}.unet"
        path.write_bytes(pickle_bytes if container == "raw pickle" else in_archive(pickle_bytes))
        with pytest.raises(ModelFileError) as info:
            load_model(path)
        message = str(info.value)
        assert OBJECTS in message, (name, message)
        assert "system" in message and not any(text in message for text in UNSAFE_ADVICE)
    assert not marker.exists()


def test_hostile_model_through_the_command_line(tmp_path, capsys):
    marker = tmp_path / "MARKER"
    model = tmp_path / "evil.unet"
    model.write_bytes(in_archive(payloads(marker)["GLOBAL os system"]))
    np.save(tmp_path / "image.npy", cells((16, 16))[0])
    np.save(tmp_path / "labels.npy", cells((16, 16))[1])
    for argv in (
        ["predict", "--model", model, "--image", tmp_path / "image.npy", "--out",
         tmp_path / "out.tif", "--device", "cpu"],
        ["train", "--image", tmp_path / "image.npy", "--labels", tmp_path / "labels.npy",
         "--out", tmp_path / "m.unet", "--resume", model, "--device", "cpu"],
    ):  # fmt: skip
        line = error_line(cli.main([str(a) for a in argv]), capsys.readouterr().err)
        assert OBJECTS in line and not any(text in line for text in UNSAFE_ADVICE)
    assert not marker.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.unet", "image.npy", "labels.npy"]


@pytest.mark.parametrize("kind", ["object array", "raw pickle"])
def test_npy_with_pickles_never_quotes_numpys_unsafe_advice(kind, tmp_path):
    marker = tmp_path / "MARKER"
    path = tmp_path / "image.npy"
    if kind == "object array":
        # A real object array whose pickled element is the os.system payload.
        header = b"{'descr': '|O', 'fortran_order': False, 'shape': (1,), }"
        header += b" " * (63 - len(header) % 64) + b"\n"
        body = payloads(marker)["STACK_GLOBAL protocol 4"]
        path.write_bytes(b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + body)
    else:
        path.write_bytes(payloads(marker)["STACK_GLOBAL protocol 4"])
    with pytest.raises(ValueError, match="Python objects other than numbers, which are never"):
        io.read_image(path)
    assert not marker.exists()


def _valid_archive(tmp_path: pathlib.Path) -> pathlib.Path:
    return untrained_model(tmp_path / "good.unet")


def _rewritten(path: pathlib.Path, out: pathlib.Path, rewrite) -> pathlib.Path:
    """Copy the archive ``path`` to ``out``, passing each (info, content) through ``rewrite``."""
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(out, "w") as target:
        for info in source.infolist():
            rewrite(target, info, source.read(info.filename))
    return out


def test_zip_bomb_model_is_refused_before_anything_is_unpacked(tmp_path, monkeypatch):
    good = _valid_archive(tmp_path)
    bomb = tmp_path / "bomb.unet"

    with zipfile.ZipFile(good) as source, zipfile.ZipFile(bomb, "w") as target:
        for info in source.infolist():
            content = source.read(info.filename)
            if "/data/" in info.filename and info.filename.endswith("/0"):
                info.compress_type = zipfile.ZIP_DEFLATED
                with target.open(info, "w", force_zip64=True) as entry:
                    for _ in range(64):
                        entry.write(bytes(1 << 20))
            else:
                target.writestr(info, content)
    assert bomb.stat().st_size < (1 << 20)

    def never(*args, **kwargs):
        raise AssertionError("torch.load was called on a zip bomb")

    monkeypatch.setattr(torch, "load", never)
    with pytest.raises(ModelFileError, match="is compressed, which napari-unetkit never writes"):
        load_model(bomb)


def test_weight_data_larger_than_the_architecture_is_refused_before_reading(tmp_path, monkeypatch):
    good = _valid_archive(tmp_path)
    forged = tmp_path / "forged.unet"
    with zipfile.ZipFile(good) as source, zipfile.ZipFile(forged, "w") as target:
        for info in source.infolist():
            content = source.read(info.filename)
            if "/data/" in info.filename and info.filename.endswith("/0"):
                content = bytes(4 << 20)  # 4 MiB stored: a tiny network needs some KiB
            target.writestr(info, content)

    def never(*args, **kwargs):
        raise AssertionError("torch.load was called")

    monkeypatch.setattr(torch, "load", never)
    with pytest.raises(ModelFileError, match="the architecture it describes needs at most"):
        load_model(forged)


def _payload_file(path: pathlib.Path, change) -> pathlib.Path:
    """Save a tiny model's payload to ``path`` after ``change(payload)``."""
    model = UNet(UNetConfig(depth=2, base_channels=4))
    description = {"architecture": model.config.to_dict(), "mode": "instances"}
    payload = {
        "format": FORMAT,
        "format_version": 1,
        "description": json.dumps(description),
        "state_dict": {k: v.clone() for k, v in model.state_dict().items()},
    }
    change(payload)
    torch.save(payload, path)
    return path


def _weights(convert):
    def change(payload) -> None:
        payload["state_dict"] = {
            k: convert(v) if v.is_floating_point() else v for k, v in payload["state_dict"].items()
        }

    return change


@pytest.mark.parametrize(
    ("name", "change", "message"),
    [
        ("complex", _weights(lambda v: v.to(torch.complex64)), "type complex64"),
        ("integer", _weights(lambda v: v.to(torch.int32)), "type int32"),
        ("all NaN", _weights(lambda v: torch.full_like(v, float("nan"))), "NaN or infinite"),
        ("one inf", _weights(lambda v: v.index_fill(0, torch.tensor([0]), float("inf"))), "NaN"),
        (
            "description nested 100000 deep",
            lambda p: p.update(description="[" * 100_000 + "]" * 100_000),
            "nested too deeply",
        ),
    ],
)
def test_forged_weights_and_descriptions_are_refused(name, change, message, tmp_path):
    path = _payload_file(tmp_path / f"{name}.unet", change)
    with pytest.raises(ModelFileError, match=message):
        load_model(path)
    if "nested" in name:
        with pytest.raises(ModelFileError, match=message):
            read_description(path)


def bogus_tiff(width: int, height: int) -> bytes:
    """A little-endian TIFF of about 150 bytes declaring a ``width`` x ``height`` 8-bit image."""
    tags = [  # (tag, type, count, value): SHORT = 3, LONG = 4
        (256, 4, 1, width), (257, 4, 1, height), (258, 3, 1, 8), (259, 3, 1, 1),
        (262, 3, 1, 1), (273, 4, 1, 8), (277, 3, 1, 1), (278, 4, 1, height),
        (279, 4, 1, 16),
    ]  # fmt: skip
    ifd = len(tags).to_bytes(2, "little")
    for tag, kind, count, value in tags:
        ifd += struct.pack("<HHI", tag, kind, count) + value.to_bytes(4, "little")
    ifd += bytes(4)  # no next IFD
    return b"II*\x00" + (24).to_bytes(4, "little") + bytes(16) + ifd


def test_tiff_declaring_an_impossible_size_is_refused_before_allocating(
    tmp_path, capsys, monkeypatch
):
    path = tmp_path / "huge.tif"
    path.write_bytes(bogus_tiff(200_000, 200_000))
    assert path.stat().st_size < 200

    def never(*args, **kwargs):
        raise AssertionError("the pixels were decoded")

    monkeypatch.setattr(tifffile, "imread", never)
    argv = ["evaluate", "--truth", path, "--pred", path]
    line = error_line(cli.main([str(a) for a in argv]), capsys.readouterr().err)
    assert "declares an image of 200000 x 200000 pixels" in line
    assert "damaged" in line and "memory" not in line


def npy_header(text: bytes) -> bytes:
    """A version 1.0 ``.npy`` header holding ``text`` (padded to 64 bytes as numpy does)."""
    text += b" " * (63 - (len(text) + 10) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b"II*\x00\x08\x00", "not a valid TIFF file (it ends too early"),
        (b"\x93NUMPY\x01\x00\x10\x00{'descr': 'x'}", "not a valid NumPy .npy file"),
        (
            npy_header(b"{'descr': '<f8', 'fortran_order': False, 'shape': (100000, 100000), }"),
            "declares 80000000000 bytes of data but the file holds only 0",
        ),
    ],
)
def test_malformed_headers_give_one_sentence(content, fragment, tmp_path, capsys):
    suffix = ".tif" if content.startswith(b"II") else ".npy"
    path = tmp_path / f"bad{suffix}"
    path.write_bytes(content)
    argv = ["evaluate", "--truth", path, "--pred", path]
    line = error_line(cli.main([str(a) for a in argv]), capsys.readouterr().err)
    assert fragment in line and "unexpected" not in line


def test_classes_label_of_2_to_the_31_is_refused_without_counting(monkeypatch):
    image, _ = cells((32, 32))
    labels = np.zeros((32, 32), np.int64)
    labels[:16] = 1
    labels[16:] = 2
    labels[3, 3] = 2**31

    def never(*args, **kwargs):
        raise AssertionError("pixels were counted per class")

    monkeypatch.setattr(data, "balanced_class_weights", never)
    with pytest.raises(ValueError, match=r"at most 64\)"):
        data.prepare_training_data([(image, labels)], mode="classes")
