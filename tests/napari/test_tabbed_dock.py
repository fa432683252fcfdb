"""The tabbed dock: every widget in one dock that fits a 1280×800 screen, no value cut off."""

from __future__ import annotations

import pytest
from qtpy.QtWidgets import (
    QAbstractButton,
    QAbstractSpinBox,
    QApplication,
    QComboBox,
    QLabel,
    QLineEdit,
    QWidget,
)

from napari_difftt.widgets.tabbed import MAX_WIDTH, TABS

PLUGIN = "napari-difftt"
SCREEN = (1280, 800)
TIMEOUT_MS = 120_000


def clipped(root: QWidget) -> list[str]:
    """What a visible control or label under ``root`` cannot show in full, as readable lines."""
    cut = []
    for box in root.findChildren(QAbstractSpinBox):
        if box.isVisible():
            edit = box.findChild(QLineEdit)
            room = _text_room(edit)
            for value in (box.minimum(), box.maximum(), box.value()):
                text = _shown(box, value)
                if edit.fontMetrics().horizontalAdvance(text) > room:
                    cut.append(f"spin box {box.toolTip()!r}: {text!r} in {room} px")
    for edit in root.findChildren(QLineEdit):
        if edit.isVisible() and not isinstance(edit.parent(), QAbstractSpinBox | QComboBox):
            text = edit.placeholderText()
            if edit.fontMetrics().horizontalAdvance(text) > _text_room(edit):
                cut.append(f"line edit placeholder {text!r}")
    for label in root.findChildren(QLabel):
        if not label.isVisible() or not label.text():
            continue
        if label.wordWrap():
            short = label.heightForWidth(label.width()) > label.height()
        else:
            short = label.sizeHint().width() > label.width()
        if short:
            cut.append(f"label {label.text()[:40]!r}: {label.size()} < {label.sizeHint()}")
    for button in root.findChildren(QAbstractButton):
        if (button.isVisible() and button.text()
                and button.sizeHint().width() > button.width()):
            cut.append(f"button {button.text()!r}")
    return cut


def _shown(box: QAbstractSpinBox, value) -> str:
    """The text ``box`` shows for ``value`` (superqt's large-int box, magicgui's, has no
    prefix/suffix and prints the integer)."""
    if not hasattr(box, "textFromValue"):
        return str(int(value))
    return box.prefix() + box.textFromValue(value) + box.suffix()


def _text_room(edit: QLineEdit) -> int:
    margins = edit.textMargins()
    return edit.contentsRect().width() - margins.left() - margins.right() - 4  # Qt's 2 px a side


def _settle(rounds: int = 5) -> None:
    for _ in range(rounds):
        QApplication.processEvents()


@pytest.fixture
def laptop(make_napari_viewer):
    """A shown viewer holding the tiny phantom (image and labels)."""
    from difftt_helpers import TINY_SHAPE, TINY_SPACING
    from napari.layers import Layer

    from napari_difftt._sample_data import phantom_layers

    viewer = make_napari_viewer(show=True)
    for item in phantom_layers(TINY_SHAPE, 3, TINY_SPACING, "tiny"):
        viewer.add_layer(Layer.create(*item))
    return viewer


def test_all_widgets_in_one_dock_fit_a_laptop_screen_with_results_shown(laptop, qtbot,
                                                                        tiny_checkpoint):
    viewer = laptop
    dock, tabs = viewer.window.add_plugin_dock_widget(PLUGIN, "All widgets (tabs)")
    window = dock.window()
    window.resize(*SCREEN)
    assert [tabs.tabText(i) for i in range(tabs.count())] == [*TABS, "Help"]
    # results in every summary: a prediction with its topology, then det J with its folds
    run = tabs.show_tab("Run model")
    run.set_checkpoint(tiny_checkpoint)
    run.run()
    qtbot.waitUntil(lambda: run.job is None, timeout=TIMEOUT_MS)
    assert run.topology.text()
    jacobian = tabs.show_tab("Jacobian")
    jacobian.compute()
    qtbot.waitUntil(lambda: jacobian.job is None, timeout=TIMEOUT_MS)
    assert "det J" in jacobian.summary.text()

    minimum = window.minimumSizeHint()
    assert minimum.width() <= SCREEN[0] and minimum.height() <= SCREEN[1]
    assert window.width() <= SCREEN[0] and window.height() <= SCREEN[1]  # nothing forced it up
    for title in (*TABS, "Help"):
        tabs.show_tab(title)
        _settle()
        assert clipped(tabs.currentWidget()) == [], title


def test_the_single_docks_tabified_fit_too_and_clip_nothing(laptop):
    viewer = laptop
    docks = [viewer.window.add_plugin_dock_widget(PLUGIN, title, tabify=True)[0] for title in TABS]
    window = docks[0].window()
    window.resize(*SCREEN)
    minimum = window.minimumSizeHint()
    assert minimum.width() <= SCREEN[0] and minimum.height() <= SCREEN[1]
    for dock in docks:
        size = dock.minimumSizeHint()
        assert size.width() <= SCREEN[0] and size.height() <= SCREEN[1], dock.windowTitle()
        dock.raise_()
        _settle()
        assert clipped(dock.widget()) == [], dock.windowTitle()


