"""Inference throughput of the default U-Net: the Predictor against the plain eager network.

Usage::

    python benchmarks/inference.py [--quick] [--json PATH] [--model FILE] [--threads N]
                                   [--train-seconds S] [--ablation]

What it does, in one process, on the device ``"auto"`` picks (CUDA when there is one):

1. trains the default network (:class:`~napari_unetkit.training.TrainConfig` defaults: depth 4,
   16 base channels, batch norm, 2 classes) for ``--train-seconds`` on three 256 x 256
   ``synthetic_nuclei`` images (one more for validation), or loads ``--model``;
2. measures the machine's float32 matrix-multiply peak (the better of ``torch.mm`` and the same
   product as a 1x1 convolution, see :func:`matmul_peaks`; bfloat16 too where the device
   computes it natively) and counts the network's multiply-accumulates per
   pixel with forward hooks (2 FLOP each);
3. on a 2048 x 2048 image (``--quick``: 1024 x 1024) of synthetic nuclei with exact labels,
   times the **plain baseline** (``model.eval()``, the whole image in one float32 eager call
   under ``torch.inference_mode``, no tiling) and the **Predictor** with its defaults
   (``predict_slice``: the inference copy of :mod:`napari_unetkit.speed.inference`, exact-halo
   tiles, ``precision="auto"``), alternating them and keeping the fastest of ``REPEATS`` runs
   each; then compares their probabilities and the instance F1 (IoU 0.5) of the labels each
   gives (``instances_from_probabilities``, defaults) against the truth. The same for each
   explicit precision (``float32``, ``mixed``, ``half``; the 16-bit ones only where the device
   computes them natively);
4. on a 64 x 1024 x 1024 stack (``--quick``: 8 x 512 x 512) times ``Predictor.predict``
   end to end (normalisation, network, instances, stack ids), and the network alone (baseline
   and Predictor) on its first ``STACK_BASELINE_SLICES`` slices, each slice ``REPEATS`` times
   alternately, the fastest of each counting.

With the Predictor's default ``border="network"`` its float32 probabilities equal the plain
call's everywhere (up to float32 rounding; 16-bit levels add their own rounding); the
difference is printed over the whole image and over the interior (farther than the halo from
the border).

``--ablation`` also times single 1120 x 1120 tiles (``--quick``: 704) through the plain model,
BN folding only, channels-last only and both, and the single image with ``border="mirror"``
(the paper's mirrored context, which costs extra pixels and changes the probabilities near the
border). ``--quick`` takes about a minute on two cores, the full run about four minutes on two
idle cores (five with ``--ablation``). Timings on a busy machine are noisy: the ratios are
measured in the same run, alternating the candidates.
"""

from __future__ import annotations

# First, as in the unetkit command: huge pages for torch, requested before torch is imported.
import napari_unetkit.cli  # noqa: F401  # isort: skip
import argparse
import copy
import json
import os
import platform
import threading
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from napari_unetkit.device import describe_device, resolve_device
from napari_unetkit.metrics import evaluate
from napari_unetkit.modelfile import load_model
from napari_unetkit.normalization import apply_percentiles, image_percentiles
from napari_unetkit.postprocess import instances_from_probabilities
from napari_unetkit.prediction import Predictor
from napari_unetkit.speed.inference import fold_all_batch_norms, inference_copy
from napari_unetkit.speed.memory import release_free_memory
from napari_unetkit.speed.precision import computes_16bit_natively, reduced_dtype
from napari_unetkit.synthetic import synthetic_nuclei
from napari_unetkit.training import TrainConfig, train

#: Timed runs of each candidate on the single image (the fastest counts).
REPEATS = 5
#: Stack slices on which the plain baseline (and the Predictor's network alone) is timed.
STACK_BASELINE_SLICES = 6
#: Side of the synthetic pieces that images and stacks are assembled from.
PIECE = 512


def load() -> str:
    """Return the load average as text (a busy machine distorts every figure)."""
    if not hasattr(os, "getloadavg"):
        return "load average n/a"
    return "load average {:.1f} {:.1f} {:.1f}".format(*os.getloadavg())


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work (timings)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ------------------------------------------------------------------------------------ data


