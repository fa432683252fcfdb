"""Displacement fields for display and export: det ∇φ with its folds, a deformed grid, the
log₂ display, arrows, and how far a path ends from Φ.

Fields are ``(n, *S)`` numpy arrays in voxels, array order (z, y, x); φ = id + u. torch is
imported on first use.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .flow.frames import FlowFrames

__all__ = [
    "GRID_EVERY",
    "JacobianReport",
    "arrows",
    "deformed_grid",
    "endpoint_gap",
    "fold_centres",
    "grid_lines",
    "jacobian_determinant",
    "jacobian_report",
]

MAX_ARROWS_PER_AXIS = 24
GRID_EVERY = 8  # voxels between the lines of the deformed grid
MIN_RANGE = 0.05  # the narrowest symmetric log₂ det J contrast range


@dataclass(frozen=True)
class JacobianReport:
    """det ∇φ of one displacement, its folding statistics and its display."""

    det: np.ndarray  # (*S) float32, central differences
    minimum: float
    maximum: float
    folded_central: float  # % of voxels with det ≤ 0 (central differences)
    folded_digital: float  # % of interior voxels failing any one-sided simplex test
    folds: tuple[tuple[float, ...], ...]  # centre (voxels) of each face-connected fold
    grid: np.ndarray  # (*S) float32 grid lines pulled back through φ
    log_det: np.ndarray  # (*S) float32 log₂ det J; det ≤ 0 shown as the most compressed value
    limits: tuple[float, float]  # (−m, m) contrast range symmetric around 0

    def describe(self, what: str) -> str:
        """The statistics as three lines, ``what`` naming the transformation (e.g. "Φ")."""
        return (
            f"det J of {what}: min {self.minimum:.3g}, max {self.maximum:.3g}\n"
            f"folded (det J ≤ 0): {self.folded_central:.3f} % by central differences, "
            f"{self.folded_digital:.3f} % by the digital test (one-sided simplices)\n"
            f"{len(self.folds)} folded region(s) (det J ≤ 0, face-connected)"
        )


def jacobian_report(displacement: np.ndarray,
                    grid_axes: tuple[int, ...] | None = None) -> JacobianReport:
    """det J, folds, deformed grid and display of φ = id + ``displacement`` ``(n, *S)`` voxels
    (the grid's lines cross the planes of ``grid_axes``: :func:`deformed_grid`).

    The log₂ display's range m is the 99.5th percentile of |log₂ det| over non-folded voxels
    (at least :data:`MIN_RANGE`); det ≤ 0 has no logarithm and is shown as −m.
    """
    import torch

    from .flow import folding_fraction

    u = torch.from_numpy(np.ascontiguousarray(displacement, dtype=np.float32))[None]
    det = jacobian_determinant(displacement)
    central = float(np.mean(det <= 0)) * 100  # folding_fraction's "central" count, of this det
    with torch.inference_mode():
        digital = float(folding_fraction(u, "digital")[0]) * 100
    positive = det > 0
    log_det = np.full(det.shape, np.nan, dtype=np.float32)
    log_det[positive] = np.log2(det[positive])
    finite = np.abs(log_det[positive])
    m = max(float(np.percentile(finite, 99.5)) if finite.size else 0.0, MIN_RANGE)
    log_det[~positive] = -m
    return JacobianReport(det, float(det.min()), float(det.max()), central, digital,
                          fold_centres(det <= 0), deformed_grid(displacement, grid_axes), log_det,
                          (-m, m))


def deformed_grid(displacement: np.ndarray, axes: tuple[int, ...] | None = None) -> np.ndarray:
    """The :func:`grid_lines` of ``axes`` pulled back through φ = id + ``displacement``
    ``(n, *S)`` voxels: ``(*S)`` float32, the image at x shows the grid at φ(x). A slice
    spanned by ``axes`` shows a square grid deformed within and across it."""
    import torch

    from .flow.grid import warp

    u = torch.from_numpy(np.ascontiguousarray(displacement, dtype=np.float32))[None]
    lines = grid_lines(tuple(np.shape(displacement)[1:]), axes=axes)
    with torch.inference_mode():
        return warp(torch.from_numpy(lines)[None, None], u, padding="border")[0, 0].numpy()


def jacobian_determinant(displacement: np.ndarray) -> np.ndarray:
    """det J of Φ = id + u, u ``(n, *S)`` voxels → ``(*S)`` float32 (central differences)."""
    import torch

    from .flow import jacobian_det

    field = torch.from_numpy(np.ascontiguousarray(displacement, dtype=np.float32))[None]
    with torch.inference_mode():
        return jacobian_det(field)[0].numpy().astype(np.float32)


def endpoint_gap(frames: FlowFrames, displacement: np.ndarray | None) -> float:
    """Largest distance (voxels) between the last frame's φ(1) and the model's Φ (0 if unknown)."""
    if displacement is None:
        return 0.0
    difference = frames.displacement(len(frames) - 1) - np.asarray(displacement)
    return float(np.sqrt((difference**2).sum(0)).max())


def arrows(displacement: np.ndarray) -> np.ndarray:
    """Napari vectors ``(N, 2, n)`` of a displacement ``(n, *S)`` voxels on a subsampled grid.

    Every slice along the first axis of a 3D volume keeps its arrows (so each 2D view has some);
    in-plane axes are subsampled to at most ~24 arrows per axis. An arrow that would leave the
    volume is shortened (same direction) to end on its border, so the arrows never widen the
    viewer's dims range.
    """
    n = displacement.shape[0]
    shape = displacement.shape[1:]
    steps = [max(1, int(np.ceil(size / MAX_ARROWS_PER_AXIS))) for size in shape]
    if n == 3:
        steps[0] = 1
    index = tuple(slice(step // 2, None, step) for step in steps)
    grid = np.stack(np.meshgrid(*[np.arange(size)[i] for size, i in zip(shape, index, strict=True)],
                                indexing="ij"), axis=-1).reshape(-1, n)
    vectors = displacement[(slice(None), *index)].reshape(n, -1).T
    top = np.asarray(shape, dtype=float) - 1
    with np.errstate(divide="ignore", invalid="ignore"):
        room = np.where(vectors > 0, (top - grid) / vectors, np.where(vectors < 0, -grid / vectors,
                                                                      np.inf))
    vectors = vectors * np.clip(room.min(axis=1, keepdims=True), 0.0, 1.0)
    return np.stack([grid, vectors], axis=1).astype(np.float32)


def grid_lines(shape: tuple[int, ...], every: int = GRID_EVERY,
               axes: tuple[int, ...] | None = None) -> np.ndarray:
    """A ``(*S)`` float32 image of lines (1) every ``every`` voxels along each of ``axes``
    (default: the last two), 0 between.

    In 3D each line is a plane normal to one of ``axes``, so a slice spanned by ``axes`` (the
    one displayed) shows a square grid; no plane lies in such a slice, which would light it
    all or, deformed, in patches."""
    lines = np.zeros(shape, np.float32)
    axes = tuple(range(len(shape) - 2, len(shape))) if axes is None else axes
    for axis in axes:
        index = [slice(None)] * len(shape)
        index[axis] = slice(0, None, every)
        lines[tuple(index)] = 1.0
    return lines


def fold_centres(folded: np.ndarray) -> tuple[tuple[float, ...], ...]:
    """Centre of mass (voxels, array order) of each face-connected region of ``folded``,
    largest region first."""
    from scipy import ndimage

    regions, count = ndimage.label(folded)
    if not count:
        return ()
    indices = range(1, count + 1)
    sizes = ndimage.sum_labels(folded, regions, indices)
    centres = ndimage.center_of_mass(folded, regions, indices)
    order = np.argsort(-np.asarray(sizes), kind="stable")
    return tuple(tuple(float(c) for c in centres[k]) for k in order)
