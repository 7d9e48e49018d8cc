"""Take the napari screenshots of the README and the user guide (docs/images/napari-*.png).

Run from the repository root under an X server (``make docs-images`` does this)::

    xvfb-run -a -s "-screen 0 1600x1000x24" python scripts/screenshots.py [--out docs/images]

Nothing is staged: the script opens a real napari window and uses the plugin the way a user
does. It opens the 2D nuclei sample (File > Open Sample), docks the widgets from the plugin,
sets their fields, presses their buttons and waits for the real work to finish:

- ``napari-plugins-menu.png``, ``napari-open-sample.png``: the plugin's entries in napari's
  Plugins menu and in File > Open Sample.
- ``napari-train.png``: "Train U-Net" trains a small model for a few epochs with the live
  preview on; the picture is taken during the last epoch, while the plot and preview are live.
- ``napari-predict.png``: "Predict with U-Net" predicts the sample with the model just trained.
- ``napari-weightmap.png``: "Boundary weight map" of the sample's labels.
- ``napari-sparse.png``: sparse annotation: cells painted inside a rectangle only, and the
  rectangle (a Shapes layer) chosen as the annotated region of the training pair.
- ``napari-stack.png``: the 3D sample predicted slice by slice with the same model, with
  instances linked across slices.
- ``napari-retrain-add.png``, ``napari-retrain-round.png``, ``napari-retrain-next.png``: the
  "Correct and retrain" loop on a stack of unseen images (:func:`correct_and_retrain`): about
  15 cells painted inside a checked rectangle of the first image, a first model trained from
  scratch, then three rounds of Next, correct (the truth pasted into the prediction inside the
  rectangle, as a user paints), Add, Retrain. The script prints how many objects each round
  corrected and every version's F1 on held-out images (the table in
  docs/correct-and-retrain.md).

``--only NAME ...`` takes only some groups of pictures (``menus``, ``train`` (also needed by
``predict``), ``predict``, ``weightmap``, ``sparse``, ``stack``, ``retrain``).

The plugin's settings, the model file and napari's own preferences go to a temporary home
folder, so yours are neither used nor changed. Training is seeded and limited by epochs, not
by time, so every run shows the same epochs; the timings differ between machines (and, with
another number of CPU threads, the last digits of the scores may too).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

#: Window size of every screenshot (pixels).
WINDOW = (1400, 950)
#: Width of the docked widget (pixels); at least the widget's own minimum width.
DOCK_WIDTH = 440
#: Model size and epochs of the training run (about three minutes on two busy CPU cores).
MODEL_SIZE, EPOCHS = "small", 8
#: PNGs larger than this are reduced to 256 colours.
MAX_BYTES = 400_000
#: The loop's images: LOOP_IMAGES corrected one per round, LOOP_HELD_OUT more to score versions.
LOOP_IMAGES, LOOP_HELD_OUT = 5, 3
#: The checked rectangle of the loop (top, left, bottom, right), on every image.
CHECKED = (16, 16, 144, 144)
#: Epochs of every round of the loop (seeded, so that every run shows the same rounds).
LOOP_EPOCHS = 6
#: Longest wait for one training or prediction, in seconds.
TIMEOUT = 900
PLUGIN = "napari-unetkit"


def isolate_settings() -> Path:
    """Point HOME and the plugin's settings at a new temporary folder; return it.

    Must run before napari is imported (napari reads its settings folder on import).
    """
    home = Path(tempfile.mkdtemp(prefix="home-"))
    os.environ["HOME"] = str(home)
    os.environ["XDG_CONFIG_HOME"] = str(home / ".config")
    os.environ["NAPARI_UNETKIT_CONFIG_DIR"] = str(home / "unetkit-config")
    return home


# ------------------------------------------------------------------------------ helpers


def wait(ms: int) -> None:
    """Let Qt process events for ``ms`` milliseconds (the GUI keeps running meanwhile)."""
    from qtpy.QtTest import QTest

    QTest.qWait(ms)


def wait_until(condition, timeout: float, what: str) -> None:
    """Process Qt events until ``condition()`` is true; fail after ``timeout`` seconds."""
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise TimeoutError(f"Gave up waiting for {what} after {timeout:.0f} s.")
        wait(100)


def run_prediction(viewer, widget, result: str) -> None:
    """Press the Predict panel's Run button and wait for the ``result`` layer."""
    wait(200)
    assert widget.can_start, widget.message
    widget.press_start()
    wait_until(lambda: not widget.running, TIMEOUT, result)
    print(widget.message)
    assert result in viewer.layers, widget.message


