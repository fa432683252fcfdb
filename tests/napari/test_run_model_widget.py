"""Run model widget: a real prediction in a worker, derived layers, shared state, metrics, and
every failure path ending in a notification with no user layer touched."""

from __future__ import annotations

import numpy as np
import pytest

from napari_difftt.core.io import load_checkpoint
from napari_difftt.layer_metadata import META_KEY
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
    threshold = load_checkpoint(tiny_checkpoint)["model"].get("threshold", 0.5)
    np.testing.assert_array_equal(segmentation.data, probability.data > threshold)

    record = ViewerState.of(viewer).prediction
    assert record.source == image.unique_id and record.device == "cpu"
    assert ViewerState.of(viewer).layer(record.layers["segmentation"]) is segmentation
    assert record.checkpoint == tiny_checkpoint
    assert record.prediction.displacement.shape == (3, *image.data.shape)
    assert widget.device_used.text() == "cpu"
    expected = evaluate_case(segmentation.data, labels.data, image.scale,
                             record.prediction.displacement)
    assert record.metrics == expected
    assert f"Dice: {expected['dice']:.3f}" in widget.metrics.text()
    assert "components: " in widget.metrics.text()
    report = record.prediction.topology  # core.metrics.topology_report, shown as it stands
    assert f"components: {report['components']} (6-connectivity), " \
           f"{report['components_full']} (26-connectivity)" in widget.topology.text()
    assert "% digital" in widget.topology.text()
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
    assert "(4-connectivity)" in widget.topology.text()
    assert "(8-connectivity)" in widget.topology.text()


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


def _hold_in_network(monkeypatch):
    """Patch load_model so the network's first block waits until Cancel is requested.

    Returns ``(entered, hold, ran)``: an Event set when the network started, the Event that
    releases it, and a list that records the network's last layer running (worker thread).
    """
    import threading

    from napari_difftt.core import inference

    entered, ran, load = threading.Event(), [], inference.load_model

    def load_model(*args, **kwargs):
        loaded = load(*args, **kwargs)
        net = loaded.model.net

        def wait(*_):
            entered.set()
            hold.wait(timeout=30)

        net.down[0].register_forward_pre_hook(wait)
        net.head.register_forward_hook(lambda *_: ran.append("head"))
        return loaded

    hold = threading.Event()
    monkeypatch.setattr(inference, "load_model", load_model)
    return entered, hold, ran


def test_cancel_stops_inside_the_network_pass(viewer, dock, tiny_phantom, tiny_checkpoint, qtbot,
                                              notes, monkeypatch):
    entered, hold, ran = _hold_in_network(monkeypatch)
    before = _snapshot(viewer)
    widget = dock("Run model")
    widget.set_checkpoint(tiny_checkpoint)
    widget.run()
    qtbot.waitUntil(entered.is_set, timeout=TIMEOUT_MS)
    widget.cancel()
    hold.set()  # the network goes on; the next torch operation must see the cancel
    qtbot.waitUntil(lambda: widget.job is None, timeout=TIMEOUT_MS)
    assert ran == []  # the network's last layer never ran: the pass stopped part-way
    assert "cancelled" in widget.message.text()
    assert len(viewer.layers) == len(before)
    _unchanged(viewer, before)
    assert ViewerState.of(viewer).prediction is None


def test_progress_moves_during_the_network_pass(viewer, dock, tiny_phantom, tiny_checkpoint,
                                                qtbot):
    widget = dock("Run model")
    widget.set_checkpoint(tiny_checkpoint)
    seen = []
    job = widget.run()
    job.worker.yielded.connect(lambda item: seen.append(item))
    qtbot.waitUntil(lambda: widget.job is None, timeout=TIMEOUT_MS)
    network = [done for done, _, message in seen if message.startswith("network")]
    assert len(network) > 10 and network == sorted(network)
    assert seen[-1][0] == seen[-1][1]  # ends at 100 %


