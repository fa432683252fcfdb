"""Flow explorer: φ(t)∘S frames from the prior (t = 0) to the prediction (t = 1), lazily cached."""

from __future__ import annotations

import time

import numpy as np
import pytest
from difftt_helpers import record_of

from napari_difftt.core.flow.frames import FlowFrames
from napari_difftt.core.io import load_checkpoint
from napari_difftt.layer_metadata import META_KEY
from napari_difftt.pipeline import arrows
from napari_difftt.widgets._state import ViewerState
from napari_difftt.widgets.flow_explorer import current_frame


@pytest.fixture
def predicted(viewer, tiny_phantom, tiny_checkpoint):
    """The tiny untrained bch model's prediction of the tiny phantom (:class:`pipeline.Result`,
    with its source layer, prior description and model kind), stored in ViewerState."""
    from napari_difftt.layer_metadata import layer_volume
    from napari_difftt.pipeline import segment

    image, _ = tiny_phantom
    result = segment(layer_volume(image), tiny_checkpoint, device="cpu", source=image.unique_id)
    ViewerState.of(viewer).set_prediction(result)
    return result


def _choose(widget, path: str, count: int) -> None:
    widget.path.setCurrentIndex(widget.path.findData(path))
    widget.count.setValue(count)


def _show(widget, qtbot):
    """Show flow and wait for its layer: the frames are built in a worker."""
    assert widget.show_flow() is not None
    qtbot.waitUntil(lambda: not widget.building, timeout=60_000)
    return widget.layer


def test_without_a_prediction_it_says_run_the_model_first(viewer, dock, tiny_phantom):
    widget = dock("Flow explorer")
    before = list(viewer.layers)
    assert widget.show_flow() is None
    assert "run the model first" in widget.status.text()
    assert list(viewer.layers) == before


def test_stationary_frames_go_from_the_prior_to_the_prediction(viewer, dock, predicted, qtbot):
    image = ViewerState.of(viewer).source()
    original = np.array(image.data, copy=True)
    widget = dock("Flow explorer")
    _choose(widget, "stationary", 5)
    layer = _show(widget, qtbot)
    qtbot.waitUntil(lambda: widget.job is None, timeout=60_000)

    assert isinstance(layer.data, FlowFrames) and layer.data.shape == (5, *image.data.shape)
    prediction = predicted.prediction
    np.testing.assert_allclose(layer.data[0], prediction.prior, atol=1e-6)
    np.testing.assert_allclose(layer.data[4], prediction.probability, atol=1e-5)
    assert np.abs(layer.data[2] - prediction.prior).max() > 1e-3  # the flow really moves it
    assert "t = 1 is the prediction" in widget.status.text()
    # geometry: a leading t axis (world t = 0 … 1) before the source's own transform
    assert tuple(layer.axis_labels) == ("t = 0", "z", "y", "x")
    np.testing.assert_allclose(layer.scale, (0.25, *image.scale))
    np.testing.assert_allclose(layer.translate, (0.0, *image.translate))
    assert layer.metadata[META_KEY]["role"] == "flow_frames"
    assert layer.metadata[META_KEY]["source"] == image.name
    np.testing.assert_array_equal(image.data, original)  # the user's layer is untouched


def test_frames_are_computed_once_and_scrubbing_reads_the_cache(viewer, dock, predicted, qtbot):
    widget = dock("Flow explorer")
    _choose(widget, "piecewise", 4)
    layer = _show(widget, qtbot)
    qtbot.waitUntil(lambda: widget.job is None, timeout=60_000)
    assert layer.data.computed == 4  # the background passes rendered each frame exactly once
    axis = viewer.dims.ndim - layer.ndim
    for k in (3, 0, 2, 1, 3):
        viewer.dims.set_current_step(axis, k)
        assert current_frame(viewer, layer) == k
        viewer.screenshot(canvas_only=True, flash=False)  # draw what the canvas shows now
    assert layer.data.computed == 4


