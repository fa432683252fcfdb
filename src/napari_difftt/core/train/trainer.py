"""The trainer: the step loop as a stream of events, validation, checkpoints, resume.

A :class:`Trainer` draws random patches (:func:`core.data.sample_patch`), runs the template
transformer on them, and minimises the binary cross-entropy of its output against the labels
(:func:`core.models.segmentation_loss`: voxels labelled ``ignore_value`` — sparse annotations —
are left out) plus the model's optional λ‖∇u‖² penalty. Adam + cosine annealing to 0
over ``iterations`` (the paper's defaults). Resuming with more ``iterations`` than the
checkpoint's run restarts the cosine (a warm restart): from the run's ``lr`` down to 0 over the
new remaining steps; resuming with the same ``iterations`` continues the schedule exactly.
Validation predicts whole volumes (:func:`core.inference.predict_volume`) and reports the Dice
coefficient.

Fine-tuning and sparse labels (docs/RESULTS.md, "Sparse annotations"): ``init`` warm-starts the
network from a checkpoint of the same kind and dimensionality (its architecture and weights,
read in this run's velocity space, which holds no weights; the prior is re-fitted to the
training labels unless ``keep_prior``); ``painted_axis`` turns
each training label array into painted slices (:func:`core.slices.painted_slices`); sparse
labels fit the prior by :func:`core.slices.fit_to_slices`, deepened to the organ seen in the
image (``image_depth``; None: when fine-tuning, where docs/RESULTS.md, "The organ's depth from
the image", measured it better; it cost fresh models on lobed organs). A time budget
``minutes`` ends the run when the training steps (validation and checkpoint writing excluded)
have taken that long, or at ``iterations``, whichever comes first; the cosine then follows the
progress f = max(step / iterations, seconds / budget): lr = lr₀ · ½(1 + cos πf), so it
reaches 0 as the budget runs out.

Under ``torchrun`` (:class:`.distributed.Distributed`) each rank draws different patches
(seed + rank) and only rank 0 validates, prints and writes checkpoints
(:func:`.checkpoint.training_payload`). A stop request on any rank stops every rank at the
same step.
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...errors import CheckpointError, IncompatibleCheckpoint, NoForegroundWarning
from ..atomic import check_space, lifted_file_size_limit, remove_stale_temporaries
from ..data import Patch, Sample, check_segmentable, mirrored, sample_patch
from ..device import resolve_device
from ..flow.velocity import DEFAULT_LATTICE, VelocitySpace
from ..inference import predict_volume
from ..io import check_output_file, encode_checkpoint, load_checkpoint, save_checkpoint
from ..metrics import dice
from ..models import TemplateTransformer, pose_mask_on_image, segmentation_loss
from ..prior import GeneralisedGaussianPrior, fit_to_mask
from ..slices import (
    annotated_slices,
    image_mask_targets,
    image_segmentation_targets,
    painted_sample,
    slice_fits,
)
from .calibration import calibrated_threshold
from .checkpoint import resumable, training_payload
from .config import FINE_TUNE_SMOOTHNESS, SPARSE_FLOW_FEATURE_LEVELS, TrainConfig
from .distributed import Distributed

__all__ = ["SPARSE_FRACTION", "TrainEvent", "TrainResult", "Trainer", "build_model",
           "fitted_prior", "load_init", "prior_masks", "resolve_mirror", "sparse_feature_level",
           "sparse_lattice"]

@dataclass(frozen=True)
class TrainEvent:
    """One training step done (``step`` of ``total``); optional validation and checkpoint."""

    step: int
    total: int
    loss: float
    val_dice: float | None = None
    checkpoint: Path | None = None
    preview: np.ndarray | None = None  # (*S) float32 probability of the first validation volume
    stopped: bool = False  # the run ends here because a stop was requested
    fraction: float = 0.0  # of the run done: max(step / total, seconds / time budget)


@dataclass
class TrainResult:
    """Summary of a finished (or stopped) run."""

    step: int
    total: int
    loss: float
    val_dice: float | None
    checkpoint: Path | None
    stopped: bool
    seconds: float
    history: list[dict] = field(default_factory=list)  # {"step", "loss"[, "val_dice"]} per step
    unsaved: str | None = None  # why config.checkpoint could not be written (``checkpoint`` is
    # then the copy saved in the system's temp folder); None when it was


class Trainer:
    """Train a :class:`TemplateTransformer` on ``train`` samples, validating on ``val``.

    ``resume`` (a checkpoint path) restores model, optimizer, scheduler, step and RNG states; the
    model architecture comes from the checkpoint, whose kind must match ``config.kind``.

    Before the first step the checkpoint's folder must hold a checkpoint (its real size, Adam's
    moments included): :class:`~napari_difftt.errors.DiskFull` otherwise, naming MB needed and
    free. A save that fails later (a full disk, a file-size limit, a permission changed) does not
    stop the run: the next save tries again with the newer state, and the last one, if it fails
    too, writes the checkpoint into the system's temp folder (:func:`tempfile.gettempdir`),
    logs where, and reports it in :attr:`TrainResult.unsaved`.
    """

    def __init__(
        self,
        config: TrainConfig,
        train: Sequence[Any],
        val: Sequence[Any] = (),
        *,
        resume: str | os.PathLike | None = None,
        log: Callable[[str], None] | None = None,
    ) -> None:
        if not isinstance(config, TrainConfig):
            raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
        self._log = log if log is not None else (lambda message: None)
        self.train = list(train)
        self.val = list(val)
        if config.painted_axis is not None:
            self.train = [painted_sample(s, config.painted_axis, config.ignore_value)
                          for s in self.train]
        _check_samples("train", self.train, config.ndim, config.ignore_value)
        _check_samples("val", self.val, config.ndim, config.ignore_value)
        config = sparse_lattice(config, self.train, self._log)
        config = sparse_feature_level(config, self.train, self._log)
        config = resolve_mirror(config, self.train, self._log)
        if config.image_depth is None:  # measured: helps fine-tuning, costs fresh lobed organs
            config = replace(config, image_depth=config.init is not None)
        if config.image_mask is None:
            config = replace(config, image_mask=config.image_depth)
        if config.image_segmentation is None:
            config = replace(config, image_segmentation=config.image_mask)
        if config.calibrate is None:  # measured: fresh flow models on dense labels
            config = replace(config, calibrate=config.kind != "unet" and config.init is None
                             and _labelled_fraction(config, self.train) >= SPARSE_FRACTION)
        if config.smoothness is None:  # measured: keeps fine-tunes and 2D models fold-free
            config = replace(config, smoothness=FINE_TUNE_SMOOTHNESS if config.init
                             else config.fresh_smoothness())
        self.config = config
        if config.image_mask or config.image_segmentation:
            self.train = with_image_targets(self.train, config.ignore_value, self._log,
                                            mask=config.image_mask,
                                            segmentation=config.image_segmentation)
        if config.checkpoint is not None:
            check_output_file(config.checkpoint, overwrite=True, what="checkpoint")
        self.ddp = Distributed()
        self.device = self.ddp.place(resolve_device(config.device))
        self._stop = threading.Event()
        self._resume = Path(resume) if resume is not None else None
        if resume is not None and config.init is not None:
            raise ValueError("give either resume (continue a run) or init (warm-start a new "
                             "one), not both")
        self._init = None if config.init is None else load_init(config.init, config)
        self.config = replace(self.config, feature_level=_feature_level(self.config, self._init))
        self._ready = False
        self.step = 0
        self.history: list[dict] = []
        self.elapsed = 0.0
        self.last_val_dice: float | None = None
        self.unsaved: str | None = None  # why the last save of config.checkpoint failed
        # the checkpoint of this step that could not be written (its tensors share the live
        # weights' storage: only rescued before another step runs)
        self._pending: dict | None = None

    # ---------------------------------------------------------------- public API
    @property
    def is_main(self) -> bool:
        """True on the process that validates, prints and writes checkpoints (rank 0)."""
        return self.ddp.is_main

    @property
    def rank(self) -> int:
        return self.ddp.rank

    @property
    def world_size(self) -> int:
        return self.ddp.world_size

    def stop(self) -> None:
        """Ask the run to stop after the current step (it saves a checkpoint first)."""
        self._stop.set()

    def events(self, should_stop: Callable[[], bool] | None = None) -> Iterator[TrainEvent]:
        """Train, yielding one :class:`TrainEvent` per step; the last one carries the checkpoint.

        A stop (``should_stop()`` true or :meth:`stop`, checked before every step) ends the run
        with a checkpoint and one last event with ``stopped=True``. Closing the generator early
        also saves.
        """
        self._setup()
        config = self.config
        saved_at = self.step if self._resume is not None else -1
        try:
            while not self._finished():
                if self.ddp.any(self._stop.is_set() or bool(should_stop and should_stop())):
                    checkpoint = (self._save(final=True) if saved_at != self.step
                                  else self._saved_path())
                    saved_at = self.step
                    loss = self.history[-1]["loss"] if self.history else math.nan
                    yield TrainEvent(
                        self.step, config.iterations, loss, None, checkpoint, stopped=True
                    )
                    return
                started = time.perf_counter()
                if config.minutes is not None:
                    self._follow_budget()
                loss = self.ddp.mean(self._train_step())
                self.step += 1
                self.elapsed += time.perf_counter() - started
                record = {"step": self.step, "loss": loss}
                val_dice = preview = None
                last = self._finished()
                if last and config.calibrate:
                    self._calibrate()
                if self.val and (last or (config.val_every and self.step % config.val_every == 0)):
                    val_dice, preview = self._validate()
                    record["val_dice"] = val_dice
                self.history.append(record)
                checkpoint = None
                if last or (config.checkpoint_every and self.step % config.checkpoint_every == 0):
                    checkpoint = self._save(final=last)
                    saved_at = self.step
                yield TrainEvent(self.step, config.iterations, loss, val_dice, checkpoint, preview,
                                 fraction=self.fraction)
        except GeneratorExit:
            # the consumer gave up early: keep the work done so far (a lone rank cannot
            # gather the others' states, so under DDP only the regular saves count)
            if saved_at != self.step and self.world_size == 1:
                self._save(final=True)
            elif self._pending is not None:
                self._rescue()
            raise
        finally:
            self.ddp.leave()

    def run(
        self,
        callback: Callable[[TrainEvent], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> TrainResult:
        """Train to the end (or a stop); ``callback(event)`` after every step."""
        last: TrainEvent | None = None
        checkpoint: Path | None = None
        for event in self.events(should_stop):
            last = event
            checkpoint = event.checkpoint or checkpoint
            if callback is not None:
                callback(event)
        return TrainResult(
            step=self.step,
            total=self.config.iterations,
            loss=last.loss if last else float("nan"),
            val_dice=self.last_val_dice,
            checkpoint=checkpoint,
            stopped=bool(last and last.stopped),
            seconds=self.elapsed,
            history=list(self.history),
            unsaved=self.unsaved,
        )

    # ---------------------------------------------------------------- setup
    def _setup(self) -> None:
        if self._ready:
            return
        config = self.config
        self.ddp.join()
        torch.manual_seed(config.seed)
        checkpoint = self._load_resume() if self._resume is not None else None
        if checkpoint is None:
            self.model = self._initial_model()
        else:
            self.model = TemplateTransformer.from_config(checkpoint["model"])
            self.model.load_state_dict(checkpoint["state_dict"])
        if config.tune == "heads":
            self._log(f"training the heads alone: {freeze_network(self.model)} weights of the "
                      "U-Net frozen")
        self.model.to(self.device).train()
        self.network = self.ddp.wrap(self.model)
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(trainable, lr=config.lr, betas=config.betas)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            self.optimizer, T_max=config.iterations, eta_min=0.0
        )
        self.rng = np.random.default_rng(config.seed + self.rank)
        if checkpoint is not None:
            self._restore(checkpoint)
        if self.config.checkpoint is not None and self.is_main:
            check_space(self.config.checkpoint, self._checkpoint_bytes())
        self._ready = True

    @property
    def fraction(self) -> float:
        """Share of the run done, in [0, 1]: max(step / iterations, seconds / time budget)."""
        done = self.step / self.config.iterations
        if self.config.minutes is not None:
            done = max(done, self.elapsed / (60.0 * self.config.minutes))
        return min(done, 1.0)

    def _finished(self) -> bool:
        return self.step >= self.config.iterations or self.fraction >= 1.0

    def _follow_budget(self) -> None:
        """The cosine over the run's progress (module docstring), set before each step."""
        lr = self.config.lr * 0.5 * (1.0 + math.cos(math.pi * self.fraction))
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def _initial_model(self) -> torch.nn.Module:
        """A fresh model, or the ``init`` checkpoint's with its prior re-fitted (or kept)."""
        config = self.config
        masks = prior_masks(self.train, config.ignore_value)
        fits = slice_fits(self.train, config.ignore_value, images=config.image_depth)
        if self._init is None:
            return build_model(config, masks, fits=fits)
        model = TemplateTransformer.from_config(self._init["model"])
        model.load_state_dict(self._init["state_dict"])
        model.smoothness = config.smoothness  # a weight of this run's loss, not architecture
        # how velocities are read off the network holds no weights: this run's space
        inherited_space = model.velocity_space
        if model.kind != "unet":
            model.velocity_space = config.velocity_space()
            model.velocity_space.check_step(2**model.feature_level)
        # the init's calibrated level fitted its own weights; training moves them (measured:
        # one painted row inheriting the bundled 2D model's 0.3 lost 0.01 Dice, docs/RESULTS.md)
        inherited, model.threshold = model.threshold, 0.5
        if not config.keep_prior:
            beta = getattr(model.prior, "beta", None)
            beta = config.prior_beta if beta is None else float(beta.detach())
            model.prior = fitted_prior(config, masks, fits, beta)
        refit = "re-fitted to the training labels"
        if fits and config.image_depth:
            refit = "re-fitted to the painted slices, as deep as the organ in the images"
        self._log(f"warm start from {config.init}; prior "
                  + ("kept" if config.keep_prior else refit)
                  + ("; training patches mirrored" if config.mirror else "")
                  + (f"; segmentation threshold {inherited:g} reset to 0.5"
                     if inherited != 0.5 else "")
                  + (f"; velocities {_describe(model.velocity_space)} (the init's: "
                     f"{_describe(inherited_space)})"
                     if model.velocity_space != inherited_space else ""))
        return model

    def _load_resume(self) -> dict:
        checkpoint = load_checkpoint(self._resume, map_location="cpu")
        kind = checkpoint.get("model", {}).get("kind")
        if kind != self.config.kind:
            raise ValueError(
                f"{self._resume} holds a {kind!r} model but kind={self.config.kind!r} was asked; "
                f"resume with --model {kind}"
            )
        resumable(self._resume, checkpoint)
        return checkpoint

    def _restore(self, checkpoint: dict) -> None:
        training = checkpoint["training"]
        with _restoring(self._resume, "training.optimizer"):
            self.optimizer.load_state_dict(training["optimizer"])
        with _restoring(self._resume, "training.scheduler"):
            self.scheduler.load_state_dict(training["scheduler"])
        self.step = training["step"]
        planned = int(training.get("config", {}).get("iterations", self.config.iterations))
        if self.config.iterations > planned:
            self._restart_schedule(planned)
        self.elapsed = float(training.get("seconds", 0.0))
        self.history = list(training.get("metrics", {}).get("history", []))
        self.last_val_dice = training.get("metrics", {}).get("val_dice")
        states = training["rng"].get("numpy", [])
        if self.rank < len(states):
            with _restoring(self._resume, "training.rng.numpy"):
                self.rng.bit_generator.state = states[self.rank]
        if "torch" in training["rng"]:
            with _restoring(self._resume, "training.rng.torch"):
                torch.set_rng_state(training["rng"]["torch"])
        if self.step > self.config.iterations:
            raise ValueError(
                f"{self._resume} is at step {self.step}, past iterations={self.config.iterations}"
            )

    def _restart_schedule(self, planned: int) -> None:
        """A run extended past its ``planned`` length: a fresh cosine from ``lr`` to 0 over the
        new remaining steps (the old one ended at 0, which would leave the weights unchanged)."""
        for group in self.optimizer.param_groups:
            group["lr"] = group["initial_lr"] = self.config.lr
        remaining = self.config.iterations - self.step
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            self.optimizer, T_max=remaining, eta_min=0.0
        )
        self._log(
            f"step {self.step}: the run is extended from {planned} to {self.config.iterations} "
            f"iterations; the cosine schedule restarts at lr {self.config.lr:g} and anneals to 0 "
            f"over the {remaining} new step(s)"
        )

    # ---------------------------------------------------------------- steps
    def _train_step(self) -> float:
        """One optimiser step over ``batch_size`` patches; returns the mean loss (this rank)."""

        config = self.config
        self.optimizer.zero_grad(set_to_none=True)
        total = 0.0
        for item in range(config.batch_size):
            sample = self.train[int(self.rng.integers(len(self.train)))]
            patch = _labelled_patch(sample, config.patch_size, self.rng, config.ignore_value)
            if config.mirror:
                patch = mirrored(patch, self.rng)
            image = torch.from_numpy(patch.image).unsqueeze(0).to(self.device)
            labels = torch.from_numpy(patch.labels).unsqueeze(0).to(self.device)
            last = item == config.batch_size - 1
            with self.ddp.accumulating(self.network, last):
                result = self.network(image, offset=patch.offset, full_shape=patch.full_shape)
                loss = segmentation_loss(result.probability, labels, config.ignore_value)
                if patch.segmentation_targets is not None:  # off the slice, as much again
                    loss = loss + segmentation_loss(
                        result.probability, self._on_device(patch.segmentation_targets),
                        config.ignore_value)
                loss = loss + self.model.regularisation(result)
                if result.pose_mask is not None and config.pose_loss > 0:
                    targets = labels if patch.mask_targets is None else self._on_device(
                        patch.mask_targets)
                    loss = loss + config.pose_loss * segmentation_loss(
                        pose_mask_on_image(result), targets, config.ignore_value)
                if not torch.isfinite(loss):
                    raise RuntimeError(
                        f"training diverged at step {self.step + 1}: the loss is {float(loss)}; "
                        f"try a smaller lr (now {config.lr})"
                    )
                (loss / config.batch_size).backward()
            total += float(loss.detach())
        self.optimizer.step()
        if self.config.minutes is None:  # a time budget sets lr itself (_follow_budget)
            self.scheduler.step()
        return total / config.batch_size

    def _calibrate(self) -> None:
        """Set the model's threshold (:mod:`.calibration`) from the validation volumes, or the
        training volumes when there are none; logs it."""
        volumes, which = (self.val, "validation") if self.val else (self.train, "training")
        self._log(f"calibrating the segmentation threshold on the {which} volumes …")
        threshold = calibrated_threshold(self.model, volumes, self.config.ignore_value)
        if threshold is None:
            return
        self._log(f"segmentation threshold {threshold:g}: the level of the probability that "
                  f"fits the {which} labels best (was {self.model.threshold:g})")
        self.model.threshold = threshold

    def _on_device(self, array: np.ndarray) -> torch.Tensor:
        """A patch's ``(1, *P)`` array as a ``(1, 1, *P)`` tensor on the training device."""
        return torch.from_numpy(array).unsqueeze(0).to(self.device)

    def _validate(self) -> tuple[float | None, np.ndarray | None]:
        """Dice over the validation volumes (mean) and the first one's probability (rank 0)."""
        if not self.is_main:
            return None, None
        self.model.eval()
        scores, preview = [], None
        try:
            for sample in self.val:
                prediction = predict_volume(
                    self.model, sample.image, device=self.device, normalise=False, topology=False,
                )
                known = sample.labels != self.config.ignore_value
                scores.append(dice(prediction.segmentation[known], sample.labels[known] == 1))
                if preview is None:
                    preview = prediction.probability
        finally:
            self.model.train()
        self.last_val_dice = float(np.mean(scores))
        self._log(f"step {self.step}: validation Dice {self.last_val_dice:.4f}")
        return self.last_val_dice, preview

    # ---------------------------------------------------------------- checkpoints
    def _save(self, final: bool = False) -> Path | None:
        """Write the checkpoint (rank 0 only, atomically); returns its path. A failed write is
        logged and returns None, or, when ``final``, saves into the temp folder instead."""
        if self.config.checkpoint is None:
            return None
        states = self.ddp.gather(self.rng.bit_generator.state)
        if not self.is_main:
            return None
        payload = self._payload(states)
        target = Path(self.config.checkpoint)
        for stale in remove_stale_temporaries(target):
            self._log(f"removed {stale}, a temporary checkpoint left by an interrupted save")
        try:
            path = save_checkpoint(target, payload)
        except OSError as error:
            self.unsaved, self._pending = str(error), payload
            if final:
                return self._rescue()
            self._log(f"step {self.step}: could not write the checkpoint: {error}; training "
                      "goes on and the next checkpoint tries again")
            return None
        self.unsaved = self._pending = None
        self._log(f"step {self.step}: checkpoint {path}")
        return path

    def _rescue(self) -> Path:
        """Save the checkpoint that could not be written into the temp folder, lifting a soft
        file-size limit for it."""
        name, step = Path(self.config.checkpoint), self._pending["training"]["step"]
        rescue = Path(tempfile.gettempdir()) / f"{name.stem}-step{step}-{os.getpid()}.pt"
        try:
            with lifted_file_size_limit():
                save_checkpoint(rescue, self._pending)
        except OSError as second:
            raise RuntimeError(
                f"the checkpoint of step {step} could not be saved: {self.unsaved}; nor in the "
                f"temp folder: {second}"
            ) from second
        self._pending = None
        self._log(f"step {step}: could not write {name} ({self.unsaved}); the checkpoint is "
                  f"saved at {rescue} instead")
        return rescue

    def _payload(self, rng_states: list[dict]) -> dict:
        return training_payload(
            self.model, self.config, optimizer=self.optimizer, scheduler=self.scheduler,
            step=self.step, history=self.history, val_dice=self.last_val_dice,
            rng_states=rng_states, world_size=self.world_size, seconds=self.elapsed,
            device=self.device, train=self.train, val=self.val,
        )

    def _checkpoint_bytes(self) -> int:
        """Bytes a checkpoint of this run will take: today's, plus Adam's two moments per
        trainable weight while they do not exist yet, plus 10 % for the growing history."""
        size = len(encode_checkpoint(self._payload([self.rng.bit_generator.state])))
        if not self.optimizer.state:
            size += 2 * sum(p.numel() * p.element_size()
                            for p in self.model.parameters() if p.requires_grad)
        return int(1.1 * size)

    def _saved_path(self) -> Path | None:
        """The checkpoint of this step, already saved (or, if that save failed, rescued)."""
        if self.config.checkpoint is None or not self.is_main:
            return None
        return self._rescue() if self._pending is not None else Path(self.config.checkpoint)


