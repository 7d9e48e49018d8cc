"""Instance quality on real annotated microscopy: napari-unetkit against two baselines, one run.

Usage::

    make benchmark-data       # once: the packages that ship the images (see real_datasets.py)
    python benchmarks/real_data.py [--budget 90] [--datasets nuclei,ecoli,...] [--json FILE]
                                   [--figures DIR] [--keep DIR]

Methods, each trained (where it trains) on the same data for the same wall-clock budget on the
CPU, data preparation included:

``unetkit``
    The product with its defaults: ``train()`` with ``TrainConfig(time_limit=budget)`` and
    ``Predictor.predict()`` with the instance settings stored in the model, exactly what
    ``unetkit train --time-limit B`` followed by ``unetkit predict`` does.
``seed``
    The plain recipe a newcomer writes from the U-Net tutorial: the same network, foreground
    mask as target, sigmoid + binary cross-entropy (masked outside an annotated region), random
    crops, no augmentation, AdamW at a constant learning rate, the last model; then threshold
    0.5 and connected components.
``classical``
    Otsu + watershed, no learning: Gaussian smoothing, Otsu threshold (polarity and peak
    distance taken from the training labels), hole filling, distance-transform watershed.

Scores, pooled over each dataset's test slices: F1 and AP (TP / (TP + FP + FN)) at IoU 0.5, 0.7
and 0.9, the mean IoU of the pairs matched at 0.5, merges (predicted objects holding most of two
or more true objects) and splits (true objects holding most of two or more predicted objects).
On sparse datasets only annotated objects count, and only predictions lying mostly inside the
scored region.
"""

from __future__ import annotations

# First, as in the unetkit command: huge pages for torch, requested before torch is imported.
import napari_unetkit.cli  # noqa: F401  # isort: skip
import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi
from skimage.feature import peak_local_max
from skimage.filters import gaussian, threshold_otsu
from skimage.segmentation import find_boundaries, watershed

from napari_unetkit.data import prepare_training_data
from napari_unetkit.layout import iter_slices
from napari_unetkit.metrics import match_instances, overlaps
from napari_unetkit.model import UNet
from napari_unetkit.modelfile import save_model
from napari_unetkit.prediction import Predictor
from napari_unetkit.training import TrainConfig, train
from napari_unetkit.weightmap import WeightMapSettings

sys.path.insert(0, str(Path(__file__).resolve().parent))
import real_datasets

IOU_THRESHOLDS = (0.5, 0.7, 0.9)
METHODS = ("unetkit", "seed", "classical")
#: Target and weights of the seed recipe: the plain foreground mask, every pixel weighing 1.
PLAIN_MASK = WeightMapSettings(w0=0.0, class_balance="none", separate=False)


@dataclass
class MethodResult:
    """Test-set labels of one method on one dataset, with its timings."""

    labels: list
    train_seconds: float
    predict_seconds: float
    steps: int | None = None
    notes: str = ""


# ---------------------------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------------------------


def keep_scored(pred: np.ndarray, scored: np.ndarray | None) -> np.ndarray:
    """Drop predicted objects that lie mostly (half or more) outside the scored region."""
    if scored is None:
        return pred
    ids = np.unique(pred)
    ids = ids[ids > 0]
    if ids.size == 0:
        return pred
    inside = ndi.sum_labels(scored, pred, ids)
    area = ndi.sum_labels(np.ones_like(scored), pred, ids)
    dropped = ids[inside <= area / 2]
    return np.where(np.isin(pred, dropped), 0, pred)


def merges_and_splits(truth: np.ndarray, pred: np.ndarray) -> tuple[int, int]:
    """Count merges and splits.

    A merge is a predicted object holding most of two or more true objects; a split is a true
    object holding most of two or more predicted objects.
    """
    table = overlaps(truth, pred)
    if table.rows.size == 0:
        return 0, 0
    truth_part = table.intersection / table.truth_area[table.rows]
    pred_part = table.intersection / table.pred_area[table.cols]
    merges = np.bincount(table.cols[truth_part > 0.5], minlength=table.pred_ids.size)
    splits = np.bincount(table.rows[pred_part > 0.5], minlength=table.truth_ids.size)
    return int(np.count_nonzero(merges >= 2)), int(np.count_nonzero(splits >= 2))


