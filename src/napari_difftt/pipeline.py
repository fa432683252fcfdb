"""The one Qt-free pipeline that the CLI and every widget call: numpy in, numpy out, with the
affine.

* :func:`segment` — a volume and a model (or checkpoint) → :class:`Result`: the prediction, the
  description of the prior used (``to_dict``), the model kind, metrics against a ground truth
  and the topology report.
* :func:`export` — a result's files, named by the one contract :data:`OUTPUTS` (see the README's
  "Outputs"): ``STEM_seg.nii.gz``, ``STEM_prob.nii.gz``, ``STEM_jacdet.nii.gz`` (det ∇Φ, central
  differences), ``STEM_displacement.npy`` (``(n, *S)`` float32, voxels, array order) and
  ``STEM_surface.stl|.obj``; the NIfTI files carry the volume's affine and header.
* :func:`jacobian_report` — det ∇φ, fold fractions (central and digital), folded regions, a
  deformed grid and the log₂ display of one displacement (:mod:`napari_difftt.core.fields`,
  served here with ``arrows`` and ``endpoint_gap``).
* :func:`flow_frames` — the lazy frames S(φ(t)) of a result along a path, from its own prior.

Widgets keep only Qt/napari orchestration and reach the core through this module (see
docs/ARCHITECTURE.md); torch is imported on first use, so importing this module is cheap.
Arrays are in array order (z, y, x); displacements and velocities in voxels.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .core.paths import nifti_stem  # re-exported: the one NIfTI stem helper

if TYPE_CHECKING:
    from .core.flow.frames import FlowFrames
    from .core.inference import LoadedModel, Prediction
    from .core.io import Volume

__all__ = [
    "MESH_FORMATS",
    "METRIC_LABELS",
    "OUTPUTS",
    "PATHS",
    "Result",
    "checkpoint_prior",
    "export",
    "flow_frames",
    "format_metrics",
    "format_topology",
    "is_nifti",
    "list_inputs",
    "load",
    "nifti_stem",
    "output_paths",
    "prior_values",
    "segment",
]

Progress = Callable[[int, int, str], None]

# the one file contract of predict, the Run model folder batch and the Export widget
OUTPUTS = {
    "seg": "_seg.nii.gz",  # labels 0/1, uint8
    "prob": "_prob.nii.gz",  # probability, float32
    "jacdet": "_jacdet.nii.gz",  # det ∇Φ by central differences, float32
    "displacement": "_displacement.npy",  # u of Φ = id + u, (n, *S) float32 voxels
    "mesh": "_surface",  # + MESH_FORMATS: the segmentation's surface in world mm (3D only)
}
MESH_FORMATS = (".stl", ".obj")
# core.metrics.METRIC_KEYS shown by the widgets and the demo, in this order, with their labels
METRIC_LABELS = {
    "dice": "Dice",
    "hausdorff": "HD (mm)",
    "hd95": "HD95 (mm)",
    "folding_central": "% det J ≤ 0 (central differences)",
    "folding_digital": "% det J ≤ 0 (digital test)",
    "components": "components",
    "components_full": "components (full connectivity)",
}
PATHS = {
    "piecewise": "piecewise time-dependent: v₁ … v_T in turn",
    "stationary": "stationary: exp(t·z) of the combined velocity",
}
PREDICT_STAGES = 4  # core.inference.predict_volume's progress stages
# core names the widgets use as they are, served lazily (importing them loads torch)
_CORE = {
    "FlowFrames": "core.flow.frames",
    "GRID_EVERY": "core.fields",
    "JacobianReport": "core.fields",
    "arrows": "core.fields",
    "endpoint_gap": "core.fields",
    "grid_lines": "core.fields",
    "jacobian_report": "core.fields",
    "GeneralisedGaussianPrior": "core.prior",
    "Interruptible": "core.interrupt",
    "count_convolutions": "core.interrupt",
    "default_checkpoint": "core.inference",
    "evaluate_case": "core.metrics",
    "fit_to_mask": "core.prior",
    "grid_coordinates": "core.prior",
    "list_devices": "core.device",
    "prior_from_display": "core.prior:from_display",
    "prior_to_display": "core.prior:to_display",
    "read_nifti": "core.io",
    "summarise": "core.metrics",
    "topology_report": "core.metrics",
    # training (the Train widget drives core.train's Trainer and its events)
    "DEFAULTS": "core.train.config",
    "KINDS": "core.train.config",
    "PARAMETERISATIONS": "core.train.config",
    "TrainConfig": "core.train",
    "Trainer": "core.train",
    "array_sample": "core.data",
    "load_nifti_folder": "core.data",
    "parse_size": "core.data",
    "split_validation": "core.data",
}


def __getattr__(name: str) -> Any:
    if name not in _CORE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module, _, attribute = _CORE[name].partition(":")
    return getattr(importlib.import_module(f"{__package__}.{module}"), attribute or name)


@dataclass(frozen=True)
class Result:
    """One prediction and what made it (provenance: nothing is recovered later by guessing)."""

    prediction: Prediction  # core.inference.Prediction, arrays in the volume's array order
    affine: np.ndarray  # (4, 4) index (z, y, x, 1) → world mm, the volume's
    prior: dict | None  # to_dict() of the prior the model used (a tuned one when given)
    kind: str | None  # the model kind: "bch" | "svf" | "stt" | "unet"
    metrics: dict | None = None  # core.metrics.evaluate_case against the truth, else None
    checkpoint: Path | None = None  # the checkpoint used (None: a model passed in memory)
    device: str = "cpu"  # the device actually used
    seconds: float = 0.0  # wall time of segment()
    warning: str | None = None  # e.g. the volume's spacing differs from the training spacing

    @property
    def topology(self) -> dict | None:
        """The prediction's :func:`core.metrics.topology_report` (folds, components)."""
        return self.prediction.topology

    @classmethod
    def of_arrays(
        cls,
        segmentation: np.ndarray | None,
        affine: np.ndarray,
        probability: np.ndarray | None = None,
        displacement: np.ndarray | None = None,
    ) -> Result:
        """A result holding only these arrays (e.g. layers to export; no model made them)."""
        from .core.inference import Prediction

        prediction = Prediction(probability, segmentation, displacement, None, None, None)
        return cls(prediction, np.asarray(affine, dtype=float), None, None)


