"""Whole-volume inference: load a checkpoint, segment a volume, report progress, honour cancel.

``predict_volume`` normalises the image (1–99 percentiles), pads it to a multiple of 16 (the
U-Net's need) with the pad offset passed to the model so the prior stays the global function of
the *unpadded* volume, runs one forward pass under ``torch.inference_mode`` and crops back.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from .._resources import resource_path
from ..errors import Cancelled, OutOfMemory, SpacingWarning
from .flow.certificate import Upsampling
from .flow.velocity import VelocitySpace
from .models import KINDS, TemplateTransformer
from .nets import DIVISOR
from .prior import GeneralisedGaussianPrior, ImagePrior
from .progress import Progress

__all__ = [
    "DEFAULT_CHECKPOINT",
    "DEFAULT_CHECKPOINT_2D",
    "Cancelled",
    "CoarseFlow",
    "LoadedModel",
    "OutOfMemory",
    "Prediction",
    "default_checkpoint",
    "estimate_bytes",
    "load_model",
    "predict_volume",
    "spacing_mismatch",
]

DEFAULT_CHECKPOINT = "difftt_phantom_bch.pt"
SPACING_TOLERANCE = 0.2  # relative spacing difference per axis above which predict warns
DEFAULT_CHECKPOINT_2D = "difftt_phantom2d_bch.pt"


class LoadedModel(NamedTuple):
    model: TemplateTransformer  # in eval mode, on ``device``
    checkpoint: dict  # the whole checkpoint as loaded (config, spacing, training, versions)
    device: torch.device


class CoarseFlow(NamedTuple):
    """The velocities as the model integrated them: on the coarse grid of the padded volume, in
    coarse voxels. :meth:`on_image_grid` upsamples them only when asked (the Flow explorer):
    3(T + 1) floats per image voxel that a segmentation does not need."""

    velocities: np.ndarray  # (T, n, *C) float32 coarse voxels, C = space.coarse_shape(padded)
    velocity: np.ndarray | None  # (n, *C) the combined velocity, exp(velocity) = Φ (svf, bch)
    space: VelocitySpace  # the model's velocity space (coarse ↔ fine)
    padded: tuple[int, ...]  # the padded image grid the coarse grid pools
    crop: tuple[slice, ...]  # the volume inside ``padded``
    # (n, *C) float32 coarse voxels: Prediction.displacement is its to_fine, cropped
    displacement: np.ndarray | None = None

    @property
    def pieces(self) -> int:
        """T, the number of velocity fields (1 for svf)."""
        return int(self.velocities.shape[0])

    def on_image_grid(self) -> tuple[np.ndarray | None, np.ndarray]:
        """``(velocity (n, *S) | None, velocities (T, n, *S))`` upsampled to the volume's grid
        (:meth:`VelocitySpace.to_fine`), float32 image voxels."""
        fields = torch.from_numpy(self.velocities)
        with torch.inference_mode():
            fine = self.space.to_fine(fields, self.padded)[(..., *self.crop)].numpy().copy()
            velocity = None
            if self.velocity is not None:
                velocity = self.space.to_fine(torch.from_numpy(self.velocity)[None],
                                              self.padded)[0][(..., *self.crop)].numpy().copy()
        return velocity, fine

    def upsampling(self) -> Upsampling | None:
        """Where the prediction's displacement came from, for the certified fold tests
        (:mod:`.flow.certificate`); None without a coarse displacement."""
        if self.displacement is None:
            return None
        return Upsampling(torch.from_numpy(self.displacement), self.space.factor,
                          tuple(s.start for s in self.crop))


class Prediction(NamedTuple):
    probability: np.ndarray  # (*S) float32 in [0, 1]
    segmentation: np.ndarray  # (*S) uint8, probability > the model's threshold
    displacement: np.ndarray | None  # (n, *S) float32 voxels, Φ = id + u (None for unet)
    flow: CoarseFlow | None  # the velocities on the model's coarse grid (svf, bch)
    prior: np.ndarray  # (*S) float32, the unwarped prior
    topology: dict | None = None  # core.metrics.topology_report of segmentation and displacement
    pose: np.ndarray | None = None  # (n + 1, n + 1) the model's pose of the prior (core.pose)

    def with_topology(self) -> Prediction:
        """This prediction with :attr:`topology` filled: :func:`core.metrics.topology_report`
        of its segmentation and displacement (its fold tests certified from the coarse
        displacement where the flow has one: the same counts, a fraction of the work)."""
        from .metrics import topology_report

        upsampling = None if self.flow is None else self.flow.upsampling()
        return self._replace(topology=topology_report(self.segmentation, self.displacement,
                                                      upsampling=upsampling))


def default_checkpoint(ndim: int = 3) -> Path:
    """Path of the bundled pretrained model for ``ndim``-D images (3: ``DEFAULT_CHECKPOINT``,
    3D phantoms; 2: ``DEFAULT_CHECKPOINT_2D``, 2D phantoms); see resources/MODEL_CARD.md."""
    if ndim not in (2, 3):
        raise ValueError(f"bundled models exist for 2D and 3D images, got ndim={ndim!r}")
    name = DEFAULT_CHECKPOINT if ndim == 3 else DEFAULT_CHECKPOINT_2D
    path = resource_path(name)
    if not path.is_file():
        raise FileNotFoundError(
            f"the bundled checkpoint {name} is missing (looked for {path}); "
            "reinstall napari-difftt or train a model with `napari-difftt train`"
        )
    return path


def load_model(path: str | os.PathLike, device: str | torch.device = "auto") -> LoadedModel:
    """Load a checkpoint into a :class:`TemplateTransformer` in eval mode on ``device``.

    Errors name the file: a field missing, unknown or of the wrong type (named, e.g.
    ``model.prior.shape``; :func:`core.schema.check_model`), NaN/Inf weights, unknown model
    kinds, configs or weights that do not fit this version (newer/corrupt files are refused by
    :func:`core.io.load_checkpoint`).
    """
    from .device import resolve_device
    from .io import CheckpointError, load_checkpoint
    from .schema import check_model

    path = Path(path)
    checkpoint = load_checkpoint(path)
    check_model(path, checkpoint)
    config = checkpoint["model"]
    kind = config["kind"]
    if kind not in KINDS:
        raise CheckpointError(
            f"{path} holds a model of unknown kind {kind!r}; this napari-difftt knows {KINDS}"
        )
    try:
        model = TemplateTransformer.from_config(config)
        model.load_state_dict(checkpoint["state_dict"])
    except (ValueError, TypeError, RuntimeError) as error:
        raise CheckpointError(
            f"{path} does not fit this version's {kind!r} model: {error}"
        ) from error
    target = resolve_device(device)
    return LoadedModel(model.to(target).eval(), checkpoint, target)


def predict_volume(
    model: TemplateTransformer,
    image: np.ndarray,
    *,
    device: str | torch.device | None = None,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
    normalise: bool = True,
    memory_limit: int | None = None,
    spacing: Sequence[float] | None = None,
    model_spacing: Sequence[float] | None = None,
    topology: bool = True,
    prior: GeneralisedGaussianPrior | ImagePrior | None = None,
) -> Prediction:
    """Segment a whole volume ``image`` ``(*S)`` (2D or 3D, matching ``model.ndim``): a numpy
    array or a tensor (detached first: no gradient flows through a prediction).

    ``device`` None: where the model is; otherwise the model is moved there. ``progress(done,
    total, message)`` is called as the stages finish; ``should_stop()`` is polled between stages
    and True raises :class:`Cancelled`. ``normalise=False`` skips the percentile normalisation
    (for images already normalised). ``memory_limit`` (bytes) overrides the memory available on
    the device; an estimated need above it raises :class:`OutOfMemory` naming both sizes.
    The image goes to the model's device (a model and an input on different devices never
    meet). ``spacing`` (mm per axis of ``image``) and ``model_spacing`` (the checkpoint's
    ``spacing``), when both given and more than 20 % apart on an axis, give a
    :class:`~napari_difftt.errors.SpacingWarning` (:func:`spacing_mismatch`). ``topology``
    fills ``Prediction.topology`` (:func:`core.metrics.topology_report`). ``prior`` replaces
    the model's prior for this call only (moved to the model's device; the model is not
    changed). The velocities stay on the coarse grid (:class:`CoarseFlow`).
    """
    if torch.is_tensor(image):  # e.g. one that requires grad: its values are what is segmented
        image = image.detach().cpu().numpy()
    image = np.asarray(image)
    if image.ndim != model.ndim or min(image.shape) < 2:
        raise ValueError(
            f"image must be a {model.ndim}D array (the model is {model.ndim}D) with >= 2 voxels "
            f"per axis, got shape {image.shape}"
        )
    message = spacing_mismatch(spacing, model_spacing)
    if message is not None:
        warnings.warn(message, SpacingWarning, stacklevel=2)
    if device is not None:
        from .device import resolve_device

        model.to(resolve_device(device))
    target = next(model.parameters()).device
    total = 4

    def step(done: int, message: str) -> None:
        if should_stop is not None and should_stop():
            raise Cancelled(f"prediction cancelled while {message}")
        if progress is not None:
            progress(done, total, message)

    step(0, "normalising")
    if normalise:
        from .data import normalise_intensity

        image = normalise_intensity(image)
    padded_shape = tuple(max(DIVISOR, math.ceil(s / DIVISOR) * DIVISOR) for s in image.shape)
    before = tuple((p - s) // 2 for p, s in zip(padded_shape, image.shape, strict=True))
    _check_memory(model, padded_shape, target, memory_limit)
    pads = [(b, p - s - b) for b, p, s in zip(before, padded_shape, image.shape, strict=True)]
    padded = np.pad(image.astype(np.float32, copy=False), pads, mode="constant")
    template = None if prior is None else prior.to(target)
    step(1, "running the network")
    try:
        with torch.inference_mode():
            tensor = torch.from_numpy(padded)[None, None].to(target)
            result = model(tensor, offset=tuple(-b for b in before), full_shape=image.shape,
                           prior=template)
            step(2, "copying the results")
            crop = tuple(slice(b, b + s) for b, s in zip(before, image.shape, strict=True))
            flow = _coarse_flow(model.velocity_space, result, padded_shape, crop)
            pose = None if result.pose is None else result.pose[0].double().cpu().numpy()
            arrays = [_crop(t, crop) for t in (result.probability, result.prior,
                                                result.displacement)]
    except torch.cuda.OutOfMemoryError as error:
        raise OutOfMemory(
            f"the GPU ran out of memory for a {image.shape} volume (padded to {padded_shape}): "
            "crop or downsample the volume, close other GPU programs, or use device='cpu'"
        ) from error
    finally:
        if target.type == "cuda":
            torch.cuda.empty_cache()
    probability, unwarped, displacement = arrays
    probability = probability[0, 0]
    step(3, "thresholding")
    prediction = Prediction(
        probability, (probability > model.threshold).astype(np.uint8),
        None if displacement is None else displacement[0], flow, unwarped[0, 0], pose=pose,
    )
    if topology:
        prediction = prediction.with_topology()
    if progress is not None:
        progress(total, total, "done")
    return prediction


def spacing_mismatch(
    spacing: Sequence[float] | None, model_spacing: Sequence[float] | None, name: str = "the image"
) -> str | None:
    """A warning text when ``spacing`` differs from ``model_spacing`` (mm per axis) by more than
    :data:`SPACING_TOLERANCE` (20 %) on some axis; None when they agree or one is unknown."""
    if spacing is None or not model_spacing or len(spacing) != len(model_spacing):
        return None
    pairs = list(zip(spacing, model_spacing, strict=True))
    if all(t > 0 and abs(s - t) <= SPACING_TOLERANCE * t for s, t in pairs):
        return None
    shown = " × ".join(f"{s:g}" for s in spacing)
    trained = " × ".join(f"{t:g}" for t in model_spacing)
    return (
        f"{name} has {shown} mm voxels but the model was trained on {trained} mm (more than "
        f"{SPACING_TOLERANCE:.0%} apart): predictions may suffer; resample it (predict --spacing) "
        "or train on data of this spacing"
    )


def estimate_bytes(model: TemplateTransformer, shape: tuple[int, ...]) -> int:
    """Rough peak memory (bytes) of one forward pass on a padded grid of ``shape``.

    Float32 values per voxel: the larger of the U-Net's full-resolution activations (skips,
    concatenated decoder input, interpolation and block outputs: ≈ 12 × width in 3D, 16 × width
    in 2D where the coarser levels weigh more) and the flow's working fields (exp's copies ≈ 8n,
    plus ≈ 4n² for the Jacobians of BCH's Lie brackets), plus the outputs kept (T velocities,
    velocity, displacement, probability, prior); then a 25 % margin. Measured peaks on the CPU
    (2D 256², 3D 64³ and 128²×64, widths 8 and 16) were 57–91 % of this estimate.
    """
    n, voxels = model.ndim, math.prod(shape)
    net = (12 if n == 3 else 16) * model.width + 4
    flow = 0 if model.kind == "unet" else 8 * n
    if model.kind == "bch" and model.method == "bch" and model.pieces > 1:
        flow += 4 * n * n
    kept = 3 + (0 if model.kind == "unet" else (model.pieces + 2) * n)
    return int(1.25 * 4 * voxels * (max(net, flow) + kept))


# --------------------------------------------------------------------------------------------
# helpers


def _check_memory(model, shape: tuple[int, ...], device: torch.device, limit: int | None) -> None:
    need = estimate_bytes(model, shape)
    available = _available_bytes(device) if limit is None else int(limit)
    if available is not None and need > available:
        raise OutOfMemory(
            f"a volume padded to {shape} needs about {_gib(need)} on {device} but only "
            f"{_gib(available)} is available: crop or downsample the volume, or use a device "
            "with more memory"
        )


def _available_bytes(device: torch.device) -> int | None:
    """Free memory on ``device`` in bytes, or None when it cannot be told."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    if device.type != "cpu":
        return None
    import psutil

    return int(psutil.virtual_memory().available)


def _coarse_flow(space: VelocitySpace, result, padded: tuple[int, ...],
                 crop: tuple[slice, ...]) -> CoarseFlow | None:
    """The first batch item's coarse velocities as numpy (None when the model has none)."""
    if result.velocities is None:
        return None
    velocity = None if result.velocity is None else result.velocity[0].float().cpu().numpy()
    coarse = result.coarse_displacement
    coarse = None if coarse is None else coarse[0].float().cpu().numpy()
    return CoarseFlow(result.velocities[0].float().cpu().numpy(), velocity, space, padded, crop,
                      coarse)


def _crop(tensor: torch.Tensor | None, crop: tuple[slice, ...]) -> np.ndarray | None:
    """``tensor``'s crop as a contiguous float32 numpy array: a copy where the crop is a
    strided view (a padded volume) or the tensor is not float32 on the CPU, else a view of the
    tensor's memory (the forward pass's outputs are fresh tensors that nothing else holds)."""
    if tensor is None:
        return None
    return np.ascontiguousarray(tensor[(..., *crop)].float().cpu().numpy())


def _gib(size: int) -> str:
    return f"{size / 2**30:.2f} GiB"
