"""Flow explorer: the prior warped along the flow, S(φ(t)(x)), scrubbed with napari's t slider.

The frames are a lazy :class:`core.frames.FlowFrames` array ``(K, *S)``: napari renders only the
frame the slider shows, each frame is computed once and cached. After "Show flow" a worker fills
the cache in the background (with progress, cancellable) so playback is smooth; lazy access
alone already works, so cancelling loses nothing. The t axis has scale 1/(K − 1): the world
coordinate on the slider is t itself. Optional: the displacement at the current t as a
subsampled Vectors layer (arrow from x to φ(t)(x), where the output samples the prior).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from napari.utils.notifications import show_warning
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ._layers import derived_kwargs, layer_metadata
from ._lifetime import Lifetime
from ._state import ViewerState

if TYPE_CHECKING:
    from napari.layers import Layer

    import napari

    from ..core.frames import FlowFrames
    from ._state import PredictionRecord

__all__ = ["FlowExplorerWidget", "current_frame", "flow_layer"]

FRAMES_ROLE = "flow_frames"
VECTORS_ROLE = "flow_vectors"
PATH_LABELS = {
    "piecewise": "piecewise time-dependent: v₁ … v_T in turn",
    "stationary": "stationary: exp(t·z) of the combined velocity",
}
NO_PREDICTION = "No prediction yet: run the model first (Run model widget), then show its flow."
MAX_ARROWS_PER_AXIS = 24


class FlowExplorerWidget(QWidget):
    """Dock widget: φ(t)∘S as an Image layer ``(t, *S)`` with an optional displacement overlay."""

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.state = ViewerState.of(napari_viewer)
        self.frames: FlowFrames | None = None
        self.layer: Layer | None = None
        self.vectors: Layer | None = None
        self.job = None

        self.info = QLabel(NO_PREDICTION)
        self.info.setWordWrap(True)
        self.path = QComboBox()
        for key, label in PATH_LABELS.items():
            self.path.addItem(label, key)
        self.count = QSpinBox()
        self.count.setRange(2, 201)
        self.count.setValue(17)
        self.count.setToolTip("Frames from t = 0 (the prior) to t = 1 (the prediction)")
        self.show_vectors = QCheckBox("displacement arrows at the current t")
        self.show_button = QPushButton("Show flow")
        self.cancel_button = QPushButton("Stop precomputing")
        self.cancel_button.setEnabled(False)
        self.path.setToolTip("which flow φ(t) to follow from the prior (t = 0) to Φ (t = 1)")
        self.show_vectors.setToolTip("arrows from x to φ(t)(x), where the output samples the "
                                     "prior (pull-back)")
        self.show_button.setToolTip("Show φ(t)∘S as a layer with a t slider; frames are "
                                    "precomputed in the background")
        self.cancel_button.setToolTip("Stop precomputing (frames are still computed on demand)")
        self.progress = QProgressBar()
        self.progress.setVisible(False)
        self.status = QLabel("")
        self.status.setWordWrap(True)

        form = QFormLayout()
        form.addRow("path", self.path)
        form.addRow("frames", self.count)
        form.addRow(self.show_vectors)
        buttons = QHBoxLayout()
        buttons.addWidget(self.show_button)
        buttons.addWidget(self.cancel_button)
        layout = QVBoxLayout(self)
        layout.addWidget(self.info)
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        layout.addStretch(1)

        self.show_button.clicked.connect(self.show_flow)
        self.cancel_button.clicked.connect(self.cancel)
        self.show_vectors.toggled.connect(self._update_vectors)
        self.state.changed.connect(self._on_state)
        self.viewer.dims.events.current_step.connect(self._on_step)
        self.lifetime = Lifetime(self, self._on_closed)
        self._on_state("prediction")

    # ---------------------------------------------------------------- public API
    def show_flow(self) -> Layer | None:
        """Build the frames for the current prediction and show them; returns the layer."""
        record = self.state.prediction
        if record is None:
            show_warning(NO_PREDICTION)
            self.status.setText(NO_PREDICTION)
            return None
        try:
            override = self.state.prior if self.state.prior_source == record.source.name else None
            frames = build_frames(record, self.path.currentData(), self.count.value(), override)
        except ValueError as error:
            show_warning(str(error))
            self.status.setText(str(error))
            return None
        self.cancel()
        self.frames = frames
        self.layer = self._show_layer(record.source, frames)
        self.status.setText(
            f"{len(frames)} frames, t = 0 (prior) … 1 (prediction); drag or play the t slider."
        )
        self._update_vectors()
        self._precompute()
        return self.layer

    def cancel(self) -> None:
        """Stop precomputing frames (frames are still computed when the slider reaches them)."""
        if self.job is not None:
            self.job.cancel()

    # ---------------------------------------------------------------- layers
    def _show_layer(self, source: Layer, frames: FlowFrames) -> Layer:
        name = f"φ(t)∘S {source.name}"
        kwargs = derived_kwargs(source, name, FRAMES_ROLE, leading_axes=1)
        kwargs["scale"] = (1.0 / (len(frames) - 1), *kwargs["scale"][1:])
        kwargs["axis_labels"] = ("t", *("z", "y", "x")[3 - source.ndim :])
        kwargs["units"] = ("", *kwargs["units"][1:])
        existing = flow_layer(self.viewer, source.name)
        if existing is not None:
            existing.data = frames
            existing.scale = kwargs["scale"]
            existing.refresh()
            layer = existing
        else:
            layer = self.viewer.add_image(
                frames, colormap="inferno", contrast_limits=(0.0, 1.0), blending="additive",
                opacity=0.7, rgb=False, multiscale=False, **kwargs
            )
        self.viewer.dims.set_current_step(self.viewer.dims.ndim - layer.ndim, 0)
        return layer

    def _on_step(self, *_: object) -> None:
        if not self.lifetime.closed:
            self._update_vectors(create=False)

    def _update_vectors(self, *_: object, create: bool = True) -> None:
        """Show the arrows of the current t. Only the checkbox and Show flow create the layer;
        the t slider updates it, so arrows removed by the user (or by napari closing and
        clearing its layers) are never brought back behind their back."""
        if self.vectors is not None and self.vectors not in self.viewer.layers:
            self.vectors = None  # removed by the user (or the viewer closing): stay removed
            self.show_vectors.setChecked(False)
        if self.frames is None or self.layer is None or self.layer not in self.viewer.layers:
            return
        if not self.show_vectors.isChecked():
            if self.vectors is not None:
                self.vectors.visible = False
            return
        data = arrows(self.frames.displacement(current_frame(self.viewer, self.layer)))
        if self.vectors is not None:
            self.vectors.data = data
            self.vectors.visible = True
        elif create:
            source = self.state.prediction.source if self.state.prediction else None
            if source is None or source not in self.viewer.layers:
                return
            kwargs = derived_kwargs(source, f"u(t) {source.name}", VECTORS_ROLE)
            self.vectors = self.viewer.add_vectors(
                data, edge_color="cyan", edge_width=0.3, length=1.0, vector_style="arrow", **kwargs
            )
            self.viewer.layers.selection.active = self.layer

    # ---------------------------------------------------------------- background frames
    def _precompute(self) -> None:
        from ._worker import start_job

        frames, record = self.frames, self.state.prediction

        def task(should_stop):
            from ..core.interrupt import Interruptible

            for k in range(len(frames)):
                with Interruptible(should_stop):  # Stop acts within a frame, not after it
                    frames.frame(k)
                yield k + 1, len(frames), f"frame {k + 1} of {len(frames)}"
            return endpoint_gap(frames, record.prediction.displacement)

        self.progress.setRange(0, len(frames))
        self.progress.setValue(0)
        self.progress.setVisible(True)
        self.cancel_button.setEnabled(True)
        self.lifetime.watch(self)
        live = self.lifetime.guard
        self.job = start_job(task, on_progress=live(self._on_progress), on_done=live(self._on_done),
                             on_error=live(self._on_error), on_finished=live(self._on_finished))

    def _on_progress(self, done: int, total: int, message: str) -> None:
        self.progress.setValue(done)
        self.progress.setFormat(message)

    def _on_done(self, gap: float | None) -> None:
        if gap is None:
            return
        text = f"{len(self.frames)} frames ready; t = 0 is the prior."
        if gap <= 1e-4:
            text += " t = 1 is the prediction's Φ."
        else:
            text += (f" The piecewise path ends {gap:.3g} voxels (max) away from the model's Φ "
                     "(BCH truncation); the stationary path ends exactly at Φ.")
        self.status.setText(text)

    def _on_error(self, error: BaseException) -> None:
        from ._worker import explain

        message = f"Computing the flow frames failed: {explain(error)}"
        show_warning(message)
        self.status.setText(message)

    def _on_finished(self) -> None:
        if self.job is not None and self.job.worker.is_running:
            return  # a cancelled earlier pass ended; the newer one is still running
        self.job = None
        self.cancel_button.setEnabled(False)
        self.progress.setVisible(False)

    # ---------------------------------------------------------------- state
    def _on_state(self, what: str) -> None:
        if what != "prediction":
            return
        record = self.state.prediction
        if record is None:
            self.info.setText(NO_PREDICTION)
            return
        prediction = record.prediction
        pieces = None if prediction.velocities is None else prediction.velocities.shape[0]
        parts = [f"Prediction of {record.source.name!r}"]
        if pieces:
            parts.append(f"T = {pieces} pieces")
        if prediction.velocity is None and pieces is None:
            parts.append("no velocity field: this model kind has no flow")
        self.info.setText(", ".join(parts) + ".")

    def _on_closed(self) -> None:
        if self.job is not None:
            self.job.cancel()
        self.state.changed.disconnect(self._on_state)
        self.viewer.dims.events.current_step.disconnect(self._on_step)


def build_frames(
    record: PredictionRecord, path: str, count: int, prior_override: dict | None = None
) -> FlowFrames:
    """Lazy frames S(φ(t_k)) of a prediction along ``path`` ("piecewise" | "stationary").

    The prior is evaluated analytically at φ(t)(x) when :func:`analytic_prior` finds the one
    used, else the prior array is resampled. Raises ValueError saying what is missing when the
    model has no such flow.
    """
    import torch

    from ..core.frames import (
        FlowFrames,
        evaluate_prior,
        piecewise_path,
        stationary_path,
        warp_prior,
    )

    prediction = record.prediction
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
        flow = stationary_path(velocity, endpoint)
    else:
        raise ValueError(f"path must be one of {sorted(PATH_LABELS)}, got {path!r}")
    prior = analytic_prior(record, prior_override)
    render = warp_prior(prediction.prior) if prior is None else evaluate_prior(prior, shape)
    return FlowFrames(flow, count, render, shape)


def analytic_prior(record: PredictionRecord, override: dict | None = None):
    """The analytic prior module the prediction used, or None when it cannot be identified.

    Candidates: ``override`` (the tuned prior of the Shape prior widget), then the checkpoint's
    own prior. One is accepted only if it reproduces ``prediction.prior`` on the grid (so a
    prior tuned after the run is never mistaken for the one used); otherwise the frames resample
    the prior array instead (exact at the voxels, linear in between).
    """
    import torch

    from ..core.io import load_checkpoint
    from ..core.prior import prior_from_dict

    candidates = [override] if override is not None else []
    try:
        candidates.append(load_checkpoint(record.checkpoint)["model"]["prior"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    expected = np.asarray(record.prediction.prior)
    for description in candidates:
        try:
            prior = prior_from_dict(description)
            with torch.inference_mode():
                values = prior.on_grid(expected.shape, dtype=torch.float32)[0, 0].numpy()
        except (ValueError, TypeError, KeyError):
            continue
        if np.allclose(values, expected, atol=1e-5):
            return prior
    return None


def endpoint_gap(frames: FlowFrames, displacement: np.ndarray | None) -> float:
    """Largest distance (voxels) between the last frame's φ(1) and the model's Φ (0 if unknown)."""
    if displacement is None:
        return 0.0
    difference = frames.displacement(len(frames) - 1) - np.asarray(displacement)
    return float(np.sqrt((difference**2).sum(0)).max())


def flow_layer(viewer: napari.Viewer, source: str | None = None) -> Layer | None:
    """The flow-frames layer this plugin made (of ``source`` when given), else None."""
    from ..core.frames import FlowFrames

    for layer in reversed(viewer.layers):
        entry = layer_metadata(layer)
        if entry.get("role") != FRAMES_ROLE or not isinstance(layer.data, FlowFrames):
            continue
        if source is None or entry.get("source") == source:
            return layer
    return None


def current_frame(viewer: napari.Viewer, layer: Layer) -> int:
    """Index of the frame of ``layer`` (a flow-frames layer) at the viewer's current t."""
    axis = viewer.dims.ndim - layer.ndim
    t = (viewer.dims.point[axis] - layer.translate[0]) / layer.scale[0]
    return int(np.clip(round(t), 0, layer.data.shape[0] - 1))


