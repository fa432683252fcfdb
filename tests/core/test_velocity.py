"""Velocity spaces: coarse ↔ fine units, closed forms on coarse grids, bounds, B-splines,
smoothing, fold-free upsampling, gradients and bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.linalg import expm

from napari_difftt.core.flow import exp, folding_fraction, integrate
from napari_difftt.core.flow.grid import identity
from napari_difftt.core.flow.velocity import (
    DEFAULT_SPACE,
    LEGACY_SPACE,
    VelocitySpace,
    _bspline_basis,
    _gaussian,
    upsample_linear,
)
from napari_difftt.core.models import TemplateTransformer

A2 = np.array([[0.05, -0.09], [0.04, 0.03]])
A3 = np.array([[0.04, -0.07, 0.03], [0.05, 0.02, -0.04], [-0.03, 0.08, 0.02]])
B3 = np.array([[-0.03, 0.04, -0.07], [0.06, -0.04, 0.02], [0.03, -0.05, 0.04]])


def interior(shape, margin):
    return (slice(None), slice(None), *[slice(margin, s - margin) for s in shape])


def smooth_noise(shape, amplitude, seed):
    """Smooth random field ``(1, n, *shape)`` float64 with max‖v‖ = amplitude."""
    generator = torch.Generator().manual_seed(seed)
    n = len(shape)
    x = identity(shape, dtype=torch.float64)
    field = torch.zeros(1, n, *shape, dtype=torch.float64)
    for k in range(n):
        for _ in range(3):
            frequency = torch.randn(n, generator=generator, dtype=torch.float64) * 1.5 / max(shape)
            phase = 2 * math.pi * torch.rand(1, generator=generator, dtype=torch.float64)
            field[0, k] += torch.cos((frequency.view(-1, *[1] * n) * x).sum(0) * 2 + phase)
    return amplitude * field / field.norm(dim=1).max()


@pytest.mark.parametrize(
    ("factor", "shape", "matrix"),
    [(2, (64, 96), A2), (4, (64, 96), A2), (2, (32, 40, 48), A3)],
)
def test_a_linear_velocity_gives_the_same_flow_on_the_coarse_and_the_fine_grid(
    factor, shape, matrix, linear_field
):
    """exp of A·(x − c) integrated on S/k, upsampled, = (expm(A) − I)(x − c) on S (interior)."""
    space = VelocitySpace(factor=factor)
    fine_velocity = linear_field(matrix, shape)
    coarse_velocity = space.to_coarse(fine_velocity)
    # the coarse field is the same linear map in coarse units (one place converts)
    centre = [((s - 1) / 2 - (factor - 1) / 2) / factor for s in shape]
    torch.testing.assert_close(coarse_velocity, linear_field(matrix, space.coarse_shape(shape),
                                                             centre))
    # enough squarings that truncation is negligible: what remains is the grids' difference
    fine = space.to_fine(exp(coarse_velocity, squarings=12), shape)
    expected = linear_field(expm(matrix) - np.eye(len(shape)), shape)
    index = interior(shape, 4 * factor + 4)  # border padding acts outside
    assert float((fine - expected)[index].abs().max()) < 1e-3  # voxels
    transposed = linear_field(expm(matrix.T) - np.eye(len(shape)), shape)
    assert float((fine - transposed)[index].abs().max()) > 0.2  # the check can fail


def test_bch_on_the_coarse_grid_matches_the_ordered_product(linear_field):
    space, shape = VelocitySpace(factor=2), (16, 24, 32)
    pieces = torch.stack([space.to_coarse(linear_field(m, shape)) for m in (A3, B3)], dim=1)
    fine = space.to_fine(integrate(pieces, "bch", order=3).displacement, shape)
    expected = linear_field(expm(B3) @ expm(A3) - np.eye(3), shape)  # A acts first
    assert float((fine - expected)[interior(shape, 4)].abs().max()) < 0.03


@pytest.mark.parametrize("shape", [(48, 64), (24, 32, 40)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_fold_free_coarse_map_stays_fold_free_when_upsampled(shape, seed):
    """Large smooth flows (up to 40 % of a coarse cell's neighbourhood): digital test on S/2
    fold-free ⇒ digital test on S fold-free after linear upsampling."""
    space = VelocitySpace(factor=2)
    coarse_shape = space.coarse_shape(shape)
    velocity = smooth_noise(coarse_shape, 6.0, seed)
    coarse = exp(velocity)
    assert float(folding_fraction(coarse, "digital")[0]) == 0
    fine = space.to_fine(coarse, shape)
    assert float(folding_fraction(fine, "digital")[0]) == 0
    assert float(fine.abs().max()) > 6.0  # the flow is large, in fine voxels


@pytest.mark.parametrize(
    "space",
    [VelocitySpace(factor=1, bound=3.0), VelocitySpace(factor=2, bound=5.0, sigma=1.5),
     VelocitySpace("bspline", factor=2, lattice=4, bound=4.0),
     VelocitySpace("bspline", factor=4, lattice=6, bound=7.0, sigma=0.7)],
)
def test_velocities_are_bounded_in_image_voxels(space):
    raw = 50 * torch.randn(2, 2 * 3, 32, 32, 32)
    fields = space.velocities(raw, pieces=2)
    assert fields.shape == (2, 2, 3, *space.coarse_shape((32, 32, 32)))
    largest = float(fields.abs().max()) * space.factor
    assert largest <= space.bound * (1 + 1e-6)
    assert largest > 0.5 * space.bound  # saturated raw output reaches near the bound


def test_zero_output_gives_zero_velocities_for_every_space():
    for space in (DEFAULT_SPACE, LEGACY_SPACE, VelocitySpace("bspline", lattice=8, sigma=2.0)):
        assert torch.equal(space.velocities(torch.zeros(1, 2, 32, 32), 1),
                           torch.zeros(1, 1, 2, *space.coarse_shape((32, 32))))


@pytest.mark.parametrize(("points", "lattice", "factor"), [(16, 4, 2), (12, 6, 4), (20, 3, 1)])
def test_bspline_basis_is_a_partition_of_unity_that_reproduces_lines(points, lattice, factor):
    controls = math.ceil(points * factor / lattice)
    basis = _bspline_basis(points, controls, lattice, factor, torch.device("cpu"), torch.float64)
    torch.testing.assert_close(basis.sum(1), torch.ones(points, dtype=torch.float64))
    assert bool((basis >= 0).all())
    # control values on a line (position of each control point) → the line at every point
    # whose support stays inside the lattice
    control_positions = lattice * torch.arange(controls, dtype=torch.float64) + (lattice - 1) / 2
    positions = factor * torch.arange(points, dtype=torch.float64) + (factor - 1) / 2
    inside = (positions >= control_positions[1]) & (positions <= control_positions[-2])
    assert int(inside.sum()) >= 2
    torch.testing.assert_close((basis @ control_positions)[inside], positions[inside])


def test_gaussian_smoothing_keeps_constants_and_damps_noise():
    constant = torch.full((1, 2, 20, 24), 3.5, dtype=torch.float64)
    torch.testing.assert_close(_gaussian(constant, 1.5), constant)
    noise = torch.randn(1, 2, 20, 24, generator=torch.Generator().manual_seed(0))
    smoothed = _gaussian(noise, 1.5)
    assert float(smoothed.std()) < 0.4 * float(noise.std())
    torch.testing.assert_close(smoothed.mean(), noise.mean(), atol=0.05, rtol=0)


@pytest.mark.parametrize("factor", [1, 2, 3, 4])
@pytest.mark.parametrize("shape", [(7, 5, 6), (1, 3, 2), (9, 4), (1, 5)])
def test_upsampling_is_atens_linear_interpolation(shape, factor):
    """The phase-by-phase upsampling (inference) equals F.interpolate (align_corners=False,
    edges held) to rounding, on odd, even and one-voxel axes, and is contiguous."""
    field = torch.randn(2, 3, *shape, dtype=torch.float64,
                        generator=torch.Generator().manual_seed(factor))
    mode = "bilinear" if len(shape) == 2 else "trilinear"
    expected = torch.nn.functional.interpolate(field, scale_factor=factor, mode=mode,
                                               align_corners=False)
    with torch.no_grad():
        upsampled = upsample_linear(field, factor)
    assert upsampled.is_contiguous()
    torch.testing.assert_close(upsampled, expected, rtol=0, atol=1e-12)


def test_upsampling_holds_lines_inside_and_edges_outside():
    """A line along one axis stays the line at the fine positions factor·i + r that lie
    between the first and last coarse centres, and is held at the edge voxels beyond them."""
    factor = 4
    coarse = torch.arange(5, dtype=torch.float64).view(1, 1, 1, 5).expand(1, 1, 3, 5)
    with torch.no_grad():
        fine = upsample_linear(coarse.contiguous(), factor)[0, 0, 0]
    position = (torch.arange(20, dtype=torch.float64) + 0.5) / factor - 0.5  # in coarse voxels
    torch.testing.assert_close(fine, position.clamp(0, 4), rtol=0, atol=1e-12)


def test_velocity_space_is_differentiable():
    space = VelocitySpace("bspline", factor=2, lattice=4, sigma=1.0, bound=3.0)
    raw = torch.randn(1, 2, 4, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda r: space.velocities(r, 1), (raw,))
    coarse = torch.randn(1, 2, 2, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda c: space.to_fine(c, (4, 8)), (coarse,))


def test_a_model_first_run_under_inference_mode_still_trains():
    """The cached B-spline basis and identity grid built during inference (Run model) must not
    be inference tensors, or the next training step (Train widget, same process) fails."""
    model = TemplateTransformer("bch", ndim=2, width=2,
                                velocity=VelocitySpace("bspline", factor=2, lattice=7))
    image = torch.rand(1, 1, 48, 32)  # a grid no other test uses: the caches start empty here
    with torch.inference_mode():
        model(image)
    model(image).probability.sum().backward()
    assert all(p.grad is not None for p in model.net.head.parameters())


def test_bad_velocity_settings_are_refused_listing_what_is_valid():
    with pytest.raises(ValueError, match=r"one of \('dense', 'bspline'\)"):
        VelocitySpace("fourier")
    with pytest.raises(ValueError, match=r"one of \(1, 2, 4\)"):
        VelocitySpace(factor=3)
    with pytest.raises(ValueError, match="lattice spacing"):
        VelocitySpace("bspline", lattice=0)
    assert VelocitySpace("bspline").lattice == 4  # the default spacing
    with pytest.raises(ValueError, match="finer than the integration grid"):
        VelocitySpace("bspline", factor=4, lattice=2)
    with pytest.raises(ValueError, match="'bspline' parameterisation only"):
        VelocitySpace(lattice=4)
    with pytest.raises(ValueError, match="sigma must be >= 0"):
        VelocitySpace(sigma=-1.0)
    with pytest.raises(ValueError, match="bound"):
        VelocitySpace(bound=0.0)
    with pytest.raises(ValueError, match=r"\(30, 32\) is not divisible by the velocity factor 4"
                                         r".*\(32, 32\)"):
        VelocitySpace(factor=4).coarse_shape((30, 32))


def test_model_integrates_on_the_coarse_grid_and_returns_fine_displacements():
    model = TemplateTransformer("bch", ndim=3, width=2, pieces=2,
                                velocity=VelocitySpace(factor=4, bound=6.0, sigma=1.0))
    with torch.no_grad():
        model.net.head.weight.normal_(std=0.3)
        result = model(torch.rand(1, 1, 32, 32, 16))
    assert result.velocities.shape == (1, 2, 3, 8, 8, 4)
    assert result.displacement.shape == (1, 3, 32, 32, 16)
    coarse = integrate(result.velocities).displacement
    torch.testing.assert_close(result.displacement, model.velocity_space.to_fine(coarse,
                                                                                 (32, 32, 16)))


def test_configs_written_before_velocity_spaces_rebuild_the_old_model():
    """An old config (``alpha``, no ``velocity``) means full resolution, bound α: the velocities
    are exactly α·tanh of the network output, as the old code computed them."""
    old = {"kind": "svf", "ndim": 2, "pieces": 1, "bch_order": 2, "alpha": 32.0, "width": 2,
           "smoothness": 0.0, "method": "bch", "squarings": None, "image_channels": 1}
    model = TemplateTransformer.from_config(old)
    assert model.velocity_space == VelocitySpace(factor=1, bound=32.0)
    with torch.no_grad():
        model.net.head.weight.normal_(std=0.3)
        image = torch.rand(1, 1, 16, 16)
        out = model.net(torch.cat([image, model.prior.on_grid((16, 16))], 1))
        result = model(image)
    torch.testing.assert_close(result.velocity, 32.0 * torch.tanh(out))
    assert model.config()["velocity"] == {"parameterisation": "dense", "factor": 1,
                                          "lattice": None, "sigma": 0.0, "bound": 32.0}
    with pytest.raises(ValueError, match="both 'alpha'"):
        TemplateTransformer.from_config({**model.config(), "alpha": 3.0})
    with pytest.raises(ValueError, match="unknown entries"):
        TemplateTransformer.from_config({**model.config(), "velocity": {"factr": 2}})