def test_napari_renders_only_the_frames_it_shows(viewer):
    import torch

    from napari_difftt.core.flow.frames import stationary_path, warp_prior

    shape = (6, 7, 8)
    velocity = torch.full((1, 3, *shape), 0.5)
    frames = FlowFrames(stationary_path(velocity), 40, warp_prior(np.ones(shape, np.float32)),
                        shape)
    layer = viewer.add_image(frames, contrast_limits=(0, 1), rgb=False, multiscale=False)
    shown = frames.computed
    assert 1 <= shown <= 2  # the current frame (and the thumbnail's), not all 40
    viewer.dims.set_current_step(0, 17)
    viewer.dims.set_current_step(0, 30)
    viewer.dims.set_current_step(0, 17)
    assert frames.computed == shown + 2
    assert viewer.dims.current_step[0] == 17
    k = viewer.dims.current_step[1]  # the z slice napari shows
    for y, x in ((1, 2), (5, 7)):
        assert layer.get_value((17, k, y, x)) == pytest.approx(frames[17][k, y, x])
    assert frames.computed == shown + 2  # reading what is shown computes nothing more


def test_frames_use_the_prior_the_prediction_carries(viewer, dock, predicted, qtbot):
    """Provenance, not guessing: the frames start from the record's own prior description (here
    another one than the checkpoint's), never from a prior matched by its values."""
    from dataclasses import replace

    import torch

    from napari_difftt.core.prior import GeneralisedGaussianPrior, prior_from_dict

    shape = predicted.prediction.prior.shape
    moved = GeneralisedGaussianPrior(3, mean=(0.3, -0.2, 0.1)).to_dict()
    ViewerState.of(viewer).set_prediction(replace(predicted, prior=moved, checkpoint=None))
    widget = dock("Flow explorer")
    _choose(widget, "stationary", 3)
    layer = _show(widget, qtbot)
    qtbot.waitUntil(lambda: widget.job is None, timeout=60_000)
    with torch.inference_mode():
        expected = prior_from_dict(moved).on_grid(shape, dtype=torch.float32)[0, 0].numpy()
    np.testing.assert_allclose(layer.data[0], expected, atol=1e-6)
    assert np.abs(layer.data[0] - predicted.prediction.prior).max() > 0.1


def test_piecewise_path_reports_its_distance_from_phi(viewer, dock, predicted, qtbot):
    widget = dock("Flow explorer")
    _choose(widget, "piecewise", 3)
    layer = _show(widget, qtbot)
    qtbot.waitUntil(lambda: widget.job is None, timeout=60_000)
    np.testing.assert_allclose(layer.data[0], predicted.prediction.prior, atol=1e-6)
    # exp(v₂)∘exp(v₁) vs the model's exp(bch(v₂, v₁)): the status states the difference
    gap = np.sqrt(((layer.data.displacement(2) - predicted.prediction.displacement) ** 2)
                  .sum(0)).max()
    if gap > 1e-4:
        assert f"{gap:.3g} voxels" in widget.status.text()
    else:
        assert "t = 1 is the prediction" in widget.status.text()


def test_displacement_arrows_follow_the_t_slider(viewer, dock, predicted, qtbot):
    widget = dock("Flow explorer")
    _choose(widget, "stationary", 3)
    layer = _show(widget, qtbot)
    widget.show_vectors.setChecked(True)
    vectors = widget.vectors
    assert vectors is not None and vectors.data.shape[1:] == (2, 3)
    np.testing.assert_allclose(vectors.data[:, 1], 0.0, atol=1e-6)  # t = 0: φ = id
    viewer.dims.set_current_step(viewer.dims.ndim - layer.ndim, 2)
    expected = arrows(predicted.prediction.displacement)
    np.testing.assert_allclose(vectors.data, expected, atol=1e-5)
    np.testing.assert_allclose(vectors.scale, ViewerState.of(viewer).source().scale)
    qtbot.waitUntil(lambda: widget.job is None, timeout=60_000)
    widget.show_vectors.setChecked(False)
    assert not vectors.visible
    widget.show_vectors.setChecked(True)
    viewer.layers.remove(vectors)  # the user deletes the arrows: the slider must not revive them
    viewer.dims.set_current_step(viewer.dims.ndim - layer.ndim, 1)
    assert not widget.show_vectors.isChecked() and vectors not in viewer.layers
    widget.show_vectors.setChecked(True)
    viewer.layers.clear()  # as napari does on closing: ends, and nothing is added back
    assert len(viewer.layers) == 0