def close_notifications(viewer) -> None:
    """Close napari's pop-up notifications, which would cover part of the canvas."""
    try:
        from napari._qt.dialogs.qt_notification import NapariQtNotification
    except ImportError:  # another napari version: leave them
        return
    for toast in viewer.window._qt_window.findChildren(NapariQtNotification):
        toast.close()
    wait(300)


def write_png(image, path: Path) -> None:
    """Save a PIL image as an optimised PNG, reduced to 256 colours if it is large."""
    from PIL import Image

    image = image.convert("RGB")
    image.save(path, optimize=True)
    if path.stat().st_size > MAX_BYTES:
        image.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
    print(f"Wrote {path} ({image.width} x {image.height}, {path.stat().st_size // 1024} KB)")


def save(viewer, path: Path) -> None:
    """Screenshot the whole window (menus and docks included) to ``path``."""
    from PIL import Image

    wait(500)  # let new docks, layers and the plot finish their layout and paint
    close_notifications(viewer)
    write_png(Image.fromarray(viewer.screenshot(canvas_only=False, flash=False)), path)


def save_menu(viewer, path: Path, titles: tuple[str, ...], size: tuple[int, int]) -> None:
    """Open the menu ``titles`` (menu bar entry, submenus, item) and save the top-left corner.

    Menus are windows of their own, so the screen is grabbed rather than napari's window.
    """
    from PIL import Image
    from qtpy.QtWidgets import QApplication

    close_notifications(viewer)
    window = viewer.window._qt_window
    menu = window.menuBar()
    opened = []
    for title in titles:
        action = next(a for a in menu.actions() if a.text().replace("&", "") == title)
        menu.setActiveAction(action)  # opens a submenu after a short delay
        wait(700)
        if action.menu() is not None:
            menu = action.menu()
            opened.append(menu)
    corner = window.mapToGlobal(window.rect().topLeft())
    pixmap = QApplication.primaryScreen().grabWindow(0, corner.x(), corner.y(), *size)
    with tempfile.TemporaryDirectory() as folder:
        raw = Path(folder) / "menu.png"
        pixmap.save(str(raw))
        write_png(Image.open(raw), path)
    for submenu in reversed(opened):
        submenu.hide()
    window.menuBar().setActiveAction(None)
    wait(300)


def show_only(viewer, *names: str) -> None:
    """Make the named layers visible and hide every other layer."""
    for layer in viewer.layers:
        layer.visible = layer.name in names


def dock(viewer, widget_name: str):
    """Dock one of the plugin's widgets (as Plugins > U-Net Kit does); return the widget."""
    from qtpy.QtCore import Qt

    dock_widget, widget = viewer.window.add_plugin_dock_widget(PLUGIN, widget_name)
    width = max(DOCK_WIDTH, dock_widget.minimumSizeHint().width())
    viewer.window._qt_window.resizeDocks([dock_widget], [width], Qt.Orientation.Horizontal)
    wait(300)
    viewer.reset_view()  # the canvas got narrower: fit the image again
    return widget


def undock(viewer, widget) -> None:
    """Close a docked widget (as its panel's close button does)."""
    viewer.window.remove_dock_widget(widget.native)
    wait(200)


