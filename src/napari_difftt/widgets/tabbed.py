"""One "napari-difftt" dock holding the seven widgets as tabs, for laptop screens (1280×800).

Why tabs rather than collapsible sections: the docks stacked need over 2000 px of height, and
collapsing sections inside each widget would still leave seven docks competing for one column.
A :class:`QTabWidget` is as tall as its tallest tab, not the sum, and each tab scrolls
vertically when the window is shorter still (its width is kept, so no value is clipped). The
individual docks stay in the Plugins menu for larger screens. At 1280×800 the dock needs at most
:data:`MAX_WIDTH` px in every tab (napari's own layer docks keep 320 px): spin boxes drop
napari's 70 px text minimum, combo boxes show a few characters (their lists show every item),
forms are one column and the Train tab puts Start, progress and the plot above its settings.
The view is reset once the dock is shown (docking narrows the canvas). A Help tab explains the
parameters and reports, links the README and the model card, and lists the shortcuts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from qtpy.QtCore import QSize, Qt, QTimer
from qtpy.QtWidgets import QComboBox, QFrame, QScrollArea, QTabWidget, QWidget

from ._help import HelpWidget

if TYPE_CHECKING:
    import napari

__all__ = ["TABS", "TabbedDock"]

# tab title → (module, class, tooltip); the titles are the single docks' display names
TABS = {
    "Shape prior": ("prior", "PriorWidget", "tune the analytic shape prior, with a live preview"),
    "Run model": ("run_model", "RunModelWidget", "segment an image or a folder with a model"),
    "Flow explorer": ("flow_explorer", "FlowExplorerWidget", "scrub the flow φ(t) with a t slider"),
    "Jacobian": ("jacobian", "JacobianWidget", "log₂ det J, folds and a deformed grid"),
    "Train": ("train", "TrainWidget", "train a model on open layers or a folder"),
    "Segment from my slices": ("slices", "SlicesWidget",
                               "paint a few slices, fine-tune, segment the whole organ"),
    "Export": ("export", "ExportWidget", "write the results to NIfTI and meshes"),
}
MIN_TAB_HEIGHT = 240  # px a tab needs before it scrolls
MAX_WIDTH = 400  # px: the dock's width budget on a 1280-px screen (napari's own docks take 320)
# napari's theme gives every spin box 70 px of text room: the dock's values need less (each box
# still fits its widest value, see _controls.show_every_value)
COMPACT_STYLE = "QAbstractSpinBox { min-width: 0px; }"
COMBO_CHARACTERS = 9  # a combo box shows this many characters; its list shows every item whole


class TabbedDock(QTabWidget):
    """Every napari-difftt widget in one dock, one tab each, plus a Help tab."""

    def __init__(self, napari_viewer: napari.Viewer, parent: QWidget | None = None) -> None:
        from importlib import import_module

        super().__init__(parent)
        self.viewer = napari_viewer
        self.widgets: dict[str, QWidget] = {}
        self.setUsesScrollButtons(True)
        for title, (module, name, tip) in TABS.items():
            cls = getattr(import_module(f"{__package__}.{module}"), name)
            self.widgets[title] = cls(napari_viewer)
            self.setTabToolTip(self.addTab(VerticalScroll(self.widgets[title]), title), tip)
        self.setStyleSheet(COMPACT_STYLE)
        for combo in self.findChildren(QComboBox):
            combo.setSizeAdjustPolicy(
                QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
            combo.setMinimumContentsLength(COMBO_CHARACTERS)
        self.help = HelpWidget()
        self.setTabToolTip(self.addTab(VerticalScroll(self.help), "Help"),
                           "what μ, Σ, β, the pieces T and the reports mean; links; shortcuts")
        self._shown = False

    def show_tab(self, title: str) -> QWidget:
        """Bring the tab ``title`` to the front; returns its widget."""
        index = [self.tabText(i) for i in range(self.count())].index(title)
        self.setCurrentIndex(index)
        return self.widgets.get(title, self.help)

    def showEvent(self, event) -> None:
        """Docking the first time narrows the canvas: show the whole image again (as Home)."""
        super().showEvent(event)
        if not self._shown:
            self._shown = True
            QTimer.singleShot(0, self._reset_view)

    def _reset_view(self) -> None:
        if len(self.viewer.layers):
            self.viewer.reset_view()


class VerticalScroll(QScrollArea):
    """Scrolls its widget vertically only; as wide as the widget needs, so nothing is cut off."""

    def __init__(self, widget: QWidget) -> None:
        super().__init__()
        self.setWidget(widget)
        self.setWidgetResizable(True)
        self.setFrameShape(QFrame.Shape.NoFrame)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)

    def minimumSizeHint(self) -> QSize:
        inner = self.widget().minimumSizeHint()
        width = inner.width() + self.verticalScrollBar().sizeHint().width() + 2 * self.frameWidth()
        return QSize(width, min(inner.height(), MIN_TAB_HEIGHT))

    def sizeHint(self) -> QSize:  # as narrow as it may be: the canvas gets the rest
        return QSize(self.minimumSizeHint().width(), self.widget().sizeHint().height())
