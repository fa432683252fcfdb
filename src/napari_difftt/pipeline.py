"""The one Qt-free pipeline that the CLI and every widget call: numpy in, numpy out, with the
affine. Its use cases, each a typed function:

* :func:`segment` — a volume and a model (or checkpoint) → :class:`Result`, *the* record of one
  prediction: its arrays, the input volume (affine, header), the prior used (``to_dict``), the
  model kind, metrics against a ground truth, the topology report and — for the GUI — the
  source layer's ``unique_id`` and the layers shown of it.
* :func:`predict_files` — the one batch loop (``napari-difftt predict`` and Run folder).
* :func:`export` — a result's files, named by the one contract :data:`OUTPUTS` (the README's
  "Outputs"), all checked and computed before the first is written; a failure leaves none.
* :func:`jacobian_report` and :func:`flow_frames` — what the Jacobian and Flow explorer widgets
  show of a result; :func:`prior_values` and the prior helpers for the Shape prior widget;
  :func:`train` and the sample helpers for the Train widget.

torch is imported on first use, so importing this module is cheap. Arrays are in array order
(z, y, x); displacements and velocities in voxels.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .core.paths import is_nifti, nifti_stem
from .core.progress import Progress
from .errors import Cancelled

if TYPE_CHECKING:
    import torch

    from .core.data import Sample
    from .core.fields import JacobianReport
    from .core.flow.frames import FlowFrames
    from .core.inference import LoadedModel, Prediction
    from .core.io import Volume
    from .core.prior import GeneralisedGaussianPrior, WorldEllipsoid
    from .core.train import TrainConfig, TrainEvent

__all__ = [
    "FLOW_PATHS",
    "MESH_FORMATS",
    "METRIC_LABELS",
    "OUTPUTS",
    "Batch",
    "Result",
    "arrows",
    "checkpoint_prior",
    "default_checkpoint",
    "deformed_grid",
    "endpoint_gap",
    "export",
    "fit_prior",
    "flow_frames",
    "folder_samples",
    "format_metrics",
    "format_topology",
    "grid_coordinates",
    "isotropic_spacing",
    "jacobian_report",
    "list_inputs",
    "load",
    "output_paths",
    "parse_size",
    "plan_files",
    "predict_files",
    "prior_from_display",
    "prior_to_display",
    "prior_values",
    "release_freed_memory",
    "segment",
    "split_validation",
    "train",
    "training_sample",
]

# the one file contract of predict, the Run model folder batch and the Export widget
OUTPUTS = {
    "seg": "_seg.nii.gz",  # labels 0/1, uint8
    "prob": "_prob.nii.gz",  # probability, float32
    "jacdet": "_jacdet.nii.gz",  # det ∇Φ by central differences, float32
    "displacement": "_displacement.npy",  # u of Φ = id + u, (n, *S) float32 voxels
    "mesh": "_surface",  # + MESH_FORMATS: the segmentation's surface in world mm (3D only)
}
MESH_FORMATS = (".stl", ".obj")
ARRAY_NAMES = {"seg": "segmentation", "prob": "probability", "jacdet": "displacement",
               "displacement": "displacement", "mesh": "segmentation"}  # what each output needs
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
# the flow paths of flow_frames (core.flow.frames builds them), with their labels
FLOW_PATHS = {
    "piecewise": "piecewise time-dependent: v₁ … v_T in turn",
    "stationary": "stationary: exp(t·z) of the combined velocity",
}
PREDICT_STAGES = 4  # core.inference.predict_volume's progress stages


@dataclass(frozen=True)
class Result:
    """The record of one prediction and what made it: the pipeline returns it, the widgets store
    it (:class:`~napari_difftt.widgets._state.ViewerState`), and :func:`export`,
    :func:`flow_frames` and :func:`jacobian_report` read it. Nothing is recovered by guessing."""

    prediction: Prediction  # core.inference.Prediction, arrays in the volume's array order
    volume: Volume  # the input: its array, affine (index → world mm), header and path
    prior: dict | None  # to_dict() of the prior the model used (a tuned one when given)
    kind: str | None  # the model kind: "bch" | "svf" | "stt" | "unet"
    metrics: dict | None = None  # core.metrics.evaluate_case against the truth, else None
    checkpoint: Path | None = None  # the checkpoint used (None: a model passed in memory)
    device: str = "cpu"  # the device actually used
    seconds: float = 0.0  # wall time of segment()
    warning: str | None = None  # e.g. the volume's spacing differs from the training spacing
    source: str | None = None  # napari Layer.unique_id of the image layer it was computed from
    threshold: float = 0.5  # the model's segmentation threshold: segmentation = probability > it
    # role ("probability", "segmentation", ...) → unique_id of the layers the GUI shows of it;
    # filled by the widget that adds them, on the GUI thread
    layers: dict[str, str] = field(default_factory=dict, compare=False)

    @property
    def affine(self) -> np.ndarray:
        """``(4, 4)`` index (z, y, x, 1) → world mm of the volume."""
        return np.asarray(self.volume.affine, dtype=float)

    @property
    def topology(self) -> dict | None:
        """The prediction's :func:`core.metrics.topology_report` (folds, components)."""
        return self.prediction.topology

    @classmethod
    def of_arrays(
        cls,
        volume: Volume,
        segmentation: np.ndarray | None,
        probability: np.ndarray | None = None,
        displacement: np.ndarray | None = None,
    ) -> Result:
        """A result holding only these arrays on ``volume``'s grid (no model made them)."""
        from .core.inference import Prediction

        prior = np.zeros(volume.array.shape, np.float32)
        return cls(Prediction(probability, segmentation, displacement, None, prior), volume,
                   None, None)


