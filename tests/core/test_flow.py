"""Flows: exp by scaling and squaring, Lie bracket, BCH, trees, frames, Jacobians, folding.

Linear fields v(x) = A·(x − c) give closed forms (linear interpolation is exact for them, so the
only error left is the one under test); each closed-form test also shows that the wrong
convention (transposed axes, swapped order, flipped bracket sign) misses by far more than its
tolerance.
"""

from __future__ import annotations

import importlib
import itertools
import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.linalg import expm, logm

from napari_difftt.core.flow import (
    bch,
    choose_squarings,
    exp,
    exp_frames,
    flow_at,
    folding_fraction,
    integrate,
    jacobian,
    jacobian_det,
    lie_bracket,
)
from napari_difftt.core.flow import grid as grid_module
from napari_difftt.core.flow.grid import compose, identity
from napari_difftt.errors import SquaringCapWarning

SHAPE2 = (23, 31)
SHAPE3 = (14, 17, 20)
A2 = np.array([[0.05, -0.09], [0.04, 0.03]])
B2 = np.array([[-0.04, 0.06], [-0.08, 0.02]])
A3 = np.array([[0.04, -0.07, 0.03], [0.05, 0.02, -0.04], [-0.03, 0.08, 0.02]])
B3 = np.array([[-0.03, 0.04, -0.07], [0.06, -0.04, 0.02], [0.03, -0.05, 0.04]])
CASES = [(SHAPE2, A2, B2), (SHAPE3, A3, B3)]


def inside(shape, margin):
    """Index of the voxels at least ``margin`` from every border (border padding never acts)."""
    return (slice(None), slice(None), *[slice(margin, size - margin) for size in shape])


def smooth_field(shape, amplitude, seed, waves=2):
    """A smooth random velocity ``(1, n, *shape)`` float64 with max‖v‖ = ``amplitude`` voxels."""
    generator = torch.Generator().manual_seed(seed)
    n = len(shape)
    x = identity(shape, dtype=torch.float64)
    field = torch.zeros(1, n, *shape, dtype=torch.float64)
    period = torch.tensor(shape, dtype=torch.float64)
    for k in range(n):
        for _ in range(waves):
            frequency = (
                torch.randn(n, generator=generator, dtype=torch.float64) * 2 * math.pi / period
            )
            phase = 2 * math.pi * torch.rand(1, generator=generator, dtype=torch.float64)
            field[0, k] += torch.cos((frequency.view(-1, *[1] * n) * x).sum(0) + phase)
    return amplitude * field / field.norm(dim=1).max()


def max_error(a, b, index):
    return float((a - b)[index].abs().max())


# --- exp ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [SHAPE2, SHAPE3])
def test_exp_of_zero_is_zero(shape):
    zero = torch.zeros(2, len(shape), *shape)
    assert torch.equal(exp(zero), zero)
    assert torch.equal(exp(zero, squarings=7), zero)


@pytest.mark.parametrize("shape", [(9, 12), (6, 7, 9)])
def test_exp_of_a_constant_is_that_constant_everywhere(shape):
    """Border padding: with zeros padding the border voxels would be off by pixels."""
    n = len(shape)
    shift = torch.tensor([2.75, -1.5, 0.625][:n], dtype=torch.float64).view(1, n, *[1] * n)
    v = shift.expand(1, n, *shape).contiguous()
    torch.testing.assert_close(exp(v), v)
    torch.testing.assert_close(exp(v, squarings=9), v)


@pytest.mark.parametrize(("shape", "a", "b"), CASES)
def test_exp_of_a_linear_field_is_the_matrix_exponential(shape, a, b, linear_field):
    """exp(A·(x − c)) = (expm(A) − I)(x − c) in the interior of a non-square grid."""
    del b
    n = len(shape)
    got = exp(linear_field(a, shape), squarings=14)
    expected = linear_field(expm(a) - np.eye(n), shape)
    transposed = linear_field(expm(a.T) - np.eye(n), shape)  # axes in the wrong order
    index = inside(shape, 3)
    error = max_error(got, expected, index)
    assert error < 1e-4
    assert max_error(transposed, expected, index) > 100 * max(error, 1e-4)


@pytest.mark.parametrize(("shape", "a", "b"), CASES)
def test_exp_truncation_error_halves_per_squaring(shape, a, b, linear_field):
    del b
    n = len(shape)
    v = linear_field(a, shape)
    expected = linear_field(expm(a) - np.eye(n), shape)
    errors = [max_error(exp(v, squarings=k), expected, inside(shape, 3)) for k in range(2, 8)]
    ratios = np.array(errors[:-1]) / np.array(errors[1:])
    assert np.all((ratios > 1.8) & (ratios < 2.2)), ratios