def scroll(widget, where: str) -> None:
    """Scroll a panel (Train, Correct and retrain) to its ``"top"`` or its ``"bottom"``."""
    bar = widget.scroll_area.verticalScrollBar()
    bar.setValue(bar.minimum() if where == "top" else bar.maximum())


# ------------------------------------------------------------------------------ the pictures


def menus(viewer, out: Path) -> None:
    """The plugin's entries in the Plugins menu and in File > Open Sample."""
    save_menu(viewer, out / "napari-plugins-menu.png", ("Plugins", "U-Net Kit"), (760, 300))
    save_menu(
        viewer,
        out / "napari-open-sample.png",
        ("File", "Open Sample", "U-Net Kit", "Touching nuclei (2D, with labels)"),
        (1000, 420),
    )


def train(viewer, out: Path) -> None:
    """Train on the 2D sample through the Train widget; screenshot while it trains."""
    widget = dock(viewer, "Train U-Net")
    settings = widget.settings_form
    row = widget.pairs.rows[0]
    assert row.image.value is viewer.layers["nuclei"], row.image.value
    assert row.labels_choice.value is viewer.layers["nuclei labels"], row.labels_choice.value
    settings.size.value = MODEL_SIZE
    settings.train_for.value = "epochs"
    settings.epochs.value = EPOCHS
    widget.set_inputs(preview=True, preview_every=1)
    wait(200)
    assert widget.can_start, widget.message
    widget.press_start()
    wait_until(lambda: "nuclei preview" in viewer.layers, 30, "the preview layer")
    show_only(viewer, "nuclei", "nuclei preview")
    viewer.layers.selection.active = viewer.layers["nuclei"]

    def last_epoch() -> bool:  # every other epoch is on the plot, and previewed
        previewed = "nuclei preview" in viewer.layers and viewer.layers["nuclei preview"].data.any()
        done = len(widget.plot.epochs) >= EPOCHS - 1 and previewed
        return done or not widget.runner.running

    wait_until(last_epoch, TIMEOUT, "the last epoch")
    if not widget.runner.running:
        print("Warning: training ended before the screenshot; it shows the finished run.")
    scroll(widget, "bottom")
    save(viewer, out / "napari-train.png")
    wait_until(lambda: not widget.runner.running, TIMEOUT, "the end of training")
    wait(500)
    print(widget.summary.replace("\n", " "))
    assert "Saved to" in widget.summary, widget.status
    if widget.can_use_anyway:
        print("Warning: the model's validation score is 0; it is handed over anyway.")
        widget.use_model_anyway()
    undock(viewer, widget)


def predict(viewer, out: Path) -> None:
    """Predict the 2D sample with the model just trained, through the Predict widget."""
    widget = dock(viewer, "Predict with U-Net")
    assert widget.fields["source"].value == "session", widget.fields["source"].value
    widget.set_inputs(image=viewer.layers["nuclei"])
    run_prediction(viewer, widget, "nuclei prediction")
    show_only(viewer, "nuclei", "nuclei prediction")
    viewer.layers.selection.active = viewer.layers["nuclei prediction"]
    save(viewer, out / "napari-predict.png")
    undock(viewer, widget)


def weight_map(viewer, out: Path) -> None:
    """Compute the boundary weight map of the sample's labels, through its widget."""
    widget = dock(viewer, "Boundary weight map")
    widget.set_inputs(labels=viewer.layers["nuclei labels"])
    wait(200)
    widget.press_start()
    wait_until(lambda: "nuclei labels weights" in viewer.layers, TIMEOUT, "the weight map")
    wait_until(lambda: not widget.running, TIMEOUT, "the weight map job")
    show_only(viewer, "nuclei labels weights")
    viewer.layers.selection.active = viewer.layers["nuclei labels weights"]
    save(viewer, out / "napari-weightmap.png")
    undock(viewer, widget)


