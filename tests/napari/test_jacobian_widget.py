"""Jacobian widget: det J of known displacements, log₂ display centred on 1, folds, φ(t) mode."""

from __future__ import annotations

import numpy as np
import pytest
from difftt_helpers import record_of

from napari_difftt.core.fields import GRID_EVERY, grid_lines, jacobian_report
from napari_difftt.core.inference import Prediction
from napari_difftt.layer_metadata import META_KEY
from napari_difftt.widgets._state import ViewerState

SHAPE = (8, 10, 12)


def linear(matrix, shape=SHAPE) -> np.ndarray:
    """u(x) = A·(x − c) ``(n, *S)``: det(I + ∇u) = det(I + A) everywhere, in both schemes."""
    x = np.indices(shape, dtype=np.float64)
    centre = np.array([(s - 1) / 2 for s in shape]).reshape(-1, *[1] * len(shape))
    return np.einsum("ij,j...->i...", np.asarray(matrix, float), x - centre).astype(np.float32)


def _predict(viewer, displacement):
    shape = displacement.shape[1:]
    image = viewer.add_image(np.zeros(shape, np.float32), name="ct", scale=(2.0, 1.0, 0.5),
                             translate=(5.0, 0.0, -3.0))
    zeros = np.zeros(shape, np.float32)
    prediction = Prediction(zeros, zeros.astype(np.uint8), displacement, None, zeros)
    ViewerState.of(viewer).set_prediction(record_of(image, prediction, "stt"))
    return image


def _compute(widget, qtbot):
    widget.compute()
    qtbot.waitUntil(lambda: widget.job is None, timeout=30_000)


def test_without_a_prediction_it_says_run_the_model_first(viewer, dock):
    widget = dock("Jacobian")
    widget.compute()
    assert widget.job is None and len(viewer.layers) == 0
    assert "run the model first" in widget.summary.text()


def test_uniform_expansion(viewer, dock, qtbot):
    image = _predict(viewer, linear(np.diag([0.5, 0.0, 0.0])))  # det = 1.5
    widget = dock("Jacobian")
    _compute(widget, qtbot)
    stats = widget.stats
    assert stats.minimum == pytest.approx(1.5, abs=1e-5)
    assert stats.maximum == pytest.approx(1.5, abs=1e-5)
    assert stats.folded_central == 0 and stats.folded_digital == 0
    layer, folds = widget.image_layer, widget.folds_layer
    np.testing.assert_allclose(layer.data, np.log2(1.5), atol=1e-5)
    low, high = layer.contrast_limits
    assert low == pytest.approx(-high) and high == pytest.approx(np.log2(1.5), abs=1e-4)
    assert layer.colormap.name == "PiYG"
    assert not folds.data.any()
    np.testing.assert_allclose(layer.scale, image.scale)
    np.testing.assert_allclose(folds.translate, image.translate)
    assert layer.metadata[META_KEY]["role"] == "jacobian"
    assert "min 1.5, max 1.5" in widget.summary.text()
    assert "central differences" in widget.summary.text() and "digital" in widget.summary.text()


def test_a_fold_in_half_of_the_volume(viewer, dock, qtbot):
    # u_z = a(y)·(z − c): det = 1 + a(y), −1 where y < 5 (folded), 1 elsewhere
    displacement = np.zeros((3, *SHAPE), np.float32)
    z = np.arange(SHAPE[0], dtype=np.float32).reshape(-1, 1, 1) - (SHAPE[0] - 1) / 2
    a = np.where(np.arange(SHAPE[1]) < 5, -2.0, 0.0).reshape(1, -1, 1)
    displacement[0] = a * z * np.ones(SHAPE)
    _predict(viewer, displacement)
    widget = dock("Jacobian")
    _compute(widget, qtbot)
    stats = widget.stats
    assert stats.minimum == pytest.approx(-1.0, abs=1e-5)
    assert stats.maximum == pytest.approx(1.0, abs=1e-5)
    assert stats.folded_central == pytest.approx(50.0)
    # the digital test is at least as strict on the interior voxels it checks (y = 1 … 4 of 1 … 8)
    assert stats.folded_digital >= 100 * 4 / 8 - 1e-6
    expected = np.zeros(SHAPE, np.uint8)
    expected[:, :5] = 1
    np.testing.assert_array_equal(widget.folds_layer.data, expected)
    log_det = widget.image_layer.data
    low, high = widget.image_layer.contrast_limits
    assert low == pytest.approx(-high)
    np.testing.assert_allclose(log_det[:, :5], low)  # folds drawn at the compressed end
    np.testing.assert_allclose(log_det[:, 5:], 0.0, atol=1e-6)  # det 1: the neutral colour
    assert widget.image_layer.colorbar.visible  # the heatmap has its colour bar
    # the folds are listed: one face-connected region, and Next fold moves the view onto it
    assert len(stats.folds) == 1 and "1 folded region(s)" in widget.summary.text()
    np.testing.assert_allclose(stats.folds[0], (3.5, 2.0, 5.5))
    world = widget.next_fold()
    np.testing.assert_allclose(world, (5.0 + 2.0 * 3.5, 2.0, -3.0 + 0.5 * 5.5))
    assert viewer.dims.point[0] == pytest.approx(world[0], abs=1.0)  # its z slice is shown
    assert "showing fold 1 of 1" in widget.summary.text()


