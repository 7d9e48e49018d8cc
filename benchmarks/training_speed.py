"""Training speed on this machine: patches per second, and time to validation F1 >= 0.9.

Usage::

    python benchmarks/training_speed.py throughput [--threads N] [--steps S]
    python benchmarks/training_speed.py convergence [--threads N] [--time-limit T] [--set K=V]

``throughput`` times full training steps (patch sampling with the default augmentation,
forward, weighted loss, backward, AdamW) for several model / patch / batch sizes; besides wall
time it prints the process CPU time per step, which with ``--threads 1`` is close to the wall
time the step would take on an idle core even when the machine is busy.
``convergence`` trains on 3 synthetic_nuclei images (256 x 256) with 1 more as validation, under a
time limit, and prints every epoch and when validation F1 at IoU 0.5 first reached 0.9;
``--set key=value`` overrides a TrainConfig field (e.g. ``--set base_channels=8``).

The load average is printed too: on a shared machine, busy cores distort every figure (torch's
OpenMP threads spin-wait, so oversubscription slows training far more than proportionally).
"""

from __future__ import annotations

# First, as in the unetkit command: huge pages for torch, requested before torch is imported.
import napari_unetkit.cli  # noqa: F401  # isort: skip
import argparse
import ast
import os
import time

import numpy as np
import torch

from napari_unetkit.augmentation import AugmentationSettings
from napari_unetkit.data import PatchSampler, prepare_training_data
from napari_unetkit.losses import training_loss
from napari_unetkit.model import UNet, UNetConfig
from napari_unetkit.speed.inference import uses_channels_last
from napari_unetkit.synthetic import sample_pairs
from napari_unetkit.training import TrainConfig, amp_settings, train

THROUGHPUT_CASES = [
    # (depth, base_channels, patch_size, batch_size)
    (4, 16, 128, 8),
    (4, 16, 96, 8),
    (4, 16, 128, 4),
    (4, 16, 64, 16),
    (4, 8, 128, 8),
    (3, 16, 128, 8),
    (3, 8, 128, 8),
]


def load() -> str:
    return "load average {:.1f} {:.1f} {:.1f}".format(*os.getloadavg())


def time_steps(data, case, steps: int, channels_last: bool, amp_dtype) -> tuple[float, ...]:
    """Milliseconds of sampling, of the step, and CPU milliseconds per step (after warm-up)."""
    depth, base, patch, batch = case
    torch.manual_seed(0)
    model = UNet(UNetConfig(depth=depth, base_channels=base, dropout=0.1))
    if channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sampler = PatchSampler(data.slices, patch, 0.5, AugmentationSettings(), seed=0)
    sample_time = step_time = 0.0
    cpu_start = 0.0
    for i in range(steps + 2):  # two warm-up steps
        if i == 2:
            cpu_start = time.process_time()
        t0 = time.perf_counter()
        images, targets, weights = sampler.sample_batch(batch)
        t1 = time.perf_counter()
        x = torch.from_numpy(images)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(
            "cpu", dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None
        ):
            logits = model(x)
        loss = training_loss(logits, torch.from_numpy(targets), torch.from_numpy(weights))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        t2 = time.perf_counter()
        if i >= 2:
            sample_time += t1 - t0
            step_time += t2 - t1
    cpu = (time.process_time() - cpu_start) / steps
    return 1000 * sample_time / steps, 1000 * step_time / steps, 1000 * cpu


def mode_name(channels_last: bool, amp_dtype) -> str:
    layout = "channels-last" if channels_last else "NCHW"
    return f"{layout} {str(amp_dtype or torch.float32).removeprefix('torch.')}"


def throughput(steps: int) -> None:
    """Steps as the trainer runs them on this CPU, and the default case without its speed-ups."""
    data = prepare_training_data(sample_pairs(3, (256, 256), seed=0))
    cpu = torch.device("cpu")
    trainer = (uses_channels_last(cpu), amp_settings(TrainConfig(), cpu)[1])
    print(f"threads {torch.get_num_threads()}, {load()}; the trainer runs {mode_name(*trainer)}")
    print(
        "depth base patch batch  mode                   | sample ms  step ms  cpu ms | "
        "patches/s  Mpx/s"
    )
    default = THROUGHPUT_CASES[0]
    modes = [(False, None), (True, None)]
    if trainer[1] is not None:
        modes.append((True, trainer[1]))
    runs = [(default, mode) for mode in modes]
    runs += [(case, trainer) for case in THROUGHPUT_CASES[1:]]
    per_step = {}
    for case, mode in runs:
        sample_ms, step_ms, cpu_ms = time_steps(data, case, steps, *mode)
        depth, base, patch, batch = case
        total = (sample_ms + step_ms) / 1000
        if case == default:
            per_step[mode] = sample_ms + step_ms
        print(
            f"{depth:5d} {base:4d} {patch:5d} {batch:5d}  {mode_name(*mode):22s} | "
            f"{sample_ms:9.0f} {step_ms:8.0f} {cpu_ms:7.0f} | {batch / total:9.1f} "
            f"{batch * patch * patch / total / 1e6:6.2f}",
            flush=True,
        )
    ratio = per_step[(False, None)] / per_step[trainer]
    print(f"default case: the trainer's step ({mode_name(*trainer)}) is {ratio:.2f}x the plain one")


def convergence(time_limit: float, overrides: dict) -> None:
    pairs = sample_pairs(4, (256, 256), seed=0)
    config = TrainConfig(**{"epochs": None, "time_limit": time_limit, **overrides})
    print(f"threads {config.threads or torch.get_num_threads()}, {load()}, {overrides}")
    result = train(pairs[:3], config, validation=pairs[3:])
    first = None
    for entry in result.history:
        if first is None and entry["val_f1"] >= 0.9:
            first = entry
        print(
            f"epoch {entry['epoch']:3d} {entry['elapsed']:6.1f}s steps {entry['steps']:3d} "
            f"loss {entry['train_loss']:.3f} val loss {entry['val_loss']:.3f} "
            f"F1 {entry['val_f1']:.3f} IoU {entry['val_iou']:.3f} lr {entry['lr']:.1e}"
        )
    reached = f"epoch {first['epoch']} at {first['elapsed']:.1f}s" if first else "never"
    print(
        f"steps {result.steps_run} in {result.elapsed:.1f}s; best F1 {result.best_score:.3f} "
        f"(epoch {result.best_epoch}); F1 >= 0.9 first: {reached}; {load()}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["throughput", "convergence"])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--time-limit", type=float, default=120.0)
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="a TrainConfig field"
    )
    args = parser.parse_args()
    overrides = {}
    for item in args.set:
        key, value = item.split("=", 1)
        try:
            overrides[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            overrides[key] = value
    if args.threads:
        torch.set_num_threads(args.threads)
        overrides.setdefault("threads", args.threads)
    np.set_printoptions(precision=3)
    if args.what == "throughput":
        throughput(args.steps)
    else:
        convergence(args.time_limit, overrides)


if __name__ == "__main__":
    main()