@pytest.mark.parametrize("shape", [(40, 48), (18, 22, 26)])
def test_exp_is_inverse_consistent(shape):
    v = smooth_field(shape, 2.0, seed=3)
    index = inside(shape, 4)
    flow = float(exp(v)[index].abs().max())  # the residual without the inverse
    assert flow > 1.0
    # the residual is interpolation error (it halves when the same field is sampled twice as finely)
    for residual in (compose(exp(v), exp(-v)), compose(exp(-v), exp(v))):
        assert float(residual[index].abs().mean()) < 0.03 * flow
        assert float(residual[index].abs().max()) < 0.25 * flow


@pytest.mark.parametrize("shape", [(40, 48), (18, 22, 26)])
def test_exp_is_a_one_parameter_group(shape):
    """exp(s·v) ∘ exp(t·v) ≈ exp((s + t)·v)."""
    v = smooth_field(shape, 3.0, seed=4)
    index = inside(shape, 4)
    s, t = 0.3, 0.5
    error = max_error(compose(exp(s * v), exp(t * v)), exp((s + t) * v), index)
    assert error < 0.05
    assert max_error(exp(s * v), exp((s + t) * v), index) > 20 * error


def test_choose_squarings_keeps_the_step_under_max_step():
    v = torch.zeros(1, 2, 5, 6)
    assert choose_squarings(v) == 0
    v[0, 0, 2, 3] = 3.0
    v[0, 1, 2, 3] = 4.0  # ‖v‖ = 5 voxels → 5 / 2^4 ≤ 0.5 < 5 / 2^3
    assert choose_squarings(v) == 4
    assert choose_squarings(v, max_step=5.0) == 0
    assert choose_squarings(v * 1e9) == 20  # capped


def test_flow_at_and_frames_agree():
    shape = (24, 30)
    v = smooth_field(shape, 3.0, seed=5)
    frames = exp_frames(v, 4)
    assert frames.shape == (5, 1, 2, *shape)
    assert torch.equal(frames[0], torch.zeros_like(v))
    for k in range(1, 5):
        torch.testing.assert_close(frames[k], flow_at(v, k / 4), atol=0.06, rtol=0)
    torch.testing.assert_close(flow_at(v, 1.0), exp(v))
    torch.testing.assert_close(flow_at(v, 0.0), torch.zeros_like(v))


def test_flow_frames_of_a_linear_field_are_matrix_exponentials(linear_field):
    shape = SHAPE2
    frames = exp_frames(linear_field(A2, shape), 3, squarings=12)
    for k in range(4):
        expected = linear_field(expm(k / 3 * A2) - np.eye(2), shape)
        assert max_error(frames[k], expected, inside(shape, 3)) < 1e-4


# --- Lie bracket and BCH -----------------------------------------------------------------------


@pytest.mark.parametrize(("shape", "a", "b"), CASES)
def test_lie_bracket_of_linear_fields_is_the_commutator(shape, a, b, linear_field):
    got = lie_bracket(linear_field(a, shape), linear_field(b, shape))
    expected = linear_field(a @ b - b @ a, shape)
    torch.testing.assert_close(got, expected)  # exact everywhere, borders included
    assert max_error(-expected, expected, inside(shape, 0)) > 0.1  # the wrong sign fails by far


@pytest.mark.parametrize("shape", [(2, 7), (9, 10), (2, 5, 6), (7, 8, 9)])
def test_lie_bracket_is_the_same_with_and_without_autograd(shape):
    """Outside autograd the bracket adds the derivative's products region by region
    (jacobian.add_derivative_product): the same numbers to the bit as the recorded path."""
    v, w = smooth_field(shape, 2.0, seed=3), smooth_field(shape, 2.0, seed=4)
    with torch.no_grad():
        unrecorded = lie_bracket(v, w)
    recorded = lie_bracket(v.clone().requires_grad_(), w)
    assert recorded.requires_grad
    assert torch.equal(unrecorded, recorded.detach())
    assert float(unrecorded.abs().max()) > 0.01


@pytest.mark.parametrize(("shape", "a", "b"), CASES)
def test_bch_matches_the_matrix_logarithm_and_improves_with_order(shape, a, b, linear_field):
    """bch(v, w) ≈ log(exp(v) ∘ exp(w)) (w first) = logm(expm(A) expm(B)) for linear fields."""
    a, b = 4 * a, 4 * b  # large enough that each order is visible
    v, w = linear_field(a, shape), linear_field(b, shape)
    z = np.real(logm(expm(a) @ expm(b)))
    expected = linear_field(z, shape)
    everywhere = inside(shape, 0)
    errors = [max_error(bch(v, w, order), expected, everywhere) for order in range(1, 5)]
    assert all(later < 0.5 * earlier for earlier, later in itertools.pairwise(errors)), errors
    # the swapped product (a wrong bracket sign) misses by much more than order 2's error
    swapped = linear_field(np.real(logm(expm(b) @ expm(a))), shape)
    assert max_error(swapped, expected, everywhere) > 5 * errors[1]


