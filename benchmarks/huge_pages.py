"""Transparent huge pages for PyTorch: what the ``unetkit`` command gains, what napari may opt into.

Usage::

    python benchmarks/huge_pages.py [--size 1024] [--rounds 3] [--repeats 3] [--json PATH]

PyTorch reads ``THP_MEM_ALLOC_ENABLE`` once, at import, for the whole process. The ``unetkit``
command sets it (a process of its own); the napari plugin does not, because in napari it would
apply to every plugin's PyTorch, so there it is the user's choice (start napari with
``THP_MEM_ALLOC_ENABLE=1``). This benchmark predicts a ``size x size`` synthetic image with the
default network (trained for a few steps; speed does not depend on the weights) in fresh
processes with the variable ``0`` and ``1``, alternating, ``rounds`` times each; every process
times ``repeats`` predictions after a warm-up and counts their minor page faults. Printed: the
median seconds and faults per prediction for each setting and their ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = """
import json, resource, sys, time
import torch
from napari_unetkit.modelfile import load_model
from napari_unetkit.prediction import Predictor
from napari_unetkit.synthetic import synthetic_nuclei

path, size, repeats = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
torch.set_num_threads(2)
model, description = load_model(path)
predictor = Predictor(model, description, device="cpu")
image = synthetic_nuclei((size, size), seed=1)[0]
predictor.predict(image)
seconds, faults = [], []
for _ in range(repeats):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    start = time.perf_counter()
    predictor.predict(image)
    seconds.append(time.perf_counter() - start)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"seconds": min(seconds), "faults": min(faults)}))
"""


def make_model(folder: Path) -> Path:
    from napari_unetkit.modelfile import save_model
    from napari_unetkit.synthetic import synthetic_nuclei
    from napari_unetkit.training import TrainConfig, train

    pairs = [synthetic_nuclei((128, 128), seed=i) for i in range(2)]
    result = train(pairs, TrainConfig(epochs=1, steps_per_epoch=2, seed=0, device="cpu"))
    return save_model(folder / "model.unet", result.model, result.description)


def run_child(model: Path, size: int, repeats: int, setting: str) -> dict:
    env = dict(os.environ, THP_MEM_ALLOC_ENABLE=setting)
    completed = subprocess.run(
        [sys.executable, "-c", CHILD, str(model), str(size), str(repeats)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(completed.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if not sys.platform.startswith("linux"):
        sys.exit("Transparent huge pages for PyTorch exist on Linux only.")
    with tempfile.TemporaryDirectory() as folder:
        model = make_model(Path(folder))
        runs: dict[str, list[dict]] = {"0": [], "1": []}
        for _ in range(args.rounds):
            for setting in ("0", "1"):
                runs[setting].append(run_child(model, args.size, args.repeats, setting))
    rows = {
        setting: {
            "seconds": statistics.median(run["seconds"] for run in results),
            "faults": statistics.median(run["faults"] for run in results),
        }
        for setting, results in runs.items()
    }
    print(
        f"Prediction of a {args.size} x {args.size} image, default network, 2 threads; "
        f"median of {args.rounds} fresh processes per setting (best of {args.repeats} each)"
    )
    print("| THP_MEM_ALLOC_ENABLE | seconds | minor page faults |")
    print("| --- | ---: | ---: |")
    for setting, row in rows.items():
        print(f"| {setting} | {row['seconds']:.2f} | {row['faults']:,.0f} |")
    speedup = rows["0"]["seconds"] / rows["1"]["seconds"]
    fewer = rows["0"]["faults"] / max(rows["1"]["faults"], 1)
    print(f"Huge pages: {speedup:.2f}x faster, {fewer:.1f}x fewer page faults.")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "speedup": speedup}, indent=2))


if __name__ == "__main__":
    main()