@dataclass(frozen=True)
class Batch:
    """What :func:`predict_files` wrote."""

    written: list[Path]  # every file written, in order
    files: int  # volumes segmented
    folder: Path  # where


# -------------------------------------------------------------------------------- prediction
def load(checkpoint: str | Path, device: str = "auto") -> LoadedModel:
    """A checkpoint's model in eval mode on ``device`` (:func:`core.inference.load_model`), to
    :func:`segment` many volumes with one load."""
    from .core.inference import load_model

    return load_model(checkpoint, device=device)


def default_checkpoint(ndim: int = 3) -> Path:
    """The bundled model for ``ndim``-D images (:func:`core.inference.default_checkpoint`)."""
    from .core.inference import default_checkpoint as bundled

    return bundled(ndim)


def release_freed_memory() -> None:
    """Give freed heap pages back to the system (:func:`core.allocator.release_freed_memory`):
    what napari's long jobs do as they end, so an idle viewer does not keep a job's peak."""
    from .core.allocator import release_freed_memory as release

    release()


def segment(
    volume: Volume | np.ndarray,
    model: LoadedModel | str | Path,
    prior: dict | None = None,
    truth: np.ndarray | None = None,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
    *,
    device: str = "auto",
    resample_mm: float | str | None = None,
    ignore_value: int | None = None,
    source: str | None = None,
) -> Result:
    """Segment ``volume`` (a :class:`core.io.Volume`, or an array ``(*S)`` with 1 mm voxels).

    ``model`` is a checkpoint path (loaded on ``device``) or a loaded model, which is never
    changed: ``prior`` (a ``to_dict()`` description) is built for this call and passed to the
    forward pass, so calls with different priors may run at once on one model. ``truth``
    ``(*S)`` (non-zero = inside, ``ignore_value`` = unlabelled) fills ``Result.metrics``.
    ``progress(done, total, message)``; with ``should_stop`` the forward pass runs under
    :class:`core.interrupt.Interruptible` (cancel between torch operations, progress per
    convolution) and True raises :class:`~napari_difftt.errors.Cancelled`. ``resample_mm``
    resamples the volume to that isotropic spacing for the network and the probability back
    onto the volume's grid (linear, then > the model's threshold); the displacement and the
    topology report are then the network grid's; "model" means the model's own (isotropic)
    training spacing (:func:`isotropic_spacing`). ``source`` is recorded as :attr:`Result.source`.
    An image that is not 2D/3D, has an axis of one voxel, no finite voxel or no contrast
    (constant) is refused first, naming its file (:class:`~napari_difftt.errors.VolumeError`).
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
    if resample_mm == "model":
        resample_mm = isotropic_spacing(loaded.checkpoint.get("spacing"))
    if resample_mm is not None:
        from .core.data import resample

        image = resample(image.astype(np.float32), spacing, resample_mm, order=1)
        spacing = (float(resample_mm),) * image.ndim
    template = None
    if prior is not None:
        from .core.prior import prior_from_dict

        template = prior_from_dict(prior)
    prediction = _predict(loaded, image, template, progress, should_stop)
    used_prior = _deformed_prior(loaded.model.prior if template is None else template,
                                 prediction.pose)
    if resample_mm is not None:
        from .core.data import resample_back

        probability = resample_back(prediction.probability, spacing, volume.spacing,
                                    volume.array.shape)
        prediction = prediction._replace(
            probability=probability,
            segmentation=(probability > loaded.model.threshold).astype(np.uint8))
    metrics = None
    if truth is not None:
        from .core.metrics import evaluate_case

        displacement = None if resample_mm is not None else prediction.displacement
        metrics = evaluate_case(prediction.segmentation, truth, volume.spacing, displacement,
                                ignore_value=ignore_value,
                                topology=None if resample_mm is not None else prediction.topology)
    name = "the image" if volume.path is None else str(volume.path)
    warning = spacing_mismatch(spacing, loaded.checkpoint.get("spacing"), name)
    return Result(prediction, volume, used_prior, loaded.model.kind, metrics, checkpoint,
                  str(loaded.device), time.perf_counter() - start, warning, source,
                  loaded.model.threshold)


def isotropic_spacing(trained: Sequence[float] | None) -> float:
    """The one spacing (mm) of an isotropic training spacing ``trained`` (a checkpoint's
    "spacing"); ValueError when it is unknown or differs between axes."""
    if not trained or len(set(trained)) != 1:
        raise ValueError(f"resampling to the model's spacing needs an isotropic training spacing "
                         f"in the checkpoint, which has {trained}; give a spacing in mm")
    return float(trained[0])


def predict_files(
    inputs: Iterable[str | Path],
    out: str | Path,
    model: LoadedModel | str | Path,
    what: Sequence[str] = ("seg",),
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
    overwrite: bool = False,
    *,
    device: str = "auto",
    resample_mm: float | None = None,
    on_case: Callable[[Path, Result, list[Path]], None] | None = None,
) -> Batch:
    """Segment every NIfTI file of ``inputs`` (files, or folders of them) with one loaded model
    and write the outputs ``what`` (keys of :data:`OUTPUTS`) of each into ``out``.

    Before any work: the inputs are listed (:func:`list_inputs`), ``out`` must be writable and
    no output may exist unless ``overwrite`` (FileExistsError naming the first and the count).
    ``progress(done, total, message)`` covers the whole batch; ``should_stop`` cancels between
    torch operations (:func:`segment`), and the files of finished volumes are kept. Each case is
    exported whole or not at all (:func:`export`). ``on_case(input, result, written)`` runs
    after each volume (e.g. the CLI prints its topology report).
    """
    from .core.io import read_nifti

    files = list(plan_files(inputs, out, what, overwrite))
    out = Path(out)
    loaded = load(model, device=device) if isinstance(model, str | Path) else model
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for index, path in enumerate(files):
        label = f"[{index + 1}/{len(files)}] {path.name}"
        report = None if progress is None else _batch_progress(progress, index, len(files), label)
        volume = read_nifti(path)
        result = segment(volume, loaded, progress=report, should_stop=should_stop,
                         resample_mm=resample_mm)
        case = export(result, out, nifti_stem(path), what, overwrite=overwrite)
        written += case
        if on_case is not None:
            on_case(path, result, case)
    if progress is not None:
        progress(1000 * len(files), 1000 * len(files), "done")
    return Batch(written, len(files), out)


def plan_files(
    inputs: Iterable[str | Path], out: str | Path, what: Sequence[str], overwrite: bool = False
) -> dict[Path, dict[str, Path]]:
    """``{input: {key: output path}}`` of :func:`predict_files`, checked before any work: the
    inputs exist and are NIfTI (:func:`list_inputs`), ``out`` is writable, and no output exists
    unless ``overwrite`` (FileExistsError naming the first and the count)."""
    from .core.io import check_output_folder

    out = check_output_folder(out)
    planned = {path: output_paths(out, nifti_stem(path), what) for path in list_inputs(inputs)}
    existing = [p for outs in planned.values() for p in outs.values() if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{existing[0]} exists ({len(existing)} output(s) in all) in {out}")
    return planned


def export(
    result: Result,
    folder: str | Path,
    stem: str,
    what: Iterable[str],
    *,
    overwrite: bool = False,
    mesh_format: str = ".stl",
) -> list[Path]:
    """Write the outputs ``what`` (keys of :data:`OUTPUTS`) of ``result`` into ``folder``.

    Every NIfTI file gets the affine and header of ``result.volume``. All or nothing: the names,
    the arrays (present, on the volume's grid: segmentation and probability ``(*S)``, the
    displacement ``(n, *S)``), the mesh's dimensionality and existing files (FileExistsError
    unless ``overwrite``) are checked and every output is computed before the first file is
    written; if writing one fails (a full disk raises :class:`~napari_difftt.errors.DiskFull`)
    the files this call had already written new are removed again. Returns the files written.
    """
    from .core.io import atomic_write, write_nifti

    paths = output_paths(folder, stem, what, mesh_format)
    contents = _export_contents(result, paths)
    existing = {path for path in paths.values() if path.exists()}
    if existing and not overwrite:
        first = next(path for path in paths.values() if path in existing)
        raise FileExistsError(f"{first} exists ({len(existing)} output(s) in all); "
                              "choose another name or allow overwriting")
    volume, written = result.volume, []
    try:
        for key, path in paths.items():
            content = contents[key]
            if key in ("seg", "prob", "jacdet"):
                write_nifti(path, content, like=volume, labels=key == "seg", overwrite=overwrite)
            elif key == "displacement":
                atomic_write(path, lambda tmp, array=content: np.save(tmp, array),
                             overwrite=overwrite)
            else:
                from .core.mesh import write_mesh

                write_mesh(path, content, overwrite=overwrite)
            written.append(path)
    except BaseException:
        for path in written:
            if path not in existing:
                path.unlink(missing_ok=True)
        raise
    return written


def jacobian_report(result: Result, displacement: np.ndarray | None = None,
                    grid_axes: tuple[int, ...] | None = None) -> JacobianReport:
    """det ∇φ, fold fractions (central and digital), folded regions, a deformed grid (its
    lines crossing the planes of ``grid_axes``, default the last two) and the log₂ display
    (:func:`core.fields.jacobian_report`) of the result's Φ, or of ``displacement``
    ``(n, *S)`` voxels: another map of this prediction on its grid (e.g. φ(t) of its
    :func:`flow_frames`). Raises ValueError, naming the model kind, when there is no
    displacement (a U-Net), or when ``displacement`` is not on the volume's grid."""
    from .core.fields import jacobian_report as report

    return report(_displacement(result, displacement), grid_axes)


