"""The Predict panel's "Export to bioimage.io..." action, in a real napari viewer."""

import pytest
import torch

from napari_unetkit._napari import export_action
from napari_unetkit._napari.session import SESSION
from napari_unetkit.bioimageio import is_package
from napari_unetkit.model import UNet, UNetConfig
from napari_unetkit.modelfile import load_model, save_model
from napari_unetkit.normalization import NormalizationSettings

pytestmark = pytest.mark.gui


@pytest.fixture
def model_file(tmp_path):
    torch.manual_seed(0)
    description = {"mode": "instances", "normalization": NormalizationSettings().to_dict()}
    return save_model(
        tmp_path / "nuclei.unet", UNet(UNetConfig(depth=2, base_channels=4)), description
    )


@pytest.fixture(autouse=True)
def _no_session_model(monkeypatch):
    monkeypatch.setattr(SESSION, "latest", None)


def dock(viewer):
    _, widget = viewer.window.add_plugin_dock_widget("napari-unetkit", "Predict with U-Net")
    return widget


def test_export_writes_a_package_that_the_panel_loads_back(
    make_napari_viewer, qtbot, model_file, tmp_path, monkeypatch
):
    asked = []

    def ask(parent, suggested):
        asked.append(suggested)
        return tmp_path / "exported.zip"

    messages = []
    monkeypatch.setattr(export_action, "ask_package_path", ask)
    monkeypatch.setattr(export_action, "show_info", messages.append)
    widget = dock(make_napari_viewer())
    widget.fields["model_file"].value = model_file
    qtbot.waitUntil(lambda: widget.model is not None, timeout=30_000)
    widget.export.button.native.click()
    assert asked == [tmp_path / "nuclei.bioimageio.zip"]
    qtbot.waitUntil(lambda: not widget.export.runner.running, timeout=120_000)
    out = tmp_path / "exported.zip"
    assert is_package(out)
    assert messages == [f"bioimage.io package written to {out}."]
    assert widget.export.button.enabled

    original, description = load_model(model_file)
    widget.fields["model_file"].value = out
    qtbot.waitUntil(lambda: widget.model is not None, timeout=30_000)
    assert widget.model.description == description
    for name, tensor in original.state_dict().items():
        assert torch.equal(widget.model.model.state_dict()[name], tensor)


def test_export_without_a_model_or_with_the_dialog_cancelled(
    make_napari_viewer, model_file, monkeypatch
):
    messages = []
    monkeypatch.setattr(export_action, "show_info", messages.append)
    monkeypatch.setattr(export_action, "ask_package_path", lambda parent, suggested: None)
    widget = dock(make_napari_viewer())
    widget.export.button.native.click()
    assert messages == [export_action.NO_MODEL_TEXT]
    widget.fields["model_file"].value = model_file
    widget.export.button.native.click()  # the dialog is cancelled: nothing starts
    assert not widget.export.runner.running
    assert not list(model_file.parent.glob("*.zip"))
