"""The Predict panel's "Recent models": models found again after napari restarts."""

import datetime
import os

import pytest

from napari_unetkit._napari.model_chooser import describe_file, recent_models
from napari_unetkit._napari.settings import save_widget_settings
from napari_unetkit.model import UNet, UNetConfig
from napari_unetkit.modelfile import load_model, save_model


def tiny_model() -> UNet:
    return UNet(UNetConfig(depth=1, base_channels=2))


def save(path, data_name, score, mode="instances", age_s=0):
    description = {
        "mode": mode,
        "training": {"data_name": data_name},
        "metrics": {"best_validation_score": score},
        "created": "2026-03-04T05:06:07+00:00",
    }
    saved = save_model(path, tiny_model(), description)
    stamp = datetime.datetime(2026, 3, 4, 6).timestamp() - age_s
    os.utime(saved, (stamp, stamp))
    return saved


@pytest.fixture
def models(tmp_path):
    folder = tmp_path / "models"
    folder.mkdir()
    files = [
        save(folder / "cells.unet", "cells", 0.65, age_s=300),
        save(folder / "cells-2.unet", "cells", 0.0, age_s=200),
        save(folder / "tissue.unet", "tissue", 0.71, mode="classes", age_s=100),
    ]
    (folder / "broken.unet").write_bytes(b"not a model")
    return folder, files


def test_recent_models_newest_first_with_date_data_and_score(models):
    folder, (cells, cells2, tissue) = models
    found = recent_models([folder, folder / "missing"])
    assert [model.path for model in found] == [p.resolve() for p in (tissue, cells2, cells)]
    created = datetime.datetime.fromisoformat("2026-03-04T05:06:07+00:00").astimezone()
    assert found[0].label == (
        f"tissue.unet · {created:%Y-%m-%d %H:%M} · trained on tissue · IoU 0.710"
    )
    assert found[1].label.endswith("· trained on cells · F1 0.000")
    assert recent_models([folder], limit=2) == found[:2]
    assert describe_file(cells).score == load_model(cells)[1]["metrics"]["best_validation_score"]


def test_recent_models_ignore_the_case_of_the_suffix(tmp_path):
    upper = save(tmp_path / "OLD.UNET", "cells", 0.5, age_s=0)
    (tmp_path / "notes.txt").write_text("not a model")
    assert [model.path for model in recent_models([tmp_path])] == [upper.resolve()]


@pytest.mark.gui
def test_predict_panel_offers_the_remembered_folders_models(make_napari_viewer, models):
    folder, (cells, cells2, tissue) = models
    save_widget_settings("train", {"path": str(folder / "next.unet")})  # as after a restart
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-unetkit", "Predict with U-Net")
    recent = widget.recent
    assert recent.value is None
    assert [path for path in recent.choices if path is not None][:3] == [
        p.resolve() for p in (tissue, cells2, cells)
    ]
    recent.value = cells.resolve()
    assert widget.fields["model_file"].value == cells.resolve()
    assert widget.fields["source"].value == "file"
    assert widget.model is not None and widget.model.path == cells.resolve()
    assert recent.native.currentText().startswith("cells.unet · ")