@pytest.mark.parametrize("ending", ["error", "cancel"])
def test_failed_or_cancelled_run_clears_old_results(viewer, dock, tiny_phantom, tiny_checkpoint,
                                                    tmp_path, qtbot, ending):
    _, labels = tiny_phantom
    widget = dock("Run model")
    widget.set_checkpoint(tiny_checkpoint)
    widget.truth.set_layer(labels)
    _run(widget, qtbot)
    assert "Dice" in widget.metrics.text() and widget.device_used.text() == "cpu"
    assert "components" in widget.topology.text()
    if ending == "error":
        corrupt = tmp_path / "corrupt.pt"
        corrupt.write_bytes(b"not a checkpoint")
        widget.set_checkpoint(corrupt)
        _run(widget, qtbot)
    else:
        widget.run()
        widget.cancel()
        qtbot.waitUntil(lambda: widget.job is None, timeout=TIMEOUT_MS)
    assert widget.metrics.text() == "" and widget.device_used.text() == "—"
    assert widget.topology.text() == ""


def test_spacing_far_from_the_training_spacing_warns(viewer, dock, tiny_checkpoint, qtbot, notes):
    from napari_difftt.layer_metadata import spacing_kwargs

    viewer.add_image(np.random.default_rng(1).random((16, 16, 16), np.float32),
                     **spacing_kwargs((3.0, 0.8, 0.8), "coarse"))
    widget = dock("Run model")
    widget.set_checkpoint(tiny_checkpoint)  # trained on 1 mm voxels
    _run(widget, qtbot)
    warnings = [text for kind, text in notes if kind == "warning"]
    assert len(warnings) == 1
    assert "3 × 0.8 × 0.8 mm" in warnings[0] and "1 × 1 × 1 mm" in warnings[0]
    assert "Warning" in widget.message.text()

    viewer.add_image(np.zeros((16, 16, 16), np.float32), **spacing_kwargs((1.1, 0.9, 1.0), "ok"))
    widget.image.set_layer("ok")
    _run(widget, qtbot)
    assert len([kind for kind, _ in notes if kind == "warning"]) == 1  # within 20 %: no warning


def test_a_folder_is_segmented_with_the_cli_names(viewer, dock, tiny_checkpoint, tmp_path, qtbot,
                                                  notes):
    import nibabel as nib

    from napari_difftt.pipeline import OUTPUTS

    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    affine = np.diag([0.9, 1.1, 2.0, 1.0])
    for name in ("a.nii.gz", "b.nii"):
        data = np.random.default_rng(len(name)).random((16, 12, 10), np.float32)
        nib.save(nib.Nifti1Image(data, affine), folder / name)
    widget = dock("Run model")
    widget.set_checkpoint(tiny_checkpoint)
    seen = []
    job = widget.run_folder(folder, out)
    job.worker.yielded.connect(lambda item: seen.append(item[2]))
    qtbot.waitUntil(lambda: widget.job is None, timeout=TIMEOUT_MS)
    expected = {f"{stem}{OUTPUTS[key]}" for stem in ("a", "b") for key in ("seg", "prob")}
    assert {p.name for p in out.iterdir()} == expected
    np.testing.assert_allclose(nib.load(out / f"a{OUTPUTS['seg']}").affine, affine)
    assert any(m.startswith("[1/2] a.nii.gz") for m in seen)  # progress per file
    assert any(m.startswith("[2/2] b.nii") for m in seen)
    assert "segmented 2 volume(s)" in widget.message.text()

    before = (out / f"a{OUTPUTS['seg']}").stat().st_mtime_ns
    widget.folder_in.line_edit.value, widget.folder_out.line_edit.value = str(folder), str(out)
    widget.folder_button.click()  # never overwrites unless asked: the message names the choice
    assert widget.job is None and notes[-1][0] == "error" and "exists" in notes[-1][1]
    assert "Tick 'replace existing outputs'" in widget.message.text()
    assert widget.overwrite.text() == "replace existing outputs"  # the choice is in the GUI
    widget.overwrite.setChecked(True)
    widget.folder_button.click()
    assert widget.job is not None
    qtbot.waitUntil(lambda: widget.job is None, timeout=TIMEOUT_MS)
    assert (out / f"a{OUTPUTS['seg']}").stat().st_mtime_ns > before
    assert "segmented 2 volume(s)" in widget.message.text()


def test_cancelling_a_folder_run_keeps_the_viewer_and_says_so(viewer, dock, tiny_checkpoint,
                                                              tmp_path, qtbot):
    import nibabel as nib

    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    image = np.random.default_rng(0).random((16, 16, 16), np.float32)  # a constant is refused
    nib.save(nib.Nifti1Image(image, np.eye(4)), folder / "a.nii")
    widget = dock("Run model")
    widget.set_checkpoint(tiny_checkpoint)
    widget.run_folder(folder, out)
    widget.cancel()
    qtbot.waitUntil(lambda: widget.job is None, timeout=TIMEOUT_MS)
    assert "folder run cancelled" in widget.message.text()
    assert list(out.iterdir()) == [] and len(viewer.layers) == 0