def score(pairs: list[tuple[np.ndarray, np.ndarray]]) -> dict:
    """Pooled scores over ``(truth, pred)`` 2D pairs."""
    result = {}
    for threshold in IOU_THRESHOLDS:
        tp = fp = fn = 0
        iou_sum = 0.0
        for truth, pred in pairs:
            match = match_instances(truth, pred, threshold)
            tp, fp, fn = tp + match.tp, fp + match.fp, fn + match.fn
            iou_sum += match.mean_matched_iou * match.tp
        key = f"{threshold:.1f}"
        result[f"f1@{key}"] = 2 * tp / max(1, 2 * tp + fp + fn)
        result[f"ap@{key}"] = tp / max(1, tp + fp + fn)
        if threshold == 0.5:
            result["mean_iou"] = iou_sum / max(1, tp)
            result.update(n_true=tp + fn, n_pred=tp + fp)
    counts = [merges_and_splits(truth, pred) for truth, pred in pairs]
    result["merges"] = sum(c[0] for c in counts)
    result["splits"] = sum(c[1] for c in counts)
    return result


def planes(array: np.ndarray) -> list[np.ndarray]:
    """2D planes of an image or a stack."""
    return list(np.asarray(array).reshape(-1, *np.shape(array)[-2:]))


def score_method(dataset: real_datasets.Dataset, labels: list) -> dict:
    """Score a method's predicted labels (one array per test item) on a dataset."""
    pairs = []
    for (_, truth, scored), pred in zip(dataset.test, labels, strict=True):
        regions = [None] * len(planes(truth)) if scored is None else planes(scored)
        for t, p, region in zip(planes(truth), planes(pred), regions, strict=True):
            pairs.append((t, keep_scored(p, region)))
    return score(pairs)


# ---------------------------------------------------------------------------------------------
# Methods
# ---------------------------------------------------------------------------------------------


