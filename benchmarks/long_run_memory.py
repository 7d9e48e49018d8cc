"""Memory over long runs: does a long training, or the prediction of a long stack, grow?

Usage::

    python benchmarks/long_run_memory.py [--quick] [--steps N] [--slices N] [--size PX]
                                         [--threads N] [--part train|predict|both]

``train`` runs the engine's :func:`~napari_unetkit.training.train` for ``--steps`` optimiser
steps (default 10,000) on small patches of synthetic nuclei with a small network, validating
every 100 steps and saving the best model, exactly as the widgets and the CLI do; it samples the
process's resident memory (RSS) at 20 points and prints the growth between the first quarter of
the run (once every buffer, cache and allocator pool has been filled) and its end.

``predict`` predicts a stack of ``--slices`` slices (default 500 of 128 x 128 px) slice by slice
and samples RSS every 50 slices. The labels output (int32, allocated up front but only touched
slice by slice) grows by ``4 * size**2`` bytes per slice by design; the growth beyond that is
what a leak would add.

``--quick`` (about a minute on two cores) runs 500 steps and 500 slices of 64 x 64 px.
Figures are plain text; RSS is read with psutil if installed, else from /proc/self/status.
"""

from __future__ import annotations

# First, as in the unetkit command: huge pages for torch, requested before torch is imported.
import napari_unetkit.cli  # noqa: F401  # isort: skip
import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from napari_unetkit.prediction import Predictor
from napari_unetkit.synthetic import sample_pairs, synthetic_nuclei
from napari_unetkit.training import TrainConfig, TrainProgress, train

MIB = 2**20
#: Number of memory samples taken during training.
TRAIN_SAMPLES = 20
#: Slices between two memory samples during prediction.
SLICES_PER_SAMPLE = 50


def _rss_reader():
    """Return a function giving the resident memory of this process in bytes."""
    try:
        import psutil
    except ImportError:
        psutil = None
    if psutil is not None:
        process = psutil.Process()
        return lambda: process.memory_info().rss

    def from_proc() -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("No VmRSS line in /proc/self/status: cannot measure memory here.")

    return from_proc


rss = _rss_reader()


def load() -> str:
    return "load average {:.1f} {:.1f} {:.1f}".format(*os.getloadavg())


def training_memory(steps: int, folder: Path) -> None:
    """Train for ``steps`` steps, sampling RSS; print the table and the growth."""
    steps_per_epoch = 100
    epochs = max(1, steps // steps_per_epoch)
    total = epochs * steps_per_epoch
    config = TrainConfig(
        depth=3,
        base_channels=8,
        patch_size=64,
        batch_size=4,
        epochs=epochs,
        steps_per_epoch=steps_per_epoch,
        device="cpu",
        threads=torch.get_num_threads(),
    )
    pairs = sample_pairs(2, (192, 192), seed=1)
    validation = [synthetic_nuclei((128, 128), seed=9)]
    every = max(1, total // TRAIN_SAMPLES)
    samples: list[tuple[int, float, float]] = []
    start = time.perf_counter()
    done = 0

    def progress(event: TrainProgress) -> None:
        nonlocal done
        if event.stage != "training" or event.message:
            return
        done += 1
        if done % every == 0 or done == 1:
            samples.append((done, time.perf_counter() - start, rss() / MIB))

    print(
        f"\nTraining: {total} steps of {config.batch_size} patches of {config.patch_size} px, "
        f"depth {config.depth}, {config.base_channels} base channels, validation and saving "
        f"every {steps_per_epoch} steps; {torch.get_num_threads()} thread(s), {load()}"
    )
    before = rss() / MIB
    result = train(
        pairs, config, out=folder / "long.unet", validation=validation, progress=progress
    )
    after = rss() / MIB
    print(f"{'step':>7} {'seconds':>8} {'RSS MiB':>9}")
    for step, seconds, mib in samples:
        print(f"{step:>7} {seconds:>8.1f} {mib:>9.1f}")
    quarter = next(s for s in samples if s[0] >= total // 4)
    last = samples[-1]
    growth = last[2] - quarter[2]
    per_1000 = 1000 * growth / max(last[0] - quarter[0], 1)
    print(
        f"RSS before training {before:.1f} MiB, after {after:.1f} MiB; "
        f"{result.epochs_run} epochs, {result.steps_run} steps in {result.elapsed:.0f} s "
        f"({1000 * result.elapsed / max(result.steps_run, 1):.0f} ms/step)."
    )
    print(
        f"Growth from step {quarter[0]} to step {last[0]}: {growth:+.1f} MiB "
        f"({per_1000:+.2f} MiB per 1000 steps); peak sample {max(s[2] for s in samples):.1f} MiB."
    )


def prediction_memory(n_slices: int, size: int) -> None:
    """Predict a stack of ``n_slices`` slices, sampling RSS every 50 slices."""
    from napari_unetkit.model import UNet, UNetConfig

    torch.manual_seed(0)
    model = UNet(UNetConfig(depth=3, base_channels=8))
    predictor = Predictor(model, {"mode": "instances"}, device="cpu")
    distinct = np.stack([synthetic_nuclei((size, size), seed=s)[0] for s in range(10)])
    stack = np.ascontiguousarray(np.resize(distinct, (n_slices, size, size)))
    samples: list[tuple[int, float, float]] = []
    start = time.perf_counter()
    recorded = set()

    def progress(done: float, total: int) -> None:
        whole = int(done)
        if whole == done and whole % SLICES_PER_SAMPLE == 0 and whole not in recorded:
            recorded.add(whole)
            samples.append((whole, time.perf_counter() - start, rss() / MIB))

    print(
        f"\nPrediction: a stack of {n_slices} slices of {size} x {size} px "
        f"({stack.nbytes / MIB:.1f} MiB of {stack.dtype}); {torch.get_num_threads()} "
        f"thread(s), {load()}"
    )
    result = predictor.predict(stack, progress=progress)
    print(f"{'slices':>7} {'seconds':>8} {'RSS MiB':>9}")
    for count, seconds, mib in samples:
        print(f"{count:>7} {seconds:>8.1f} {mib:>9.1f}")
    first, last = samples[1] if len(samples) > 1 else samples[0], samples[-1]
    slices = max(last[0] - first[0], 1)
    per_slice = (last[2] - first[2]) * 1024 / slices
    output = result.labels.itemsize * size * size / 1024
    print(
        f"Growth from slice {first[0]} to {last[0]}: {last[2] - first[2]:+.1f} MiB, "
        f"{per_slice:+.1f} KiB per slice, of which {output:.1f} KiB per slice is the labels "
        f"output being filled in: {per_slice - output:+.1f} KiB per slice beyond the output."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="500 steps, 64 px slices.")
    parser.add_argument("--steps", type=int, help="Training steps (default 10,000).")
    parser.add_argument("--slices", type=int, default=500, help="Stack slices (default 500).")
    parser.add_argument("--size", type=int, help="Slice side in pixels (default 128).")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (default 1).")
    parser.add_argument("--part", choices=("train", "predict", "both"), default="both")
    args = parser.parse_args()
    steps = args.steps or (500 if args.quick else 10_000)
    size = args.size or (64 if args.quick else 128)
    torch.set_num_threads(args.threads)
    print(f"RSS at start: {rss() / MIB:.1f} MiB")
    if args.part in ("train", "both"):
        with tempfile.TemporaryDirectory() as folder:
            training_memory(steps, Path(folder))
    if args.part in ("predict", "both"):
        prediction_memory(args.slices, size)


if __name__ == "__main__":
    main()
