"""Dock-widget lifetime: stop work when napari closes, drop worker signals that arrive late.

Closing the viewer deletes the widget's Qt objects only later (deferred deletion) while a worker
may still run; its queued ``yielded``/``returned`` signals would then touch deleted widgets.
A :class:`Lifetime` notices either event — the widget destroyed (dock removed), or the
top-level window it is docked in closed (watched from the moment work starts) — marks itself
closed once and runs the widget's clean-up (e.g. cancel and wait for a checkpoint);
:meth:`Lifetime.guard` wraps worker callbacks so they do nothing once closed.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

from qtpy.QtCore import QEvent, QObject, QTimer
from qtpy.QtWidgets import QWidget

__all__ = ["Lifetime"]


class Lifetime(QObject):
    """Closed-or-not state of one dock widget, with a clean-up run exactly once on closing."""

    def __init__(self, widget: QWidget, cleanup: Callable[[], None] | None = None) -> None:
        super().__init__()
        self.closed = False
        self._cleanup = cleanup
        self._window: weakref.ref | None = None  # weak: the widget must not keep napari alive
        widget.destroyed.connect(self.close)

    def watch(self, widget: QWidget) -> None:
        """Treat closing ``widget``'s top-level window (the viewer it is docked in) as closing."""
        window = widget.window()
        if window is not widget and (self._window is None or self._window() is not window):
            window.installEventFilter(self)
            self._window = weakref.ref(window)

    def guard(self, method: Callable[..., Any]) -> Callable[..., None]:
        """The bound ``method`` of the widget, skipped once the widget is closed.

        Held weakly, so a worker that outlives the viewer (napari keeps aborted workers in its
        task list) does not keep the widget, and through it the viewer, alive.
        """
        reference = weakref.WeakMethod(method)

        def call(*args: object) -> None:
            bound = reference()
            if bound is not None and not self.closed:
                bound(*args)

        return call

    def close(self, *_: object) -> None:
        """Mark closed and run the clean-up (only the first time)."""
        if self.closed:
            return
        self.closed = True
        if self._cleanup is not None:
            self._cleanup()

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        if event.type() == QEvent.Type.Close:
            QTimer.singleShot(0, self._after_close)  # the close may still be refused (dialog)
        return False

    def _after_close(self) -> None:
        window = None if self._window is None else self._window()
        try:
            visible = window is not None and window.isVisible()
        except RuntimeError:  # the window's Qt object is already gone
            visible = False
        if not visible:
            self.close()