# -------------------------------------------------------------------------------- entry points
def load(checkpoint: str | Path, device: str = "auto") -> LoadedModel:
    """A checkpoint's model in eval mode on ``device`` (:func:`core.inference.load_model`), to
    :func:`segment` many volumes with one load."""
    from .core.inference import load_model

    return load_model(checkpoint, device=device)


def segment(
    volume: Volume | np.ndarray,
    model: LoadedModel | str | Path,
    prior: dict | None = None,
    truth: np.ndarray | None = None,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
    *,
    device: str = "auto",
    resample_mm: float | None = None,
    ignore_value: int | None = None,
    velocities: bool = True,
) -> Result:
    """Segment ``volume`` (a :class:`core.io.Volume`, or an array ``(*S)`` with 1 mm voxels).

    ``model`` is a checkpoint path (loaded on ``device``) or a loaded model. ``prior`` (a
    ``to_dict()`` description) replaces the model's prior for this call. ``truth`` ``(*S)``
    (non-zero = inside, ``ignore_value`` = unlabelled) fills ``Result.metrics``.
    ``progress(done, total, message)``; with ``should_stop`` the forward pass runs under
    :class:`core.interrupt.Interruptible` (cancel between torch operations, progress per
    convolution) and True raises :class:`core.inference.Cancelled`. ``resample_mm`` resamples
    the volume to that isotropic spacing for the network and the probability back onto the
    volume's grid (linear, then > 0.5); the displacement and the topology report are then the
    network grid's. ``velocities=False`` leaves out the velocity fields that only replaying the
    flow needs (:func:`flow_frames`), for callers that only write files. An image that is not
    2D/3D, has an axis of one voxel, no finite voxel or no contrast (constant) is refused
    first, naming its file (:class:`~napari_difftt.errors.VolumeError`).
    """
    from .core.data import check_segmentable
    from .core.inference import LoadedModel, spacing_mismatch
    from .core.io import Volume

    start = time.perf_counter()
    if not isinstance(volume, Volume):
        array = np.asarray(volume)
        check_segmentable(array, "the image")
        volume = Volume(array, _unit_affine(array.ndim))
    else:
        check_segmentable(volume.array, "the image" if volume.path is None else str(volume.path))
    checkpoint = None if isinstance(model, LoadedModel) else Path(model)
    loaded = model if checkpoint is None else load(checkpoint, device=device)
    image, spacing = volume.array, volume.spacing
    if loaded.model.ndim != image.ndim:
        name = "the model" if checkpoint is None else checkpoint.name
        raise ValueError(f"{name} is a {loaded.model.ndim}D model but the image is "
                         f"{image.ndim}D; choose a {image.ndim}D checkpoint")
    if resample_mm is not None:
        from .core.data import _resample

        image = _resample(image.astype(np.float32), spacing, resample_mm, order=1)
        spacing = (float(resample_mm),) * image.ndim
    own_prior = loaded.model.prior
    if prior is not None:
        from .core.prior import prior_from_dict

        loaded.model.prior = prior_from_dict(prior).to(loaded.device)
    try:
        used_prior = loaded.model.prior.to_dict()
        prediction = _predict(loaded, image, progress, should_stop, velocities)
    finally:
        loaded.model.prior = own_prior
    if resample_mm is not None:
        probability = _back_onto(prediction.probability, spacing, volume.spacing,
                                 volume.array.shape)
        prediction = prediction._replace(
            probability=probability, segmentation=(probability > 0.5).astype(np.uint8))
    metrics = None
    if truth is not None:
        from .core.metrics import evaluate_case

        displacement = None if resample_mm is not None else prediction.displacement
        metrics = evaluate_case(prediction.segmentation, truth, volume.spacing, displacement,
                                ignore_value=ignore_value,
                                topology=None if resample_mm is not None else prediction.topology)
    name = "the image" if volume.path is None else str(volume.path)
    warning = spacing_mismatch(spacing, loaded.checkpoint.get("spacing"), name)
    return Result(prediction, np.asarray(volume.affine, dtype=float), used_prior,
                  loaded.model.kind, metrics, checkpoint, str(loaded.device),
                  time.perf_counter() - start, warning)