def test_recomputing_updates_the_same_layers(viewer, dock, qtbot):
    _predict(viewer, linear(np.diag([0.0, -0.5, 0.0])))  # det = 0.5
    widget = dock("Jacobian")
    _compute(widget, qtbot)
    names = [layer.name for layer in viewer.layers]
    ViewerState.of(viewer).prediction.prediction.displacement[:] = linear(np.diag([0, 1.0, 0]))
    _compute(widget, qtbot)  # det = 2 now, shown in the same two layers
    assert [layer.name for layer in viewer.layers] == names
    np.testing.assert_allclose(viewer.layers[names[1]].data, 1.0, atol=1e-5)


def test_stats_and_display_of_a_rotation_and_shear_in_2d():
    theta = 0.3
    rotation = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    shear = np.array([[1.0, 0.7], [0.0, 1.0]])
    stats = jacobian_report(linear(rotation @ shear - np.eye(2), shape=(9, 11)))
    assert stats.minimum == pytest.approx(1.0, abs=1e-5)  # area preserved
    log_det, (low, high) = stats.log_det, stats.limits
    assert high == pytest.approx(0.05) and low == pytest.approx(-0.05)  # the narrowest range
    np.testing.assert_allclose(log_det, 0.0, atol=1e-5)


def test_phi_at_the_flow_explorers_t(viewer, dock, tiny_phantom, tiny_checkpoint, qtbot):
    from napari_difftt.core.inference import load_model, predict_volume

    image, _ = tiny_phantom
    loaded = load_model(tiny_checkpoint, device="cpu")
    prediction = predict_volume(loaded.model, np.asarray(image.data))
    ViewerState.of(viewer).set_prediction(record_of(image, prediction, "bch"))
    widget = dock("Jacobian")
    widget.target.setCurrentIndex(widget.target.findData("current"))
    widget.compute()
    assert "Flow explorer" in widget.summary.text() and widget.job is None

    explorer = dock("Flow explorer")
    explorer.path.setCurrentIndex(explorer.path.findData("stationary"))
    explorer.count.setValue(3)
    explorer.show_flow()  # the frames are built in a worker; the layer comes with them
    qtbot.waitUntil(lambda: explorer.job is None, timeout=60_000)
    layer = explorer.layer
    viewer.dims.set_current_step(viewer.dims.ndim - layer.ndim, 1)
    _compute(widget, qtbot)
    expected = jacobian_report(layer.data.displacement(1))
    np.testing.assert_allclose(widget.stats.det, expected.det)
    assert "φ(t = 0.5)" in widget.summary.text()


def test_deformed_grid_is_pulled_back(viewer, dock, qtbot):
    displacement = np.zeros((3, *SHAPE), np.float32)
    displacement[2] = 2.0  # u = +2 voxels along x: the output at x shows the grid at x + 2
    _predict(viewer, displacement)
    widget = dock("Jacobian")
    _compute(widget, qtbot)
    grid = widget.grid_layer.data
    assert widget.grid_layer.metadata[META_KEY]["role"] == "deformed_grid"
    lines = grid_lines(SHAPE)
    np.testing.assert_allclose(grid[:, :, : SHAPE[2] - 2], lines[:, :, 2:], atol=1e-5)  # to −x
    assert grid[0, 1, GRID_EVERY - 2] == pytest.approx(1.0) and grid[0, 1, GRID_EVERY] < 1e-5


