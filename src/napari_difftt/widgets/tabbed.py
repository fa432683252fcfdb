"""One "napari-difftt" dock holding the seven widgets as tabs, for laptop screens (1280×800).

Why tabs rather than collapsible sections: the docks stacked need over 2000 px of height, and
collapsing sections inside each widget would still leave seven docks competing for one column.
A :class:`QTabWidget` is as tall as its tallest tab, not the sum, and each tab scrolls
vertically when the window is shorter still (its width is kept, so no value is clipped). The
individual docks stay in the Plugins menu for larger screens. A Help tab lists the shortcuts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from qtpy.QtCore import QSize, Qt
from qtpy.QtWidgets import QFrame, QLabel, QScrollArea, QTabWidget, QWidget

from ._shortcuts import help_html

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
        help_label = QLabel(help_html())
        help_label.setWordWrap(True)
        help_label.setAlignment(Qt.AlignmentFlag.AlignTop)
        self.help_label = help_label
        self.setTabToolTip(self.addTab(VerticalScroll(help_label), "Help"),
                           "keyboard shortcuts of napari-difftt")

    def show_tab(self, title: str) -> QWidget:
        """Bring the tab ``title`` to the front; returns its widget."""
        index = [self.tabText(i) for i in range(self.count())].index(title)
        self.setCurrentIndex(index)
        return self.widgets.get(title, self.help_label)


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
