"""Small Qt controls shared by the dock widgets: layer pickers that follow the layer list, and
spin boxes that stay wide enough for every value they can hold."""

from __future__ import annotations

from contextlib import suppress
from typing import TYPE_CHECKING

from qtpy.QtCore import QEvent, QObject, QTimer, Signal
from qtpy.QtWidgets import QAbstractSpinBox, QComboBox, QDoubleSpinBox

from ._layers import layer_metadata
from ._lifetime import Lifetime

if TYPE_CHECKING:
    from napari.layers import Layer

    import napari

__all__ = ["LayerChooser", "show_every_value", "spin_box"]

NONE_TEXT = "(none)"


class LayerChooser(QComboBox):
    """A combo box of the viewer's layers of one kind ("image" or "labels"), kept up to date.

    ``allow_none`` adds a "(none)" entry first; ``sources_only`` hides layers this plugin
    derived (prior previews, probabilities, segmentations: metadata role set). The selection
    survives layer-list changes while its layer exists; ``layer_changed`` emits the new layer.
    :meth:`set_ndim` keeps only layers of that dimensionality (e.g. labels that fit an image).
    """

    layer_changed = Signal(object)

    def __init__(
        self,
        viewer: napari.Viewer,
        kind: str,
        *,
        allow_none: bool = False,
        sources_only: bool = False,
        parent=None,
    ) -> None:
        super().__init__(parent)
        self._viewer = viewer
        self._kind = kind
        self._allow_none = allow_none
        self._sources_only = sources_only
        self._ndim: int | None = None
        self.setToolTip(f"choose a {kind} layer")
        self.refresh()
        self._events = viewer.layers.events
        for event in self._list_events():
            event.connect(self.refresh)
        self.currentIndexChanged.connect(lambda _: self.layer_changed.emit(self.layer()))
        self._lifetime = Lifetime(self, self._disconnect)  # the viewer may outlive the dock

    def layer(self) -> Layer | None:
        """The chosen layer, or None."""
        name = self.currentData()
        return self._viewer.layers[name] if name in self._viewer.layers else None

    def set_layer(self, layer: Layer | str | None) -> None:
        """Select ``layer`` (or its name; None selects "(none)" when allowed)."""
        name = getattr(layer, "name", layer)
        index = self.findData(name) if name is not None else self.findData(None)
        if index < 0:
            raise ValueError(f"no {self._kind} layer named {name!r} in the viewer")
        self.setCurrentIndex(index)

    def set_ndim(self, ndim: int | None) -> None:
        """Offer only layers with ``ndim`` dimensions (None: any)."""
        if ndim != self._ndim:
            self._ndim = ndim
            self.refresh()

    def refresh(self, *_) -> None:
        """Rebuild the list from the viewer's layers, keeping the current choice if possible."""
        from napari.layers import Image, Labels

        cls = Labels if self._kind == "labels" else Image
        current = self.currentData()
        names = [
            layer.name
            for layer in self._viewer.layers
            if isinstance(layer, cls)
            and not (self._sources_only and layer_metadata(layer).get("role") is not None)
            and self._ndim in (None, layer.ndim)
        ]
        self.blockSignals(True)
        self.clear()
        if self._allow_none:
            self.addItem(NONE_TEXT, None)
        for name in names:
            self.addItem(name, name)
        index = self.findData(current)
        self.setCurrentIndex(index if index >= 0 else (0 if self.count() else -1))
        self.blockSignals(False)
        if self.currentData() != current:
            self.layer_changed.emit(self.layer())

    def _list_events(self) -> tuple:
        events = self._events
        return events.inserted, events.removed, events.moved, events.reordered

    def _disconnect(self) -> None:
        for event in self._list_events():
            event.disconnect(self.refresh)


def spin_box(
    low: float, high: float, value: float, *, step: float = 1.0, decimals: int = 2,
    suffix: str = "", tooltip: str = "",
) -> QDoubleSpinBox:
    """A QDoubleSpinBox with range, step, decimals and unit suffix set."""
    box = QDoubleSpinBox()
    box.setRange(low, high)
    box.setDecimals(decimals)
    box.setSingleStep(step)
    box.setValue(value)
    box.setKeyboardTracking(False)
    if suffix:
        box.setSuffix(f" {suffix}")
    if tooltip:
        box.setToolTip(tooltip)
    show_every_value(box)
    return box


def show_every_value(box: QAbstractSpinBox) -> None:
    """Never let a layout squeeze ``box`` below the width of its widest value (Qt's minimum
    size hint of a spin box ignores its range, so a tight grid clips "0.000200" to "0.00(").

    The minimum width follows the size hint, which measures the range in the current style:
    napari's stylesheet changes fonts and buttons after the widget is built.
    """
    box.installEventFilter(_WidestValue(box))
    box.setMinimumWidth(box.sizeHint().width())


class _WidestValue(QObject):
    """Keeps a spin box's minimum width at its size hint when its style or font changes."""

    EVENTS = (QEvent.Type.Polish, QEvent.Type.StyleChange, QEvent.Type.FontChange)

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        if event.type() in self.EVENTS:
            QTimer.singleShot(0, self._update)  # after Qt has applied the change
        return False

    def _update(self) -> None:
        with suppress(RuntimeError):  # the box was deleted before the timer fired
            box = self.parent()
            box.setMinimumWidth(0)  # the hint itself must not be held up by the old minimum
            box.setMinimumWidth(box.sizeHint().width())
