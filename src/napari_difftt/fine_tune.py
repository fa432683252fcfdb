"""Segment from my slices: fine-tune a model on one volume's painted slices, then segment it.

The Qt-free use case of the "Segment from my slices" dock (docs/ARCHITECTURE.md), numpy in and
out like :mod:`napari_difftt.pipeline`:

* :func:`count_slices` — what counts of a painted array along an axis ("3 slices along z,
  12288 voxels count"), or the :class:`~napari_difftt.errors.AnnotationError` saying what to
  fix (nothing painted, paint along two axes, a value that is neither organ, background nor
  the unlabelled value); cheap, for showing before training. :func:`painted_labels` gives the
  training labels too (the Train widget's painted-slices option), :func:`axis_choices` the
  axes offered.
* :func:`fine_tune` — checks everything (the painting, the time budget, the checkpoint's kind
  and dimensionality, the output file) and returns a :class:`FineTune` whose ``events()``
  generator yields :class:`Step` per training step, then :class:`Finished` with the
  segmentation (``pipeline.Result``: the prediction with its topology report) and the
  fine-tuned checkpoint. Bad input is refused before anything trains or is written.

The network starts from ``checkpoint`` (default: the bundled model of the volume's
dimensionality; a flow model learns what ``FINE_TUNE["tune"]`` says, docs/RESULTS.md,
"Fine-tuning the heads alone"), the prior is re-fitted to the slices
(:func:`core.slices.fit_to_slices`), and training runs for ``minutes`` (the cosine follows the
time budget, :class:`core.train.Trainer`); a stop ends it with the checkpoint written and no
segmentation.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .pipeline import Result, segment

if TYPE_CHECKING:
    from .core.io import Volume

__all__ = ["FINE_TUNE", "Counted", "FineTune", "Finished", "Step", "axis_choices", "count_slices",
           "fine_tune", "painted_labels"]

# the settings of a fine-tuning run on one volume (docs/PERFORMANCE.md, "Segment from my
# slices": measured there); the rest are the init checkpoint's or TrainConfig's defaults
# ("tune": what of a flow model learns, TrainConfig.tune; "heads" alone is measured there too)
FINE_TUNE = {"minutes": 2.0, "lr": 1e-3, "patch": 64, "iterations": 100_000, "tune": "all"}


@dataclass(frozen=True)
class Counted:
    """What counts of the painting: annotated slices along ``axis`` and labelled voxels."""

    axis: int  # array axis the slices are taken along
    slices: tuple[int, ...]  # their indices
    voxels: int  # labelled voxels (organ and background) the loss sees
    organ_voxels: int
    text: str  # "3 slices along z, 12288 voxels count (1034 organ)"


@dataclass(frozen=True)
class Step:
    """One fine-tuning step done."""

    step: int
    fraction: float  # of the time budget (or iterations) used, in [0, 1]
    loss: float


@dataclass(frozen=True)
class Finished:
    """The end of a run: the segmentation (None after a stop) and the checkpoint written."""

    result: Result | None  # segment() of the volume with the fine-tuned model
    checkpoint: Path
    counted: Counted
    steps: int
    seconds: float  # wall time of the whole run: training and segmentation
    stopped: bool = False


def count_slices(painted: np.ndarray, axis: int, unlabelled: int | None = None) -> Counted:
    """:class:`Counted` of a painted array ``(*S)`` (organ 1, background 0, optionally an
    ``unlabelled`` value) along ``axis``; AnnotationError when it cannot train."""
    return painted_labels(painted, axis, unlabelled)[1]


def painted_labels(painted: np.ndarray, axis: int, unlabelled: int | None = None,
                   ignore_value: int = 255) -> tuple[np.ndarray, Counted]:
    """Training labels ``(*S)`` uint8 of a painted array (0/1 on the slices along ``axis``
    that hold paint, ``ignore_value`` everywhere else and on ``unlabelled`` voxels) and their
    :class:`Counted`; AnnotationError when it cannot train."""
    from .core.slices import painted_slices

    labels = painted_slices(painted, axis, unlabelled=unlabelled, ignore_value=ignore_value)
    return labels.labels, _counted(labels)


def axis_choices(ndim: int) -> list[tuple[str, int]]:
    """The axes slices may be painted along, as ``(name, array axis)``: ``("z (0)", 0)`` …
    in 3D, ``("rows (0)", 0), ("columns (1)", 1)`` in 2D."""
    from .core.slices import AXIS_NAMES

    return [(f"{name} ({axis})", axis) for axis, name in enumerate(AXIS_NAMES[ndim])]


def fine_tune(
    volume: Volume,
    painted: np.ndarray,
    axis: int,
    out: str | Path,
    *,
    checkpoint: str | Path | None = None,
    minutes: float = FINE_TUNE["minutes"],
    unlabelled: int | None = None,
    device: str = "auto",
    seed: int = 0,
    keep_prior: bool = False,
    mirror: bool | None = None,
    image_depth: bool | None = None,
    image_mask: bool | None = None,
    image_segmentation: bool | None = None,
) -> FineTune:
    """Check everything and prepare fine-tuning on ``volume``'s ``painted`` slices along
    ``axis``; :meth:`FineTune.events` runs it. Nothing runs or is written here.

    ``out`` is the checkpoint file to write (an existing file is refused, never replaced);
    ``checkpoint`` the model to start from (None: the bundled one for the volume's
    dimensionality); ``keep_prior`` keeps its prior instead of re-fitting it to the slices
    (docs/RESULTS.md, "Keeping the bundled model's prior"); ``mirror``, ``image_depth``,
    ``image_mask`` and ``image_segmentation`` are TrainConfig's (None: mirrored patches, the
    prior as deep as the organ in the image and, on one painted slice, the pose mask and the
    segmentation taught that organ: the fine-tuning defaults). Raises AnnotationError (the
    painting), ValueError (shapes, ``minutes`` ≤ 0), IncompatibleCheckpoint (another kind or
    dimensionality), FileExistsError (``out``).
    """
    from .core.data import array_sample
    from .core.inference import default_checkpoint
    from .core.io import check_output_file
    from .core.slices import painted_slices
    from .core.train import TrainConfig, Trainer

    image = np.asarray(volume.array)
    painted = np.asarray(painted)
    if painted.shape != image.shape:
        raise ValueError(f"the painted labels have shape {painted.shape} but the image has "
                         f"{image.shape}; paint a Labels layer of the image's shape")
    labels = painted_slices(painted, axis, unlabelled=unlabelled)
    out = check_output_file(out, overwrite=False, what="checkpoint")
    init = Path(checkpoint) if checkpoint is not None else default_checkpoint(image.ndim)
    kind = _kind_of(init)
    config = TrainConfig(
        kind=kind, iterations=FINE_TUNE["iterations"], minutes=minutes,
        lr=FINE_TUNE["lr"], patch_size=_patch(image.shape), device=device, seed=seed,
        init=str(init), checkpoint=str(out), keep_prior=keep_prior,
        tune="all" if kind == "unet" else FINE_TUNE["tune"], mirror=mirror,
        image_depth=image_depth, image_mask=image_mask, image_segmentation=image_segmentation,
    )
    sample = array_sample(image, labels.labels, volume.spacing, "painted", labels.ignore_value)
    trainer = Trainer(config, [sample])  # refuses an init of another kind or dimensionality
    return FineTune(volume, trainer, _counted(labels), out, device)


class FineTune:
    """A prepared run (:func:`fine_tune`): what counts, where the checkpoint goes, the events."""

    def __init__(self, volume: Volume, trainer, counted: Counted, out: Path, device: str):
        self.volume, self.trainer, self.counted = volume, trainer, counted
        self.checkpoint, self.device = out, device

    def events(self, should_stop: Callable[[], bool] | None = None) -> Iterator[Step | Finished]:
        """:class:`Step` per training step, then one :class:`Finished` (its ``result`` None
        when ``should_stop()`` ended the run: the checkpoint is written, nothing segmented)."""
        started = time.perf_counter()
        last = None
        for event in self.trainer.events(should_stop):
            last = event
            if not event.stopped:
                yield Step(event.step, event.fraction, event.loss)
        stopped = bool(last is not None and last.stopped)
        result = None if stopped else segment(self.volume, self.checkpoint, device=self.device)
        yield Finished(result, self.checkpoint, self.counted, self.trainer.step,
                       time.perf_counter() - started, stopped)


def _counted(labels) -> Counted:
    return Counted(labels.axis, labels.slices, labels.voxels, labels.organ_voxels,
                   labels.summary())


def _kind_of(checkpoint: Path) -> str:
    """The model kind a checkpoint holds (CheckpointError for a file that holds no model)."""
    from .core.io import load_checkpoint
    from .errors import CheckpointError

    kind = load_checkpoint(checkpoint).get("model", {}).get("kind")
    if kind is None:
        raise CheckpointError(f"{checkpoint} holds no model to fine-tune")
    return kind


def _patch(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Training patches: the volume rounded up to 16 voxels, at most ``FINE_TUNE["patch"]``."""
    return tuple(min(FINE_TUNE["patch"], -(-n // 16) * 16) for n in shape)
