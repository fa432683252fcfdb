"""Training: configuration, the step loop as a stream of events, checkpoints, resume, DDP.

A :class:`Trainer` draws random patches (:func:`core.data.sample_patch`), runs the template
transformer on them, and minimises the binary cross-entropy of its output against the labels
(:func:`core.models.segmentation_loss`: voxels labelled ``ignore_value`` — sparse annotations —
are left out) plus the model's optional λ‖∇u‖² penalty. Adam + cosine annealing to 0
over ``iterations`` (the paper's defaults). Resuming with more ``iterations`` than the
checkpoint's run restarts the cosine (a warm restart): from the run's ``lr`` down to 0 over the
new remaining steps; resuming with the same ``iterations`` continues the schedule exactly.
Validation predicts whole volumes (:func:`core.inference.predict_volume`) and reports the Dice
coefficient.

Launched under ``torchrun`` (environment RANK/WORLD_SIZE/LOCAL_RANK), the trainer joins the
process group (nccl on CUDA, gloo on the CPU), wraps the model in DistributedDataParallel,
draws different patches on each rank (seed + rank), and lets only rank 0 validate, print and
write checkpoints. A stop request on any rank stops every rank at the same step.

Checkpoints (:func:`core.io.save_checkpoint`, atomic) are plain dicts; ``training`` holds the
config, step, optimizer/scheduler/RNG states and metrics so a run resumes exactly where it was.
"""

from __future__ import annotations

import contextlib
import math
import os
import platform
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import __version__
from .data import Patch, Sample, sample_patch
from .device import resolve_device
from .inference import predict_volume
from .io import check_output_file, load_checkpoint, save_checkpoint
from .metrics import dice
from .models import KINDS, TemplateTransformer, segmentation_loss
from .prior import DEFAULT_BETA, GeneralisedGaussianPrior, fit_to_mask
from .velocity import DEFAULT_SPACE, VelocitySpace

__all__ = [
    "KINDS",
    "TrainConfig",
    "TrainEvent",
    "TrainResult",
    "Trainer",
    "build_model",
    "export_checkpoint",
    "slim_checkpoint",
]

PRIOR_INITS = ("labels", "centre")


