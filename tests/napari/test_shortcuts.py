"""Keyboard shortcuts: real key presses on the napari canvas run, cancel and step t; Help lists
them."""

from __future__ import annotations

import pytest
from qtpy.QtCore import Qt

from napari_difftt.widgets._shortcuts import HELP_TITLE, SHORTCUTS, key_text
from napari_difftt.widgets._state import ViewerState
from napari_difftt.widgets.flow_explorer import current_frame

TIMEOUT_MS = 120_000
CTRL_SHIFT = Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.ShiftModifier
ALT = Qt.KeyboardModifier.AltModifier


def _press(widget, qtbot, key: Qt.Key, modifiers) -> None:
    """A key press as the user makes it: on the canvas, through napari's key handling.

    The canvas is found through public API only: the dock widget's top-level window (Qt), its
    :class:`napari.qt.QtViewer` child and that viewer's ``canvas`` (no private napari attribute;
    ``Window.qt_viewer`` is deprecated)."""
    from napari.qt import QtViewer

    canvas = widget.window().findChild(QtViewer).canvas.native
    canvas.setFocus()
    qtbot.keyClick(canvas, key, modifiers)


def test_ctrl_shift_r_runs_and_ctrl_shift_x_cancels(viewer, dock, tiny_phantom, tiny_checkpoint,
                                                   qtbot, notes):
    widget = dock("Run model")
    widget.set_checkpoint(tiny_checkpoint)
    layers = len(viewer.layers)
    _press(widget, qtbot, Qt.Key.Key_R, CTRL_SHIFT)
    job = widget.job
    assert job is not None  # the key started the run
    _press(widget, qtbot, Qt.Key.Key_X, CTRL_SHIFT)
    assert job.cancel_requested
    qtbot.waitUntil(lambda: widget.job is None, timeout=TIMEOUT_MS)
    assert "cancelled" in widget.message.text()
    assert len(viewer.layers) == layers
    _press(widget, qtbot, Qt.Key.Key_R, CTRL_SHIFT)  # and again, to the end this time
    qtbot.waitUntil(lambda: widget.job is None, timeout=TIMEOUT_MS)
    assert ViewerState.of(viewer).prediction is not None
    assert len(viewer.layers) == layers + 2


def test_alt_arrows_step_t_of_the_flow_layer(viewer, dock, tiny_phantom, tiny_checkpoint, qtbot):
    run = dock("Run model")
    run.set_checkpoint(tiny_checkpoint)
    run.run()
    qtbot.waitUntil(lambda: run.job is None, timeout=TIMEOUT_MS)
    widget = dock("Flow explorer")
    widget.count.setValue(3)
    widget.show_flow()
    qtbot.waitUntil(lambda: widget.job is None, timeout=TIMEOUT_MS)
    layer = widget.layer
    z = viewer.dims.current_step[1]
    seen = []
    for key in (Qt.Key.Key_Right, Qt.Key.Key_Right, Qt.Key.Key_Right, Qt.Key.Key_Left):
        _press(widget, qtbot, key, ALT)
        seen.append(current_frame(viewer, layer))
    assert seen == [1, 2, 2, 1]  # clipped at the last frame
    assert viewer.dims.current_step[1] == z  # only t moved, not the z slider


def test_the_keys_go_with_the_last_widget_that_uses_them(viewer, dock, tiny_phantom, qtbot):
    from napari.utils.key_bindings import coerce_keybinding

    def bound() -> set[str]:
        keys = {str(coerce_keybinding(s.key)) for s in SHORTCUTS}
        return {str(k) for k in viewer.keymap} & keys

    run, flow = dock("Run model"), dock("Flow explorer")
    assert bound() == {"Ctrl+Shift+R", "Ctrl+Shift+X", "Alt+Left", "Alt+Right"}
    flow.deleteLater()
    qtbot.waitUntil(lambda: bound() == {"Ctrl+Shift+R", "Ctrl+Shift+X"}, timeout=3000)
    run.deleteLater()  # Run model still cancelled until now
    qtbot.waitUntil(lambda: bound() == set(), timeout=3000)


@pytest.mark.parametrize("where", ["menu", "tab"])
def test_help_lists_every_shortcut(viewer, dock, qtbot, where):
    widget = dock("All widgets (tabs)")
    if where == "menu":
        [action] = [a for a in viewer.window.help_menu.actions() if a.text() == HELP_TITLE]
        action.trigger()
        from qtpy.QtWidgets import QMessageBox

        [box] = [w for w in viewer.window.help_menu.findChildren(QMessageBox) if w.isVisible()]
        text = box.text()
        box.close()
    else:
        text = widget.show_tab("Help").text.text()
        assert widget.tabText(widget.currentIndex()) == "Help"
    for shortcut in SHORTCUTS:
        assert key_text(shortcut.action) in text and shortcut.text in text
    assert key_text("run") == "Ctrl+Shift+R"