# ------------------------------------------------------------------------------------------
# functions

SPARSE_FRACTION = 0.5  # training labels on fewer voxels than this fraction are sparse


def sparse_lattice(config: TrainConfig, samples: Sequence[Any],
                   log: Callable[[str], None]) -> TrainConfig:
    """``config`` with the coarser B-spline lattice of :data:`~.flow.velocity.DEFAULT_LATTICE`
    (4 voxels, or the factor) when a fresh run chose none and its training labels cover less
    than :data:`SPARSE_FRACTION` of the voxels (painted slices): with the default's 2 voxels,
    a few labelled slices leave the velocities free to fold (up to 0.12 % digital on lobed
    organs, 1.7 % on silhouettes; 0 with 4 voxels: docs/RESULTS.md, "Sparse annotations")."""
    if (config.kind == "unet" or config.velocity != "bspline" or config.init is not None
            or config.velocity_lattice is not None):
        return config
    fraction = _labelled_fraction(config, samples)
    if fraction >= SPARSE_FRACTION:
        return config
    lattice = max(DEFAULT_LATTICE, config.velocity_factor)
    log(f"sparse labels ({100 * fraction:.1f} % of the training voxels): B-spline "
        f"control points every {lattice} voxels, not the default "
        f"{config.velocity_space().lattice}, which folds on painted slices (a lattice given "
        "explicitly is kept)")
    return replace(config, velocity_lattice=lattice)


