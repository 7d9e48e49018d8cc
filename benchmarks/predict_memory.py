"""Peak memory of predicting a large stack: 64 x 2048 x 2048 uint16 (512 MiB) with the default net.

Usage::

    python benchmarks/predict_memory.py [--quick] [--all-slices] [--json PATH] [--model FILE]
                                        [--threads N] [--train-seconds S]

The requirement: peak resident memory (RSS) below input + output + 1 GiB. The script, in its
own process:

1. loads ``--model``, or trains the default network briefly **in a child process** that saves
   it to a temporary model file, and loads that: the process then holds what a user's
   prediction holds (Python, torch, the package, one model) and nothing a training left
   behind; its RSS is the *baseline*;
2. allocates the uint16 input stack and fills it slice by slice with synthetic nuclei (no
   float copy of the stack ever exists);
3. runs ``Predictor.predict`` (instances, the default output: an int32 label stack, 1 GiB for
   the full size) while a thread samples the RSS every 20 ms; the peak is the larger of that
   and ``getrusage(RUSAGE_SELF).ru_maxrss``.

The label stack is allocated zeroed and only takes memory as slices are written, so predicting
every slice is the honest test; at about 6 s per 2048 x 2048 slice on two cores it takes more
than six minutes, so by default only every fourth slice is predicted (``--all-slices``
predicts all 64) and the script reports the measured peak, the part of the output still
untouched at the end, and their sum, the *projected* peak of a full run: a safe upper bound,
because the working set of one slice does not depend on how many slices were written before
(prediction streams slice by slice). ``--quick``: an 8 x 1024 x 1024 stack, all slices.
"""

from __future__ import annotations

# First, as in the unetkit command: huge pages for torch, requested before torch is imported.
import napari_unetkit.cli  # noqa: F401  # isort: skip
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

from napari_unetkit.device import describe_device, resolve_device
from napari_unetkit.model import UNet, UNetConfig
from napari_unetkit.modelfile import load_model, save_model
from napari_unetkit.prediction import Predictor

sys.path.insert(0, str(Path(__file__).resolve().parent))
from inference import assemble, load, make_pieces, trained_model

MIB = 2**20
GIB = 2**30
#: Seconds between two RSS samples.
SAMPLE_INTERVAL = 0.02


def rss_bytes() -> int:
    """Resident memory of this process now."""
    try:
        import psutil

        return psutil.Process().memory_info().rss
    except ImportError:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def max_rss_bytes() -> int:
    """Peak resident memory of this process so far (``ru_maxrss``: KiB on Linux, B on macOS)."""
    value = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return value if sys.platform == "darwin" else value * 1024


class PeakSampler:
    """Samples the RSS in a thread; ``peak`` is the largest value seen."""

    def __init__(self) -> None:
        self.peak = rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_INTERVAL):
            self.peak = max(self.peak, rss_bytes())

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())


