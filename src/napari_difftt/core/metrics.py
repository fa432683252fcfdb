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

import math
from collections.abc import Sequence

import numpy as np
import torch
from scipy import ndimage

from .flow import folding_fraction
from .flow.certificate import Upsampling, upsampled_folding
from .spacing import check_spacing

__all__ = [
    "METRIC_KEYS",
    "SCHEMES",
    "components",
    "dice",
    "evaluate_case",
    "folding_percent",
    "hausdorff",
    "hd95",
    "summarise",
    "topology_report",
]

# the metrics of one case (evaluate_case), in the order tables show them
METRIC_KEYS = ("dice", "hausdorff", "hd95", "folding_central", "folding_digital", "components",
               "components_full")
SCHEMES = ("central", "digital")  # det ∇Φ ≤ 0 by central differences / the digital test


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


def folding_percent(displacement, scheme: str = "central", *, batched: bool = False) -> float:
    """Percentage of voxels where φ = id + u folds (det ∇φ ≤ 0), via :func:`.flow.folding_fraction`.

    ``displacement`` in voxels (numpy or torch): one field ``(n, *S)``, or with ``batched=True``
    a batch ``(B, n, *S)`` (the percentage over all its voxels); ``n`` must equal ``len(S)``
    (2 or 3). The layout is stated, not guessed: ``(3, 2, 8, 9)`` is one 3D field, or with
    ``batched`` three 2D ones. ``scheme`` "central" or the stricter "digital".
    """
    displacement = _float_field(displacement)
    field = displacement if batched else displacement.unsqueeze(0)
    if field.ndim not in (4, 5) or field.shape[1] != field.ndim - 2:
        layout = "(B, n, *S)" if batched else "(n, *S)"
        raise ValueError(
            f"displacement must be {layout} with n = len(S) = 2 or 3, got shape "
            f"{tuple(displacement.shape)}" + ("" if batched else " (a batch? pass batched=True)")
        )
    return 100.0 * float(folding_fraction(field, scheme).mean())


def evaluate_case(
    pred,
    target,
    spacing: Sequence[float] | None = None,
    displacement=None,
    *,
    ignore_value: int | None = None,
    scheme: str | Sequence[str] = SCHEMES,
    topology: dict | None = None,
    det=None,
) -> dict:
    """All metrics of one case, keyed by :data:`METRIC_KEYS` (the evaluate JSON, the widgets'
    text and the experiment scripts use these keys).

    ``pred`` ``(*S)`` non-zero = inside; ``target`` ``(*S)`` labels, non-zero = inside and
    ``ignore_value`` = unlabelled. ``"dice"`` is over the labelled voxels; ``"hausdorff"`` and
    ``"hd95"`` (mm) are left out when some voxel is unlabelled (a surface there is unknown).
    ``"folding_<s>"`` (% of voxels with det ∇Φ ≤ 0) for each scheme ``s`` of ``scheme``
    ("central", "digital") when ``displacement`` ``(n, *S)`` voxels is given; without one,
    ``det`` (det ∇Φ ``(*S)``, central differences) still gives ``"folding_central"``.
    ``"components"`` / ``"components_full"`` count ``pred``'s face / full-connectivity
    components. ``ignore_value`` 0 or 1 is refused (ValueError). ``topology``:
    ``topology_report(pred, displacement)`` when already computed.
    """
    if ignore_value in (0, 1):
        raise ValueError(f"ignore_value must not be {ignore_value}: 0 and 1 are background and "
                         "foreground (ignoring one scores an empty prediction perfect)")
    schemes = (scheme,) if isinstance(scheme, str) else tuple(scheme)
    if not schemes or any(s not in SCHEMES for s in schemes):
        raise ValueError(f"scheme must be some of {SCHEMES}, got {scheme!r}")
    pred = _mask("pred", (pred.detach().cpu().numpy() if torch.is_tensor(pred)
                          else np.asarray(pred)) != 0)
    reference = target.detach().cpu().numpy() if torch.is_tensor(target) else np.asarray(target)
    if pred.shape != reference.shape:
        raise ValueError(
            f"pred and target must have the same shape, got {pred.shape} and {reference.shape}"
        )
    known = np.ones(reference.shape, bool) if ignore_value is None else reference != ignore_value
    inside = (reference != 0) & known
    result = {"dice": dice(pred[known], inside[known])}
    if known.all():
        result["hausdorff"] = hausdorff(pred, inside, spacing)
        result["hd95"] = hd95(pred, inside, spacing)
    report = topology_report(pred, displacement) if topology is None else topology
    if report["folding_central"] is None and det is not None:
        report = {**report, "folding_central": 100 * float(np.mean(np.asarray(det) <= 0))}
    for s in schemes:
        if report[f"folding_{s}"] is not None:
            result[f"folding_{s}"] = float(report[f"folding_{s}"])
    result["components"] = int(report["components"])
    result["components_full"] = int(report["components_full"])
    return result


def summarise(cases: Sequence[dict], keys: Sequence[str] = METRIC_KEYS) -> dict:
    """``{key: {"mean", "std" (population), "n"}}`` over the cases that have each key; an
    infinite value (an empty mask's Hausdorff distance) makes the mean inf and the std nan."""
    summary = {}
    for key in keys:
        values = np.array([c[key] for c in cases if key in c], dtype=np.float64)
        if values.size:
            finite = values[np.isfinite(values)]
            summary[key] = {
                "mean": float(finite.mean()) if finite.size == values.size else math.inf,
                "std": float(finite.std()) if finite.size == values.size else math.nan,
                "n": int(values.size),
            }
    return summary


def topology_report(segmentation, displacement=None, *,
                    upsampling: Upsampling | None = None) -> dict:
    """The topology of one prediction: what the diffeomorphic model promises, checked.

    ``segmentation`` ``(*S)`` binary (2D or 3D); ``displacement`` ``(n, *S)`` voxels or None
    (a U-Net has none); ``upsampling``: what the displacement was upsampled from, when known
    (:class:`.flow.certificate.Upsampling`): the fold tests then skip the blocks that its bound
    certifies, with the same counts. Returns ``{"folding_central", "folding_digital"}`` (% of
    voxels with det ∇Φ ≤ 0 by central differences / by the digital test; None without a
    displacement),
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
        if upsampling is None:
            central = folding_percent(field, "central")
            digital = folding_percent(field, "digital")
        else:
            central, digital = (100.0 * f for f in upsampled_folding(_float_field(field),
                                                                      upsampling))
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


def _float_field(displacement) -> torch.Tensor:
    """A numpy array or tensor as a detached floating tensor (integers as float64)."""
    if not torch.is_tensor(displacement):
        displacement = torch.as_tensor(np.asarray(displacement))
    field = displacement.detach()
    return field if field.is_floating_point() else field.double()


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
    spacing = (1.0,) * pred.ndim if spacing is None else check_spacing(spacing, pred.ndim)
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