def export(
    result: Result,
    volume: Volume,
    folder: str | Path,
    stem: str,
    what: Iterable[str],
    *,
    overwrite: bool = False,
    mesh_format: str = ".stl",
) -> list[Path]:
    """Write the outputs ``what`` (keys of :data:`OUTPUTS`) of ``result`` into ``folder``.

    ``volume`` gives the affine and header of every NIfTI file (its array is not written).
    Every name is checked before anything is written: an existing file raises
    FileExistsError unless ``overwrite``; "jacdet"/"displacement" without a displacement (a
    U-Net) and "mesh" of a 2D segmentation raise ValueError. Returns the files written.
    """
    from .core.io import write_nifti

    paths = output_paths(folder, stem, what, mesh_format)
    prediction = result.prediction
    if {"jacdet", "displacement"} & set(paths) and prediction.displacement is None:
        raise ValueError("the Jacobian determinant and the displacement need a prediction with "
                         "a flow (a bch/svf/stt model); this one has none")
    if {"seg", "mesh"} & set(paths) and prediction.segmentation is None:
        raise ValueError("this result has no segmentation to export")
    if "mesh" in paths and np.ndim(prediction.segmentation) != 3:
        raise ValueError("a 2D segmentation has no surface: the mesh needs a 3D segmentation")
    if "prob" in paths and prediction.probability is None:
        raise ValueError("this result has no probability to export")
    existing = [path for path in paths.values() if path.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{existing[0]} exists ({len(existing)} output(s) in all); "
                              "choose another name or allow overwriting")
    written = []
    for key, path in paths.items():
        if key == "seg":
            written.append(write_nifti(path, prediction.segmentation, like=volume, labels=True,
                                       overwrite=overwrite))
        elif key == "prob":
            written.append(write_nifti(path, prediction.probability, like=volume,
                                       overwrite=overwrite))
        elif key == "jacdet":
            from .core.fields import jacobian_determinant

            written.append(write_nifti(path, jacobian_determinant(prediction.displacement),
                                       like=volume, overwrite=overwrite))
        elif key == "displacement":
            np.save(path, np.asarray(prediction.displacement, dtype=np.float32))
            written.append(path)
        else:
            from .core.mesh import surface_mesh, write_mesh

            mesh = surface_mesh(np.asarray(prediction.segmentation), volume.affine)
            written.append(write_mesh(path, mesh, overwrite=overwrite))
    return written


