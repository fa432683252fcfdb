"""Segment from my slices: what counts is shown as you paint, bad painting or settings are
refused with nothing trained or added, a run adds a new segmentation with its topology, Stop
keeps the checkpoint."""

from __future__ import annotations

import numpy as np
import pytest

from napari_difftt.core.slices import evenly_spaced_slices, paint
from napari_difftt.widgets._state import ViewerState

DOCK = "Segment from my slices"


@pytest.fixture
def painted(viewer, tiny_phantom):
    """The tiny phantom's image and a Labels layer to paint (empty)."""
    image, truth = tiny_phantom
    layer = viewer.add_labels(np.zeros(image.data.shape, np.uint8), name="my slices")
    return image, layer, np.asarray(truth.data)


def _setup(widget, image, layer, folder, checkpoint=None, minutes=0.1):
    widget.image.value = image
    widget.painted.value = layer
    widget.folder.value = str(folder)
    widget.minutes.value = minutes
    widget.device.value = "cpu"
    if checkpoint is not None:
        widget.start_from.value = str(checkpoint)


def test_the_count_follows_the_painting_and_the_axis(viewer, dock, painted, tmp_path):
    image, layer, truth = painted
    widget = dock(DOCK)
    _setup(widget, image, layer, tmp_path)
    assert widget.axis.value == 0  # the viewer slices along z
    assert widget.count.text().startswith("Cannot train yet: nothing is painted")
    layer.data = paint(truth, evenly_spaced_slices(truth, 2))
    assert widget.count.text().startswith(f"2 slices along z, {2 * 24 * 20} voxels count")
    layer.data = paint(truth, evenly_spaced_slices(truth, 1))
    assert widget.count.text().startswith(f"1 slice along z, {24 * 20} voxels count")
    viewer.dims.order = (2, 0, 1)  # now slicing along x, where one z slice is a line in each
    assert widget.axis.value == 2
    assert widget.count.text().startswith("Cannot train yet: painted along two axes")


@pytest.mark.parametrize("problem, message", [
    ("nothing", "nothing is painted"),
    ("value", r"value\(s\) 5"),
    ("two axes", "painted along two axes"),
    ("2D checkpoint", "holds a 2D 'bch' model but this run trains a 3D 'bch' model"),
])
def test_bad_input_is_refused_and_nothing_is_trained_or_added(
        viewer, dock, painted, tmp_path, tiny_checkpoint_2d, problem, message):
    import re

    image, layer, truth = painted
    widget = dock(DOCK)
    slices = paint(truth, evenly_spaced_slices(truth, 1))
    layer.data = {"nothing": np.zeros_like(slices), "value": slices * 5,
                  "two axes": slices | paint(truth, [10], axis=2)}.get(problem, slices)
    _setup(widget, image, layer, tmp_path / "out",
           checkpoint=tiny_checkpoint_2d if problem == "2D checkpoint" else None)
    before = [layer.name for layer in viewer.layers]
    assert widget.start() is None and not widget.running
    assert re.search(message, widget.status.text())
    assert [layer.name for layer in viewer.layers] == before
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_one_button_fine_tunes_then_adds_a_new_segmentation(
        viewer, dock, painted, tmp_path, tiny_checkpoint, qtbot):
    image, layer, truth = painted
    layer.data = paint(truth, evenly_spaced_slices(truth, 3))
    originals = [np.array(x.data, copy=True) for x in (image, layer)]
    widget = dock(DOCK)
    _setup(widget, image, layer, tmp_path, checkpoint=tiny_checkpoint)
    assert widget.toggle() is not None and widget.button.text() == "Stop"
    qtbot.waitUntil(lambda: not widget.running, timeout=180_000)
    finished = widget.last
    assert finished is not None and not finished.stopped and finished.checkpoint.is_file()
    assert widget.progress.value() == 1000
    added = [x for x in viewer.layers if "from slices" in x.name]
    assert len(added) == 2 and added[-1].data.shape == image.data.shape
    assert "components" in widget.topology.text()
    record = ViewerState.of(viewer).prediction
    assert record.layers["segmentation"] == added[-1].unique_id  # the widget holds a proxy
    assert record.source == image.unique_id
    assert record.checkpoint == finished.checkpoint
    for original, x in zip(originals, (image, layer), strict=True):
        np.testing.assert_array_equal(np.asarray(x.data), original)


def test_stop_keeps_the_checkpoint_and_adds_nothing(
        viewer, dock, painted, tmp_path, tiny_checkpoint, qtbot):
    image, layer, truth = painted
    layer.data = paint(truth, evenly_spaced_slices(truth, 1))
    widget = dock(DOCK)
    _setup(widget, image, layer, tmp_path, checkpoint=tiny_checkpoint, minutes=10.0)
    count = len(viewer.layers)
    widget.start()
    qtbot.waitUntil(lambda: widget.progress.value() > 0, timeout=120_000)
    widget.toggle()
    qtbot.waitUntil(lambda: not widget.running, timeout=120_000)
    assert widget.last.stopped and widget.last.checkpoint.is_file()
    assert len(viewer.layers) == count and "nothing was added" in widget.status.text()