def make_pieces(count: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Synthetic nuclei pieces of PIECE x PIECE px (a 2048 px image takes minutes directly)."""
    return [synthetic_nuclei((PIECE, PIECE), seed=seed + i) for i in range(count)]


def assemble(
    pieces: list[tuple[np.ndarray, np.ndarray]], side: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """A ``side`` x ``side`` image and its labels from pieces (random order and rotation).

    Nuclei cut by a piece border are cut in the labels too, so the truth stays exact; label ids
    are made unique across pieces.
    """
    rng = np.random.default_rng(seed)
    image = np.empty((side, side), dtype=pieces[0][0].dtype)
    labels = np.zeros((side, side), dtype=np.int32)
    next_id = 0
    for y in range(0, side, PIECE):
        for x in range(0, side, PIECE):
            piece_image, piece_labels = pieces[rng.integers(len(pieces))]
            turns = int(rng.integers(4))
            piece_image = np.rot90(piece_image, turns)[: side - y, : side - x]
            piece_labels = np.rot90(piece_labels, turns)[: side - y, : side - x]
            h, w = piece_image.shape
            image[y : y + h, x : x + w] = piece_image
            labels[y : y + h, x : x + w] = np.where(piece_labels > 0, piece_labels + next_id, 0)
            next_id += int(piece_labels.max())
    return image, labels


# ----------------------------------------------------------------------------------- model


def trained_model(seconds: float, device: torch.device, **settings) -> tuple[nn.Module, dict, dict]:
    """Train the default network (or the one ``settings`` of TrainConfig make) briefly.

    Returns the network, its description and a summary.
    """
    pairs = [synthetic_nuclei((256, 256), seed=i) for i in range(3)]
    validation = [synthetic_nuclei((256, 256), seed=100)]
    config = TrainConfig(epochs=None, time_limit=seconds, seed=0, device=str(device), **settings)
    result = train(pairs, config, validation=validation)
    best = [entry for entry in result.history if entry["epoch"] == result.best_epoch]
    summary = {
        "train_seconds": round(result.elapsed, 1),
        "steps": result.steps_run,
        "best_val_f1": best[0].get("val_f1") if best else None,
    }
    return result.model.eval(), result.description, summary


def macs_per_pixel(model: nn.Module, device: torch.device, side: int = 256) -> float:
    """Multiply-accumulates of one forward pass per input pixel, counted with hooks."""
    total = 0

    def count(module: nn.Module, inputs, output) -> None:
        nonlocal total
        kernel = int(np.prod(module.kernel_size))
        if isinstance(module, nn.ConvTranspose2d):
            # every input pixel meets every kernel tap once
            total += inputs[0].numel() * module.out_channels // module.groups * kernel
        else:
            total += output.numel() * module.in_channels // module.groups * kernel

    handles = [
        m.register_forward_hook(count)
        for m in model.modules()
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))
    ]
    try:
        with torch.inference_mode():
            model.eval()(torch.zeros(1, model.config.in_channels, side, side, device=device))
    finally:
        for handle in handles:
            handle.remove()
    return total / side**2


def _best_seconds(function, device: torch.device) -> float:
    function()
    best = float("inf")
    for _ in range(5 if device.type == "cpu" else 20):
        synchronize(device)
        start = time.perf_counter()
        function()
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best


def matmul_peaks(device: torch.device, n: int, dtype: torch.dtype = torch.float32) -> dict:
    """Best GFLOP/s of two matrix-multiply libraries on the same ``n**3`` product.

    ``torch.mm`` of two ``n`` x ``n`` matrices (MKL on a CPU, cuBLAS on CUDA), and the same
    product as a 1x1 convolution of ``n`` channels over ``n`` channels-last pixels (oneDNN on
    a CPU, cuDNN on CUDA), the library the network's convolutions run in. On AMD processors
    MKL does not use AVX-512, so its figure can be half of what the convolutions reach.

    Returns
    -------
    dict
        ``{"mm": GFLOP/s, "conv1x1": GFLOP/s}``.
    """
    flop = 2 * n**3
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    out = torch.empty(n, n, device=device, dtype=dtype)
    mm = flop / _best_seconds(lambda: torch.mm(a, b, out=out), device) / 1e9
    pixels = torch.randn(1, n, n // 64, 64, device=device, dtype=dtype)  # n pixels
    pixels = pixels.contiguous(memory_format=torch.channels_last)
    weight = torch.randn(n, n, 1, 1, device=device, dtype=dtype)
    weight = weight.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        seconds = _best_seconds(lambda: F.conv2d(pixels, weight), device)
    conv = flop / seconds / 1e9
    return {"mm": mm, "conv1x1": conv}


# ------------------------------------------------------------------------------ inference


def plain_probabilities(model: nn.Module, image_cyx: np.ndarray, device) -> np.ndarray:
    """The baseline: the whole normalised slice through the eval-mode model, float32 eager."""
    with torch.inference_mode():
        logits = model.eval()(torch.from_numpy(image_cyx)[None].to(device))
        return torch.softmax(logits.float(), dim=1)[0].cpu().numpy()


def timed(function, device: torch.device, *args):
    """Return the seconds ``function(*args)`` took (GPU work included) and its result."""
    synchronize(device)
    start = time.perf_counter()
    result = function(*args)
    synchronize(device)
    return time.perf_counter() - start, result


def tile_pixels(predictor: Predictor, shape: tuple[int, int]) -> int:
    """Pixels the network computes for one slice (tiles including their context)."""
    return sum(int(np.prod(tile.window_shape)) for tile in predictor.tile_layout(shape))


def single_image(
    model, description, device, side: int, pieces, macs: float, mirror: bool = False
) -> dict:
    image, truth = assemble(pieces, side, seed=1)
    low, high = image_percentiles(image)
    normalised = apply_percentiles(image[None], low, high)
    predictor = Predictor(model, description, device=device)
    print(
        f"\n{side} x {side} image: Predictor tiles of {predictor.tile_size} px core + "
        f"{predictor.halo} px halo, batch {predictor.batch_size}, precision "
        f"{predictor.precision} ({predictor.precision_description}); {load()}"
    )
    plain_times, fast_times = [], []
    for _ in range(REPEATS):
        seconds, plain = timed(lambda: plain_probabilities(model, normalised, device), device)
        plain_times.append(seconds)
        seconds, fast = timed(lambda: predictor.predict_slice(normalised), device)
        fast_times.append(seconds)
    megapixels = side * side / 1e6
    computed = tile_pixels(predictor, (side, side))
    halo = predictor.halo
    inner = (slice(None), slice(halo, side - halo), slice(halo, side - halo))
    plain_labels = instances_from_probabilities(plain[1])
    fast_labels = instances_from_probabilities(fast[1])
    plain_scores, fast_scores = evaluate(truth, plain_labels), evaluate(truth, fast_labels)
    result = {
        "side": side,
        "tile_size": predictor.tile_size,
        "halo": halo,
        "batch_size": predictor.batch_size,
        "precision": predictor.precision,
        "computed_pixel_ratio": computed / side**2,
        "baseline_seconds": min(plain_times),
        "predictor_seconds": min(fast_times),
        "baseline_mp_per_s": megapixels / min(plain_times),
        "predictor_mp_per_s": megapixels / min(fast_times),
        "speedup": min(plain_times) / min(fast_times),
        "baseline_gflops": 2 * macs * side**2 / min(plain_times) / 1e9,
        "predictor_gflops_useful": 2 * macs * side**2 / min(fast_times) / 1e9,
        "predictor_gflops_executed": 2 * macs * computed / min(fast_times) / 1e9,
        "max_prob_diff_vs_baseline": float(np.abs(fast - plain).max()),
        "max_prob_diff_vs_baseline_interior": float(np.abs(fast[inner] - plain[inner]).max()),
        "baseline_f1": plain_scores["f1"],
        "predictor_f1": fast_scores["f1"],
        "n_true_instances": int(len(np.unique(truth)) - 1),
    }
    print(
        f"  plain eager   {result['baseline_seconds']:7.2f} s  "
        f"{result['baseline_mp_per_s']:6.3f} MP/s  {result['baseline_gflops']:6.1f} GFLOP/s"
    )
    print(
        f"  Predictor     {result['predictor_seconds']:7.2f} s  "
        f"{result['predictor_mp_per_s']:6.3f} MP/s  {result['predictor_gflops_useful']:6.1f} "
        f"GFLOP/s useful, {result['predictor_gflops_executed']:.1f} executed "
        f"(tiles compute {result['computed_pixel_ratio']:.2f}x the image's pixels)"
    )
    print(f"  speed-up      {result['speedup']:.2f}x")
    print(
        f"  max |prob diff| vs plain {result['max_prob_diff_vs_baseline']:.2g} (whole image), "
        f"{result['max_prob_diff_vs_baseline_interior']:.2g} (interior)"
    )
    print(
        f"  instance F1 (IoU 0.5, {result['n_true_instances']} nuclei): plain "
        f"{result['baseline_f1']:.4f}, Predictor {result['predictor_f1']:.4f}"
    )
    result["precisions"] = precisions(model, description, device, normalised, plain, truth)
    for figures in result["precisions"].values():
        figures["speedup"] = result["baseline_seconds"] / figures["seconds"]
        print(
            f"  precision {figures['precision']:8s} {figures['seconds']:6.2f} s  "
            f"{megapixels / figures['seconds']:6.3f} MP/s  {figures['speedup']:.2f}x plain  "
            f"max |prob diff| {figures['max_prob_diff_vs_baseline']:.2g}  "
            f"F1 {figures['f1']:.4f}"
        )
    if side > predictor.tile_size:
        result["one_tile"] = one_tile(model, description, device, normalised, plain, result)
    if mirror:
        mirrored = Predictor(model, description, device=device, border="mirror")
        times = []
        for _ in range(REPEATS):
            seconds, probs = timed(mirrored.predict_slice, device, normalised)
            times.append(seconds)
        scores = evaluate(truth, instances_from_probabilities(probs[1]))
        result["mirror"] = {
            "seconds": min(times),
            "mp_per_s": megapixels / min(times),
            "computed_pixel_ratio": tile_pixels(mirrored, (side, side)) / side**2,
            "max_prob_diff_vs_baseline": float(np.abs(probs - plain).max()),
            "max_prob_diff_vs_baseline_interior": float(np.abs(probs[inner] - plain[inner]).max()),
            "f1": scores["f1"],
        }
        m = result["mirror"]
        print(
            f"  border='mirror': {m['seconds']:.2f} s, {m['mp_per_s']:.3f} MP/s (tiles compute "
            f"{m['computed_pixel_ratio']:.2f}x), max |prob diff| vs plain "
            f"{m['max_prob_diff_vs_baseline']:.2g} (whole), "
            f"{m['max_prob_diff_vs_baseline_interior']:.2g} (interior), F1 {m['f1']:.4f}"
        )
    return result


def precisions(model, description, device, normalised: np.ndarray, plain, truth) -> dict:
    """Each explicit precision of the Predictor on the image: time, agreement, instance F1."""
    names = ["float32"]
    if computes_16bit_natively(device):
        names += ["mixed", "half"]
    else:
        print(f"  (no native {reduced_dtype(device)} on this device: float32 only)")
    results = {}
    for name in names:
        predictor = Predictor(model, description, device=device, precision=name)
        times = []
        for _ in range(REPEATS):
            seconds, probs = timed(predictor.predict_slice, device, normalised)
            times.append(seconds)
        results[name] = {
            "precision": name,
            "description": predictor.precision_description,
            "seconds": min(times),
            "max_prob_diff_vs_baseline": float(np.abs(probs - plain).max()),
            "f1": evaluate(truth, instances_from_probabilities(probs[1]))["f1"],
        }
    return results


def one_tile(model, description, device, normalised: np.ndarray, plain, result: dict) -> dict:
    """Time the Predictor with one tile covering the whole image (``--tile-size`` = the side).

    No halo is computed twice, at the cost of the activations of the whole image: the figure
    says what a user with memory to spare gains over the default tiles.
    """
    side = normalised.shape[-1]
    whole = Predictor(model, description, device=device, tile_size=side)
    times, peaks = [], []
    for _ in range(REPEATS):
        with ResidentPeak() as peak:
            seconds, probs = timed(whole.predict_slice, device, normalised)
        times.append(seconds)
        peaks.append(peak.increase)
    with ResidentPeak() as peak:
        Predictor(model, description, device=device).predict_slice(normalised)
    figures = {
        "seconds": min(times),
        "mp_per_s": side * side / 1e6 / min(times),
        "speedup": result["baseline_seconds"] / min(times),
        "max_prob_diff_vs_baseline": float(np.abs(probs - plain).max()),
        "working_memory_mib": max(peaks) / 2**20,
        "default_tiles_working_memory_mib": peak.increase / 2**20,
    }
    print(
        f"  one {side} px tile (--tile-size {side}): {figures['seconds']:.2f} s, "
        f"{figures['mp_per_s']:.3f} MP/s, {figures['speedup']:.2f}x plain; working memory "
        f"{figures['working_memory_mib']:.0f} MiB against "
        f"{figures['default_tiles_working_memory_mib']:.0f} MiB with the default tiles"
    )
    return figures


class ResidentPeak:
    """Largest increase of this process's resident memory while the block runs (sampled)."""

    def __enter__(self) -> ResidentPeak:
        release_free_memory()  # start from what is in use, not what earlier work left free
        self.start = self.peak = _resident_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, _resident_bytes())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.increase = max(self.peak, _resident_bytes()) - self.start


