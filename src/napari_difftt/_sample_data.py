"""Offline, seeded sample data: synthetic organ phantoms with ground-truth labels.

The phantoms come from :func:`napari_difftt.core.data.make_phantom`; their voxel spacing (mm)
and origin become the layers' ``scale``/``translate`` and the metadata affine, so exports carry
them. The phantoms are drawn in voxel space, like the phantoms the bundled models were trained
on, so their spacing is 1 mm, the models' own (a spacing other than the training one would make
Run model warn on the plugin's own sample); the 3D one sits off the world origin, as a scanner
volume does, so the affine handling shows.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["PHANTOM_2D", "PHANTOM_3D", "PHANTOM_3D_ORIGIN", "phantom_2d", "phantom_3d",
           "phantom_layers"]

# (shape, seed, spacing mm per array axis); the 3D volume centred on the world origin (mm)
PHANTOM_3D = ((64, 64, 64), 2026, (1.0, 1.0, 1.0))
PHANTOM_3D_ORIGIN = (-31.5, -31.5, -31.5)
PHANTOM_2D = ((128, 128), 2026, (1.0, 1.0))
# the ground truth: 0 clear, 1 green, as a colour cycle: napari draws a cycle at once, where a
# {value: colour} map costs ~2 s of numba compilation the first time a layer uses one
GROUND_TRUTH_COLOURS = ["transparent", "lime"]

LayerData = tuple[np.ndarray, dict[str, Any], str]


def phantom_3d() -> list[LayerData]:
    """A 3D organ phantom (image) and its ground-truth labels (no torch import: it opens in
    about half a second)."""
    return phantom_layers(*PHANTOM_3D, name="phantom", origin=PHANTOM_3D_ORIGIN)


def phantom_2d() -> list[LayerData]:
    """A 2D organ phantom (image) and its ground-truth labels."""
    return phantom_layers(*PHANTOM_2D, name="phantom 2D")


def phantom_layers(
    shape: tuple[int, ...], seed: int, spacing: tuple[float, ...], name: str,
    origin: tuple[float, ...] | None = None,
) -> list[LayerData]:
    """Image and Labels layer data for one phantom (``name`` and ``name + " labels"``), its
    first voxel at ``origin`` (world mm, array order; default 0)."""
    from .core.data import make_phantom
    from .layer_metadata import spacing_kwargs

    phantom = make_phantom(shape, seed=seed, spacing=spacing)
    image_kw = spacing_kwargs(phantom.spacing, name, origin)
    labels_kw = spacing_kwargs(phantom.spacing, f"{name} labels", origin)
    labels_kw["opacity"] = 0.4
    labels_kw["colormap"] = GROUND_TRUTH_COLOURS  # ground truth: green
    return [(phantom.image, image_kw, "image"), (phantom.labels, labels_kw, "labels")]
