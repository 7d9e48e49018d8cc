"""Big data: peak memory independent of the image size, 1 vs 2 workers, kill at 50 % and resume.

Usage::

    python benchmarks/big_data.py [--size 16384] [--slices 2] [--block 2048] [--model FILE]
                                  [--network {default,small}] [--train-seconds S]
                                  [--workdir DIR] [--json PATH]
    python benchmarks/big_data.py --quick     # 2 x 2048 x 2048, blocks of 1024 px

Everything runs through the product's command, ``unetkit predict --image in.zarr --out
out.zarr``, in a child process whose resident memory (with its children, the workers of a
local cluster) is sampled every 50 ms. Steps:

1. a model: ``--model``, or a network trained for ``--train-seconds`` on synthetic nuclei (in
   this process, saved to a temporary file): ``--network default`` (the product's default,
   depth 4 and 16 base channels) or ``--network small`` (depth 2, 4 base channels, about 30x
   fewer operations per pixel). The figures that matter here (memory against input size,
   workers against one process, resume) are about the pipeline around the network, and with
   the default network the full size takes hours on 2 cores; the small one finishes it in well
   under an hour. The network is printed and stored in the JSON report;
2. a uint16 zarr input of ``slices x size x size`` (chunks of 1024 px) filled tile by tile with
   synthetic nuclei, and a second one 4x larger (``slices x 2 size x 2 size``);
3. **memory**: the peak RSS predicting each input into instance labels (int32, zarr); slices
   with more than ``block**2`` pixels are cut into blocks of ``--block`` px
   (``--block-size``, default 2048 as in the product), so the
   larger input has 4x the blocks of the same size; the growth of the peak is the figure
   that matters;
4. **workers**: throughput (megapixels per second) of the first input in one process (2 torch
   threads) and with ``--workers 2`` (one thread each), and the cost per part (slice or block);
5. **resume**: the first input again, killed (SIGKILL, workers included) once half of its parts
   are marked done, then rerun: the rerun's time against a full run's, and whether the labels
   are identical to the uninterrupted run's (compared chunk by chunk).
"""

from __future__ import annotations

# First, as in the unetkit command: huge pages for torch, requested before torch is imported.
import napari_unetkit.cli  # noqa: F401  # isort: skip
import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from napari_unetkit import bigio

MIB = 2**20
SAMPLE_INTERVAL = 0.05


#: The networks ``--network`` chooses: TrainConfig settings (none: the product's defaults).
NETWORKS = {"default": {}, "small": {"depth": 2, "base_channels": 4}}


def make_model(path: Path, seconds: float, network: str) -> Path:
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from inference import trained_model

    from napari_unetkit.modelfile import save_model

    model, description, _ = trained_model(seconds, torch.device("cpu"), **NETWORKS[network])
    return save_model(path, model, description)


def describe_network(model: Path) -> str:
    """Say which network a model file holds (depth, base channels, operations per pixel)."""
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from inference import macs_per_pixel

    from napari_unetkit.modelfile import load_model

    network, _ = load_model(model)
    config = network.config
    macs = macs_per_pixel(network, torch.device("cpu"))
    return f"depth {config.depth}, {config.base_channels} base channels, {macs:,.0f} MAC/px"


def make_input(path: Path, slices: int, size: int) -> Path:
    """A uint16 zarr of synthetic nuclei, written one 1024 px chunk at a time."""
    import zarr

    from napari_unetkit.synthetic import synthetic_nuclei

    tiles = [synthetic_nuclei((1024, 1024), seed=s)[0].astype(np.uint16) for s in range(4)]
    array = zarr.create_array(
        str(path), shape=(slices, size, size), chunks=(1, 1024, 1024), dtype=np.uint16
    )
    number = 0
    for z in range(slices):
        for y in range(0, size, 1024):
            for x in range(0, size, 1024):
                array[z, y : y + 1024, x : x + 1024] = tiles[number % 4][: size - y, : size - x]
                number += 1
    return path


class PeakRSS:
    """Sample the RSS of a process and its children until stopped; keep the peak."""

    def __init__(self, pid: int) -> None:
        import psutil

        self.process = psutil.Process(pid)
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            try:
                members = [self.process, *self.process.children(recursive=True)]
                total = 0
                for member in members:
                    with contextlib.suppress(psutil.Error):
                        total += member.memory_info().rss
                self.peak = max(self.peak, total)
            except psutil.Error:
                return
            time.sleep(SAMPLE_INTERVAL)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def command(model: Path, image: Path, out: Path, workers: int | None, block: int) -> list[str]:
    args = [sys.executable, "-m", "napari_unetkit.cli", "predict", "--model", str(model),
            "--image", str(image), "--out", str(out), "--device", "cpu", "--block-size",
            str(block)]  # fmt: skip
    return args + (["--workers", str(workers)] if workers else [])


