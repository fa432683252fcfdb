"""Shared napari fixtures: a real viewer (napari's ``make_napari_viewer`` under pytest-xvfb),
tiny phantoms, an untrained width-4 checkpoint, docking by display name, no modal dialogs.
Additions welcome (both napari engineers use this file)."""

from __future__ import annotations

from pathlib import Path

import pytest
from difftt_helpers import TINY_SHAPE, TINY_SPACING, untrained_checkpoint

PLUGIN = "napari-difftt"


@pytest.fixture
def viewer(make_napari_viewer):
    """A napari viewer (not shown) closed after the test."""
    return make_napari_viewer()


@pytest.fixture
def dock(viewer):
    """``dock(display_name)`` → the widget opened through the plugin manifest."""

    def open_widget(display_name: str):
        _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, display_name)
        return widget

    return open_widget


@pytest.fixture
def tiny_phantom(viewer):
    """A tiny seeded 3D phantom (image + labels) in the viewer: ``(image_layer, labels_layer)``."""
    from napari.layers import Layer

    from napari_difftt._sample_data import phantom_layers

    data = phantom_layers(TINY_SHAPE, 3, TINY_SPACING, "tiny")
    return tuple(viewer.add_layer(Layer.create(*item)) for item in data)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """An untrained 3D bch TemplateTransformer (width 4, T = 2) saved as a v1 checkpoint."""
    return untrained_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny3d.pt", ndim=3)


@pytest.fixture(scope="session")
def tiny_checkpoint_2d(tmp_path_factory) -> Path:
    """The same, 2D."""
    return untrained_checkpoint(tmp_path_factory.mktemp("ckpt2d") / "tiny2d.pt", ndim=2)


@pytest.fixture(autouse=True)
def _no_modal_dialogs(monkeypatch):
    """A test that reaches a modal dialog without monkeypatching it fails instead of hanging."""
    from qtpy.QtWidgets import QFileDialog, QMessageBox

    def refuse(*args, **kwargs):
        raise AssertionError(f"unexpected modal dialog: {args[1:3]}")

    for name in ("question", "warning", "information", "critical"):
        monkeypatch.setattr(QMessageBox, name, refuse)
    for name in ("getOpenFileName", "getSaveFileName", "getExistingDirectory"):
        monkeypatch.setattr(QFileDialog, name, refuse)


@pytest.fixture
def notes(monkeypatch):
    """Record napari notifications: a list of ``(kind, message)``."""
    from napari.utils import notifications

    seen: list[tuple[str, str]] = []
    for kind in ("error", "info", "warning"):
        monkeypatch.setattr(notifications, f"show_{kind}",
                            lambda message, kind=kind: seen.append((kind, str(message))))
    return seen
