"""Scoring a model on whole validation slices: validation loss, instance F1 or mean IoU.

:class:`Validator` runs the model (in eval mode, restored afterwards) on each held-out slice
and returns the epoch's metrics; in instances mode it also keeps the probability maps that
the calibration of the instance settings reuses after training.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from napari_unetkit import metrics, postprocess
from napari_unetkit.calibration import ValidationMap
from napari_unetkit.device import autocast_context
from napari_unetkit.model import UNet
from napari_unetkit.prediction import Predictor
from napari_unetkit.progress import Cancelled

#: Validation slices up to this many pixels run in one forward pass; larger ones are tiled.
MAX_DIRECT_VALIDATION_PIXELS = 512 * 512
#: Smallest probability used in the validation loss (keeps ``-log p`` finite).
MIN_PROBABILITY = 1e-7


@dataclass
class _Counts:
    """Sums over the validation slices from which the epoch's scores are computed."""

    loss_sum: float = 0.0
    weight_sum: float = 0.0
    tp: int = 0
    n_true: int = 0
    n_pred: int = 0
    intersections: np.ndarray | None = None
    unions: np.ndarray | None = None

    def add_overlap(self, truth: np.ndarray, pred: np.ndarray, n: int) -> None:
        """Count per-class intersections and unions of two class-index images."""
        truth, pred = truth.ravel(), pred.ravel()
        inter = np.bincount(truth[truth == pred], minlength=n)[:n]
        union = np.bincount(truth, minlength=n)[:n] + np.bincount(pred, minlength=n)[:n] - inter
        if self.intersections is None:
            self.intersections, self.unions = inter, union
        else:
            self.intersections = self.intersections + inter
            self.unions = self.unions + union


def _iou_per_class(counts: _Counts) -> np.ndarray:
    """IoU of each counted class; NaN where a class is absent from both truth and prediction."""
    unions = counts.unions.astype(np.float64)
    return np.where(unions > 0, counts.intersections / np.maximum(unions, 1), np.nan)


def _validation_loss(probs: np.ndarray, target: np.ndarray, weights: np.ndarray) -> float:
    """Sum over pixels of ``w * -log p[target]`` (the weighted cross-entropy numerator)."""
    annotated = weights > 0
    safe = np.where(annotated, target, 0)
    p_true = np.take_along_axis(probs, safe[np.newaxis].astype(np.intp), axis=0)[0]
    nll = -np.log(np.maximum(p_true, MIN_PROBABILITY))
    return float(np.sum(nll * weights, dtype=np.float64))


def _annotated_instances(sl, annotated: np.ndarray, pred: np.ndarray) -> tuple:
    """Truth and predicted instances restricted to the annotated area of a slice."""
    truth = sl.instances
    if truth is None:
        truth = (sl.target == 1).astype(np.int32)
    if not annotated.all():
        truth = np.where(annotated, truth, 0)
        pred = np.where(annotated, pred, 0)
    return truth, pred


class Validator:
    """Scores the current model on whole validation slices."""

    def __init__(self, slices: list, mode: str, n_classes: int, device, amp: bool, amp_type):
        self.slices = slices
        self.mode = mode
        self.n_classes = n_classes
        self.device = device
        self.amp = amp
        self.amp_type = amp_type
        self.seconds = 0.0  # duration of the last validation
        #: How epochs are scored (instances mode); calibrated once training ends.
        self.instance_settings = postprocess.InstanceSettings()
        self.post_seconds = 0.0  # instance extraction and matching of the last validation
        self.maps: list[ValidationMap] = []  # the last validation's maps (instances mode)

    def probabilities(
        self, model: UNet, image: np.ndarray, description: dict, cancel
    ) -> np.ndarray:
        """Softmax probabilities ``(K, Y, X)`` of one normalised slice, model in eval mode."""
        if image.shape[1] * image.shape[2] > MAX_DIRECT_VALIDATION_PIXELS:
            # Mixed precision for validation only where training itself runs under autocast.
            precision = "auto" if self.amp else "float32"
            predictor = Predictor(model, description, device=self.device, precision=precision)
            return predictor.predict_slice(image, cancel=cancel)
        x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None].to(self.device)
        with torch.inference_mode(), autocast_context(self.device, self.amp, self.amp_type):
            logits = model(x)
        return torch.softmax(logits.float(), dim=1)[0].cpu().numpy()

    def run(self, model: UNet, description: dict, cancel) -> dict:
        """Validate; returns the epoch's metrics (raises Cancelled when cancel is set)."""
        start = time.perf_counter()
        was_training = model.training
        model.eval()
        counts = _Counts()
        self.maps, self.post_seconds = [], 0.0
        try:
            for sl in self.slices:
                if cancel is not None and cancel.is_set():
                    raise Cancelled("Validation was cancelled.")
                probs = self.probabilities(model, sl.image, description, cancel)
                self._count(sl, probs, counts)
        finally:
            model.train(was_training)
            self.seconds = time.perf_counter() - start
        return self._scores(counts)

    def _count(self, sl, probs: np.ndarray, counts: _Counts) -> None:
        weights = np.asarray(sl.weights, dtype=np.float32)
        annotated = weights > 0
        counts.loss_sum += _validation_loss(probs, sl.target, weights)
        counts.weight_sum += float(weights.sum(dtype=np.float64))
        if self.mode == "instances":
            started = time.perf_counter()
            pred = postprocess.instances_from_probabilities(
                probs[1], settings=self.instance_settings
            )
            truth, pred = _annotated_instances(sl, annotated, pred)
            truth_all = sl.instances if sl.instances is not None else (sl.target == 1)
            self.maps.append(
                ValidationMap(
                    probs[1].copy(),
                    np.asarray(truth_all, dtype=np.int32),
                    None if annotated.all() else annotated,
                )
            )
            match = metrics.match_instances(truth, pred, 0.5)
            counts.tp += match.tp
            counts.n_true += match.n_true
            counts.n_pred += match.n_pred
            counts.add_overlap((truth > 0).astype(np.intp), (pred > 0).astype(np.intp), 2)
            self.post_seconds += time.perf_counter() - started
        else:
            pred = np.argmax(probs, axis=0)
            counts.add_overlap(sl.target[annotated], pred[annotated], self.n_classes)

    def _scores(self, counts: _Counts) -> dict:
        loss = counts.loss_sum / counts.weight_sum if counts.weight_sum > 0 else None
        ious = _iou_per_class(counts)
        if self.mode == "instances":
            total = counts.n_true + counts.n_pred
            f1 = 2.0 * counts.tp / total if total else 1.0
            iou = 1.0 if np.isnan(ious[1]) else float(ious[1])
            return {
                "val_loss": loss,
                "val_f1": f1,
                "val_iou": iou,
                "val_objects": counts.n_true,
                "score": f1,
            }
        present = ious[~np.isnan(ious)]
        mean_iou = float(present.mean()) if present.size else 1.0
        per_class = [None if np.isnan(v) else float(v) for v in ious]
        return {
            "val_loss": loss,
            "val_iou": mean_iou,
            "val_class_iou": per_class,
            "score": mean_iou,
        }
