"""The npe2 manifest is valid, every command imports, and menus/widgets are wired as documented."""

from __future__ import annotations

import importlib
from importlib import resources

import pytest
from npe2 import PluginManifest

WIDGETS = {
    "Run model": "napari-difftt.run_model",
    "Shape prior": "napari-difftt.prior",
    "Train": "napari-difftt.train",
    "Export": "napari-difftt.export",
    "Flow explorer": "napari-difftt.flow_explorer",
    "Jacobian": "napari-difftt.jacobian",
    "Segment from my slices": "napari-difftt.slices",
    "All widgets (tabs)": "napari-difftt.tabbed",
}


@pytest.fixture(scope="module")
def manifest() -> PluginManifest:
    path = resources.files("napari_difftt") / "napari.yaml"
    return PluginManifest.from_file(str(path))


def test_manifest_is_the_installed_one_and_validates(manifest):
    installed = PluginManifest.from_distribution("napari-difftt")
    assert installed.name == manifest.name == "napari-difftt"
    assert manifest.display_name == "napari-difftt"  # the menus say the README's one name
    assert installed.contributions.commands == manifest.contributions.commands
    # from_file already validated the schema; validate_imports checks every python_name
    manifest.validate_imports()


def test_every_command_python_name_imports(manifest):
    assert manifest.contributions.commands
    for command in manifest.contributions.commands:
        assert command.id.startswith("napari-difftt."), command.id
        module_name, _, attribute = command.python_name.partition(":")
        module = importlib.import_module(module_name)
        assert callable(getattr(module, attribute)), command.python_name


def test_widgets_menus_reader_writers_and_samples(manifest):
    contributions = manifest.contributions
    assert {w.display_name: w.command for w in contributions.widgets} == WIDGETS
    menus = {key: [item.command for item in items] for key, items in contributions.menus.items()}
    assert menus["napari/layers/segment"] == [
        WIDGETS[name]
        for name in ("Run model", "Shape prior", "Train", "Segment from my slices", "Export")
    ]
    assert menus["napari/layers/register"] == [WIDGETS["Flow explorer"], WIDGETS["Jacobian"]]
    [reader] = contributions.readers
    assert set(reader.filename_patterns) == {"*.nii", "*.nii.gz"}
    assert {tuple(w.layer_types) for w in contributions.writers} == {("labels",), ("image",)}
    assert {s.key for s in contributions.sample_data} == {"phantom_3d", "phantom_2d"}


def test_importing_the_manifest_modules_does_not_import_torch():
    """The plugin menu must open fast: reader, writer, samples, state, the layer metadata and
    the pipeline import no torch."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import napari_difftt._reader, napari_difftt._writer, napari_difftt._sample_data\n"
        "import napari_difftt.widgets._state, napari_difftt.widgets._layers\n"
        "import napari_difftt.layer_metadata, napari_difftt.pipeline, napari_difftt.fine_tune\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


DOCKS = ("Run model", "Shape prior", "Train", "Export", "Flow explorer", "Jacobian",
         "Segment from my slices", "All widgets (tabs)")


@pytest.mark.parametrize("name", DOCKS)
def test_every_dock_fits_a_laptop_screen_and_explains_its_controls(make_napari_viewer, name):
    from napari.layers import Layer
    from qtpy.QtWidgets import (
        QAbstractButton,
        QAbstractSpinBox,
        QComboBox,
        QLineEdit,
        QListWidget,
        QTabBar,
    )

    from napari_difftt._sample_data import phantom_3d

    viewer = make_napari_viewer()
    for data in phantom_3d():
        viewer.add_layer(Layer.create(*data))
    dock, widget = viewer.window.add_plugin_dock_widget("napari-difftt", name)
    size = dock.minimumSizeHint().expandedTo(dock.minimumSize())
    assert size.width() <= 1280 and size.height() <= 800
    kinds = (QAbstractButton, QComboBox, QAbstractSpinBox, QLineEdit, QListWidget)
    silent = [type(control).__name__ + " " + (getattr(control, "text", str)() or "")
              for control in widget.findChildren(kinds)
              if not control.toolTip()
              and not isinstance(control.parent(), QTabBar | QAbstractSpinBox)]  # their parts
    assert silent == []
