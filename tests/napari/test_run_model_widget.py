"""Run model widget: a real prediction in a worker, derived layers, shared state, metrics, and
every failure path ending in a notification with no user layer touched."""

from __future__ import annotations

import numpy as np
import pytest

from napari_difftt.widgets._layers import META_KEY
from napari_difftt.widgets._state import ViewerState

TIMEOUT_MS = 120_000


def _run(widget, qtbot):
    assert widget.run() is not None
    # on_finished (connected before the start) clears widget.job; waiting on that cannot miss
    # a worker that finished before a waitSignal would have connected
    qtbot.waitUntil(lambda: widget.job is None, timeout=TIMEOUT_MS)


def _snapshot(viewer):
    return {layer.name: np.array(layer.data, copy=True) for layer in viewer.layers}


def _unchanged(viewer, before):
    assert set(before) <= {layer.name for layer in viewer.layers}
    for name, data in before.items():
        np.testing.assert_array_equal(viewer.layers[name].data, data)


def test_prediction_layers_state_and_metrics(viewer, dock, tiny_phantom, tiny_checkpoint,
                                             qtbot, notes):
    from napari_difftt.core.inference import default_checkpoint
    from napari_difftt.core.metrics import evaluate_case

    image, labels = tiny_phantom
    before = _snapshot(viewer)
    widget = dock("Run model")
    assert [widget.device.itemData(i) for i in range(2)] == ["auto", "cpu"]
    assert widget.checkpoint() == default_checkpoint()  # the bundled model unless chosen
    assert widget.checkpoint_label.text() == f"{default_checkpoint().name} (bundled)"
    widget.set_checkpoint(tiny_checkpoint)
    widget.set_device("cpu")
    widget.truth.set_layer(labels)
    _run(widget, qtbot)

    _unchanged(viewer, before)
    probability = viewer.layers["tiny probability"]
    segmentation = viewer.layers["tiny segmentation"]
    for layer, role in ((probability, "probability"), (segmentation, "segmentation")):
        np.testing.assert_allclose(layer.scale, image.scale)
        np.testing.assert_allclose(layer.translate, image.translate)
        assert layer.metadata[META_KEY]["role"] == role
        assert layer.metadata[META_KEY]["source"] == "tiny"
        np.testing.assert_allclose(layer.metadata[META_KEY]["affine"],
                                   image.metadata[META_KEY]["affine"])
    np.testing.assert_array_equal(segmentation.data, probability.data > 0.5)

    record = ViewerState.of(viewer).prediction
    assert record.source == image and record.device == "cpu"
    assert record.checkpoint == tiny_checkpoint
    assert record.prediction.displacement.shape == (3, *image.data.shape)
    assert widget.device_used.text() == "cpu"
    expected = evaluate_case(segmentation.data, labels.data != 0, image.scale,
                             displacement=record.prediction.displacement)
    assert widget.last_result.metrics == expected
    assert f"Dice: {expected['dice']:.3f}" in widget.metrics.text()
    assert "components: " in widget.metrics.text()
    assert any(kind == "info" and "done" in text for kind, text in notes)

    # a second run refreshes our own layers instead of piling up new ones
    count = len(viewer.layers)
    _run(widget, qtbot)
    assert len(viewer.layers) == count


def test_tuned_prior_is_used_for_its_image(viewer, dock, tiny_phantom, tiny_checkpoint, qtbot):
    from napari_difftt.core.prior import prior_from_dict

    image, _ = tiny_phantom
    prior_widget = dock("Shape prior")
    prior_widget.set_parameters((10.0, 9.0, 12.0), (6.0, 5.0, 7.0), None, 1.5)
    prior_widget.update_preview()
    tuned = ViewerState.of(viewer).prior
    widget = dock("Run model")
    widget.set_checkpoint(tiny_checkpoint)
    _run(widget, qtbot)
    used = ViewerState.of(viewer).prediction.prediction.prior
    expected = prior_from_dict(tuned).on_grid(image.data.shape).numpy()[0, 0]
    np.testing.assert_allclose(used, expected, atol=1e-5)