def flow_frames(result: Any, count: int, path: str) -> FlowFrames:
    """Lazy frames S(φ(t_k)), k = 0 … ``count`` − 1, of a prediction along ``path``.

    ``result``: a :class:`Result` (or anything with its ``prediction`` and ``prior``).
    ``path`` "piecewise" (v₁ … v_T in turn) or "stationary" (exp(t·z), ending at Φ). The prior
    is evaluated analytically at φ(t)(x) from the result's own ``prior`` description; without
    one the prior array is resampled (exact at the voxels, linear in between). Raises
    ValueError saying what is missing when the model has no such flow.
    """
    import torch

    from .core.flow.frames import (
        FlowFrames,
        evaluate_prior,
        piecewise_path,
        stationary_path,
        warp_prior,
    )

    prediction = result.prediction
    shape = tuple(prediction.prior.shape)
    if path == "piecewise":
        if prediction.velocities is None:
            raise ValueError(
                "This prediction has no piecewise velocities (the model is not time-dependent): "
                "choose the stationary path, or run a 'bch' model."
            )
        flow = piecewise_path(torch.from_numpy(np.asarray(prediction.velocities))[None])
    elif path == "stationary":
        if prediction.velocity is None:
            raise ValueError(
                "This prediction has no velocity field (a 'stt' or 'unet' model predicts no flow): "
                "run a 'bch' or 'svf' model to explore its flow."
            )
        velocity = torch.from_numpy(np.asarray(prediction.velocity))[None]
        endpoint = None
        if prediction.displacement is not None:
            endpoint = torch.from_numpy(np.asarray(prediction.displacement))[None]
        flow = stationary_path(velocity, endpoint, steps=count - 1)
    else:
        raise ValueError(f"path must be one of {sorted(PATHS)}, got {path!r}")
    if result.prior is None:
        render = warp_prior(prediction.prior)
    else:
        from .core.prior import prior_from_dict

        render = evaluate_prior(prior_from_dict(result.prior), shape)
    return FlowFrames(flow, count, render, shape)


# -------------------------------------------------------------------------------- files
def output_paths(
    folder: str | Path, stem: str, what: Iterable[str], mesh_format: str = ".stl"
) -> dict[str, Path]:
    """``{key: folder / (stem + suffix)}`` for the outputs ``what`` (keys of :data:`OUTPUTS`)."""
    what = list(what)
    unknown = [key for key in what if key not in OUTPUTS]
    if unknown or not what:
        raise ValueError(f"outputs must be some of {sorted(OUTPUTS)}, got {what!r}")
    if mesh_format not in MESH_FORMATS:
        raise ValueError(f"mesh_format must be one of {MESH_FORMATS}, got {mesh_format!r}")
    if not str(stem).strip():
        raise ValueError("enter a file name stem")
    folder = Path(folder)
    return {key: folder / f"{stem}{OUTPUTS[key]}{mesh_format if key == 'mesh' else ''}"
            for key in what}


def list_inputs(items: Iterable[Path]) -> list[Path]:
    """NIfTI files named directly or found (sorted) in the named folders; stems must differ."""
    files: list[Path] = []
    for item in map(Path, items):
        if item.is_dir():
            found = sorted(p for p in item.iterdir() if is_nifti(p))
            if not found:
                raise FileNotFoundError(f"{item}: folder holds no .nii/.nii.gz files")
            files += found
        elif item.is_file():
            if not is_nifti(item):
                raise ValueError(f"{item}: not a NIfTI file (.nii or .nii.gz)")
            files.append(item)
        else:
            raise FileNotFoundError(f"input not found: {item}")
    stems = [nifti_stem(p) for p in files]
    duplicates = sorted({s for s in stems if stems.count(s) > 1})
    if duplicates:
        raise ValueError(f"several inputs are named {duplicates[0]!r}: outputs would collide")
    return files


def is_nifti(path: Path) -> bool:
    """A file named .nii or .nii.gz."""
    return path.is_file() and path.name.endswith((".nii", ".nii.gz"))


# -------------------------------------------------------------------------------- text
def format_metrics(metrics: dict) -> str:
    """Metrics as "label: value" lines in :data:`METRIC_LABELS` order (missing ones left out)."""
    return "\n".join(f"{label}: {_format_value(metrics[key])}"
                     for key, label in METRIC_LABELS.items() if metrics.get(key) is not None)