def sparse(viewer, out: Path) -> None:
    """Set up sparse training: cells painted inside a rectangle only, the rectangle as region."""
    import numpy as np

    top, left, bottom, right = 24, 120, 140, 250
    full = viewer.layers["nuclei labels"].data
    painted = np.zeros_like(full)  # what a user who painted inside the rectangle only has
    painted[top:bottom, left:right] = full[top:bottom, left:right]
    for name in [layer.name for layer in viewer.layers if layer.name != "nuclei"]:
        viewer.layers.remove(name)  # start again from the image alone
    viewer.add_labels(painted, name="nuclei labels", opacity=0.6)
    viewer.add_shapes(
        [np.array([[top, left], [bottom, right]])],
        shape_type="rectangle",
        name="annotated region",
        face_color="transparent",
        edge_color="yellow",
        edge_width=2,
    )
    widget = dock(viewer, "Train U-Net")
    row = widget.pairs.rows[0]
    row.image.value = viewer.layers["nuclei"]
    row.labels_choice.value = viewer.layers["nuclei labels"]
    row.region.value = viewer.layers["annotated region"]
    wait(200)
    assert widget.can_start, widget.message
    show_only(viewer, "nuclei", "nuclei labels", "annotated region")
    viewer.layers.selection.active = viewer.layers["annotated region"]
    scroll(widget, "top")
    save(viewer, out / "napari-sparse.png")
    undock(viewer, widget)


def stack(viewer, out: Path) -> None:
    """Predict the 3D sample slice by slice and link the instances across slices."""
    viewer.layers.clear()
    viewer.open_sample(PLUGIN, "nuclei_3d")
    widget = dock(viewer, "Predict with U-Net")
    widget.set_inputs(image=viewer.layers["nuclei stack"], link_3d=True)
    run_prediction(viewer, widget, "nuclei stack prediction")
    show_only(viewer, "nuclei stack", "nuclei stack prediction")
    viewer.layers.selection.active = viewer.layers["nuclei stack prediction"]
    viewer.dims.set_current_step(0, 8)
    save(viewer, out / "napari-stack.png")
    undock(viewer, widget)


def loop_data():
    """Return a stack of independent synthetic images and their true labels (the loop's data)."""
    import numpy as np

    from napari_unetkit.synthetic import synthetic_nuclei

    pairs = [synthetic_nuclei(shape=(256, 256), seed=200 + i) for i in range(8)]
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


def held_out_f1(path: Path, images, truths) -> float:
    """Mean instance F1 (IoU 0.5) of the model file ``path`` on held-out images."""
    from napari_unetkit.metrics import match_instances
    from napari_unetkit.modelfile import load_model
    from napari_unetkit.prediction import Predictor

    model, description = load_model(path)
    labels = Predictor(model, description).predict(images).labels
    return sum(match_instances(t, p).f1 for t, p in zip(truths, labels, strict=True)) / len(truths)


def wrong_objects(truth, predicted) -> int:
    """How many true objects the prediction misses at IoU 0.5 (what a user has to fix)."""
    from napari_unetkit.metrics import match_instances

    found = match_instances(truth, predicted)
    return int(found.n_true - found.tp) + int(found.n_pred - found.tp)


def wait_for_panel(widget) -> None:
    """Wait until the Correct-and-retrain panel's training and prediction have ended."""
    wait_until(lambda: not widget.trainer.running, TIMEOUT, "the end of retraining")
    wait(300)
    wait_until(lambda: not widget.predictor.running, TIMEOUT, "the prediction")
    wait(300)


