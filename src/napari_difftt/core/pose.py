"""The pose level of the template transformer: one affine map per image that places the
analytic prior where the organ is, and a boundary force that tells the velocities where to push.

:class:`MomentPose` reads the network's last features and predicts a soft organ mask
m = σ(g·h(f) + logit p) (h a zero-initialised 1×1 convolution, g = :data:`MASK_GAIN`, p the
prior map clamped to [ε, 1 − ε]), trained by its own binary cross-entropy beside the output's.
The pose A maps the ellipsoid of m's moments onto the ellipsoid of p's: with centroids μ and
Cholesky factors F of the second central moments, A(y) = μ_p + F_p F_m⁻¹ (y − μ_m), in the
prior's normalised coordinates. ``det A = det F_p / det F_m > 0``, so A is a diffeomorphism
whatever the network predicts and O(x) = S(A(Φ(x))) keeps the prior's topology. Because S is a
generalised Gaussian, S∘A is one too (:func:`posed_prior`): a prediction's record carries the
prior the flow actually deformed. Untrained, m = p and A = id.

:func:`boundary_force` is (m − p∘A) times the unit inward normal of the posed prior's
ellipsoids: the direction a displacement must take for S(A(Φ(x))) to grow where m says organ
and to shrink where it does not. The template transformer adds it, with a learnt weight per
piece, to the network's velocities before their bound (``TemplateTransformer(pose=True)``).
"""

from __future__ import annotations

from itertools import combinations

import torch
from torch import nn

from .flow.grid import squared_length
from .nets import pointwise
from .prior import GeneralisedGaussianPrior

__all__ = ["MASK_GAIN", "MomentPose", "boundary_force", "posed_prior"]

# The prior map is clamped to [ε, 1 − ε] before its logit (±2.2), and the mask head's output is
# scaled by a gain: Adam moves each weight by about lr per step, so without them a few hundred
# steps cannot move the mask's logits far enough from the prior's.
_P_EPS = 0.1
MASK_GAIN = 8.0
_MASS_EPS = 1e-6  # smallest mass of a moment map (a sum of probabilities)
_RIDGE = 1e-4  # added to second moments (normalised units², a radius of 0.01)
_NORMAL_EPS = 1e-8