def sparse_feature_level(config: TrainConfig, samples: Sequence[Any],
                         log: Callable[[str], None]) -> TrainConfig:
    """``config`` with the ``feature_level`` of :data:`~.config.SPARSE_FLOW_FEATURE_LEVELS`
    when a fresh flow run chose none, its training labels are sparse (< :data:`SPARSE_FRACTION`)
    and that level is below the default (3D: level 0, docs/RESULTS.md, "The finer encoder
    levels folded into the half-resolution heads"); never above it."""
    default = config.resolved_feature_level()
    level = min(SPARSE_FLOW_FEATURE_LEVELS[config.ndim], default)
    if (config.kind == "unet" or config.init is not None or config.feature_level is not None
            or level == default):
        return config
    fraction = _labelled_fraction(config, samples)
    if fraction >= SPARSE_FRACTION:
        return config
    log(f"sparse labels ({100 * fraction:.1f} % of the training voxels): the heads read "
        f"feature level {level}, not the default {default} (a level given explicitly is kept)")
    return replace(config, feature_level=level)


def resolve_mirror(config: TrainConfig, samples: Sequence[Any],
                   log: Callable[[str], None]) -> TrainConfig:
    """``config`` with ``mirror`` decided when it is None: mirrored patches when every patch
    holds its whole volume and the run fine-tunes (``init``) or learns from sparse labels
    (< :data:`SPARSE_FRACTION`); not for a fresh run on dense labels, a U-Net, or patches
    smaller than their volumes. Each as measured (docs/RESULTS.md, "Mirrored patches": +0.06–0.13
    Dice on painted slices over three seeds; dense fresh runs lost up to 0.03 and folded; a
    128³ volume fine-tuned in 64³ patches collapsed to 0.52, docs/PERFORMANCE.md; a U-Net on
    dense labels lost 0.03–0.24)."""
    if config.mirror is not None or config.kind == "unet":
        return replace(config, mirror=bool(config.mirror))
    whole = all(n <= p for s in samples for n, p in zip(s.image.shape, config.patch_size,
                                                         strict=True))
    sparse = _labelled_fraction(config, samples) < SPARSE_FRACTION
    mirror = whole and (config.init is not None or sparse)
    if (config.init is not None or sparse) and not whole:
        log("training patches not mirrored: they are smaller than the volumes (mirrored "
            "sub-volume patches measured worse; --mirror forces it)")
    return replace(config, mirror=mirror)


