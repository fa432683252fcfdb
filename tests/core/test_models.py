"""Template transformers: identity at initialisation, gradients, topology, config, loss."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage as ndi
import torch

from napari_difftt.core.flow import folding_fraction
from napari_difftt.core.flow.velocity import VelocitySpace
from napari_difftt.core.metrics import components
from napari_difftt.core.models import KINDS, TemplateTransformer, segmentation_loss
from napari_difftt.core.prior import GeneralisedGaussianPrior, ImagePrior


class _FixedOutput(torch.nn.Module):
    """Stands in for the U-Net: returns a given pre-tanh output whatever the input (its
    features are that output, its head the identity)."""

    def __init__(self, out: torch.Tensor) -> None:
        super().__init__()
        self.out = out
        self.head = torch.nn.Identity()

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.out


def _components(probability: torch.Tensor) -> int:
    return components(probability[0, 0].detach().numpy() > 0.5, connectivity=1)  # faces


@pytest.mark.parametrize("kind", ["bch", "svf", "stt"])
def test_flow_models_return_the_prior_exactly_at_initialisation(kind):
    prior = GeneralisedGaussianPrior(2, mean=[0.1, -0.2], radii=[0.4, 0.3], beta=2.0)
    model = TemplateTransformer(kind, ndim=2, prior=prior, width=4)
    result = model(torch.rand(2, 1, 32, 32), offset=(4, -3), full_shape=(40, 30))
    assert torch.equal(result.probability, result.prior)
    assert torch.equal(result.prior[0], prior.on_grid((32, 32), (4, -3), (40, 30))[0])
    assert torch.equal(result.displacement, torch.zeros(2, 2, 32, 32))


def bch_factor() -> int:
    from napari_difftt.core.flow.velocity import DEFAULT_SPACE

    return DEFAULT_SPACE.factor


def test_result_shapes_per_kind():
    image = torch.rand(2, 1, 16, 16, 16)
    bch = TemplateTransformer("bch", ndim=3, width=2, pieces=4)(image)
    coarse = (16 // bch_factor(),) * 3  # velocities live on the coarse grid
    assert bch.velocities.shape == (2, 4, 3, *coarse)
    assert bch.velocity.shape == (2, 3, *coarse)
    assert bch.displacement.shape == (2, 3, 16, 16, 16)
    composed = TemplateTransformer("bch", ndim=3, width=2, method="compose")(image)
    assert composed.velocity is None and composed.velocities.shape == (2, 4, 3, *coarse)
    svf = TemplateTransformer("svf", ndim=3, width=2)(image)
    assert svf.velocities.shape == (2, 1, 3, *coarse)
    assert svf.velocity.shape == (2, 3, *coarse)
    stt = TemplateTransformer("stt", ndim=3, width=2)(image)
    assert stt.velocities is None and stt.velocity is None
    unet = TemplateTransformer("unet", ndim=3, width=2)(image)
    assert unet.displacement is None and unet.probability.shape == (2, 1, 16, 16, 16)
    assert ((unet.probability > 0) & (unet.probability < 1)).all()


@pytest.mark.parametrize("kind", KINDS)
def test_gradients_reach_the_network_and_a_learnable_prior(kind):
    torch.manual_seed(0)
    prior = GeneralisedGaussianPrior(2, radii=[0.3, 0.4], parameterisation="full", train_beta=True)
    model = TemplateTransformer(kind, ndim=2, prior=prior, width=4)
    image = torch.rand(1, 1, 32, 32)
    target = (torch.rand(1, 1, 32, 32) > 0.5).float()

    def step():
        model.zero_grad()
        segmentation_loss(model(image).probability, target).backward()

    step()
    assert model.net.head.weight.grad.abs().sum() > 0
    # the zero head blocks gradients to deeper layers until it has moved once
    with torch.no_grad():
        model.net.head.weight.add_(1e-2 * torch.randn_like(model.net.head.weight))
    step()
    assert model.net.down[0][0].weight.grad.abs().sum() > 0
    for name, param in model.prior.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, name


def _smooth_random_output(kind: str, seed: int, amplitude: float, alpha: float) -> torch.Tensor:
    """Pre-tanh network output whose fields are smooth noise with max |v| = amplitude voxels."""
    rng = np.random.default_rng(seed)
    pieces = 4 if kind == "bch" else 1
    noise = np.stack([ndi.gaussian_filter(rng.standard_normal((48, 48)), 6, mode="wrap")
                      for _ in range(2 * pieces)])
    noise *= amplitude / pieces / np.abs(noise).max()
    return torch.atanh(torch.as_tensor(noise / alpha, dtype=torch.float32))[None]


def test_diffeomorphic_kinds_keep_one_component_where_stt_breaks_it():
    """Large smooth outputs (up to 20 voxels on a 48² grid): svf/bch stay one blob, stt does not.

    Note: for *rough* (voxel-scale) outputs of this size the discrete exponential itself folds,
    so the guarantee is the continuum one, resolved by the grid only for resolved flows.
    """
    stt_components, stt_folds = [], []
    for seed in range(4):
        for kind in ("svf", "bch", "stt"):
            model = TemplateTransformer(kind, ndim=2, width=2,
                                        velocity=VelocitySpace(factor=1, bound=64.0))
            model.net = _FixedOutput(_smooth_random_output(kind, seed, 20.0, 64.0))
            with torch.no_grad():
                result = model(torch.rand(1, 1, 48, 48))
            folds = float(folding_fraction(result.displacement)[0])
            if kind == "stt":
                stt_components.append(_components(result.probability))
                stt_folds.append(folds)
            else:
                assert _components(result.probability) == 1, (kind, seed)
                assert folds == 0.0, (kind, seed)
    assert max(stt_components) > 1
    assert min(stt_folds) > 0.1


def test_unet_kind_ignores_the_flow_and_has_no_topology_guarantee():
    model = TemplateTransformer("unet", ndim=2, width=2)
    out = torch.full((1, 1, 32, 32), -5.0)
    out[..., 2:6, 2:6] = out[..., 20:26, 20:26] = 5.0
    model.net = _FixedOutput(out)
    assert _components(model(torch.rand(1, 1, 32, 32)).probability) == 2


def test_regularisation_is_lambda_times_mean_squared_gradient():
    model = TemplateTransformer("stt", ndim=2, width=2, smoothness=0.5,
                                velocity=VelocitySpace(factor=1, bound=10.0))
    # displacement u = (0.3·x1, 0) everywhere: ‖∇u‖² = 0.09 at every voxel
    x1 = torch.arange(32.0).view(1, 1, 32).expand(1, 32, 32)
    field = torch.cat([0.3 * x1, torch.zeros_like(x1)]).unsqueeze(0) / 10.0
    model.net = _FixedOutput(torch.atanh(field))
    result = model(torch.rand(1, 1, 32, 32))
    torch.testing.assert_close(model.regularisation(result), torch.tensor(0.5 * 0.09))
    free = TemplateTransformer("stt", ndim=2, width=2)
    assert free.regularisation(result) == 0


@pytest.mark.parametrize("space", [
    VelocitySpace("dense", factor=2),
    VelocitySpace("bspline", factor=2, lattice=3),  # 32 / 3: a partial last block per axis
    VelocitySpace("bspline", factor=4, lattice=4, sigma=0.7),
])
def test_pooling_the_features_before_the_head_gives_the_velocities_of_the_full_output(space):
    """forward pools the width channels, then applies the 1×1 head: the same velocities as the
    head's full-resolution output pooled by the space (VelocitySpace.velocities)."""
    torch.manual_seed(0)
    model = TemplateTransformer("bch", ndim=3, pieces=2, width=2, velocity=space)
    with torch.no_grad():
        model.net.head.weight.normal_(std=0.5)
        model.net.head.bias.normal_(std=0.5)
        image = torch.rand(1, 1, 32, 32, 32)
        result = model(image)
        raw = model.net(torch.cat([image, result.prior], dim=1))
        expected = space.velocities(raw, 2)
    assert float(expected.abs().max()) > 0.1
    torch.testing.assert_close(result.velocities, expected, atol=1e-5, rtol=1e-5)


