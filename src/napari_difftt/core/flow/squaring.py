"""Scaling and squaring with a hand-written backward that stores one field per squaring.

Plain autograd through N squarings keeps two fields per step (the sampled field and its grid)
plus the temporaries of every conversion. :class:`ScalingAndSquaring` keeps only the fields
u_1 … u_{N−1} (normalised units, channel-first, (x, y, z) channel order) and the velocity, from
which u_0 = v / 2^N is rebuilt; each grid id + u_k is rebuilt in the backward pass by one
addition, and the gradients of each step come straight from ATen's grid-sampler backward kernels
(split across threads by :func:`.grid.sample_backward`).

One squaring is u_{k+1} = u_k + S(u_k, id + u_k), S sampling u_k with border padding, so with
g = ∂L/∂u_{k+1}: ∂L/∂u_k = g + S_inputᵀ g + (S_gridᵀ g moved to channel-first). The grid's
channel c is id_c + u_k[c] in the same units and order, so no rescaling or reordering is needed.
"""

from __future__ import annotations

import torch

from .grid import _voxel_to_normalised_scale, normalised_identity, sample, sample_backward

__all__ = ["ScalingAndSquaring", "scaling_and_squaring"]


def scaling_and_squaring(velocity: torch.Tensor, squarings: int) -> torch.Tensor:
    """exp(``velocity``) ``(B, n, *S)`` voxels → displacement ``(B, n, *S)`` voxels.

    Under autograd (grad mode on and ``velocity.requires_grad``) the memory-lean
    :class:`ScalingAndSquaring`; otherwise the same loop without saving anything.
    """
    if torch.is_grad_enabled() and velocity.requires_grad:
        return ScalingAndSquaring.apply(velocity, squarings)
    return _run(velocity, squarings, None)


class ScalingAndSquaring(torch.autograd.Function):
    """Autograd function ``(velocity (B, n, *S) voxels, squarings) → displacement (B, n, *S)``.

    Saves the velocity and the fields u_1 … u_{N−1} (N tensors in all); first-order gradients
    only: a second derivative (``create_graph=True``) raises a RuntimeError.
    """

    @staticmethod
    def forward(ctx, velocity: torch.Tensor, squarings: int) -> torch.Tensor:
        fields: list[torch.Tensor] = []
        displacement = _run(velocity, squarings, fields)
        # u_0 is rebuilt from the velocity (which its producer usually keeps anyway): one field less
        ctx.save_for_backward(*([velocity] if squarings else []), *fields[1:])
        ctx.squarings = squarings
        return displacement

    @staticmethod
    def backward(ctx, grad_displacement: torch.Tensor) -> tuple[torch.Tensor, None]:
        if torch.is_grad_enabled():
            # torch's once_differentiable would raise only when grad_displacement requires grad
            # and otherwise return a constant, silently dropping the second-order terms
            raise RuntimeError(
                "exp: second derivatives (create_graph=True) of scaling and squaring are not "
                "supported; differentiate exp once, or compute it under torch.no_grad()"
            )
        spatial = grad_displacement.shape[2:]
        scale = _channel_scale(spatial, grad_displacement)
        # adjoint of the output conversion (flip channels, divide by the scale); flip copies,
        # so the in-place updates below never touch autograd's buffer
        grad = grad_displacement.flip(1).div_(scale)
        base = normalised_identity(spatial, device=grad.device, dtype=grad.dtype)
        saved = ctx.saved_tensors  # velocity, u_1 … u_{N−1}
        for step in reversed(range(ctx.squarings)):
            # u_0 is rebuilt only now, when the later fields' temporaries are gone
            field = saved[step] if step else _start(saved[0], scale, ctx.squarings)
            grid = base + field.movedim(1, -1)
            grad_field, grad_grid = sample_backward(grad, field, grid, padding="border")
            del grid, field
            grad.add_(grad_field)
            del grad_field
            grad.add_(grad_grid.movedim(-1, 1))
            del grad_grid
        # adjoint of the input conversion (flip channels, multiply by scale / 2^N)
        return grad.mul_(scale / 2**ctx.squarings).flip(1), None


def _run(velocity: torch.Tensor, squarings: int, keep: list[torch.Tensor] | None) -> torch.Tensor:
    """The squaring loop in normalised units; appends u_0 … u_{N−1} to ``keep`` when given."""
    spatial = velocity.shape[2:]
    scale = _channel_scale(spatial, velocity)
    offsets = _start(velocity, scale, squarings)
    base = normalised_identity(spatial, device=velocity.device, dtype=velocity.dtype)
    for _ in range(squarings):
        if keep is not None:
            keep.append(offsets)
        # the grid is passed as a temporary so that sample can free it before its addition
        offsets = sample(offsets, base + offsets.movedim(1, -1), padding="border", add_to=offsets)
    return offsets.div_(scale).flip(1)  # u_N is never among the kept fields


def _start(velocity: torch.Tensor, scale: torch.Tensor, squarings: int) -> torch.Tensor:
    """u_0 = v / 2^N in normalised units, ``(B, n, *S)`` with (x, y, z) channels (a new tensor)."""
    return velocity.flip(1).mul_(scale / 2**squarings)


def _channel_scale(spatial: torch.Size, like: torch.Tensor) -> torch.Tensor:
    """Normalised units per voxel in (x, y, z) channel order, shaped ``(1, n, 1, ...)``."""
    return _voxel_to_normalised_scale(spatial, like).view(1, -1, *[1] * len(spatial))
