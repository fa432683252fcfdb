"""The fold tests of a displacement upsampled from a coarse grid, certified block by block.

A model's displacement on the image grid is :meth:`~.velocity.VelocitySpace.to_fine` of the
coarse displacement it integrated — linear interpolation (``align_corners=False``, edges held)
times the factor k — cropped out of the padded grid. Each of its forward differences δ_a along
an axis a (image voxels per image voxel) is then a convex combination of the coarse forward
differences G_a (coarse voxels per coarse voxel) of the cells it interpolates — the mean slope
over an interval of 1/k coarse voxels along a (0 beyond the edges), linear weights across — so
‖δ_a‖ ≤ max ‖G_a‖ over those cells.

Every matrix whose determinant a fold test takes is M₀ + D with σ_min(M₀) = 1: M₀ = I for
central differences and the corner simplices of the digital test, whose D has one difference
per column, so ‖D‖²_F ≤ Σ_a m_a; M₀ = ±[[0, 1, 1], [1, 0, 1], [1, 1, 0]] for the two central
tetrahedra of a 3D cube, whose columns hold two differences each, so ‖D‖²_F ≤ 4 Σ_a m_a
(m_a the largest ‖G_a‖² near the voxel). Where that bound is below 1, det(M₀ + D) =
det M₀ · det(I + M₀⁻¹D) ≥ |det M₀| (1 − ‖D‖₂)ⁿ > 0: no fold. :func:`upsampled_folding` takes
the bound per block of :data:`BLOCK`³ image voxels, over every coarse cell the block's tests
reach, and runs the exhaustive tests of :mod:`.jacobian` only on the blocks whose bound is
above :data:`CERTIFIED` (below 1: a margin for float32 rounding) — the same operations on the
same values, so the counts are the exhaustive tests' to the voxel. A 3D block certified for
the corner simplices but not for the tetrahedra (Σ_a m_a ≤ CERTIFIED < 4 Σ_a m_a) runs the two
tetrahedra alone (:func:`.jacobian.tetrahedra_folds_of_map`). Where more than
:data:`WHOLE_ABOVE` of the blocks are uncertified, the test runs once over the whole volume
instead (a block's window reads (B + 2)ⁿ voxels for Bⁿ: the whole pass is then cheaper).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from .checks import check_field
from .jacobian import (
    central_det_whole,
    digital_folds_of_map,
    folding_fraction,
    tetrahedra_folds_of_map,
)

__all__ = ["BLOCK", "CERTIFIED", "WHOLE_ABOVE", "Upsampling", "block_bounds",
           "upsampled_folding"]

BLOCK = 8  # image voxels per block edge (8–12 test the fewest voxels at 128³)
CERTIFIED = 0.8  # a block whose bound on ‖D‖²_F is at most this cannot fold (exactly: < 1)
WHOLE_ABOVE = 0.4  # uncertified fraction of the blocks above which one whole pass is cheaper


@dataclass(frozen=True)
class Upsampling:
    """Where a displacement on the image grid came from: ``VelocitySpace.to_fine(coarse)`` on
    the padded grid (``factor`` image voxels per coarse voxel), cropped from ``offset``.

    ``coarse`` ``(n, *C)`` in coarse voxels; ``offset`` the crop's first voxel in the padded
    grid, per axis."""

    coarse: torch.Tensor
    factor: int
    offset: tuple[int, ...]

    def check(self, shape: Sequence[int]) -> None:
        """Refuse an upsampling that cannot have made a field of image ``shape``."""
        n = len(shape)
        if self.coarse.ndim != n + 1 or self.coarse.shape[0] != n or len(self.offset) != n:
            raise ValueError(f"the coarse displacement {tuple(self.coarse.shape)} with offset "
                             f"{self.offset} does not describe a field of shape {tuple(shape)}")
        padded = [self.factor * c for c in self.coarse.shape[1:]]
        if any(o < 0 or o + s > p for o, s, p in zip(self.offset, shape, padded, strict=True)):
            raise ValueError(f"a {tuple(shape)} crop from {self.offset} does not fit the padded "
                             f"grid {tuple(padded)} of the coarse displacement")


def upsampled_folding(displacement: torch.Tensor, upsampling: Upsampling) -> tuple[float, float]:
    """``(central, digital)``: the fractions (0…1) of voxels where φ = id + ``displacement``
    ``(n, *S)`` voxels folds, counted as :func:`.jacobian.folding_fraction` counts them (central
    differences over every voxel; the digital test over interior voxels), the exhaustive tests
    run only on the blocks the bound does not certify."""
    check_field("displacement", displacement[None])
    shape = tuple(displacement.shape[1:])
    upsampling.check(shape)
    if min(shape) < 3:  # no interior voxel: the exhaustive tests' own conventions
        field = displacement[None]
        return (float(folding_fraction(field, "central")[0]),
                float(folding_fraction(field, "digital")[0]))
    bound = block_bounds(upsampling, shape)
    corners = bound > CERTIFIED  # also central differences: M₀ = I, one difference per column
    central = _fraction(displacement, [(corners, _central_folds)], "central", _central_window,
                        with_identity=False, voxels=math.prod(shape))
    digital_tests = [(corners, digital_folds_of_map)]
    if len(shape) == 3:  # the central tetrahedra's columns hold two differences: 4 × the bound
        digital_tests.append((~corners & (4.0 * bound > CERTIFIED), tetrahedra_folds_of_map))
    digital = _fraction(displacement, digital_tests, "digital", _digital_window,
                        with_identity=True, voxels=max(math.prod(s - 2 for s in shape), 1))
    return central, digital


def _fraction(displacement: torch.Tensor, tests: list[tuple[torch.Tensor, Callable]],
              scheme: str, window: Callable, *, with_identity: bool, voxels: int) -> float:
    """One fold test's fraction of the ``voxels`` it counts, from ``tests``: (the blocks of
    ``(*blocks)`` booleans that need it, the part of the test they need — in a block whose
    corner simplices are certified only the central tetrahedra can fold). Block by block where
    the uncertified blocks are at most :data:`WHOLE_ABOVE` of them, else one whole pass."""
    uncertified = sum(mask.float() for mask, _ in tests)
    if float(uncertified.mean()) > WHOLE_ABOVE:
        return float(folding_fraction(displacement[None], scheme)[0])
    shape = tuple(displacement.shape[1:])
    return sum(_count(displacement, shape, mask, window, folds, with_identity=with_identity)
               for mask, folds in tests) / voxels


def block_bounds(upsampling: Upsampling, shape: Sequence[int]) -> torch.Tensor:
    """Σ_a m_a per block of :data:`BLOCK` image voxels of the crop ``shape`` → ``(*blocks)``:
    m_a the largest squared coarse difference ‖G_a‖² over the cells that the forward differences
    of the block's voxels and their neighbours (±1 voxel on every axis) interpolate."""
    coarse, n = upsampling.coarse.detach(), len(shape)
    total = None
    for axis in range(n):
        size = coarse.shape[1 + axis]
        slope = coarse.narrow(1 + axis, 1, size - 1) - coarse.narrow(1 + axis, 0, size - 1)
        squared = slope.square().sum(0)
        # the slope beyond the last coarse point is 0: one more cell of zeros keeps indices
        squared = torch.cat([squared, squared.new_zeros(
            [1 if b == axis else coarse.shape[1 + b] for b in range(n)])], axis)
        for b in range(n):
            ranges = _coarse_ranges(shape[b], coarse.shape[1 + b], upsampling.factor,
                                    upsampling.offset[b])
            squared = torch.stack([squared.narrow(b, lo, hi - lo + 1).amax(b)
                                   for lo, hi in ranges], b)
        total = squared if total is None else total + squared
    return total


