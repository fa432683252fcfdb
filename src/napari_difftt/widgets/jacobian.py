"""Jacobian: det ∇φ of the predicted transformation Φ, or of φ(t) at the flow explorer's t.

Shown as log₂(det J) with the diverging 'PiYG' colormap and a contrast range symmetric around 0,
so det J = 1 (volume kept) is the neutral colour, expansion and compression are opposite hues of
equal weight (det 2 and det ½ equally strong). det J ≤ 0 has no logarithm: those voxels are
clipped to the most compressed colour and marked in a Labels layer of folds. The statistics
state both schemes: central differences (as published tables) and the stricter digital check
(all one-sided simplices, see :func:`core.flow.folding_fraction`). A colour bar on the canvas
labels the heatmap; the folded regions are counted and "Next fold" moves the view to each.

The deformed grid is a grid of lines pulled back through φ, exactly as the prior is pulled back
into the segmentation: the image at x shows the grid at φ(x) = x + u(x). Where u points +x, the
lines appear shifted towards −x — the grid moves against u, as the prior's shape does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from napari.utils.notifications import show_warning
from qtpy.QtWidgets import QComboBox, QFormLayout, QLabel, QPushButton, QVBoxLayout, QWidget

from ..pipeline import deformed_grid, jacobian_report
from ._layers import add_derived
from ._lifetime import Lifetime
from ._state import ViewerState
from .flow_explorer import current_frame, flow_layer, resampled

if TYPE_CHECKING:
    from napari.layers import Layer

    import napari

    from ..core.fields import JacobianReport

__all__ = ["JacobianWidget"]

NO_PREDICTION = "No prediction yet: run the model first (Run model widget), then compute det J."
TARGETS = {"final": "Φ, the predicted transformation", "current": "φ(t) at the flow explorer's t"}
GRID_ROLE = "deformed_grid"
# folds sit on the most compressed (dark pink) end of PiYG: yellow stands out on it and on green
FOLD_COLOURS = ["transparent", "yellow"]  # a colour cycle, as run_model.SEGMENTATION_COLOURS


class JacobianWidget(QWidget):
    """Dock widget: log₂ det J image, folds labels and statistics for Φ or φ(t)."""

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.state = ViewerState.of(napari_viewer)
        self.job = None
        self.stats: JacobianReport | None = None
        self.image_layer: Layer | None = None
        self.folds_layer: Layer | None = None
        self.grid_layer: Layer | None = None
        self._target: tuple[Layer, str] | None = None  # (source layer, what) being computed
        self._grid_of = None  # (record, displacement, axes) of the grid shown

        self.target = QComboBox()
        for key, label in TARGETS.items():
            self.target.addItem(label, key)
        self.compute_button = QPushButton("Compute det J")
        self.next_fold_button = QPushButton("Next fold")
        self.next_fold_button.setEnabled(False)
        self.next_fold_button.setToolTip("Move the view to the next folded region (largest "
                                         "first): its slice and the camera centre")
        self._fold = -1  # index of the fold last shown
        self.compute_button.setToolTip("log₂ det J as an image and det J ≤ 0 as folds labels")
        self.target.setToolTip("the transformation whose Jacobian determinant is shown")
        self.summary = QLabel(NO_PREDICTION)
        self.summary.setWordWrap(True)
        form = QFormLayout()
        form.addRow("of", self.target)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.compute_button)
        layout.addWidget(self.next_fold_button)
        layout.addWidget(self.summary)
        layout.addStretch(1)
        self.compute_button.clicked.connect(self.compute)
        self.next_fold_button.clicked.connect(self.next_fold)
        self.state.changed.connect(self._on_state)
        state, on_state = self.state, self._on_state
        order, on_order = napari_viewer.dims.events.order, self._follow_orientation
        order.connect(on_order)
        self.lifetime = Lifetime(self, lambda: (state.changed.disconnect(on_state),
                                                order.disconnect(on_order)))
        self._on_state("prediction")

    def compute(self) -> None:
        """Compute det J of the chosen transformation in a worker, then show it."""
        record = self.state.prediction
        refused = self._refusal(record)
        if refused is not None:
            return self._tell(refused)
        if self.job is not None:
            return self._tell("det J is being computed; wait for it to finish.")
        if self.target.currentData() == "final":
            displacement = record.prediction.displacement
            what = "Φ"
        else:
            layer = flow_layer(self.viewer, self.state.source())
            if layer is None:
                return self._tell(
                    "No flow frames of this prediction: open the Flow explorer and press "
                    "'Show flow' first, or choose Φ."
                )
            k = current_frame(self.viewer, layer)
            displacement = layer.data.displacement(k)
            what = f"φ(t = {layer.data.times[k]:.3g})"
        source = self.state.source()
        if source is None:
            return self._tell("The image of this prediction was removed; run the model again.")
        self._run(source, record, displacement, what)

    def next_fold(self) -> tuple[float, ...] | None:
        """Centre the view on the next folded region; returns its world position (mm)."""
        if self.stats is None or not self.stats.folds or self._target is None:
            return None
        source = self._target[0]
        self._fold = (self._fold + 1) % len(self.stats.folds)
        world = np.asarray(source.data_to_world(self.stats.folds[self._fold]), dtype=float)
        dims = self.viewer.dims
        lead = dims.ndim - source.ndim
        for k, value in enumerate(world):
            dims.set_point(lead + k, float(value))
        self.viewer.camera.center = tuple(world[-dims.ndisplay :])
        self.summary.setText(self.summary.text().split("\nshowing fold")[0]
                             + f"\nshowing fold {self._fold + 1} of {len(self.stats.folds)}")
        return tuple(world)

    # ---------------------------------------------------------------- helpers
    def _run(self, source: Layer, record, displacement: np.ndarray, what: str) -> None:
        from ._worker import start_job

        axes = self._slice_axes(source)

        def task(should_stop):
            yield 0, 1, f"det J of {what}"
            return jacobian_report(record, displacement, axes)

        self._target = (source, what)
        self._grid_of = (record, displacement, axes)
        self.compute_button.setEnabled(False)
        self.summary.setText(f"computing det J of {what} …")
        self.lifetime.watch(self)
        live = self.lifetime.guard
        self.job = start_job(task, on_done=live(self._on_done), on_error=live(self._on_error),
                             on_finished=live(self._on_finished))

    def _slice_axes(self, source: Layer) -> tuple[int, ...] | None:
        """The array axes of ``source`` that the viewer displays, the last two (None: fewer)."""
        shift = self.viewer.dims.ndim - source.ndim
        shown = [axis - shift for axis in self.viewer.dims.displayed if axis >= shift]
        return tuple(shown[-2:]) if len(shown) >= 2 else None

    def _follow_orientation(self, *_) -> None:
        """The viewer shows another orientation: redraw the grid for its slices (in a
        worker), so its lines cross the displayed plane instead of lying in it."""
        from ._worker import start_job

        layer, shown = self.grid_layer, self._grid_of
        if None in (layer, shown, self._target) or layer not in self.viewer.layers:
            return
        record, displacement, axes = shown
        now = self._slice_axes(self._target[0])
        if now is None or now == axes:
            return
        self._grid_of = (record, displacement, now)

        def task(should_stop):
            yield 0, 1, "deformed grid"
            return deformed_grid(record, displacement, now)

        self.lifetime.watch(self)
        start_job(task, on_done=self.lifetime.guard(self._on_grid))

    def _on_grid(self, grid: np.ndarray) -> None:
        """The redrawn grid, shown if no newer orientation or prediction replaced it."""
        layer = self.grid_layer
        axes = self._grid_of[2] if self._grid_of is not None else None
        if (layer is not None and layer in self.viewer.layers and self._target is not None
                and axes == self._slice_axes(self._target[0])):
            layer.data = grid

    def _on_done(self, stats: JacobianReport) -> None:
        source, what = self._target
        self._show(source, stats, what)

    def _on_error(self, error: BaseException) -> None:
        from ._worker import explain

        self._tell(f"Computing det J failed: {explain(error)}")

    def _on_finished(self) -> None:
        self.job = None
        self.compute_button.setEnabled(self._refusal(self.state.prediction) is None)

    @staticmethod
    def _refusal(record) -> str | None:
        """Why det J of the prediction ``record`` cannot be shown; None when it can."""
        if record is None:
            return NO_PREDICTION
        if record.prediction.displacement is None:
            kind = f"a {record.kind!r}" if record.kind else "this"
            return (f"This prediction has no transformation ({kind} model segments directly): "
                    "run a template-transformer model to inspect its Jacobian.")
        if resampled(record):
            return ("This prediction was resampled to the model's spacing: its Φ lives on the "
                    "network's grid, not the image's. Run without resampling to inspect det J.")
        return None

    def _show(self, source: Layer, stats: JacobianReport, what: str) -> None:
        if source not in self.viewer.layers:
            return self._tell(f"The image {source.name!r} was closed; det J is not shown.")
        self.stats = stats
        limits = stats.limits
        self.image_layer = add_derived(
            self.viewer, "image", stats.log_det, source, f"log₂ det J {source.name}", "jacobian",
            colormap="PiYG", contrast_limits=limits, blending="translucent",
        )
        self.image_layer.colorbar.visible = True  # the legend of log₂ det J, on the canvas
        # dark lines over the heatmap: "minimum" keeps what lies below where the grid is 0
        self.grid_layer = add_derived(
            self.viewer, "image", stats.grid, source, f"deformed grid {source.name}", GRID_ROLE,
            colormap="gray_r", contrast_limits=(0.0, 1.0), blending="minimum", opacity=0.7,
        )
        folds = (stats.det <= 0).astype(np.uint8)
        self.folds_layer = add_derived(
            self.viewer, "labels", folds, source, f"folds {source.name}", "folds", opacity=0.9,
            colormap=FOLD_COLOURS,
        )
        self._fold = -1
        self.next_fold_button.setEnabled(bool(stats.folds))
        self.summary.setText(
            f"{stats.describe(what)}\ncolours (colour bar on the canvas): log₂ det J from "
            f"{limits[0]:.2g} to {limits[1]:.2g}; "
            f"green expands, pink compresses, white keeps volume; folds in yellow "
            f"('{self.folds_layer.name}')"
        )

    def _tell(self, message: str) -> None:
        show_warning(message)
        self.summary.setText(message)

    def _on_state(self, what: str) -> None:
        if what == "prediction":  # the figures and folds of the previous one no longer apply
            self.stats, self._target, self._fold, self._grid_of = None, None, -1, None
            self.next_fold_button.setEnabled(False)
            record = self.state.prediction
            refused = self._refusal(record)
            self.compute_button.setEnabled(refused is None and self.job is None)
            if refused is not None:
                self.summary.setText(refused)
                return
            self.summary.setText(
                NO_PREDICTION if record is None
                else f"Prediction of {_name(self.state.source())!r} ready: press "
                     "'Compute det J'."
            )


def _name(layer: Layer | None) -> str:
    return "a removed image" if layer is None else layer.name
