"""Shape priors: ½-contour, closed forms, gradients, patch consistency, fitting, serialisation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from napari_difftt.core.prior import (
    PARAMETERISATIONS,
    GeneralisedGaussianPrior,
    ImagePrior,
    fit_to_mask,
    from_world,
    grid_axes,
    grid_coordinates,
    prior_from_dict,
    rotation_matrix,
)


def _points(prior: GeneralisedGaussianPrior, offsets: torch.Tensor) -> torch.Tensor:
    """Evaluate at points μ + offsets ``(K, n)`` → ``(K,)``, as a (K, n, 1, 1[, 1]) batch."""
    coords = (prior.mean.detach() + offsets).view(len(offsets), prior.ndim, *([1] * prior.ndim))
    return prior(coords.to(prior.log_beta.dtype)).flatten()


@pytest.mark.parametrize("beta", [0.5, 1.0, 2.0, 4.0])
def test_half_on_the_ellipsoid_for_every_beta(beta):
    rot = rotation_matrix([20.0, -35.0, 50.0], 3)
    radii = np.array([0.3, 0.5, 0.7])
    prior = GeneralisedGaussianPrior(3, mean=[0.1, -0.2, 0.05], radii=radii, rotation=rot,
                                     beta=beta).double()
    directions = torch.randn(50, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    directions = directions / directions.norm(dim=1, keepdim=True)
    # a point on the ellipsoid: R · (radii ⊙ unit vector)
    surface = directions * torch.as_tensor(radii) @ torch.as_tensor(rot).T
    torch.testing.assert_close(_points(prior, surface), torch.full((50,), 0.5, dtype=torch.float64))
    inside, outside = _points(prior, 0.9 * surface), _points(prior, 1.1 * surface)
    assert (inside > 0.5).all() and (outside < 0.5).all()


def test_closed_form_values():
    prior = GeneralisedGaussianPrior(2, mean=[0.2, -0.1], radii=[0.5, 0.25], beta=1.5).double()
    # offset (0.5, 0.25) → d² = 1 + 1 = 2; p = exp(−2^1.5 ln 2) = 2^(−2^1.5)
    offsets = torch.tensor([[0.5, 0.25], [0.0, 0.0], [0.25, 0.0]], dtype=torch.float64)
    value = _points(prior, offsets)
    expected = torch.tensor([2.0 ** (-(2.0**1.5)), 1.0, 2.0 ** (-(0.25**1.5))], dtype=torch.float64)
    torch.testing.assert_close(value, expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_far_tail_is_the_smallest_normal_number_not_subnormal(dtype):
    """Far outside the shape p stops at the dtype's smallest normal number (a CPU's exp is slow
    on subnormal results); where the closed form is a normal number it is unchanged."""
    prior = GeneralisedGaussianPrior(2, radii=[0.1, 0.1], beta=4.0, parameterisation="full",
                                     train_beta=True).to(dtype)
    # d² = 100 · r²: r = 0.1 gives d² = 1 (p = ½); r = 1 gives d² = 100 (p = 2^-(10^4) → 0)
    offsets = torch.tensor([[0.1, 0.0], [0.0, 0.15], [1.0, 0.0], [3.0, 3.0]], dtype=dtype)
    value = _points(prior, offsets)
    tiny = torch.finfo(dtype).tiny
    assert float(value[0]) == pytest.approx(0.5)
    assert float(value[1]) == pytest.approx(2.0 ** -(2.25**4), rel=1e-5)
    assert (value[2:] >= tiny).all() and (value[2:] <= 2 * tiny).all()
    value.sum().backward()  # the floor has no gradient, and gives no NaN
    assert all(torch.isfinite(p.grad).all() for p in prior.parameters() if p.grad is not None)


def test_default_is_centred_with_half_extent_radii():
    prior = GeneralisedGaussianPrior(3)
    torch.testing.assert_close(prior.covariance, torch.eye(3) * 0.25)
    torch.testing.assert_close(prior.mean, torch.zeros(3))
    p = prior.on_grid((5, 9, 17))
    assert p.shape == (1, 1, 5, 9, 17)
    # voxel indices 1/4 and 3/4 of the way along an axis are at normalised ±0.5: p = ½
    torch.testing.assert_close(p[0, 0, 2, 2, 8], torch.tensor(0.5))
    torch.testing.assert_close(p[0, 0, 2, 4, 12], torch.tensor(0.5))
    assert p[0, 0, 2, 4, 8] == 1.0


def test_full_covariance_with_rotation():
    rot = rotation_matrix(30.0, 2)
    prior = GeneralisedGaussianPrior(2, radii=[0.6, 0.2], rotation=rot, parameterisation="full")
    c, s = math.cos(math.radians(30)), math.sin(math.radians(30))
    expected = np.array([[c, -s], [s, c]]) @ np.diag([0.36, 0.04]) @ np.array([[c, s], [-s, c]])
    torch.testing.assert_close(prior.covariance.double(), torch.as_tensor(expected),
                               rtol=1e-6, atol=1e-7)
    # the long axis is the first column of R: p = ½ at 0.6·(c, s) but not at 0.6·(c, −s)
    values = _points(prior.double(), torch.tensor([[0.6 * c, 0.6 * s], [0.6 * c, -0.6 * s]],
                                                  dtype=torch.float64))
    assert values[0].item() == pytest.approx(0.5)
    assert values[1].item() < 0.1


def test_gradients_finite_at_the_mean_for_small_beta():
    prior = GeneralisedGaussianPrior(2, beta=0.5, parameterisation="full", train_beta=True)
    coords = torch.zeros(1, 2, 3, 3, requires_grad=True)  # every point exactly at μ
    prior(coords).sum().backward()
    assert torch.isfinite(coords.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in prior.parameters())


@pytest.mark.parametrize("parameterisation", PARAMETERISATIONS)
def test_gradcheck_every_trainable_parameter(parameterisation):
    prior = GeneralisedGaussianPrior(
        2, mean=[0.1, -0.2], radii=[0.4, 0.7], rotation=rotation_matrix(25.0, 2), beta=1.3,
        parameterisation=parameterisation, train_beta=True,
    ).double()
    names = [name for name, _ in prior.named_parameters()]
    expected = {"fixed": [], "mean": [], "sigma": ["log_scale"], "diag": ["log_radii"],
                "full": ["cholesky_raw"]}[parameterisation]
    mean = {"location"} if parameterisation != "fixed" else set()
    assert set(names) == {"log_beta"} | mean | set(expected)
    coords = grid_coordinates((4, 5), dtype=torch.float64) * 0.9

    def evaluate(*values):
        return torch.func.functional_call(prior, dict(zip(names, values, strict=True)), (coords,))

    inputs = tuple(p.detach().clone().requires_grad_(True) for p in prior.parameters())
    assert torch.autograd.gradcheck(evaluate, inputs)


def test_gradcheck_wrt_displacement():
    prior = GeneralisedGaussianPrior(3, radii=[0.5, 0.3, 0.6], beta=2.0).double()
    u = torch.randn(1, 3, 3, 4, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    u.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda d: prior.on_grid((3, 4, 5), (1, 0, 2), (6, 7, 8), displacement=d), (u,)
    )


def test_trainable_flags():
    fixed = GeneralisedGaussianPrior(3)
    assert list(fixed.parameters()) == []
    frozen_mean = GeneralisedGaussianPrior(3, parameterisation="diag", train_mean=False)
    assert [n for n, _ in frozen_mean.named_parameters()] == ["log_radii"]
    only_beta = GeneralisedGaussianPrior(3, train_beta=True)
    assert [n for n, _ in only_beta.named_parameters()] == ["log_beta"]
    with pytest.raises(ValueError, match="parameterisation"):
        GeneralisedGaussianPrior(3, parameterisation="cholesky")
    with pytest.raises(ValueError, match="train_mean"):
        GeneralisedGaussianPrior(3, parameterisation="mean", train_mean=False)
    with pytest.raises(ValueError, match="beta"):
        GeneralisedGaussianPrior(3, beta=0.0)
    with pytest.raises(ValueError, match="radii"):
        GeneralisedGaussianPrior(3, radii=[0.5, -0.1, 0.5])
    with pytest.raises(ValueError, match="rotation"):
        GeneralisedGaussianPrior(2, rotation=[[1.0, 1.0], [0.0, 1.0]])
    with pytest.raises(ValueError, match="positive definite"):
        GeneralisedGaussianPrior(2, covariance=[[1.0, 0.0], [0.0, -1.0]])


def test_sigma_scales_the_initial_covariance():
    prior = GeneralisedGaussianPrior(2, radii=[0.5, 0.5], parameterisation="sigma").double()
    with torch.no_grad():
        prior.log_scale.fill_(math.log(2.0))
    torch.testing.assert_close(prior.covariance, torch.eye(2, dtype=torch.float64))


def test_patch_equals_full_volume_prior():
    prior = GeneralisedGaussianPrior(3, mean=[0.1, 0.0, -0.3], radii=[0.4, 0.6, 0.5], beta=2.0)
    full = prior.on_grid((12, 10, 14))
    patch = prior.on_grid((4, 6, 5), offset=(3, 2, 7), full_shape=(12, 10, 14))
    torch.testing.assert_close(patch, full[:, :, 3:7, 2:8, 7:12])
    # a patch hanging over the edge (negative offset, inference padding) is still the same function
    padded = prior.on_grid((16, 16, 16), offset=(-2, -3, -1), full_shape=(12, 10, 14))
    torch.testing.assert_close(padded[:, :, 2:14, 3:13, 1:15], full)


@pytest.mark.parametrize("parameterisation", ["fixed", "diag", "full"])
@pytest.mark.parametrize("displaced", [False, True])
def test_on_grid_is_the_prior_at_the_grid_coordinates(parameterisation, displaced):
    prior = GeneralisedGaussianPrior(3, mean=[0.1, -0.2, 0.05], radii=[0.4, 0.3, 0.5],
                                     rotation=rotation_matrix([20, -10, 35], 3), beta=3.0,
                                     parameterisation=parameterisation)
    shape, offset, full = (6, 5, 7), (-2, 3, 1), (11, 9, 13)
    u = torch.randn(2, 3, *shape, generator=torch.Generator().manual_seed(3)) if displaced else None
    direct = prior(grid_coordinates(shape, offset, full, u))
    torch.testing.assert_close(prior.on_grid(shape, offset, full, u), direct, atol=1e-6, rtol=0)


def test_grid_axes_are_the_planes_of_the_grid_coordinates():
    shape, offset, full = (4, 6, 5), (-1, 2, 3), (9, 8, 12)
    axes = grid_axes(shape, offset, full, dtype=torch.float64)
    coords = grid_coordinates(shape, offset, full, dtype=torch.float64)
    meshed = torch.stack(torch.meshgrid(*axes, indexing="ij"))[None]
    torch.testing.assert_close(meshed, coords)


def test_displacement_is_in_local_voxels():
    prior = GeneralisedGaussianPrior(2, mean=[0.3, -0.2], radii=[0.4, 0.3])
    shift = torch.zeros(1, 2, 5, 6)
    shift[:, 0], shift[:, 1] = 2.0, 1.0
    moved = prior.on_grid((5, 6), offset=(1, 1), full_shape=(11, 13), displacement=shift)
    direct = prior.on_grid((5, 6), offset=(3, 2), full_shape=(11, 13))
    torch.testing.assert_close(moved, direct)


def test_round_trip_through_dict_and_state_dict():
    prior = GeneralisedGaussianPrior(3, radii=[0.3, 0.4, 0.5], beta=2.5, parameterisation="diag",
                                     rotation=rotation_matrix([10, 20, 30], 3), train_beta=True)
    with torch.no_grad():
        prior.log_radii.add_(0.1)
        prior.location.add_(0.05)
    data = prior.to_dict()
    assert all(isinstance(v, (float, int, str, bool, list)) for v in data.values())
    rebuilt = prior_from_dict(data)
    torch.testing.assert_close(rebuilt.on_grid((6, 7, 8)), prior.on_grid((6, 7, 8)))
    rebuilt.load_state_dict(prior.state_dict())
    assert torch.equal(rebuilt.on_grid((6, 7, 8)), prior.on_grid((6, 7, 8)))
    with pytest.raises(ValueError, match="unknown prior type"):
        prior_from_dict({"type": "box"})


def test_image_prior_matches_its_map_and_is_patch_consistent():
    gaussian = GeneralisedGaussianPrior(2, mean=[0.1, 0.0], radii=[0.5, 0.4])
    image = gaussian.on_grid((9, 11))[0, 0]
    prior = ImagePrior(image)
    torch.testing.assert_close(prior.on_grid((9, 11)), image[None, None])
    torch.testing.assert_close(prior.on_grid((4, 5), offset=(2, 3), full_shape=(9, 11)),
                               image[None, None, 2:6, 3:8])
    # a whole-voxel shift samples the map exactly at the neighbour
    shift = torch.zeros(1, 2, 9, 11)
    shift[:, 1] = 1.0
    torch.testing.assert_close(prior.on_grid((9, 11), displacement=shift)[..., :-1],
                               image[None, None, :, 1:])
    rebuilt = prior_from_dict(prior.to_dict())
    rebuilt.load_state_dict(prior.state_dict())
    torch.testing.assert_close(rebuilt.on_grid((9, 11)), prior.on_grid((9, 11)))
    with pytest.raises(ValueError, match="probabilities"):
        ImagePrior(image * 3)


def test_from_world_puts_the_half_contour_at_the_world_ellipsoid():
    shape, spacing, origin = (20, 30, 40), (2.0, 1.0, 0.5), (-10.0, 5.0, 3.0)
    prior = from_world([10.0, 20.0, 12.0], [8.0, 6.0, 4.0], [0.0, 0.0, 30.0], 1.0, shape,
                       spacing, origin).double()
    # centre voxel: ((10 + 10)/2, (20 − 5)/1, (12 − 3)/0.5) = (10, 15, 18)
    to_norm = 2.0 / (np.array(shape) - 1)
    torch.testing.assert_close(prior.mean, torch.as_tensor(np.array([10, 15, 18]) * to_norm - 1))
    rot = rotation_matrix([0.0, 0.0, 30.0], 3)
    for k in range(3):  # the end of each semi-axis in world mm → p = ½
        end_mm = np.array([10.0, 20.0, 12.0]) + rot[:, k] * [8.0, 6.0, 4.0][k]
        coords = ((end_mm - origin) / spacing) * to_norm - 1
        value = prior(torch.as_tensor(coords).view(1, 3, 1, 1, 1))
        assert value.item() == pytest.approx(0.5)


def test_rotation_matrix_is_orthogonal_with_the_documented_sense():
    r = rotation_matrix(90.0, 2)
    np.testing.assert_allclose(r @ np.array([1.0, 0.0]), [0.0, 1.0], atol=1e-12)
    r3 = rotation_matrix([10.0, 20.0, 30.0], 3)
    np.testing.assert_allclose(r3.T @ r3, np.eye(3), atol=1e-12)
    with pytest.raises(ValueError, match="rotation_deg"):
        rotation_matrix([1.0, 2.0], 3)


@pytest.mark.parametrize("ndim", [2, 3])
def test_fit_to_mask_recovers_an_ellipsoid(ndim):
    shape = (40, 50, 44)[:ndim]
    centre = np.array([19.3, 24.0, 21.6])[:ndim]
    semi = np.array([12.0, 18.0, 9.0])[:ndim]
    rot = rotation_matrix(25.0, 2) if ndim == 2 else rotation_matrix([0.0, 15.0, 30.0], 3)
    index = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1) - centre
    local = index @ rot  # coordinates along the principal axes
    mask = ((local / semi) ** 2).sum(-1) <= 1
    prior = fit_to_mask(mask)
    to_norm = 2.0 / (np.array(shape) - 1)
    mean_voxels = (prior.mean.double().numpy() + 1) / to_norm
    assert np.abs(mean_voxels - centre).max() < 0.1
    cov_voxels = prior.covariance.double().numpy() / np.outer(to_norm, to_norm)
    values, vectors = np.linalg.eigh(cov_voxels)
    fitted = np.sqrt(values)
    order = np.argsort(semi)
    np.testing.assert_allclose(fitted, semi[order], atol=1.0)  # semi-axes within a voxel
    for k, axis in enumerate(order):
        assert abs(abs(vectors[:, k] @ rot[:, axis]) - 1) < 1e-2
    # the fitted ½-contour agrees with the mask almost everywhere (boundary voxels aside)
    p = prior.on_grid(shape)[0, 0].numpy()
    assert ((p > 0.5) != mask).mean() < 0.01
    with pytest.raises(ValueError, match="foreground"):
        fit_to_mask(np.zeros(shape))


def test_coordinate_errors_name_the_argument():
    prior = GeneralisedGaussianPrior(3)
    with pytest.raises(ValueError, match="coords"):
        prior(torch.zeros(1, 2, 4, 4))
    with pytest.raises(ValueError, match="displacement"):
        prior.on_grid((4, 4, 4), displacement=torch.zeros(1, 3, 4, 4, 5))
    with pytest.raises(ValueError, match="full_shape"):
        prior.on_grid((4, 4, 4), full_shape=(4, 4))
