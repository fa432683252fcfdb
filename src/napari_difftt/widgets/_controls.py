"""Small controls shared by the dock widgets: layer pickers (magicgui combo boxes whose values
are the layers themselves, so a choice follows renames, removals and re-orders), and spin boxes
that stay wide enough for every value they can hold."""

from __future__ import annotations

from contextlib import suppress
from pathlib import Path
from typing import TYPE_CHECKING

from qtpy.QtCore import QEvent, QObject, QTimer, Signal
from qtpy.QtWidgets import QAbstractSpinBox, QDoubleSpinBox, QHBoxLayout, QWidget

from ._layers import layer_metadata
from ._lifetime import Lifetime

if TYPE_CHECKING:
    from napari.layers import Layer

    import napari

__all__ = ["LayerChooser", "fit_to_range", "show_every_value", "spin_box"]


class LayerChooser(QWidget):
    """A magicgui :class:`~magicgui.widgets.ComboBox` of the viewer's layers of one kind
    ("image" or "labels") whose value is the layer object: renaming the chosen layer keeps it
    chosen (the shown name follows), removing it moves the choice on, re-ordering changes
    nothing but the order.

    ``allow_none`` adds an empty choice first; ``sources_only`` hides layers this plugin derived
    (prior previews, probabilities, segmentations: metadata role set). :meth:`set_ndim` keeps
    only layers of that dimensionality. ``layer_changed`` emits the newly chosen layer (or None).
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
        from magicgui.widgets import ComboBox

        super().__init__(parent)
        self._viewer = viewer
        self._kind = kind
        self._sources_only = sources_only
        self._ndim: int | None = None
        self._named: dict[str, Layer] = {}  # unique_id → layer whose renames are followed
        self.combo = ComboBox(choices=self._choices, nullable=allow_none)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.combo.native)
        self.setToolTip(f"choose a {kind} layer")
        self.combo.changed.connect(self.layer_changed.emit)
        self._events = viewer.layers.events
        for event in self._list_events():
            event.connect(self.refresh)
        self.refresh()
        self._lifetime = Lifetime(self, self._disconnect)  # the viewer may outlive the dock

    def setToolTip(self, text: str) -> None:
        super().setToolTip(text)
        self.combo.tooltip = text

    def layer(self) -> Layer | None:
        """The chosen layer, or None."""
        return self.combo.value

    def set_layer(self, layer: Layer | str | None) -> None:
        """Choose ``layer``, or the offered layer named ``layer`` now (None: the empty choice,
        when allowed); from then on the choice follows the layer, not the name."""
        if isinstance(layer, str):
            layer = next((c for c in self.combo.choices if getattr(c, "name", None) == layer),
                         layer)
        if layer is not None and not any(choice is layer for choice in self.combo.choices):
            raise ValueError(f"{getattr(layer, 'name', layer)!r} is not a {self._kind} layer "
                             "offered here")
        self.combo.value = layer

    def names(self) -> list[str]:
        """The names of the offered layers, in the order shown."""
        return [choice.name for choice in self.combo.choices if choice is not None]

    def set_ndim(self, ndim: int | None) -> None:
        """Offer only layers with ``ndim`` dimensions (None: any)."""
        if ndim != self._ndim:
            self._ndim = ndim
            self.refresh()

    def refresh(self, *_) -> None:
        """Rebuild the choices from the viewer's layers, keeping the chosen layer if it is
        still offered (whatever its name now); ``layer_changed`` tells when it is not."""
        self._follow_names()
        current = self.combo.value
        with self.combo.changed.blocked():
            self.combo.reset_choices()
            if current is not None and any(choice is current for choice in self.combo.choices):
                self.combo.value = current
        if self.combo.value is not current:
            self.layer_changed.emit(self.combo.value)

    def _choices(self, _widget) -> list[tuple[str, Layer]]:
        from napari.layers import Image, Labels

        cls = Labels if self._kind == "labels" else Image
        return [(layer.name, layer) for layer in self._viewer.layers
                if isinstance(layer, cls)
                and not (self._sources_only and layer_metadata(layer).get("role") is not None)
                and self._ndim in (None, layer.ndim)]

    def _follow_names(self) -> None:
        """Listen to the name of every layer in the viewer, and only those."""
        present = {layer.unique_id: layer for layer in self._viewer.layers}
        for key in set(self._named) - set(present):
            self._named.pop(key).events.name.disconnect(self.refresh)
        for key in set(present) - set(self._named):
            present[key].events.name.connect(self.refresh)
            self._named[key] = present[key]

    def _list_events(self) -> tuple:
        events = self._events
        return events.inserted, events.removed, events.moved, events.reordered

    def _disconnect(self) -> None:
        for event in self._list_events():
            event.disconnect(self.refresh)
        for layer in self._named.values():
            layer.events.name.disconnect(self.refresh)
        self._named.clear()


def folder_edit(tooltip: str, value: str | Path = "", *, label: str = "", placeholder: str = ""):
    """A magicgui ``FileEdit`` for a folder: its text field and Browse button both explain
    themselves (``tooltip``); ``placeholder`` shows while the text is empty."""
    from magicgui.widgets import FileEdit

    edit = FileEdit(mode="d", value=value, label=label or None, tooltip=tooltip)
    edit.line_edit.tooltip = tooltip
    edit.choose_btn.tooltip = f"Browse for it: {tooltip}"
    if placeholder:
        edit.line_edit.native.setPlaceholderText(placeholder)
    return edit


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
            fit_to_range(self.parent())


def fit_to_range(box: QAbstractSpinBox) -> None:
    """Set ``box``'s minimum width to the width of its widest value now (after its range or
    style changed): no wider, so a narrow range gives a narrow box."""
    box.setMinimumWidth(0)  # the hint itself must not be held up by the old minimum
    box.setMinimumWidth(box.sizeHint().width())
