"""Shape prior widget: world-mm parameters ↔ prior, live preview (the slice at once, the volume
in a worker, latest value wins), fit, reset, state."""

from __future__ import annotations

import numpy as np
import pytest
from difftt_helpers import TINY_SHAPE, blob

from napari_difftt.layer_metadata import META_KEY
from napari_difftt.widgets._state import ViewerState


def _preview(viewer, name="tiny"):
    return viewer.layers[f"{name} prior"], viewer.layers[f"{name} prior ½"]


def test_preview_follows_parameters_in_mm(viewer, dock, tiny_phantom, qtbot):
    image, _ = tiny_phantom
    widget = dock("Shape prior")
    assert widget.image.layer() == image  # the widget sees the layer through a napari proxy
    assert len(viewer.layers) == 2 and not widget.show_preview.isChecked()  # nothing added yet

    # centre on voxel (8, 12, 10) → world (16, 12, 15) mm; x semi-axis 6 mm = 4 voxels
    widget.set_parameters((16.0, 12.0, 15.0), (8.0, 5.0, 6.0), None, 2.0)  # touched: shown
    assert widget.show_preview.isChecked()
    probability, contour = _preview(viewer)
    # the preview shares the image's geometry and provenance
    np.testing.assert_allclose(probability.scale, image.scale)
    assert probability.metadata[META_KEY]["role"] == "prior"
    assert contour.contour == 1
    assert ViewerState.of(viewer).prior_for(image) is not None  # stored at once, no debounce
    qtbot.waitUntil(lambda: widget.preview_complete, timeout=3000)
    p = probability.data
    assert p.shape == TINY_SHAPE
    assert p[8, 12, 10] == pytest.approx(1.0, abs=1e-6)
    assert p[8, 12, 14] == pytest.approx(0.5, abs=1e-5)  # on the ½-contour, whatever β
    assert p[8, 12, 16] < 0.5 < p[8, 12, 13]
    assert p[12, 12, 10] == pytest.approx(0.5, abs=1e-5)  # z: 8 mm / 2 mm = 4 voxels
    np.testing.assert_array_equal(contour.data, (p >= 0.5).astype(np.uint8))


def test_rotation_gives_a_full_covariance_and_state_holds_it(viewer, dock, tiny_phantom, qtbot):
    widget = dock("Shape prior")
    widget.set_parameters((16.0, 12.0, 15.0), (8.0, 3.0, 6.0), (0.0, 0.0, 30.0), 1.0)
    assert widget.rotate.isChecked()
    covariance = widget.prior().covariance.detach().numpy()
    assert abs(covariance[0, 1]) > 1e-3  # z–y coupling: the rotation is about array axis x
    assert abs(covariance[1, 2]) < 1e-8 and abs(covariance[0, 2]) < 1e-8
    stored = np.asarray(ViewerState.of(viewer).prior["covariance"])
    np.testing.assert_allclose(stored, covariance, rtol=1e-5)


def test_fit_to_labels_and_reset(viewer, dock, tiny_phantom, tiny_checkpoint, qtbot):
    image, _ = tiny_phantom
    mask = blob(TINY_SHAPE, (7, 11, 9), (4, 6, 5))
    viewer.add_labels(mask, name="organ", scale=image.scale)
    widget = dock("Shape prior")
    widget.labels.set_layer("organ")
    widget.fit_to_labels()
    mean, radii, _, _ = widget.parameters()
    np.testing.assert_allclose(mean, (14.0, 11.0, 13.5), atol=0.3)  # centre (7, 11, 9) in mm
    np.testing.assert_allclose(radii, (8.0, 6.0, 7.5), rtol=0.12)
    assert ViewerState.of(viewer).prior is not None
    assert "Fitted to 'organ'" in widget.status.text()
    qtbot.waitUntil(lambda: widget.preview_complete, timeout=3000)
    _, contour = _preview(viewer)
    overlap = 2 * np.sum(contour.data * mask) / (contour.data.sum() + mask.sum())
    assert overlap > 0.9

    ViewerState.of(viewer).set_checkpoint(tiny_checkpoint)  # reset goes to its prior
    widget.reset()
    assert ViewerState.of(viewer).prior is None
    assert "tiny3d.pt" in widget.status.text()
    qtbot.wait(200)  # nothing stores the prior again behind the status's back
    assert ViewerState.of(viewer).prior is None
    mean, radii, _, _ = widget.parameters()
    np.testing.assert_allclose(mean, (15.0, 11.5, 14.25), atol=1e-3)  # its prior is centred
    np.testing.assert_allclose(radii, (7.5, 5.75, 7.125), atol=1e-2)  # 0.5 normalised