@pytest.mark.parametrize("shape", [(40, 48), (16, 20, 24)])
def test_bch_error_against_composed_exponentials_falls_with_order(shape):
    v, w = smooth_field(shape, 3.0, seed=1), smooth_field(shape, 3.0, seed=2)
    reference = compose(exp(v, squarings=6), exp(w, squarings=6))
    index = inside(shape, 4)
    errors = [
        float((exp(bch(v, w, order), squarings=7) - reference)[index].norm(dim=1).mean())
        for order in range(1, 5)
    ]
    assert errors[1] < 0.4 * errors[0]
    assert errors[2] < 0.8 * errors[1]
    assert errors[3] < errors[2]
    # the opposite order of composition is far worse than order 2
    flipped = float(
        (compose(exp(w, squarings=6), exp(v, squarings=6)) - reference)[index].norm(dim=1).mean()
    )
    assert flipped > 2 * errors[1]


def test_bch_order_one_is_the_sum():
    v, w = smooth_field((9, 11), 1.0, seed=6), smooth_field((9, 11), 1.0, seed=7)
    torch.testing.assert_close(bch(v, w, 1), v + w)


# --- integrate ---------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["bch", "compose"])
@pytest.mark.parametrize("pieces", [1, 2, 3, 4, 5])
def test_integrate_is_the_ordered_product_of_exponentials(method, pieces, linear_field):
    """Φ = exp(v_T) ∘ … ∘ exp(v₁) (v₁ first) = expm(A_T)···expm(A₁) for linear pieces."""
    shape = SHAPE2
    rng = np.random.default_rng(pieces)
    matrices = [0.03 * rng.standard_normal((2, 2)) for _ in range(pieces)]
    velocities = torch.stack([linear_field(m, shape)[0] for m in matrices]).unsqueeze(
        0
    )  # (1, T, 2, *S)
    product = np.eye(2)
    for m in matrices:
        product = expm(m) @ product
    reverse = np.eye(2)
    for m in matrices:
        reverse = reverse @ expm(m)
    expected = linear_field(product - np.eye(2), shape)
    result = integrate(velocities, method=method, order=4, squarings=12)
    index = inside(shape, 6)  # the flow moves up to ~2 voxels: keep its paths off the border
    error = max_error(result.displacement, expected, index)
    assert error < 2e-4
    if pieces > 1:
        assert max_error(linear_field(reverse - np.eye(2), shape), expected, index) > 10 * error
    assert (result.velocity is None) == (method == "compose")


@pytest.mark.parametrize("pieces", [1, 2, 3, 4, 5])
def test_integrate_compose_tree_equals_sequential_composition(pieces):
    shape = (20, 26)
    velocities = [smooth_field(shape, 2.0, seed=10 + k) for k in range(pieces)]
    sequential = exp(velocities[0], squarings=6)
    for v in velocities[1:]:
        sequential = compose(exp(v, squarings=6), sequential)
    tree = integrate(velocities, method="compose", squarings=6).displacement
    index = inside(shape, 3)
    # equal up to interpolation (composition of resampled fields is only nearly associative)
    error = max_error(tree, sequential, index)
    assert error < 0.08
    if pieces > 1:
        backwards = exp(velocities[-1], squarings=6)
        for v in velocities[-2::-1]:
            backwards = compose(exp(v, squarings=6), backwards)
        assert max_error(backwards, sequential, index) > 5 * error


def test_integrate_bch_tree_equals_sequential_bch_for_two_pieces():
    shape = (16, 19)
    v1, v2 = smooth_field(shape, 1.5, seed=1), smooth_field(shape, 1.5, seed=2)
    result = integrate([v1, v2], method="bch", order=3)
    torch.testing.assert_close(result.velocity, bch(v2, v1, 3))  # v1 acts first
    torch.testing.assert_close(result.displacement, exp(bch(v2, v1, 3)))


def test_integrate_bch_velocity_inverts_the_flow():
    shape = (30, 36)
    velocities = torch.stack(
        [smooth_field(shape, 1.5, seed=20 + k)[0] for k in range(4)]
    ).unsqueeze(0)
    result = integrate(velocities, method="bch", order=2)
    residual = compose(exp(-result.velocity), result.displacement)
    index = inside(shape, 4)
    flow = float(result.displacement[index].abs().max())
    assert flow > 1.0
    assert max_error(residual, 0 * residual, index) < 0.1 * flow


def test_integrate_accepts_a_tensor_or_a_list_alike():
    shape = (10, 12)
    velocities = torch.stack([smooth_field(shape, 1.0, seed=k)[0] for k in range(3)]).unsqueeze(0)
    for method in ("bch", "compose"):
        torch.testing.assert_close(
            integrate(velocities, method=method).displacement,
            integrate(list(velocities.unbind(1)), method=method).displacement,
        )


