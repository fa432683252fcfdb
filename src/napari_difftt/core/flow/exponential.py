"""Exponentials of velocity fields, Lie brackets, BCH and the piecewise tree.

All fields are ``(B, n, *S)`` in voxels, component k along array axis k (see :mod:`.grid`).
Derivatives are central differences in voxel units (:mod:`.jacobian`). Every function is
differentiable with respect to its tensor inputs (exp, and what uses it, to first order). Every
public function checks its fields the same way (:func:`.checks.check_field`: a floating
``(B, n, *S)`` tensor, B >= 1, n = 2 or 3 matching the spatial axes, finite values).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import NamedTuple

import torch

from ...errors import SquaringCapWarning
from .checks import all_finite, check_field, check_same_field, check_squarings
from .grid import compose, compose_unchecked, squared_length
from .jacobian import add_derivative_product, derivative
from .squaring import scaling_and_squaring

__all__ = [
    "Integrated",
    "bch",
    "choose_squarings",
    "exp",
    "exp_frames",
    "flow_at",
    "integrate",
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


def exp_frames(velocity: torch.Tensor, n: int, squarings: int | None = None) -> torch.Tensor:
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
    z = _bch(v, w, order)
    _check_bch_finite(z, [v, w], order)
    return z


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
    exponentiates each piece and composes the displacements. Velocities so large that their
    BCH combination overflows (e.g. 1e20 voxels in float32) raise ValueError.
    """
    pieces = _split_velocities(velocities)
    if method == "bch":
        _check_order(order)
        velocity = _tree(pieces, lambda later, earlier: _bch(later, earlier, order))
        _check_bch_finite(velocity, pieces, order)
        steps = _choose_squarings(velocity) if squarings is None else check_squarings(squarings)
        return Integrated(_exp(velocity, steps), velocity)
    if method == "compose":
        if squarings is not None:
            check_squarings(squarings)
        exps = [_exp(v, _choose_squarings(v) if squarings is None else squarings) for v in pieces]
        return Integrated(_tree(exps, compose_unchecked), None)
    raise ValueError(f"method must be 'bch' or 'compose', got {method!r}")


# --------------------------------------------------------------------------------------------
# helpers (no argument checks: callers have checked)


def _exp(velocity: torch.Tensor, squarings: int) -> torch.Tensor:
    """Scaling and squaring in normalised units (each squaring is one add and one sample); under
    autograd a custom function that stores one field per squaring (see :mod:`.squaring`)."""
    return scaling_and_squaring(velocity, squarings)


def _choose_squarings(velocity: torch.Tensor, max_step: float = 0.5) -> int:
    """:func:`choose_squarings` without the field check."""
    if not max_step > 0:
        raise ValueError(f"max_step must be a positive number of voxels, got {max_step!r}")
    largest = math.sqrt(float(squared_length(velocity.detach()).max()))
    if math.isinf(largest):  # float32 components >= ~1e19 overflow the square: redo in float64
        largest = math.sqrt(float(squared_length(velocity.detach().double()).max()))
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


def _lie_bracket(v: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """[v, w] = Σ_j (∂_j v · w_j − ∂_j w · v_j), one axis at a time: the same sum as
    (Dv)·w − (Dw)·v without building the ``(B, n, n, *S)`` Jacobians."""
    bracket = torch.zeros_like(v)
    recorded = torch.is_grad_enabled() and (v.requires_grad or w.requires_grad)
    for axis in range(v.ndim - 2):
        if recorded:
            bracket += derivative(v, axis) * w[:, axis : axis + 1]
            bracket -= derivative(w, axis) * v[:, axis : axis + 1]
        else:  # the same sums, without the concatenated derivatives
            add_derivative_product(bracket, v, axis, w[:, axis : axis + 1])
            add_derivative_product(bracket, w, axis, v[:, axis : axis + 1], sign=-1)
    return bracket


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


def _check_bch_finite(velocity: torch.Tensor, pieces: list[torch.Tensor], order: int) -> None:
    """Refuse velocities whose BCH combination overflows (its brackets grow as ‖v‖²)."""
    if all_finite(velocity):
        return
    largest = max(float(p.detach().double().abs().max()) for p in pieces)
    raise ValueError(
        f"velocities: their BCH combination of order {order} overflows {velocity.dtype} "
        f"(largest component {largest:.3g} voxels; the Lie brackets grow as its square): "
        "bound the velocities (e.g. a tanh) or use method='compose'"
    )


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