def _coarse_ranges(size: int, coarse: int, factor: int, offset: int) -> list[tuple[int, int]]:
    """Per block along one axis, the coarse indices ``[lo, hi]`` its tests can reach: image
    voxel i (padded grid) sits at coarse position p(i) = (i + ½)/k − ½; a block [I₀, I₁) reads
    differences from voxel I₀ − 1 to I₁ + 1, which interpolate points ⌊p(I₀ − 1)⌋ … ⌊p(I₁)⌋ + 1."""
    ranges = []
    for start in range(0, size, BLOCK):
        first, stop = start + offset, min(start + BLOCK, size) + offset
        lo = (2 * (first - 1) + 1 - factor) // (2 * factor)
        hi = (2 * stop + 1 - factor) // (2 * factor) + 1
        ranges.append((max(lo, 0), min(hi, coarse - 1)))
    return ranges


def _count(displacement: torch.Tensor, shape: tuple[int, ...], uncertified: torch.Tensor,
           window: Callable, folds: Callable, *, with_identity: bool) -> int:
    """Folded voxels of the uncertified blocks: each block's window (its voxels and what the
    test reads around them), grouped by shape so that one call tests a batch of them."""
    groups: dict[tuple, list[list[int]]] = defaultdict(list)
    for index in torch.nonzero(uncertified).tolist():
        own = [(BLOCK * b, min(BLOCK * b + BLOCK, s)) for b, s in zip(index, shape, strict=True)]
        pair = window(own, shape)
        if pair is not None:
            read, keep = pair
            size = tuple(r.stop - r.start for r in read)
            groups[size, tuple((k.start, k.stop) for k in keep)].append([r.start for r in read])
    count = 0
    for (size, keep), starts in groups.items():
        fields = _gather(displacement, torch.tensor(starts), size, with_identity)
        folded = folds(fields)
        count += int(folded[(slice(None), *(slice(a, b) for a, b in keep))].sum())
    return count