def torch_import_rss_mib() -> float:
    """Resident memory of a fresh Python process that only imports torch (its own footprint)."""
    code = "import torch; print(open('/proc/self/statm').read().split()[1])"
    pages = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(pages.stdout.split()[-1]) * os.sysconf("SC_PAGE_SIZE") / MIB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="an 8 x 1024 x 1024 stack")
    parser.add_argument("--all-slices", action="store_true", help="predict every slice")
    parser.add_argument("--json", type=Path, help="write the figures to this JSON file")
    parser.add_argument("--model", type=Path, help="a .unet model file instead of training")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (default 2)")
    parser.add_argument("--train-seconds", type=float, default=20.0, help="training budget")
    parser.add_argument("--train-to", type=Path, help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    device = resolve_device("auto")
    n_slices, side = (8, 1024) if args.quick else (64, 2048)
    step = 1 if (args.quick or args.all_slices) else 4
    if args.train_to is not None:
        model, description, summary = trained_model(args.train_seconds, device)
        save_model(args.train_to, model, description)
        print(f"trained the default network for {summary['train_seconds']} s")
        return
    print(f"device {describe_device(device)}, torch {torch.__version__}; {load()}")
    with tempfile.TemporaryDirectory() as folder:
        model_path = args.model
        if model_path is None and args.train_seconds > 0:
            model_path = Path(folder) / "trained.unet"
            child = [sys.executable, __file__, "--train-to", str(model_path)]
            child += ["--train-seconds", str(args.train_seconds), "--threads", str(args.threads)]
            subprocess.run(child, check=True)
        if model_path is not None:
            model, description = load_model(model_path, device=device)
        else:
            model = UNet(UNetConfig()).to(device).eval()
            description = {"mode": "instances"}
            print("random default network (no training)")
    pieces = make_pieces(4, seed=2000)
    predictor = Predictor(model, description, device=device)
    baseline = rss_bytes()

    started = time.perf_counter()
    image = np.empty((n_slices, side, side), dtype=np.uint16)
    for z in range(n_slices):
        image[z] = assemble(pieces, side, seed=z)[0]
    input_bytes = image.nbytes
    output_bytes = image.size * np.dtype(np.int32).itemsize
    generated = time.perf_counter() - started
    before = rss_bytes()
    slices = list(range(0, n_slices, step))
    print(
        f"{n_slices} x {side} x {side} uint16 stack ({input_bytes / MIB:.0f} MiB) generated in "
        f"{generated:.0f} s; predicting {len(slices)} of its slices, tiles of "
        f"{predictor.tile_size} px core + {predictor.halo} px halo; {load()}"
    )
    with PeakSampler() as sampler:
        started = time.perf_counter()
        result = predictor.predict(image, slices=None if step == 1 else slices)
        seconds = time.perf_counter() - started
    peak = max(sampler.peak, max_rss_bytes())
    labels = result.labels
    assert labels.dtype == np.int32 and labels.shape == image.shape
    touched = len(slices) * side * side * labels.itemsize
    untouched = output_bytes - touched
    budget = input_bytes + output_bytes + GIB
    figures = {
        "device": describe_device(device),
        "slices": n_slices,
        "side": side,
        "slices_predicted": len(slices),
        "tile_size": predictor.tile_size,
        "seconds": seconds,
        "seconds_per_slice": seconds / len(slices),
        "baseline_rss_mib": baseline / MIB,
        "rss_with_input_mib": before / MIB,
        "peak_rss_mib": peak / MIB,
        "input_mib": input_bytes / MIB,
        "output_mib": output_bytes / MIB,
        "output_untouched_mib": untouched / MIB,
        "projected_full_peak_rss_mib": (peak + untouched) / MIB,
        "working_set_mib": (peak - baseline - input_bytes - touched) / MIB,
        "budget_mib": budget / MIB,
        "budget_over_baseline_mib": (budget + baseline) / MIB,
        "instances": int(labels.max()),
    }
    full = peak + untouched
    print(f"  predicted in {seconds:.0f} s ({seconds / len(slices):.1f} s per slice)")
    build = f"a CUDA {torch.version.cuda} build" if torch.version.cuda else "a CPU-only build"
    figures["torch_import_rss_mib"] = torch_import_rss_mib()
    figures["torch_cuda_build"] = torch.version.cuda is not None
    print(f"  RSS before the input {baseline / MIB:.0f} MiB (Python, torch, the model)")
    print(
        f"  of which importing torch alone: {figures['torch_import_rss_mib']:.0f} MiB "
        f"(torch {torch.__version__}, {build})"
    )
    print(
        f"  peak RSS {peak / MIB:.0f} MiB = baseline + input {input_bytes / MIB:.0f} + labels "
        f"written {touched / MIB:.0f} + working set {figures['working_set_mib']:.0f} MiB"
    )
    if untouched:
        print(
            f"  projected peak for all slices: {full / MIB:.0f} MiB (+{untouched / MIB:.0f} MiB "
            "of labels not written here)"
        )
    verdict = "below" if full - baseline < budget else "ABOVE"
    print(
        f"  budget input + output + 1 GiB = {budget / MIB:.0f} MiB: peak minus baseline "
        f"{(full - baseline) / MIB:.0f} MiB is {verdict} it; the whole process "
        f"{full / MIB:.0f} MiB is {'below' if full < budget else 'above'} it"
    )
    figures["within_budget_over_baseline"] = bool(full - baseline < budget)
    figures["within_budget_absolute"] = bool(full < budget)
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