def _labelled_fraction(config: TrainConfig, samples: Sequence[Any]) -> float:
    """The fraction of the training voxels that hold a label (not ``ignore_value``)."""
    labelled = sum(int((s.labels != config.ignore_value).sum()) for s in samples)
    return labelled / max(1, sum(int(s.labels.size) for s in samples))


def _feature_level(config: TrainConfig, init: dict | None) -> int:
    """The decoder level the run's model reads: a fine-tune's is its init's (architecture: an
    explicit other level is refused), a fresh model's
    :meth:`~.config.TrainConfig.resolved_feature_level`."""
    if init is None:
        return config.resolved_feature_level()
    inherited = int(init["model"].get("feature_level", 0))
    if config.feature_level is not None and config.feature_level != inherited:
        raise ValueError(f"feature_level {config.feature_level} was asked but the init checkpoint "
                         f"{config.init} reads decoder level {inherited} (its network's shape): "
                         "leave feature_level out to keep the init's")
    return inherited


def build_model(
    config: TrainConfig,
    masks: Sequence[np.ndarray] = (),
    *,
    fits: Sequence[GeneralisedGaussianPrior] = (),
) -> torch.nn.Module:
    """A fresh :class:`TemplateTransformer` for ``config``; the prior from :func:`fitted_prior`
    (fully labelled ``masks`` and priors ``fits`` already fitted to sparse slices)."""
    prior = fitted_prior(config, masks, fits, config.prior_beta)
    return TemplateTransformer(
        kind=config.kind,
        ndim=config.ndim,
        prior=prior,
        pieces=config.pieces,
        bch_order=config.bch_order,
        velocity=config.velocity_space(),
        width=config.width,
        smoothness=config.smoothness or 0.0,
        feature_level=config.resolved_feature_level(),
        pose=config.pose and config.kind != "unet",
    )