def test_folds_stand_out_and_compute_is_off_without_a_transformation(viewer, dock, qtbot):
    _predict(viewer, linear(np.diag([-1.5, 0.0, 0.0]), SHAPE))  # det = −0.5: all folded
    widget = dock("Jacobian")
    assert widget.compute_button.isEnabled()
    _compute(widget, qtbot)
    colour = widget.folds_layer.colormap.map(np.array([1]))[0]
    np.testing.assert_allclose(colour[:3], (1.0, 1.0, 0.0), atol=1e-6)  # yellow on dark pink
    assert "folds in yellow" in widget.summary.text()

    image = viewer.layers["ct"]
    zeros = np.zeros(SHAPE, np.float32)
    segmented = Prediction(zeros, zeros.astype(np.uint8), None, None, zeros)  # a U-Net's
    ViewerState.of(viewer).set_prediction(record_of(image, segmented, "unet"))
    assert not widget.compute_button.isEnabled()  # refused up front, and the widget says why
    assert "no transformation" in widget.summary.text()


def _lines_of_slice(plane: np.ndarray, every: int = GRID_EVERY) -> None:
    """``plane`` (2D) is a square grid: rows and columns at multiples of ``every`` wholly 1
    (continuous straight lines), everything else 0."""
    expected = np.zeros(plane.shape, np.float32)
    expected[::every, :] = 1.0
    expected[:, ::every] = 1.0
    np.testing.assert_allclose(plane, expected, atol=1e-5)


def test_a_coronal_slice_shows_a_continuous_grid_under_motion_across_it():
    """The grid of a coronal slice (spanned by z and x) has no plane lying in it: with a
    displacement across the slice (along y, varying), every coronal slice still shows whole
    straight lines, where the (y, x) grid showed the y planes as patches."""
    from napari_difftt.core.fields import deformed_grid

    shape = (17, 12, 17)
    z, _, x = np.indices(shape, dtype=np.float32)
    displacement = np.zeros((3, *shape), np.float32)
    displacement[1] = 1.5 * np.sin(z / 3.0) * np.cos(x / 4.0)  # across the coronal slices
    coronal = deformed_grid(displacement, axes=(0, 2))
    for row in range(1, shape[1] - 1):
        _lines_of_slice(coronal[:, row, :])
    axial = deformed_grid(displacement, axes=(1, 2))  # the (y, x) grid the widget showed before
    between = axial[:, 7, :][1:GRID_EVERY, 1:GRID_EVERY]  # a cell of slice y = 7, off its lines
    assert between.max() > 0.5 and between.min() < 0.5  # a patch of the y = 8 plane


def test_a_coronal_grid_deformed_within_the_slice_keeps_its_lines_connected():
    """An in-plane displacement bends the lines of a coronal slice but never breaks them: each
    vertical line is lit (≥ ½) in every row, each horizontal one in every column."""
    from napari_difftt.core.fields import deformed_grid

    shape = (33, 6, 33)
    z, _, x = np.indices(shape, dtype=np.float32)
    displacement = np.zeros((3, *shape), np.float32)
    displacement[2] = 2.0 * np.sin(z / 5.0)  # x shifts with z: vertical lines wave
    displacement[0] = 2.0 * np.sin(x / 5.0)  # z shifts with x: horizontal lines wave
    plane = deformed_grid(displacement, axes=(0, 2))[:, 3, :]
    interior = slice(4, shape[0] - 4)
    for line in range(GRID_EVERY, shape[2] - GRID_EVERY, GRID_EVERY):
        near = plane[interior, line - 3: line + 4]  # within the wave's ±2 voxels
        assert (near.max(axis=1) >= 0.5).all(), line
        across = plane[line - 3: line + 4, interior]
        assert (across.max(axis=0) >= 0.5).all(), line


def test_the_grid_follows_the_displayed_orientation(viewer, dock, qtbot):
    from napari_difftt.core.fields import deformed_grid

    displacement = linear(np.diag([0.0, 0.1, 0.0]))  # along y: across the coronal slices
    _predict(viewer, displacement)
    widget = dock("Jacobian")
    _compute(widget, qtbot)
    np.testing.assert_allclose(widget.grid_layer.data, deformed_grid(displacement, (1, 2)),
                               atol=1e-6)  # the viewer shows (y, x) slices
    viewer.dims.order = (1, 0, 2)  # now (z, x) slices: coronal
    expected = deformed_grid(displacement, (0, 2))
    qtbot.waitUntil(lambda: np.allclose(widget.grid_layer.data, expected, atol=1e-6),
                    timeout=30_000)
    _lines_of_slice(widget.grid_layer.data[:, 4, :])