def test_the_bundled_model_follows_the_image_dimensionality(viewer, dock, qtbot):
    from napari.layers import Layer

    from napari_difftt._sample_data import phantom_2d
    from napari_difftt.core.inference import default_checkpoint

    for data in phantom_2d():
        viewer.add_layer(Layer.create(*data))
    viewer.add_labels(np.zeros((4, 5, 6), np.uint8), name="3D labels")
    widget = dock("Run model")
    widget.set_device("cpu")
    assert widget.checkpoint() == default_checkpoint(2)
    assert widget.checkpoint_label.text() == f"{default_checkpoint(2).name} (bundled)"
    offered = widget.truth.names()
    assert "3D labels" not in offered and "phantom 2D labels" in offered  # same dimensionality
    _run(widget, qtbot)
    assert viewer.layers["phantom 2D segmentation"].data.shape == (128, 128)


def test_a_rerun_never_overwrites_the_users_edits(viewer, dock, tiny_phantom, tiny_checkpoint,
                                                   qtbot):
    widget = dock("Run model")
    widget.set_checkpoint(tiny_checkpoint)
    widget.set_device("cpu")
    _run(widget, qtbot)
    segmentation = viewer.layers["tiny segmentation"]
    predicted = np.array(segmentation.data, copy=True)
    segmentation.brush_size = 3
    segmentation.paint((8, 12, 10), 2)  # the user paints: napari records it for undo
    painted = np.array(segmentation.data, copy=True)
    assert (painted != predicted).any()

    _run(widget, qtbot)
    assert viewer.layers["tiny segmentation"] is segmentation
    np.testing.assert_array_equal(segmentation.data, painted)
    second = viewer.layers["tiny segmentation 2"]
    np.testing.assert_array_equal(second.data, predicted)  # same model and image: same result
    assert state_layer(viewer, "segmentation").name == "tiny segmentation 2"
    assert "'tiny segmentation' holds your edits" in widget.message.text()
    assert "'tiny segmentation 2'" in widget.message.text()

    count = len(viewer.layers)  # the numbered layer is the plugin's own: refreshed in place
    _run(widget, qtbot)
    assert len(viewer.layers) == count
    assert state_layer(viewer, "segmentation").name == "tiny segmentation 2"
    segmentation.undo()  # the user's own history still works
    np.testing.assert_array_equal(segmentation.data, predicted)


def test_a_new_prediction_removes_the_views_of_the_old_one(viewer, dock, tiny_phantom,
                                                           tiny_checkpoint, qtbot):
    tabs = dock("All widgets (tabs)")
    run, flow, jacobian = (tabs.widgets[t] for t in ("Run model", "Flow explorer", "Jacobian"))
    run.set_checkpoint(tiny_checkpoint)
    run.set_device("cpu")
    _run(run, qtbot)
    flow.show_vectors.setChecked(True)
    flow.show_flow()
    qtbot.waitUntil(lambda: flow.job is None, timeout=TIMEOUT_MS)
    jacobian.compute()
    qtbot.waitUntil(lambda: jacobian.job is None, timeout=TIMEOUT_MS)
    views = {"φ(t)∘S tiny", "u(t) tiny", "log₂ det J tiny", "deformed grid tiny", "folds tiny"}
    assert views <= {layer.name for layer in viewer.layers}
    folds = viewer.layers["folds tiny"]
    folds.paint((8, 12, 10), 3)  # an edited view is the user's: kept, marked as old

    _run(run, qtbot)
    names = {layer.name for layer in viewer.layers}
    assert not views & names
    assert "folds tiny (previous prediction)" in names and folds in viewer.layers
    assert "Removed the previous prediction's views" in run.message.text()
    assert jacobian.stats is None and not jacobian.next_fold_button.isEnabled()


def state_layer(viewer, role: str):
    """The stored prediction's derived layer of ``role``, found by its identity."""
    state = ViewerState.of(viewer)
    return state.layer(state.prediction.layers[role])