# --- Jacobians and folding ---------------------------------------------------------------------


@pytest.mark.parametrize(("shape", "a", "b"), CASES)
def test_jacobian_det_of_a_linear_flow_is_det_expm(shape, a, b, linear_field):
    del b
    n = len(shape)
    u = linear_field(a, shape)
    at_voxel = (0, slice(None), slice(None), *[2] * n)
    torch.testing.assert_close(jacobian(u)[at_voxel], torch.tensor(a))  # ∂u_i/∂x_j = A_ij
    det = jacobian_det(exp(u, squarings=14))
    assert det.shape == (1, *shape)
    assert (
        max_error(
            det.unsqueeze(1),
            torch.full_like(det, np.linalg.det(expm(a))).unsqueeze(1),
            inside(shape, 4),
        )
        < 1e-4
    )
    # a linear displacement: det(I + A) exactly, borders included
    torch.testing.assert_close(jacobian_det(u), torch.full_like(det, np.linalg.det(np.eye(n) + a)))


@pytest.mark.parametrize(("shape", "amplitude"), [((40, 48), 12.0), ((20, 24, 28), 7.0)])
def test_exp_does_not_fold_where_the_velocity_as_displacement_does(shape, amplitude):
    v = smooth_field(shape, amplitude, seed=1)
    assert float(jacobian_det(v).min()) <= 0
    assert float(folding_fraction(v)) > 0
    assert float(jacobian_det(exp(v)).min()) > 0
    assert float(folding_fraction(exp(v), scheme="central")) == 0


