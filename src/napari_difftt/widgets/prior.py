"""Shape prior dock widget: tune the generalised Gaussian prior in mm with a live preview.

The prior is edited as an ellipsoid in the image's napari world coordinates (mm): centre μ,
semi-axes of the p = ½ contour, optional rotation (full Σ) and β. Every change re-renders at
once (no debounce) an Image layer of p and a Labels layer of its p ≥ ½ region drawn as a
contour — at reduced resolution for big volumes (≤ ``PREVIEW_VOXELS`` voxels): first the slice
napari displays, evaluated and written in place on the GUI thread at once, then the whole
volume on a cached coordinate grid in a worker (a few hundred ms at 128³ on two cores), written
back on the GUI thread when it ends. Latest value wins: a change while the volume is computed
cancels that computation (between torch operations) and only the newest prior is computed next;
a result that a newer change has superseded is never written. The preview layers are created
once per image when the prior is first touched (an edit, Fit to labels) or "show preview" is
ticked — opening the widget adds no layer — updated in place (no layer property is set again),
and removed with their image, when another image is chosen, when the box is unticked, or with
the widget. The fields start at the prior of the checkpoint Run model will use for the image
(the bundled model of the image's dimensionality unless another is chosen) and follow Run
model's checkpoint until the prior is tuned. The tuned prior is stored in
:class:`~napari_difftt.widgets._state.ViewerState` and Run model uses it for the image it was
tuned on (matched by layer identity, not name).
Maths: :func:`core.prior.from_display`, :func:`core.prior.fit_to_mask`,
:func:`core.prior.to_display`, through :mod:`napari_difftt.pipeline`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from qtpy.QtWidgets import (
    QCheckBox,
    QFormLayout,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from ._controls import LayerChooser, fit_to_range, spin_box
from ._layers import add_derived, readable_in_3d
from ._lifetime import Lifetime
from ._state import ViewerState
from ._worker import LatestJob, callback_task

if TYPE_CHECKING:
    from napari.layers import Image, Labels

    import napari

__all__ = ["PREVIEW_VOXELS", "PriorWidget"]

PREVIEW_VOXELS = 1_000_000  # the preview grid is coarsened to at most this many voxels
AXES = ("z", "y", "x")
CONTOUR_COLOURS = {1: "yellow", None: "transparent"}  # the p = ½ contour


class PriorWidget(QWidget):
    """Tune the shape prior on an image; preview layers "<image> prior" and "<image> prior ½"."""

    def __init__(self, napari_viewer: napari.Viewer, parent=None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.state = ViewerState.of(napari_viewer)
        self._lifetime = Lifetime(self, self._on_closed)  # before the first preview's worker
        self._volume = LatestJob()  # the whole preview volume: the latest prior wins
        self._written = 0  # the volume request last written (LatestJob.latest: the latest)
        self._loading = False  # True while fields are set programmatically
        self._store = True  # whether an edit makes the prior Run model's (not after Reset)
        self._layers: tuple | None = None  # (source, probability, contour) preview layers
        self._grid = None  # cached normalised coordinates of the preview grid

        self.image = LayerChooser(napari_viewer, "image", sources_only=True)
        self.labels = LayerChooser(napari_viewer, "labels")
        self.mean = [spin_box(-1e5, 1e5, 0.0, decimals=2, tooltip=f"centre μ along {a} (mm)")
                     for a in AXES]
        self.radii = [spin_box(0.1, 1e5, 10.0, decimals=2,
                               tooltip=f"semi-axis of the p = ½ contour along {a} (mm)")
                      for a in AXES]
        self.rotate = QCheckBox("rotate (full Σ; θ in degrees)")
        self.angles = [spin_box(-180.0, 180.0, 0.0, step=5.0, decimals=1,
                                tooltip=f"rotation about array axis {a} (degrees)") for a in AXES]
        self.beta = spin_box(0.05, 20.0, 1.0, step=0.1, tooltip="β: 1 Gaussian, larger is flatter")
        self.reset_button = QPushButton("Reset to default")
        self.show_preview = QCheckBox("show preview")
        self.show_preview.setToolTip("Show the prior as layers '<image> prior' and '<image> "
                                     "prior ½' (ticked by any change of the prior)")
        self.fit_button = QPushButton("Fit to labels")
        self.status = QLabel()
        self.status.setWordWrap(True)
        self.rotate.setToolTip("rotate the ellipsoid: a full covariance Σ instead of axis radii")
        self.reset_button.setToolTip("Back to the checkpoint's own prior (Run model then uses it)")
        self.fit_button.setToolTip("Fit the ½-contour to the non-zero voxels of the labels")
        self.labels.setToolTip("labels of the image's dimensionality, to fit the prior to")
        self._build_layout()

        for box in (*self.mean, *self.radii, *self.angles, self.beta):
            box.valueChanged.connect(self._edited)
        self.rotate.toggled.connect(self._rotation_toggled)
        self.labels.set_ndim(None if self.image.layer() is None else self.image.layer().ndim)
        self.image.layer_changed.connect(self._image_changed)
        self.reset_button.clicked.connect(self.reset)
        self.fit_button.clicked.connect(self.fit_to_labels)
        self.show_preview.toggled.connect(self._preview_toggled)
        self._loading = True  # setting up is not an edit
        self._rotation_toggled(False)
        self._loading = False
        self.viewer.layers.events.removed.connect(self._on_removed)
        self.state.changed.connect(self._on_state)
        self.reset()

    # ------------------------------------------------------------------ public actions
    def set_parameters(
        self,
        mean_mm: tuple[float, ...],
        radii_mm: tuple[float, ...],
        rotation_deg: tuple[float, ...] | None = None,
        beta: float = 1.0,
        *,
        store: bool = True,
    ) -> None:
        """Set the ellipsoid (world mm, array order) and β; the preview follows, and with
        ``store`` Run model uses the prior for this image."""
        self._loading = True
        try:
            n = len(mean_mm)
            for box, value in zip(self.mean[3 - n :], mean_mm, strict=True):
                box.setValue(float(value))
            for box, value in zip(self.radii[3 - n :], radii_mm, strict=True):
                box.setValue(float(value))
            angles = tuple(rotation_deg or ())
            rotated = any(abs(a) > 1e-6 for a in angles)
            self.rotate.setChecked(rotated)
            for box, value in zip(self._angle_boxes(n), angles or (0.0,) * 3, strict=False):
                box.setValue(float(value))
            self.beta.setValue(float(beta))
        finally:
            self._loading = False
        self._edited(store=store)

    def parameters(self) -> tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...], float]:
        """(mean_mm, radii_mm, rotation_deg, beta) for the chosen image's dimensionality."""
        n = self._ndim()
        mean = tuple(box.value() for box in self.mean[3 - n :])
        radii = tuple(box.value() for box in self.radii[3 - n :])
        boxes = self._angle_boxes(n)
        angles = tuple(box.value() if self.rotate.isChecked() else 0.0 for box in boxes)
        return mean, radii, angles, self.beta.value()

    def prior(self):
        """The :class:`GeneralisedGaussianPrior` the fields describe, for the chosen image."""
        from ..pipeline import prior_from_display

        layer = self._image()
        return prior_from_display(*self.parameters(), layer.data.shape, layer.scale,
                                  layer.translate)

    def reset(self) -> None:
        """Back to the default prior: the selected checkpoint's, else the centred default.

        Run model then uses the checkpoint's own prior again (nothing tuned is stored).
        """
        layer = self.image.layer()
        if layer is None or layer.ndim not in (2, 3) or getattr(layer, "rgb", False):
            self._remove_preview()
            self._set_enabled(False)
            self.status.setText("Choose a 2D or 3D image layer.")
            return
        self._set_enabled(True)
        self._show_prior(self._default_prior(layer.ndim), layer, store=False)
        self.state.set_prior(None)
        self.status.setText(f"Default prior ({self._default_source}). Run model uses the "
                            "checkpoint's own prior until you change it.")

    def fit_to_labels(self) -> None:
        """Fit the prior's ½-contour to the chosen Labels layer (non-zero voxels)."""
        from napari.utils.notifications import show_error

        from ..pipeline import fit_prior

        layer, labels = self._image(), self.labels.layer()
        if labels is None:
            show_error("Fit to labels: choose a Labels layer first.")
            return
        if labels.data.shape != layer.data.shape:
            show_error(f"Fit to labels: '{labels.name}' has shape {labels.data.shape} but "
                       f"'{layer.name}' has {layer.data.shape}; choose matching layers.")
            return
        try:
            prior = fit_prior(np.asarray(labels.data), beta=self.beta.value())
        except ValueError as error:
            show_error(f"Fit to labels: {error}")
            return
        self._show_prior(prior, layer, store=True)
        self.status.setText(f"Fitted to '{labels.name}'. Run model uses this prior on "
                            f"'{layer.name}'.")

    def update_preview(self, store: bool = True) -> None:
        """Render the preview now (and tick "show preview"): the displayed slice at once, the
        whole volume in a worker (:attr:`preview_complete` once written); ``store`` makes the
        prior the one Run model uses for this image."""
        layer = self.image.layer()
        if layer is None or layer.ndim not in (2, 3):
            return
        self._prior = self.prior()
        if not self.show_preview.isChecked():
            self._loading, loading = True, self._loading  # ticking it must not render twice
            try:
                self.show_preview.setChecked(True)
            finally:
                self._loading = loading
        probability, contour = self._preview_layers(layer)
        axis = self._sliced_axis(probability)
        if axis is not None:
            self._render_slice(probability, contour, axis)
        self._request_volume(probability, contour)
        if store:
            self.state.set_prior(self._prior.to_dict(), source=layer)
            self.status.setText(f"Run model uses this prior on '{layer.name}'.")

    @property
    def preview_complete(self) -> bool:
        """False until the whole-volume preview of the latest change is written."""
        return self._written == self._volume.latest

    def preview_layers(self) -> tuple[Image, Labels] | None:
        """The (probability, ½-contour) preview layers of the chosen image, if shown."""
        return None if self._layers is None else self._layers[1:]

    # ------------------------------------------------------------------ internals
    def _edited(self, *_, store: bool = True) -> None:
        """A field changed: a change by the user (``store``) touches the prior and shows it; a
        reset refreshes the preview only where it is shown."""
        if self._loading or self.image.layer() is None:
            return
        if store or self.show_preview.isChecked():
            self.update_preview(store=store)
        elif self._ndim() in (2, 3):
            self._prior = self.prior()

    def _preview_toggled(self, checked: bool) -> None:
        if self._loading:
            return
        if checked:
            self.update_preview(store=False)
        else:
            self._remove_preview()

    def _on_state(self, field: str) -> None:
        """Run model chose another checkpoint: start from its prior unless one is tuned."""
        layer = self.image.layer()
        if field == "checkpoint" and (layer is None or self.state.prior_for(layer) is None):
            self.reset()

    def _image_changed(self, layer) -> None:
        self.labels.set_ndim(None if layer is None else layer.ndim)
        if self._layers is not None and self._layers[0] != layer:
            self._remove_preview()
        self.reset()

    def _preview_layers(self, layer: Image) -> tuple[Image, Labels]:
        """This image's preview layers, created (with a cached coordinate grid) on first use."""
        if self._layers is not None and self._layers[0] == layer:
            _, probability, contour = self._layers
            if probability in self.viewer.layers and contour in self.viewer.layers:
                return probability, contour
        self._remove_preview()
        from ..pipeline import grid_coordinates

        shape = _preview_shape(layer.data.shape)
        self._grid = grid_coordinates(shape)
        factor = [(n - 1) / (m - 1) for n, m in zip(layer.data.shape, shape, strict=True)]
        scale = tuple(float(s) * f for s, f in zip(layer.scale, factor, strict=True))
        probability = add_derived(
            self.viewer, "image", np.zeros(shape, np.float32), layer, f"{layer.name} prior",
            "prior", scale=scale, colormap="magma", opacity=0.5, blending="additive",
            contrast_limits=(0.0, 1.0))
        contour = add_derived(
            self.viewer, "labels", np.zeros(shape, np.uint8), layer, f"{layer.name} prior ½",
            "prior_contour", scale=scale, colormap=CONTOUR_COLOURS)
        readable_in_3d(self.viewer, contour, contour=1)
        self._layers = (layer, probability, contour)
        return probability, contour

    def _sliced_axis(self, layer: Image) -> tuple[int, int] | None:
        """(array axis, index) of the preview slice napari displays; None when it shows the
        whole array (2D image, 3D view) or no slice of it."""
        dims = self.viewer.dims
        if layer.ndim != 3 or dims.ndisplay == 3:
            return None
        lead = dims.ndim - layer.ndim
        hidden = [axis - lead for axis in dims.not_displayed if axis >= lead]
        if len(hidden) != 1:
            return None
        axis = hidden[0]
        index = round(float(layer.world_to_data(dims.point)[axis]))
        return (axis, index) if 0 <= index < layer.data.shape[axis] else None

    def _render_slice(self, probability: Image, contour: Labels, plane: tuple[int, int]) -> None:
        """Evaluate the prior on one plane of the cached grid and write it in place."""
        from ..pipeline import prior_values

        where = (slice(None),) * plane[0] + (slice(plane[1], plane[1] + 1),)
        # one plane is too little work to share: a second thread only waits for a core
        values = prior_values(self._prior, self._grid, where, one_thread=True)
        self._write(probability, contour, where, values, values >= 0.5, thumbnail=False)

    def _write(self, probability, contour, where, values, inside, *, thumbnail: bool) -> None:
        probability.data[where] = values
        contour.data[where] = inside
        for preview in (probability, contour):
            preview.refresh(thumbnail=thumbnail, extent=False, highlight=False)

    def _request_volume(self, probability: Image, contour: Labels) -> None:
        """Compute the whole preview volume of the current prior in a worker (latest wins: a
        newer change cancels it, and only the latest result is written)."""
        prior, grid, layers = self._prior, self._grid, (probability, contour)

        def compute(progress, should_stop):
            from ..core.interrupt import Interruptible
            from ..pipeline import prior_values

            with Interruptible(should_stop):
                values = prior_values(prior, grid)
            return values, (values >= 0.5).astype(np.uint8)

        self._lifetime.watch(self)
        live = self._lifetime.guard  # weak and closed-aware; the lambda adds the layers only
        done = live(self._on_volume)
        self._volume.submit(callback_task(compute), on_done=lambda result: done(layers, result),
                            on_error=live(self._on_volume_error))

    def _on_volume(self, layers: tuple, result) -> None:
        self._written = self._volume.latest  # only the latest request's result arrives here
        if self._layers is not None and tuple(self._layers[1:]) == tuple(layers) and all(
                layer in self.viewer.layers for layer in layers):
            self._write(*layers, (Ellipsis,), *result, thumbnail=True)

    def _on_volume_error(self, error: BaseException) -> None:
        from napari.utils.notifications import show_error

        from ._worker import explain

        self._written = self._volume.latest
        show_error(f"Shape prior preview: {explain(error)}")

    def _remove_preview(self, *_) -> None:
        """Remove the preview layers this widget made (those still in the viewer)."""
        layers, self._layers, self._grid = self._layers, None, None
        self._volume.drop()
        self._written = self._volume.latest  # nothing left to show
        for preview in (layers or ())[1:]:
            if preview in self.viewer.layers:
                self.viewer.layers.remove(preview)

    def _on_removed(self, event) -> None:
        if self._layers is not None and self._layers[0] == event.value:
            self._remove_preview()

    def _on_closed(self) -> None:
        self.viewer.layers.events.removed.disconnect(self._on_removed)
        self.state.changed.disconnect(self._on_state)
        self._remove_preview()

    def _rotation_toggled(self, checked: bool) -> None:
        for box in self.angles:
            box.setEnabled(checked)
        self._edited()

    def _show_prior(self, prior, layer: Image, *, store: bool) -> None:
        from ..pipeline import prior_to_display

        world = prior_to_display(prior, layer.data.shape, layer.scale, layer.translate)
        self._set_ranges(layer)
        self.set_parameters(world.mean_mm, world.radii_mm, world.rotation_deg, world.beta,
                            store=store)

    def _default_prior(self, ndim: int):
        from ..core.prior import GeneralisedGaussianPrior
        from ..pipeline import checkpoint_prior, default_checkpoint

        record = self.state.prediction
        chosen = [self.state.checkpoint, None if record is None else record.checkpoint]
        try:  # what Run model uses on an image of this dimensionality unless a file is chosen
            chosen.append(default_checkpoint(ndim))
        except FileNotFoundError:
            pass
        for path in filter(None, chosen):
            prior = checkpoint_prior(path, ndim)
            if prior is not None:
                self._default_source = f"from {Path(path).name}"
                return prior
        self._default_source = "centred, half the extent"
        return GeneralisedGaussianPrior(ndim)

    def _set_ranges(self, layer: Image) -> None:
        n = layer.ndim
        corners = np.array([layer.translate, np.asarray(layer.translate)
                            + np.asarray(layer.scale) * (np.asarray(layer.data.shape) - 1)])
        extent = np.abs(corners[1] - corners[0])
        for k, (box, radius) in enumerate(zip(self.mean[3 - n :], self.radii[3 - n :],
                                              strict=True)):
            low, high = corners[:, k].min(), corners[:, k].max()
            box.setRange(low - extent[k], high + extent[k])
            box.setSingleStep(max(abs(float(layer.scale[k])), 0.1))
            radius.setRange(0.1, max(2.0 * extent[k], 1.0))
            radius.setSingleStep(max(abs(float(layer.scale[k])), 0.1))
        for box in (*self.mean[3 - n :], *self.radii[3 - n :]):
            fit_to_range(box)  # as wide as this image's values need, no wider
        for box in (*self.mean[: 3 - n], *self.radii[: 3 - n]):
            box.setVisible(False)
        for box in (*self.mean[3 - n :], *self.radii[3 - n :]):
            box.setVisible(True)
        for k, box in enumerate(self.angles):
            box.setVisible(n == 3 or k == 0)

    def _angle_boxes(self, ndim: int) -> list:
        return self.angles if ndim == 3 else self.angles[:1]

    def _image(self) -> Image:
        layer = self.image.layer()
        if layer is None:
            raise ValueError("choose an image layer for the prior")
        return layer

    def _ndim(self) -> int:
        layer = self.image.layer()
        return 3 if layer is None else layer.ndim

    def _set_enabled(self, enabled: bool) -> None:
        for widget in (*self.mean, *self.radii, self.rotate, self.beta, self.reset_button,
                       self.fit_button, self.show_preview):
            widget.setEnabled(enabled)
        for box in self.angles:
            box.setEnabled(enabled and self.rotate.isChecked())

    def _build_layout(self) -> None:
        form = QFormLayout()
        form.addRow("image", self.image)
        grid = QGridLayout()
        for k, axis in enumerate(AXES):
            grid.addWidget(QLabel(axis), 0, k + 1)
        rows = (("μ", self.mean, "centre (mm)"), ("r", self.radii, "semi-axes of the p = ½ "
                                                                    "contour (mm)"),
                ("θ", self.angles, "rotation angles (degrees)"))
        for row, (title, boxes, tip) in enumerate(rows, start=1):  # short titles: a narrow dock
            label = QLabel(title)
            label.setToolTip(tip)
            grid.addWidget(label, row, 0)
            for k, box in enumerate(boxes):
                grid.addWidget(box, row, k + 1)
        form.addRow(grid)
        form.addRow(self.rotate)
        form.addRow("β", self.beta)
        fit_row = QHBoxLayout()
        fit_row.addWidget(self.labels, 1)
        fit_row.addWidget(self.fit_button)
        form.addRow("labels", fit_row)
        buttons = QHBoxLayout()
        buttons.addWidget(self.reset_button)
        buttons.addWidget(self.show_preview)
        form.addRow(buttons)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.status)
        layout.addStretch(1)


def _preview_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape scaled down uniformly to at most PREVIEW_VOXELS voxels (>= 2 per axis)."""
    factor = max(1.0, (float(np.prod(shape)) / PREVIEW_VOXELS) ** (1.0 / len(shape)))
    return tuple(max(2, round((n - 1) / factor) + 1) for n in shape)