def test_renaming_the_image_keeps_it_chosen_and_run_uses_it(viewer, dock, tiny_phantom,
                                                             tiny_checkpoint, qtbot):
    """The old name-keyed picker returned None after a rename ("choose an image layer")."""
    image, labels = tiny_phantom
    widget = dock("Run model")
    widget.set_checkpoint(tiny_checkpoint)
    widget.set_device("cpu")
    widget.truth.set_layer(labels)
    image.name = "scan renamed"
    labels.name = "truth renamed"
    assert widget.image.layer() is image and widget.truth.layer() is labels
    assert widget.image.combo.native.currentText() == "scan renamed"  # the shown name follows
    _run(widget, qtbot)
    record = ViewerState.of(viewer).prediction
    assert record is not None and record.source == image.unique_id
    assert state_layer(viewer, "segmentation").name == "scan renamed segmentation"
    assert record.metrics is not None  # the renamed ground truth was used
    other = viewer.add_image(np.zeros((4, 5, 6), np.float32), name="other")
    viewer.layers.move(viewer.layers.index(other), 0)  # a re-order changes nothing
    assert widget.image.layer() is image
    viewer.layers.remove(image)  # a removal moves the choice to a layer that exists
    assert widget.image.layer() is other and "scan renamed" not in widget.image.names()


def test_run_is_off_without_an_image_and_the_widget_says_why(viewer, dock, notes):
    widget = dock("Run model")
    assert not widget.run_button.isEnabled()
    assert "Open an image" in widget.message.text()
    assert widget.run() is None and "choose an image layer" in widget.message.text()
    viewer.add_image(np.zeros((16, 16, 16), np.float32), name="scan")
    assert widget.run_button.isEnabled() and "image" not in widget.message.text()
    viewer.layers.remove("scan")
    assert not widget.run_button.isEnabled()
    for field in (widget.folder_in, widget.folder_out):  # folder fields have a Browse button
        assert field.choose_btn.text.startswith("Choose") and field.mode.value == "d"


def test_resampling_to_the_model_spacing_in_the_gui(viewer, dock, tiny_checkpoint, qtbot, notes):
    from napari_difftt.layer_metadata import spacing_kwargs

    image = viewer.add_image(np.random.default_rng(1).random((12, 16, 16), np.float32),
                             **spacing_kwargs((2.5, 1.0, 1.0), "coarse"))
    tabs = dock("All widgets (tabs)")
    widget = tabs.widgets["Run model"]
    widget.set_checkpoint(tiny_checkpoint)  # trained on 1 mm voxels
    _run(widget, qtbot)
    assert "Tick 'resample to the model's spacing'" in widget.message.text()  # offered
    widget.resample.setChecked(True)
    _run(widget, qtbot)
    assert "resampled to the model's training spacing" in widget.message.text()
    assert "Warning" not in widget.message.text()
    record = ViewerState.of(viewer).prediction
    assert viewer.layers["coarse segmentation"].data.shape == image.data.shape  # back on its grid
    assert record.prediction.displacement.shape[1:] == (28, 16, 16)  # the 1 mm network grid
    for title, button in (("Flow explorer", "show_button"), ("Jacobian", "compute_button")):
        view = tabs.widgets[title]
        assert not getattr(view, button).isEnabled(), title  # no flow on the image's grid
    assert "resampled" in tabs.widgets["Flow explorer"].info.text()
    assert "resampled" in tabs.widgets["Jacobian"].summary.text()


def test_contours_stay_readable_in_3d(viewer, dock, tiny_phantom, tiny_checkpoint, qtbot):
    from napari_difftt.widgets._layers import OPACITY_3D

    widget = dock("Run model")
    widget.set_checkpoint(tiny_checkpoint)
    _run(widget, qtbot)
    segmentation = viewer.layers["tiny segmentation"]
    assert segmentation.contour == 2 and segmentation.opacity == 1.0
    viewer.dims.ndisplay = 3  # an outline would render as a solid blob: see-through instead
    assert segmentation.contour == 0 and segmentation.rendering == "translucent"
    assert segmentation.opacity == pytest.approx(OPACITY_3D)
    viewer.dims.ndisplay = 2
    assert segmentation.contour == 2 and segmentation.opacity == 1.0
    _run(widget, qtbot)  # refreshed in place: still followed once, not twice
    viewer.dims.ndisplay = 3
    assert segmentation.opacity == pytest.approx(OPACITY_3D)
