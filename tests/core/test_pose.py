"""The pose level: an affine map from a soft mask's moments places the prior; the boundary
force between the mask and the posed prior."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.linalg import expm

from napari_difftt.core.flow.grid import affine_of_index
from napari_difftt.core.models import TemplateTransformer
from napari_difftt.core.pose import MomentPose, boundary_force, posed_prior
from napari_difftt.core.prior import (
    GeneralisedGaussianPrior,
    ImagePrior,
    grid_axes,
    grid_coordinates,
)


def _posed(pose: torch.Tensor, coords: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
    """A(y) = c + E (y − c) + s at ``coords`` (B, n, *S), written out."""
    n = coords.shape[1]
    spatial = (1,) * (coords.ndim - 2)
    c = centre.view(1, n, *spatial)
    moved = torch.einsum("bij,bj...->bi...", pose[:, :n, :n], coords - c)
    return moved + c + pose[:, :n, n].view(-1, n, *spatial)


def _pose_2d() -> torch.Tensor:
    generator = np.array([[0.2, -0.3, 0.1], [0.1, -0.4, -0.2], [0.0, 0.0, 0.0]])
    return torch.as_tensor(expm(generator), dtype=torch.float32)[None]


def test_posed_prior_is_the_prior_at_the_posed_coordinates():
    prior = GeneralisedGaussianPrior(2, mean=[0.1, -0.2], radii=[0.4, 0.25],
                                     rotation=[[0.8, -0.6], [0.6, 0.8]], beta=3.0)
    pose = _pose_2d()
    coords = grid_coordinates((33, 29))
    direct = prior(_posed(pose, coords, prior.mean))
    described = posed_prior(prior, pose[0])
    torch.testing.assert_close(described(coords), direct, atol=2e-6, rtol=0)
    assert float(described.beta) == pytest.approx(3.0)


@pytest.mark.parametrize("displaced", [False, True])
def test_index_whitening_is_the_posed_prior_at_the_moved_grid(displaced):
    torch.manual_seed(1)
    prior = GeneralisedGaussianPrior(3, mean=[0.1, -0.2, 0.05], beta=2.0,
                                     covariance=[[0.2, 0.03, 0], [0.03, 0.15, 0.01],
                                                 [0, 0.01, 0.1]])
    shape, offset, full = (12, 10, 14), (-3, 2, 1), (30, 25, 40)
    pose = torch.eye(4).repeat(2, 1, 1)
    pose[:, :3] += 0.1 * torch.randn(2, 3, 4)
    u = torch.randn(2, 3, *shape) if displaced else None
    coords = grid_coordinates(shape, offset, full, u).expand(2, -1, -1, -1, -1)
    matrix, bias = prior.index_whitening(shape, offset, full, pose)
    white = affine_of_index(matrix, bias, shape, u)
    torch.testing.assert_close(prior.probability(white), prior(_posed(pose, coords, prior.mean)),
                               atol=2e-6, rtol=0)


def test_pose_and_force_gradients_match_finite_differences_in_float64():
    torch.manual_seed(0)
    head = MomentPose(2, channels=2).double()
    torch.nn.init.normal_(head.head.weight, std=0.3)
    prior = GeneralisedGaussianPrior(2, mean=[0.05, -0.1], radii=[0.5, 0.4], beta=2.0).double()
    shape = (9, 8)
    axes = grid_axes(shape, dtype=torch.float64)
    p = prior.on_grid(shape)
    features = torch.rand(1, 2, *shape, dtype=torch.float64, requires_grad=True)

    def posed_and_pushed(f):
        pose, mask = head(f, axes, p, prior.mean)
        matrix, bias = prior.index_whitening(shape, pose=pose)
        white = affine_of_index(matrix, bias, shape)
        return white, boundary_force(mask, prior.probability(white), white, matrix)

    assert torch.autograd.gradcheck(posed_and_pushed, (features,))


def test_model_with_pose_starts_at_the_prior_and_round_trips():
    prior = GeneralisedGaussianPrior(3, radii=[0.4, 0.3, 0.35], beta=4.0, parameterisation="full")
    model = TemplateTransformer("bch", 3, prior=prior, width=4, pose=True)
    image = torch.rand(1, 1, 16, 16, 16)
    result = model(image)
    torch.testing.assert_close(result.pose, torch.eye(4)[None], atol=1e-5, rtol=0)
    torch.testing.assert_close(result.probability, result.prior, atol=1e-5, rtol=0)
    torch.testing.assert_close(result.prior, prior.on_grid((16, 16, 16)), atol=1e-5, rtol=0)
    torch.nn.init.normal_(model.pose_head.head.weight, std=0.5)
    torch.nn.init.constant_(model.force_gain, 0.1)
    moved = model(image)
    assert not torch.allclose(moved.prior, prior.on_grid((16, 16, 16)))
    rebuilt = TemplateTransformer.from_config(model.config())
    rebuilt.load_state_dict(model.state_dict())
    torch.testing.assert_close(rebuilt(image).probability, moved.probability)


def test_a_config_without_pose_rebuilds_a_model_without_it():
    config = TemplateTransformer("bch", 2, width=4).config()
    del config["pose"]
    assert TemplateTransformer.from_config(config).pose_head is None


@pytest.mark.parametrize("kind, prior", [("unet", None), ("bch", ImagePrior(np.ones((8, 8))))])
def test_pose_is_refused_where_it_cannot_work(kind, prior):
    with pytest.raises(ValueError, match="pose needs a flow kind"):
        TemplateTransformer(kind, 2, prior=prior, width=4, pose=True)


def test_moment_pose_moves_the_prior_onto_a_shifted_mask():
    prior = GeneralisedGaussianPrior(3, mean=[0.0, 0.1, -0.1], radii=[0.3, 0.25, 0.35], beta=4.0)
    shift = torch.tensor([0.12, -0.08, 0.05])
    moved = GeneralisedGaussianPrior(3, mean=(prior.mean + shift).tolist(),
                                     radii=[0.3, 0.25, 0.35], beta=4.0)
    shape = (40, 36, 44)
    head = MomentPose(3, channels=2)
    pose = head.pose_of(moved.on_grid(shape), grid_axes(shape), prior.on_grid(shape), prior.mean)
    assert torch.linalg.det(pose[0, :3, :3]) > 0
    placed = posed_prior(prior, pose[0])
    # to discretisation accuracy: 2e-3 normalised units is 1/25 of a voxel here
    torch.testing.assert_close(placed.mean.float(), moved.mean, atol=2e-3, rtol=0)
    torch.testing.assert_close(placed.covariance.float(), moved.covariance, atol=2e-3, rtol=0)


def test_an_untrained_moment_pose_is_the_identity_and_its_mask_the_prior():
    prior = GeneralisedGaussianPrior(2, mean=[0.1, 0.0], radii=[0.4, 0.3], beta=4.0)
    shape = (24, 20)
    pose, mask = MomentPose(2, channels=3)(torch.rand(2, 3, *shape), grid_axes(shape),
                                           prior.on_grid(shape), prior.mean)
    torch.testing.assert_close(pose, torch.eye(3).expand(2, 3, 3), atol=1e-5, rtol=0)
    torch.testing.assert_close(mask, prior.on_grid(shape).clamp(0.1, 0.9).expand(2, -1, -1, -1))


def test_boundary_force_pulls_towards_the_centre_where_the_mask_says_organ():
    prior = GeneralisedGaussianPrior(2, mean=[0.0, 0.0], radii=[0.3, 0.3], beta=4.0)
    shape = (33, 33)
    matrix, bias = prior.index_whitening(shape)
    white = affine_of_index(matrix, bias, shape)
    p = prior.probability(white)
    force = boundary_force(torch.ones_like(p), p, white, matrix)
    # at voxel (16, 28), right of the centre and outside the prior: the pull points to −x
    assert force[0, 1, 16, 28] == pytest.approx(-(1 - float(p[0, 0, 16, 28])), abs=1e-5)
    assert abs(float(force[0, 0, 16, 28])) < 1e-5
    assert float(force.norm(dim=1).max()) <= 1.0 + 1e-6
    assert torch.all(boundary_force(p, p, white, matrix) == 0)


def test_boundary_force_is_the_inward_normal_of_the_posed_ellipses():
    prior = GeneralisedGaussianPrior(2, mean=[0.1, -0.2], radii=[0.4, 0.25],
                                     rotation=[[0.8, -0.6], [0.6, 0.8]], beta=3.0).double()
    pose, shape = _pose_2d().double(), (21, 17)
    index = torch.stack(torch.meshgrid(*(torch.arange(s, dtype=torch.float64) for s in shape),
                                       indexing="ij"))[None].requires_grad_()
    coords = index * torch.tensor([2 / 20, 2 / 16], dtype=torch.float64).view(1, 2, 1, 1) - 1
    posed = _posed(pose, coords, prior.mean)
    centred = posed - prior.mean.view(1, 2, 1, 1)
    d2 = torch.einsum("bi...,ij,bj...->b...", centred, torch.linalg.inv(prior.covariance),
                      centred)
    (gradient,) = torch.autograd.grad(d2.sum(), index)  # ∇_i d², voxel axes
    matrix, bias = prior.index_whitening(shape, pose=pose)
    white = affine_of_index(matrix, bias, shape)
    ones = torch.ones(1, 1, *shape, dtype=torch.float64)
    force = boundary_force(ones, torch.zeros_like(ones), white, matrix)
    torch.testing.assert_close(force, -gradient / gradient.norm(dim=1, keepdim=True))
