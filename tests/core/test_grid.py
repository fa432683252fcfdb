"""Grids, voxel <-> normalised conversion, warp, compose and the threaded CPU sampler."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from napari_difftt.core.flow import grid as grid_module
from napari_difftt.core.flow.grid import (
    affine_of_index,
    compose,
    displaced,
    identity,
    normalised_identity,
    sample,
    sample_backward,
    squared_length,
    to_normalised,
    to_voxel,
    warp,
)

A2 = np.array([[0.04, -0.07], [0.03, 0.02]])
B2 = np.array([[-0.03, 0.05], [-0.06, 0.01]])
A3 = np.array([[0.03, -0.05, 0.02], [0.04, 0.01, -0.03], [-0.02, 0.06, 0.02]])
B3 = np.array([[-0.02, 0.03, -0.05], [0.05, -0.03, 0.01], [0.02, -0.04, 0.03]])


def interior(shape, margin):
    return (slice(None), slice(None), *[slice(margin, size - margin) for size in shape])


# --- identity and conversions ------------------------------------------------------------------


def test_identity_is_array_order_voxel_coordinates():
    grid = identity((3, 4, 5))
    assert grid.shape == (3, 3, 4, 5)
    assert grid[:, 2, 1, 4].tolist() == [2.0, 1.0, 4.0]


def test_normalised_identity_is_xyz_channels_last_with_corners_at_pm1():
    grid = normalised_identity((3, 5), dtype=torch.float64)
    assert grid.shape == (1, 3, 5, 2)
    # channel 0 is x (last array axis), channel 1 is y (first array axis)
    assert grid[0, 0, 0].tolist() == [-1.0, -1.0]
    assert grid[0, 2, 4].tolist() == [1.0, 1.0]
    assert grid[0, 1, 1].tolist() == pytest.approx([-0.5, 0.0])


def test_one_voxel_along_each_axis_maps_to_its_normalised_channel():
    shape = (4, 6, 11)
    for axis in range(3):
        u = torch.zeros(1, 3, *shape, dtype=torch.float64)
        u[:, axis] = 1.0
        offsets = to_normalised(u)
        assert offsets.shape == (1, *shape, 3)
        expected = [0.0, 0.0, 0.0]
        expected[2 - axis] = 2.0 / (shape[axis] - 1)
        assert offsets[0, 1, 2, 3].tolist() == pytest.approx(expected)
        torch.testing.assert_close(to_voxel(offsets), u)


# --- warp --------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(7, 9), (5, 6, 8)])
def test_warp_is_a_pull_back_along_each_array_axis(shape):
    image = torch.rand(1, 2, *shape, dtype=torch.float64)
    for axis in range(len(shape)):
        u = torch.zeros(1, len(shape), *shape, dtype=torch.float64)
        u[:, axis] = 1.0  # I(x + e_axis)
        warped = warp(image, u)
        inside = [slice(None)] * (len(shape) + 2)
        inside[axis + 2] = slice(0, shape[axis] - 1)
        shifted = image.narrow(axis + 2, 1, shape[axis] - 1)
        torch.testing.assert_close(warped[tuple(inside)], shifted)
        # the last slice moved out of the image: zeros padding
        assert warped.narrow(axis + 2, shape[axis] - 1, 1).abs().max() < 1e-12


def test_warp_padding_border_repeats_the_edge():
    image = torch.rand(1, 1, 5, 6, dtype=torch.float64)
    u = torch.full((1, 2, 5, 6), 0.0, dtype=torch.float64)
    u[:, 1] = 10.0
    warped = warp(image, u, padding="border")
    torch.testing.assert_close(warped, image[..., -1:].expand_as(image))


def test_warp_nearest_returns_image_values():
    image = torch.rand(1, 1, 6, 7, dtype=torch.float64)
    u = 0.3 * torch.randn(1, 2, 6, 7, dtype=torch.float64)
    warped = warp(image, u, mode="nearest", padding="border")
    assert torch.isin(warped, image).all()


# --- compose -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("shape", "a", "b"), [((23, 31), A2, B2), ((14, 17, 19), A3, B3)])
def test_compose_of_linear_maps_is_the_matrix_product(shape, a, b, linear_field):
    """φ_a ∘ φ_b = (I + A)(I + B): inner acts first. The swapped order must fail by far."""
    u_outer, u_inner = linear_field(a, shape), linear_field(b, shape)
    n = len(shape)
    expected = linear_field((np.eye(n) + a) @ (np.eye(n) + b) - np.eye(n), shape)
    swapped = linear_field((np.eye(n) + b) @ (np.eye(n) + a) - np.eye(n), shape)
    got = compose(u_outer, u_inner)
    inside = interior(shape, 2)
    error = (got - expected)[inside].abs().max()
    assert error < 1e-10
    assert (swapped - expected)[inside].abs().max() > 1e3 * max(float(error), 1e-6)


def test_compose_with_zero_is_neutral_on_both_sides():
    u = 0.7 * torch.randn(1, 2, 8, 9, dtype=torch.float64)
    zero = torch.zeros_like(u)
    torch.testing.assert_close(compose(u, zero), u)
    torch.testing.assert_close(compose(zero, u), u)


def test_compose_constant_fields_add_up_even_past_the_border():
    shape = (6, 7, 5)
    a = (
        torch.tensor([2.5, -1.25, 0.75], dtype=torch.float64)
        .view(1, 3, 1, 1, 1)
        .expand(1, 3, *shape)
    )
    b = (
        torch.tensor([-0.5, 3.0, -4.0], dtype=torch.float64)
        .view(1, 3, 1, 1, 1)
        .expand(1, 3, *shape)
    )
    torch.testing.assert_close(compose(a.contiguous(), b.contiguous()), (a + b).contiguous())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtype_is_preserved(dtype):
    u = torch.randn(1, 3, 4, 5, 6, dtype=dtype)
    image = torch.rand(1, 2, 4, 5, 6, dtype=dtype)
    assert compose(u, u).dtype == dtype
    assert warp(image, u).dtype == dtype


# --- the threaded CPU sampler ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("image_shape", "threads_used"),
    [
        ((1, 2, 6, 7), 2),
        ((1, 2, 7, 6), 2),
        ((1, 3, 6, 5, 7), 2),
        ((1, 3, 9, 4, 5), 3),
        ((2, 2, 6, 4), 2),
    ],
)
@pytest.mark.parametrize("with_add_to", [False, True])
def test_threaded_sample_equals_plain_grid_sample(
    image_shape, threads_used, with_add_to, threads, monkeypatch
):
    monkeypatch.setattr(grid_module, "_MIN_POINTS_PER_CHUNK", 1)  # split even tiny grids
    torch.manual_seed(0)
    spatial = image_shape[2:]
    image = torch.randn(*image_shape, dtype=torch.float64, requires_grad=True)
    offsets = 0.3 * torch.randn(image_shape[0], *spatial, len(spatial), dtype=torch.float64)
    grid = (normalised_identity(spatial, dtype=torch.float64) + offsets).requires_grad_()
    add_to = (
        torch.randn(image_shape[0], image_shape[1], *spatial, dtype=torch.float64)
        if with_add_to
        else None
    )
    weights = torch.randn(image_shape[0], image_shape[1], *spatial, dtype=torch.float64)

    def run(count):
        threads(count)
        out = sample(image, grid, padding="border", add_to=add_to)
        grads = torch.autograd.grad((out * weights).sum(), (image, grid))
        return out, grads

    expected = F.grid_sample(image, grid, padding_mode="border", align_corners=True)
    if add_to is not None:
        expected = expected + add_to
    one, one_grads = run(1)
    split, split_grads = run(threads_used)
    assert torch.equal(one, expected.detach())
    assert torch.equal(split, one)
    for a, b in zip(one_grads, split_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    ("image_shape", "threads_used"),
    [((1, 2, 6, 7), 1), ((1, 2, 6, 7), 2), ((1, 3, 6, 5, 7), 2), ((1, 3, 9, 4, 5), 3)],
)
@pytest.mark.parametrize("padding", ["zeros", "border"])
def test_sample_backward_equals_autograd_of_grid_sample(
    image_shape, threads_used, padding, threads, monkeypatch
):
    monkeypatch.setattr(grid_module, "_MIN_POINTS_PER_CHUNK", 1)  # split even tiny grids
    threads(threads_used)
    torch.manual_seed(0)
    spatial = image_shape[2:]
    image = torch.randn(*image_shape, dtype=torch.float64, requires_grad=True)
    offsets = 0.7 * torch.randn(1, *spatial, len(spatial), dtype=torch.float64)
    grid = (normalised_identity(spatial, dtype=torch.float64) + offsets).requires_grad_()
    weights = torch.randn(*image_shape, dtype=torch.float64)
    out = F.grid_sample(image, grid, padding_mode=padding, align_corners=True)
    expected = torch.autograd.grad(out, (image, grid), weights)
    got = sample_backward(weights, image.detach(), grid.detach(), padding=padding)
    assert [g.shape for g in got] == [image.shape, grid.shape]
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_sample_backward_rejects_unknown_mode_and_padding():
    image, grid = torch.rand(1, 1, 4, 5), normalised_identity((4, 5))
    with pytest.raises(ValueError, match="mode"):
        sample_backward(image, image, grid, mode="cubic")
    with pytest.raises(ValueError, match="padding"):
        sample_backward(image, image, grid, padding="wrap")


def test_small_grids_are_sampled_whole_and_large_ones_split(threads):
    threads(2)
    small = normalised_identity((8, 8, 8))
    large = normalised_identity((64, 32, 32))
    assert grid_module._cpu_chunks(small[:, :1].movedim(-1, 1), small) == 1
    assert grid_module._cpu_chunks(large[:, :1].movedim(-1, 1), large) == 2
    odd = normalised_identity((65, 32, 32))
    assert grid_module._cpu_chunks(odd[:, :1].movedim(-1, 1), odd) == 1


def test_sample_rejects_unknown_mode_and_padding():
    image = torch.rand(1, 1, 4, 5)
    grid = normalised_identity((4, 5))
    with pytest.raises(ValueError, match="mode"):
        sample(image, grid, mode="cubic")
    with pytest.raises(ValueError, match="padding"):
        sample(image, grid, padding="wrap")


# --- gradients ---------------------------------------------------------------------------------


def off_grid(*shape, seed=0):
    """Displacements away from integer voxel positions (linear interpolation has kinks there)."""
    generator = torch.Generator().manual_seed(seed)
    magnitude = 0.15 + 0.6 * torch.rand(*shape, generator=generator, dtype=torch.float64)
    sign = torch.where(torch.rand(*shape, generator=generator) < 0.5, -1.0, 1.0).double()
    return (magnitude * sign).requires_grad_()


@pytest.mark.parametrize("shape", [(5, 6), (4, 5, 6)])
def test_gradcheck_compose_and_warp(shape):
    n = len(shape)
    u, w = off_grid(1, n, *shape, seed=1), off_grid(1, n, *shape, seed=2)
    image = torch.rand(1, 2, *shape, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(compose, (u, w), fast_mode=n == 3)
    assert torch.autograd.gradcheck(warp, (image, w), fast_mode=n == 3)


# --- bad input ---------------------------------------------------------------------------------


def test_compose_rejects_bad_fields_naming_the_argument():
    u = torch.zeros(1, 2, 5, 6)
    with pytest.raises(ValueError, match=r"u_outer.*2 components.*got 3 channels"):
        compose(torch.zeros(1, 3, 5, 6), u)
    with pytest.raises(ValueError, match=r"u_inner must have shape"):
        compose(u, torch.zeros(1, 2, 5))
    with pytest.raises(TypeError, match=r"u_inner must have a floating dtype.*torch.int64"):
        compose(u, torch.zeros(1, 2, 5, 6, dtype=torch.int64))
    with pytest.raises(TypeError, match=r"u_outer must be a torch.Tensor.*ndarray"):
        compose(np.zeros((1, 2, 5, 6)), u)
    with pytest.raises(ValueError, match=r"u_outer and u_inner must have the same shape"):
        compose(u, torch.zeros(1, 2, 5, 7))
    with pytest.raises(ValueError, match=r"u_outer and u_inner must have the same shape"):
        compose(u, torch.zeros(2, 2, 5, 6))  # never broadcast over the batch
    with pytest.raises(TypeError, match=r"u_outer is torch.float32 but u_inner is torch.float64"):
        compose(u, u.double())
    with pytest.raises(ValueError, match=r"u_outer is on cpu but u_inner is on meta"):
        compose(u, torch.zeros(1, 2, 5, 6, device="meta"))
    bad = u.clone()
    bad[0, 1, 2, 3] = float("nan")
    with pytest.raises(ValueError, match=r"u_inner contains NaN or Inf"):
        compose(u, bad)
    bad[0, 1, 2, 3] = float("inf")
    with pytest.raises(ValueError, match=r"u_outer contains NaN or Inf"):
        compose(bad, u)
    with pytest.raises(ValueError, match=r"at least 2 voxels"):
        compose(torch.zeros(1, 2, 1, 6), torch.zeros(1, 2, 1, 6))


def test_warp_rejects_mismatches_without_broadcasting():
    image = torch.rand(1, 1, 5, 6)
    u = torch.zeros(1, 2, 5, 6)
    with pytest.raises(ValueError, match=r"image \(2, 1, 5, 6\) and displacement"):
        warp(torch.rand(2, 1, 5, 6), u)
    with pytest.raises(ValueError, match=r"batch size and spatial shape"):
        warp(torch.rand(1, 1, 5, 7), u)
    with pytest.raises(ValueError, match=r"displacement must have 2 components"):
        warp(image, torch.zeros(1, 3, 5, 6))
    with pytest.raises(TypeError, match=r"image must have a floating dtype"):
        warp(torch.zeros(1, 1, 5, 6, dtype=torch.uint8), u)
    with pytest.raises(
        TypeError, match=r"image is torch.float64 but displacement is torch.float32"
    ):
        warp(image.double(), u)
    with pytest.raises(ValueError, match=r"image is on cpu but displacement is on meta"):
        warp(image, u.to("meta"))


# --- CUDA --------------------------------------------------------------------------------------


@pytest.mark.cuda
def test_cuda_compose_and_warp_match_cpu():
    u = 0.8 * torch.randn(1, 3, 6, 7, 8, dtype=torch.float64)
    w = 0.8 * torch.randn(1, 3, 6, 7, 8, dtype=torch.float64)
    image = torch.rand(1, 2, 6, 7, 8, dtype=torch.float64)
    got = compose(u.cuda(), w.cuda())
    assert got.device.type == "cuda"
    torch.testing.assert_close(got.cpu(), compose(u, w))
    torch.testing.assert_close(warp(image.cuda(), w.cuda()).cpu(), warp(image, w))


def test_normalised_per_voxel_spans_minus_one_to_one_over_the_axis():
    assert grid_module.normalised_per_voxel((3, 5, 9)) == (1.0, 0.5, 0.25)
    shape = (4, 7)
    steps = grid_module.normalised_per_voxel(shape)
    ends = [(size - 1) * step - 1 for size, step in zip(shape, steps, strict=True)]
    assert ends == [1.0, 1.0]  # the last voxel is +1, as normalised_identity has it
    torch.testing.assert_close(normalised_identity(shape)[0, -1, -1], torch.tensor([1.0, 1.0]))
    with pytest.raises(ValueError, match=">= 2 voxels per axis"):
        grid_module.normalised_per_voxel((1, 8))


@pytest.mark.parametrize("channels", [2, 3])
def test_squared_length_is_the_channel_norm_squared(channels):
    field = torch.randn(2, channels, 5, 6, 7, dtype=torch.float64)
    expected = field.norm(dim=1, keepdim=True) ** 2
    torch.testing.assert_close(squared_length(field), expected, rtol=1e-12, atol=0)


@pytest.mark.parametrize("batches", [(1, 1), (2, 2), (1, 3), (3, 1)])
def test_affine_of_index_is_the_matrix_times_the_moved_index(batches):
    generator = torch.Generator().manual_seed(2)
    shape = (4, 5, 6)
    matrix = torch.randn(batches[0], 2, 3, dtype=torch.float64, generator=generator)
    bias = torch.randn(batches[0], 2, dtype=torch.float64, generator=generator)
    u = torch.randn(batches[1], 3, *shape, dtype=torch.float64, generator=generator)
    index = identity(shape, dtype=torch.float64)[None]
    expected = torch.einsum("bij,bj...->bi...", matrix, index) + bias.view(-1, 2, 1, 1, 1)
    torch.testing.assert_close(affine_of_index(matrix, bias, shape), expected)
    moved = torch.einsum("bij,bj...->bi...", matrix, index + u) + bias.view(-1, 2, 1, 1, 1)
    torch.testing.assert_close(affine_of_index(matrix, bias, shape, u), moved)
    assert torch.autograd.gradcheck(lambda m, b, d: affine_of_index(m, b, shape, d),
                                    (matrix.requires_grad_(), bias.requires_grad_(),
                                     u.requires_grad_()))
    # the template transformer keeps M i + b and adds M u later: the same values to the bit
    with torch.no_grad():
        kept = affine_of_index(matrix, bias, shape)
        assert torch.equal(displaced(kept, matrix, u), affine_of_index(matrix, bias, shape, u))