def correct_and_retrain(viewer, out: Path, home: Path) -> None:
    """The loop on unseen images: paint, train, then three rounds of next, correct, retrain."""
    import numpy as np

    from napari_unetkit.training import TrainConfig

    viewer.layers.clear()
    images, truths = loop_data()
    stack = viewer.add_image(images[:LOOP_IMAGES], name="my images")
    top, left, bottom, right = CHECKED
    painted = np.zeros_like(truths[:LOOP_IMAGES])  # the cells painted inside the rectangle
    painted[0, top:bottom, left:right] = truths[0, top:bottom, left:right]
    labels = viewer.add_labels(painted, name="painted cells")
    area = viewer.add_shapes(
        [np.array([[top, left], [bottom, right]])],
        shape_type="rectangle",
        name="checked area",
        face_color="transparent",
        edge_color="yellow",
        edge_width=2,
    )
    viewer.dims.set_point(0, 0)
    print(f"Painted {len(np.unique(painted[0])) - 1} cells inside the checked area of image 0.")
    widget = dock(viewer, "Correct and retrain")
    # The "small" network; one thread: on a machine shared with other work, two threads wait
    # for each other far longer than one computes.
    widget.base_config = TrainConfig(base_channels=8, seed=0, threads=1)
    widget.set_budget(LOOP_EPOCHS, "epochs")
    widget.open_project(home / "my-project")  # typed (or chosen in the folder dialog)
    assert widget.create_project(), widget.message
    widget.choose(image=stack, labels=labels, region=area)
    assert widget.add_to_training_set() is not None, widget.message
    viewer.layers.selection.active = labels
    save(viewer, out / "napari-retrain-add.png")
    held_images, held_truths = images[LOOP_IMAGES:], truths[LOOP_IMAGES:]
    scores = []
    for round_number in range(4):
        assert widget.retrain() is not None, widget.message
        wait_for_panel(widget)
        print(widget.summary.replace("\n", " "))
        version = widget.versions[-1]
        scores.append(
            (version.name, len(widget.entries), held_out_f1(version.path, held_images, held_truths))
        )
        print(f"{version.name}: trained on {scores[-1][1]} images, held-out F1 {scores[-1][2]:.3f}")
        if round_number == 2:
            show_only(viewer, "my images", widget.labels.name, "checked area")
            scroll(widget, "bottom")
            save(viewer, out / "napari-retrain-round.png")
        if round_number == 3:
            break
        assert widget.next() is not None, widget.message
        wait_for_panel(widget)
        index = viewer.dims.current_step[0]
        layer = widget.labels
        rows, cols = slice(top, bottom), slice(left, right)
        fixed = wrong_objects(truths[index, rows, cols], layer.data[index, rows, cols])
        objects = f"{fixed} object{'s' if fixed != 1 else ''}"
        print(f"{layer.name}: image {index}, {objects} to correct in the checked area.")
        if round_number == 0:
            show_only(viewer, "my images", layer.name, "checked area")
            scroll(widget, "top")
            save(viewer, out / "napari-retrain-next.png")
        layer.data[index, rows, cols] = truths[index, rows, cols]  # what painting does
        layer.refresh()
        assert widget.add_to_training_set() is not None, widget.message
    print("version | images in the training set | held-out F1")
    for name, count, f1 in scores:
        print(f"{name} | {count} | {f1:.3f}")
    undock(viewer, widget)


GROUPS = ("menus", "train", "predict", "weightmap", "sparse", "stack", "retrain")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/images"))
    parser.add_argument("--only", nargs="+", choices=GROUPS, default=GROUPS)
    args = parser.parse_args()
    only = set(args.only)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    home = isolate_settings()
    try:
        import napari

        viewer = napari.Viewer(show=True)
        viewer.window.resize(*WINDOW)
        wait(300)
        if "menus" in only:
            menus(viewer, out)
        viewer.open_sample(PLUGIN, "nuclei_2d")  # File > Open Sample > U-Net Kit
        viewer.reset_view()
        if {"train", "predict"} & only:
            train(viewer, out)
        if "predict" in only:
            predict(viewer, out)
        if "weightmap" in only:
            weight_map(viewer, out)
        if "sparse" in only:
            sparse(viewer, out)
        if "stack" in only:
            stack(viewer, out)
        if "retrain" in only:
            correct_and_retrain(viewer, out, home)
        viewer.close()
    finally:
        shutil.rmtree(home, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
