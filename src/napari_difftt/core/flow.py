"""Diffeomorphic flows of velocity fields: exponentials, Lie brackets, BCH, trees, Jacobians.

All fields are ``(B, n, *S)`` in voxels, component k along array axis k (see :mod:`.grid`).
Derivatives are central differences in voxel units (one-sided on the outermost voxels).
Every function is differentiable with respect to its tensor inputs (exp, and what uses it, to
first order). Every public function checks its fields the same way (:func:`.checks.check_field`:
a floating ``(B, n, *S)`` tensor, B >= 1, n = 2 or 3 matching the spatial axes, finite values).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import NamedTuple

import torch

from ..errors import SquaringCapWarning
from ._squaring import scaling_and_squaring
from .checks import check_field, check_same_field, check_squarings
from .grid import compose, identity, normalised_identity, sample, to_normalised

__all__ = [
    "Integrated",
    "bch",
    "choose_squarings",
    "exp",
    "flow_at",
    "flow_frames",
    "folding_fraction",
    "integrate",
    "jacobian",
    "jacobian_det",
    "lie_bracket",
]

MAX_SQUARINGS = 20


class Integrated(NamedTuple):
    """Result of :func:`integrate`: the displacement of Φ and, for "bch", its single velocity."""

    displacement: torch.Tensor  # (B, n, *S) voxels
    velocity: torch.Tensor | None  # (B, n, *S) voxels; exp(velocity) ≈ Φ, exp(−velocity) ≈ Φ⁻¹


def exp(
    velocity: torch.Tensor, squarings: int | None = None, max_step: float = 0.5
) -> torch.Tensor:
    """Displacement of exp(v) by scaling and squaring (the paper's Algorithm 1).

    ``velocity`` ``(B, n, *S)`` voxels → displacement ``(B, n, *S)`` voxels. ``squarings=None``
    picks the smallest N with max‖v‖ / 2^N ≤ ``max_step`` voxels (capped at 20); a fixed N
    avoids the device synchronisation that choice needs. Under autograd the backward pass stores
    one field per squaring and is first-order only (``create_graph=True`` raises RuntimeError).
    """
    check_field("velocity", velocity)
    steps = (
        _choose_squarings(velocity, max_step) if squarings is None else check_squarings(squarings)
    )
    return _exp(velocity, steps)


def choose_squarings(velocity: torch.Tensor, max_step: float = 0.5) -> int:
    """Smallest N in 0..20 with max‖v‖ / 2^N ≤ ``max_step`` voxels, ``velocity`` ``(B, n, *S)``.

    When even 20 squarings leave a first step above ``max_step`` (max‖v‖ > 2^20 · max_step,
    e.g. an untrained or diverged network) the result is 20 and a :class:`SquaringCapWarning`
    gives the step reached in voxels.
    """
    check_field("velocity", velocity)
    return _choose_squarings(velocity, max_step)


def flow_at(velocity: torch.Tensor, t: float, squarings: int | None = None) -> torch.Tensor:
    """Displacement of φ(t) = exp(t·v), ``(B, n, *S)`` voxels, for a time t (usually in [0, 1])."""
    check_field("velocity", velocity)
    if not math.isfinite(t):
        raise ValueError(f"t must be a finite number, got {t!r}")
    return exp(velocity * t, squarings)


def flow_frames(velocity: torch.Tensor, n: int, squarings: int | None = None) -> torch.Tensor:
    """Displacements of φ(k/n), k = 0…n, as ``(n + 1, B, dim, *S)`` voxels.

    Computed as repeated composition of one exp(v/n): frame k = exp(v/n) ∘ frame k−1, so the
    cost is one exponential and n compositions, not n exponentials.
    """
    check_field("velocity", velocity)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int (number of time steps), got {n!r}")
    step = exp(velocity / n, squarings)
    frames = [torch.zeros_like(velocity), step]
    for _ in range(n - 1):
        frames.append(compose(step, frames[-1]))
    return torch.stack(frames)


def jacobian(field: torch.Tensor) -> torch.Tensor:
    """Spatial derivatives ∂f_i/∂x_j of ``field`` ``(B, n, *S)`` → ``(B, n, n, *S)`` (per voxel).

    Central differences inside, one-sided differences on the first and last voxel of each axis.
    """
    check_field("field", field)
    return _jacobian(field)


def _jacobian(field: torch.Tensor) -> torch.Tensor:
    """:func:`jacobian` without the argument checks."""
    return torch.stack([_derivative(field, axis) for axis in range(field.ndim - 2)], dim=2)


def lie_bracket(v: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Lie bracket [v, w] = (Dv)·w − (Dw)·v of two fields ``(B, n, *S)`` voxels (same shape).

    Sign as Vercauteren et al. 2008 (eq. 6): for linear fields v = A·x, w = B·x this is
    (AB − BA)·x, so the BCH series below is the matrix one.
    """
    check_field("v", v)
    check_field("w", w)
    check_same_field("v", v, "w", w)
    return _lie_bracket(v, w)


def bch(v: torch.Tensor, w: torch.Tensor, order: int = 2) -> torch.Tensor:
    """Velocity z ≈ log(exp(v) ∘ exp(w)) (w acts first), BCH series truncated at ``order`` 1…4.

    Order 1: v + w; 2: + ½[v, w]; 3: + 1/12([v, [v, w]] + [w, [w, v]]); 4: − 1/24 [w, [v, [v, w]]].
    """
    check_field("v", v)
    check_field("w", w)
    check_same_field("v", v, "w", w)
    _check_order(order)
    return _bch(v, w, order)


def integrate(
    velocities: torch.Tensor | Sequence[torch.Tensor],
    method: str = "bch",
    order: int = 2,
    squarings: int | None = None,
) -> Integrated:
    """Combine a piecewise time-dependent flow Φ = exp(v_T) ∘ … ∘ exp(v₁) (v₁ acts first).

    ``velocities`` is ``(B, T, n, *S)`` voxels or a sequence of T fields ``(B, n, *S)``. Pieces
    are combined pairwise in a balanced binary tree (depth ⌈log₂ T⌉): ``"bch"`` merges velocities
    by BCH of ``order`` and exponentiates once (returning that velocity too); ``"compose"``
    exponentiates each piece and composes the displacements.
    """
    pieces = _split_velocities(velocities)
    if method == "bch":
        _check_order(order)
        velocity = _tree(pieces, lambda later, earlier: _bch(later, earlier, order))
        steps = _choose_squarings(velocity) if squarings is None else check_squarings(squarings)
        return Integrated(_exp(velocity, steps), velocity)
    if method == "compose":
        if squarings is not None:
            check_squarings(squarings)
        exps = [_exp(v, _choose_squarings(v) if squarings is None else squarings) for v in pieces]
        return Integrated(_tree(exps, _compose_unchecked), None)
    raise ValueError(f"method must be 'bch' or 'compose', got {method!r}")


def jacobian_det(displacement: torch.Tensor, scheme: str = "central") -> torch.Tensor:
    """det ∇φ of φ = id + ``displacement`` ``(B, n, *S)`` voxels → ``(B, *S)``.

    ``scheme="central"``: central differences (as in published tables), one-sided at the borders.
    """
    check_field("displacement", displacement)
    if scheme != "central":
        raise ValueError(f"jacobian_det supports scheme='central', got {scheme!r}")
    return _det(_identity_plus(_jacobian(displacement)))


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
        return (jacobian_det(displacement) <= 0).flatten(1).float().mean(1)
    if scheme == "digital":
        return _digital_folds(displacement).flatten(1).float().mean(1)
    raise ValueError(f"scheme must be 'central' or 'digital', got {scheme!r}")


# --------------------------------------------------------------------------------------------
# helpers (no argument checks: callers have checked)


def _exp(velocity: torch.Tensor, squarings: int) -> torch.Tensor:
    """Scaling and squaring in normalised units (each squaring is one add and one sample); under
    autograd a custom function that stores one field per squaring (see :mod:`._squaring`)."""
    return scaling_and_squaring(velocity, squarings)


def _choose_squarings(velocity: torch.Tensor, max_step: float = 0.5) -> int:
    """:func:`choose_squarings` without the field check."""
    if not max_step > 0:
        raise ValueError(f"max_step must be a positive number of voxels, got {max_step!r}")
    largest = float(velocity.detach().norm(dim=1).max())
    if math.isinf(largest):  # float32 components >= ~1e19 overflow the norm: redo in float64
        largest = float(velocity.detach().double().norm(dim=1).max())
    if largest <= max_step:
        return 0
    needed = math.ceil(math.log2(largest / max_step))
    if needed > MAX_SQUARINGS:
        warnings.warn(
            f"exp: max‖v‖ = {largest:.3g} voxels needs {needed} squarings for steps of "
            f"{max_step:g} voxel; capped at {MAX_SQUARINGS}, the first step is "
            f"{largest / 2**MAX_SQUARINGS:.3g} voxels, so the result is inaccurate (bound the "
            "velocity, e.g. a tanh, or pass a fixed number of squarings)",
            SquaringCapWarning,
            stacklevel=3,
        )
        return MAX_SQUARINGS
    return needed


def _compose_unchecked(u_outer: torch.Tensor, u_inner: torch.Tensor) -> torch.Tensor:
    base = normalised_identity(u_inner.shape[2:], device=u_inner.device, dtype=u_inner.dtype)
    return sample(u_outer, base + to_normalised(u_inner), padding="border", add_to=u_inner)


def _derivative(field: torch.Tensor, axis: int) -> torch.Tensor:
    """∂field/∂x_axis in voxel units, ``(B, n, *S)``: central inside, one-sided at both ends."""
    dim = axis + 2
    size = field.shape[dim]
    first = field.narrow(dim, 1, 1) - field.narrow(dim, 0, 1)
    last = field.narrow(dim, size - 1, 1) - field.narrow(dim, size - 2, 1)
    if size == 2:
        return torch.cat([first, last], dim)
    inner = (field.narrow(dim, 2, size - 2) - field.narrow(dim, 0, size - 2)) / 2
    return torch.cat([first, inner, last], dim)


def _lie_bracket(v: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return _apply(_jacobian(v), w) - _apply(_jacobian(w), v)


def _apply(matrix: torch.Tensor, vector: torch.Tensor) -> torch.Tensor:
    """Per-voxel matrix ``(B, n, n, *S)`` times vector ``(B, n, *S)`` → ``(B, n, *S)``."""
    return (matrix * vector.unsqueeze(1)).sum(2)


def _bch(v: torch.Tensor, w: torch.Tensor, order: int) -> torch.Tensor:
    z = v + w
    if order < 2:
        return z
    vw = _lie_bracket(v, w)
    z = z + vw / 2
    if order < 3:
        return z
    v_vw = _lie_bracket(v, vw)
    z = z + (v_vw - _lie_bracket(w, vw)) / 12  # [w, [w, v]] = −[w, [v, w]]
    if order < 4:
        return z
    return z - _lie_bracket(w, v_vw) / 24


def _check_order(order: object) -> None:
    if isinstance(order, bool) or not isinstance(order, int) or not 1 <= order <= 4:
        raise ValueError(f"order must be an int in 1..4, got {order!r}")


def _split_velocities(velocities: torch.Tensor | Sequence[torch.Tensor]) -> list[torch.Tensor]:
    if isinstance(velocities, torch.Tensor):
        if velocities.ndim not in (5, 6):
            raise ValueError(
                "velocities must have shape (B, T, n, *S) with 2 or 3 spatial axes, got "
                f"{tuple(velocities.shape)}"
            )
        pieces = list(velocities.unbind(1))
    else:
        pieces = list(velocities)
    if not pieces:
        raise ValueError("velocities must hold at least one field (T >= 1), got none")
    for index, piece in enumerate(pieces):
        check_field(f"velocities[{index}]", piece)
        check_same_field("velocities[0]", pieces[0], f"velocities[{index}]", piece)
    return pieces


def _tree(items: list[torch.Tensor], merge) -> torch.Tensor:
    """Merge a time-ordered list pairwise, ``merge(later, earlier)``, in a balanced binary tree."""
    while len(items) > 1:
        merged = [merge(items[i + 1], items[i]) for i in range(0, len(items) - 1, 2)]
        if len(items) % 2:
            merged.append(items[-1])
        items = merged
    return items[0]


def _identity_plus(grad: torch.Tensor) -> torch.Tensor:
    """I + ∇u for ∇u ``(B, n, n, *S)``."""
    n = grad.shape[1]
    eye = torch.eye(n, dtype=grad.dtype, device=grad.device).view(1, n, n, *([1] * (grad.ndim - 3)))
    return grad + eye


def _det(m: torch.Tensor) -> torch.Tensor:
    """Determinant of per-voxel matrices ``(B, n, n, *S)`` → ``(B, *S)`` (closed form, n = 2, 3)."""
    if m.shape[1] == 2:
        return m[:, 0, 0] * m[:, 1, 1] - m[:, 0, 1] * m[:, 1, 0]
    return (
        m[:, 0, 0] * (m[:, 1, 1] * m[:, 2, 2] - m[:, 1, 2] * m[:, 2, 1])
        - m[:, 0, 1] * (m[:, 1, 0] * m[:, 2, 2] - m[:, 1, 2] * m[:, 2, 0])
        + m[:, 0, 2] * (m[:, 1, 0] * m[:, 2, 1] - m[:, 1, 1] * m[:, 2, 0])
    )


def _digital_folds(displacement: torch.Tensor) -> torch.Tensor:
    """Boolean ``(B, *S − 2)`` on interior voxels: any one-sided (simplex) Jacobian ≤ 0."""
    phi = displacement + _identity_like(displacement)
    n = phi.ndim - 2
    interior = [slice(None), slice(None)] + [slice(1, -1)] * n

    def shifted(offsets: Sequence[int]) -> torch.Tensor:
        index = [slice(None), slice(None)]
        index += [slice(1 + o, phi.shape[2 + a] - 1 + o) for a, o in enumerate(offsets)]
        return phi[tuple(index)]

    centre = phi[tuple(interior)]
    dets = []
    for signs in torch.cartesian_prod(*[torch.tensor([-1, 1])] * n).tolist():
        # corner simplex at the voxel: edges to its neighbour along each axis, oriented ±
        columns = []
        for axis, sign in enumerate(signs):
            step = [0] * n
            step[axis] = sign
            columns.append((shifted(step) - centre) * sign)
        dets.append(_det(torch.stack(columns, dim=2)))
    if n == 3:
        # central tetrahedra of the cube [x, x + 1]³, both parities; identity edges give det ±2
        for origin, apexes in (
            ((0, 0, 0), ((0, 1, 1), (1, 0, 1), (1, 1, 0))),
            ((1, 1, 1), ((1, 0, 0), (0, 1, 0), (0, 0, 1))),
        ):
            base = shifted(origin)
            columns = [shifted(apex) - base for apex in apexes]
            sign = 0.5 if origin == (0, 0, 0) else -0.5
            dets.append(sign * _det(torch.stack(columns, dim=2)))
    return (torch.stack(dets) <= 0).any(0)


def _identity_like(field: torch.Tensor) -> torch.Tensor:
    return identity(field.shape[2:], device=field.device, dtype=field.dtype).unsqueeze(0)
