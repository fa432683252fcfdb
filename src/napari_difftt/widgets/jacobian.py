"""Jacobian: det ∇φ of the predicted transformation Φ, or of φ(t) at the flow explorer's t.

Shown as log₂(det J) with the diverging 'PiYG' colormap and a contrast range symmetric around 0,
so det J = 1 (volume kept) is the neutral colour, expansion and compression are opposite hues of
equal weight (det 2 and det ½ equally strong). det J ≤ 0 has no logarithm: those voxels are
clipped to the most compressed colour and marked in a Labels layer of folds. The statistics
state both schemes: central differences (as published tables) and the stricter digital check
(all one-sided simplices, see :func:`core.flow.folding_fraction`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from napari.utils.notifications import show_warning
from qtpy.QtWidgets import QComboBox, QFormLayout, QLabel, QPushButton, QVBoxLayout, QWidget

from ._layers import add_derived
from ._lifetime import Lifetime
from ._state import ViewerState
from .flow_explorer import current_frame, flow_layer

if TYPE_CHECKING:
    from napari.layers import Layer

    import napari

__all__ = ["JacobianStats", "JacobianWidget", "jacobian_stats", "log_det_display"]

NO_PREDICTION = "No prediction yet: run the model first (Run model widget), then compute det J."
TARGETS = {"final": "Φ, the predicted transformation", "current": "φ(t) at the flow explorer's t"}
# display floor for det J ≤ 0 and the narrowest symmetric contrast range, in log₂ units
MIN_RANGE = 0.05


@dataclass(frozen=True)
class JacobianStats:
    """det ∇φ of one displacement and its folding statistics."""

    det: np.ndarray  # (*S) float32, central differences
    minimum: float
    maximum: float
    folded_central: float  # % of voxels with det ≤ 0 (central differences)
    folded_digital: float  # % of interior voxels failing any one-sided simplex test

    def describe(self, what: str) -> str:
        return (
            f"det J of {what}: min {self.minimum:.3g}, max {self.maximum:.3g}\n"
            f"folded (det J ≤ 0): {self.folded_central:.3f} % by central differences, "
            f"{self.folded_digital:.3f} % by the digital test (one-sided simplices)"
        )


def jacobian_stats(displacement: np.ndarray) -> JacobianStats:
    """det J and folds of φ = id + ``displacement`` ``(n, *S)`` voxels (array order)."""
    import torch

    from ..core.flow import folding_fraction, jacobian_det

    u = torch.from_numpy(np.ascontiguousarray(displacement, dtype=np.float32))[None]
    with torch.inference_mode():
        det = jacobian_det(u)[0].numpy()
        central = float(folding_fraction(u, "central")[0]) * 100
        digital = float(folding_fraction(u, "digital")[0]) * 100
    return JacobianStats(det, float(det.min()), float(det.max()), central, digital)


def log_det_display(det: np.ndarray) -> tuple[np.ndarray, tuple[float, float]]:
    """log₂(det J) ``(*S)`` float32 and a contrast range (−m, m) symmetric around 0.

    m is the 99.5th percentile of |log₂ det| over non-folded voxels (at least 0.05); det ≤ 0
    is set to −m, the most compressed colour (the folds layer marks those voxels).
    """
    positive = det > 0
    log_det = np.full(det.shape, np.nan, dtype=np.float32)
    log_det[positive] = np.log2(det[positive])
    finite = np.abs(log_det[positive])
    m = max(float(np.percentile(finite, 99.5)) if finite.size else 0.0, MIN_RANGE)
    log_det[~positive] = -m
    return log_det, (-m, m)


class JacobianWidget(QWidget):
    """Dock widget: log₂ det J image, folds labels and statistics for Φ or φ(t)."""

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.state = ViewerState.of(napari_viewer)
        self.job = None
        self.stats: JacobianStats | None = None
        self.image_layer: Layer | None = None
        self.folds_layer: Layer | None = None
        self._target: tuple[Layer, str] | None = None  # (source layer, what) being computed

        self.target = QComboBox()
        for key, label in TARGETS.items():
            self.target.addItem(label, key)
        self.compute_button = QPushButton("Compute det J")
        self.summary = QLabel(NO_PREDICTION)
        self.summary.setWordWrap(True)
        form = QFormLayout()
        form.addRow("of", self.target)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.compute_button)
        layout.addWidget(self.summary)
        layout.addStretch(1)
        self.compute_button.clicked.connect(self.compute)
        self.state.changed.connect(self._on_state)
        state, on_state = self.state, self._on_state
        self.lifetime = Lifetime(self, lambda: state.changed.disconnect(on_state))
        self._on_state("prediction")

    def compute(self) -> None:
        """Compute det J of the chosen transformation in a worker, then show it."""
        record = self.state.prediction
        if record is None:
            return self._tell(NO_PREDICTION)
        if self.job is not None:
            return self._tell("det J is being computed; wait for it to finish.")
        if self.target.currentData() == "final":
            displacement = record.prediction.displacement
            what = "Φ"
            if displacement is None:
                return self._tell(
                    "This prediction has no transformation (a 'unet' model segments directly): "
                    "run a template-transformer model to inspect its Jacobian."
                )
        else:
            layer = flow_layer(self.viewer, record.source.name)
            if layer is None:
                return self._tell(
                    "No flow frames of this prediction: open the Flow explorer and press "
                    "'Show flow' first, or choose Φ."
                )
            k = current_frame(self.viewer, layer)
            displacement = layer.data.displacement(k)
            what = f"φ(t = {layer.data.times[k]:.3g})"
        self._run(record.source, displacement, what)

    # ---------------------------------------------------------------- helpers
    def _run(self, source: Layer, displacement: np.ndarray, what: str) -> None:
        from ._worker import start_job

        def task(should_stop):
            yield 0, 1, f"det J of {what}"
            return jacobian_stats(displacement)

        self._target = (source, what)
        self.compute_button.setEnabled(False)
        self.summary.setText(f"computing det J of {what} …")
        self.lifetime.watch(self)
        live = self.lifetime.guard
        self.job = start_job(task, on_done=live(self._on_done), on_error=live(self._on_error),
                             on_finished=live(self._on_finished))

    def _on_done(self, stats: JacobianStats) -> None:
        source, what = self._target
        self._show(source, stats, what)

    def _on_error(self, error: BaseException) -> None:
        from ._worker import explain

        self._tell(f"Computing det J failed: {explain(error)}")

    def _on_finished(self) -> None:
        self.job = None
        self.compute_button.setEnabled(True)

    def _show(self, source: Layer, stats: JacobianStats, what: str) -> None:
        if source not in self.viewer.layers:
            return self._tell(f"The image {source.name!r} was closed; det J is not shown.")
        self.stats = stats
        log_det, limits = log_det_display(stats.det)
        self.image_layer = add_derived(
            self.viewer, "image", log_det, source, f"log₂ det J {source.name}", "jacobian",
            colormap="PiYG", contrast_limits=limits, blending="translucent",
        )
        folds = (stats.det <= 0).astype(np.uint8)
        self.folds_layer = add_derived(
            self.viewer, "labels", folds, source, f"folds {source.name}", "folds", opacity=0.9,
        )
        self.summary.setText(
            f"{stats.describe(what)}\ncolours: log₂ det J from {limits[0]:.2g} to {limits[1]:.2g}; "
            "green expands, pink compresses, white keeps volume; folds in the labels layer"
        )

    def _tell(self, message: str) -> None:
        show_warning(message)
        self.summary.setText(message)

    def _on_state(self, what: str) -> None:
        if what == "prediction":
            record = self.state.prediction
            self.summary.setText(
                NO_PREDICTION if record is None
                else f"Prediction of {record.source.name!r} ready: press 'Compute det J'."
            )