def fitted_prior(
    config: TrainConfig,
    masks: Sequence[np.ndarray],
    fits: Sequence[GeneralisedGaussianPrior],
    beta: float,
) -> GeneralisedGaussianPrior:
    """The prior a run starts from, parameterised by ``config.prior``, of shape ``beta``.

    With ``prior_init="labels"``, μ and Σ are the means over :func:`core.prior.fit_to_mask` of
    the ``masks`` and the given ``fits`` (:func:`core.slices.slice_fits`); with neither, or
    ``prior_init="centre"``, the default centred prior.
    """
    mean = covariance = None
    fits = [*(fit_to_mask(mask) for mask in masks), *fits]
    if config.prior_init == "labels" and fits:
        mean = torch.stack([f.mean.detach() for f in fits]).double().mean(0).tolist()
        covariance = torch.stack([f.covariance.detach() for f in fits]).double().mean(0).numpy()
    return GeneralisedGaussianPrior(
        config.ndim, mean=mean, covariance=covariance, beta=beta,
        parameterisation=config.prior, train_beta=config.train_beta,
    )


def freeze_network(model: TemplateTransformer) -> int:
    """Freeze ``model``'s U-Net but its 1×1 velocity head (``config.tune == "heads"``): the pose
    level's mask head, the force gains and the prior stay trainable. Returns the number of
    weights frozen."""
    frozen = 0
    for name, parameter in model.net.named_parameters():
        if not name.startswith("head."):
            parameter.requires_grad_(False)
            frozen += parameter.numel()
    return frozen


