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

import torch
from torch import nn

from .flow.grid import normalised_per_voxel, squared_length
from .prior import GeneralisedGaussianPrior

__all__ = ["MASK_GAIN", "MomentPose", "apply_pose", "boundary_force", "posed_prior"]

# The prior map is clamped to [ε, 1 − ε] before its logit (±2.2), and the mask head's output is
# scaled by a gain: Adam moves each weight by about lr per step, so without them a few hundred
# steps cannot move the mask's logits far enough from the prior's.
_P_EPS = 0.1
MASK_GAIN = 8.0
_MASS_EPS = 1e-6  # smallest mass of a moment map (a sum of probabilities)
_RIDGE = 1e-4  # added to second moments (normalised units², a radius of 0.01)
_NORMAL_EPS = 1e-8


class MomentPose(nn.Module):
    """Features ``(B, C, *S)``, their normalised coordinates ``(1, n, *S)``, the prior on the grid
    ``(1, 1, *S)`` and the prior's centre ``(n,)`` → (pose ``(B, n + 1, n + 1)``, the homogeneous
    matrix of A; soft mask ``(B, 1, *S)``), as in the module docstring."""

    def __init__(self, ndim: int, channels: int) -> None:
        super().__init__()
        self.ndim = ndim
        conv = nn.Conv2d if ndim == 2 else nn.Conv3d
        self.head = conv(channels, 1, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, features: torch.Tensor, coords: torch.Tensor, prior: torch.Tensor,
                centre: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        p = prior.to(features.dtype).clamp(_P_EPS, 1 - _P_EPS)
        mask = torch.sigmoid(MASK_GAIN * self.head(features) + torch.logit(p))
        return self.pose_of(mask, coords, p, centre), mask

    def pose_of(self, mask: torch.Tensor, coords: torch.Tensor, p: torch.Tensor,
                centre: torch.Tensor) -> torch.Tensor:
        """The pose ``(B, n + 1, n + 1)`` mapping ``mask``'s moment ellipsoid onto ``p``'s,
        written about ``centre`` c: A(y) = c + E (y − c) + s."""
        n = self.ndim
        mean_m, factor_m = _moments(mask, coords)
        mean_p, factor_p = _moments(p.expand_as(mask), coords)
        stretch = factor_p @ torch.linalg.inv(factor_m)
        centre = centre.to(mask.dtype)
        shift = mean_p - centre + torch.einsum("bij,bj->bi", stretch, centre - mean_m)
        pose = torch.eye(n + 1, dtype=mask.dtype, device=mask.device).repeat(len(mask), 1, 1)
        pose[:, :n, :n] = stretch
        pose[:, :n, n] = shift
        return pose


def apply_pose(pose: torch.Tensor, coords: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
    """A(y) = c + E (y − c) + s for normalised ``coords`` ``(B, n, *S)``, ``pose``
    ``(B, n + 1, n + 1)`` = [[E, s], [0, 1]] and ``centre`` c ``(n,)`` → ``(B, n, *S)``."""
    n = coords.shape[1]
    spatial = (1,) * (coords.ndim - 2)
    centre = centre.to(coords.dtype).view(1, n, *spatial)
    pose = pose.to(coords.dtype)
    moved = torch.einsum("bij,bj...->bi...", pose[:, :n, :n], coords - centre)
    return moved + centre + pose[:, :n, n].view(-1, n, *spatial)


def boundary_force(mask: torch.Tensor, prior: torch.Tensor, posed: torch.Tensor,
                   pose: torch.Tensor, shape: GeneralisedGaussianPrior,
                   full_shape: tuple[int, ...]) -> torch.Tensor:
    """(m − p) times the unit inward normal of the posed prior's ellipsoids, per voxel
    ``(B, n, *S)`` (voxel axes, |·| ≤ 1): where the soft mask ``m`` ``(B, 1, *S)`` says organ and
    the posed prior ``p`` ``(B, 1, *S)`` does not, a displacement along it pulls the coordinates
    towards the prior's centre, so S(A(Φ(x))) grows there; where m < p it shrinks. The normal is
    analytic: ∇_y d² ∝ Eᵀ Σ⁻¹ (A(y) − μ) at the posed coordinates ``posed`` ``(B, n, *S)``, taken
    to the voxel axes of a volume of ``full_shape``."""
    n = posed.shape[1]
    spatial = (1,) * (posed.ndim - 2)
    precision = torch.linalg.inv(shape.covariance).to(posed.dtype)
    offset = posed - shape.mean.to(posed.dtype).view(1, n, *spatial)
    outward = torch.einsum("bji,jk,bk...->bi...", pose[:, :n, :n].to(posed.dtype), precision,
                           offset)
    outward = outward * posed.new_tensor(normalised_per_voxel(full_shape)).view(1, n, *spatial)
    inward = -outward / squared_length(outward).clamp_min(_NORMAL_EPS**2).sqrt()
    return (mask - prior) * inward


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


def _moments(weights: torch.Tensor, coords: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Centroid ``(B, n)`` and Cholesky factor ``(B, n, n)`` of the second central moment of
    the confident part of a probability map ``weights`` ``(B, 1, *S)`` at ``coords``
    ``(1, n, *S)`` (plus a small ridge). Each voxel weighs max(p − ½, 0): the faint remainder of
    a soft mask over a whole volume would otherwise outweigh the organ."""
    n = coords.shape[1]
    w = (weights - 0.5).clamp_min(0).flatten(2)  # (B, 1, V)
    y = coords.to(weights.dtype).flatten(2)  # (1, n, V)
    mass = w.sum(-1).clamp_min(_MASS_EPS)  # (B, 1)
    mean = (w * y).sum(-1) / mass  # (B, n)
    centred = y - mean.unsqueeze(-1)  # (B, n, V)
    second = torch.einsum("bkv,blv->bkl", centred * w, centred) / mass.unsqueeze(-1)
    ridge = _RIDGE * torch.eye(n, dtype=weights.dtype, device=weights.device)
    return mean, torch.linalg.cholesky(second + ridge)
