"""Time to quality of three training recipes on the same network and data, in one run.

Usage::

    python benchmarks/training_recipes.py [--time-limit 75] [--seed 0] [--threads 2]
                                          [--json FILE] [--plot FILE] [--quick]

Recipes, all on the default network (depth 4, 16 base channels, batch norm, dropout 0.5), the
demo's data (3 synthetic 256 x 256 nuclei images for training, 1 for validation) and the same
wall-clock budget:

``weighted``
    napari-unetkit's defaults: separated target (ridges between touching nuclei), the paper's
    boundary weight map (w0 10, sigma 5, balanced classes), augmentation with elastic
    deformation, AdamW with a cosine schedule. This is exactly what ``unetkit demo`` trains.
``unweighted``
    The same trainer and target, but every pixel weighs 1 (w0 0, no class balance): isolates
    what the weight map contributes.
``plain``
    The plain PyTorch recipe a newcomer writes: foreground mask as target (no ridges), sigmoid +
    binary cross-entropy, no weight map, no augmentation, random crops, AdamW at a constant
    learning rate. The sigmoid logit is the difference of the network's two output logits, so
    the network is the same and its softmax foreground probability equals the sigmoid.

Every recipe is validated the same way (whole validation image, foreground > 0.5, connected
components with gap filling, instance F1 at IoU 0.5), and every final model is scored on 4
held-out 384 x 384 test images: instance F1 at IoU 0.5, foreground IoU and the fraction of
touching nucleus pairs that were merged into one predicted object.

The time budget includes data preparation (the weight maps), as the product's time limit does.
"""

from __future__ import annotations

# First, as in the unetkit command: huge pages for torch, requested before torch is imported.
import napari_unetkit.cli  # noqa: F401  # isort: skip
import argparse
import json
import os
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from napari_unetkit.data import prepare_training_data
from napari_unetkit.demo import demo_data
from napari_unetkit.metrics import foreground_iou, match_instances
from napari_unetkit.model import UNet
from napari_unetkit.normalization import percentile_normalize
from napari_unetkit.postprocess import instances_from_probabilities
from napari_unetkit.synthetic import synthetic_nuclei
from napari_unetkit.training import TrainConfig, train
from napari_unetkit.weightmap import WeightMapSettings

TARGET_F1 = 0.9
TEST_SEEDS = (1000, 1001, 1002, 1003)
TEST_SHAPE = (384, 384)
#: Uniform weights on the separated target (the ``unweighted`` recipe).
UNIFORM_SEPARATED = WeightMapSettings(w0=0.0, class_balance="none", separate=True)
#: Uniform weights on the plain foreground mask (the ``plain`` recipe's data).
UNIFORM_MASK = WeightMapSettings(w0=0.0, class_balance="none", separate=False)


