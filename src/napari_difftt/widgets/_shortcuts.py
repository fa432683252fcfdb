"""Keyboard shortcuts of the dock widgets, bound with napari's ``viewer.bind_key``.

:data:`SHORTCUTS` is the one place a key is named: the bindings, the buttons' tooltips
(:func:`key_text`) and the Help text (:func:`help_html`, shown by Help ▸ napari-difftt keyboard
shortcuts and the tabbed dock's Help tab) all read it. npe2's ``keybindings`` contribution is not
applied by napari 0.9, and ``napari/help`` is not a menu plugins may contribute to, hence
``bind_key`` and an entry added to the window's Help menu by the first widget opened.

Each viewer gets one binding per key (napari keeps one function per key and keymap). Widgets
:func:`register` handlers per action; a key calls the newest live handler of its action, or,
for "cancel", every live one (whatever is running stops). Handlers are held weakly and dropped
when their widget is destroyed; the binding goes with the last handler.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from qtpy.QtWidgets import QMessageBox, QWidget

if TYPE_CHECKING:
    import napari

__all__ = ["SHORTCUTS", "Shortcut", "add_help_entry", "help_html", "key_text", "register",
           "show_help"]


@dataclass(frozen=True)
class Shortcut:
    """A key (napari key-binding string), the action it triggers, and what that does."""

    key: str
    action: str
    text: str


SHORTCUTS = (
    Shortcut("Ctrl-Shift-R", "run", "Run model: segment the chosen image (Run)"),
    Shortcut("Ctrl-Shift-X", "cancel", "Cancel: stop the running prediction or folder run, "
                                       "and the Flow explorer's precomputing"),
    Shortcut("Alt-Right", "t_forward", "Flow explorer: next frame, one step forward in t"),
    Shortcut("Alt-Left", "t_back", "Flow explorer: previous frame, one step back in t"),
)
BROADCAST = frozenset({"cancel"})  # every live handler runs, not only the newest
HELP_TITLE = "napari-difftt keyboard shortcuts"

Handler = Callable[..., Any] | tuple[Callable[..., Any], Any]  # method, or (method, argument)


def register(viewer: napari.Viewer, owner: QWidget, handlers: dict[str, Handler]) -> None:
    """Bind ``handlers`` (action → bound method, or ``(method, argument)``) on ``viewer``.

    Unregistered when ``owner`` (the widget) is destroyed. Raises KeyError for an unknown action.
    """
    table = _Table.of(viewer)
    entries = []
    for action, handler in handlers.items():
        method, args = (handler[0], handler[1:]) if isinstance(handler, tuple) else (handler, ())
        entries.append((action, weakref.WeakMethod(method), args))
        table.add(action, entries[-1])
    owner.destroyed.connect(lambda *_: table.remove(entries))
    add_help_entry(viewer)


def key_text(action: str) -> str:
    """The key of ``action`` as napari shows it, e.g. "Ctrl+Shift+R"."""
    from napari.utils.key_bindings import coerce_keybinding

    return str(coerce_keybinding(_shortcut(action).key))


def help_html() -> str:
    """The shortcut table as rich text (for a QLabel or a message box)."""
    rows = "".join(f"<tr><td><b>{key_text(s.action)}</b>&nbsp;&nbsp;</td><td>{s.text}</td></tr>"
                   for s in SHORTCUTS)
    return (f"<p><b>{HELP_TITLE}</b></p><table>{rows}</table><p>They act while the napari "
            "canvas has the keyboard focus (click on the image first) and a napari-difftt widget "
            "is open. napari's own shortcuts: Help ▸ Keyboard Shortcuts.</p>")


def add_help_entry(viewer: napari.Viewer) -> None:
    """Add "napari-difftt keyboard shortcuts" to the window's Help menu (once per window)."""
    menu = getattr(getattr(viewer, "window", None), "help_menu", None)
    if menu is None or any(action.text() == HELP_TITLE for action in menu.actions()):
        return
    action = menu.addAction(HELP_TITLE)
    action.setToolTip("The keys for Run, Cancel and stepping t")
    action.triggered.connect(lambda *_: show_help(menu))


def show_help(parent: QWidget | None = None) -> QMessageBox:
    """Show the shortcut table in a non-modal message box; returns it."""
    box = QMessageBox(QMessageBox.Icon.Information, HELP_TITLE, help_html(),
                      QMessageBox.StandardButton.Close, parent)
    box.setModal(False)
    box.show()
    return box


class _Table:
    """One viewer's handlers per action, and the keys bound for them."""

    _registry: ClassVar[weakref.WeakKeyDictionary[Any, _Table]] = weakref.WeakKeyDictionary()

    def __init__(self, viewer: napari.Viewer) -> None:
        self._viewer = weakref.ref(viewer)
        self._handlers: dict[str, list[tuple]] = {}

    @classmethod
    def of(cls, viewer: napari.Viewer) -> _Table:
        viewer = getattr(viewer, "__wrapped__", viewer)
        table = cls._registry.get(viewer)
        if table is None:
            table = cls._registry[viewer] = cls(viewer)
        return table

    def add(self, action: str, entry: tuple) -> None:
        shortcut = _shortcut(action)
        entries = self._handlers.setdefault(action, [])
        if not entries:
            self._bind(shortcut.key, lambda *_: self.press(action))
        entries.append(entry)

    def remove(self, entries: list[tuple]) -> None:
        for action, *_ in entries:
            live = self._handlers.get(action, [])
            live[:] = [e for e in live if e not in entries]
            if not live:
                self._bind(_shortcut(action).key, None)

    def press(self, action: str) -> None:
        """Run the action's newest live handler (every live one for "cancel")."""
        calls = []
        for _, reference, args in reversed(self._handlers.get(action, [])):
            method = reference()
            if method is not None:
                calls.append((method, args))
        for method, args in calls if action in BROADCAST else calls[:1]:
            method(*args)

    def _bind(self, key: str, function: Callable | None) -> None:
        viewer = self._viewer()
        if viewer is not None:
            viewer.bind_key(key, function, overwrite=True)


def _shortcut(action: str) -> Shortcut:
    for shortcut in SHORTCUTS:
        if shortcut.action == action:
            return shortcut
    raise KeyError(f"no shortcut for action {action!r}; known: {[s.action for s in SHORTCUTS]}")
