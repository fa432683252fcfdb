"""Flow explorer: the prior warped along the flow, S(φ(t)(x)), scrubbed with napari's t slider.

The frames are a lazy :class:`core.flow.frames.FlowFrames` array ``(K, *S)``
(:func:`napari_difftt.pipeline.flow_frames`, from the prediction's own prior): napari renders
only the frame the slider shows, each frame is computed once and cached. "Show flow" builds the
frames in a worker (checking the velocities, tens to hundreds of ms) and renders frame 0 there
too (the prior on the whole grid), so that napari's first read when the layer is added on the
GUI thread is a cache hit; a second pass then fills the cache in the background (with
progress, cancellable) so playback is smooth; lazy access alone already works, so cancelling
that pass loses nothing. A newer Show flow supersedes a build still running. The t axis has scale
1/(K − 1): the world coordinate on the slider is t itself, and the slider's label reads
"t = …" (napari numbers the steps). The default path is the one that ends at the model's Φ
(stationary exp(t·z) of the combined velocity), so t = 1 is the segmentation on screen; the
status names the path and how far its end lies from Φ. Optional: the displacement at the
current t as a subsampled Vectors layer (arrow from x to φ(t)(x), where the output samples the
prior).
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

from ..layer_metadata import layer_metadata
from ..pipeline import FLOW_PATHS, arrows, endpoint_gap, flow_frames
from ._layers import derived_kwargs
from ._lifetime import Lifetime
from ._shortcuts import key_text, register
from ._state import ViewerState
from ._worker import LatestJob

if TYPE_CHECKING:
    from napari.layers import Layer

    import napari

    from ..core.flow.frames import FlowFrames
    from ._worker import Job

__all__ = ["FlowExplorerWidget", "current_frame", "flow_layer", "resampled"]

FRAMES_ROLE = "flow_frames"
VECTORS_ROLE = "flow_vectors"
NO_PREDICTION = "No prediction yet: run the model first (Run model widget), then show its flow."
SLICES_3D = 8  # slices whose arrows a 3D view shows (a 2D view shows its own slice's)
DEFAULT_PATH = "stationary"  # exp(t·z) ends at the model's own Φ (the piecewise path may not)


class FlowExplorerWidget(QWidget):
    """Dock widget: φ(t)∘S as an Image layer ``(t, *S)`` with an optional displacement overlay."""

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.state = ViewerState.of(napari_viewer)
        self.frames: FlowFrames | None = None
        self.layer: Layer | None = None
        self.vectors: Layer | None = None
        self._building = False
        self._requested_path = self._shown_path = DEFAULT_PATH  # latest Show flow; layer shown

        self.info = QLabel(NO_PREDICTION)
        self.info.setWordWrap(True)
        self.path = QComboBox()
        for key, label in FLOW_PATHS.items():
            self.path.addItem(label, key)
        self.count = QSpinBox()
        self.count.setRange(2, 201)
        self.count.setValue(17)
        self.count.setToolTip("Frames from t = 0 (the prior) to t = 1 (the prediction)")
        self.show_vectors = QCheckBox("displacement arrows at the current t")
        self.show_button = QPushButton("Show flow")
        self.show_button.setEnabled(False)  # until a prediction with a flow is stored
        self.cancel_button = QPushButton("Stop precomputing")
        self.cancel_button.setEnabled(False)
        self.path.setToolTip("which flow φ(t) to follow from the prior (t = 0) to Φ (t = 1)")
        self.show_vectors.setToolTip("arrows from x to φ(t)(x), where the output samples the "
                                     "prior (pull-back)")
        self.show_button.setToolTip("Show φ(t)∘S as a layer with a t slider; frames are "
                                    "precomputed in the background")
        self.cancel_button.setToolTip("Stop precomputing (frames are still computed on demand; "
                                      f"{key_text('cancel')}). {key_text('t_back')} / "
                                      f"{key_text('t_forward')} step t")
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
        self.viewer.dims.events.ndisplay.connect(self._on_step)  # 3D: fewer arrows
        self.lifetime = Lifetime(self, self._on_closed)
        # building, then precomputing, the frames: a newer Show flow starts at once and only
        # the latest pass reports back
        self._passes = LatestJob(overlap=True, on_idle=self.lifetime.guard(self._on_idle))
        register(napari_viewer, self, {"cancel": self.cancel, "t_forward": (self.step_t, 1),
                                       "t_back": (self.step_t, -1)})
        self._on_state("prediction")

    # ---------------------------------------------------------------- public API
    @property
    def job(self) -> Job | None:
        """The latest pass's job (building or precomputing), while any pass runs."""
        return self._passes.job

    def show_flow(self) -> Job | None:
        """Start building the frames of the current prediction in a worker; the layer
        (:attr:`layer`) is added or updated when they are ready, then the remaining frames are
        precomputed. Returns the build's job, or None without a prediction."""
        record = self.state.prediction
        if record is None:
            show_warning(NO_PREDICTION)
            self.status.setText(NO_PREDICTION)
            return None
        count, path = self.count.value(), self.path.currentData()

        def build(should_stop):
            from ..core.interrupt import Interruptible

            yield 0, count, "building the frames"
            frames = flow_frames(record, count, path)  # checks the velocities: not cheap
            with Interruptible(should_stop):
                frames.frame(0)  # cached: napari's first read on the GUI thread is free
            return frames

        self._requested_path = path
        self._building = True
        self._start_pass(count, "building the frames")
        live = self.lifetime.guard  # weak and closed-aware; the lambda adds the record only
        built = live(self._on_built)
        self._passes.submit(build, on_progress=live(self._on_progress),
                            on_done=lambda frames: built(record, frames),
                            on_error=live(self._on_build_error),
                            on_cancelled=live(self._on_build_cancelled))
        return self.job

    @property
    def building(self) -> bool:
        """True while the frames of the latest Show flow are being built (no layer yet)."""
        return self._building

    def cancel(self) -> None:
        """Stop building or precomputing frames (frames are still computed when the slider
        reaches them)."""
        self._passes.stop()

    def step_t(self, delta: int = 1) -> int | None:
        """Move the t slider ``delta`` frames (clipped to 0 … K − 1); the frame now shown, or
        None when no flow layer is shown."""
        layer = self.layer
        if layer is None or layer not in self.viewer.layers:
            return None
        frame = int(np.clip(current_frame(self.viewer, layer) + delta, 0, len(layer.data) - 1))
        axis = self.viewer.dims.ndim - layer.ndim
        self.viewer.dims.set_point(axis, layer.translate[0] + frame * layer.scale[0])
        return frame

    # ---------------------------------------------------------------- layers
    def _show_layer(self, source: Layer, frames: FlowFrames) -> Layer:
        name = f"φ(t)∘S {source.name}"
        kwargs = derived_kwargs(source, name, FRAMES_ROLE, leading_axes=1)
        kwargs["scale"] = (1.0 / (len(frames) - 1), *kwargs["scale"][1:])
        kwargs["axis_labels"] = ("t", *("z", "y", "x")[3 - source.ndim :])
        kwargs["units"] = ("", *kwargs["units"][1:])
        existing = flow_layer(self.viewer, source)
        if existing is not None:
            # t = 0 first: napari slices the new data at the current t, and any t but 0 is a
            # whole frame rendered on the GUI thread (t = 0 is the identity: the prior alone)
            self.viewer.dims.set_current_step(self.viewer.dims.ndim - existing.ndim, 0)
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
        self.layer = layer
        self._label_t()
        return layer

    def _on_step(self, *_: object) -> None:
        if not self.lifetime.closed:
            self._label_t()
            self._update_vectors(create=False)

    def _label_t(self) -> None:
        """Write the t of the frame shown into the layer's first axis label ("t = 0.25"), which
        napari shows beside the t slider (the dims take it back from the layers)."""
        layer = self.layer
        if layer is None or layer not in self.viewer.layers:
            return
        label = f"t = {layer.data.times[current_frame(self.viewer, layer)]:.3g}"
        labels = tuple(layer.axis_labels)
        if labels[0] != label:
            layer.axis_labels = (label, *labels[1:])

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
        if self.viewer.dims.ndisplay == 3 and data.shape[-1] == 3:
            data = thin_slices(data, self.frames.shape[1])
        if self.vectors is not None:
            self.vectors.data = data
            self.vectors.visible = True
        elif create:
            source = self.state.source()
            if source is None:
                return
            kwargs = derived_kwargs(source, f"u(t) {source.name}", VECTORS_ROLE)
            self.vectors = self.viewer.add_vectors(
                data, edge_color="cyan", edge_width=0.3, length=1.0, vector_style="arrow", **kwargs
            )
            self.viewer.layers.selection.active = self.layer

    # ---------------------------------------------------------------- background frames
    def _on_built(self, record, frames: FlowFrames) -> None:
        if self.job is not None and self.job.cancel_requested:  # Stop came after its last check
            self._on_build_cancelled()
            return
        self._building = False
        source = self.state.layer(record.source)
        if source is None:
            self.status.setText("The image of this prediction was removed; nothing to show.")
            return
        self.frames = frames
        self._shown_path = self._requested_path
        self.layer = self._show_layer(source, frames)
        self.status.setText(
            f"{len(frames)} frames of the {self._shown_path} path, t = 0 (prior) … 1; drag or "
            "play the t slider."
        )
        self._update_vectors()
        self._precompute(record)

    def _on_build_error(self, error: BaseException) -> None:
        self._building = False
        if isinstance(error, ValueError):  # what the prediction lacks for this path: as it is
            show_warning(str(error))
            self.status.setText(str(error))
        else:
            self._on_error(error)

    def _on_build_cancelled(self) -> None:
        self._building = False
        self.status.setText("Stopped before the frames were shown.")

    def _start_pass(self, total: int, message: str) -> None:
        self.progress.setRange(0, total)
        self.progress.setValue(0)
        self.progress.setFormat(message)
        self.progress.setVisible(True)
        self.cancel_button.setEnabled(True)
        self.lifetime.watch(self)

    def _precompute(self, record) -> None:
        frames = self.frames

        def task(should_stop):
            from ..core.interrupt import Interruptible

            for k in range(len(frames)):
                with Interruptible(should_stop):  # Stop acts within a frame, not after it
                    frames.frame(k)
                yield k + 1, len(frames), f"frame {k + 1} of {len(frames)}"
            return endpoint_gap(frames, record.prediction.displacement)

        self._start_pass(len(frames), f"frame 0 of {len(frames)}")
        live = self.lifetime.guard
        self._passes.submit(task, on_progress=live(self._on_progress),
                            on_done=live(self._on_done), on_error=live(self._on_error))

    def _on_progress(self, done: int, total: int, message: str) -> None:
        self.progress.setValue(done)
        self.progress.setFormat(message)

    def _on_done(self, gap: float | None) -> None:
        if gap is None:
            return
        text = (f"{len(self.frames)} frames of the {self._shown_path} path ready; t = 0 is the "
                "prior.")
        if gap <= 1e-4:
            text += f" t = 1 is the prediction's Φ (its end is {gap:.2g} voxels from Φ)."
        else:
            text += (f" This path ends {gap:.3g} voxels (max) away from the model's Φ "
                     "(BCH truncation); the stationary path ends exactly at Φ.")
        self.status.setText(text)

    def _on_error(self, error: BaseException) -> None:
        from ._worker import explain

        message = f"Computing the flow frames failed: {explain(error)}"
        show_warning(message)
        self.status.setText(message)

    def _on_idle(self) -> None:
        self.cancel_button.setEnabled(False)
        self.progress.setVisible(False)

    # ---------------------------------------------------------------- state
    def _on_state(self, what: str) -> None:
        if what != "prediction":
            return
        record = self.state.prediction
        self.cancel()
        self.frames = None  # the frames of the previous prediction (its layer is removed)
        if record is None:
            self.info.setText(NO_PREDICTION)
            self.show_button.setEnabled(False)
            return
        flow = record.prediction.flow
        pieces = None if flow is None else flow.pieces
        paths = [] if flow is None else ["piecewise"] if flow.velocity is None else [
            "stationary", "piecewise"]
        source = self.state.source()
        parts = [f"Prediction of {'a removed image' if source is None else source.name!r}"]
        if pieces:
            parts.append(f"T = {pieces} pieces")
        if paths and resampled(record):
            paths = []
            parts.append("resampled to the model's spacing, so its flow lives on the network's "
                         "grid, not the image's: run without resampling to explore it")
        elif not paths:
            kind = f"a {record.kind!r}" if record.kind else "this"
            parts.append(f"{kind} model predicts no flow, so there is nothing to explore (a "
                         "'bch' or 'svf' model has one)")
        self.info.setText(", ".join(parts) + ".")
        self.show_button.setEnabled(bool(paths))
        if paths:  # the path that ends at Φ when there is one
            self.path.setCurrentIndex(self.path.findData(paths[0]))

    def _on_closed(self) -> None:
        self._passes.drop()
        self.state.changed.disconnect(self._on_state)
        self.viewer.dims.events.current_step.disconnect(self._on_step)
        self.viewer.dims.events.ndisplay.disconnect(self._on_step)


