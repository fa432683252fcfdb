"""Coordinate grids, voxel <-> normalised conversion, warping and composition.

The conventions of the whole package, stated once here:

* Images are ``(B, C, *S)`` with ``S = (D, H, W)`` in 3D or ``(H, W)`` in 2D, the array order
  napari shows (z, y, x).
* Vector fields are ``(B, n, *S)``; component k points along array axis k (z first) and is
  measured **in voxels**. A transform φ is stored as its displacement u: φ(x) = x + u(x).
* ``warp(I, u)(x) = I(x + u(x))`` (pull-back) with linear interpolation.
* ``compose(u_outer, u_inner)`` is the displacement of φ_outer ∘ φ_inner (inner acts first).
* Sampling uses ``grid_sample(align_corners=True)``: voxel i on an axis of N voxels sits at the
  normalised coordinate −1 + 2i/(N − 1). grid_sample wants the grid channels-last and in
  reversed (x, y, z) order; :func:`to_normalised` and :func:`to_voxel` are the only places
  that reverse the axis order.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import torch
import torch.nn.functional as F

from .checks import check_field, check_image, check_same_field

__all__ = [
    "affine_of_index",
    "compose",
    "compose_unchecked",
    "displaced",
    "identity",
    "normalised_identity",
    "normalised_per_voxel",
    "sample",
    "sample_backward",
    "squared_length",
    "to_normalised",
    "to_voxel",
    "warp",
]

_MODES = {"linear": "bilinear", "nearest": "nearest"}
_PADDINGS = ("zeros", "border", "reflection")
# ATen's integer codes for grid_sampler_{2,3}d_backward (GridSamplerInterpolation/Padding enums)
_MODE_CODES = {"linear": 0, "nearest": 1}
_PADDING_CODES = {"zeros": 0, "border": 1, "reflection": 2}
# Below this many sampled points per chunk, waking threads costs more than it saves (on a busy
# 2-core machine a 4×5×6 gradcheck ran 25× slower split than whole).
_MIN_POINTS_PER_CHUNK = 16384


def identity(
    shape: Sequence[int],
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Voxel coordinates of every voxel: ``(n, *S)``, component k = index along array axis k."""
    axes = [
        torch.arange(size, device=device, dtype=dtype or torch.get_default_dtype())
        for size in shape
    ]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=0)


