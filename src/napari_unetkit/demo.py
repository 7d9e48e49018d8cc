"""The Quick start's main job: train on built-in synthetic nuclei, predict, score, write files.

Everything is generated on the fly (no downloads) and deterministic by seed. The held-out test
image is never seen in training or validation, so the printed scores are honest.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from napari_unetkit.io import atomic_write, write_tiff
from napari_unetkit.metrics import evaluate
from napari_unetkit.prediction import Predictor
from napari_unetkit.synthetic import synthetic_nuclei
from napari_unetkit.training import TrainConfig, TrainResult, train
from napari_unetkit.weightmap import weights_and_target

#: Files the demo writes, by role.
DEMO_FILES = {
    "model": "model.unet",
    "image": "test_image.tif",
    "truth": "test_truth.tif",
    "prediction": "test_prediction.tif",
    "weights": "test_truth_weights.tif",
    "overlay": "overlay.png",
    "scores": "scores.json",
}
#: Training budget of the demo in seconds (the Quick start promises about two minutes).
DEMO_TIME_LIMIT = 90.0
TRAIN_SHAPE = (256, 256)
TEST_SHAPE = (384, 384)
N_TRAIN_IMAGES = 3


@dataclass
class DemoResult:
    """What :func:`run_demo` produced.

    Attributes
    ----------
    folder : pathlib.Path
        The output folder.
    files : dict
        Role -> written file (see :data:`DEMO_FILES`).
    scores : dict
        Scores of the prediction on the held-out test image (:func:`metrics.evaluate`).
    training : TrainResult
        The training run.
    """

    folder: Path
    files: dict[str, Path]
    scores: dict
    training: TrainResult


def demo_data(seed: int = 0) -> tuple[list[tuple], list[tuple], tuple]:
    """Return (training pairs, validation pairs, test pair) of synthetic nuclei."""
    train_pairs = [synthetic_nuclei(TRAIN_SHAPE, seed=seed + i) for i in range(N_TRAIN_IMAGES)]
    validation = [synthetic_nuclei(TRAIN_SHAPE, seed=seed + 100)]
    test = synthetic_nuclei(TEST_SHAPE, seed=seed + 1000)
    return train_pairs, validation, test


def overlay_image(image: np.ndarray, labels: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Return an RGB uint8 picture: image with predicted outlines | weight map.

    Parameters
    ----------
    image : numpy.ndarray
        The grey image.
    labels : numpy.ndarray
        Predicted instance labels (outlined in yellow).
    weights : numpy.ndarray
        Boundary weight map (shown with the inferno colormap).
    """
    from matplotlib import colormaps
    from skimage.segmentation import find_boundaries

    low, high = np.percentile(image, [1, 99.8])
    grey = np.clip((image - low) / max(high - low, 1e-6), 0, 1)
    left = np.repeat(grey[..., None], 3, axis=-1)
    left[find_boundaries(labels, mode="inner")] = (1.0, 0.85, 0.0)
    right = colormaps["inferno"](weights / max(float(weights.max()), 1e-6))[..., :3]
    gap = np.ones((image.shape[0], 8, 3))
    return (np.concatenate([left, gap, right], axis=1) * 255).round().astype(np.uint8)


def _write_png(path: Path, rgb: np.ndarray, overwrite: bool) -> None:
    from matplotlib.image import imsave

    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; pass --overwrite to replace it.")
    with atomic_write(path) as handle:
        imsave(handle, rgb, format="png")


def run_demo(
    folder: str | Path,
    *,
    time_limit: float = DEMO_TIME_LIMIT,
    seed: int = 0,
    overwrite: bool = False,
    config: TrainConfig | None = None,
    progress: Callable | None = None,
    cancel: threading.Event | None = None,
) -> DemoResult:
    """Train a U-Net on synthetic nuclei, predict a held-out image and write the results.

    Parameters
    ----------
    folder : str or pathlib.Path
        Output folder (created if missing).
    time_limit : float
        Training budget in seconds.
    seed : int
        Seed of the data and the training.
    overwrite : bool
        Replace files of an earlier demo in ``folder``; otherwise existing files are an error.
    config : TrainConfig, optional
        Training settings; default: :class:`TrainConfig` defaults with ``time_limit``.
    progress : callable, optional
        Receives the trainer's :class:`~napari_unetkit.training.TrainProgress` events.
    cancel : threading.Event, optional
        Stops training early (the best model so far is used).

    Returns
    -------
    DemoResult
        The written files and the scores on the test image.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    files = {role: folder / name for role, name in DEMO_FILES.items()}
    existing = [path.name for path in files.values() if path.exists()]
    if existing and not overwrite:
        raise FileExistsError(
            f"{folder} already holds demo results ({', '.join(existing)}); "
            "pass --overwrite to replace them."
        )
    train_pairs, validation, (test_image, test_truth) = demo_data(seed)
    config = config or TrainConfig()
    config = replace(config, epochs=None, time_limit=time_limit, seed=seed)
    result = train(
        train_pairs,
        config,
        out=files["model"],
        validation=validation,
        progress=progress,
        cancel=cancel,
    )
    prediction = Predictor(result.model, result.description).predict(test_image).labels
    weights, _ = weights_and_target(test_truth, settings=config.weightmap_settings())
    scores = evaluate(test_truth, prediction)

    write_tiff(files["image"], test_image, overwrite=True)
    write_tiff(files["truth"], test_truth, overwrite=True, labels=True)
    write_tiff(files["prediction"], prediction, overwrite=True, labels=True)
    write_tiff(files["weights"], weights, overwrite=True)
    _write_png(files["overlay"], overlay_image(test_image, prediction, weights), overwrite=True)
    summary = {
        "test_scores": scores,
        "best_validation_score": result.best_score,
        "epochs": result.epochs_run,
        "steps": result.steps_run,
        "training_seconds": result.elapsed,
        "stopped_by": result.stopped_by,
    }
    with atomic_write(files["scores"], mode="w") as handle:
        json.dump(summary, handle, indent=2, default=float)
    return DemoResult(folder=folder, files=files, scores=scores, training=result)