def deformed_grid(result: Result, displacement: np.ndarray | None = None,
                  axes: tuple[int, ...] | None = None) -> np.ndarray:
    """The deformed grid of :func:`jacobian_report` alone, for the slices spanned by ``axes``
    (:func:`core.fields.deformed_grid`): redrawn when the viewer shows another orientation."""
    from .core.fields import deformed_grid as grid

    return grid(_displacement(result, displacement), axes)


def _displacement(result: Result, displacement: np.ndarray | None) -> np.ndarray:
    """``displacement`` (default: the result's Φ), checked to be on the volume's grid."""
    shape = tuple(result.volume.array.shape)
    if displacement is None:
        displacement = result.prediction.displacement
    if displacement is None:
        kind = f"a {result.kind!r}" if result.kind else "this"
        raise ValueError(f"{kind} model predicts no displacement: there is no Jacobian to show")
    if np.shape(displacement) != (len(shape), *shape):
        raise ValueError(f"a displacement of shape {np.shape(displacement)} is not on this "
                         f"prediction's grid {shape}")
    return np.asarray(displacement)


def flow_frames(result: Result, count: int, path: str) -> FlowFrames:
    """Lazy frames S(φ(t_k)), k = 0 … ``count`` − 1, of a result along ``path``.

    ``path`` "piecewise" (v₁ … v_T in turn) or "stationary" (exp(t·z), ending at Φ). The coarse
    velocities are upsampled to the image grid here, once per call
    (:meth:`core.inference.CoarseFlow.on_image_grid`). The prior is evaluated analytically at
    φ(t)(x) from the result's own ``prior`` description; without one the prior array is
    resampled (exact at the voxels, linear in between). Raises ValueError saying what is
    missing when the model has no such flow.
    """
    import torch

    from .core.flow.frames import (
        FlowFrames,
        evaluate_prior,
        piecewise_path,
        stationary_path,
        warp_prior,
    )

    if path not in FLOW_PATHS:
        raise ValueError(f"path must be one of {sorted(FLOW_PATHS)}, got {path!r}")
    prediction = result.prediction
    shape = tuple(prediction.prior.shape)
    coarse = prediction.flow
    if coarse is None:
        raise ValueError(
            "This prediction has no velocity field (a 'stt' or 'unet' model predicts no flow): "
            "run a 'bch' or 'svf' model to explore its flow."
        )
    if path == "stationary" and coarse.velocity is None:
        raise ValueError("This prediction has no combined velocity (its pieces are composed): "
                         "choose the piecewise path.")
    velocity, velocities = coarse.on_image_grid()
    if path == "piecewise":
        flow = piecewise_path(torch.from_numpy(velocities)[None])
    else:
        endpoint = None
        if prediction.displacement is not None:
            endpoint = torch.from_numpy(np.asarray(prediction.displacement))[None]
        flow = stationary_path(torch.from_numpy(velocity)[None], endpoint, steps=count - 1)
    if result.prior is None:
        render = warp_prior(prediction.prior)
    else:
        from .core.prior import prior_from_dict

        render = evaluate_prior(prior_from_dict(result.prior), shape)
    return FlowFrames(flow, count, render, shape)


