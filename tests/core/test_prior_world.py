"""World-mm description of a prior: the inverse of core.prior.from_world."""

from __future__ import annotations

import numpy as np
import pytest

from napari_difftt.core.prior import (
    euler_angles,
    fit_to_mask,
    from_world,
    rotation_matrix,
    to_world,
)


@pytest.mark.parametrize("angles", [(0, 0, 0), (10, -20, 35), (170, 5, -60), (0, 90, 0),
                                    (30, -90, 10)])
def test_euler_angles_invert_rotation_matrix(angles):
    r = rotation_matrix(angles, 3)
    np.testing.assert_allclose(rotation_matrix(euler_angles(r), 3), r, atol=1e-12)


def test_euler_angles_2d_and_bad_shape():
    assert euler_angles(rotation_matrix(25.0, 2)) == pytest.approx((25.0,))
    with pytest.raises(ValueError, match="2×2 or 3×3"):
        euler_angles(np.eye(4))


@pytest.mark.parametrize("ndim", [2, 3])
def test_to_world_inverts_from_world(ndim):
    shape, spacing, origin = (40, 60, 70)[-ndim:], (2.0, 1.0, 1.5)[-ndim:], (5, 0, -3)[-ndim:]
    mean, radii = (30.0, 40.0, 50.0)[-ndim:], (10.0, 20.0, 15.0)[-ndim:]
    angles = (10.0, -20.0, 35.0) if ndim == 3 else (25.0,)
    prior = from_world(mean, radii, angles, 1.5, shape, spacing, origin)
    world = to_world(prior, shape, spacing, origin)
    np.testing.assert_allclose(world.mean_mm, mean, rtol=1e-6)
    assert world.beta == pytest.approx(1.5)
    again = from_world(world.mean_mm, world.radii_mm, world.rotation_deg, world.beta, shape,
                       spacing, origin)
    np.testing.assert_allclose(again.covariance.detach(), prior.covariance.detach(), rtol=1e-5)
    # axis-aligned ellipsoids come back with zero angles and the radii in axis order
    plain = to_world(from_world(mean, radii, (0.0,) * len(angles), 1.0, shape, spacing, origin),
                     shape, spacing, origin)
    np.testing.assert_allclose(plain.radii_mm, radii, rtol=1e-5)
    np.testing.assert_allclose(plain.rotation_deg, 0.0, atol=1e-4)


def test_fit_to_mask_in_mm():
    grid = np.indices((30, 40, 50), dtype=float)
    mask = ((grid[0] - 15) / 6) ** 2 + ((grid[1] - 20) / 10) ** 2 + ((grid[2] - 25) / 14) ** 2 <= 1
    world = to_world(fit_to_mask(mask), mask.shape, (2.0, 1.0, 0.5))
    np.testing.assert_allclose(world.mean_mm, (30.0, 20.0, 12.5), atol=1e-6)
    np.testing.assert_allclose(world.radii_mm, (12.0, 10.0, 7.0), rtol=0.05)


def test_display_world_with_a_flipped_axis():
    """napari allows a negative scale: world = translate + scale · index flips that axis."""
    import torch

    from napari_difftt.core.prior import from_display, to_display

    shape, scale, translate = (20, 30, 40), (2.0, -1.0, 0.5), (0.0, 29.0, -5.0)
    prior = from_display((20.0, 14.0, 4.0), (6.0, 5.0, 4.0), (20.0, 0.0, 0.0), 2.0, shape,
                         scale, translate)
    # the centre lies where world (20, 14, 4) is: index (10, 15, 18)
    centre = torch.tensor([10.0, 15.0, 18.0]) * 2 / (torch.tensor(shape) - 1) - 1
    np.testing.assert_allclose(prior.mean.detach(), centre, atol=1e-6)
    back = to_display(prior, shape, scale, translate)
    np.testing.assert_allclose(back.mean_mm, (20.0, 14.0, 4.0), atol=1e-5)
    np.testing.assert_allclose(back.radii_mm, (6.0, 5.0, 4.0), rtol=1e-5)
    np.testing.assert_allclose(back.rotation_deg, (20.0, 0.0, 0.0), atol=1e-4)
    unflipped = from_display((20.0, 14.0, 4.0), (6.0, 5.0, 4.0), (20.0, 0.0, 0.0), 2.0, shape,
                             (2.0, 1.0, 0.5), translate)
    assert not np.allclose(unflipped.covariance.detach(), prior.covariance.detach())
