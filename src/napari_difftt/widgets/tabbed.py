"""One "napari-difftt" dock holding the seven widgets as tabs, for laptop screens (1280×800).

Why tabs rather than collapsible sections: the docks stacked need over 2000 px of height, and
collapsing sections inside each widget would still leave seven docks competing for one column.
A :class:`QTabWidget` is as tall as its tallest tab, not the sum, and each tab scrolls
vertically when the window is shorter still (its width is kept, so no value is clipped). The
individual docks stay in the Plugins menu for larger screens. At 1280×800 the dock needs at most
:data:`MAX_WIDTH` px in every tab (napari's own layer docks keep 320 px): spin boxes drop
napari's 70 px text minimum, combo boxes show a few characters (their lists show every item),
forms are one column and the Train tab puts Start, progress and the plot above its settings.

Where it docks: beside napari's own 320-px layer column on the right, a 1280-px window keeps
only 42 % of its width for the canvas. So when the canvas would keep less than
:data:`CANVAS_SHARE` of the window, the dock shares napari's left column instead, tabbed with
the layer list below the layer controls (the column is as wide as the dock: the canvas keeps
67 % at 1280×800); the ⇆ button in the tab bar's corner moves it to the right column (full
height: no tab but Help scrolls at 800 px) and back. In the left column the dock is about 370
px high at 800 px: every tab's main button and progress, and the Train tab's plot, are on screen,
what lies below them (reports, folder fields, settings) scrolls (docs/ARCHITECTURE.md). The
view is reset once the dock is placed (docking narrows the canvas). A Help tab explains the
parameters and reports, links the README and the model card, and lists the shortcuts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from qtpy.QtCore import QSize, Qt, QTimer
from qtpy.QtWidgets import (
    QComboBox,
    QDockWidget,
    QFrame,
    QMainWindow,
    QScrollArea,
    QTabWidget,
    QToolButton,
    QWidget,
)

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
CANVAS_SHARE = 0.6  # the canvas keeps at least this share of the window's width, or the dock
# moves into napari's left column
LAYER_LIST = "layer list"  # the object name of napari's layer-list dock, which the dock tabs with
AREAS = {"left": Qt.DockWidgetArea.LeftDockWidgetArea,
         "right": Qt.DockWidgetArea.RightDockWidgetArea}
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
        self.move_button = QToolButton()
        self.move_button.setText("⇆")
        self.move_button.setToolTip("Move this dock between napari's left column (tabbed with "
                                    "the layer list: a wide canvas) and the right one (full "
                                    "height)")
        self.move_button.clicked.connect(self.move_to_other_side)
        self.setCornerWidget(self.move_button, Qt.Corner.TopRightCorner)
        self._shown = False

    def show_tab(self, title: str) -> QWidget:
        """Bring the tab ``title`` to the front; returns its widget."""
        index = [self.tabText(i) for i in range(self.count())].index(title)
        self.setCurrentIndex(index)
        return self.widgets.get(title, self.help)

    def side(self) -> str | None:
        """Where the dock is: "left", "right", or None (floating, another area, not docked)."""
        dock, window = self._docked()
        if dock is None or dock.isFloating():
            return None
        return next((name for name, area in AREAS.items()
                     if window.dockWidgetArea(dock) == area), None)

    def share_left_column(self) -> None:
        """Dock in napari's left column, tabbed with its layer list, and show this tab."""
        dock, window = self._docked()
        if dock is None:
            return
        window.addDockWidget(AREAS["left"], dock)
        layer_list = window.findChild(QDockWidget, LAYER_LIST)
        if layer_list is not None and window.dockWidgetArea(layer_list) == AREAS["left"]:
            window.tabifyDockWidget(layer_list, dock)
        dock.show()
        dock.raise_()
        above = [other for other in window.findChildren(QDockWidget) if other is not dock
                 and other.isVisible() and window.dockWidgetArea(other) == AREAS["left"]
                 and other not in window.tabifiedDockWidgets(dock)]
        # the docks above (napari's layer controls) keep their minimum height, this one the rest
        window.resizeDocks([*above, dock], [*(other.minimumSizeHint().height() for other in above),
                                            window.height()], Qt.Orientation.Vertical)

    def move_to_other_side(self) -> None:
        """Left column → right column (full height), anything else → the left column."""
        dock, window = self._docked()
        if dock is None:
            return
        if self.side() == "left":
            window.addDockWidget(AREAS["right"], dock)
        else:
            self.share_left_column()
        QTimer.singleShot(0, self._reset_view)

    def showEvent(self, event) -> None:
        """Docked the first time: share the left column if the canvas would be too narrow
        (or napari put the dock there, where stacked it would not fit the height), then show
        the whole image again (as Home)."""
        super().showEvent(event)
        if not self._shown:
            self._shown = True
            QTimer.singleShot(0, self._place)

    def _place(self) -> None:
        dock, window = self._docked()
        if dock is not None and not dock.isFloating():
            narrow = window.centralWidget().width() < CANVAS_SHARE * window.width()
            if narrow or (self.side() == "left" and not window.tabifiedDockWidgets(dock)):
                self.share_left_column()
        QTimer.singleShot(0, self._reset_view)

    def _docked(self) -> tuple[QDockWidget | None, QMainWindow | None]:
        """The dock widget holding this one and its main window (None, None when there are
        none)."""
        dock = self.parentWidget()
        while dock is not None and not isinstance(dock, QDockWidget):
            dock = dock.parentWidget()
        window = dock.parentWidget() if dock is not None else None
        if not isinstance(window, QMainWindow):
            return None, None
        return dock, window

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