@dataclass
class TrainConfig:
    """Everything that defines a training run (stored in every checkpoint)."""

    kind: str = "bch"  # bch | svf | stt | unet
    iterations: int = 1000
    patch_size: tuple[int, ...] = (64, 64, 64)  # (D, H, W) or (H, W) voxels
    lr: float = 2e-4
    betas: tuple[float, float] = (0.9, 0.999)
    batch_size: int = 1
    seed: int = 0
    device: str = "auto"
    spacing: float | None = None  # mm; data resampled to this isotropic spacing (None: as is)
    prior: str = "fixed"  # fixed | mean | sigma | diag | full (GeneralisedGaussianPrior)
    train_beta: bool = False
    prior_beta: float = DEFAULT_BETA  # initial β of the prior (core.prior.DEFAULT_BETA)
    prior_init: str = "labels"  # "labels": fit μ, Σ to the training masks; "centre": default
    width: int = 8
    pieces: int = 4
    bch_order: int = 2
    # where velocities live (core.velocity.VelocitySpace; defaults from its ablation)
    velocity: str = DEFAULT_SPACE.parameterisation  # dense | bspline
    velocity_factor: int = DEFAULT_SPACE.factor  # image voxels per coarse voxel: 1, 2 or 4
    velocity_lattice: int | None = None  # B-spline control spacing, voxels (None: 4 for bspline)
    velocity_sigma: float = DEFAULT_SPACE.sigma  # Gaussian smoothing, coarse voxels
    alpha: float = DEFAULT_SPACE.bound  # bound of each velocity, image voxels
    smoothness: float = 0.0  # λ of the λ‖∇u‖² penalty
    checkpoint: str | None = None  # path of the checkpoint file (None: nothing written)
    checkpoint_every: int = 0  # steps between periodic checkpoints (0: only the final one)
    val_every: int = 0  # steps between validations (0: only at the end, when val is given)
    ignore_value: int = 255

    def __post_init__(self) -> None:
        self.patch_size = tuple(int(s) for s in self.patch_size)
        self.betas = tuple(float(b) for b in self.betas)
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if len(self.patch_size) not in (2, 3) or min(self.patch_size) < 4:
            raise ValueError(
                f"patch_size must be (D, H, W) or (H, W) with >= 4 voxels per axis, "
                f"got {self.patch_size}"
            )
        for name in ("iterations", "batch_size", "width", "pieces"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        for name in ("checkpoint_every", "val_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an int >= 0, got {value!r}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a positive number, got {self.lr!r}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas!r}")
        if self.spacing is not None and not self.spacing > 0:
            raise ValueError(
                f"spacing must be a positive number of mm or None, got {self.spacing!r}"
            )
        if self.prior_init not in PRIOR_INITS:
            raise ValueError(f"prior_init must be one of {PRIOR_INITS}, got {self.prior_init!r}")
        if not self.smoothness >= 0:
            raise ValueError(f"smoothness must be >= 0, got {self.smoothness!r}")
        self.velocity_space()  # validates the velocity settings

    def velocity_space(self) -> VelocitySpace:
        """The :class:`VelocitySpace` these settings describe."""
        return VelocitySpace(self.velocity, self.velocity_factor, self.velocity_lattice,
                             self.velocity_sigma, self.alpha)

    @property
    def ndim(self) -> int:
        return len(self.patch_size)

    def to_dict(self) -> dict:
        """Plain dict (lists instead of tuples) for checkpoints and JSON."""
        data = asdict(self)
        data["patch_size"] = list(self.patch_size)
        data["betas"] = list(self.betas)
        return data

    @classmethod
    def from_dict(cls, data: dict, **overrides: Any) -> TrainConfig:
        """Rebuild from :meth:`to_dict` output (unknown keys are refused), then apply overrides."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown training config keys {unknown}")
        return cls(**{**data, **overrides})


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


class Trainer:
    """Train a :class:`TemplateTransformer` on ``train`` samples, validating on ``val``.

    ``resume`` (a checkpoint path) restores model, optimizer, scheduler, step and RNG states; the
    model architecture comes from the checkpoint, whose kind must match ``config.kind``.
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
        self.config = config
        self.train = list(train)
        self.val = list(val)
        _check_samples("train", self.train, config.ndim, config.ignore_value)
        _check_samples("val", self.val, config.ndim, config.ignore_value)
        if config.checkpoint is not None:
            check_output_file(config.checkpoint, overwrite=True, what="checkpoint")
        self.rank, self.world_size, local_rank = _distributed_env()
        self.device = resolve_device(config.device)
        if self.world_size > 1 and self.device.type == "cuda":
            self.device = torch.device("cuda", local_rank)
        self._log = log if log is not None else (lambda message: None)
        self._stop = threading.Event()
        self._own_group = False
        self._resume = Path(resume) if resume is not None else None
        self._ready = False
        self.step = 0
        self.history: list[dict] = []
        self.elapsed = 0.0
        self.last_val_dice: float | None = None

    # ---------------------------------------------------------------- public API
    @property
    def is_main(self) -> bool:
        """True on the process that validates, prints and writes checkpoints (rank 0)."""
        return self.rank == 0

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
            while self.step < config.iterations:
                if self._any_rank(self._stop.is_set() or bool(should_stop and should_stop())):
                    checkpoint = self._save() if saved_at != self.step else self._saved_path()
                    saved_at = self.step
                    loss = self.history[-1]["loss"] if self.history else math.nan
                    yield TrainEvent(
                        self.step, config.iterations, loss, None, checkpoint, stopped=True
                    )
                    return
                started = time.perf_counter()
                loss = self._mean_over_ranks(self._train_step())
                self.step += 1
                self.elapsed += time.perf_counter() - started
                record = {"step": self.step, "loss": loss}
                val_dice = preview = None
                last = self.step == config.iterations
                if self.val and (last or (config.val_every and self.step % config.val_every == 0)):
                    val_dice, preview = self._validate()
                    record["val_dice"] = val_dice
                self.history.append(record)
                checkpoint = None
                if last or (config.checkpoint_every and self.step % config.checkpoint_every == 0):
                    checkpoint = self._save()
                    saved_at = self.step
                yield TrainEvent(self.step, config.iterations, loss, val_dice, checkpoint, preview)
        except GeneratorExit:
            # the consumer gave up early: keep the work done so far (a lone rank cannot
            # gather the others' states, so under DDP only the regular saves count)
            if saved_at != self.step and self.world_size == 1:
                self._save()
            raise
        finally:
            self._teardown()

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
        )

    # ---------------------------------------------------------------- setup
    def _setup(self) -> None:
        if self._ready:
            return
        config = self.config
        if self.world_size > 1:
            self._init_distributed()
        torch.manual_seed(config.seed)
        checkpoint = self._load_resume() if self._resume is not None else None
        if checkpoint is None:
            self.model = build_model(config, _prior_masks(self.train, config.ignore_value))
        else:
            self.model = TemplateTransformer.from_config(checkpoint["model"])
            self.model.load_state_dict(checkpoint["state_dict"])
        self.model.to(self.device).train()
        self.network = self.model
        if self.world_size > 1:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            # a U-Net bottleneck of one voxel (16-voxel patches) gets no gradient: instance
            # norm of a single value is constant, so those parameters must be allowed
            self.network = DistributedDataParallel(
                self.model, device_ids=ids, find_unused_parameters=True
            )
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(trainable, lr=config.lr, betas=config.betas)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            self.optimizer, T_max=config.iterations, eta_min=0.0
        )
        self.rng = np.random.default_rng(config.seed + self.rank)
        if checkpoint is not None:
            self._restore(checkpoint)
        self._ready = True

    def _load_resume(self) -> dict:
        checkpoint = load_checkpoint(self._resume, map_location="cpu")
        kind = checkpoint.get("model", {}).get("kind")
        if kind != self.config.kind:
            raise ValueError(
                f"{self._resume} holds a {kind!r} model but kind={self.config.kind!r} was asked; "
                f"resume with --model {kind}"
            )
        if "optimizer" not in checkpoint.get("training", {}):
            raise ValueError(
                f"{self._resume} has no optimizer state (an exported model); it cannot be resumed"
            )
        return checkpoint

    def _restore(self, checkpoint: dict) -> None:
        training = checkpoint["training"]
        self.optimizer.load_state_dict(training["optimizer"])
        self.scheduler.load_state_dict(training["scheduler"])
        self.step = int(training["step"])
        planned = int(training.get("config", {}).get("iterations", self.config.iterations))
        if self.config.iterations > planned:
            self._restart_schedule(planned)
        self.elapsed = float(training.get("seconds", 0.0))
        self.history = list(training.get("metrics", {}).get("history", []))
        self.last_val_dice = training.get("metrics", {}).get("val_dice")
        states = training.get("rng", {}).get("numpy", [])
        if self.rank < len(states):
            self.rng.bit_generator.state = states[self.rank]
        if "torch" in training.get("rng", {}):
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

    def _init_distributed(self) -> None:
        import torch.distributed as dist

        if not dist.is_initialized():
            if self.device.type == "cuda":
                torch.cuda.set_device(self.device)
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
            self._own_group = True

    def _teardown(self) -> None:
        if self._own_group:
            import torch.distributed as dist

            dist.destroy_process_group()
            self._own_group = False

    # ---------------------------------------------------------------- steps
    def _train_step(self) -> float:
        """One optimiser step over ``batch_size`` patches; returns the mean loss (this rank)."""

        config = self.config
        self.optimizer.zero_grad(set_to_none=True)
        total = 0.0
        for item in range(config.batch_size):
            sample = self.train[int(self.rng.integers(len(self.train)))]
            patch = _labelled_patch(sample, config.patch_size, self.rng, config.ignore_value)
            image = torch.from_numpy(patch.image).unsqueeze(0).to(self.device)
            labels = torch.from_numpy(patch.labels).unsqueeze(0).to(self.device)
            last = item == config.batch_size - 1
            sync = (
                contextlib.nullcontext() if last or self.world_size == 1 else self.network.no_sync()
            )
            with sync:
                result = self.network(image, offset=patch.offset, full_shape=patch.full_shape)
                loss = segmentation_loss(result.probability, labels, config.ignore_value)
                loss = loss + self.model.regularisation(result)
                if not torch.isfinite(loss):
                    raise RuntimeError(
                        f"training diverged at step {self.step + 1}: the loss is {float(loss)}; "
                        f"try a smaller lr (now {config.lr})"
                    )
                (loss / config.batch_size).backward()
            total += float(loss.detach())
        self.optimizer.step()
        self.scheduler.step()
        return total / config.batch_size

    def _any_rank(self, flag: bool) -> bool:
        """True if ``flag`` is true on any rank (every rank gets the same answer)."""
        if self.world_size == 1:
            return flag
        import torch.distributed as dist

        value = torch.tensor([float(flag)], device=self.device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item() > 0)

    def _mean_over_ranks(self, loss: float) -> float:
        """The loss averaged over ranks (what the all-reduced gradients optimise)."""
        if self.world_size == 1:
            return loss
        import torch.distributed as dist

        value = torch.tensor([loss], device=self.device, dtype=torch.float64)
        dist.all_reduce(value)
        return float(value.item()) / self.world_size

    def _validate(self) -> tuple[float | None, np.ndarray | None]:
        """Dice over the validation volumes (mean) and the first one's probability (rank 0)."""
        if not self.is_main:
            return None, None
        self.model.eval()
        scores, preview = [], None
        try:
            for sample in self.val:
                prediction = predict_volume(
                    self.model, sample.image, device=self.device, normalise=False, topology=False
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
    def _save(self) -> Path | None:
        """Write the checkpoint (rank 0 only, atomically); returns its path."""
        if self.config.checkpoint is None:
            return None
        states = self._gather_rng_states()
        if not self.is_main:
            return None
        path = save_checkpoint(self.config.checkpoint, self._payload(states))
        self._log(f"step {self.step}: checkpoint {path}")
        return path

    def _saved_path(self) -> Path | None:
        if self.config.checkpoint is None or not self.is_main:
            return None
        return Path(self.config.checkpoint)

    def _gather_rng_states(self) -> list[dict]:
        state = self.rng.bit_generator.state
        if self.world_size == 1:
            return [state]
        import torch.distributed as dist

        states: list[Any] = [None] * self.world_size
        dist.all_gather_object(states, state)
        return states

    def _payload(self, rng_states: list[dict]) -> dict:
        config = self.config
        metrics = {
            "loss": self.history[-1]["loss"] if self.history else None,
            "val_dice": self.last_val_dice,
            "history": self.history,
        }
        prior = getattr(self.model, "prior", None)
        return {
            "model": self.model.config(),
            "state_dict": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "prior": prior.to_dict() if prior is not None else None,
            "spacing": [float(s) for s in self.train[0].spacing],
            "training": {
                "config": config.to_dict(),
                "step": self.step,
                "seed": config.seed,
                "world_size": self.world_size,
                "seconds": self.elapsed,
                "device": str(self.device),
                "train_cases": [s.name for s in self.train],
                "val_cases": [s.name for s in self.val],
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "rng": {"numpy": rng_states, "torch": torch.get_rng_state()},
                "metrics": metrics,
            },
            "versions": versions(),
        }


# ------------------------------------------------------------------------------------------
# functions


def build_model(config: TrainConfig, masks: Sequence[np.ndarray] = ()) -> torch.nn.Module:
    """A fresh :class:`TemplateTransformer` for ``config``; the prior fitted to ``masks``.

    With ``prior_init="labels"`` and at least one fully labelled mask, μ and Σ are the means of
    :func:`core.prior.fit_to_mask` over the masks; otherwise the default centred prior.
    """
    mean = covariance = None
    if config.prior_init == "labels" and masks:
        fits = [fit_to_mask(mask) for mask in masks]
        mean = torch.stack([f.mean.detach() for f in fits]).double().mean(0).tolist()
        covariance = torch.stack([f.covariance.detach() for f in fits]).double().mean(0).numpy()
    prior = GeneralisedGaussianPrior(
        config.ndim,
        mean=mean,
        covariance=covariance,
        beta=config.prior_beta,
        parameterisation=config.prior,
        train_beta=config.train_beta,
    )
    return TemplateTransformer(
        kind=config.kind,
        ndim=config.ndim,
        prior=prior,
        pieces=config.pieces,
        bch_order=config.bch_order,
        velocity=config.velocity_space(),
        width=config.width,
        smoothness=config.smoothness,
    )


def slim_checkpoint(checkpoint: dict, *, half: bool = False) -> dict:
    """A copy without optimizer/scheduler/RNG states, for shipping a model (not resumable).

    ``half=True`` stores floating weights as float16 (half the size; loading casts them back
    into the model's float32 parameters).
    """
    slim = dict(checkpoint)
    slim["training"] = {
        k: v
        for k, v in checkpoint.get("training", {}).items()
        if k not in ("optimizer", "scheduler", "rng")
    }
    if half:
        slim["state_dict"] = {
            k: v.half() if v.is_floating_point() else v for k, v in checkpoint["state_dict"].items()
        }
        slim["training"]["exported"] = "float16 weights"
    return slim


def export_checkpoint(
    source: str | os.PathLike,
    target: str | os.PathLike,
    *,
    half: bool = True,
    overwrite: bool = False,
) -> Path:
    """Write :func:`slim_checkpoint` of ``source`` to ``target`` (atomically); returns it."""
    target = Path(target)
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} exists; pass overwrite=True to replace it")
    return save_checkpoint(target, slim_checkpoint(load_checkpoint(source), half=half))


def versions() -> dict:
    """Versions of what produced a checkpoint."""
    return {
        "napari_difftt": __version__,
        "torch": str(torch.__version__),
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


# ------------------------------------------------------------------------------------------
# helpers


def _distributed_env() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun's environment; (0, 1, 0) otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 0
    return int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0"))


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


def _prior_masks(samples: list, ignore_value: int) -> list[np.ndarray]:
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


def _labelled_patch(sample: Sample, patch_size, rng, ignore_value: int, tries: int = 20) -> Patch:
    """A random patch that holds labelled voxels if one can be found in ``tries`` draws."""
    patch = sample_patch(sample, patch_size, rng, ignore_value)
    for _ in range(tries - 1):
        if (patch.labels != ignore_value).any():
            break
        patch = sample_patch(sample, patch_size, rng, ignore_value)
    return patch
