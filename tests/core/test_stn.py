"""Classifier modules: parameter counts, identity at initialisation, field semantics, gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from napari_difftt.core.classification.stn import (
    MODEL_NAMES,
    DiffeomorphicSTN,
    SmallCNN,
    TPSTransformer,
    build_classifier,
    gradient_penalty,
)
from napari_difftt.core.flow import exp, folding_fraction
from napari_difftt.core.flow.checks import check_device
from napari_difftt.core.flow.velocity import VelocitySpace


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# --------------------------------------------------------------------------------------------
# sizes (the paper: CNN ≈ 27 k; TPS +26 998 (2×2) … +52 702 (16×16); field models +29 552)


def test_parameter_counts_match_the_paper():
    assert count(SmallCNN()) == 27_100
    assert count(TPSTransformer((28, 28), 2)) == 26_998
    assert count(TPSTransformer((28, 28), 16)) == 52_702
    for control in (3, 5, 12):
        assert count(TPSTransformer((28, 28), control)) == 26_590 + 51 * 2 * control**2
    field = count(DiffeomorphicSTN(2))
    assert abs(field - 29_552) / 29_552 < 0.02
    assert count(DiffeomorphicSTN(2, integrate=False)) == field


def test_every_named_model_builds_and_classifies():
    image = torch.rand(3, 1, 28, 28)
    for name in MODEL_NAMES:
        model = build_classifier(name)
        output = model(image)
        assert output.logits.shape == (3, 10)
        assert (output.transform is None) == (name == "cnn")
    with pytest.raises(ValueError, match="unknown model 'tps4'; choose from cnn, tps2"):
        build_classifier("tps4")


# --------------------------------------------------------------------------------------------
# identity at initialisation


@pytest.mark.parametrize("name", [n for n in MODEL_NAMES if n != "cnn"])
def test_transformers_start_as_the_identity(name):
    image = torch.rand(2, 1, 28, 28, dtype=torch.float64)
    transform = build_classifier(name).transformer.double()(image)
    assert torch.count_nonzero(transform.displacement) == 0
    torch.testing.assert_close(transform.warped, image, atol=1e-12, rtol=0)


def test_diffeomorphic_stn_works_in_3d_on_any_channels():
    stn = DiffeomorphicSTN(3, channels=2).double()
    image = torch.rand(2, 2, 16, 17, 18, dtype=torch.float64)
    out = stn(image)
    assert out.warped.shape == image.shape
    assert out.displacement.shape == out.velocity.shape == (2, 3, 16, 17, 18)
    torch.testing.assert_close(out.warped, image, atol=1e-12, rtol=0)


def test_inputs_are_checked():
    with pytest.raises(ValueError, match="at least 16 voxels along every spatial axis"):
        DiffeomorphicSTN(2)(torch.rand(1, 1, 12, 28))
    with pytest.raises(ValueError, match="2 spatial axes"):
        DiffeomorphicSTN(2)(torch.rand(1, 1, 16, 16, 16))
    with pytest.raises(ValueError, match=r"spatial shape \(28, 28\)"):
        TPSTransformer((28, 28), 3)(torch.rand(1, 1, 20, 28))
    with pytest.raises(ValueError, match="grid must be an int >= 2"):
        DiffeomorphicSTN(2, grid=1)


# --------------------------------------------------------------------------------------------
# what the fields mean


def _set_linear_velocity(stn: DiffeomorphicSTN, rate: float) -> None:
    """Head bias → coarse field v_y = rate · y_normalised, i.e. ∂v_y/∂y = rate (voxels/voxel)."""
    grid = stn.grid
    y = torch.linspace(-1, 1, grid).view(grid, 1).expand(grid, grid)
    coarse = torch.stack([rate * y, torch.zeros_like(y)])
    with torch.no_grad():
        stn.head.bias.copy_(coarse.flatten())


def test_velocity_is_integrated_or_used_directly():
    image = torch.rand(2, 1, 24, 20)
    diffeo, plain = DiffeomorphicSTN(2, squarings=6), DiffeomorphicSTN(2, integrate=False)
    plain.load_state_dict(diffeo.state_dict())
    _set_linear_velocity(diffeo, -2.0)
    _set_linear_velocity(plain, -2.0)
    a, b = diffeo(image), plain(image)
    torch.testing.assert_close(a.velocity, b.velocity)
    # the bilinearly upsampled coarse field is exactly linear, in voxels: v_y = −2 (y − c)
    centre = (24 - 1) / 2
    expected = -2.0 * (torch.arange(24.0) - centre)
    torch.testing.assert_close(a.velocity[0, 0, :, 5], expected, atol=1e-4, rtol=0)
    torch.testing.assert_close(a.displacement, exp(a.velocity, 6))
    torch.testing.assert_close(b.displacement, b.velocity)
    # used directly, −2 (y − c) folds every pixel (det = 1 − 2 < 0); its exponential never folds
    assert float(folding_fraction(b.displacement).min()) == 1.0
    assert float(folding_fraction(a.displacement).max()) == 0.0


def test_a_velocity_space_with_factor_one_is_the_bounded_lattice_field():
    space = VelocitySpace("dense", factor=1, bound=5.0)
    image = torch.rand(1, 1, 24, 20)
    diffeo = DiffeomorphicSTN(2, squarings=6, velocity=space)
    plain = DiffeomorphicSTN(2, integrate=False, velocity=space)
    plain.load_state_dict(diffeo.state_dict())
    for stn in (diffeo, plain):
        _set_linear_velocity(stn, 0.4)
    with torch.no_grad():
        a, b = diffeo(image), plain(image)
    # raw lattice value 0.4 · y_normalised, bounded as 5 · tanh(·), in image voxels
    expected = 5.0 * torch.tanh(0.4 * torch.linspace(-1, 1, 24))
    torch.testing.assert_close(a.velocity[0, 0, :, 7], expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(a.velocity[:, 1], torch.zeros_like(a.velocity[:, 1]))
    torch.testing.assert_close(a.displacement, exp(a.velocity, 6))
    torch.testing.assert_close(b.displacement, b.velocity)


def test_a_coarse_velocity_space_bounds_the_flow_and_keeps_it_fold_free():
    image = torch.rand(2, 1, 28, 28)
    bounded = DiffeomorphicSTN(2, squarings=8, velocity=VelocitySpace("bspline", factor=2,
                                                                      lattice=4, bound=3.0))
    free = DiffeomorphicSTN(2, squarings=8)
    for stn in (bounded, free):
        _set_linear_velocity(stn, -40.0)  # a contraction far beyond what 28 pixels can hold
    with torch.no_grad():
        out, unbounded = bounded(image), free(image)
    assert float(unbounded.velocity.abs().max()) > 100
    assert float(out.velocity.abs().max()) <= 3.0 + 1e-5
    # the flow of a field bounded by 3 voxels per component moves no point further than 3·√2
    assert float(out.displacement.norm(dim=1).max()) <= 3.0 * 2**0.5 + 1e-4
    assert float(folding_fraction(out.displacement, "digital").max()) == 0.0
    assert out.displacement.shape == out.velocity.shape == (2, 2, 28, 28)


def test_field_stn_velocity_space_is_checked_and_passed_through():
    space = VelocitySpace("dense", factor=4, bound=8.0)
    assert build_classifier("diffeo", velocity=space).transformer.velocity_space is space
    assert build_classifier("nondiffeo", velocity=space).transformer.velocity_space is space
    with pytest.raises(TypeError, match="VelocitySpace"):
        DiffeomorphicSTN(2, velocity="bspline")
    with pytest.raises(ValueError, match=r"\(30, 30\) is not divisible by the velocity factor 4"):
        DiffeomorphicSTN(2, velocity=space)(torch.rand(1, 1, 30, 30))


def test_field_stn_with_a_velocity_space_gradcheck_wrt_head():
    space = VelocitySpace("bspline", factor=2, lattice=4, bound=4.0)
    stn = _perturbed(DiffeomorphicSTN(2, grid=3, squarings=3, velocity=space), 3)
    assert _gradcheck_wrt_head_bias(stn, torch.rand(1, 1, 16, 16, dtype=torch.float64))


def test_gradient_penalty_of_a_linear_field_is_its_frobenius_norm():
    matrix = torch.tensor([[0.3, -1.2], [0.5, 2.0]], dtype=torch.float64)
    y, x = torch.meshgrid(torch.arange(9.0), torch.arange(11.0), indexing="ij")
    field = torch.einsum("ij,jhw->ihw", matrix, torch.stack([y, x]).double()).unsqueeze(0)
    assert float(gradient_penalty(field)) == pytest.approx(float(matrix.square().sum()), rel=1e-12)


def test_penalised_loss_adds_lambda_times_the_penalty():
    torch.manual_seed(0)
    model = build_classifier("diffeo-reg")
    with torch.no_grad():
        model.transformer.head.bias.normal_(0, 0.1)
    image, labels = torch.rand(4, 1, 28, 28), torch.tensor([0, 1, 2, 3])
    output = model(image)
    ce = F.cross_entropy(output.logits, labels)
    penalty = gradient_penalty(output.transform.displacement)
    assert float(penalty) > 0
    torch.testing.assert_close(model.loss(output, labels), ce + 10.0 * penalty)
    unpenalised = build_classifier("diffeo")
    assert unpenalised.penalty == 0.0


# --------------------------------------------------------------------------------------------
# gradients flow (float64 finite differences on tiny inputs)


def _perturbed(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Move a transformer away from the identity (where bilinear sampling has kinks)."""
    torch.manual_seed(seed)
    with torch.no_grad():
        module.head.weight.normal_(0, 0.05)
        module.head.bias.normal_(0, 0.1)
    return module.double()


