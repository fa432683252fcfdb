"""Segmentation quality: Dice, Hausdorff distances in mm, connected components, folding.

Masks are boolean or 0/1 arrays (numpy or torch) of the same shape (*S), array order (z, y, x);
``spacing`` is mm per array axis. Surface distances follow the usual definition (MedPy's): the
surface of a mask is its voxels with a face neighbour outside it (or on the volume border);
distances are Euclidean in mm between surface voxel centres, computed with
:func:`scipy.ndimage.distance_transform_edt` (``sampling=spacing``).

Empty masks never crash and have defined values:

====================  =======  ==========
case                  dice     hd / hd95
====================  =======  ==========
both empty            1.0      0.0
exactly one empty     0.0      inf
====================  =======  ==========
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy import ndimage

from .flow import folding_fraction

__all__ = [
    "components",
    "dice",
    "evaluate_case",
    "folding_percent",
    "hausdorff",
    "hd95",
    "topology_report",
]


def dice(pred, target) -> float:
    """Dice overlap 2|P∩T| / (|P| + |T|) in [0, 1]; 1.0 when both masks are empty."""
    pred, target = _pair(pred, target)
    total = int(pred.sum()) + int(target.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(pred, target).sum()) / total


def hausdorff(pred, target, spacing: Sequence[float] | None = None) -> float:
    """Symmetric Hausdorff distance in mm: the largest distance from a surface voxel of either
    mask to the other mask's surface. 0.0 if both are empty, inf if exactly one is."""
    distances = _surface_distances(pred, target, spacing)
    return distances if isinstance(distances, float) else float(distances.max())


def hd95(pred, target, spacing: Sequence[float] | None = None) -> float:
    """95th percentile (mm) of the surface distances of both directions pooled (MedPy's HD95).
    0.0 if both masks are empty, inf if exactly one is."""
    distances = _surface_distances(pred, target, spacing)
    return distances if isinstance(distances, float) else float(np.percentile(distances, 95))


def components(mask, connectivity: int = 1) -> int:
    """Number of connected components of the foreground. ``connectivity`` 1 = face neighbours
    (default), 2 = faces and edges, ``ndim`` = full (faces, edges and corners)."""
    mask = _mask("mask", mask)
    if isinstance(connectivity, bool) or connectivity not in range(1, mask.ndim + 1):
        raise ValueError(f"connectivity must be an int in 1..{mask.ndim}, got {connectivity!r}")
    structure = ndimage.generate_binary_structure(mask.ndim, connectivity)
    return int(ndimage.label(mask, structure)[1])


def folding_percent(displacement, scheme: str = "central") -> float:
    """Percentage of voxels where φ = id + u folds (det ∇φ ≤ 0), via :func:`.flow.folding_fraction`.

    ``displacement`` in voxels, ``(n, *S)`` or ``(B, n, *S)`` (numpy or torch; a batch gives the
    percentage over all its voxels). A 4D input is ``(B, 2, H, W)`` when its second axis is 2,
    else ``(3, D, H, W)``. ``scheme`` "central" or the stricter "digital".
    """
    if not torch.is_tensor(displacement):
        displacement = torch.as_tensor(np.asarray(displacement))
    field = displacement.detach()
    unbatched = field.ndim == 3 or (field.ndim == 4 and field.shape[1] != 2)
    field = field.unsqueeze(0) if unbatched else field
    if not field.is_floating_point():
        field = field.double()
    return 100.0 * float(folding_fraction(field.detach(), scheme).mean())


def evaluate_case(
    pred,
    target,
    spacing: Sequence[float] | None = None,
    displacement=None,
    *,
    connectivity: int = 1,
    scheme: str = "central",
) -> dict:
    """All metrics of one case: ``{"dice", "hd", "hd95" (mm), "folds_percent" (None without a
    displacement), "components" (of ``pred``)}``."""
    return {
        "dice": dice(pred, target),
        "hd": hausdorff(pred, target, spacing),
        "hd95": hd95(pred, target, spacing),
        "folds_percent": None if displacement is None else folding_percent(displacement, scheme),
        "components": components(pred, connectivity),
    }


