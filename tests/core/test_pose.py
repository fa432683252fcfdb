"""The pose level: an exact affine flow of a linear velocity field that places the prior."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.linalg import expm

from napari_difftt.core.models import TemplateTransformer
from napari_difftt.core.pose import PoseHead, apply_pose, posed_prior
from napari_difftt.core.prior import GeneralisedGaussianPrior, ImagePrior, grid_coordinates


def _set_generator(head: PoseHead, matrix: np.ndarray, offset: np.ndarray) -> None:
    """Make ``head`` predict the linear field v(y) = matrix (y − c) + offset for any input
    (pre-tanh values chosen so the bounded generator is exactly ``matrix``, ``offset``)."""
    from napari_difftt.core.pose import POSE_BOUNDS

    raw = np.concatenate([np.arctanh(matrix.ravel() / POSE_BOUNDS[0]),
                          np.arctanh(offset / POSE_BOUNDS[1])])
    with torch.no_grad():
        head.mlp[-1].weight.zero_()
        head.mlp[-1].bias.copy_(torch.as_tensor(raw, dtype=torch.float32))


def test_pose_is_the_matrix_exponential_of_the_linear_field_and_never_folds():
    head = PoseHead(3, channels=2)
    matrix = np.array([[0.3, -0.4, 0.1], [0.2, -0.5, 0.0], [-0.1, 0.3, 0.2]])
    offset = np.array([0.2, -0.1, 0.05])
    _set_generator(head, matrix, offset)
    features = torch.rand(2, 2, 8, 6, 4)
    pose = head(features, grid_coordinates((8, 6, 4)))
    generator = np.zeros((4, 4))
    generator[:3, :3], generator[:3, 3] = matrix, offset
    np.testing.assert_allclose(pose[0].detach().numpy(), expm(generator), atol=1e-5)
    assert torch.linalg.det(pose[:, :3, :3]).min() > 0  # det = e^{tr M}
    np.testing.assert_allclose(float(torch.linalg.det(pose[0, :3, :3].detach())),
                               np.exp(np.trace(matrix)), rtol=1e-5)


def test_an_untrained_pose_is_the_identity():
    head = PoseHead(2, channels=3)
    pose = head(torch.rand(4, 3, 16, 12), grid_coordinates((16, 12)))
    assert torch.equal(pose, torch.eye(3).expand(4, 3, 3))


def test_posed_prior_is_the_prior_at_the_posed_coordinates():
    prior = GeneralisedGaussianPrior(2, mean=[0.1, -0.2], radii=[0.4, 0.25],
                                     rotation=[[0.8, -0.6], [0.6, 0.8]], beta=3.0)
    generator = np.array([[0.2, -0.3, 0.1], [0.1, -0.4, -0.2], [0.0, 0.0, 0.0]])
    pose = torch.as_tensor(expm(generator), dtype=torch.float32)[None]
    coords = grid_coordinates((33, 29))
    direct = prior(apply_pose(pose, coords, prior.mean))
    described = posed_prior(prior, pose[0])
    torch.testing.assert_close(described(coords), direct, atol=2e-6, rtol=0)
    assert float(described.beta) == pytest.approx(3.0)


def test_pose_gradients_match_finite_differences_in_float64():
    torch.manual_seed(0)
    head = PoseHead(2, channels=2).double()
    torch.nn.init.normal_(head.mlp[-1].weight, std=0.3)
    coords = grid_coordinates((6, 5), dtype=torch.float64)
    features = torch.rand(1, 2, 6, 5, dtype=torch.float64, requires_grad=True)
    centre = torch.tensor([0.1, -0.2], dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda f: apply_pose(head(f, coords), coords, centre), (features,)
    )


def test_model_with_pose_starts_at_the_prior_and_round_trips():
    prior = GeneralisedGaussianPrior(3, radii=[0.4, 0.3, 0.35], beta=4.0, parameterisation="full")
    model = TemplateTransformer("bch", 3, prior=prior, width=4, pose=True)
    image = torch.rand(1, 1, 16, 16, 16)
    result = model(image)
    assert torch.equal(result.pose, torch.eye(4)[None])
    torch.testing.assert_close(result.probability, result.prior)
    torch.testing.assert_close(result.prior, prior.on_grid((16, 16, 16)))
    torch.nn.init.normal_(model.pose_head.mlp[-1].weight, std=0.5)
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