def test_config_round_trip_restores_the_same_function():
    prior = GeneralisedGaussianPrior(2, radii=[0.3, 0.4], parameterisation="diag", beta=1.5)
    model = TemplateTransformer("bch", ndim=2, prior=prior, pieces=2, bch_order=3,
                                velocity=VelocitySpace("bspline", lattice=4, sigma=0.5),
                                width=2, smoothness=0.1, method="compose", squarings=6)
    with torch.no_grad():
        model.net.head.weight.normal_(std=0.1)
        model.prior.log_radii.add_(0.2)
    config = model.config()
    assert config["kind"] == "bch" and config["prior"]["parameterisation"] == "diag"
    rebuilt = TemplateTransformer.from_config(config)
    rebuilt.load_state_dict(model.state_dict())
    image = torch.rand(1, 1, 32, 32)
    assert torch.equal(rebuilt(image).probability, model(image).probability)
    with pytest.raises(ValueError, match="kind"):
        TemplateTransformer.from_config({**config, "kind": "vit"})
    with pytest.raises(ValueError, match="unknown entries"):
        TemplateTransformer.from_config({**config, "depth": 5})


def test_argument_errors():
    with pytest.raises(ValueError, match="kind"):
        TemplateTransformer("affine")
    with pytest.raises(ValueError, match="prior is 3D"):
        TemplateTransformer(ndim=2, prior=GeneralisedGaussianPrior(3))
    with pytest.raises(ValueError, match="bch_order"):
        TemplateTransformer(bch_order=5)
    with pytest.raises(ValueError, match=r"image must have shape \(B, 1, \*S\)"):
        TemplateTransformer(ndim=3, width=2)(torch.rand(1, 1, 16, 16))