def run_unetkit(
    dataset: real_datasets.Dataset,
    budget: float,
    keep: Path | None,
    steps: int | None = None,
    seed: int = 0,
    weightmap: str | None = None,
) -> MethodResult:
    """The product's defaults: train with a time limit, predict with the stored settings.

    ``steps`` trains for that many steps (epochs of 20) instead of the time limit, so that
    settings can be compared on equal work whatever the machine's load; ``weightmap`` replaces
    the default weight-map preset.
    """
    budget_settings = (
        {"epochs": None, "time_limit": budget}
        if steps is None
        else {"epochs": max(1, steps // 20), "steps_per_epoch": 20}
    )
    extra = {} if weightmap is None else {"weightmap": weightmap}
    config = TrainConfig(**budget_settings, seed=seed, channel_axis=dataset.channel_axis, **extra)
    pairs = [(image, labels) for image, labels, _ in dataset.train]
    regions = [region for _, _, region in dataset.train]
    start = time.perf_counter()
    result = train(pairs, config, regions=regions if any(r is not None for r in regions) else None)
    train_seconds = time.perf_counter() - start
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        save_model(keep / f"{dataset.name}.unet", result.model, result.description)
    predictor = Predictor(result.model, result.description)
    start = time.perf_counter()
    labels = [predictor.predict(image, dataset.channel_axis).labels for image, _, _ in dataset.test]
    return MethodResult(
        labels,
        train_seconds,
        time.perf_counter() - start,
        steps=result.steps_run,
        notes=_validation_note(result.best_score, result.description),
    )


def _validation_note(best: float | None, description: dict) -> str:
    """The best validation F1 and the instance settings chosen on validation data."""
    if best is None:
        return "no validation"
    settings = description.get("instances") or {}
    chosen = ", ".join(f"{k} {v}" for k, v in settings.items() if k != "grow")
    return f"best val F1 {best:.3f}; instances: {chosen}"


def forward_whole(model: torch.nn.Module, image_cyx: np.ndarray) -> np.ndarray:
    """Foreground probability of one normalised slice, the whole slice at once."""
    height, width = image_cyx.shape[-2:]
    step = 2**model.config.depth
    pad = (0, -width % step, 0, -height % step)
    with torch.inference_mode():
        x = F.pad(torch.from_numpy(np.ascontiguousarray(image_cyx))[None], pad, mode="reflect")
        logits = model(x)[0, :, :height, :width]
    return torch.softmax(logits, dim=0)[1].numpy()


def run_seed(dataset: real_datasets.Dataset, budget: float, seed: int = 0) -> MethodResult:
    """Sigmoid + BCE on the foreground mask, random crops, constant learning rate, last model."""
    start = time.perf_counter()
    config = TrainConfig()
    pairs = [(image, labels) for image, labels, _ in dataset.train]
    regions = [region for _, _, region in dataset.train]
    data = prepare_training_data(
        pairs,
        channel_axis=dataset.channel_axis,
        regions=regions if any(r is not None for r in regions) else None,
        weightmap=PLAIN_MASK,
        normalization=config.normalization,
    )
    slices = [item for item in data.slices if item.shape[0] >= 128 and item.shape[1] >= 128]
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    model = UNet(config.model_config(slices[0].image.shape[0], 2))
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=1e-4)
    p, steps = 128, 0
    model.train()
    while time.perf_counter() - start < budget:
        images, masks, weights = [], [], []
        for _ in range(config.batch_size):
            item = slices[rng.integers(len(slices))]
            y = rng.integers(item.shape[0] - p + 1)
            x = rng.integers(item.shape[1] - p + 1)
            images.append(item.image[:, y : y + p, x : x + p])
            masks.append(item.target[y : y + p, x : x + p] > 0)
            weights.append(item.weights[y : y + p, x : x + p] > 0)
        logits = model(torch.from_numpy(np.stack(images).astype(np.float32)))
        loss = F.binary_cross_entropy_with_logits(
            logits[:, 1] - logits[:, 0],
            torch.from_numpy(np.stack(masks).astype(np.float32)),
            weight=torch.from_numpy(np.stack(weights).astype(np.float32)),
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        steps += 1
    model.eval()
    train_seconds = time.perf_counter() - start
    start = time.perf_counter()
    test = prepare_training_data(
        [(image, truth) for image, truth, _ in dataset.test],
        channel_axis=dataset.channel_axis,
        weightmap=PLAIN_MASK,
        normalization=config.normalization,
        require_contrast=False,
    )
    labels, k = [], 0
    for _, truth, _ in dataset.test:
        out = []
        for _ in planes(truth):
            probability = forward_whole(model, test.slices[k].image)
            out.append(ndi.label(probability > 0.5)[0])
            k += 1
        labels.append(np.stack(out).reshape(np.shape(truth)))
    return MethodResult(labels, train_seconds, time.perf_counter() - start, steps=steps)


def _grey(image_cyx: np.ndarray) -> np.ndarray:
    return image_cyx.astype(np.float32).mean(axis=0)


def classical_parameters(dataset: real_datasets.Dataset) -> tuple[bool, int]:
    """Polarity (objects brighter than the rest?) and peak distance, from the training labels."""
    inside, outside, radii = [], [], []
    for image, labels, region in dataset.train:
        image_slices = [s for _, s in iter_slices(np.asarray(image), dataset.channel_axis)]
        region_planes = planes(region) if region is not None else [None] * len(image_slices)
        for image_cyx, plane, reg in zip(image_slices, planes(labels), region_planes, strict=True):
            grey = _grey(image_cyx)
            known = np.ones(plane.shape, bool) if reg is None else reg
            inside.append(grey[(plane > 0) & known].mean())
            outside.append(grey[(plane == 0) & known].mean())
            areas = np.bincount(plane.ravel())[1:]
            radii.extend(np.sqrt(areas[areas > 0] / np.pi))
    bright = float(np.mean(inside)) > float(np.mean(outside))
    return bright, max(2, round(0.5 * float(np.median(radii))))


def classical_instances(grey: np.ndarray, bright: bool, min_distance: int) -> np.ndarray:
    """Otsu threshold and distance-transform watershed of one 2D image."""
    smooth = gaussian(grey, sigma=2, preserve_range=True)
    level = threshold_otsu(smooth)
    foreground = smooth > level if bright else smooth < level
    foreground = ndi.binary_fill_holes(foreground)
    distance = ndi.distance_transform_edt(foreground)
    components = ndi.label(foreground)[0]
    peaks = peak_local_max(distance, min_distance=min_distance, labels=components)
    markers = np.zeros(grey.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    return watershed(-distance, markers, mask=foreground)


def run_classical(dataset: real_datasets.Dataset) -> MethodResult:
    """Otsu + watershed on every test slice."""
    start = time.perf_counter()
    bright, min_distance = classical_parameters(dataset)
    train_seconds = time.perf_counter() - start
    start = time.perf_counter()
    labels = []
    for image, truth, _ in dataset.test:
        out = [
            classical_instances(_grey(s), bright, min_distance)
            for _, s in iter_slices(np.asarray(image), dataset.channel_axis)
        ]
        labels.append(np.stack(out).reshape(np.shape(truth)))
    notes = f"{'bright' if bright else 'dark'} objects, peaks {min_distance} px apart"
    return MethodResult(labels, train_seconds, time.perf_counter() - start, notes=notes)


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------


def figure(dataset: real_datasets.Dataset, results: dict, path: Path) -> None:
    """Truth (green) and prediction (magenta) outlines on the first test slice, per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    image, truth, scored = dataset.test[0]
    index = len(planes(truth)) - 1
    grey = _grey(list(iter_slices(np.asarray(image), dataset.channel_axis))[index][1])
    truth2d = planes(truth)[index]
    low, high = np.percentile(grey, (1, 99.8))
    fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 5.4))
    for ax, (name, result) in zip(np.atleast_1d(axes), results.items(), strict=True):
        pred = planes(result.labels[0])[index]
        if scored is not None:
            pred = keep_scored(pred, planes(scored)[index])
        rgb = np.repeat(((np.clip(grey, low, high) - low) / (high - low + 1e-9))[..., None], 3, -1)
        rgb[find_boundaries(truth2d, mode="inner")] = (0.1, 0.9, 0.1)
        rgb[find_boundaries(pred, mode="inner")] = (0.95, 0.1, 0.95)
        ax.imshow(rgb)
        ax.set_title(f"{dataset.name}: {name}")
        ax.axis("off")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def table(rows: list[dict]) -> str:
    """Markdown table of every dataset and method."""
    head = (
        "| dataset | method | F1@0.5 | F1@0.7 | F1@0.9 | AP@0.5 | AP@0.7 | AP@0.9 | mean IoU "
        "| true / pred | merges | splits | train s | predict s |"
    )
    lines = [head, "|" + " --- |" * 14]
    for row in rows:
        s = row["scores"]
        lines.append(
            f"| {row['dataset']} | {row['method']} | {s['f1@0.5']:.3f} | {s['f1@0.7']:.3f} "
            f"| {s['f1@0.9']:.3f} | {s['ap@0.5']:.3f} | {s['ap@0.7']:.3f} | {s['ap@0.9']:.3f} "
            f"| {s['mean_iou']:.3f} | {s['n_true']} / {s['n_pred']} | {s['merges']} "
            f"| {s['splits']} | {row['train_seconds']:.0f} | {row['predict_seconds']:.1f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    """Run every method on every dataset; print the table and write JSON / figures on request."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--budget", type=float, default=90.0, help="training seconds per method")
    parser.add_argument("--datasets", default=",".join(real_datasets.DATASETS))
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--figures", type=Path, default=None, help="folder for the PNG panels")
    parser.add_argument("--keep", type=Path, default=None, help="folder to keep unetkit models")
    parser.add_argument(
        "--steps", type=int, default=None, help="unetkit only: train N steps, not --budget s"
    )
    parser.add_argument("--seed", type=int, default=0, help="unetkit only: training seed")
    parser.add_argument("--weightmap", default=None, help="unetkit only: a weight-map preset")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    methods = args.methods.split(",")
    rows, datasets = [], {}
    total = time.perf_counter()
    for name in args.datasets.split(","):
        try:
            dataset = real_datasets.DATASETS[name]()
        except real_datasets.MissingData as error:
            sys.exit(f"real_data: {error}")
        datasets[name] = dataset.description
        print(f"== {name}: {dataset.description} [{dataset.grade}]", flush=True)
        results = {}
        for method in methods:
            if method == "unetkit":
                results[method] = run_unetkit(
                    dataset, args.budget, args.keep, args.steps, args.seed, args.weightmap
                )
            elif method == "seed":
                results[method] = run_seed(dataset, args.budget)
            else:
                results[method] = run_classical(dataset)
            scores = score_method(dataset, results[method].labels)
            result = results[method]
            rows.append(
                {
                    "dataset": name,
                    "method": method,
                    "scores": scores,
                    "train_seconds": result.train_seconds,
                    "predict_seconds": result.predict_seconds,
                    "steps": result.steps,
                    "notes": result.notes,
                }
            )
            notes = f", {result.notes}" if result.notes else ""
            print(
                f"   {method:<10} F1@0.5 {scores['f1@0.5']:.3f}  AP@0.5 {scores['ap@0.5']:.3f}  "
                f"mean IoU {scores['mean_iou']:.3f}  merges {scores['merges']}  "
                f"splits {scores['splits']}  ({result.train_seconds:.0f} s train, "
                f"{result.predict_seconds:.1f} s predict{notes})",
                flush=True,
            )
        if args.figures is not None:
            figure(dataset, results, args.figures / f"real_data_{name}.png")
    print()
    print(table(rows))
    report = {
        "budget": args.budget,
        "threads": torch.get_num_threads(),
        "seconds": time.perf_counter() - total,
        "datasets": datasets,
        "rows": rows,
    }
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