def _resident_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def stack(model, description, device, n_slices: int, side: int, pieces, macs: float) -> dict:
    planes = [assemble(pieces, side, seed=100 + z) for z in range(n_slices)]
    image = np.stack([p[0] for p in planes])
    truth = np.stack([p[1] for p in planes])
    del planes
    predictor = Predictor(model, description, device=device)
    print(f"\n{n_slices} x {side} x {side} stack: tiles of {predictor.tile_size} px core; {load()}")
    seconds, result = timed(lambda: predictor.predict(image), device)
    megapixels = image.size / 1e6
    # The network alone on the first slices (same normalisation as predict: whole stack).
    low, high = image_percentiles(image)
    subset = min(STACK_BASELINE_SLICES, n_slices)
    plain_seconds = fast_seconds = 0.0
    plain_f1, fast_f1 = [], []
    diff, halo = 0.0, predictor.halo
    inner = (slice(None), slice(halo, side - halo), slice(halo, side - halo))
    for z in range(subset):
        normalised = apply_percentiles(image[z][None], low, high)
        plain_times, fast_times = [], []
        for _ in range(REPEATS):  # alternating; the fastest of each counts, as for the image
            t_plain, plain = timed(plain_probabilities, device, model, normalised, device)
            t_fast, fast = timed(predictor.predict_slice, device, normalised)
            plain_times.append(t_plain)
            fast_times.append(t_fast)
        plain_seconds += min(plain_times)
        fast_seconds += min(fast_times)
        diff = max(diff, float(np.abs(fast[inner] - plain[inner]).max()))
        plain_f1.append(evaluate(truth[z], instances_from_probabilities(plain[1]))["f1"])
        fast_f1.append(evaluate(truth[z], result.labels[z])["f1"])
    subset_mp = subset * side * side / 1e6
    computed = tile_pixels(predictor, (side, side)) * n_slices
    figures = {
        "slices": n_slices,
        "side": side,
        "tile_size": predictor.tile_size,
        "predict_seconds": seconds,
        "predict_mp_per_s": megapixels / seconds,
        "predict_gflops_useful": 2 * macs * image.size / seconds / 1e9,
        "predict_gflops_executed": 2 * macs * computed / seconds / 1e9,
        "network_slices_timed": subset,
        "baseline_network_mp_per_s": subset_mp / plain_seconds,
        "predictor_network_mp_per_s": subset_mp / fast_seconds,
        "network_speedup": plain_seconds / fast_seconds,
        "end_to_end_speedup_vs_baseline_network": (megapixels / seconds)
        / (subset_mp / plain_seconds),
        "max_prob_diff_vs_baseline_interior": diff,
        "baseline_f1_subset": float(np.mean(plain_f1)),
        "predictor_f1_subset": float(np.mean(fast_f1)),
    }
    print(
        f"  Predictor.predict (normalise, network, instances): {seconds:.1f} s, "
        f"{figures['predict_mp_per_s']:.3f} MP/s, {figures['predict_gflops_useful']:.1f} "
        f"GFLOP/s useful"
    )
    print(
        f"  network alone on {subset} slices: plain {figures['baseline_network_mp_per_s']:.3f} "
        f"MP/s, Predictor {figures['predictor_network_mp_per_s']:.3f} MP/s, "
        f"{figures['network_speedup']:.2f}x; end to end vs plain network "
        f"{figures['end_to_end_speedup_vs_baseline_network']:.2f}x"
    )
    print(
        f"  instance F1 on those slices: plain {figures['baseline_f1_subset']:.4f}, "
        f"Predictor {figures['predictor_f1_subset']:.4f}; max |prob diff| (interior) {diff:.2g}"
    )
    return figures


