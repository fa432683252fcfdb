"""The reusable diffeomorphism layer: grids, scaling and squaring, BCH, Jacobians, velocity spaces.

Torch only (no napari, no Qt, no models). Fields are ``(B, n, *S)`` in voxels, component k along
array axis k; see :mod:`.grid` for the conventions.
"""

from .exponential import (
    MAX_SQUARINGS,
    Integrated,
    bch,
    choose_squarings,
    exp,
    exp_frames,
    flow_at,
    integrate,
    lie_bracket,
)
from .grid import compose, identity, normalised_identity, sample, to_normalised, to_voxel, warp
from .jacobian import folding_fraction, gradient_penalty, jacobian, jacobian_det

__all__ = [
    "MAX_SQUARINGS",
    "Integrated",
    "bch",
    "choose_squarings",
    "compose",
    "exp",
    "exp_frames",
    "flow_at",
    "folding_fraction",
    "gradient_penalty",
    "identity",
    "integrate",
    "jacobian",
    "jacobian_det",
    "lie_bracket",
    "normalised_identity",
    "sample",
    "to_normalised",
    "to_voxel",
    "warp",
]