def _gather(displacement: torch.Tensor, starts: torch.Tensor, size: tuple[int, ...],
            with_identity: bool) -> torch.Tensor:
    """The windows of ``size`` voxels from ``starts`` ``(B, n)`` → ``(B, n, *size)``, plus the
    identity's coordinates when ``with_identity`` (φ itself, as the digital test adds them:
    exact integers, so the same sums)."""
    n = len(size)
    index = []
    for axis, width in enumerate(size):
        view = [-1 if b == axis else 1 for b in range(n)]
        offsets = torch.arange(width, device=displacement.device).view(1, *view)
        index.append(starts[:, axis].to(displacement.device).view(-1, *[1] * n) + offsets)
    fields = displacement[(slice(None), *index)].movedim(0, 1).contiguous()
    if with_identity:
        coordinates = torch.stack(torch.broadcast_tensors(*index), dim=1)
        fields = fields + coordinates.to(fields.dtype)
    return fields


def _central_window(own: list[tuple[int, int]], shape: tuple[int, ...]):
    """Central differences read one voxel beyond the block, within the volume (its own edges
    take one-sided differences, as the whole-volume test does)."""
    read = tuple(slice(max(a - 1, 0), min(b + 1, s)) for (a, b), s in zip(own, shape,
                                                                          strict=True))
    keep = tuple(slice(a - r.start, b - r.start) for (a, b), r in zip(own, read, strict=True))
    return read, keep


def _digital_window(own: list[tuple[int, int]], shape: tuple[int, ...]):
    """The digital test counts interior voxels only, each reading one voxel beyond it; None
    for a block with no interior voxel."""
    inner = [(max(a, 1), min(b, s - 1)) for (a, b), s in zip(own, shape, strict=True)]
    if any(a >= b for a, b in inner):
        return None
    read = tuple(slice(a - 1, b + 1) for a, b in inner)
    keep = tuple(slice(0, b - a) for a, b in inner)
    return read, keep


def _central_folds(fields: torch.Tensor) -> torch.Tensor:
    return central_det_whole(fields) <= 0
