"""``unetkit train --init-from / --project`` and ``unetkit project``, end to end on tiny data."""

import numpy as np
import pytest
import tifffile

from napari_unetkit.cli import main
from napari_unetkit.modelfile import load_model, read_description
from napari_unetkit.project import Project
from napari_unetkit.synthetic import synthetic_nuclei

TINY = [
    "--epochs", "1", "--steps-per-epoch", "2", "--patch-size", "48", "--batch-size", "2",
    "--device", "cpu",
]  # fmt: skip
ARCH = ["--base-channels", "4", "--depth", "2"]


@pytest.fixture
def files(tmp_path):
    for seed in (1, 2):
        image, labels = synthetic_nuclei(shape=(64, 64), seed=seed)
        tifffile.imwrite(tmp_path / f"image{seed}.tif", image)
        tifffile.imwrite(tmp_path / f"labels{seed}.tif", labels)
    region = np.zeros((64, 64), np.uint8)
    region[:40, :40] = 1
    tifffile.imwrite(tmp_path / "region.tif", region)
    return tmp_path


def _error(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("unetkit:")]
    assert "Traceback" not in err and len(lines) == 1 and lines[0].startswith("unetkit: error: ")
    return lines[0]


def test_project_loop_end_to_end(files, capsys):
    folder = files / "proj"
    add = ["project", "add", str(folder)]
    assert (
        main([*add, "--image", str(files / "image1.tif"), "--labels", str(files / "labels1.tif")])
        == 0
    )
    assert main([*add, "--image", str(files / "image2.tif"), "--labels", str(files / "labels2.tif"),
                 "--region", str(files / "region.tif")]) == 0  # fmt: skip
    assert "it holds 2 entries" in capsys.readouterr().out

    # Round 1: no model yet, from scratch; round 2: fine-tune the latest version.
    assert main(["train", "--project", str(folder), *TINY, *ARCH]) == 0
    assert main(["train", "--project", str(folder), "--init-from", "latest", *TINY]) == 0
    out = capsys.readouterr().out
    assert "Recorded as version v002 from version 1" in out
    project = Project.open(folder)
    first, second = project.models()
    assert (first.parent, second.parent) == (None, 1)
    description = read_description(second.path)
    assert second.entries == ("e0001", "e0002")
    assert second.score == description["metrics"]["best_validation_score"]
    assert description["parent"]["file"] == "v001.unet"
    assert load_model(second.path)[0].config == load_model(first.path)[0].config

    # An outside base model: recorded as the base, not as a parent version.
    base = files / "base.unet"
    assert main(["train", "--image", str(files / "image1.tif"), "--labels",
                 str(files / "labels1.tif"), "--out", str(base), *TINY, *ARCH]) == 0  # fmt: skip
    assert main(["train", "--project", str(folder), "--init-from", str(base), *TINY]) == 0
    third = Project.open(folder).latest_model()
    assert third.version == 3 and third.parent is None and third.base == str(base)

    assert main(["project", "remove", str(folder), "e0001"]) == 0
    capsys.readouterr()
    assert main(["project", "list", str(folder)]) == 0
    listing = capsys.readouterr().out
    assert "1 entries, 3 model versions" in listing and "e0002" in listing
    assert "v002  score" in listing and "from v001" in listing


def test_init_from_with_plain_files(files, capsys):
    base, tuned = files / "base.unet", files / "tuned.unet"
    pair = ["--image", str(files / "image1.tif"), "--labels", str(files / "labels1.tif")]
    assert main(["train", *pair, "--out", str(base), *TINY, *ARCH]) == 0
    assert main(["train", *pair, "--out", str(tuned), "--init-from", str(base), *TINY]) == 0
    description = read_description(tuned)
    assert description["parent"]["file"] == "base.unet"
    assert description["epochs_trained"] == 1  # a new run, not a continuation


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["--init-from", "B", "--resume", "B"], "give only one of them"),
        (["--init-from", "B", "--depth", "3"], "--depth is fixed by the --init-from model"),
        (["--init-from", "B", "--mode", "classes"], "differs from the --init-from model's mode"),
        (["--project", "P", "--out", "x.unet"], "leave out --out"),
        (["--project", "P", "--image", "I"], "leave out --image"),
        (["--init-from", "latest", "--out", "x.unet"], "--init-from latest needs --project"),
        (["--out", "x.unet"], "Give --image and --labels"),
        (["--project", "MISSING"], "does not exist"),
        (["--project", "EMPTY"], "has no entries yet"),
        (["--project", "EMPTY", "--init-from", "latest"], "has no model version yet"),
    ],
)
def test_bad_train_options_give_one_line(files, capsys, argv, fragment):
    pair = ["--image", str(files / "image1.tif"), "--labels", str(files / "labels1.tif")]
    base = files / "B.unet"
    if not base.exists():
        assert main(["train", *pair, "--out", str(base), *TINY, *ARCH]) == 0
    Project.open_or_create(files / "EMPTY")
    names = {"B": str(base), "P": str(files / "EMPTY"), "I": str(files / "image1.tif")}
    names.update(MISSING=str(files / "missing"), EMPTY=str(files / "EMPTY"))
    argv = [names.get(a, a) for a in argv]
    capsys.readouterr()
    before = sorted(p.name for p in files.rglob("*"))
    assert main(["train", *argv, *TINY]) == 1
    assert fragment in _error(capsys)
    assert sorted(p.name for p in files.rglob("*")) == before


def test_project_add_refuses_bad_input_in_one_line(files, capsys):
    folder = files / "proj"
    wrong = files / "wrong.tif"
    tifffile.imwrite(wrong, np.zeros((60, 64), np.uint16))
    args = ["project", "add", str(folder), "--image", str(files / "image1.tif")]
    assert main([*args, "--labels", str(wrong)]) == 1
    assert "do not match the image's Y, X" in _error(capsys)
    empty = files / "empty.tif"
    tifffile.imwrite(empty, np.zeros((64, 64), np.uint16))
    assert main([*args, "--labels", str(empty)]) == 1
    assert "Nothing to add" in _error(capsys)
    assert main(["project", "remove", str(folder), "e0009"]) == 1
    assert "no entry 'e0009'" in _error(capsys)
    assert main(["project", "list", str(files / "nowhere")]) == 1
    assert "does not exist" in _error(capsys)
