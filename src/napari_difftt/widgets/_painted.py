"""The controls of labels painted on a few slices, shared by the Train and "Segment from my
slices" docks: the axis the slices are taken along (following the axis the viewer slices), an
optional "unlabelled" value, and the count of what the painting gives
(:func:`napari_difftt.fine_tune.painted_labels`) — refreshed as the user paints."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
from magicgui.widgets import ComboBox

from ..errors import AnnotationError
from ..fine_tune import Counted, axis_choices, painted_labels

if TYPE_CHECKING:
    from napari.layers import Layer

    import napari

__all__ = ["PaintedSlices", "sliced_axis"]

UNLABELLED_CHOICES = [("none", 0)] + [(str(v), v) for v in range(2, 256)]


class PaintedSlices:
    """Axis and unlabelled-value combo boxes (``axis``, ``unlabelled``: magicgui widgets to
    place in a form) for an image given by ``image()``; ``on_change()`` is called when the
    axis, the unlabelled value or the painting of the :meth:`watch`-ed layer changes, and when
    the viewer starts slicing along another axis (the axis follows it)."""

    def __init__(self, viewer: napari.Viewer, image: Callable[[], Layer | None],
                 on_change: Callable[[], None]) -> None:
        self.viewer = viewer
        self._image = image
        self._on_change = on_change
        self._watched: Layer | None = None
        self.axis = ComboBox(label="slices along", choices=self._axes,
                             tooltip="slices holding paint count as fully annotated, the others "
                             "as unlabelled (default: the axis the viewer is slicing)")
        self.unlabelled = ComboBox(label="unlabelled value", value=0, choices=UNLABELLED_CHOICES,
                                   tooltip="a label value that marks voxels as unknown, left "
                                   "out of training even in painted slices")
        self.axis.changed.connect(self._changed)
        self.unlabelled.changed.connect(self._changed)
        viewer.dims.events.order.connect(self.follow_viewer)

    def unlabelled_value(self) -> int | None:
        """The chosen unlabelled value, or None."""
        return int(self.unlabelled.value) or None

    def labels(self, painted: np.ndarray, ignore_value: int = 255) -> tuple[np.ndarray, Counted]:
        """Training labels ``(*S)`` of ``painted`` along the chosen axis and what counts
        (:func:`~napari_difftt.fine_tune.painted_labels`; AnnotationError if it cannot train)."""
        return painted_labels(painted, self.axis.value, self.unlabelled_value(), ignore_value)

    def count(self, layer: Layer | None) -> str:
        """What counts of ``layer``'s painting ("2 slices along z, 960 voxels count (…)"), or
        "Cannot train yet: …" saying what to fix."""
        if layer is None:
            return "Add a Labels layer and paint the organ on a few slices."
        try:
            return self.labels(np.asarray(layer.data))[1].text
        except AnnotationError as error:
            return f"Cannot train yet: {error}"

    def follow_image(self) -> None:
        """The image changed: offer its axes and choose the one the viewer slices."""
        self.axis.reset_choices()
        self.follow_viewer()

    def follow_viewer(self, *_) -> None:
        image = self._image()
        if image is not None and image.ndim in (2, 3):
            with self.axis.changed.blocked():
                self.axis.value = sliced_axis(self.viewer, image.ndim)
        self._on_change()

    def watch(self, layer: Layer | None) -> None:
        """Call ``on_change`` whenever ``layer`` is painted or its data replaced (and stop
        listening to the layer watched before)."""
        if layer is self._watched:
            return
        self.unwatch()
        if layer is not None:
            layer.events.paint.connect(self._changed)
            layer.events.data.connect(self._changed)
        self._watched = layer

    def unwatch(self) -> None:
        if self._watched is not None:
            self._watched.events.paint.disconnect(self._changed)
            self._watched.events.data.disconnect(self._changed)
            self._watched = None

    def close(self) -> None:
        """Stop listening to the viewer and the watched layer (the dock closed)."""
        self.unwatch()
        self.viewer.dims.events.order.disconnect(self.follow_viewer)

    def _changed(self, *_) -> None:
        self._on_change()

    def _axes(self, _widget=None):
        image = self._image()
        return axis_choices(image.ndim if image is not None and image.ndim in (2, 3) else 3)


def sliced_axis(viewer: napari.Viewer, ndim: int) -> int:
    """The array axis of an ``ndim``-D layer that ``viewer`` slices through (its last axis not
    displayed), or 0 when every axis is displayed."""
    shift = viewer.dims.ndim - ndim
    hidden = [axis - shift for axis in viewer.dims.not_displayed if axis >= shift]
    return hidden[-1] if hidden else 0
