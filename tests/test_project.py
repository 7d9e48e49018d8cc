"""The project folder: a growing training set and model versions (napari_unetkit.project)."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from napari_unetkit import project as project_module
from napari_unetkit.io import read_image
from napari_unetkit.project import MANIFEST_NAME, Project, ProjectError


def _slice(seed: int = 0, shape=(24, 20), channels: int | None = None):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 1000, size=shape).astype(np.uint16)
    if channels is not None:
        image = rng.random((*shape, channels)).astype(np.float32)
    labels = np.zeros(shape, np.int32)
    labels[2:6, 3:8] = 4
    labels[10:15, 10:14] = 9
    return image, labels


def test_create_add_reopen_remove(tmp_path):
    project = Project.create(tmp_path / "p")
    assert project.entries() == [] and project.models() == [] and project.channels is None
    image, labels = _slice()
    region = np.zeros(labels.shape, bool)
    region[:16, :16] = True
    image_before, labels_before = image.copy(), labels.copy()
    first = project.add(image, labels, region=region, source="cells.tif [3]")
    labels[0, 0] = 7  # the caller's later edits do not reach the project
    np.testing.assert_array_equal(image, image_before)
    assert first.id == "e0001" and first.shape == (24, 20) and first.channels == 1
    assert first.n_objects == 2 and first.labelled_pixels == 20 + 20
    assert first.annotated_pixels == 256 and first.has_region and first.source == "cells.tif [3]"
    second = project.add(*_slice(1))
    assert second.id == "e0002" and not second.has_region and second.annotated_pixels == 480

    reopened = Project.open(tmp_path / "p")
    assert reopened.entries() == [first, second]
    stored_image, stored_labels, stored_region = reopened.read_entry("e0001")
    np.testing.assert_array_equal(stored_image, image_before)
    np.testing.assert_array_equal(stored_labels, labels_before)
    np.testing.assert_array_equal(stored_region, region)
    assert reopened.read_entry("e0002")[2] is None

    reopened.remove("e0001")
    assert [e.id for e in project.entries()] == ["e0002"]
    assert not any(p.name.startswith("e0001") for p in (tmp_path / "p" / "entries").iterdir())
    assert project.add(*_slice(2)).id == "e0003"  # ids are never reused
    with pytest.raises(ProjectError, match="no entry 'e0001'"):
        project.remove("e0001")


def test_training_pairs_train_the_whole_set(tmp_path):
    from napari_unetkit import data

    project = Project.create(tmp_path / "p")
    with pytest.raises(ProjectError, match="no entries yet"):
        project.training_pairs()
    image, labels = _slice()
    region = np.ones(labels.shape, bool)
    region[:, 15:] = False
    project.add(image, labels, region=region)
    project.add(*_slice(1))
    ts = project.training_pairs()
    assert ts.entry_ids == ["e0001", "e0002"] and ts.channel_axis is None
    assert ts.regions[1] is None and ts.regions[0].dtype == bool
    prepared = data.prepare_training_data(
        ts.pairs, channel_axis=ts.channel_axis, regions=ts.regions
    )
    expected = data.prepare_training_data([(image, labels), _slice(1)], regions=[region, None])
    for got, want in zip(prepared.slices, expected.slices, strict=True):
        np.testing.assert_array_equal(got.weights, want.weights)
        np.testing.assert_array_equal(got.image, want.image)


def test_channels_are_stored_first_and_must_agree(tmp_path):
    project = Project.create(tmp_path / "p")
    image, labels = _slice(channels=3)  # RGB-like (Y, X, 3)
    entry = project.add(image, labels, channel_axis=-1)
    assert entry.channels == 3
    stored = project.read_entry(entry.id)[0]
    np.testing.assert_array_equal(stored, np.moveaxis(image, -1, 0))
    assert project.training_pairs().channel_axis == 0
    with pytest.raises(ProjectError, match=r"1 channel.*project's images have 3"):
        project.add(*_slice())
    single = project_module._image_cyx(np.zeros((1, 4, 5)), 0)
    assert single.shape == (4, 5)


@pytest.mark.parametrize(
    ("labels", "region", "kwargs", "message"),
    [
        (np.ones((24, 21), np.int32), None, {}, "do not match the image's Y, X"),
        (np.ones((24, 20), np.float32), None, {}, "must be integers"),
        (-np.ones((24, 20), np.int32), None, {}, "labels hold negative values"),
        (np.zeros((24, 20), np.int32), None, {}, "Nothing to add"),
        (np.ones((24, 20), np.int32), np.ones((20, 24), bool), {}, "region .* does not match"),
        (np.zeros((24, 20), np.int32), np.zeros((24, 20), bool), {}, "marks no pixel"),
        (np.ones((24, 20), np.int32), None, {"channel_axis": 5}, "Add one 2D slice"),
    ],
)
def test_add_refuses_bad_input_and_writes_nothing(tmp_path, labels, region, kwargs, message):
    project = Project.create(tmp_path / "p")
    image, _ = _slice()
    before = (tmp_path / "p" / MANIFEST_NAME).read_bytes()
    with pytest.raises(ProjectError, match=message):
        project.add(image, labels, region=region, **kwargs)
    assert (tmp_path / "p" / MANIFEST_NAME).read_bytes() == before
    assert not (tmp_path / "p" / "entries").exists()


def test_add_refuses_stacks_and_non_numeric_images(tmp_path):
    project = Project.create(tmp_path / "p")
    _, labels = _slice()
    with pytest.raises(ProjectError, match="give its channel axis"):
        project.add(np.zeros((3, 24, 20)), labels)
    with pytest.raises(ProjectError, match="must hold numbers"):
        project.add(np.zeros((24, 20), bool), labels)


def test_empty_labels_with_a_region_are_checked_background(tmp_path):
    project = Project.create(tmp_path / "p")
    image, _ = _slice()
    region = np.zeros(image.shape, bool)
    region[5:10, 5:10] = True
    entry = project.add(image, np.zeros(image.shape, np.uint8), region=region)
    assert entry.n_objects == 0 and entry.annotated_pixels == 25


def test_open_and_create_refusals(tmp_path):
    with pytest.raises(ProjectError, match="does not exist"):
        Project.open(tmp_path / "missing")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("x")
    with pytest.raises(ProjectError, match="not a napari-unetkit project"):
        Project.open(tmp_path / "other")
    with pytest.raises(ProjectError, match="not empty and is not a project"):
        Project.create(tmp_path / "other")
    with pytest.raises(ProjectError, match="not empty and is not a project"):
        Project.open_or_create(tmp_path / "other")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ProjectError, match="is a file"):
        Project.create(tmp_path / "file")
    Project.create(tmp_path / "p")
    with pytest.raises(ProjectError, match="already a napari-unetkit project"):
        Project.create(tmp_path / "p")
    assert Project.open_or_create(tmp_path / "p").folder == tmp_path / "p"
    assert Project.open_or_create(tmp_path / "new" / "q").entries() == []


def test_deleted_folder(tmp_path):
    project = Project.create(tmp_path / "p")
    project.add(*_slice())
    shutil.rmtree(tmp_path / "p")
    for call in (
        lambda: project.add(*_slice()),
        project.entries,
        project.training_pairs,
        project.new_model_path,
        lambda: project.remove("e0001"),
    ):
        with pytest.raises(ProjectError, match="no longer exists"):
            call()
    assert not (tmp_path / "p").exists()  # nothing recreated a half project


def test_read_only_folder(tmp_path):
    project = Project.create(tmp_path / "p")
    project.add(*_slice())
    folder = tmp_path / "p"
    before = sorted(p.name for p in folder.rglob("*"))
    for path in [folder, folder / "entries"]:
        path.chmod(0o555)
    try:
        if os.access(folder, os.W_OK):
            pytest.skip("permission bits are not enforced for this user (running as root)")
        with pytest.raises(ProjectError, match="read-only"):
            project.add(*_slice(1))
        with pytest.raises(ProjectError, match="read-only"):
            project.remove("e0001")
        assert [e.id for e in project.entries()] == ["e0001"]  # reading still works
    finally:
        for path in [folder, folder / "entries"]:
            path.chmod(0o755)
    assert sorted(p.name for p in folder.rglob("*")) == before


def test_unwritable_folder_gives_project_error(tmp_path, monkeypatch):
    """The same refusal for any user (also root, for whom permission bits do not apply)."""
    project = Project.create(tmp_path / "p")
    before = (tmp_path / "p" / MANIFEST_NAME).read_bytes()

    def refuse(path):
        raise PermissionError(f"Cannot write {path.name}: the folder is not writable.")

    monkeypatch.setattr(project_module, "check_writable", refuse)
    with pytest.raises(ProjectError, match=r"Cannot write to the project .*not writable"):
        project.add(*_slice())
    assert (tmp_path / "p" / MANIFEST_NAME).read_bytes() == before
    assert not (tmp_path / "p" / "entries").exists()


def test_crash_while_writing_the_manifest_leaves_no_dangling_entry(tmp_path, monkeypatch):
    project = Project.create(tmp_path / "p")
    project.add(*_slice())
    before = (tmp_path / "p" / MANIFEST_NAME).read_bytes()
    real_write = project_module.atomic_write

    def crash(path, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(project_module, "atomic_write", crash)
    with pytest.raises(ProjectError, match="No space left"):
        project.add(*_slice(1))
    monkeypatch.setattr(project_module, "atomic_write", real_write)
    assert (tmp_path / "p" / MANIFEST_NAME).read_bytes() == before
    assert sorted(p.name for p in (tmp_path / "p" / "entries").iterdir()) == [
        "e0001.image.tif",
        "e0001.labels.tif",
    ]
    # A process killed between the entry files and the manifest leaves unreferenced files:
    # the next id skips them, and the project stays consistent.
    image, labels = _slice(3)
    for kind in ("image", "labels"):
        (tmp_path / "p" / "entries" / f"e0002.{kind}.tif").write_bytes(b"partial")
    assert Project.open(tmp_path / "p").add(image, labels).id == "e0003"
    assert [e.id for e in project.entries()] == ["e0001", "e0003"]
    project.training_pairs()  # every referenced file is complete


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda text: text[: len(text) // 2], "not valid JSON"),
        (lambda text: "[]", "not a napari-unetkit project manifest"),
        (lambda text: text.replace('"n_objects": 2', '"n_objects": "two"'), "invalid fields"),
        (lambda text: text.replace('"id": "e0001"', '"id": "../../etc"'), "bad entry id"),
        (lambda text: text.replace('"entries": [', '"entries": 5, "x": ['), "must be lists"),
        (lambda text: text.replace('"version": 1', '"version": 99', 1), "newer napari-unetkit"),
        (lambda text: "\x00\xff", "not valid JSON|not UTF-8"),
    ],
)
def test_damaged_or_hand_edited_manifest(tmp_path, edit, message):
    project = Project.create(tmp_path / "p")
    project.add(*_slice())
    manifest = tmp_path / "p" / MANIFEST_NAME
    manifest.write_text(edit(manifest.read_text()), encoding="utf-8", errors="surrogateescape")
    with pytest.raises(ProjectError, match=message):
        Project.open(tmp_path / "p")
    with pytest.raises(ProjectError, match=message):
        project.entries()


def test_missing_entry_file_names_the_entry(tmp_path):
    project = Project.create(tmp_path / "p")
    project.add(*_slice())
    (tmp_path / "p" / "entries" / "e0001.labels.tif").unlink()
    with pytest.raises(ProjectError, match=r"Entry e0001 cannot be read.*remove it"):
        project.training_pairs()
    project.remove("e0001")  # the way out works even with the file gone
    assert project.entries() == []


def _tiny_model(path):
    from napari_unetkit.model import UNet, UNetConfig
    from napari_unetkit.modelfile import save_model

    model = UNet(UNetConfig(depth=1, base_channels=2))
    description = {"mode": "instances", "metrics": {"best_validation_score": 0.75}}
    return save_model(path, model, description, overwrite=False)


def test_model_versions(tmp_path):
    project = Project.create(tmp_path / "p")
    entry = project.add(*_slice())
    assert project.latest_model() is None
    first_path = project.new_model_path()
    assert first_path == tmp_path / "p" / "models" / "v001.unet"
    assert project.new_model_path() == first_path  # nothing written yet
    _tiny_model(first_path)
    assert project.new_model_path().name == "v002.unet"  # an unrecorded file is never reused
    first = project.record_model(first_path, base="/data/base.unet", entries=[entry.id])
    assert (first.version, first.parent, first.base, first.score) == (
        1,
        None,
        "/data/base.unet",
        0.75,
    )
    assert first.entries == ("e0001",) and first.name == "v001"
    second_path = _tiny_model(project.new_model_path())
    second = project.record_model(second_path, parent=1, entries=[entry.id], score=0.9)
    assert Project.open(tmp_path / "p").models() == [first, second]
    assert project.latest_model() == second
    second_path.unlink()
    assert project.latest_model() == first  # a deleted file cannot be chosen
    assert project.model(2).exists is False

    with pytest.raises(ProjectError, match="already recorded"):
        project.record_model(first_path)
    with pytest.raises(ProjectError, match="not a model file of this project"):
        project.record_model(_tiny_model(tmp_path / "elsewhere.unet"))
    third_path = _tiny_model(project.new_model_path())
    with pytest.raises(ProjectError, match="parent version 7 is not recorded"):
        project.record_model(third_path, parent=7)
    with pytest.raises(ProjectError, match="Unknown entries e0042"):
        project.record_model(third_path, entries=["e0042"])
    (tmp_path / "p" / "models" / "v004.unet").write_bytes(b"not a model")
    with pytest.raises(ProjectError, match=r"Cannot record v004.unet"):
        project.record_model(tmp_path / "p" / "models" / "v004.unet")
    assert project.new_model_path().name == "v005.unet"


def test_manifest_is_versioned_json(tmp_path):
    project = Project.create(tmp_path / "p")
    project.add(*_slice(), source="a")
    data = json.loads((tmp_path / "p" / MANIFEST_NAME).read_text())
    assert data["format"] == "napari-unetkit-project" and data["version"] == 1
    assert data["entries"][0]["id"] == "e0001" and data["channels"] == 1
    stored = read_image(tmp_path / "p" / "entries" / "e0001.labels.tif")
    assert stored.dtype == np.uint16