@pytest.mark.parametrize("shape", [(7, 8), (6, 7, 8)])
def test_digital_folding_catches_a_fold_central_differences_miss(shape):
    """One voxel pushed 1.5 voxels along axis 0 jumps over its neighbour: central differences
    skip the voxel itself (det ≥ 0.25 everywhere) but the forward simplex at it has det −0.5."""
    n = len(shape)
    u = torch.zeros(1, n, *shape, dtype=torch.float64)
    centre = tuple(size // 2 for size in shape)
    u[(0, 0, *centre)] = 1.5
    assert float(jacobian_det(u).min()) >= 0.25 - 1e-12
    assert float(folding_fraction(u, scheme="central")) == 0
    # the folded edge joins the voxel and its next neighbour along axis 0: both are flagged
    interior_voxels = math.prod(size - 2 for size in shape)
    assert float(folding_fraction(u, scheme="digital")) == pytest.approx(2 / interior_voxels)
    # a smaller push does not fold, by either test
    u[(0, 0, *centre)] = 0.9
    assert float(folding_fraction(u, scheme="digital")) == 0


# The 8 vertices of the cube [1, 2]³ of a 4³ grid moved (voxels, (n, 2, 2, 2)): every corner
# simplex at every interior voxel keeps det ≥ 0.15, but two central tetrahedra turn over, one of
# each parity: (1,1,1) (1,2,2) (2,1,2) (2,2,1) of the cube at (1, 1, 1), and (3,2,2) (3,1,1)
# (2,2,1) (2,1,2) of the cube at (2, 1, 1). Found by minimising those dets under the corner
# constraints, rounded to 0.1 voxel.
TWISTED_CUBE = [
    [[[-0.3, -0.2], [-0.2, -0.4]], [[0.1, 0.2], [0.1, 0.1]]],
    [[[0.1, 0.2], [-0.2, 0.0]], [[0.1, 0.1], [-0.2, -0.1]]],
    [[[-0.1, -0.2], [0.1, 0.0]], [[-0.4, -1.0], [0.9, 0.4]]],
]


def test_digital_folding_checks_the_central_tetrahedra_in_3d():
    u = torch.zeros(1, 3, 4, 4, 4, dtype=torch.float64)
    u[0, :, 1:3, 1:3, 1:3] = torch.tensor(TWISTED_CUBE, dtype=torch.float64)
    assert float(jacobian_det(u).min()) > 0
    assert float(folding_fraction(u, scheme="central")) == 0
    # flagged at the two cubes' first voxels, (1, 1, 1) and (2, 1, 1): 2 of the 2³ interior ones
    assert float(folding_fraction(u, scheme="digital")) == pytest.approx(2 / 8)
    assert float(folding_fraction(0.5 * u, scheme="digital")) == 0  # half the twist holds


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_all_finite_finds_one_bad_value_anywhere(dtype, bad):
    """One NaN or ±Inf at any position (the vectorised body and the tail of a reduction)."""
    from napari_difftt.core.flow.checks import all_finite

    field = torch.randn(1, 3, 5, 6, 7).to(dtype)
    assert all_finite(field) and all_finite(field[:, :0])
    for index in [0, 1, 17, 300, field.numel() - 2, field.numel() - 1]:
        damaged = field.clone()
        damaged.view(-1)[index] = bad
        assert not all_finite(damaged), index


def _digital_folds_by_loops(u: np.ndarray) -> np.ndarray:
    """The digital test voxel by voxel: ``u`` ``(n, *S)`` → bool ``(*S − 2)``."""
    n, shape = u.shape[0], u.shape[1:]
    phi = u + np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"))
    out = np.zeros([s - 2 for s in shape], dtype=bool)
    for index in itertools.product(*[range(1, s - 1) for s in shape]):
        at = np.array(index)

        def point(offset, at=at):
            return phi[(slice(None), *(at + np.array(offset)))]

        dets = []
        for signs in itertools.product((-1, 1), repeat=n):
            columns = [sign * (point(np.eye(n, dtype=int)[axis] * sign) - point([0] * n))
                       for axis, sign in enumerate(signs)]
            dets.append(np.linalg.det(np.stack(columns, 1)))
        if n == 3:
            for origin, apexes, sign in (((0, 0, 0), ((0, 1, 1), (1, 0, 1), (1, 1, 0)), 1),
                                         ((1, 1, 1), ((1, 0, 0), (0, 1, 0), (0, 0, 1)), -1)):
                columns = [point(apex) - point(origin) for apex in apexes]
                dets.append(sign * np.linalg.det(np.stack(columns, 1)))
        out[tuple(i - 1 for i in index)] = min(dets) <= 0
    return out


@pytest.mark.parametrize("shape", [(11, 6, 7), (9, 8), (3, 5, 4)])
def test_fold_tests_in_slabs_equal_voxel_by_voxel_definitions(shape, monkeypatch):
    """Both fold tests run in slabs of planes along the first axis (cache-sized at 128³): with
    slabs of 4 planes and a partial last one they still equal the definitions — np.gradient's
    central/one-sided differences for det ∇φ and a loop over every simplex for the digital test."""
    jacobian_module = importlib.import_module("napari_difftt.core.flow.jacobian")
    monkeypatch.setattr(jacobian_module, "_SLAB_VOXELS", 1)  # 4 planes per slab (the minimum)
    u = 0.45 * torch.randn(1, len(shape), *shape, generator=torch.Generator().manual_seed(3),
                           dtype=torch.float64)
    field = u[0].numpy()
    expected_det = np.linalg.det(np.moveaxis(np.stack(
        [np.stack(np.gradient(field[i]), 0) for i in range(len(shape))], 0), (0, 1), (-2, -1))
        + np.eye(len(shape)))
    np.testing.assert_allclose(jacobian_det(u)[0].numpy(), expected_det, rtol=1e-10, atol=1e-12)
    expected = _digital_folds_by_loops(field)
    assert 0 < expected.mean() < 1  # the field folds somewhere, not everywhere
    assert float(folding_fraction(u, "digital")) == pytest.approx(expected.mean())
    monkeypatch.setattr(jacobian_module, "_SLAB_VOXELS", 10**9)  # one slab: the same folds
    assert float(folding_fraction(u, "digital")) == pytest.approx(expected.mean())


@pytest.mark.parametrize("shape", [(6, 7), (5, 6, 7)])
def test_identity_and_smooth_flows_do_not_fold(shape):
    zero = torch.zeros(2, len(shape), *shape)
    for scheme in ("central", "digital"):
        assert folding_fraction(zero, scheme=scheme).tolist() == [0.0, 0.0]
    assert torch.equal(jacobian_det(zero), torch.ones(2, *shape))


def test_folding_fraction_of_a_reflection_is_one():
    u = torch.zeros(1, 2, 6, 7, dtype=torch.float64)
    u[:, 1] = -2 * identity((6, 7), dtype=torch.float64)[1] + 6  # x ↦ 6 − x: mirror
    assert float(folding_fraction(u, "central")) == 1.0
    assert float(folding_fraction(u, "digital")) == 1.0


# --- gradients, dtypes, devices ----------------------------------------------------------------


def off_grid(*shape, seed=0, scale=0.6):
    """Random displacements kept away from integer voxel offsets (interpolation kinks)."""
    generator = torch.Generator().manual_seed(seed)
    magnitude = 0.15 + scale * torch.rand(*shape, generator=generator, dtype=torch.float64)
    sign = torch.where(torch.rand(*shape, generator=generator) < 0.5, -1.0, 1.0).double()
    return (magnitude * sign).requires_grad_()


@pytest.mark.parametrize("shape", [(5, 6), (4, 5, 6)])
def test_gradcheck_exp_bch_integrate_frames(shape):
    n = len(shape)
    fast = n == 3  # the full 3D check takes minutes; fast mode projects on random directions
    v, w = off_grid(1, n, *shape, seed=1), off_grid(1, n, *shape, seed=2)
    assert torch.autograd.gradcheck(lambda x: exp(x, squarings=2), (v,), fast_mode=fast)
    assert torch.autograd.gradcheck(lambda x, y: bch(x, y, 4), (v, w), fast_mode=fast)
    for method in ("bch", "compose"):
        assert torch.autograd.gradcheck(
            lambda x, y, m=method: integrate([x, y], method=m, squarings=1).displacement,
            (v * 0.5, w * 0.5),
            fast_mode=fast,
        )
    assert torch.autograd.gradcheck(lambda x: exp_frames(x, 2, squarings=1), (v,), fast_mode=fast)
    assert torch.autograd.gradcheck(jacobian_det, (v,), fast_mode=fast)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtypes_are_preserved(dtype):
    v = torch.randn(1, 3, 5, 6, 7, dtype=dtype)
    assert exp(v).dtype == dtype
    assert bch(v, v, 4).dtype == dtype
    assert integrate([v, v], method="bch").displacement.dtype == dtype
    assert integrate([v, v], method="compose").displacement.dtype == dtype
    assert exp_frames(v, 2).dtype == dtype
    assert jacobian_det(v).dtype == dtype


def test_float32_exp_matches_float64():
    v = smooth_field((18, 22, 26), 3.0, seed=8)
    torch.testing.assert_close(
        exp(v.float(), squarings=7).double(), exp(v, squarings=7), atol=1e-4, rtol=0
    )


@pytest.mark.cuda
def test_cuda_matches_cpu():
    v, w = smooth_field((12, 14, 16), 3.0, seed=1), smooth_field((12, 14, 16), 3.0, seed=2)
    got = exp(v.cuda(), squarings=7)
    assert got.device.type == "cuda"
    torch.testing.assert_close(got.cpu(), exp(v, squarings=7))
    torch.testing.assert_close(bch(v.cuda(), w.cuda(), 4).cpu(), bch(v, w, 4))
    result = integrate(torch.stack([v, w], 1).cuda(), method="compose", squarings=6)
    torch.testing.assert_close(
        result.displacement.cpu(),
        integrate(torch.stack([v, w], 1), method="compose", squarings=6).displacement,
    )


# --- the memory-lean backward of exp -----------------------------------------------------------


def plain_autograd_exp(velocity, squarings):
    """Scaling and squaring written naively: autograd records every step (the reference)."""
    shape = velocity.shape[2:]
    scale = torch.tensor([2.0 / (s - 1) for s in reversed(shape)], dtype=velocity.dtype)
    axes = [torch.linspace(-1, 1, s, dtype=velocity.dtype) for s in shape]
    base = torch.stack(torch.meshgrid(*axes, indexing="ij")[::-1], dim=-1).unsqueeze(0)
    u = velocity.flip(1).movedim(1, -1) * scale / 2**squarings  # (B, *S, n) normalised, (x, y, z)
    for _ in range(squarings):
        sampled = F.grid_sample(
            u.movedim(-1, 1), base + u, padding_mode="border", align_corners=True
        )
        u = u + sampled.movedim(1, -1)
    return (u / scale).movedim(-1, 1).flip(1)


@pytest.mark.parametrize("shape", [(12, 10), (8, 6, 10)])
@pytest.mark.parametrize(("dtype", "tolerance"), [(torch.float32, 1e-6), (torch.float64, 1e-12)])
@pytest.mark.parametrize("count", [1, 2])
def test_exp_and_its_gradient_equal_plain_autograd(
    shape, dtype, tolerance, count, threads, monkeypatch
):
    monkeypatch.setattr(grid_module, "_MIN_POINTS_PER_CHUNK", 1)  # split even tiny grids
    threads(count)
    v = smooth_field(shape, 3.0, seed=3).to(dtype).requires_grad_()
    weights = torch.randn(v.shape, generator=torch.Generator().manual_seed(4)).to(dtype)
    for squarings in (0, 1, 3, 7):
        got = exp(v, squarings)
        assert type(got.grad_fn).__name__ == "ScalingAndSquaringBackward"
        expected = plain_autograd_exp(v, squarings)
        torch.testing.assert_close(got, expected, rtol=tolerance, atol=tolerance)
        with torch.no_grad():
            torch.testing.assert_close(exp(v, squarings), got, rtol=0, atol=0)
        (grad,) = torch.autograd.grad(got, v, weights)
        (expected_grad,) = torch.autograd.grad(expected, v, weights)
        torch.testing.assert_close(grad, expected_grad, rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("shape", [(5, 6), (4, 5, 6)])
@pytest.mark.parametrize("squarings", [0, 1, 3])
def test_gradcheck_exp_memory_lean_backward(shape, squarings):
    v = off_grid(1, len(shape), *shape, seed=5, scale=0.4)
    assert torch.autograd.gradcheck(lambda x: exp(x, squarings), (v,))


def test_exp_stores_one_field_per_squaring_for_backward():
    v = torch.randn(1, 3, 4, 5, 6, requires_grad=True)
    for squarings in (0, 1, 5):
        saved: list[torch.Tensor] = []  # what autograd keeps for backward (public hooks)

        def keep(tensor: torch.Tensor, saved: list = saved) -> torch.Tensor:
            saved.append(tensor)
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(keep, lambda tensor: tensor):
            exp(v, squarings)
        assert len(saved) == squarings
        assert all(t.shape == v.shape for t in saved)


def test_exp_backward_accepts_a_broadcast_output_gradient(threads, monkeypatch):
    monkeypatch.setattr(grid_module, "_MIN_POINTS_PER_CHUNK", 1)
    threads(2)
    v = torch.randn(1, 3, 4, 5, 6, dtype=torch.float64, requires_grad=True)
    (from_sum,) = torch.autograd.grad(exp(v, 3).sum(), v)  # gradient (1, 3, 4, 5, 6) of stride 0
    (from_ones,) = torch.autograd.grad(exp(v, 3), v, torch.ones_like(v))
    torch.testing.assert_close(from_sum, from_ones, rtol=0, atol=0)


def test_exp_refuses_second_derivatives_clearly():
    v = torch.randn(1, 2, 5, 6, dtype=torch.float64, requires_grad=True)
    with pytest.raises(RuntimeError, match="second derivatives"):
        torch.autograd.grad(exp(v, 2).square().sum(), v, create_graph=True)
    (grad,) = torch.autograd.grad(exp(v, 2).square().sum(), v)  # first order still works
    assert torch.isfinite(grad).all()


@pytest.mark.cuda
def test_cuda_exp_gradient_equals_plain_autograd():
    v = smooth_field((8, 6, 10), 3.0, seed=3).cuda().requires_grad_()
    weights = torch.randn(v.shape, dtype=v.dtype, device="cuda")
    for squarings in (0, 1, 3):
        got = exp(v, squarings)
        assert got.device.type == "cuda"
        with torch.device("cuda"):
            expected = plain_autograd_exp(v, squarings)
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
        (grad,) = torch.autograd.grad(got, v, weights)
        (expected_grad,) = torch.autograd.grad(expected, v, weights)
        torch.testing.assert_close(grad, expected_grad, rtol=1e-12, atol=1e-12)
    v = off_grid(1, 3, 4, 5, 6, seed=5, scale=0.4).detach().cuda().requires_grad_()
    assert torch.autograd.gradcheck(lambda x: exp(x, 2), (v,))


# --- bad input ---------------------------------------------------------------------------------


def test_exp_rejects_bad_velocities_naming_the_argument():
    with pytest.raises(ValueError, match=r"velocity must have shape .*got \(1, 2, 5\)"):
        exp(torch.zeros(1, 2, 5))
    with pytest.raises(ValueError, match=r"velocity must have 3 components .*got 2 channels"):
        exp(torch.zeros(1, 2, 4, 5, 6))
    with pytest.raises(TypeError, match=r"velocity must have a floating dtype.*torch.int32"):
        exp(torch.zeros(1, 2, 4, 5, dtype=torch.int32))
    bad = torch.zeros(1, 2, 4, 5)
    bad[0, 0, 1, 1] = float("nan")
    with pytest.raises(ValueError, match=r"velocity contains NaN or Inf"):
        exp(bad)
    bad[0, 0, 1, 1] = float("-inf")
    with pytest.raises(ValueError, match=r"velocity contains NaN or Inf"):
        exp(bad, squarings=3)


@pytest.mark.parametrize(
    ("squarings", "error"),
    [(-1, ValueError), (21, ValueError), (2.0, TypeError), (True, TypeError), ("7", TypeError)],
)
def test_squarings_outside_0_to_20_are_rejected(squarings, error):
    v = torch.zeros(1, 2, 4, 5)
    with pytest.raises(error, match=r"squarings must be .*0\.\.20.*got"):
        exp(v, squarings=squarings)
    with pytest.raises(error, match=r"squarings"):
        integrate([v, v], method="compose", squarings=squarings)
    with pytest.raises(error, match=r"squarings"):
        integrate([v, v], method="bch", squarings=squarings)


def test_other_bad_arguments_are_named():
    v = torch.zeros(1, 2, 4, 5)
    with pytest.raises(ValueError, match=r"max_step must be a positive number of voxels, got 0"):
        exp(v, max_step=0)
    with pytest.raises(ValueError, match=r"t must be a finite number"):
        flow_at(v, float("nan"))
    with pytest.raises(ValueError, match=r"n must be a positive int"):
        exp_frames(v, 0)
    with pytest.raises(ValueError, match=r"order must be an int in 1..4, got 5"):
        bch(v, v, 5)
    with pytest.raises(ValueError, match=r"order must be an int in 1..4, got 0"):
        integrate([v], order=0)
    with pytest.raises(ValueError, match=r"method must be 'bch' or 'compose', got 'euler'"):
        integrate([v], method="euler")
    with pytest.raises(ValueError, match=r"velocities must hold at least one field"):
        integrate([])
    with pytest.raises(ValueError, match=r"velocities must have shape \(B, T, n, \*S\)"):
        integrate(torch.zeros(1, 2, 4, 5))
    with pytest.raises(
        ValueError, match=r"velocities\[0\] and velocities\[1\] must have the same shape"
    ):
        integrate([v, torch.zeros(1, 2, 4, 6)])
    with pytest.raises(ValueError, match=r"velocities\[1\] must have 2 components"):
        integrate([v, torch.zeros(1, 3, 4, 5)])
    with pytest.raises(ValueError, match=r"v and w must have the same shape"):
        bch(v, torch.zeros(2, 2, 4, 5))  # no broadcasting over the batch
    with pytest.raises(TypeError, match=r"v is torch.float32 but w is torch.float64"):
        lie_bracket(v, v.double())
    with pytest.raises(ValueError, match=r"v is on cpu but w is on meta"):
        lie_bracket(v, v.to("meta"))
    with pytest.raises(ValueError, match=r"scheme"):
        jacobian_det(v, scheme="forward")
    with pytest.raises(ValueError, match=r"scheme must be 'central' or 'digital'"):
        folding_fraction(v, scheme="simplex")
    with pytest.raises(ValueError, match=r"displacement must have 2 components"):
        folding_fraction(torch.zeros(1, 3, 4, 5))


# every public field function, called on one bad field (argument name, call)
FIELD_FUNCTIONS = [
    ("velocity", lambda f: exp(f)),
    ("velocity", lambda f: choose_squarings(f)),
    ("velocity", lambda f: flow_at(f, 0.5)),
    ("velocity", lambda f: exp_frames(f, 2)),
    ("field", lambda f: jacobian(f)),
    ("v", lambda f: lie_bracket(f, f)),
    ("v", lambda f: bch(f, f)),
    (r"velocities\[0\]", lambda f: integrate([f, f])),
    ("displacement", lambda f: jacobian_det(f)),
    ("displacement", lambda f: folding_fraction(f, "digital")),
]
_NAN = torch.zeros(1, 2, 4, 5).index_put_((torch.tensor([0]),) * 4, torch.tensor(math.nan))
BAD_FIELDS = [
    ("wrong rank", torch.zeros(1, 2, 5), ValueError, r"must have shape \(B, C, H, W\)"),
    ("a 2D array", torch.zeros(4, 5), ValueError, r"must have shape \(B, C, H, W\)"),
    ("int", torch.zeros(1, 2, 4, 5, dtype=torch.int64), TypeError, "floating dtype"),
    ("bool", torch.zeros(1, 2, 4, 5, dtype=torch.bool), TypeError, "floating dtype"),
    ("NaN", _NAN, ValueError, "contains NaN or Inf"),
    ("B = 0", torch.zeros(0, 2, 4, 5), ValueError, r"empty batch \(B = 0\)"),
    ("channels", torch.zeros(1, 3, 4, 5), ValueError, "must have 2 components"),
    ("numpy", np.zeros((1, 2, 4, 5)), TypeError, "must be a torch.Tensor"),
]


@pytest.mark.parametrize(("name", "call"), FIELD_FUNCTIONS)
@pytest.mark.parametrize(("case", "field", "error", "message"), BAD_FIELDS,
                         ids=[b[0] for b in BAD_FIELDS])
def test_every_field_function_checks_its_input_the_same_way(
    name, call, case, field, error, message
):
    """Every flow function checks its input (wrong rank, int, NaN, bool, B = 0) and names its
    argument in the error."""
    with pytest.raises(error, match=rf"{name} .*{message}|{name} {message}"):
        call(field)


@pytest.mark.parametrize("magnitude", [1e19, 3e38])
def test_huge_velocities_do_not_overflow_and_warn_of_the_cap(magnitude):
    """max‖v‖ ≥ 1e19 overflowed float32's norm (OverflowError from ceil(inf)); 1e6 and more
    silently capped the squarings at 20 with steps of several voxels."""
    v = torch.full((1, 2, 4, 5), magnitude)
    with pytest.warns(SquaringCapWarning, match=r"capped at 20, the first step is \S+ voxels"):
        assert choose_squarings(v) == 20
    with pytest.warns(SquaringCapWarning):
        assert torch.isfinite(exp(v)).all()


def test_squaring_cap_warning_gives_the_step_reached():
    v = torch.zeros(1, 2, 4, 5)
    v[:, 0] = 1e7  # 1e7 / 2^20 ≈ 9.54 voxels
    with pytest.warns(SquaringCapWarning, match=r"the first step is 9\.54 voxels"):
        exp(v)
    v[:, 0] = 2**19  # exactly 20 squarings reach 0.5 voxel: no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error", SquaringCapWarning)
        assert choose_squarings(v) == 20