def test_a_squeezed_spin_box_is_reported(qtbot):
    """The check above can fail: a box narrower than its widest value is caught, and
    :func:`spin_box` keeps a box from being squeezed so."""
    from qtpy.QtWidgets import QDoubleSpinBox, QHBoxLayout

    from napari_difftt.widgets._controls import spin_box

    holder = QWidget()
    qtbot.addWidget(holder)
    plain, ours = QDoubleSpinBox(), spin_box(0.0, 1.0, 0.0002, decimals=6, tooltip="ours")
    plain.setDecimals(6)
    plain.setValue(0.0002)
    row = QHBoxLayout(holder)
    row.addWidget(plain)
    row.addWidget(ours)
    plain.setFixedWidth(40)  # what a tight grid did to the Train widget's learning rate
    holder.show()
    _settle()
    cut = clipped(holder)
    assert cut and all(line.startswith("spin box ''") for line in cut)  # the plain box only
    assert any("0.000200" in line for line in cut)
    assert ours.width() >= ours.sizeHint().width()


def test_the_dock_leaves_the_canvas_large_and_adds_no_layer(laptop):
    """≤ MAX_WIDTH px in every tab at 1280×800, so napari's 400 px notifications fit on the
    canvas; docking adds no layer and shows the whole image again; the Train tab's Start,
    progress and plot are on screen without scrolling."""
    from napari._qt.dialogs.qt_notification import NapariQtNotification

    viewer = laptop
    before = list(viewer.layers)
    viewer.window.resize(*SCREEN)
    _settle()
    dock, tabs = viewer.window.add_plugin_dock_widget(PLUGIN, "All widgets (tabs)")
    _settle(10)
    assert list(viewer.layers) == before  # opening the dock adds no layer
    canvas = viewer.window._qt_viewer.canvas.native
    for title in (*TABS, "Help"):
        tabs.show_tab(title)
        _settle()
        assert dock.width() <= MAX_WIDTH, (title, dock.width())
        assert dock.minimumSizeHint().width() <= MAX_WIDTH, title
        assert canvas.width() >= NapariQtNotification.MIN_WIDTH + 16, title  # 8 px margins
    zoom = viewer.camera.zoom  # the view was reset for the narrower canvas: Home changes nothing
    viewer.reset_view()
    assert viewer.camera.zoom == pytest.approx(zoom, rel=1e-6)

    train = tabs.show_tab("Train")
    _settle()
    assert not train.settings_box.isChecked() and train.summary.isEnabled()  # folded, readable
    assert "30 steps" not in train.summary.text() and "steps, patch" in train.summary.text()
    viewport = tabs.currentWidget().viewport()
    for control in (train.start_button, train.progress, train.plot):
        bottom = control.mapTo(viewport, control.rect().bottomLeft()).y()
        assert control.isVisible() and bottom <= viewport.height(), type(control).__name__


# per tab, what must be on screen without scrolling in napari's left column at 1280×800
MAIN_CONTROLS = {
    "Shape prior": ("fit_button",), "Run model": ("run_button", "progress", "message"),
    "Flow explorer": ("show_button",), "Jacobian": ("compute_button",),
    "Train": ("start_button", "progress", "plot"),
    "Segment from my slices": ("button", "progress"), "Export": ("export_button",),
}


def test_the_dock_shares_the_left_column_and_the_canvas_keeps_60_percent(laptop):
    """At 1280×800 the dock goes into napari's left column, tabbed with the layer list: the
    canvas keeps ≥ 60 % of the width (beside napari's layer docks on the right it keeps 42 %);
    each tab's main controls are on screen without scrolling; ⇆ moves it right and back."""
    from qtpy.QtWidgets import QDockWidget

    viewer = laptop
    viewer.window.resize(*SCREEN)
    _settle()
    dock, tabs = viewer.window.add_plugin_dock_widget(PLUGIN, "All widgets (tabs)")
    window = dock.window()
    _settle(10)
    canvas = viewer.window._qt_viewer.canvas.native
    assert tabs.side() == "left" and window.height() <= SCREEN[1]
    assert window.findChild(QDockWidget, "layer list") in window.tabifiedDockWidgets(dock)
    assert not dock.visibleRegion().isEmpty()  # this tab of the column is the one shown
    assert canvas.width() >= 0.6 * SCREEN[0], canvas.width()
    for title, names in MAIN_CONTROLS.items():
        widget = tabs.show_tab(title)
        _settle()
        viewport = tabs.currentWidget().viewport()
        for name in names:
            control = getattr(widget, name)
            control = getattr(control, "native", control)  # a magicgui widget's Qt widget
            bottom = control.mapTo(viewport, control.rect().bottomLeft()).y()
            assert control.isVisibleTo(widget) and bottom <= viewport.height(), (title, name)
    tabs.move_button.click()
    _settle(10)
    assert tabs.side() == "right" and canvas.width() < 0.6 * SCREEN[0]  # why it moved
    tabs.move_button.click()
    _settle(10)
    assert tabs.side() == "left" and canvas.width() >= 0.6 * SCREEN[0]


def test_help_explains_links_and_sets_the_nifti_reader(laptop, monkeypatch):
    from napari.settings import get_settings

    from napari_difftt.widgets._help import NIFTI_PATTERNS

    plugins = get_settings().plugins
    monkeypatch.setattr(plugins, "extension2reader", {})  # the user's settings stay untouched
    _, tabs = laptop.window.add_plugin_dock_widget(PLUGIN, "All widgets (tabs)")
    helper = tabs.show_tab("Help")
    text = helper.text.text()
    for needed in ("μ", "Σ", "β", "pieces", "fixed", "diag", "full", "topology report",
                   "Components", "MODEL_CARD.md", "README", "shortcuts", "napari builtins"):
        assert needed in text, needed
    assert 'href="file://' in text and helper.text.openExternalLinks()
    assert helper.reader_button.isEnabled()
    helper.reader_button.click()
    assert all(plugins.extension2reader[p] == "napari-difftt" for p in NIFTI_PATTERNS)
    assert not helper.reader_button.isEnabled() and "open with napari-difftt" in (
        helper.reader_status.text())
