"""Offline, seeded sample data: synthetic organ phantoms with ground-truth labels.

The phantoms come from :func:`napari_difftt.core.data.make_phantom`; their voxel spacing (mm)
becomes the layers' ``scale`` and the metadata affine, so exports carry it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["PHANTOM_2D", "PHANTOM_3D", "phantom_2d", "phantom_3d", "phantom_layers"]

# (shape, seed, spacing mm per array axis): anisotropic in 3D like a clinical CT/MR volume.
PHANTOM_3D = ((64, 64, 64), 2026, (1.5, 1.0, 1.0))
PHANTOM_2D = ((128, 128), 2026, (1.0, 1.0))

LayerData = tuple[np.ndarray, dict[str, Any], str]


def phantom_3d() -> list[LayerData]:
    """A 3D organ phantom (image) and its ground-truth labels."""
    return phantom_layers(*PHANTOM_3D, name="phantom")


def phantom_2d() -> list[LayerData]:
    """A 2D organ phantom (image) and its ground-truth labels."""
    return phantom_layers(*PHANTOM_2D, name="phantom 2D")


def phantom_layers(
    shape: tuple[int, ...], seed: int, spacing: tuple[float, ...], name: str
) -> list[LayerData]:
    """Image and Labels layer data for one phantom (``name`` and ``name + " labels"``)."""
    from .core.data import make_phantom
    from .widgets._layers import spacing_kwargs

    phantom = make_phantom(shape, seed=seed, spacing=spacing)
    image_kw = spacing_kwargs(phantom.spacing, name)
    labels_kw = spacing_kwargs(phantom.spacing, f"{name} labels")
    labels_kw["opacity"] = 0.4
    labels_kw["colormap"] = {1: "lime", None: "transparent"}  # ground truth: green
    return [(phantom.image, image_kw, "image"), (phantom.labels, labels_kw, "labels")]