def test_arrows_subsample_in_plane_and_keep_every_slice():
    displacement = np.zeros((3, 5, 48, 30), np.float32)
    displacement[2] = 1.5
    data = arrows(displacement)
    assert data.shape == (5 * 24 * 15, 2, 3)
    assert set(np.unique(data[:, 0, 0])) == set(range(5))
    inside = data[:, 0, 2] <= 29 - 1.5
    np.testing.assert_allclose(data[inside, 1], [[0, 0, 1.5]] * int(inside.sum()))
    np.testing.assert_allclose(data[~inside, 0, 2] + data[~inside, 1, 2], 29.0)  # on the border


def test_arrows_never_widen_the_dims_range(viewer):
    rng = np.random.default_rng(3)
    displacement = rng.normal(0.0, 4.0, (3, 12, 20, 16)).astype(np.float32)
    viewer.add_image(np.zeros((12, 20, 16), np.float32))
    before = viewer.dims.range
    data = arrows(displacement)
    ends = data[:, 0] + data[:, 1]
    assert ends.min() >= 0 and np.all(ends.max(0) <= np.array([11, 19, 15]) + 1e-5)
    assert np.abs(data[:, 1]).max() > 1  # still arrows, not dots
    viewer.add_vectors(data)
    assert viewer.dims.range == before


def test_a_model_without_velocity_is_explained(viewer, dock, tiny_phantom, qtbot):
    from napari_difftt.core.inference import Prediction

    image, _ = tiny_phantom
    shape = image.data.shape
    prediction = Prediction(np.zeros(shape, np.float32), np.zeros(shape, np.uint8),
                            np.zeros((3, *shape), np.float32), None, np.zeros(shape, np.float32))
    ViewerState.of(viewer).set_prediction(record_of(image, prediction, "stt"))
    widget = dock("Flow explorer")
    assert not widget.show_button.isEnabled()  # nothing to show: the action is off, and why
    assert "predicts no flow" in widget.info.text()
    layers = list(viewer.layers)
    for path in ("stationary", "piecewise"):
        _choose(widget, path, 3)
        widget.show_flow()
        qtbot.waitUntil(lambda: widget.job is None, timeout=60_000)
        assert "no velocity field" in widget.status.text()
        assert widget.layer is None and list(viewer.layers) == layers


def test_closing_the_viewer_while_precomputing_is_quiet(make_napari_viewer, tiny_checkpoint,
                                                       qtbot, monkeypatch):
    from napari_difftt.core.inference import load_model, predict_volume

    render = FlowFrames._render_entry
    monkeypatch.setattr(FlowFrames, "_render_entry",  # ≥ 5 s for all 101 frames
                        lambda self, k: (time.sleep(0.05), render(self, k))[1])
    own = make_napari_viewer()
    image = own.add_image(np.random.default_rng(0).random((16, 16, 16), np.float32), name="r")
    prediction = predict_volume(load_model(tiny_checkpoint, device="cpu").model, image.data)
    ViewerState.of(own).set_prediction(record_of(image, prediction, "bch"))
    _, widget = own.window.add_plugin_dock_widget("napari-difftt", "Flow explorer")
    _choose(widget, "piecewise", 101)
    frames = _show(widget, qtbot).data
    job = widget.job
    own.close()  # stops the background pass; late signals must not reach the deleted widget
    qtbot.waitUntil(lambda: not job.worker.is_running, timeout=30_000)
    qtbot.wait(100)  # a queued signal reaching a deleted widget would fail the test here
    assert frames.computed < 101


def test_stop_acts_inside_a_frame(viewer, dock, predicted, qtbot, monkeypatch):
    """Stop pressed while a frame renders in the worker ends that render part-way."""
    import threading

    from napari_difftt.core.flow import frames as core_frames

    entered, hold, finished, calls = threading.Event(), threading.Event(), [], []
    evaluate = core_frames.evaluate_prior

    def held_evaluate(prior, shape):
        render = evaluate(prior, shape)

        def held(displacement):
            if threading.current_thread() is threading.main_thread():
                return render(displacement)
            calls.append(True)
            if len(calls) == 1:  # frame 0, rendered while the frames are built
                return render(displacement)
            entered.set()
            hold.wait(timeout=30)
            result = render(displacement)
            finished.append(True)
            return result

        return held

    monkeypatch.setattr(core_frames, "evaluate_prior", held_evaluate)
    widget = dock("Flow explorer")
    _choose(widget, "stationary", 9)
    layer = _show(widget, qtbot)
    job = widget.job
    qtbot.waitUntil(entered.is_set, timeout=60_000)
    widget.cancel()
    hold.set()
    qtbot.waitUntil(lambda: not job.worker.is_running, timeout=60_000)
    assert finished == []  # the frame being rendered when Stop came was abandoned
    assert layer in viewer.layers and layer.data.computed < len(layer.data)
    np.testing.assert_allclose(layer.data[8], predicted.prediction.probability, atol=1e-5)