def test_flipped_axis_keeps_world_coordinates(viewer, dock, qtbot):
    layer = viewer.add_image(np.zeros((10, 32, 12), np.float32), name="flip",
                             scale=(1.0, -1.0, 1.0), translate=(0.0, 31.0, 0.0))
    widget = dock("Shape prior")
    widget.image.set_layer(layer)
    widget.set_parameters((5.0, 10.0, 6.0), (3.0, 4.0, 3.0), None, 1.0)  # world y 10 → index 21
    qtbot.waitUntil(lambda: widget.preview_complete, timeout=3000)
    p = viewer.layers["flip prior"].data
    assert np.unravel_index(np.argmax(p), p.shape) == (5, 21, 6)


def test_large_volumes_preview_at_reduced_resolution(viewer, dock, qtbot):
    from napari_difftt.widgets.prior import PREVIEW_VOXELS

    viewer.add_image(np.zeros((64, 160, 160), np.float32), name="big", scale=(2.0, 1.0, 1.0))
    widget = dock("Shape prior")
    widget.image.set_layer("big")
    widget.show_preview.setChecked(True)
    preview = viewer.layers["big prior"]
    assert preview.data.size <= PREVIEW_VOXELS
    # same world extent: (N − 1) · scale is preserved per axis
    extent = (np.asarray(preview.data.shape) - 1) * preview.scale
    np.testing.assert_allclose(extent, (126.0, 159.0, 159.0), rtol=1e-9)


def test_one_preview_per_image_reused_and_removed(viewer, dock, tiny_phantom, qtbot):
    image, _ = tiny_phantom
    other = viewer.add_image(np.zeros((10, 12, 14), np.float32), name="other")
    widget = dock("Shape prior")
    widget.image.set_layer(image)
    widget.show_preview.setChecked(True)
    probability, contour = widget.preview_layers()
    for step in range(3):  # edits update the same layers in place
        widget.radii[0].setValue(6.0 + step)
        assert widget.preview_layers() == (probability, contour)
    data = probability.data
    qtbot.waitUntil(lambda: widget.preview_complete, timeout=3000)
    assert probability.data is data and [p.name for p in _previews(viewer)] == [
        "tiny prior", "tiny prior ½"]

    widget.image.set_layer(other)  # the previous image's preview goes, the new one comes
    assert [p.metadata[META_KEY]["source"] for p in _previews(viewer)] == ["other", "other"]
    widget.image.set_layer(image)
    widget.image.set_layer(other)
    assert len(_previews(viewer)) == 2
    widget.show_preview.setChecked(False)  # unticked: gone; ticked again: back
    assert not _previews(viewer)
    widget.show_preview.setChecked(True)
    assert len(_previews(viewer)) == 2

    viewer.layers.remove(other)  # removed with its image
    assert all(p.metadata[META_KEY]["source"] != "other" for p in _previews(viewer))
    widget.close()
    widget.deleteLater()
    qtbot.waitUntil(lambda: not _previews(viewer), timeout=3000)  # and with the widget


def test_the_displayed_slice_is_rendered_first(viewer, dock, tiny_phantom, qtbot):
    widget = dock("Shape prior")
    widget.show_preview.setChecked(True)
    probability, _ = widget.preview_layers()
    viewer.dims.set_current_step(0, 3)  # z slice 3 of the (2 mm) preview is on screen
    widget.set_parameters((6.0, 12.0, 15.0), (4.0, 5.0, 6.0), None, 1.0)  # centred on z = 3
    assert not widget.preview_complete
    assert probability.data[3, 12, 10] == pytest.approx(1.0, abs=1e-6)
    assert probability.data[10].max() < 0.5  # the old prior there until the volume follows
    qtbot.waitUntil(lambda: widget.preview_complete, timeout=3000)
    assert probability.data[10].max() < 0.01 < probability.data[5].max()