@pytest.mark.parametrize("case", ["4d", "rgb", "mismatch", "no image", "missing checkpoint"])
def test_bad_inputs_notify_and_touch_nothing(viewer, dock, tiny_checkpoint, notes, case, tmp_path):
    if case == "4d":
        viewer.add_image(np.zeros((2, 4, 8, 8), np.float32), name="movie")
    elif case == "rgb":
        viewer.add_image(np.zeros((8, 8, 3), np.uint8), name="photo", rgb=True)
    elif case == "mismatch":
        viewer.add_image(np.zeros((4, 8, 8), np.float32), name="scan")
        viewer.add_labels(np.zeros((4, 8, 9), np.uint8), name="truth")
    elif case == "missing checkpoint":
        viewer.add_image(np.zeros((4, 8, 8), np.float32), name="scan")
    before = _snapshot(viewer)
    widget = dock("Run model")
    widget.set_checkpoint(tmp_path / "nowhere.pt" if case == "missing checkpoint"
                          else tiny_checkpoint)
    if case == "mismatch":
        widget.truth.set_layer("truth")
    assert widget.run() is None
    [(kind, text)] = notes
    assert kind == "error"
    expected = {"4d": "2D or 3D image", "rgb": "RGB", "mismatch": "shape (4, 8, 9)",
                "no image": "choose an image layer", "missing checkpoint": "nowhere.pt"}[case]
    assert expected in text
    assert len(viewer.layers) == len(before)
    _unchanged(viewer, before)


def test_worker_failures_notify(viewer, dock, tiny_phantom, tiny_checkpoint, tmp_path, qtbot,
                                notes, monkeypatch):
    import torch

    from napari_difftt.core import inference

    before = _snapshot(viewer)
    widget = dock("Run model")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"definitely not a checkpoint")
    widget.set_checkpoint(corrupt)
    _run(widget, qtbot)
    assert notes[-1][0] == "error" and "corrupt.pt" in notes[-1][1]
    assert "Pick another file" in notes[-1][1]

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(inference, "predict_volume", out_of_memory)
    widget.set_checkpoint(tiny_checkpoint)
    _run(widget, qtbot)
    assert notes[-1][0] == "error"
    assert "ran out of memory" in notes[-1][1] and "'cpu'" in notes[-1][1]
    assert widget.run_button.isEnabled() and not widget.cancel_button.isEnabled()
    assert len(viewer.layers) == len(before)
    _unchanged(viewer, before)
    assert ViewerState.of(viewer).prediction is None


def test_cancel_leaves_the_viewer_alone(viewer, dock, tiny_phantom, tiny_checkpoint, qtbot, notes):
    before = _snapshot(viewer)
    widget = dock("Run model")
    widget.set_checkpoint(tiny_checkpoint)
    job = widget.run()
    widget.cancel()
    assert job.cancel_requested
    qtbot.waitUntil(lambda: widget.job is None, timeout=TIMEOUT_MS)
    assert notes[-1][0] == "info" and "cancelled" in notes[-1][1]
    assert len(viewer.layers) == len(before)
    _unchanged(viewer, before)
    assert ViewerState.of(viewer).prediction is None


def test_2d_images_need_a_2d_model(viewer, dock, tiny_checkpoint, tiny_checkpoint_2d, qtbot,
                                   notes):
    from napari.layers import Layer

    from napari_difftt._sample_data import phantom_layers

    for data in phantom_layers((40, 36), 5, (0.5, 0.75), "slice"):
        viewer.add_layer(Layer.create(*data))
    widget = dock("Run model")
    widget.truth.set_layer("slice labels")
    widget.set_checkpoint(tiny_checkpoint)
    _run(widget, qtbot)
    assert notes[-1][0] == "error" and "3D model" in notes[-1][1] and "2D" in notes[-1][1]
    assert "slice segmentation" not in viewer.layers

    widget.set_checkpoint(tiny_checkpoint_2d)
    _run(widget, qtbot)
    segmentation = viewer.layers["slice segmentation"]
    assert segmentation.data.shape == (40, 36)
    np.testing.assert_allclose(segmentation.scale, (0.5, 0.75))
    assert ViewerState.of(viewer).prediction.prediction.displacement.shape == (2, 40, 36)
    assert "HD95 (mm)" in widget.metrics.text()


def test_closing_the_viewer_during_a_run_is_quiet(make_napari_viewer, tiny_checkpoint, qtbot):
    own = make_napari_viewer()
    own.add_image(np.random.default_rng(0).random((16, 16, 16), np.float32), name="r")
    _, widget = own.window.add_plugin_dock_widget("napari-difftt", "Run model")
    widget.set_checkpoint(tiny_checkpoint)
    job = widget.run()
    own.close()  # cancels the run; its late signals must not reach the deleted widget
    qtbot.waitUntil(lambda: not job.worker.is_running, timeout=TIMEOUT_MS)
    qtbot.wait(100)  # a queued signal reaching a deleted widget would raise here
    assert job.cancel_requested and widget.lifetime.closed
