"""The training loop of one run (:class:`Run`): steps, epochs, validation, saving.

:class:`Run` takes a :class:`~napari_unetkit.training.setup.Setup` and trains until the
epochs or the time limit are used up (its :class:`~napari_unetkit.training.budget.Budget`
says when) or ``cancel`` is set (see :func:`napari_unetkit.training.train` for the budget and
cancel contract). It keeps the weights of the best validated epoch, writes
them (with the model description) atomically whenever they improve, calibrates the instance
settings at the end and returns a :class:`~napari_unetkit.training.events.TrainResult`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from napari_unetkit import __version__, lazydata
from napari_unetkit import data as data_module
from napari_unetkit.augmentation import AugmentationSettings
from napari_unetkit.calibration import ValidationMap, calibrate_instances, candidate_settings
from napari_unetkit.device import autocast_context, describe_device
from napari_unetkit.losses import training_loss
from napari_unetkit.modelfile import ModelDescription, read_description, save_model
from napari_unetkit.progress import Cancelled
from napari_unetkit.speed.inference import uses_channels_last
from napari_unetkit.training.budget import Budget
from napari_unetkit.training.events import (
    NOTHING_SAVED,
    EpochHook,
    ProgressCallback,
    TrainProgress,
    TrainResult,
)
from napari_unetkit.training.schedule import learning_rate_at, make_optimizer
from napari_unetkit.training.setup import Setup
from napari_unetkit.training.validation import Validator

#: Consecutive steps with a non-finite loss after which training is declared diverged.
MAX_NON_FINITE_STEPS = 20


def _plain(value: Any) -> Any:
    """Python scalars for NumPy ones (for JSON)."""
    if isinstance(value, np.generic):
        return value.item()
    return value


class Run:
    """State and loop of one training run (see :func:`train`)."""

    def __init__(
        self,
        setup: Setup,
        progress: ProgressCallback | None,
        cancel,
        on_epoch_end: EpochHook | None = None,
    ) -> None:
        self.s = setup
        self.config = setup.config
        self.model = setup.model
        self.progress = progress
        self.cancel = cancel
        self.on_epoch_end = on_epoch_end
        lazy = isinstance(setup.train_slices, lazydata.LazyTrainingSet)
        sampler = lazydata.LazyPatchSampler if lazy else data_module.PatchSampler
        self.sampler = sampler(
            setup.train_slices,
            patch_size=self.config.patch_size,
            foreground_bias=self.config.foreground_bias,
            augmentation=self.config.augmentation or AugmentationSettings.off(),
            seed=self.config.seed,
        )
        self.optimizer = make_optimizer(self.model, self.config)
        fp16 = setup.amp_type == torch.float16
        self.scaler = torch.amp.GradScaler(setup.device.type) if fp16 else None
        self.validator = Validator(
            setup.val_slices,
            self.config.mode,
            setup.data.n_classes,
            setup.device,
            setup.amp,
            setup.amp_type,
        )
        self.first_epoch = len(setup.previous_history)
        self.history: list[dict] = []
        self.steps_run = 0
        self.epoch_steps = 0
        self.epoch_loss_sum = 0.0
        self.epoch_loss_n = 0
        self.non_finite = 0
        self.lr = 0.0
        self.best_state: dict | None = None
        self.best_entry: dict | None = None
        self.best_maps: list[ValidationMap] = []
        self.instance_settings = self.validator.instance_settings
        self.calibration: dict | None = None
        self.model_path: Path | None = None
        self.budget = Budget(
            epochs=self.config.epochs,
            time_limit=self.config.time_limit,
            steps_per_epoch=setup.steps_per_epoch,
            start=setup.start,
            train_start=time.perf_counter(),
        )
        self.step_seconds = 0.0  # total duration of the steps (validation excluded)
        self.stopped_by: str | None = None

    # ------------------------------------------------------------------ budget and timing

    @property
    def elapsed(self) -> float:
        """Seconds since :func:`~napari_unetkit.training.train` was called."""
        return self.budget.elapsed()

    @property
    def n_epochs(self) -> int | None:
        """The last epoch number when ``epochs`` bounds the run, else ``None``."""
        epochs = self.config.epochs
        return None if epochs is None else self.first_epoch + epochs

    def time_is_up(self) -> bool:
        """Whether the time limit leaves no room for another step plus a validation.

        The first step always runs, so every run trains (and validates) at least once.
        """
        return self.budget.time_is_up(self.steps_run, self.step_seconds, self._after_step)

    def _after_step(self, step_seconds: float) -> float:
        """Seconds the final validation and calibration need (none without validation)."""
        if not self.s.val_slices:
            return 0.0
        validation = self.validator.seconds or self.first_validation_estimate(step_seconds)
        return validation + self.calibration_estimate()

    def first_validation_estimate(self, step_seconds: float) -> float:
        """Estimate a validation's seconds before the first one has run.

        The validation pixels at the speed of a training step's forward pass (about a third of
        the step's time).
        """
        pixels = sum(s.shape[0] * s.shape[1] for s in self.s.val_slices)
        per_step = self.config.batch_size * self.config.patch_size**2
        return step_seconds / 3 * pixels / per_step

    def calibration_estimate(self) -> float:
        """Seconds the instance calibration at the end will take (from the last validation)."""
        if self.config.mode != "instances":
            return 0.0
        return (len(candidate_settings(self.instance_settings)) + 2) * self.validator.post_seconds

    def eta(self) -> float | None:
        """Estimated seconds left (the smaller of the epoch and time-limit estimates)."""
        validations_left = (self.n_epochs or 0) - self.first_epoch - len(self.history)
        return self.budget.eta(
            self.steps_run, self.step_seconds, validations_left, self.validator.seconds
        )

    @property
    def current_epoch(self) -> int:
        """Number of the epoch in progress (continuing a resumed file's count)."""
        return self.first_epoch + len(self.history) + 1

    # ------------------------------------------------------------------ reporting

    def report(self, stage: str, message: str = "", epoch: int | None = None) -> None:
        """Send a progress event (``epoch`` defaults to the one in progress or just done)."""
        if self.progress is None:
            return
        if epoch is None:
            in_progress = stage in ("training", "validating")
            epoch = self.current_epoch if in_progress else self.first_epoch + len(self.history)
        last = self.history[-1] if self.history else {}
        best = self.best_entry.get("score") if self.best_entry else None
        mean = self.epoch_loss_sum / self.epoch_loss_n if self.epoch_loss_n else None
        self.progress(
            TrainProgress(
                stage=stage,
                epoch=epoch,
                n_epochs=self.n_epochs,
                step=self.epoch_steps,
                steps_per_epoch=self.s.steps_per_epoch,
                total_steps_estimate=self.budget.total_steps_estimate(self.steps_run),
                train_loss=mean if stage == "training" else last.get("train_loss", mean),
                val_loss=last.get("val_loss"),
                metrics={k: last[k] for k in ("val_f1", "val_iou", "score") if k in last},
                best_score=best,
                elapsed=self.elapsed,
                eta=self.eta(),
                message=message,
            )
        )

    # ------------------------------------------------------------------ one step

    def step(self) -> None:
        """One optimiser step on a fresh batch of patches."""
        images, targets, weights = self.sampler.sample_batch(self.config.batch_size)
        self.lr = learning_rate_at(self.config, self.budget.fraction_used(self.steps_run))
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr
        self.steps_run += 1
        self.epoch_steps += 1
        if not np.any(weights > 0):
            return  # nothing annotated in this batch: no update (never a NaN loss)
        device = self.s.device
        x = torch.from_numpy(images).to(device)
        if uses_channels_last(device):
            x = x.contiguous(memory_format=torch.channels_last)
        t = torch.from_numpy(targets).to(device)
        w = torch.from_numpy(weights).to(device)
        with autocast_context(device, self.s.amp, self.s.amp_type):
            logits = self.model(x)
        loss = training_loss(
            logits,
            t,
            w,
            self.config.loss,
            include_background=self.config.mode == "classes",
            dice_weight=self.config.dice_weight,
        )
        self.optimizer.zero_grad(set_to_none=True)
        if not torch.isfinite(loss):
            self._non_finite()
            return
        self.non_finite = 0
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()
        self.epoch_loss_sum += float(loss.detach())
        self.epoch_loss_n += 1

    def _non_finite(self) -> None:
        self.non_finite += 1
        if self.non_finite >= MAX_NON_FINITE_STEPS:
            raise FloatingPointError(
                f"Training diverged: the loss was not finite for {MAX_NON_FINITE_STEPS} steps in "
                f"a row. Lower the learning rate (now {self.config.learning_rate:g})."
            )

    # ------------------------------------------------------------------ epochs

    def run_epoch(self) -> None:
        """Run the steps of one epoch, stopping early for cancel or the time limit."""
        self.epoch_steps = 0
        self.epoch_loss_sum, self.epoch_loss_n = 0.0, 0
        for _ in range(self.s.steps_per_epoch):
            if self.cancel is not None and self.cancel.is_set():
                self.stopped_by = "cancel"
                return
            if self.time_is_up():
                self.stopped_by = "time_limit"
                return
            started = time.perf_counter()
            self.step()
            self.step_seconds += time.perf_counter() - started
            self.report("training")

    def finish_epoch(self) -> None:
        """Validate the epoch just trained, record it and keep/save the best model."""
        entry = {
            "epoch": self.current_epoch,
            "steps": self.epoch_steps,
            "train_loss": self.epoch_loss_sum / self.epoch_loss_n if self.epoch_loss_n else None,
        }
        if self.s.val_slices:
            self.report("validating", f"validating epoch {entry['epoch']}")
            try:
                scores = self.validator.run(self.model, self.predictor_description(), self.cancel)
            except Cancelled:
                self.stopped_by = "cancel"
                return
            entry.update(scores)
        entry["lr"] = self.lr
        entry["elapsed"] = self.elapsed
        self.history.append({k: _plain(v) for k, v in entry.items()})
        if self._improved(entry):
            self.best_entry = entry
            self.best_maps = self.validator.maps
            self.best_state = {
                k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()
            }
            self.save(stage_message=f"saving the best model (epoch {entry['epoch']})")
        if self.on_epoch_end is not None:
            self.on_epoch_end(self.model, dict(self.history[-1]))
        self.report("training", self._epoch_message(entry), epoch=entry["epoch"])

    def _improved(self, entry: dict) -> bool:
        if self.best_entry is None or "score" not in entry:
            return True
        best, score = self.best_entry["score"], entry["score"]
        if score != best:
            return score > best
        loss, best_loss = entry.get("val_loss"), self.best_entry.get("val_loss")
        return loss is not None and best_loss is not None and loss < best_loss

    def _epoch_message(self, entry: dict) -> str:
        text = f"epoch {entry['epoch']}"
        if entry.get("train_loss") is not None:
            text += f": loss {entry['train_loss']:.4f}"
        if entry.get("val_loss") is not None:
            text += f", val loss {entry['val_loss']:.4f}"
        if "val_f1" in entry:
            text += f", val F1 {entry['val_f1']:.3f}"
        elif "val_iou" in entry:
            text += f", val IoU {entry['val_iou']:.3f}"
        return text

    def run(self) -> TrainResult:
        """Train until the budget is used or cancel is set; return the result."""
        self.model.train()
        self.report("training", "training started")
        while self.stopped_by is None:
            if self.n_epochs is not None and len(self.history) >= self.config.epochs:
                self.stopped_by = "epochs"
                break
            self.run_epoch()
            if self.stopped_by == "cancel" and self.steps_run == 0:
                raise Cancelled(NOTHING_SAVED)  # nothing trained: keep any existing file
            if self.stopped_by == "cancel" or self.epoch_steps == 0:
                break
            self.finish_epoch()
        return self.finish()

    # ------------------------------------------------------------------ saving and result

    def calibrate(self) -> None:
        """Choose the instance settings on the best model's validation maps (instances mode)."""
        if self.config.mode != "instances" or not self.best_maps:
            return
        self.report("calibrating", "choosing the instance settings on the validation data")
        cancel = self.cancel
        settings, score, base_score = calibrate_instances(
            self.best_maps,
            self.instance_settings,
            should_stop=None if cancel is None else cancel.is_set,
        )
        self.instance_settings = settings
        self.calibration = {"val_f1": score, "val_f1_defaults": base_score}

    def predictor_description(self) -> dict:
        """Return the part of the description a validation predictor needs."""
        return {
            "mode": self.config.mode,
            "normalization": self.s.normalization.to_dict(),
            "class_names": self.s.class_names,
        }

    def description(self) -> ModelDescription:
        """Return the model description stored with the weights (see ``modelfile``)."""
        best = self.best_entry or {}
        s = self.s
        history = s.previous_history + self.history
        summary = s.data.summary()
        description = {
            "mode": self.config.mode,
            "n_classes": s.data.n_classes,
            "class_names": s.class_names,
            "in_channels": s.data.in_channels,
            "channel_axis": self.config.channel_axis,
            "channels": None
            if s.data.channels is None
            else {"used": s.data.channels, "of": s.data.source_channels},
            "normalization": s.normalization.to_dict(),
            "weightmap": None if s.data.weightmap is None else s.data.weightmap.to_dict(),
            "instances": self.instance_settings.to_dict()
            if self.config.mode == "instances"
            else None,
            "calibration": self.calibration,
            "training": self.config.to_dict(),
            "history": history,
            "epochs_trained": len(history),
            "metrics": {
                "best_validation_score": best.get("score"),
                "best_validation_metric": self._metric_name()
                if best.get("score") is not None
                else None,
                "best_epoch": best.get("epoch"),
                "val_loss": best.get("val_loss"),
                "val_f1": best.get("val_f1"),
                "val_iou": best.get("val_iou"),
                "val_objects": best.get("val_objects"),
            },
            "data": {
                "n_slices": summary["n_slices"],
                "n_training_slices": len(s.train_slices),
                "n_validation_slices": len(s.val_slices),
                "annotated_pixels": summary["annotated_pixels"],
                "class_pixels": summary["class_pixels"],
                "slice_shape_min": summary["slice_shape_min"],
                "slice_shape_max": summary["slice_shape_max"],
                "pairs": summary["pairs"],
            },
            "data_shapes": [p["image_shape"] for p in summary["pairs"]],
            "device": describe_device(s.device),
            "stopped_by": self.stopped_by,
            "steps_run": self.steps_run,
            "notes": list(s.notes),
        }
        if s.parent is not None:
            description["parent"] = s.parent  # the model this run was fine-tuned from
        return description

    def _metric_name(self) -> str:
        return "instance F1 at IoU 0.5" if self.config.mode == "instances" else "mean IoU"

    def save(self, stage_message: str) -> None:
        """Write the current model and its description to ``out`` atomically (if given)."""
        if self.s.out is None:
            return
        self.report("saving", stage_message)
        # The first save may not replace a file someone else wrote meanwhile; later saves
        # replace this run's own file.
        overwrite = self.s.overwrite or self.model_path is not None
        self.model_path = save_model(
            self.s.out, self.model, self.description(), overwrite=overwrite
        )

    def finish(self) -> TrainResult:
        """Load the best weights, write the final model file and build the result."""
        if self.stopped_by is None:
            self.stopped_by = "epochs"
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state)
        self.model.eval()
        self.calibrate()
        self.save(stage_message="saving the model")
        if self.model_path is not None:
            description = read_description(self.model_path)
        else:
            description = self.description()
            description["architecture"] = self.model.config.to_dict()
            description["package_version"] = __version__
        best = self.best_entry or {}
        self.report("done", f"training stopped ({self.stopped_by})")
        return TrainResult(
            model=self.model,
            description=description,
            history=list(self.s.previous_history) + list(self.history),
            best_score=best.get("score"),
            best_epoch=best.get("epoch"),
            epochs_run=len(self.history),
            steps_run=self.steps_run,
            elapsed=self.elapsed,
            stopped_by=self.stopped_by,
            model_path=self.model_path,
        )