def test_stop_after_showing_again_stops_the_new_pass(viewer, dock, predicted, qtbot):
    """The first pass's late "finished" must not make Stop forget the second pass (a race:
    the second worker may still wait for a pool thread when that signal arrives)."""
    import threading

    from qtpy.QtCore import QRunnable, QThreadPool
    from qtpy.QtWidgets import QApplication

    widget = dock("Flow explorer")
    _choose(widget, "stationary", 6)
    widget.show_flow()
    first = widget.job  # building the frames: a pass like precomputing them
    first.cancel()
    deadline = time.monotonic() + 60
    while first.worker.is_running and time.monotonic() < deadline:
        time.sleep(0.01)  # no event processing: the first pass's "finished" stays queued
    pool, release = QThreadPool.globalInstance(), threading.Event()
    threads = pool.maxThreadCount()
    busy = QRunnable.create(lambda: release.wait(60))
    try:
        pool.setMaxThreadCount(1)
        pool.start(busy)  # the one pool thread is taken: the second worker has to wait
        widget.show_flow()
        second = widget.job
        for _ in range(5):
            QApplication.processEvents()  # deliver the first pass's "finished"
        assert widget.job is second
        widget.cancel()
        assert second.cancel_requested
    finally:
        release.set()
        pool.setMaxThreadCount(threads)
    qtbot.waitUntil(lambda: widget.job is None, timeout=60_000)
    assert not widget.cancel_button.isEnabled()


def test_show_flow_builds_and_renders_frame_0_in_the_worker(viewer, dock, predicted, qtbot,
                                                            monkeypatch):
    """Show flow holds the GUI thread for no frame: the worker builds the frames (checking the
    velocities) and renders frame 0, so napari's first read is a cache hit; showing again after
    scrubbing to t = 1 reuses the layer and still renders nothing on the GUI thread."""
    import threading

    from napari_difftt.widgets import flow_explorer

    rendered_here, built_here = [], []
    original, build = FlowFrames._render_entry, flow_explorer.flow_frames

    def render(frames, k):
        if threading.current_thread() is threading.main_thread():
            rendered_here.append(k)
        return original(frames, k)

    def flow_frames(*args):
        built_here.append(threading.current_thread() is threading.main_thread())
        return build(*args)

    monkeypatch.setattr(FlowFrames, "_render_entry", render)
    monkeypatch.setattr(flow_explorer, "flow_frames", flow_frames)
    widget = dock("Flow explorer")
    _choose(widget, "piecewise", 5)
    assert widget.show_flow() is not None
    assert widget.building and widget.layer is None  # returns at once: the worker builds
    qtbot.waitUntil(lambda: widget.job is None, timeout=60_000)
    layer = widget.layer
    assert layer in viewer.layers and layer.data.computed == 5
    assert rendered_here == [] and built_here == [False]
    for _ in range(4):
        widget.step_t(1)
    assert current_frame(viewer, layer) == 4
    _choose(widget, "stationary", 5)
    count, first = len(viewer.layers), layer.data
    widget.show_flow()
    qtbot.waitUntil(lambda: widget.job is None, timeout=60_000)
    assert widget.layer == layer and len(viewer.layers) == count  # reused, new frames
    assert layer.data is not first and current_frame(viewer, layer) == 0
    viewer.screenshot(canvas_only=True, flash=False)  # napari draws what it shows
    assert rendered_here == [] and built_here == [False, False]