def topology_report(segmentation, displacement=None) -> dict:
    """The topology of one prediction: what the diffeomorphic model promises, checked.

    ``segmentation`` ``(*S)`` binary (2D or 3D); ``displacement`` ``(n, *S)`` voxels or None
    (a U-Net has none). Returns ``{"folding_central", "folding_digital"}`` (% of voxels with
    det ∇Φ ≤ 0 by central differences / by the digital test; None without a displacement),
    ``"components"`` (face connectivity: 6 in 3D, 4 in 2D), ``"components_full"`` (26 in 3D,
    8 in 2D), ``"connectivity"`` (those two numbers, e.g. ``[6, 26]``) and ``"holds"``: True
    for exactly one face-connected component and no digital fold.
    """
    mask = _mask("segmentation", segmentation)
    if mask.ndim not in (2, 3):
        raise ValueError(f"segmentation must be 2D or 3D, got shape {mask.shape}")
    central = digital = None
    if displacement is not None:
        field = displacement if torch.is_tensor(displacement) else np.asarray(displacement)
        if tuple(field.shape) != (mask.ndim, *mask.shape):
            raise ValueError(
                f"displacement must have shape {(mask.ndim, *mask.shape)} for a segmentation "
                f"of shape {mask.shape}, got {tuple(field.shape)}"
            )
        central = folding_percent(field, "central")
        digital = folding_percent(field, "digital")
    face, full = components(mask, 1), components(mask, mask.ndim)
    return {
        "folding_central": central,
        "folding_digital": digital,
        "components": face,
        "components_full": full,
        "connectivity": [2 * mask.ndim, 3**mask.ndim - 1],
        "holds": face == 1 and not digital,
    }


# --------------------------------------------------------------------------------------------
# helpers


def _mask(name: str, mask) -> np.ndarray:
    """A bool array from a bool or 0/1 numpy array or tensor; anything else is a clear error."""
    if torch.is_tensor(mask):
        mask = mask.detach().cpu().numpy()
    mask = np.asarray(mask)
    if mask.dtype == bool:
        return mask
    if mask.dtype.kind not in "biuf":
        raise TypeError(f"{name} must be a boolean or 0/1 array, got dtype {mask.dtype}")
    binary = mask != 0
    if not np.array_equal(mask, binary):
        bad = np.unique(mask[(mask != 0) & (mask != 1)])[:5]
        raise ValueError(
            f"{name} must be a binary mask (0/1), but holds {', '.join(f'{v:g}' for v in bad)}; "
            "threshold probabilities and drop ignore labels first"
        )
    return binary


def _pair(pred, target) -> tuple[np.ndarray, np.ndarray]:
    pred, target = _mask("pred", pred), _mask("target", target)
    if pred.shape != target.shape:
        raise ValueError(
            f"pred and target must have the same shape, got {pred.shape} and {target.shape}"
        )
    return pred, target


def _surface_distances(pred, target, spacing) -> np.ndarray | float:
    """Both directed surface-distance sets, concatenated (mm); or the float of an empty case."""
    pred, target = _pair(pred, target)
    spacing = _check_spacing(spacing, pred.ndim)
    empty = (not pred.any(), not target.any())
    if all(empty):
        return 0.0
    if any(empty):
        return float("inf")
    surfaces = [_surface(pred), _surface(target)]
    to_target = ndimage.distance_transform_edt(~surfaces[1], sampling=spacing)[surfaces[0]]
    to_pred = ndimage.distance_transform_edt(~surfaces[0], sampling=spacing)[surfaces[1]]
    return np.concatenate([to_target, to_pred])


def _surface(mask: np.ndarray) -> np.ndarray:
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure, border_value=0)


def _check_spacing(spacing: Sequence[float] | None, ndim: int) -> tuple[float, ...]:
    if spacing is None:
        return (1.0,) * ndim
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != ndim or not all(np.isfinite(s) and s > 0 for s in spacing):
        raise ValueError(f"spacing must be {ndim} positive numbers (mm per axis), got {spacing!r}")
    return spacing