def ablation(model: nn.Module, device: torch.device, side: int) -> dict:
    """Time one tile through the plain model, folding only, channels-last only, both."""
    folded = copy.deepcopy(model).eval()
    fold_all_batch_norms(folded)
    channels_last = copy.deepcopy(model).eval().to(memory_format=torch.channels_last)
    both = inference_copy(model, device)
    x = torch.rand(1, model.config.in_channels, side, side, device=device)
    xc = x.contiguous(memory_format=torch.channels_last)
    candidates = {
        "plain": (model.eval(), x),
        "bn_folded": (folded, x),
        "channels_last": (channels_last, xc),
        "folded_channels_last": (both, xc),
    }
    times: dict[str, list[float]] = {name: [] for name in candidates}
    with torch.inference_mode():
        for _ in range(3):
            for name, (network, inputs) in candidates.items():
                seconds, _ = timed(lambda n=network, i=inputs: n(i), device)
                times[name].append(seconds)
    base = min(times["plain"])
    print(f"\nablation: one {side} x {side} tile, float32, fastest of 3; {load()}")
    figures = {}
    for name, values in times.items():
        figures[name] = {"seconds": min(values), "speedup": base / min(values)}
        print(f"  {name:22s} {min(values):6.3f} s  {base / min(values):.2f}x")
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller image and stack")
    parser.add_argument("--json", type=Path, help="write the figures to this JSON file")
    parser.add_argument("--model", type=Path, help="a .unet model file instead of training")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (default 2)")
    parser.add_argument("--train-seconds", type=float, help="training budget (40 s; quick 25)")
    parser.add_argument(
        "--ablation", action="store_true", help="time each optimisation alone, and border='mirror'"
    )
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    device = resolve_device("auto")
    side, stack_slices, stack_side = (1024, 8, 512) if args.quick else (2048, 64, 1024)
    print(f"device {describe_device(device)}, torch {torch.__version__}, {platform.processor()}")
    print(load())

    figures: dict = {
        "device": describe_device(device),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "quick": args.quick,
    }
    started = time.perf_counter()
    if args.model is not None:
        model, description = load_model(args.model, device=device)
        figures["model"] = {"file": str(args.model)}
    else:
        seconds = args.train_seconds or (25.0 if args.quick else 40.0)
        model, description, summary = trained_model(seconds, device)
        figures["model"] = summary
        print(
            f"trained the default network for {summary['train_seconds']} s "
            f"({summary['steps']} steps), validation F1 {summary['best_val_f1']}"
        )
    model.eval()

    n = 8192 if device.type == "cuda" else 4096
    dtypes = {"fp32": torch.float32}
    if computes_16bit_natively(device):
        dtypes["bf16"] = torch.bfloat16
    for key, dtype in dtypes.items():
        peaks = matmul_peaks(device, n, dtype)
        figures[f"matmul_gflops_{key}"] = max(peaks.values())
        figures[f"matmul_gflops_{key}_by_library"] = peaks
        print(
            f"matmul peak ({str(dtype).removeprefix('torch.')}, {n} x {n} x {n}): "
            f"{max(peaks.values()):.1f} GFLOP/s (torch.mm {peaks['mm']:.1f}, as a 1x1 "
            f"convolution {peaks['conv1x1']:.1f})"
        )
    macs = macs_per_pixel(model, device)
    figures["gflop_per_megapixel"] = 2 * macs / 1e3
    print(f"network: {2 * macs / 1e3:.1f} kFLOP per pixel ({macs:.0f} multiply-accumulates)")

    pieces = make_pieces(4 if args.quick else 8, seed=1000)
    figures["image"] = single_image(
        model, description, device, side, pieces, macs, mirror=args.ablation
    )
    figures["stack"] = stack(model, description, device, stack_slices, stack_side, pieces, macs)
    peak = figures["matmul_gflops_fp32"]
    for key, rate in (
        ("image_baseline", figures["image"]["baseline_gflops"]),
        ("image_predictor_useful", figures["image"]["predictor_gflops_useful"]),
        ("image_predictor_executed", figures["image"]["predictor_gflops_executed"]),
    ):
        figures[f"{key}_percent_of_matmul_peak"] = 100 * rate / peak
    print(
        "\nof the float32 matmul peak: plain "
        f"{figures['image_baseline_percent_of_matmul_peak']:.0f} %, Predictor "
        f"{figures['image_predictor_useful_percent_of_matmul_peak']:.0f} % useful "
        f"({figures['image_predictor_executed_percent_of_matmul_peak']:.0f} % executed, halos "
        "included)"
    )
    if args.ablation:
        figures["ablation"] = ablation(model, device, 1120 if not args.quick else 704)
    figures["seconds"] = time.perf_counter() - started
    print(f"\ntotal {figures['seconds']:.0f} s")
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