def test_a_burst_of_changes_ends_with_the_last_value(viewer, dock, tiny_phantom, qtbot,
                                                     monkeypatch):
    """Latest value wins: the whole volume is computed in a worker; the first computation,
    held until a burst of changes is over, returns its then stale values, which are never
    written; the preview ends equal to the last value and the values in between cost no
    computation."""
    import threading

    from napari_difftt import pipeline

    widget = dock("Shape prior")
    widget.show_preview.setChecked(True)
    qtbot.waitUntil(lambda: widget.preview_complete, timeout=3000)
    probability, contour = widget.preview_layers()
    before = np.array(probability.data, copy=True)
    releases, computed = [threading.Event(), threading.Event()], []
    evaluate = pipeline.prior_values

    def held(prior, coords, where=(Ellipsis,), **kwargs):
        values = evaluate(prior, coords, where, **kwargs)
        if threading.current_thread() is not threading.main_thread():
            computed.append(values)
            if len(computed) <= 2:
                releases[len(computed) - 1].wait(timeout=30)  # computed, returned on release
        return values

    monkeypatch.setattr(pipeline, "prior_values", held)
    widget.radii[2].setValue(4.0)
    qtbot.waitUntil(lambda: len(computed) == 1, timeout=3000)
    for step in range(1, 8):
        widget.radii[2].setValue(4.0 + step)
        qtbot.wait(5)
    assert not widget.preview_complete
    releases[0].set()  # the stale result comes back; then the last value is computed
    qtbot.waitUntil(lambda: len(computed) == 2, timeout=10_000)
    qtbot.wait(50)
    hidden = np.arange(probability.data.shape[0]) != viewer.dims.current_step[0]
    np.testing.assert_array_equal(probability.data[hidden], before[hidden])  # not written
    assert not widget.preview_complete
    releases[1].set()
    qtbot.waitUntil(lambda: widget.preview_complete, timeout=10_000)
    expected = evaluate(widget.prior(), pipeline.grid_coordinates(probability.data.shape))
    np.testing.assert_allclose(probability.data, expected, atol=1e-6)
    np.testing.assert_array_equal(contour.data, (expected >= 0.5).astype(np.uint8))
    assert len(computed) == 2  # the held one and the last: the values in between are skipped
    assert np.abs(computed[0] - expected).max() > 0.1  # the held result really was stale
    assert np.abs(before[hidden] - expected[hidden]).max() > 0.1  # and the last one is new


def _previews(viewer):
    return [layer for layer in viewer.layers
            if layer.metadata.get(META_KEY, {}).get("role") in ("prior", "prior_contour")]


def _expected_parameters(checkpoint, layer):
    from napari_difftt.pipeline import checkpoint_prior, prior_to_display

    world = prior_to_display(checkpoint_prior(checkpoint, layer.ndim), layer.data.shape,
                             layer.scale, layer.translate)
    return world.mean_mm, world.radii_mm, world.rotation_deg, world.beta


@pytest.mark.parametrize("title", ["Shape prior", "All widgets (tabs)"])
def test_a_2d_image_starts_at_the_prior_run_model_will_use(viewer, dock, title,
                                                           tiny_checkpoint_2d):
    """The bundled 2D model's prior (not the centred default) for a 2D image, whichever widget
    was built first; and Run model's next checkpoint moves the untouched prior with it."""
    from napari_difftt.core.inference import default_checkpoint

    layer = viewer.add_image(np.zeros((40, 48), np.float32), name="slice", scale=(0.8, 0.8))
    widget = dock(title)
    prior = widget.widgets["Shape prior"] if title != "Shape prior" else widget
    assert default_checkpoint(2).name in prior.status.text()
    for got, want in zip(prior.parameters(), _expected_parameters(default_checkpoint(2), layer),
                         strict=True):
        np.testing.assert_allclose(got, want, atol=0.051)  # the boxes round (1–2 decimals)
    assert prior.parameters()[3] != pytest.approx(1.0)  # the bundled 2D prior is not Gaussian
    assert list(viewer.layers) == [layer]  # opening the dock added no layer

    ViewerState.of(viewer).set_checkpoint(tiny_checkpoint_2d)  # as Run model does on Browse
    assert tiny_checkpoint_2d.name in prior.status.text()
    for got, want in zip(prior.parameters(), _expected_parameters(tiny_checkpoint_2d, layer),
                         strict=True):
        np.testing.assert_allclose(got, want, atol=0.051)  # the boxes round (1–2 decimals)