def flow_layer(viewer: napari.Viewer, source: Layer | None = None) -> Layer | None:
    """The flow-frames layer this plugin made (from the layer ``source`` when given), else None;
    matched by the source's napari ``unique_id``, not its name."""
    from ..core.flow.frames import FlowFrames

    wanted = None if source is None else source.unique_id
    for layer in reversed(viewer.layers):
        entry = layer_metadata(layer)
        if entry.get("role") != FRAMES_ROLE or not isinstance(layer.data, FlowFrames):
            continue
        if wanted is None or entry.get("source_id") == wanted:
            return layer
    return None


def thin_slices(vectors: np.ndarray, depth: int) -> np.ndarray:
    """Of 3D arrows ``(N, 2, 3)`` (one set per slice of a volume ``depth`` slices deep), those of
    :data:`SLICES_3D` evenly spaced slices: a 3D view shows every slice at once."""
    step = max(1, int(np.ceil(depth / SLICES_3D)))
    return vectors[np.round(vectors[:, 0, 0]).astype(int) % step == step // 2]


def resampled(record) -> bool:
    """True when the prediction ``record`` was computed on a resampled grid (Run model's
    "resample to the model's spacing"): its displacement is not on the image's grid."""
    displacement = record.prediction.displacement
    return displacement is not None and (
        tuple(displacement.shape[1:]) != tuple(record.prediction.probability.shape))


def current_frame(viewer: napari.Viewer, layer: Layer) -> int:
    """Index of the frame of ``layer`` (a flow-frames layer) at the viewer's current t."""
    axis = viewer.dims.ndim - layer.ndim
    t = (viewer.dims.point[axis] - layer.translate[0]) / layer.scale[0]
    return int(np.clip(round(t), 0, layer.data.shape[0] - 1))