def run(model, image, out, *, block: int, workers=None, kill_at=None) -> dict:
    """Run the command; return wall time, peak RSS and whether it was killed."""
    start = time.perf_counter()
    process = subprocess.Popen(
        command(model, image, out, workers, block),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    sampler = PeakRSS(process.pid)
    killed = False
    if kill_at is not None:
        done_folder = out / "unetkit-done"
        while process.poll() is None:
            if done_folder.is_dir() and len(list(done_folder.iterdir())) >= kill_at:
                os.killpg(process.pid, signal.SIGKILL)
                killed = True
                break
            time.sleep(0.1)
    _, stderr = process.communicate()
    peak = sampler.stop()
    if process.returncode != 0 and not killed:
        raise RuntimeError(f"unetkit failed: {stderr.strip()[-2000:]}")
    return {"seconds": time.perf_counter() - start, "peak_mib": peak / MIB, "killed": killed}


def parts(out: Path) -> int:
    return len(json.loads((out / ".zattrs").read_text())["unetkit"]["run"]["units"])


def identical(a: Path, b: Path) -> bool:
    import zarr

    first, second = zarr.open_array(str(a / "0"), mode="r"), zarr.open_array(str(b / "0"), mode="r")
    if first.shape != second.shape:
        return False
    for z in range(first.shape[0]):
        for y in range(0, first.shape[1], 4096):
            if not np.array_equal(first[z, y : y + 4096], second[z, y : y + 4096]):
                return False
    return True


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=16384)
    parser.add_argument("--slices", type=int, default=2)
    parser.add_argument("--block", type=int, default=bigio.DEFAULT_BLOCK)
    parser.add_argument("--quick", action="store_true", help="2 x 2048 x 2048, 1024 px blocks")
    parser.add_argument("--model", type=Path)
    parser.add_argument(
        "--network",
        choices=sorted(NETWORKS),
        default="default",
        help="network trained when no --model is given (small: depth 2, 4 base channels)",
    )
    parser.add_argument("--train-seconds", type=float, default=60.0)
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if args.quick:
        args.size, args.block = 2048, 1024
    work = Path(args.workdir or tempfile.mkdtemp(prefix="unetkit-bigdata-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        report = measure(args, work)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


def measure(args, work: Path) -> dict:
    model = args.model or make_model(work / "model.unet", args.train_seconds, args.network)
    network = (
        f"{args.network if args.model is None else args.model.name} ({describe_network(model)})"
    )
    size, slices = args.size, args.slices
    small = make_input(work / "small.zarr", slices, size)
    large = make_input(work / "large.zarr", slices, 2 * size)
    print(f"inputs: {slices} x {size} x {size} and {slices} x {2 * size} x {2 * size} uint16 "
          f"(blocks of {args.block} px); {os.cpu_count()} logical cores")  # fmt: skip
    print(f"network: {network}")
    report: dict = {"size": size, "slices": slices, "block": args.block, "network": network}

    one = run(model, small, work / "one.zarr", block=args.block)
    four = run(model, large, work / "four.zarr", block=args.block)
    growth = four["peak_mib"] / one["peak_mib"] - 1
    print(f"memory: peak RSS {one['peak_mib']:.0f} MiB for the input, {four['peak_mib']:.0f} MiB "
          f"for 4x the input ({100 * growth:+.1f} %)")  # fmt: skip
    report["memory"] = {"one": one, "four": four, "growth": growth}

    pixels = slices * size * size / 1e6
    count = parts(work / "one.zarr")
    two = run(model, small, work / "two.zarr", workers=2, block=args.block)
    rows = [("1 process", one), ("2 workers", two)]
    print("workers      seconds   Mpx/s   s/part")
    for name, result in rows:
        print(f"{name:<10} {result['seconds']:9.1f} {pixels / result['seconds']:7.2f} "
              f"{result['seconds'] / count:8.2f}")  # fmt: skip
    ratio = one["seconds"] / two["seconds"]
    print(f"2 workers / 1 process throughput: {ratio:.2f}x ({count} parts)")
    report["workers"] = {"one": one, "two": two, "parts": count, "ratio": ratio}

    resumed = work / "resumed.zarr"
    first = run(model, small, resumed, block=args.block, kill_at=-(-count // 2))
    second = run(model, small, resumed, block=args.block)
    same = identical(resumed, work / "one.zarr")
    share = second["seconds"] / one["seconds"]
    print(f"resume: killed after {first['seconds']:.1f} s; the rerun took "
          f"{second['seconds']:.1f} s ({share:.2f} of a full run); identical: {same}")  # fmt: skip
    report["resume"] = {"killed": first, "rerun": second, "identical": same}
    return report


if __name__ == "__main__":
    main()
