"""Spatial Jacobians of fields and the fold tests of a map φ = id + u.

Fields are ``(B, n, *S)`` in voxels. Derivatives are central differences in voxel units,
one-sided on the outermost voxels.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch

from .checks import check_field
from .grid import identity

__all__ = [
    "derivative",
    "folding_fraction",
    "gradient_penalty",
    "jacobian",
    "jacobian_det",
]

# voxels per slab of the fold tests: each field of a slab (0.5 MiB in float32) stays in cache;
# on one CPU thread 1.1–1.5 × faster than the volume in one piece at 128³, on two within the
# noise of a shared machine (benchmarks/bench_inference.py prints both)
_SLAB_VOXELS = 2**17


def jacobian(field: torch.Tensor) -> torch.Tensor:
    """Spatial derivatives ∂f_i/∂x_j of ``field`` ``(B, n, *S)`` → ``(B, n, n, *S)`` (per voxel).

    Central differences inside, one-sided differences on the first and last voxel of each axis.
    """
    check_field("field", field)
    return torch.stack([derivative(field, axis) for axis in range(field.ndim - 2)], dim=2)


def jacobian_det(displacement: torch.Tensor, scheme: str = "central") -> torch.Tensor:
    """det ∇φ of φ = id + ``displacement`` ``(B, n, *S)`` voxels → ``(B, *S)``.

    ``scheme="central"``: central differences (as in published tables), one-sided at the borders.
    """
    check_field("displacement", displacement)
    if scheme != "central":
        raise ValueError(f"jacobian_det supports scheme='central', got {scheme!r}")
    return _central_det(displacement)


def folding_fraction(displacement: torch.Tensor, scheme: str = "central") -> torch.Tensor:
    """Fraction (0…1) of voxels with det ∇φ ≤ 0, per batch item → ``(B,)``.

    ``"central"`` counts every voxel of :func:`jacobian_det`. ``"digital"`` is stricter: a voxel
    folds if any one-sided difference Jacobian at it is ≤ 0 — the 4 corner triangles in 2D; in
    3D the 8 corner tetrahedra plus the 2 central tetrahedra of the cube starting at the voxel
    (10 in all) — the tests of a digital diffeomorphism that central differences can miss. Only
    voxels with a neighbour on both sides along every axis are counted.
    """
    check_field("displacement", displacement)
    if scheme == "central":
        return (_central_det(displacement) <= 0).flatten(1).float().mean(1)
    if scheme == "digital":
        return _digital_folds(displacement).flatten(1).float().mean(1)
    raise ValueError(f"scheme must be 'central' or 'digital', got {scheme!r}")


def gradient_penalty(field: torch.Tensor) -> torch.Tensor:
    """‖∇u‖²_F (voxel units) of ``field`` ``(B, n, *S)``, averaged over batch and voxels → ``()``:
    the smoothness penalty of the template transformers and the regularised STN."""
    return jacobian(field).square().sum(dim=(1, 2)).mean()


def derivative(field: torch.Tensor, axis: int) -> torch.Tensor:
    """∂field/∂x_axis in voxel units, ``(B, n, *S)``: central inside, one-sided at both ends."""
    parts = [difference if factor == 1 else difference * factor
             for _, difference, factor in _derivative_parts(field, axis)]
    return torch.cat(parts, axis + 2)


def add_derivative_product(out: torch.Tensor, field: torch.Tensor, axis: int,
                           weight: torch.Tensor, sign: int = 1) -> None:
    """``out`` ± ``derivative(field, axis)`` · ``weight``, in place, region by region (the same
    products and sums, without concatenating the derivative: half the time for a Lie bracket
    at 64³; the central difference's ½ is the addition's factor, which changes no bit: scaling
    by a power of two commutes with rounding). ``out``, ``field`` ``(B, n, *S)``, ``weight``
    ``(B, 1 or n, *S)``; not for tensors that autograd records (in-place writes into views of
    ``out``)."""
    dim = axis + 2
    for start, difference, factor in _derivative_parts(field, axis):
        size = difference.shape[dim]
        product = difference.mul_(weight.narrow(dim, start, size))
        out.narrow(dim, start, size).add_(product, alpha=sign * factor)


def _derivative_parts(field: torch.Tensor, axis: int) -> list[tuple[int, torch.Tensor, float]]:
    """:func:`derivative` as (first voxel, difference, factor) pieces along ``axis``, the
    derivative being factor × difference (new tensors): the one-sided first voxel, the central
    inside (factor ½), the one-sided last voxel."""
    dim = axis + 2
    size = field.shape[dim]
    first = field.narrow(dim, 1, 1) - field.narrow(dim, 0, 1)
    last = field.narrow(dim, size - 1, 1) - field.narrow(dim, size - 2, 1)
    if size == 2:
        return [(0, first, 1.0), (1, last, 1.0)]
    inner = field.narrow(dim, 2, size - 2) - field.narrow(dim, 0, size - 2)
    return [(0, first, 1.0), (1, inner, 0.5), (size - 1, last, 1.0)]


def _det_of_columns(columns: Sequence[torch.Tensor]) -> torch.Tensor:
    """Per-voxel determinant of the matrix whose column j is ``columns[j]`` ``(B, n, *S)`` →
    ``(B, *S)`` (closed form, n = 2, 3; entry (i, j) is ``columns[j][:, i]``)."""
    if len(columns) == 2:
        a, b = columns
        return a[:, 0] * b[:, 1] - b[:, 0] * a[:, 1]
    a, b, c = columns
    return _dot(a, _cross(b, c))


def _central_det(displacement: torch.Tensor) -> torch.Tensor:
    """det(I + ∇u) ``(B, *S)`` by central differences, column j = ∂u/∂x_j + e_j; in slabs of
    planes along the first axis (about :data:`_SLAB_VOXELS` voxels), each computed with its
    neighbour planes and trimmed to its own."""
    size = displacement.shape[2]
    planes = max(4, _SLAB_VOXELS // math.prod(displacement.shape[3:]))
    if planes >= size:
        return central_det_whole(displacement)
    slabs = []
    for start in range(0, size, planes):
        first, stop = max(start - 1, 0), min(start + planes + 1, size)
        det = central_det_whole(displacement[:, :, first:stop])
        slabs.append(det[:, start - first : start - first + min(planes, size - start)])
    return torch.cat(slabs, dim=1)


def central_det_whole(displacement: torch.Tensor) -> torch.Tensor:
    """:func:`_central_det` in one piece (its edges take one-sided differences)."""
    columns = []
    for axis in range(displacement.ndim - 2):
        column = derivative(displacement, axis)
        column[:, axis] += 1
        columns.append(column)
    return _det_of_columns(columns)


def _digital_folds(displacement: torch.Tensor) -> torch.Tensor:
    """Boolean ``(B, *S − 2)`` on interior voxels: any one-sided (simplex) Jacobian ≤ 0; in
    slabs of interior planes along the first axis (about :data:`_SLAB_VOXELS` voxels each),
    each with its two neighbour planes."""
    phi = displacement + _identity_like(displacement)
    interior = phi.shape[2] - 2
    if interior < 1:
        return digital_folds_of_map(phi)
    planes = max(4, _SLAB_VOXELS // math.prod(phi.shape[3:]))
    return torch.cat([digital_folds_of_map(phi.narrow(2, start, min(planes, interior - start) + 2))
                      for start in range(0, interior, planes)], dim=1)


def digital_folds_of_map(phi: torch.Tensor) -> torch.Tensor:
    """:func:`_digital_folds` of the map ``phi`` ``(B, n, *S)`` (voxels) in one piece →
    ``(B, *S − 2)``."""
    dets = _corner_dets(phi)
    if phi.ndim == 5:
        dets += _tetrahedra_dets(phi)
    smallest = dets[0]
    for det in dets[1:]:
        smallest = torch.minimum(smallest, det)
    return smallest <= 0


def tetrahedra_folds_of_map(phi: torch.Tensor) -> torch.Tensor:
    """The part of :func:`digital_folds_of_map` that the two central tetrahedra of each cube
    decide, for a 3D map ``phi`` ``(B, 3, *S)`` → ``(B, *S − 2)``: the whole test where the
    corner simplices are known not to fold (:mod:`.certificate`)."""
    first, second = _tetrahedra_dets(phi)
    return torch.minimum(first, second) <= 0


def _interior_shift(phi: torch.Tensor, offsets: Sequence[int]) -> torch.Tensor:
    """``phi`` at the interior voxels moved by ``offsets`` (one per axis, −1…1)."""
    index = [slice(None), slice(None)]
    index += [slice(1 + o, phi.shape[2 + a] - 1 + o) for a, o in enumerate(offsets)]
    return phi[tuple(index)]


def _corner_dets(phi: torch.Tensor) -> list[torch.Tensor]:
    """Determinants of the corner simplices at each interior voxel, spanned by one oriented
    edge per axis: 4 in 2D, 8 in 3D (the two orientations of the first edge share the cross
    product of the other two)."""
    n = phi.ndim - 2
    centre = _interior_shift(phi, [0] * n)
    # the edge to the neighbour along each axis, oriented ±: (axis, sign) → sign·(φ(x ± e) − φ(x))
    edges = {}
    for axis in range(n):
        step = [0] * n
        step[axis] = 1
        edges[axis, 1] = _interior_shift(phi, step) - centre
        step[axis] = -1
        edges[axis, -1] = centre - _interior_shift(phi, step)
    if n == 2:
        return [_det_of_columns([edges[0, a], edges[1, b]])
                for a, b in itertools.product((-1, 1), repeat=2)]
    dets = []
    for b, c in itertools.product((-1, 1), repeat=2):
        cross = _cross(edges[1, b], edges[2, c])
        dets += [_dot(edges[0, a], cross) for a in (-1, 1)]
    return dets


def _tetrahedra_dets(phi: torch.Tensor) -> list[torch.Tensor]:
    """Determinants of the central tetrahedra of the cube [x, x + 1]³ at each interior voxel,
    both parities, signed so that the identity gives +2."""
    dets = []
    for origin, apexes, sign in (
        ((0, 0, 0), ((0, 1, 1), (1, 0, 1), (1, 1, 0)), 1),
        ((1, 1, 1), ((1, 0, 0), (0, 1, 0), (0, 0, 1)), -1),
    ):
        base = _interior_shift(phi, origin)
        det = _det_of_columns([_interior_shift(phi, apex) - base for apex in apexes])
        dets.append(det if sign > 0 else -det)
    return dets


def _cross(b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Per-voxel cross product of ``(B, 3, *S)`` fields → ``(B, 3, *S)``."""
    return torch.stack([b[:, 1] * c[:, 2] - c[:, 1] * b[:, 2],
                        b[:, 2] * c[:, 0] - c[:, 2] * b[:, 0],
                        b[:, 0] * c[:, 1] - c[:, 0] * b[:, 1]], dim=1)


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-voxel dot product of ``(B, 3, *S)`` fields → ``(B, *S)``."""
    return a[:, 0] * b[:, 0] + a[:, 1] * b[:, 1] + a[:, 2] * b[:, 2]


def _identity_like(field: torch.Tensor) -> torch.Tensor:
    return identity(field.shape[2:], device=field.device, dtype=field.dtype).unsqueeze(0)