def foreground_probability(model: torch.nn.Module, image_cyx: np.ndarray) -> np.ndarray:
    """Softmax foreground probability of a whole normalised slice (eval mode, plain forward)."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            logits = model(torch.from_numpy(np.ascontiguousarray(image_cyx))[None])
        return torch.softmax(logits.float(), dim=1)[0, 1].numpy()
    finally:
        model.train(was_training)


def touching_pairs(labels: np.ndarray) -> set[tuple[int, int]]:
    """Pairs of instance ids that touch (8-connectivity)."""
    pairs: set[tuple[int, int]] = set()
    h, w = labels.shape
    for dy, dx in ((0, 1), (1, 0), (1, 1), (1, -1)):
        a = labels[: h - dy, max(0, -dx) : w - max(0, dx)]
        b = labels[dy:, max(0, dx) : w - max(0, -dx)]
        contact = (a > 0) & (b > 0) & (a != b)
        for p, q in zip(a[contact], b[contact], strict=True):
            pairs.add((int(min(p, q)), int(max(p, q))))
    return pairs


def _dominant_object(truth: np.ndarray, pred: np.ndarray, label: int) -> int:
    """The predicted id covering at least half of true instance ``label`` (0 if none)."""
    values = pred[truth == label]
    ids, counts = np.unique(values[values > 0], return_counts=True)
    if not ids.size or counts.max() * 2 < values.size:
        return 0
    return int(ids[np.argmax(counts)])


def merged_pairs(truth: np.ndarray, pred: np.ndarray) -> tuple[int, int]:
    """Return (merged, total) touching true pairs; merged: one predicted object covers both."""
    pairs = touching_pairs(truth)
    merged = 0
    for a, b in pairs:
        pa, pb = _dominant_object(truth, pred, a), _dominant_object(truth, pred, b)
        merged += int(pa != 0 and pa == pb)
    return merged, len(pairs)


def score_on_test_images(model: torch.nn.Module, normalize) -> dict:
    """Instance F1, foreground IoU and merged touching pairs on the held-out test images."""
    tp = n_true = n_pred = merged = touching = 0
    ious = []
    for seed in TEST_SEEDS:
        image, truth = synthetic_nuclei(TEST_SHAPE, seed=seed)
        probability = foreground_probability(model, normalize(image))
        pred = instances_from_probabilities(probability, 0.5)
        match = match_instances(truth, pred, 0.5)
        tp, n_true, n_pred = tp + match.tp, n_true + match.n_true, n_pred + match.n_pred
        m, t = merged_pairs(truth, pred)
        merged, touching = merged + m, touching + t
        ious.append(foreground_iou(truth, pred))
    return {
        "test_f1": 2.0 * tp / (n_true + n_pred),
        "test_foreground_iou": float(np.mean(ious)),
        "merged_pairs": merged,
        "touching_pairs": touching,
        "merged_fraction": merged / touching if touching else 0.0,
    }


def validation_f1(model: torch.nn.Module, image_cyx: np.ndarray, truth: np.ndarray) -> float:
    """Instance F1 at IoU 0.5 of one validation slice (the trainer's definition)."""
    pred = instances_from_probabilities(foreground_probability(model, image_cyx), 0.5)
    match = match_instances(truth, pred, 0.5)
    total = match.n_true + match.n_pred
    return 2.0 * match.tp / total if total else 1.0


def _normalizer(config: TrainConfig):
    """Normalise a raw grey test image exactly as training and prediction do."""
    settings = config.normalization

    def normalize(image: np.ndarray) -> np.ndarray:
        return percentile_normalize(image[None].astype(np.float32), settings.low, settings.high)

    return normalize


def run_trainer_recipe(name: str, config: TrainConfig, data: tuple) -> dict:
    """Train with the product's trainer; curve points come from its per-epoch history."""
    train_pairs, validation = data
    result = train(train_pairs, config, validation=validation)
    curve = [(entry["elapsed"], entry.get("val_f1", 0.0)) for entry in result.history]
    return {
        "name": name,
        "steps": result.steps_run,
        "seconds": result.elapsed,
        "patches_per_second": result.steps_run * config.batch_size / result.elapsed,
        "curve": curve,
        "best_val_f1": result.best_score,
        "model": result.model,
    }


def run_plain_recipe(config: TrainConfig, data: tuple, steps_per_check: int) -> dict:
    """Sigmoid + BCE on the foreground mask, random crops, no augmentation, constant lr."""
    start = time.perf_counter()
    train_pairs, validation = data
    rng = np.random.default_rng(config.seed)
    slices = prepare_training_data(
        train_pairs, weightmap=UNIFORM_MASK, normalization=config.normalization
    ).slices
    val = prepare_training_data(
        validation, weightmap=UNIFORM_MASK, normalization=config.normalization
    ).slices[0]
    val_truth = np.asarray(validation[0][1])
    torch.manual_seed(config.seed)
    model = UNet(config.model_config(1, 2))
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    bce = torch.nn.BCEWithLogitsLoss()
    p = config.patch_size
    best = (-1.0, None)
    curve, steps = [], 0
    model.train()
    while time.perf_counter() - start < config.time_limit:
        images, masks = [], []
        for _ in range(config.batch_size):
            item = slices[rng.integers(len(slices))]
            y = rng.integers(item.shape[0] - p + 1)
            x = rng.integers(item.shape[1] - p + 1)
            images.append(item.image[:, y : y + p, x : x + p])
            masks.append(item.target[y : y + p, x : x + p] > 0)
        x_batch = torch.from_numpy(np.stack(images).astype(np.float32))
        y_batch = torch.from_numpy(np.stack(masks).astype(np.float32))
        logits = model(x_batch)
        loss = bce(logits[:, 1] - logits[:, 0], y_batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        steps += 1
        if steps % steps_per_check == 0:
            f1 = validation_f1(model, val.image, val_truth)
            curve.append((time.perf_counter() - start, f1))
            if f1 > best[0]:
                best = (f1, {k: v.detach().clone() for k, v in model.state_dict().items()})
    if best[1] is not None:
        model.load_state_dict(best[1])
    model.eval()
    elapsed = time.perf_counter() - start
    return {
        "name": "plain",
        "steps": steps,
        "seconds": elapsed,
        "patches_per_second": steps * config.batch_size / elapsed,
        "curve": curve,
        "best_val_f1": best[0],
        "model": model,
    }


def time_to_target(curve: list[tuple[float, float]], target: float = TARGET_F1) -> float | None:
    """First elapsed time at which the validation F1 reached ``target`` (None: never)."""
    return next((t for t, f1 in curve if f1 >= target), None)


def plot_curves(results: list[dict], path: Path, threads: int) -> None:
    """Write the validation-F1-over-time curves as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = {
        "weighted": "napari-unetkit default (weight map, ridges, augmentation)",
        "unweighted": "same trainer, uniform weights (no weight map)",
        "plain": "plain recipe (sigmoid + BCE, no weight map, no augmentation)",
    }
    fig, ax = plt.subplots(figsize=(7.5, 4.2), dpi=110)
    for result in results:
        times, f1s = zip(*result["curve"], strict=True) if result["curve"] else ((), ())
        ax.plot(times, f1s, marker="o", markersize=3, label=labels[result["name"]])
    ax.axhline(TARGET_F1, color="grey", linestyle="--", linewidth=1)
    ax.set_xlabel(f"wall time (s), {threads} CPU threads, data preparation included")
    ax.set_ylabel("validation instance F1 @ IoU 0.5")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title("Time to quality on the synthetic nuclei sample")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    """Run the three recipes and print a table; optionally write JSON and a PNG plot."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--time-limit", type=float, default=75.0, help="seconds per recipe")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, help="write the figures to this JSON file")
    parser.add_argument("--plot", type=Path, help="write the curves to this PNG file")
    parser.add_argument("--quick", action="store_true", help="20 s per recipe (a smoke run)")
    args = parser.parse_args(argv)
    time_limit = 20.0 if args.quick else args.time_limit
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, load average {os.getloadavg()}")

    train_pairs, validation, _ = demo_data(args.seed)
    data = (train_pairs, validation)
    base = TrainConfig(epochs=None, time_limit=time_limit, seed=args.seed, threads=args.threads)
    results = [run_trainer_recipe("weighted", base, data)]
    steps_per_check = max(1, int(results[0]["steps"] / max(len(results[0]["curve"]), 1)))
    unweighted = replace(base, weightmap=UNIFORM_SEPARATED)
    results.append(run_trainer_recipe("unweighted", unweighted, data))
    results.append(run_plain_recipe(base, data, steps_per_check))

    normalize = _normalizer(base)
    header = (
        f"{'recipe':<11}{'steps':>6}{'patch/s':>9}{'t(F1>=0.9)':>12}{'best val F1':>13}"
        f"{'test F1':>9}{'test IoU':>10}{'merged pairs':>15}"
    )
    print(header)
    report = {"time_limit": time_limit, "threads": args.threads, "recipes": []}
    for result in results:
        scores = score_on_test_images(result.pop("model"), normalize)
        reached = time_to_target(result["curve"])
        result.update(scores, seconds_to_f1_0_9=reached)
        reached_text = f"{reached:.1f} s" if reached is not None else "never"
        print(
            f"{result['name']:<11}{result['steps']:>6}{result['patches_per_second']:>9.1f}"
            f"{reached_text:>12}{result['best_val_f1']:>13.3f}{scores['test_f1']:>9.3f}"
            f"{scores['test_foreground_iou']:>10.3f}"
            f"{scores['merged_pairs']:>8}/{scores['touching_pairs']:<6}"
        )
        report["recipes"].append(result)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    if args.plot:
        plot_curves(results, args.plot, args.threads)
        print(f"plot: {args.plot}")
    return report


if __name__ == "__main__":
    main()
