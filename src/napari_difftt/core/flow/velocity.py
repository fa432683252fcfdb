"""Where velocity fields live: a coarse integration grid, an optional cubic B-spline lattice,
optional Gaussian smoothing and a bound — and the one place that converts coarse ↔ fine.

A network's raw output ``(B, C, *S)`` on the image grid becomes velocities on the coarse grid
``S / factor``, in coarse voxels, by :meth:`VelocitySpace.velocities`:

1. average pooling by ``factor`` (``"dense"``) or by ``lattice`` (``"bspline"``: the pooled values
   are the control points of a cubic B-spline every ``lattice`` image voxels);
2. the bound ``bound · tanh`` (``bound`` in image voxels, ``bound / factor`` coarse voxels);
3. ``"bspline"``: the spline evaluated at the coarse grid points (weights ≥ 0 summing to 1);
4. Gaussian smoothing of standard deviation ``sigma`` coarse voxels (normalised, replicate edges).

Steps 3 and 4 are convex combinations, so every velocity stays within ``bound`` image voxels.
All flow maths (squarings, brackets, BCH, the tree) then runs on the coarse grid, and
:meth:`VelocitySpace.to_fine` brings a displacement back to the image grid.

Coarse voxel j is the centre of the block of ``factor`` image voxels it pools, so it sits at
image position ``factor·j + (factor − 1)/2`` and one coarse voxel is exactly ``factor`` image
voxels. Upsampling is therefore linear interpolation with ``align_corners=False`` (edges held
constant), times ``factor``. Linear, not cubic: it is a convex combination of the coarse map, so
it overshoots nowhere; in 2D the Jacobian determinant of a bilinear cell is affine in the cell,
so a coarse map whose corner triangles are all positive (the digital test) is fold-free inside
every cell too. Cubic interpolation of the displacement can overshoot and create folds.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F

__all__ = ["DEFAULT_LATTICE", "DEFAULT_SPACE", "FACTORS", "LEGACY_SPACE", "SPACE_KINDS",
           "VelocitySpace"]

SPACE_KINDS = ("dense", "bspline")  # how velocities are parameterised (not the prior's)
FACTORS = (1, 2, 4)
DEFAULT_LATTICE = 4  # image voxels, the B-spline spacing of a VelocitySpace given none


@dataclass(frozen=True)
class VelocitySpace:
    """How velocities are parameterised relative to the image grid (see the module docstring).

    ``parameterisation``: ``"dense"`` or ``"bspline"``; ``factor``: image voxels per coarse voxel
    (1, 2 or 4); ``lattice``: B-spline control spacing in image voxels (``"bspline"`` only, an
    int >= ``factor``; None: :data:`DEFAULT_LATTICE`); ``sigma``: Gaussian smoothing in coarse
    voxels (0: none); ``bound``: the largest velocity of one piece, image voxels.
    """

    parameterisation: str = "dense"
    factor: int = 2
    lattice: int | None = None
    sigma: float = 0.0
    bound: float = 16.0

    def __post_init__(self) -> None:
        if self.parameterisation not in SPACE_KINDS:
            raise ValueError(
                f"velocity parameterisation must be one of {SPACE_KINDS}, "
                f"got {self.parameterisation!r}"
            )
        if isinstance(self.factor, bool) or self.factor not in FACTORS:
            raise ValueError(f"velocity factor must be one of {FACTORS}, got {self.factor!r}")
        if self.parameterisation == "bspline":
            if self.lattice is None:
                object.__setattr__(self, "lattice", DEFAULT_LATTICE)
            lattice = self.lattice
            if isinstance(lattice, bool) or not isinstance(lattice, int) or lattice <= 0:
                raise ValueError(
                    "the bspline parameterisation needs a lattice spacing: a positive int "
                    f"number of image voxels, got {lattice!r}"
                )
            if lattice < self.factor:
                raise ValueError(
                    f"lattice spacing {lattice} is finer than the integration grid "
                    f"(factor {self.factor}): use lattice >= factor"
                )
        elif self.lattice is not None:
            raise ValueError(
                f"lattice is for the 'bspline' parameterisation only, got lattice={self.lattice!r}"
                " with 'dense'"
            )
        if not (isinstance(self.sigma, (int, float)) and math.isfinite(self.sigma)
                and self.sigma >= 0):
            raise ValueError(f"velocity sigma must be >= 0 coarse voxels, got {self.sigma!r}")
        if not (isinstance(self.bound, (int, float)) and math.isfinite(self.bound)
                and self.bound > 0):
            raise ValueError(
                f"velocity bound must be a positive number of voxels, got {self.bound!r}"
            )

    def to_dict(self) -> dict:
        """Plain dict (checkpoint and JSON safe); ``VelocitySpace(**d)`` rebuilds it."""
        return asdict(self)

    def coarse_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """Shape of the integration grid for an image grid ``shape``; refuses sizes that
        ``factor`` does not divide, naming both shapes."""
        shape = tuple(int(s) for s in shape)
        if any(s % self.factor for s in shape):
            raise ValueError(
                f"image shape {shape} is not divisible by the velocity factor {self.factor}: "
                f"pad it to {tuple(-(-s // self.factor) * self.factor for s in shape)}"
            )
        return tuple(s // self.factor for s in shape)

    def velocities(self, raw: torch.Tensor, pieces: int) -> torch.Tensor:
        """Network output ``(B, pieces·n, *S)`` → velocities ``(B, pieces, n, *S / factor)`` in
        coarse voxels, each bounded by ``bound`` image voxels."""
        return self.velocities_from_pooled(self.pool(raw), pieces, tuple(raw.shape[2:]))

    def pool(self, raw: torch.Tensor, step: int = 1) -> torch.Tensor:
        """Step 1 alone: block means of ``raw`` ``(B, C, *S / step)`` — a field on a grid of
        ``step`` image voxels per voxel — over ``block`` = ``factor`` (``"dense"``) or
        ``lattice`` (``"bspline"``) image voxels per axis → ``(B, C, *S / block)``."""
        self.check_step(step)
        return _average_pool(raw, self.block // step)

    @property
    def block(self) -> int:
        """Image voxels per axis that :meth:`pool` averages: ``factor`` or ``lattice``."""
        return self.factor if self.parameterisation == "dense" else self.lattice

    def check_step(self, step: int) -> None:
        """Refuse a feature grid of ``step`` image voxels per voxel that does not divide
        :attr:`block` (its features could not be pooled into whole blocks)."""
        if step < 1 or self.block % step:
            raise ValueError(
                f"features every {step} image voxels cannot be pooled into this velocity "
                f"space's blocks of {self.block} voxels ({self.parameterisation}, factor "
                f"{self.factor}, lattice {self.lattice}): use a feature level whose step (2^level)"
                f" divides {self.block}"
            )

    def velocities_from_pooled(self, pooled: torch.Tensor, pieces: int, shape: tuple[int, ...]
                               ) -> torch.Tensor:
        """Steps 2–4: :meth:`pool` output ``(B, pieces·n, …)`` of a raw field on the image grid
        ``shape`` → velocities ``(B, pieces, n, *shape / factor)`` in coarse voxels."""
        batch, ndim = pooled.shape[0], len(shape)
        coarse = self.coarse_shape(shape)
        field = (self.bound / self.factor) * torch.tanh(pooled)
        if self.parameterisation == "bspline":
            field = _bspline(field, coarse, self.lattice, self.factor)
        if self.sigma > 0:
            field = _gaussian(field, self.sigma)
        return field.reshape(batch, pieces, ndim, *coarse)

    def to_fine(self, field: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        """Coarse vector field ``(B, n, *S / factor)`` in coarse voxels → ``(B, n, *S)`` image
        voxels (linear interpolation, ``align_corners=False``, times ``factor``)."""
        if self.factor == 1:
            return field
        # scaled on the coarse grid (factor^n times fewer products; interpolation is linear,
        # and for a power-of-two factor the result is the same to the bit)
        return upsample_linear(field * self.factor, self.factor)

    def to_coarse(self, field: torch.Tensor) -> torch.Tensor:
        """Image-grid vector field ``(B, n, *S)`` in image voxels → ``(B, n, *S / factor)`` coarse
        voxels (average over each block, divided by ``factor``)."""
        self.coarse_shape(tuple(field.shape[2:]))
        return _average_pool(field, self.factor) / self.factor


# The defaults of the library, the CLI and the Train widget, chosen by the ablations in
# docs/RESULTS.md: the B-spline on the grid k = 2, bound 16 ("Velocity parameterisation": the
# only setting with no fold by either test and one component on every 3D test volume), its
# control points every 2 voxels with the pose level ("Accuracy under the guarantee": finer
# detail on lobed organs and silhouettes, still fold-free).
DEFAULT_SPACE = VelocitySpace("bspline", factor=2, lattice=2, sigma=0.0, bound=16.0)
# What models written before velocity spaces existed did: full resolution, α = 256 voxels.
LEGACY_SPACE = VelocitySpace(factor=1, bound=256.0)


def upsample_linear(field: torch.Tensor, factor: int) -> torch.Tensor:
    """``field`` ``(B, C, *S)`` linearly interpolated onto the grid ``factor·S``
    (``align_corners=False``, edges held): what ``F.interpolate(field, scale_factor=factor,
    mode="(bi|tri)linear")`` computes, to rounding. Without autograd recording, one axis at a
    time, each phase of ``factor`` output voxels written as one weighted sum of two shifted
    views (4.5 against 12.8 ms for ``(1, 3, 64, 64, 64)`` → 128³ on 2 threads: ATen's kernel
    recomputes the 2ⁿ taps and weights of every output voxel)."""
    if factor == 1:
        return field
    if torch.is_grad_enabled() and field.requires_grad:
        mode = "bilinear" if field.ndim == 4 else "trilinear"
        return F.interpolate(field, scale_factor=factor, mode=mode, align_corners=False)
    for dim in reversed(range(2, field.ndim)):  # the innermost axis (strided writes) while small
        field = _upsample_axis(field, dim, factor)
    return field


def _upsample_axis(field: torch.Tensor, dim: int, factor: int) -> torch.Tensor:
    """:func:`upsample_linear` along ``dim`` alone: output voxel ``factor·i + r`` sits at source
    position i + o, o = (r + ½)/factor − ½, so it is (1 − |o|)·x[i] + |o|·x[i ± 1] (the sign of
    o), and x[i] where the neighbour would fall outside."""
    size = field.shape[dim]
    out = field.new_empty(*field.shape[:dim + 1], factor, *field.shape[dim + 1:])
    for phase in range(factor):
        offset = (phase + 0.5) / factor - 0.5
        target = out.select(dim + 1, phase)
        weight = abs(offset)
        if size == 1 or weight == 0:
            target.copy_(field)
            continue
        inner = size - 1  # voxels with a neighbour on the side of o
        start, edge = (1, 0) if offset < 0 else (0, size - 1)
        neighbour = start - 1 if offset < 0 else 1
        torch.mul(field.narrow(dim, start, inner), 1 - weight, out=target.narrow(dim, start, inner))
        target.narrow(dim, start, inner).add_(field.narrow(dim, neighbour, inner), alpha=weight)
        target.narrow(dim, edge, 1).copy_(field.narrow(dim, edge, 1))
    return out.flatten(dim, dim + 1)


def _average_pool(field: torch.Tensor, size: int) -> torch.Tensor:
    """Mean over blocks of ``size`` voxels per axis (a partial last block: the mean of its part)."""
    if size == 1:
        return field
    pool = F.avg_pool2d if field.ndim == 4 else F.avg_pool3d
    return pool(field, size, ceil_mode=True, count_include_pad=False)


def _bspline(control: torch.Tensor, coarse: tuple[int, ...], lattice: int, factor: int
             ) -> torch.Tensor:
    """Cubic B-spline with ``control`` ``(B, C, *L)`` (control point j at image position
    ``lattice·j + (lattice − 1)/2``, edge points repeated) evaluated at the coarse grid points."""
    out = control
    for axis, size in enumerate(coarse):
        basis = _bspline_basis(size, control.shape[2 + axis], lattice, factor,
                               control.device, control.dtype)
        out = torch.movedim(torch.movedim(out, 2 + axis, -1) @ basis.T, -1, 2 + axis)
    return out


def _bspline_basis(points: int, controls: int, lattice: int, factor: int,
                   device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """``(points, controls)`` weights of the cubic B-spline at each coarse point; rows sum to 1."""
    return _bspline_basis_cpu(points, controls, lattice, factor).to(device=device, dtype=dtype)


@lru_cache(maxsize=32)
def _bspline_basis_cpu(points: int, controls: int, lattice: int, factor: int) -> torch.Tensor:
    """:func:`_bspline_basis` in float64 on the CPU, built once per grid (read-only). Built as a
    normal tensor even when first asked for under ``torch.inference_mode`` (an inference tensor
    could not be saved for backward by later training steps)."""
    with torch.inference_mode(False):
        position = torch.arange(points, dtype=torch.float64) * factor + (factor - 1) / 2
        knot = (position - (lattice - 1) / 2) / lattice  # in control indices
        basis = torch.zeros(points, controls, dtype=torch.float64)
        first = torch.floor(knot).long() - 1
        for shift in range(4):
            index = first + shift
            weight = _cubic_bspline(knot - index.double())
            basis.index_put_((torch.arange(points), index.clamp(0, controls - 1)), weight,
                             accumulate=True)
    return basis


def _cubic_bspline(t: torch.Tensor) -> torch.Tensor:
    """Uniform cubic B-spline kernel B₃(t), support |t| < 2."""
    t = t.abs()
    near = (4 - 6 * t**2 + 3 * t**3) / 6
    far = (2 - t).clamp_min(0) ** 3 / 6
    return torch.where(t < 1, near, far)


def _gaussian(field: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable normalised Gaussian blur of ``field`` ``(B, C, *S)``, σ voxels, edges repeated."""
    radius = max(1, math.ceil(3 * sigma))
    offsets = torch.arange(-radius, radius + 1, dtype=field.dtype, device=field.device)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    out = field
    for axis in range(field.ndim - 2):
        moved = torch.movedim(out, 2 + axis, -1)
        lines = moved.reshape(-1, 1, moved.shape[-1])
        lines = F.pad(lines, (radius, radius), mode="replicate")
        lines = F.conv1d(lines, kernel.view(1, 1, -1))
        out = torch.movedim(lines.reshape(moved.shape), -1, 2 + axis)
    return out