def _gradcheck_wrt_head_bias(stn: torch.nn.Module, image: torch.Tensor) -> bool:
    """float64 gradcheck of the warped image with respect to the localisation head's bias."""
    params = dict(stn.named_parameters())

    def warped_by_head(bias: torch.Tensor) -> torch.Tensor:
        return functional_call(stn, {**params, "head.bias": bias}, (image,)).warped

    bias = params["head.bias"].detach().clone().requires_grad_(True)
    return torch.autograd.gradcheck(warped_by_head, (bias,))


@pytest.mark.parametrize("integrate", [True, False])
def test_field_stn_gradcheck_wrt_image_and_head(integrate):
    stn = _perturbed(DiffeomorphicSTN(2, integrate=integrate, grid=3, squarings=3), 1)
    image = torch.rand(1, 1, 16, 16, dtype=torch.float64, requires_grad=True)
    # fast mode: a random projection of the full Jacobian, checked against finite differences
    assert torch.autograd.gradcheck(lambda x: stn(x).warped, (image,), fast_mode=True)
    assert _gradcheck_wrt_head_bias(stn, image.detach())


def test_tps_stn_gradcheck_wrt_head_and_3d_field_stn_gradients():
    stn = _perturbed(TPSTransformer((16, 16), 2), 2)
    assert _gradcheck_wrt_head_bias(stn, torch.rand(1, 1, 16, 16, dtype=torch.float64))

    stn3 = _perturbed(DiffeomorphicSTN(3, grid=2, squarings=2), 3)
    volume = torch.rand(1, 1, 16, 16, 16, dtype=torch.float64)
    stn3(volume).warped.square().sum().backward()
    for name, parameter in stn3.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
    assert float(stn3.head.weight.grad.abs().max()) > 0


@pytest.mark.parametrize("name", ["cnn", "tps3", "diffeo"])
def test_an_input_on_another_device_is_refused_naming_both(name):
    """A CPU model given an input elsewhere gave torch's raw device error."""
    model = build_classifier(name)
    with pytest.raises(ValueError, match=r"image is on meta but the model \w+ is on cpu"):
        model(torch.zeros(2, 1, 28, 28, device="meta"))


def test_check_device_names_both_devices():
    with pytest.raises(ValueError, match=r"weights is on meta but the model Linear is on cpu"):
        check_device("weights", torch.zeros(1, device="meta"), torch.nn.Linear(1, 1))
    check_device("weights", torch.zeros(1), torch.nn.Linear(1, 1))  # same device: accepted
