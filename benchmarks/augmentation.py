"""Cost of drawing training patches, with and without augmentation (ms per patch).

Run from the repository root::

    python benchmarks/augmentation.py                 # 128 x 128 patches, 1 and 3 channels
    python benchmarks/augmentation.py --patch 256 --batch 8

Rows: ``none`` = sampling only (``AugmentationSettings.off()``); ``flips+rot`` and
``intensity`` = one kind of augmentation; ``elastic (always)`` = every patch deformed (linear
image interpolation, the default), ``elastic cubic (always)`` the same with cubic image
interpolation (the paper's choice); ``default`` = the defaults (elastic on half the patches).
The image is a 1024 x 1024 synthetic nuclei slice, prepared once (weight map included) and not
timed.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from dataclasses import replace

import numpy as np

from napari_unetkit.augmentation import AugmentationSettings
from napari_unetkit.data import PatchSampler, prepare_training_data
from napari_unetkit.synthetic import synthetic_nuclei

OFF = AugmentationSettings.off()
CASES = {
    "none": OFF,
    "flips+rot": replace(OFF, flips=True, rotations=True),
    "intensity": replace(OFF, intensity=True),
    "elastic (always)": replace(OFF, elastic=True, elastic_probability=1.0),
    "elastic cubic (always)": replace(
        OFF, elastic=True, elastic_probability=1.0, interpolation_order=3
    ),
    "default": AugmentationSettings(),
}


def ms_per_patch(sampler: PatchSampler, batch: int, repeats: int) -> float:
    """Best-of-``repeats`` time of ``sample_batch(batch)``, divided by ``batch``."""
    sampler.sample_batch(batch)  # warm-up (caches, first allocations)
    best = np.inf
    for _ in range(repeats):
        start = time.perf_counter()
        sampler.sample_batch(batch)
        best = min(best, time.perf_counter() - start)
    return 1e3 * best / batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patch", type=int, default=128)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    image, labels = synthetic_nuclei((1024, 1024), seed=0)
    rgb = np.stack([image, image // 2, image // 3], axis=-1)
    data = {
        1: prepare_training_data([(image, labels)]),
        3: prepare_training_data([(rgb, labels)], channel_axis=-1),
    }
    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, NumPy "
        f"{np.__version__}; patch {args.patch} x {args.patch}, batch {args.batch}, "
        f"best of {args.repeats}"
    )
    print(f"{'augmentation':<24}{'1 channel':>12}{'3 channels':>12}   (ms per patch)")
    for name, settings in CASES.items():
        times = [
            ms_per_patch(
                PatchSampler(data[c], args.patch, augmentation=settings, seed=0),
                args.batch,
                args.repeats,
            )
            for c in (1, 3)
        ]
        print(f"{name:<24}{times[0]:>12.2f}{times[1]:>12.2f}")


if __name__ == "__main__":
    main()