def endpoint_gap(frames: FlowFrames, displacement: np.ndarray | None) -> float:
    """Largest distance (voxels) between the last frame's φ(1) and the model's Φ (0 if
    unknown) (:func:`core.fields.endpoint_gap`)."""
    from .core.fields import endpoint_gap as gap

    return gap(frames, displacement)


def arrows(displacement: np.ndarray) -> np.ndarray:
    """napari vectors ``(N, 2, n)`` of a displacement ``(n, *S)`` voxels on a subsampled grid
    (:func:`core.fields.arrows`)."""
    from .core.fields import arrows as vectors

    return vectors(displacement)


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
            found = sorted(p for p in item.iterdir() if p.is_file() and is_nifti(p))
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
def checkpoint_prior(path: str | Path, ndim: int) -> GeneralisedGaussianPrior | None:
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


def prior_from_display(
    mean_mm: Sequence[float], radii_mm: Sequence[float], rotation_deg: Sequence[float],
    beta: float, shape: Sequence[int], scale: Sequence[float], translate: Sequence[float],
) -> GeneralisedGaussianPrior:
    """The prior of an ellipsoid in a viewer's world (mm, degrees) on an image of ``shape`` drawn
    with napari's ``scale``/``translate`` (:func:`core.prior.from_display`)."""
    from .core.prior import from_display

    return from_display(mean_mm, radii_mm, rotation_deg, beta, shape, scale, translate)