class MomentPose(nn.Module):
    """Features ``(B, C, *S)``, the normalised coordinates of their grid's planes (one ``(S_k,)``
    tensor per axis, :func:`~napari_difftt.core.prior.grid_axes`), the prior on the grid
    ``(1, 1, *S)`` and the prior's centre ``(n,)`` → (pose ``(B, n + 1, n + 1)``, the homogeneous
    matrix of A; soft mask ``(B, 1, *S)``), as in the module docstring."""

    def __init__(self, ndim: int, channels: int) -> None:
        super().__init__()
        self.ndim = ndim
        self.head = pointwise(ndim, channels, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, features: torch.Tensor, axes: tuple[torch.Tensor, ...],
                prior: torch.Tensor, centre: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        p = prior.to(features.dtype).clamp(_P_EPS, 1 - _P_EPS)
        mask = torch.sigmoid(MASK_GAIN * self.head(features) + torch.logit(p))
        return self.pose_of(mask, axes, p, centre), mask

    def pose_of(self, mask: torch.Tensor, axes: tuple[torch.Tensor, ...], p: torch.Tensor,
                centre: torch.Tensor) -> torch.Tensor:
        """The pose ``(B, n + 1, n + 1)`` mapping ``mask``'s moment ellipsoid onto ``p``'s,
        written about ``centre`` c: A(y) = c + E (y − c) + s."""
        n = self.ndim
        mean_m, factor_m = _moments(mask, axes)
        mean_p, factor_p = _moments(p[:1], axes)  # one prior for the batch: broadcast below
        stretch = factor_p @ torch.linalg.inv(factor_m)
        centre = centre.to(mask.dtype)
        shift = mean_p - centre + torch.einsum("bij,bj->bi", stretch, centre - mean_m)
        pose = torch.eye(n + 1, dtype=mask.dtype, device=mask.device).repeat(len(mask), 1, 1)
        pose[:, :n, :n] = stretch
        pose[:, :n, n] = shift
        return pose


def boundary_force(mask: torch.Tensor, prior: torch.Tensor, white: torch.Tensor,
                   matrix: torch.Tensor) -> torch.Tensor:
    """(m − p) times the unit inward normal of the posed prior's ellipsoids, per voxel
    ``(B, n, *S)`` (voxel axes, |·| ≤ 1): where the soft mask ``m`` ``(B, 1, *S)`` says organ and
    the posed prior ``p`` ``(B, 1, *S)`` does not, a displacement along it pulls the coordinates
    towards the prior's centre, so S(A(Φ(x))) grows there; where m < p it shrinks. The normal is
    analytic: the posed prior's whitened offsets are ``white`` = M i + b ``(B, n, *S)`` at voxel
    index i with ``matrix`` M ``(B, n, n)``
    (:meth:`~napari_difftt.core.prior.GeneralisedGaussianPrior.index_whitening`), so
    ∇_i d² = 2 Mᵀ white."""
    batch, spatial = max(len(matrix), len(white)), white.shape[1:]
    outward = torch.bmm(matrix.to(white.dtype).transpose(1, 2).expand(batch, -1, -1),
                        white.expand(batch, *spatial).flatten(2)).view(batch, *spatial)
    size = squared_length(outward).clamp_min(_NORMAL_EPS**2).rsqrt()
    return outward * ((prior - mask) * size)


def posed_prior(prior: GeneralisedGaussianPrior, pose: torch.Tensor) -> GeneralisedGaussianPrior:
    """S∘A as a frozen :class:`GeneralisedGaussianPrior` for one ``pose`` ``(n + 1, n + 1)``:
    mean c − E⁻¹ s, covariance E⁻¹ Σ E⁻ᵀ (c, Σ the prior's), the prior's β."""
    n = prior.ndim
    pose = pose.detach().double().cpu()
    inverse = torch.linalg.inv(pose[:n, :n])
    mean = prior.mean.detach().double().cpu()
    covariance = inverse @ prior.covariance.detach().double().cpu() @ inverse.T
    return GeneralisedGaussianPrior(
        n, mean=(mean - inverse @ pose[:n, n]).tolist(),
        covariance=(0.5 * (covariance + covariance.T)).numpy(),
        beta=float(prior.beta.detach()),
    )


def _moments(weights: torch.Tensor,
             axes: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Centroid ``(B, n)`` and Cholesky factor ``(B, n, n)`` of the second central moment of
    the confident part of a probability map ``weights`` ``(B, 1, *S)`` on the grid whose planes
    sit at ``axes`` (one ``(S_k,)`` tensor per axis), plus a small ridge. Each voxel weighs
    max(p − ½, 0): the faint remainder of a soft mask over a whole volume would otherwise
    outweigh the organ. The grid is separable, so the moments come from the map's sums over
    all axes but two (one pass each) instead of n² products at every voxel."""
    n = len(axes)
    w = (weights[:, 0] - 0.5).clamp_min(0)  # (B, *S)
    axes = [a.to(w.dtype) for a in axes]
    pairs = {(i, j): w.sum([1 + k for k in range(n) if k not in (i, j)]) if n > 2 else w
             for i, j in combinations(range(n), 2)}  # (B, S_i, S_j)
    singles = [pairs[0, 1].sum(2), *(pairs[0, k].sum(1) for k in range(1, n))]  # (B, S_k)
    mass = singles[0].sum(1).clamp_min(_MASS_EPS)  # (B,)
    mean = torch.stack([m @ a for m, a in zip(singles, axes, strict=True)], 1) / mass[:, None]
    rows = []
    for i in range(n):
        row = []
        for j in range(n):
            if i == j:
                row.append(singles[i] @ axes[i].square())
            else:
                low, high = min(i, j), max(i, j)
                row.append(torch.einsum("bkl,k,l->b", pairs[low, high], axes[low], axes[high]))
        rows.append(torch.stack(row, 1))
    raw = torch.stack(rows, 1) / mass[:, None, None]  # E[y yᵀ]
    second = raw - mean[:, :, None] * mean[:, None, :]
    ridge = _RIDGE * torch.eye(n, dtype=weights.dtype, device=weights.device)
    return mean, torch.linalg.cholesky(second + ridge)