def test_a_newer_show_flow_supersedes_a_build_still_running(viewer, dock, predicted, qtbot,
                                                           monkeypatch):
    """Show flow pressed again while the first build runs: the first build's frames are never
    shown, even when it ends after the second one."""
    import threading

    from napari_difftt.widgets import flow_explorer

    release, build = threading.Event(), flow_explorer.flow_frames

    def flow_frames(result, count, path):
        if count == 3:  # the first request: held until the second one is shown
            release.wait(timeout=60)
        return build(result, count, path)

    monkeypatch.setattr(flow_explorer, "flow_frames", flow_frames)
    widget = dock("Flow explorer")
    _choose(widget, "stationary", 3)
    first = widget.show_flow()
    _choose(widget, "stationary", 5)
    layer = _show(widget, qtbot)
    assert first.cancel_requested and layer.data.shape[0] == 5
    release.set()
    qtbot.waitUntil(lambda: not first.worker.is_running and widget.job is None, timeout=60_000)
    qtbot.wait(50)
    assert widget.layer == layer and layer.data.shape[0] == 5
    assert len([item for item in viewer.layers if isinstance(item.data, FlowFrames)]) == 1


def test_stop_while_building_shows_nothing(viewer, dock, predicted, qtbot, monkeypatch):
    import threading

    from napari_difftt.widgets import flow_explorer

    entered, release, build = threading.Event(), threading.Event(), flow_explorer.flow_frames

    def flow_frames(*args):
        entered.set()
        release.wait(timeout=60)
        return build(*args)

    monkeypatch.setattr(flow_explorer, "flow_frames", flow_frames)
    widget = dock("Flow explorer")
    layers = list(viewer.layers)
    widget.show_flow()
    qtbot.waitUntil(entered.is_set, timeout=60_000)
    widget.cancel()
    release.set()
    qtbot.waitUntil(lambda: widget.job is None, timeout=60_000)
    assert widget.layer is None and list(viewer.layers) == layers and not widget.building
    assert "Stopped before the frames were shown" in widget.status.text()
    assert not widget.cancel_button.isEnabled()


def test_the_default_path_ends_at_the_prediction(viewer, dock, predicted, tiny_checkpoint, qtbot):
    widget = dock("Flow explorer")
    assert widget.show_button.isEnabled()
    layer = _show(widget, qtbot)  # the default path and frame count
    qtbot.waitUntil(lambda: widget.job is None, timeout=60_000)
    last = len(layer.data) - 1
    prediction = predicted.prediction
    # t = 1 is the Φ that made the segmentation on screen
    np.testing.assert_allclose(layer.data.displacement(last), prediction.displacement, atol=1e-5)
    np.testing.assert_allclose(layer.data[last], prediction.probability, atol=1e-5)
    threshold = load_checkpoint(tiny_checkpoint)["model"].get("threshold", 0.5)
    np.testing.assert_array_equal(layer.data[last] > threshold,
                                  prediction.segmentation.astype(bool))
    assert "stationary path" in widget.status.text()
    assert "t = 1 is the prediction's Φ" in widget.status.text()
    # the slider is labelled in t ∈ [0, 1], not in frame numbers
    t_axis = viewer.dims.ndim - layer.ndim
    assert viewer.dims.axis_labels[t_axis] == "t = 0"
    widget.step_t(1)
    assert viewer.dims.axis_labels[t_axis] == f"t = {1 / last:.3g}"
    widget.step_t(last)
    assert viewer.dims.axis_labels[t_axis] == "t = 1"


def test_a_3d_view_shows_the_arrows_of_a_few_slices(viewer, dock, predicted, qtbot):
    from napari_difftt.widgets.flow_explorer import SLICES_3D

    widget = dock("Flow explorer")
    widget.show_vectors.setChecked(True)
    _show(widget, qtbot)
    qtbot.waitUntil(lambda: widget.job is None, timeout=60_000)
    every = len(widget.vectors.data)
    depth = predicted.prediction.probability.shape[0]
    assert len(np.unique(widget.vectors.data[:, 0, 0])) == depth  # 2D: each slice has its own
    viewer.dims.ndisplay = 3
    slices = np.unique(widget.vectors.data[:, 0, 0])
    assert 1 < len(slices) <= SLICES_3D and len(widget.vectors.data) < every / 1.5
    viewer.dims.ndisplay = 2
    assert len(widget.vectors.data) == every