def test_segmentation_loss_ignores_unlabelled_voxels():
    p = torch.tensor([0.9, 0.2, 0.6, 0.3]).view(1, 1, 2, 2).requires_grad_(True)
    target = torch.tensor([1, 0, 255, 255]).view(1, 1, 2, 2)
    loss = segmentation_loss(p, target)
    expected = -(np.log(0.9) + np.log(0.8)) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    assert p.grad[0, 0, 1].abs().sum() == 0 and p.grad[0, 0, 0].abs().sum() > 0
    nothing = segmentation_loss(p, torch.full_like(target, 255))
    assert nothing.item() == 0
    with pytest.raises(ValueError, match="same shape"):
        segmentation_loss(p, target[..., :1])
    with pytest.raises(ValueError, match="0, 1 or ignore_value"):
        segmentation_loss(p, torch.full_like(target, 2))


def test_image_prior_model_starts_at_the_map_and_round_trips():
    atlas = GeneralisedGaussianPrior(3, radii=[0.4, 0.5, 0.3]).on_grid((10, 12, 9))[0, 0]
    model = TemplateTransformer("svf", ndim=3, prior=ImagePrior(atlas), width=2)
    image = torch.rand(1, 1, 16, 16, 16)
    result = model(image, offset=(-3, -2, -4), full_shape=(10, 12, 9))
    assert torch.equal(result.probability, result.prior)
    torch.testing.assert_close(result.prior[..., 3:13, 2:14, 4:13], atlas[None, None])
    rebuilt = TemplateTransformer.from_config(model.config())
    rebuilt.load_state_dict(model.state_dict())
    assert torch.equal(rebuilt(image).probability, model(image).probability)


def test_an_input_on_another_device_is_refused_naming_both():
    model = TemplateTransformer("bch", ndim=2, width=2)
    with pytest.raises(ValueError, match=r"image is on meta but the model .* is on cpu"):
        model(torch.empty(1, 1, 16, 16, device="meta"))
