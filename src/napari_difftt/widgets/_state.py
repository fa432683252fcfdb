"""One shared state object per napari viewer: what the widgets hand to each other.

``ViewerState.of(viewer)`` returns the viewer's state, creating it on first use. The registry
is a :class:`weakref.WeakKeyDictionary` keyed by the viewer (proxies are unwrapped first, so a
widget's short-lived viewer proxy never holds the entry), so a closed viewer's state is dropped
with it and two viewers never share state. Widgets subscribe to ``state.changed`` (emits the
name of the field that changed) to react to each other.

The prediction is the pipeline's own record, :class:`napari_difftt.pipeline.Result`, stored as
it is: its ``source`` and ``layers`` are napari ``Layer.unique_id`` values, looked up with
:meth:`ViewerState.layer`. Layers are matched by that identity, never by name: renaming an image
keeps its prediction and its tuned prior. Removing the image drops them (and the arrays).

Main thread only: a worker returns its result and the widget stores it from the ``returned``
callback (see :mod:`napari_difftt.widgets._worker`).
"""

from __future__ import annotations

import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from psygnal import Signal

if TYPE_CHECKING:
    from napari.layers import Layer

    import napari

    from ..pipeline import Result

__all__ = ["ViewerState"]


class ViewerState:
    """Shared per-viewer state: last prediction, tuned prior, latest trained checkpoint."""

    changed = Signal(str)  # "prediction" | "prior" | "trained_checkpoint" | "checkpoint"

    _registry: ClassVar[weakref.WeakKeyDictionary[Any, ViewerState]] = weakref.WeakKeyDictionary()

    def __init__(self, viewer: napari.Viewer | None = None) -> None:
        self._viewer = None if viewer is None else weakref.ref(viewer)
        self.prediction: Result | None = None
        self.prior: dict | None = None  # GeneralisedGaussianPrior.to_dict() of the tuned prior
        self.prior_source: str | None = None  # unique_id of the image the prior was tuned on
        self.trained_checkpoint: Path | None = None
        self.checkpoint: Path | None = None  # the checkpoint Run model has selected

    @classmethod
    def of(cls, viewer: napari.Viewer) -> ViewerState:
        """The state of ``viewer`` (created on first use)."""
        viewer = getattr(viewer, "__wrapped__", viewer)
        state = cls._registry.get(viewer)
        if state is None:
            state = cls._registry[viewer] = cls(viewer)
            viewer.layers.events.removed.connect(state._on_layer_removed)
        return state

    def set_prediction(self, record: Result | None) -> None:
        """Store the latest prediction and tell the other widgets."""
        self.prediction = record
        self.changed.emit("prediction")

    def layer(self, unique_id: str | None) -> Layer | None:
        """The viewer's layer with this napari ``unique_id`` (whatever its name now), else None."""
        viewer = None if self._viewer is None else self._viewer()
        if unique_id is None or viewer is None:
            return None
        return next((layer for layer in viewer.layers if layer.unique_id == unique_id), None)

    def source(self) -> Layer | None:
        """The image layer of the stored prediction, if any."""
        return None if self.prediction is None else self.layer(self.prediction.source)

    def set_prior(self, prior: dict | None, source: Layer | None = None) -> None:
        """Store the prior tuned on the image layer ``source`` (``to_dict()`` form; None = the
        checkpoint's own prior)."""
        self.prior = None if prior is None else dict(prior)
        self.prior_source = None if source is None else source.unique_id
        self.changed.emit("prior")

    def prior_for(self, layer: Layer) -> dict | None:
        """The prior tuned on ``layer`` (matched by identity, whatever its name now), else None."""
        if self.prior is None or self.prior_source != layer.unique_id:
            return None
        return self.prior

    def set_trained_checkpoint(self, path: str | Path | None) -> None:
        """Store the newest checkpoint written by the Train widget."""
        self.trained_checkpoint = None if path is None else Path(path)
        self.changed.emit("trained_checkpoint")

    def set_checkpoint(self, path: str | Path | None) -> None:
        """Store the checkpoint Run model will use (the Shape prior widget resets to its prior)."""
        self.checkpoint = None if path is None else Path(path)
        self.changed.emit("checkpoint")

    def _on_layer_removed(self, event) -> None:
        """Forget what belongs to a removed image: its prediction (large arrays) and prior."""
        removed = event.value.unique_id
        if self.prediction is not None and self.prediction.source == removed:
            self.set_prediction(None)
        if removed == self.prior_source:
            self.set_prior(None)
