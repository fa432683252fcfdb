"""Thin-plate splines: interpolation of the control values, affine reproduction, identity warp."""

from __future__ import annotations

import pytest
import torch

from napari_difftt.core.classification.tps import ThinPlateSpline, control_points, tps_basis
from napari_difftt.core.flow import folding_fraction
from napari_difftt.core.flow.grid import identity, warp


def test_control_points_are_row_major_in_normalised_array_order():
    points = control_points(3, 2)
    assert points.shape == (9, 2)
    assert points[1].tolist() == [-1.0, 0.0] and points[3].tolist() == [0.0, -1.0]
    assert control_points(2, 3).shape == (8, 3)
    with pytest.raises(ValueError, match="control must be an int >= 2"):
        control_points(1, 2)


@pytest.mark.parametrize("shape, control", [((13, 9), 3), ((7, 10), 2), ((5, 9, 5), 3)])
def test_tps_passes_through_its_control_values(shape, control):
    # (N − 1) divisible by (control − 1): every control point sits on a voxel
    values = torch.randn(2, 3, *[control] * len(shape), dtype=torch.float64)
    dense = ThinPlateSpline(shape, control, torch.float64)(values)
    assert dense.shape == (2, 3, *shape) and dense.dtype == torch.float64
    index = [torch.linspace(0, s - 1, control).round().long() for s in shape]
    at_controls = dense[(slice(None), slice(None), *torch.meshgrid(*index, indexing="ij"))]
    torch.testing.assert_close(at_controls, values, atol=1e-10, rtol=0)


@pytest.mark.parametrize("shape, control", [((28, 28), 2), ((28, 28), 5), ((11, 14), 16),
                                            ((9, 8, 10), 3)])
def test_tps_reproduces_affine_fields_everywhere(shape, control):
    ndim = len(shape)
    torch.manual_seed(0)
    matrix = torch.randn(ndim, ndim, dtype=torch.float64)
    offset = torch.randn(ndim, dtype=torch.float64)
    # the affine field evaluated at the control points (normalised coordinates) …
    points = control_points(control, ndim)
    values = (points @ matrix.T + offset).T.reshape(1, ndim, *[control] * ndim)
    # … must come back as the same affine function at every voxel
    voxels = identity(shape, dtype=torch.float64)
    scale = torch.tensor([2 / (s - 1) for s in shape], dtype=torch.float64).view(-1, *[1] * ndim)
    normalised = voxels * scale - 1
    expected = torch.einsum("ij,j...->i...", matrix, normalised) + offset.view(-1, *[1] * ndim)
    dense = ThinPlateSpline(shape, control, torch.float64)(values)
    torch.testing.assert_close(dense[0], expected, atol=1e-9, rtol=0)


def test_tps_bump_is_smooth_symmetric_and_peaks_at_its_control_point():
    """A bump at the centre control point: the interpolant keeps the grid's symmetries."""
    values = torch.zeros(1, 1, 3, 3, dtype=torch.float64)
    values[0, 0, 1, 1] = 1.0
    dense = ThinPlateSpline((13, 13), 3, torch.float64)(values)[0, 0]
    assert float(dense[6, 6]) == pytest.approx(1.0, abs=1e-12)
    assert int(dense.argmax()) == 6 * 13 + 6
    torch.testing.assert_close(dense, dense.T, atol=1e-12, rtol=0)
    torch.testing.assert_close(dense, dense.flip(0), atol=1e-12, rtol=0)
    # not affine: zero at the border control points, yet bent upwards between them
    assert abs(float(dense[0, 6])) < 1e-12 and float(dense[0, 3]) > 0.01


def test_zero_control_displacement_warps_to_the_input_exactly():
    image = torch.rand(2, 3, 28, 28, dtype=torch.float64)
    spline = ThinPlateSpline((28, 28), 5, torch.float64)
    displacement = spline(torch.zeros(2, 2, 5, 5, dtype=torch.float64))
    assert torch.count_nonzero(displacement) == 0
    torch.testing.assert_close(warp(image, displacement), image, atol=1e-12, rtol=0)


def test_tps_can_fold_where_control_points_cross():
    """Moving the centre control point past its neighbour folds the TPS map (det J ≤ 0)."""
    values = torch.zeros(1, 2, 3, 3)
    values[0, 1, 1, 1] = 20.0  # +20 voxels along x on a 28-wide image: past the right column
    displacement = ThinPlateSpline((28, 28), 3)(values)
    assert float(folding_fraction(displacement)[0]) > 0.05
    assert float(folding_fraction(displacement * 0.1)[0]) == 0.0


def test_basis_rows_sum_to_one_and_module_checks_shapes():
    basis = tps_basis((6, 7), 4)
    assert basis.shape == (42, 16)
    torch.testing.assert_close(basis.sum(1), torch.ones(42, dtype=torch.float64))
    spline = ThinPlateSpline((6, 7), 4)
    assert "basis" not in spline.state_dict() and spline.basis.dtype == torch.float32
    message = r"values must have shape \(B, k, 4, 4\), got \(1, 2, 3, 3\)"
    with pytest.raises(ValueError, match=message):
        spline(torch.zeros(1, 2, 3, 3))
    with pytest.raises(ValueError, match="shape must have 2 or 3 axes"):
        tps_basis((5,), 3)


def test_tps_gradients_match_finite_differences():
    spline = ThinPlateSpline((9, 7), 3, torch.float64)
    values = torch.randn(1, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(spline, (values,))
