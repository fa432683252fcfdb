"""A generalised Gaussian prior described in world millimetres, and back.

:func:`napari_difftt.core.prior.from_world` builds a prior from an ellipsoid in mm (centre,
semi-axes of the p = ½ contour, rotation angles, β); :func:`to_world` is its inverse, so a prior
fitted to a mask (:func:`~napari_difftt.core.prior.fit_to_mask`) can be shown and edited in mm.
Axis-aligned volumes only: world = origin + spacing · index per array axis.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["WorldEllipsoid", "euler_angles", "to_world"]


@dataclass(frozen=True)
class WorldEllipsoid:
    """The prior's ½-contour in mm, array order (z, y, x)."""

    mean_mm: tuple[float, ...]  # (n,) world position of the centre
    radii_mm: tuple[float, ...]  # (n,) semi-axes, along the rotated array axes
    rotation_deg: tuple[float, ...]  # 1 angle in 2D, 3 in 3D (see core.prior.rotation_matrix)
    beta: float


def to_world(
    prior, shape: Sequence[int], spacing: Sequence[float], origin: Sequence[float] | None = None
) -> WorldEllipsoid:
    """Describe a :class:`GeneralisedGaussianPrior` on a volume of ``shape`` in mm.

    Inverse of ``from_world(mean_mm, radii_mm, rotation_deg, beta, shape, spacing, origin)``
    up to the choice of principal axes (any order/sign gives the same ellipsoid).
    """
    n = len(shape)
    spacing = np.asarray(spacing, dtype=np.float64)
    origin = np.zeros(n) if origin is None else np.asarray(origin, dtype=np.float64)
    to_norm = 2.0 / (np.asarray(shape, dtype=np.float64) - 1)
    mean = prior.mean.detach().cpu().double().numpy()
    covariance = prior.covariance.detach().cpu().double().numpy()
    scale = to_norm / spacing  # mm → normalised per axis
    cov_mm = covariance / np.outer(scale, scale)
    values, vectors = np.linalg.eigh((cov_mm + cov_mm.T) / 2)
    # order the principal axes like the array axes they are closest to, right-handed
    order = _closest_axes(vectors)
    vectors, values = vectors[:, order], values[order]
    vectors = vectors * np.where(np.diag(vectors) < 0, -1.0, 1.0)
    if np.linalg.det(vectors) < 0:
        vectors[:, -1] *= -1
    return WorldEllipsoid(
        mean_mm=tuple(float(v) for v in origin + (mean + 1.0) / to_norm * spacing),
        radii_mm=tuple(float(math.sqrt(max(v, 0.0))) for v in values),
        rotation_deg=euler_angles(vectors),
        beta=float(prior.beta.detach()),
    )


def euler_angles(rotation: np.ndarray) -> tuple[float, ...]:
    """Angles in degrees with ``core.prior.rotation_matrix(angles, n) == rotation``.

    2D: one angle; 3D: (a₀, a₁, a₂) with R = R₀ R₁ R₂ (R_k rotates about array axis k).
    """
    r = np.asarray(rotation, dtype=np.float64)
    if r.shape == (2, 2):
        return (math.degrees(math.atan2(r[1, 0], r[0, 0])),)
    if r.shape != (3, 3):
        raise ValueError(f"rotation must be a 2×2 or 3×3 matrix, got shape {r.shape}")
    # R₁R₂ has first row (c₁c₂, −c₁s₂, −s₁); R₀ leaves it alone and mixes rows 1 and 2.
    a1 = math.asin(float(np.clip(-r[0, 2], -1.0, 1.0)))
    if abs(math.cos(a1)) > 1e-9:
        a0 = math.atan2(-r[1, 2], r[2, 2])
        a2 = math.atan2(-r[0, 1], r[0, 0])
    else:  # gimbal lock: only a₀ ± a₂ is defined; put it all in a₂
        a0 = 0.0
        a2 = math.atan2(r[1, 0], r[1, 1])
    return tuple(math.degrees(a) for a in (a0, a1, a2))


def _closest_axes(vectors: np.ndarray) -> list[int]:
    """Permutation of the eigenvector columns that best matches them to array axes 0…n−1."""
    from itertools import permutations

    n = vectors.shape[0]
    weight = np.abs(vectors)
    return list(max(permutations(range(n)), key=lambda p: sum(weight[k, p[k]] for k in range(n))))
