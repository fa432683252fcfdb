"""Thin-plate-spline (TPS) interpolation from an n×n (×n) control grid to a dense field.

Control points sit on a regular grid over the whole image in normalised array-order coordinates
(−1 … 1 per axis, voxel i of N at −1 + 2i/(N − 1), the project's align_corners=True
convention). Given values at the control points, the TPS interpolant is

    f(x) = a₀ + aᵀx + Σ_j w_j U(‖x − c_j‖),   Σ_j w_j = 0,  Σ_j w_j c_j = 0,

with U(r) = r² log r² in 2D and U(r) = r in 3D (the biharmonic kernels). It passes through
every control value exactly, reproduces affine functions exactly and, because it is linear in
the values, precomputes to one ``(voxels, controls)`` matrix: a dense field is then a single
matrix product. Used for TPS spatial transformers: control-point displacements (voxels) →
dense displacement (voxels) → :func:`napari_difftt.core.flow.grid.warp`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from ..flow.grid import identity, normalised_per_voxel

__all__ = ["ThinPlateSpline", "control_points", "tps_basis"]


def control_points(control: int, ndim: int, *, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The ``control``^ndim grid points ``(m, ndim)`` in normalised array-order coordinates.

    Row-major over the control grid (last axis fastest), matching ``values.flatten(2)``.
    """
    _check_control(control)
    if ndim not in (2, 3):
        raise ValueError(f"ndim must be 2 or 3, got {ndim!r}")
    axis = torch.linspace(-1.0, 1.0, control, dtype=dtype)
    mesh = torch.meshgrid(*[axis] * ndim, indexing="ij")
    return torch.stack(mesh, dim=-1).reshape(-1, ndim)


def tps_basis(shape: Sequence[int], control: int) -> torch.Tensor:
    """Matrix ``(prod(shape), control^ndim)`` mapping control values to the dense interpolant.

    Computed in float64: ``dense = basis @ values`` for values ``(control^ndim, k)``.
    """
    shape = tuple(int(s) for s in shape)
    ndim = len(shape)
    if ndim not in (2, 3) or min(shape) < 2:
        raise ValueError(f"shape must have 2 or 3 axes of at least 2 voxels, got {shape}")
    points = control_points(control, ndim)
    m = len(points)
    system = torch.zeros(m + ndim + 1, m + ndim + 1, dtype=torch.float64)
    system[:m, :m] = _kernel(torch.cdist(points, points), ndim)
    affine = torch.cat([torch.ones(m, 1, dtype=torch.float64), points], dim=1)
    system[:m, m:] = affine
    system[m:, :m] = affine.T
    # columns 0..m−1 of the inverse take control values to (w, a)
    coefficients = torch.linalg.inv(system)[:, :m]
    pixels = _normalised_pixels(shape)
    ones = torch.ones(len(pixels), 1, dtype=torch.float64)
    design = torch.cat([_kernel(torch.cdist(pixels, points), ndim), ones, pixels], dim=1)
    return design @ coefficients


class ThinPlateSpline(nn.Module):
    """Dense TPS interpolation onto a fixed grid ``shape`` from a ``control``^ndim control grid.

    ``forward(values)``: values ``(B, k, control, …, control)`` (any k channels, any units)
    → dense ``(B, k, *shape)`` in the same units. For a displacement, k = ndim and the values
    are the control points' displacements in voxels. The precomputed basis is stored in
    ``dtype`` (default: torch's default dtype; float64 for an exact interpolant).
    """

    basis: torch.Tensor

    def __init__(self, shape: Sequence[int], control: int,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.shape = tuple(int(s) for s in shape)
        self.control = control
        basis = tps_basis(self.shape, control).to(dtype or torch.get_default_dtype())
        # derived from (shape, control): not part of the state dict
        self.register_buffer("basis", basis, persistent=False)

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        ndim = len(self.shape)
        expected = (self.control,) * ndim
        if not isinstance(values, torch.Tensor) or values.ndim != ndim + 2 or \
                tuple(values.shape[2:]) != expected:
            got = tuple(values.shape) if isinstance(values, torch.Tensor) else type(values).__name__
            raise ValueError(f"values must have shape (B, k, {', '.join(map(str, expected))}), "
                             f"got {got}")
        dense = values.flatten(2) @ self.basis.to(values.dtype).T  # (B, k, voxels)
        return dense.reshape(*values.shape[:2], *self.shape)

    def extra_repr(self) -> str:
        return f"shape={self.shape}, control={self.control}"


def _kernel(distance: torch.Tensor, ndim: int) -> torch.Tensor:
    """Biharmonic radial kernel U(r): r² log r² in 2D (0 at r = 0), r in 3D."""
    if ndim == 3:
        return distance
    squared = distance.square()
    return torch.where(squared > 0, squared * torch.log(squared.clamp_min(1e-300)),
                       torch.zeros_like(squared))


def _normalised_pixels(shape: tuple[int, ...]) -> torch.Tensor:
    """Normalised array-order coordinates of every voxel, ``(prod(shape), ndim)``."""
    coords = identity(shape, dtype=torch.float64)
    scale = torch.tensor(normalised_per_voxel(shape), dtype=torch.float64)
    coords = coords * scale.view(-1, *[1] * len(shape)) - 1.0
    return coords.reshape(len(shape), math.prod(shape)).T


def _check_control(control: object) -> None:
    if isinstance(control, bool) or not isinstance(control, int) or control < 2:
        raise ValueError(f"control must be an int >= 2 (control points per axis), got {control!r}")