def prior_to_display(
    prior: GeneralisedGaussianPrior, shape: Sequence[int], scale: Sequence[float],
    translate: Sequence[float],
) -> WorldEllipsoid:
    """The inverse of :func:`prior_from_display` (:func:`core.prior.to_display`)."""
    from .core.prior import to_display

    return to_display(prior, shape, scale, translate)


def fit_prior(mask: np.ndarray, beta: float) -> GeneralisedGaussianPrior:
    """A prior of shape exponent ``beta`` whose ½-contour matches ``mask`` ``(*S)``
    (:func:`core.prior.fit_to_mask`)."""
    from .core.prior import fit_to_mask

    return fit_to_mask(mask, beta=beta)


def grid_coordinates(shape: Sequence[int]) -> torch.Tensor:
    """Normalised coordinates ``(1, n, *S)`` of a whole grid (:func:`core.prior.grid_coordinates`),
    for :func:`prior_values`."""
    from .core.prior import grid_coordinates as coordinates

    return coordinates(shape)


def prior_values(
    prior, coords, where: tuple = (Ellipsis,), *, one_thread: bool = False
) -> np.ndarray:
    """Values of a prior module at ``coords[(:, :, *where)]`` (normalised coordinates
    ``(1, n, *S)``, :func:`grid_coordinates`) as a float32 array ``(*S')``.

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


# -------------------------------------------------------------------------------- training
def training_sample(image: np.ndarray, labels: np.ndarray, spacing: Sequence[float], name: str,
                    ignore_value: int) -> Sample:
    """A training sample of arrays (copied, normalised, checked: :func:`core.data.array_sample`)."""
    from .core.data import array_sample

    return array_sample(image, labels, spacing, name, ignore_value)


def folder_samples(images: Path, labels: Path, ignore_value: int) -> list[Sample]:
    """The samples of an imagesTr/labelsTr pair of folders (:func:`core.data.load_nifti_folder`)."""
    from .core.data import load_nifti_folder

    return load_nifti_folder(images, labels, ignore_value=ignore_value)


def parse_size(text: str, ndim: int | None = None, *, what: str = "size") -> tuple[int, ...]:
    """"64, 64, 32" (or "64x64") as ints, with ``ndim`` exactly that many
    (:func:`core.data.parse_size`); the ValueError starts with ``what``."""
    from .core.data import parse_size as parse

    return parse(text, ndim, what=what)


def split_validation(samples: Sequence[Sample]) -> tuple[list[Sample], list[Sample]]:
    """(train, validation): the last sample held out when there are two or more, else the one
    sample twice (:func:`core.data.split_validation`)."""
    from .core.data import split_validation as split

    return split(samples)


def train(
    config: TrainConfig, samples: Sequence[Sample], validation: Sequence[Sample],
    should_stop: Callable[[], bool],
) -> Generator[TrainEvent, None, int]:
    """Train a model as ``config`` says, yielding one :class:`core.train.TrainEvent` per step;
    returns the number of steps done. A stop ends the run after the current step with a
    checkpoint; closing the generator does the same, in the thread that closes it."""
    from contextlib import closing

    from .core.train import Trainer

    trainer = Trainer(config, samples, validation)
    with closing(trainer.events(should_stop)) as events:
        yield from events
    return trainer.step


# -------------------------------------------------------------------------------- helpers
def _predict(loaded: LoadedModel, image: np.ndarray, prior, progress: Progress | None,
             should_stop: Callable[[], bool] | None) -> Prediction:
    """predict_volume with ``prior`` (None: the model's); with ``should_stop``, interruptible
    with per-convolution progress."""
    from .core.inference import predict_volume

    if should_stop is None:
        return predict_volume(loaded.model, image, device=loaded.device, progress=progress,
                              prior=prior)
    from .core.interrupt import Interruptible, count_convolutions

    report = progress or (lambda done, total, message: None)
    convolutions = count_convolutions(loaded.model)
    total = convolutions + PREDICT_STAGES

    def stage(done: int, _total: int, message: str) -> None:  # predict_volume's 0…STAGES
        report(done if done <= 1 else done + convolutions, total, message)

    def convolved(done: int) -> None:
        report(1 + min(done, convolutions), total, f"network: {done} of {convolutions} layers")

    with Interruptible(should_stop, convolved):
        prediction = predict_volume(loaded.model, image, device=loaded.device, progress=stage,
                                    should_stop=should_stop, prior=prior, topology=False)
    # the topology report outside the mode: its fold tests are a few hundred small operations
    # (cache-sized slabs), each of which the mode would poll (benchmarks/bench_inference.py)
    if should_stop():
        raise Cancelled("prediction cancelled before the topology report")
    return prediction.with_topology()


def _deformed_prior(prior, pose: np.ndarray | None) -> dict:
    """``to_dict()`` of the prior the flow deformed: ``prior`` itself, or with a pose level
    (:mod:`core.pose`) the posed prior S∘A, so the Flow explorer's t = 0 and t = 1 and Export
    use the prior the segmentation came from."""
    if pose is None:
        return prior.to_dict()
    import torch

    from .core.pose import posed_prior

    return posed_prior(prior, torch.as_tensor(pose)).to_dict()


def _batch_progress(progress: Progress, index: int, count: int, label: str) -> Progress:
    """One case's ``progress`` as a part of the batch's: case ``index`` of ``count`` spans
    [index, index + 1) of a total of ``count`` units, in thousandths."""
    def report(done: int, total: int, message: str = "") -> None:
        part = min(max(done / max(total, 1), 0.0), 1.0)
        progress(int(1000 * (index + part)), 1000 * count, f"{label}: {message}")

    return report


def _export_contents(result: Result, paths: dict[str, Path]) -> dict[str, Any]:
    """Every output's content (arrays, mesh), each checked against the volume's grid; raises
    ValueError saying what is missing or misfits before anything is written."""
    prediction, shape = result.prediction, tuple(result.volume.array.shape)
    arrays = {"seg": prediction.segmentation, "prob": prediction.probability,
              "jacdet": prediction.displacement, "displacement": prediction.displacement,
              "mesh": prediction.segmentation}
    flowless = ("the Jacobian determinant and the displacement need a prediction with a flow "
                "(a bch/svf/stt model); this one has none")
    missing = {"seg": "this result has no segmentation to export",
               "mesh": "this result has no segmentation to export",
               "prob": "this result has no probability to export",
               "jacdet": flowless, "displacement": flowless}
    contents: dict[str, Any] = {}
    for key in paths:
        array = arrays[key]
        if array is None:
            raise ValueError(missing[key])
        array = np.asarray(array)
        expected = (len(shape), *shape) if key in ("jacdet", "displacement") else shape
        if array.shape != expected:
            raise ValueError(f"the {ARRAY_NAMES[key]} has shape {array.shape} but the volume's "
                             f"grid needs {expected}: it is not this volume's prediction")
        contents[key] = array
    if "mesh" in paths and len(shape) != 3:
        raise ValueError("a 2D segmentation has no surface: the mesh needs a 3D segmentation")
    if "jacdet" in contents:
        from .core.fields import jacobian_determinant

        contents["jacdet"] = jacobian_determinant(contents["jacdet"])
    if "displacement" in contents:
        contents["displacement"] = contents["displacement"].astype(np.float32)
    if "mesh" in contents:
        from .core.mesh import surface_mesh

        contents["mesh"] = surface_mesh(contents["mesh"], result.volume.affine)
    return contents


def _unit_affine(ndim: int) -> np.ndarray:
    """The affine of 1 mm voxels at the origin (core.io convention)."""
    from .core.io import display_affine

    return display_affine((1.0,) * ndim, (0.0,) * ndim)


def _format_value(value: Any) -> str:
    if isinstance(value, bool | int | np.integer):
        return str(int(value))
    value = float(value)
    return "∞" if np.isinf(value) else f"{value:.3f}"