def format_topology(report: dict) -> str:
    """The topology report (:func:`core.metrics.topology_report`) as lines: folds, components."""
    face, full = report["connectivity"]
    lines = [f"components: {report['components']} ({face}-connectivity), "
             f"{report['components_full']} ({full}-connectivity)"]
    if report.get("folding_central") is not None:
        lines.insert(0, f"folds (det J ≤ 0): {_format_value(report['folding_central'])} % "
                        f"central, {_format_value(report['folding_digital'])} % digital")
    verdict = "holds" if report.get("holds") else "does not hold"
    lines.append(f"topology promise (one component, no digital fold): {verdict}")
    return "\n".join(lines)


# -------------------------------------------------------------------------------- priors
def checkpoint_prior(path: str | Path, ndim: int):
    """The generalised Gaussian prior a checkpoint was trained with, if it is one of ``ndim``
    dimensions; None when the file is unreadable or holds another prior."""
    from .core.io import load_checkpoint
    from .core.prior import prior_from_dict

    try:
        described = load_checkpoint(Path(path))["model"]["prior"]
        if described.get("type") == "generalised_gaussian" and described["ndim"] == ndim:
            return prior_from_dict(described)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass
    return None


def prior_values(
    prior, coords, where: tuple = (Ellipsis,), *, one_thread: bool = False
) -> np.ndarray:
    """Values of a prior module at ``coords[(:, :, *where)]`` (normalised coordinates
    ``(1, n, *S)``, :func:`core.prior.grid_coordinates`) as a float32 array ``(*S')``.

    ``one_thread`` evaluates with one torch thread: for a small piece on a busy machine a
    second intra-op thread only waits for a core (tens of ms). Without it the thread count is
    left alone, so a call in a worker thread never restores a count another thread set for a
    moment.
    """
    import torch

    threads = torch.get_num_threads()
    if one_thread:
        torch.set_num_threads(1)
    try:
        with torch.inference_mode():
            return prior(coords[(slice(None), slice(None), *where)].contiguous())[0, 0].numpy()
    finally:
        if one_thread:
            torch.set_num_threads(threads)


# -------------------------------------------------------------------------------- helpers
def _predict(loaded: LoadedModel, image: np.ndarray, progress: Progress | None,
             should_stop: Callable[[], bool] | None, velocities: bool) -> Prediction:
    """predict_volume; with ``should_stop``, interruptible with per-convolution progress."""
    from .core.inference import predict_volume

    if should_stop is None:
        return predict_volume(loaded.model, image, device=loaded.device, progress=progress,
                              velocities=velocities)
    from .core.interrupt import Interruptible, count_convolutions

    report = progress or (lambda done, total, message: None)
    convolutions = count_convolutions(loaded.model)
    total = convolutions + PREDICT_STAGES

    def stage(done: int, _total: int, message: str) -> None:  # predict_volume's 0…STAGES
        report(done if done <= 1 else done + convolutions, total, message)

    def convolved(done: int) -> None:
        report(1 + min(done, convolutions), total, f"network: {done} of {convolutions} layers")

    with Interruptible(should_stop, convolved):
        return predict_volume(loaded.model, image, device=loaded.device, progress=stage,
                              should_stop=should_stop, velocities=velocities)


def _back_onto(array, spacing, original: Sequence[float], shape: tuple[int, ...]) -> np.ndarray:
    """``array`` ``(*S')`` of ``spacing`` mm resampled (linearly, voxel 0 kept in place) onto
    the input's grid: ``shape`` voxels of ``original`` mm — the inverse of ``data._resample``."""
    from scipy import ndimage

    step = np.asarray(original, dtype=float) / np.asarray(spacing, dtype=float)
    return ndimage.affine_transform(array, step, output_shape=shape, order=1, mode="nearest")


def _unit_affine(ndim: int) -> np.ndarray:
    """The affine of 1 mm voxels at the origin (core.io convention)."""
    from .layer_metadata import display_affine

    return display_affine((1.0,) * ndim, (0.0,) * ndim)


def _format_value(value: Any) -> str:
    if isinstance(value, bool | int | np.integer):
        return str(int(value))
    value = float(value)
    return "∞" if np.isinf(value) else f"{value:.3f}"