def load_init(path: str | os.PathLike, config: TrainConfig) -> dict:
    """The checkpoint ``path`` to warm-start ``config`` from; refused
    (:class:`~napari_difftt.errors.IncompatibleCheckpoint`, naming both) when its model kind or
    dimensionality differs from the run's."""
    checkpoint = load_checkpoint(path, map_location="cpu")
    model = checkpoint.get("model")
    if not isinstance(model, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(f"{path} holds no model to warm-start from")
    kind, ndim = model.get("kind"), model.get("ndim")
    if (kind, ndim) != (config.kind, config.ndim):
        raise IncompatibleCheckpoint(
            f"init checkpoint {path} holds a {ndim}D {kind!r} model but this run trains a "
            f"{config.ndim}D {config.kind!r} model; choose a {config.ndim}D {config.kind} "
            f"checkpoint (the bundled {config.ndim}D model is bch), or train kind={kind!r} on "
            f"{ndim}D images"
        )
    return checkpoint


# ------------------------------------------------------------------------------------------
# helpers


def _describe(space: VelocitySpace) -> str:
    """A velocity space in the words of the CLI's options, e.g. "bspline, factor 2, lattice 2,
    bound 8 voxels"."""
    lattice = f", lattice {space.lattice}" if space.lattice is not None else ""
    sigma = f", sigma {space.sigma:g}" if space.sigma else ""
    return (f"{space.parameterisation}, factor {space.factor}{lattice}{sigma}, bound "
            f"{space.bound:g} voxels")


def _check_samples(name: str, samples: list, ndim: int, ignore_value: int) -> None:
    """Each sample has labels of its image's shape with at least one labelled voxel."""
    if name == "train" and not samples:
        raise ValueError("train must hold at least one sample")
    for sample in samples:
        if sample.image.ndim != ndim:
            raise ValueError(
                f"{name} sample {sample.name!r} is {sample.image.ndim}D but patch_size is {ndim}D"
            )
        if sample.labels is None:
            raise ValueError(f"{name} sample {sample.name!r} has no labels")
        if sample.labels.shape != sample.image.shape:
            raise ValueError(
                f"{name} sample {sample.name!r}: labels {sample.labels.shape} and image "
                f"{sample.image.shape} differ in shape"
            )
        if not (sample.labels != ignore_value).any():
            raise ValueError(
                f"{name} sample {sample.name!r} has no labelled voxel: every voxel is "
                f"{ignore_value} (ignore); label at least one voxel 0 or 1, or leave it out"
            )
        check_segmentable(sample.image, f"{name} sample {sample.name!r}")
    without = [sample.name for sample in samples if not (sample.labels == 1).any()]
    if name == "train" and len(without) == len(samples):
        raise ValueError(
            "no train sample has a foreground voxel (label 1): there is no structure to learn"
            f" ({', '.join(without[:5])}{' …' if len(without) > 5 else ''})"
        )
    for case in without if name == "train" else ():
        warnings.warn(f"train sample {case!r} has no foreground voxel (label 1): it only "
                      "teaches background", NoForegroundWarning, stacklevel=3)


def with_image_targets(samples: Sequence[Sample], ignore_value: int,
                       log: Callable[[str], None], *, mask: bool = True,
                       segmentation: bool = True) -> list[Sample]:
    """``samples`` with targets from their images where their labels are painted on one slice
    and the image separates it: the pose mask's (``mask``,
    :func:`core.slices.image_mask_targets`) and a second target of the segmentation off the
    slice (``segmentation``, :func:`core.slices.image_segmentation_targets`); the others as
    they are. Logs on how many it could.

    One slice only, as measured (docs/RESULTS.md, "The pose mask from the image" and "The
    segmentation from the image"): the pose mask's targets lift one painted row of the 2D
    silhouettes from 0.824 to 0.896 Dice and the segmentation's to 0.913 (HD95 2.99 → 2.71
    px), leaving one slice of the 3D sets within ±0.005; on three slices of lobed organs the
    pose mask's cost 0.02."""
    out, taught, single = [], 0, 0
    for sample in samples:
        annotated = annotated_slices(sample.labels, ignore_value)
        targets = None
        if annotated is not None and len(annotated[1]) == 1:
            single += 1
            targets = image_mask_targets(sample.labels, sample.image, ignore_value)
        if targets is None:
            out.append(sample)
            continue
        taught += 1
        extra = None
        if segmentation:
            extra = image_segmentation_targets(targets, sample.labels, ignore_value)
        out.append(replace(sample, mask_targets=targets if mask else None,
                           segmentation_targets=extra))
    if single:
        what = " and ".join(name for name, on in (("pose mask", mask),
                                                  ("segmentation", segmentation)) if on)
        log(f"{what}: taught the organ seen in the image off the painted slice on {taught} "
            f"of {single} volume(s) painted on one slice")
    return out


def prior_masks(samples: Sequence[Sample], ignore_value: int) -> list[np.ndarray]:
    """Foreground masks of the fully labelled samples with enough foreground to fit a prior."""
    masks = []
    for sample in samples:
        labels = sample.labels
        if (labels == ignore_value).any():
            continue  # sparse annotations: the moments would be biased
        mask = labels == 1
        if mask.sum() > mask.ndim:
            masks.append(mask)
    return masks


@contextlib.contextmanager
def _restoring(path: Path, name: str) -> Iterator[None]:
    """Turn what a malformed state raises on restore into a CheckpointError naming it."""
    try:
        yield
    except (AttributeError, KeyError, IndexError, TypeError, ValueError, RuntimeError) as error:
        raise CheckpointError(f"{path}: field {name!r} cannot be restored: "
                              f"{type(error).__name__}: {error}") from error


def _labelled_patch(sample: Sample, patch_size, rng, ignore_value: int, tries: int = 20) -> Patch:
    """A random patch that holds labelled voxels if one can be found in ``tries`` draws."""
    patch = sample_patch(sample, patch_size, rng, ignore_value)
    for _ in range(tries - 1):
        if (patch.labels != ignore_value).any():
            break
        patch = sample_patch(sample, patch_size, rng, ignore_value)
    return patch