def arrows(displacement: np.ndarray) -> np.ndarray:
    """Napari vectors ``(N, 2, n)`` of a displacement ``(n, *S)`` voxels on a subsampled grid.

    Every slice along the first axis of a 3D volume keeps its arrows (so each 2D view has some);
    in-plane axes are subsampled to at most ~24 arrows per axis. An arrow that would leave the
    volume is shortened (same direction) to end on its border, so the arrows never widen the
    viewer's dims range.
    """
    n = displacement.shape[0]
    shape = displacement.shape[1:]
    steps = [max(1, int(np.ceil(size / MAX_ARROWS_PER_AXIS))) for size in shape]
    if n == 3:
        steps[0] = 1
    index = tuple(slice(step // 2, None, step) for step in steps)
    grid = np.stack(np.meshgrid(*[np.arange(size)[i] for size, i in zip(shape, index, strict=True)],
                                indexing="ij"), axis=-1).reshape(-1, n)
    vectors = displacement[(slice(None), *index)].reshape(n, -1).T
    top = np.asarray(shape, dtype=float) - 1
    with np.errstate(divide="ignore", invalid="ignore"):
        room = np.where(vectors > 0, (top - grid) / vectors, np.where(vectors < 0, -grid / vectors,
                                                                      np.inf))
    vectors = vectors * np.clip(room.min(axis=1, keepdims=True), 0.0, 1.0)
    return np.stack([grid, vectors], axis=1).astype(np.float32)