def normalised_identity(
    shape: Sequence[int],
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """grid_sample's identity grid ``(1, *S, n)``: channels last, (x, y, z) order, in [−1, 1].

    The result is cached and shared: treat it as read-only.
    """
    return _normalised_identity(
        tuple(int(s) for s in shape),
        torch.device(device or "cpu"),
        dtype or torch.get_default_dtype(),
    )


def normalised_per_voxel(shape: Sequence[int]) -> tuple[float, ...]:
    """One voxel in normalised units along each array axis: 2 / (N_k − 1) (voxel 0 is −1 and
    voxel N_k − 1 is +1, ``align_corners=True``). Multiply voxels by it; divide to go back."""
    shape = tuple(int(size) for size in shape)
    if min(shape, default=0) < 2:
        raise ValueError(f"normalised coordinates need >= 2 voxels per axis, got {shape}")
    return tuple(2.0 / (size - 1) for size in shape)


def affine_of_index(
    matrix: torch.Tensor,
    bias: torch.Tensor,
    shape: Sequence[int],
    displacement: torch.Tensor | None = None,
) -> torch.Tensor:
    """M (i + u(i)) + b at every voxel index i of a grid of ``shape`` → ``(B, m, *shape)``.

    ``matrix`` M ``(B, m, n)``, ``bias`` b ``(B, m)``, ``displacement`` u ``(B, n, *shape)``
    voxels or None (a batch of 1 on either side is broadcast). Without u it is a sum of n
    one-axis terms, written once at full size; u adds one batched matrix product.
    """
    n = len(shape)
    batch, m = matrix.shape[:2]
    out = bias.reshape(batch, m, *([1] * n))
    for axis, size in enumerate(shape):
        index = torch.arange(size, device=matrix.device, dtype=matrix.dtype)
        column = matrix[:, :, axis].reshape(batch, m, *([1] * n))
        out = out + column * index.view(*([1] * axis), size, *([1] * (n - axis - 1)))
    return out if displacement is None else displaced(out, matrix, displacement)


def displaced(affine: torch.Tensor, matrix: torch.Tensor, displacement: torch.Tensor
              ) -> torch.Tensor:
    """M (i + u(i)) + b from ``affine`` = M i + b ``(B, m, *S)`` (:func:`affine_of_index`
    without a displacement, e.g. kept from an earlier call), ``matrix`` M ``(B, m, n)`` and
    ``displacement`` u ``(B, n, *S)`` voxels: one batched matrix product (a batch of 1 is
    broadcast)."""
    batch, m, n = max(len(matrix), len(displacement)), *matrix.shape[1:]
    shape = displacement.shape[2:]
    moved = torch.baddbmm(affine.flatten(2), matrix.expand(batch, m, n),
                          displacement.expand(batch, *displacement.shape[1:]).flatten(2))
    return moved.view(batch, m, *shape)


def squared_length(field: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean length over the channel axis of ``field`` ``(B, n, *S)`` →
    ``(B, 1, *S)``, as a sum of per-channel squares: ATen's ``norm(dim=1)`` reduces the strided
    channel axis 20–50× slower on CPU (0.32 s against 6 ms for ``(1, 3, 128, 128, 128)`` on one
    thread). The squares after the first are accumulated in place (``addcmul_``, fused where
    the CPU has FMA: 0.9 against 1.9 ms at 128³ on two threads)."""
    channels = field.unbind(1)
    squares = channels[0].square()
    for channel in channels[1:]:
        squares.addcmul_(channel, channel)
    return squares.unsqueeze(1)


def to_normalised(displacement: torch.Tensor) -> torch.Tensor:
    """Voxel displacement ``(B, n, *S)`` → normalised offsets ``(B, *S, n)`` in (x, y, z) order."""
    scale = _voxel_to_normalised_scale(displacement.shape[2:], displacement)
    return (displacement.flip(1) * scale.view(1, -1, *([1] * (displacement.ndim - 2)))).movedim(
        1, -1
    )


def to_voxel(offsets: torch.Tensor) -> torch.Tensor:
    """Normalised offsets ``(B, *S, n)`` in (x, y, z) order → voxel displacement ``(B, n, *S)``."""
    scale = _voxel_to_normalised_scale(offsets.shape[1:-1], offsets)
    return (offsets / scale).flip(-1).movedim(-1, 1)


def sample(
    image: torch.Tensor,
    grid: torch.Tensor,
    *,
    mode: str = "linear",
    padding: str = "zeros",
    add_to: torch.Tensor | None = None,
) -> torch.Tensor:
    """Sample ``image`` ``(B, C, *S_in)`` at the normalised ``grid`` ``(B, *S_out, n)``.

    Returns ``(B, C, *S_out)``.

    ``add_to`` (shape of the result) is added to the samples without an intermediate copy.
    On the CPU with a single batch item, PyTorch's grid sampler runs on one thread; the grid is
    then split along its first axis into one chunk per thread, sampled as a batch from an
    expanded (not copied) image, and the chunks are written straight into the result.
    """
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {sorted(_MODES)}, got {mode!r}")
    if padding not in _PADDINGS:
        raise ValueError(f"padding must be one of {_PADDINGS}, got {padding!r}")
    chunks = _cpu_chunks(image, grid)
    if chunks == 1:
        out = F.grid_sample(
            image, grid, mode=_MODES[mode], padding_mode=padding, align_corners=True
        )
        # in place is safe: grid_sample's backward needs its input and grid, not its output
        return out if add_to is None else out.add_(add_to)
    channels, first, rest = image.shape[1], grid.shape[1], grid.shape[2:-1]
    grid_chunks = grid.reshape(chunks, first // chunks, *rest, grid.shape[-1])
    image_copies = image.expand(chunks, *image.shape[1:])
    out = F.grid_sample(
        image_copies, grid_chunks, mode=_MODES[mode], padding_mode=padding, align_corners=True
    )
    out = out.view(chunks, channels, first // chunks, *rest).transpose(0, 1)  # (C, k, S0/k, ...)
    del grid, grid_chunks  # a temporary grid is freed before the sum (lower peak memory)
    if add_to is None:
        return out.reshape(1, channels, first, *rest)
    total = add_to.reshape(channels, chunks, first // chunks, *rest) + out
    return total.reshape(1, channels, first, *rest)


def sample_backward(
    grad_output: torch.Tensor,
    image: torch.Tensor,
    grid: torch.Tensor,
    *,
    mode: str = "linear",
    padding: str = "zeros",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of :func:`sample` (without ``add_to``) with respect to ``image`` and ``grid``.

    ``grad_output`` ``(B, C, *S_out)`` → ``(grad_image (B, C, *S_in), grad_grid (B, *S_out, n))``,
    ``grad_grid`` in normalised units, (x, y, z) order like ``grid``. Calls ATen's backward
    kernels directly, split across threads like :func:`sample` on the CPU; the per-chunk image
    gradients are summed into the first chunk's buffer, so no extra copy is made. For custom
    autograd functions that must not record a graph.
    """
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {sorted(_MODES)}, got {mode!r}")
    if padding not in _PADDINGS:
        raise ValueError(f"padding must be one of {_PADDINGS}, got {padding!r}")
    kernel = (
        torch.ops.aten.grid_sampler_3d_backward
        if grid.shape[-1] == 3
        else torch.ops.aten.grid_sampler_2d_backward
    )
    codes = (_MODE_CODES[mode], _PADDING_CODES[padding], True, [True, True])
    chunks = _cpu_chunks(image, grid)
    if chunks == 1:
        return kernel(grad_output, image, grid, *codes)
    channels, first, rest = image.shape[1], grid.shape[1], grid.shape[2:-1]
    grad_chunks = grad_output.reshape(channels, chunks, first // chunks, *rest).transpose(0, 1)
    grad_images, grad_grid = kernel(
        grad_chunks,
        image.expand(chunks, *image.shape[1:]),
        grid.reshape(chunks, first // chunks, *rest, grid.shape[-1]),
        *codes,
    )
    grad_image = grad_images[:1]
    for index in range(1, chunks):
        grad_image.add_(grad_images[index : index + 1])
    return grad_image, grad_grid.view(1, first, *rest, grid.shape[-1])


def warp(
    image: torch.Tensor, displacement: torch.Tensor, *, mode: str = "linear", padding: str = "zeros"
) -> torch.Tensor:
    """Pull ``image`` ``(B, C, *S)`` back through φ = id + ``displacement`` ``(B, n, *S)`` voxels.

    Returns ``I(x + u(x))`` of shape ``(B, C, *S)``; ``padding`` says what lies outside the image.
    """
    check_image("image", image)
    check_field("displacement", displacement)
    if image.shape[2:] != displacement.shape[2:] or image.shape[0] != displacement.shape[0]:
        raise ValueError(
            f"image {tuple(image.shape)} and displacement {tuple(displacement.shape)} must share "
            "batch size and spatial shape"
        )
    if image.device != displacement.device:
        raise ValueError(f"image is on {image.device} but displacement is on {displacement.device}")
    if image.dtype != displacement.dtype:
        raise TypeError(f"image is {image.dtype} but displacement is {displacement.dtype}")
    grid = _grid_from_displacement(displacement)
    return sample(image, grid, mode=mode, padding=padding)


def compose(u_outer: torch.Tensor, u_inner: torch.Tensor) -> torch.Tensor:
    """Displacement of φ_outer ∘ φ_inner (inner acts first): ``u_inner + u_outer ∘ (id + u_inner)``.

    Both ``(B, n, *S)`` in voxels; the outer field is sampled with border padding.
    """
    check_field("u_outer", u_outer)
    check_field("u_inner", u_inner)
    check_same_field("u_outer", u_outer, "u_inner", u_inner)
    return compose_unchecked(u_outer, u_inner)


def compose_unchecked(u_outer: torch.Tensor, u_inner: torch.Tensor) -> torch.Tensor:
    """:func:`compose` without the argument checks (for callers that have checked)."""
    return sample(u_outer, _grid_from_displacement(u_inner), padding="border", add_to=u_inner)


def _grid_from_displacement(displacement: torch.Tensor) -> torch.Tensor:
    """Normalised sampling grid ``(B, *S, n)`` of id + ``displacement`` ``(B, n, *S)`` voxels."""
    shape = displacement.shape[2:]
    base = normalised_identity(shape, device=displacement.device, dtype=displacement.dtype)
    return base + to_normalised(displacement)


@lru_cache(maxsize=16)
def _normalised_identity(
    shape: tuple[int, ...], device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """Cached: built as a normal tensor even under ``torch.inference_mode`` (see
    :func:`normalised_identity`), so later autograd may save it."""
    with torch.inference_mode(False):
        axes = [torch.linspace(-1.0, 1.0, size, device=device, dtype=dtype) for size in shape]
        mesh = torch.meshgrid(*axes, indexing="ij")
        return torch.stack(mesh[::-1], dim=-1).unsqueeze(0)


def _voxel_to_normalised_scale(shape: Sequence[int], like: torch.Tensor) -> torch.Tensor:
    """:func:`normalised_per_voxel` in (x, y, z) order, as a tensor like ``like``."""
    return torch.tensor(normalised_per_voxel(shape)[::-1], device=like.device, dtype=like.dtype)


def _cpu_chunks(image: torch.Tensor, grid: torch.Tensor) -> int:
    """How many grid chunks to sample in parallel (1 = plain call)."""
    if image.device.type != "cpu" or image.shape[0] != 1 or grid.shape[0] != 1:
        return 1
    points = grid[..., 0].numel()
    chunks = max(1, min(torch.get_num_threads(), grid.shape[1], points // _MIN_POINTS_PER_CHUNK))
    while chunks > 1 and grid.shape[1] % chunks:
        chunks -= 1
    return chunks
