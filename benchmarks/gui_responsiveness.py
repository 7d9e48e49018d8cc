"""How long napari's GUI thread pauses while the Train panel trains on the same CPU.

Usage (needs an X server; without ``DISPLAY`` the script restarts itself under ``xvfb-run``)::

    python benchmarks/gui_responsiveness.py [--epochs 4] [--steps 10] [--json PATH]

A real viewer with the 2D nuclei sample and the "Train U-Net" panel docked; a 10 ms Qt timer
records when the GUI thread serves it. Two phases in one run: idle (the viewer alone, as the
reference) and training (the panel trains a small network with the live preview after every
epoch, so the GUI thread also draws the plot and the preview layer). Printed: ticks, median,
99th percentile and largest gap between ticks for each phase. A gap well above 0.2 s is a
pause a user notices when panning.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

TICK_MS = 10


def restart_under_xvfb() -> None:
    """Run this script again under ``xvfb-run`` when there is no display."""
    if os.environ.get("DISPLAY") or os.environ.get("UNETKIT_BENCH_XVFB"):
        return
    if shutil.which("xvfb-run") is None:
        sys.exit("No display and no xvfb-run: run `make system-deps` or set DISPLAY.")
    env = dict(os.environ, UNETKIT_BENCH_XVFB="1")
    command = ["xvfb-run", "-a", "-s", "-screen 0 1280x1024x24", sys.executable, *sys.argv]
    sys.exit(subprocess.call(command, env=env))


def gaps_summary(ticks: list[float]) -> dict[str, float]:
    gaps = np.diff(np.asarray(ticks)) * 1000.0
    return {
        "ticks": len(ticks),
        "median_ms": float(np.median(gaps)),
        "p99_ms": float(np.percentile(gaps, 99)),
        "max_ms": float(gaps.max()),
    }


def measure(epochs: int, steps: int) -> dict[str, dict[str, float]]:
    import napari
    from qtpy.QtCore import QEventLoop, QTimer
    from qtpy.QtWidgets import QApplication

    from napari_unetkit.synthetic import synthetic_nuclei

    viewer = napari.Viewer(show=False)
    image, labels = synthetic_nuclei((256, 256), seed=0)
    viewer.add_image(image, name="nuclei")
    viewer.add_labels(labels, name="nuclei labels")
    _, widget = viewer.window.add_plugin_dock_widget("napari-unetkit", "Train U-Net")
    app = QApplication.instance()

    ticks: list[float] = []
    timer = QTimer()
    timer.setInterval(TICK_MS)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))

    def run_loop_until(done, limit_s: float) -> None:
        end = time.perf_counter() + limit_s
        while not done() and time.perf_counter() < end:
            app.processEvents(QEventLoop.AllEvents, 50)

    timer.start()
    start = time.perf_counter()
    run_loop_until(lambda: time.perf_counter() - start > 3.0, 5.0)
    idle = gaps_summary(ticks)

    with tempfile.TemporaryDirectory() as folder:
        settings = widget.settings_form
        settings.show_advanced.value = True
        settings.size.value = "small"
        settings.patch_size.value = 128
        settings.train_for.value = "epochs"
        settings.epochs.value = epochs
        settings.steps_per_epoch.value = steps
        settings.path.value = Path(folder) / "responsiveness.unet"
        widget.fields["preview"].value = True
        widget.fields["preview_every"].value = 1
        ticks.clear()
        widget.press_start()
        worker = widget.runner.worker
        finished = []
        worker.finished.connect(lambda: finished.append(True))
        run_loop_until(lambda: bool(finished), 600.0)
        if not finished:
            raise SystemExit("Training did not finish within 10 minutes.")
        training = gaps_summary(ticks)
    timer.stop()
    viewer.close()
    return {"idle": idle, "training": training}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    restart_under_xvfb()
    results = measure(args.epochs, args.steps)
    print(
        f"Train panel, small network, {args.epochs} epochs x {args.steps} steps, "
        "live preview after every epoch; Qt timer every 10 ms"
    )
    print("| phase | ticks | median gap ms | p99 gap ms | largest gap ms |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for phase, row in results.items():
        print(
            f"| {phase} | {row['ticks']} | {row['median_ms']:.0f} | {row['p99_ms']:.0f} "
            f"| {row['max_ms']:.0f} |"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
