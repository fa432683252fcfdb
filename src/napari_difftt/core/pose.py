"""The pose level of the flow: one affine map per image, the exact exponential of a linear
velocity field, that places the analytic prior before the diffeomorphism deforms it.

A :class:`PoseHead` reads the network's last features and predicts a linear velocity field
v(y) = M (y − c) + t in the prior's normalised coordinates (``c`` the prior's mean). Its flow
for unit time is exact: with the augmented matrix L = [[M, t], [0, 0]], ``exp(L)`` =
[[E, s], [0, 1]] and A(y) = c + E (y − c) + s. ``det E = e^{tr M} > 0``, so A is a
diffeomorphism whatever the network predicts, and composing it with the velocity flow keeps the
topology: O(x) = S(A(Φ(x))). Because S is a generalised Gaussian, S∘A is one too (mean
c − E⁻¹ s, covariance E⁻¹ Σ E⁻ᵀ, the same β): :func:`posed_prior` gives it, so a prediction's
record carries the prior the flow actually deformed.

The head's descriptor is, per feature channel, the mean of the feature and of the feature times
each coordinate and each product of two coordinates over the grid (first and second moments):
where and how large a structure is, in full-volume coordinates, so a patch and a whole volume
describe the same organ alike. Its last layer starts at zero: an untrained pose is the identity.
"""

from __future__ import annotations

import torch
from torch import nn

from .prior import GeneralisedGaussianPrior

__all__ = ["POSE_BOUNDS", "PoseHead", "apply_pose", "posed_prior"]

# tanh bounds of the linear field's matrix M and offset t (normalised units): |log-scale| ≤ 1
# per axis (a factor e), translations up to half the volume's half-extent per piece of time.
POSE_BOUNDS = (1.0, 0.5)
_HIDDEN = 32


class PoseHead(nn.Module):
    """Features ``(B, C, *S)`` and their coordinates ``(1, n, *S)`` → pose ``(B, n + 1, n + 1)``,
    the homogeneous matrix exp(L) of the affine map in the module docstring."""

    def __init__(self, ndim: int, channels: int) -> None:
        super().__init__()
        self.ndim = ndim
        moments = 1 + ndim + ndim * (ndim + 1) // 2
        self.mlp = nn.Sequential(nn.Linear(channels * moments, _HIDDEN), nn.LeakyReLU(0.2),
                                 nn.Linear(_HIDDEN, ndim * ndim + ndim))
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, features: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        n = self.ndim
        raw = self.mlp(_moments(features, coords))
        matrix_bound, offset_bound = POSE_BOUNDS
        generator = raw.new_zeros(raw.shape[0], n + 1, n + 1)
        generator[:, :n, :n] = matrix_bound * torch.tanh(raw[:, : n * n]).view(-1, n, n)
        generator[:, :n, n] = offset_bound * torch.tanh(raw[:, n * n:])
        return torch.linalg.matrix_exp(generator)


def apply_pose(pose: torch.Tensor, coords: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
    """A(y) = c + E (y − c) + s for normalised ``coords`` ``(B, n, *S)``, ``pose``
    ``(B, n + 1, n + 1)`` and ``centre`` c ``(n,)`` → ``(B, n, *S)``."""
    n = coords.shape[1]
    view = (1, n, *([1] * (coords.ndim - 2)))
    centre = centre.to(coords.dtype).view(view)
    pose = pose.to(coords.dtype)
    moved = torch.einsum("bij,bj...->bi...", pose[:, :n, :n], coords - centre)
    return moved + centre + pose[:, :n, n].view(-1, n, *([1] * (coords.ndim - 2)))


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


def _moments(features: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Per channel, the grid means of f, f·y_k and f·y_k·y_l (k ≤ l) → ``(B, C · moments)``."""
    n = coords.shape[1]
    coords = coords.to(features.dtype)
    weights = [torch.ones_like(coords[:, 0])]
    weights += [coords[:, k] for k in range(n)]
    weights += [coords[:, k] * coords[:, l] for k in range(n) for l in range(k, n)]
    stacked = torch.stack(weights, 1).flatten(2)  # (1, moments, voxels)
    flat = features.flatten(2)  # (B, C, voxels)
    return torch.einsum("bcv,mv->bcm", flat, stacked[0]).flatten(1) / flat.shape[-1]
