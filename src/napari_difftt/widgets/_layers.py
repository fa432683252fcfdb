"""Layers of this plugin: turn volumes into layers and back, with their geometry and provenance.

The metadata entry and the Qt-free helpers live in :mod:`napari_difftt.layer_metadata`; this
module adds what needs a layer or a viewer. Derived layers (prior, probability, segmentation,
Jacobian, flow frames) copy the source's scale, translate, units, affine and metadata through
:func:`derived_kwargs` — napari does not — and record the source's :func:`layer_id`.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

import numpy as np

from ..layer_metadata import (
    META_KEY,
    META_VERSION,
    layer_affine,
    layer_id,
    layer_metadata,
    layer_volume,
    spacing_kwargs,
    spacing_of,
)

if TYPE_CHECKING:
    from napari.layers import Layer

    import napari

__all__ = [
    "add_derived",
    "derived_kwargs",
    "layer_affine",  # this and the five below: re-exported from layer_metadata
    "layer_metadata",
    "layer_volume",
    "spacing_kwargs",
    "spacing_of",
]


def derived_kwargs(
    source: Layer, name: str, role: str, *, leading_axes: int = 0
) -> dict[str, Any]:
    """Keyword arguments for a layer computed from ``source`` that shares its geometry.

    ``leading_axes`` extra non-spatial axes (e.g. flow frames ``(T, *S)`` or field components
    ``(n, *S)``) get scale 1, translate 0 and unit "pixel"; the spatial axes copy the source's
    scale, translate, units and affine. Metadata is copied (the namespaced entry deeply, the
    header shared read-only) with ``role`` and ``source`` filled in.
    """
    k = int(leading_axes)
    ndim = source.ndim + k
    affine = np.eye(ndim + 1)
    affine[k:, k:] = source.affine.affine_matrix
    metadata = {key: value for key, value in source.metadata.items() if key != META_KEY}
    entry = layer_metadata(source)
    header = entry.pop("header", None)
    entry.pop("id", None)  # the derived layer is another layer: it gets its own id on first use
    entry = copy.deepcopy(entry)
    if "affine" not in entry:  # a user's layer without our metadata: record its display geometry
        world = layer_affine(source) if source.ndim in (2, 3) else None
        entry = {"version": META_VERSION, "affine": world, "path": None}
    entry.update(header=header, role=role, source=source.name, source_id=layer_id(source))
    metadata[META_KEY] = entry
    return {
        "name": name,
        "scale": (1.0,) * k + tuple(float(s) for s in source.scale),
        "translate": (0.0,) * k + tuple(float(t) for t in source.translate),
        "units": ("pixel",) * k + tuple(str(u) for u in source.units),
        "affine": affine,
        "metadata": metadata,
    }


def add_derived(
    viewer: napari.Viewer,
    kind: str,
    data: np.ndarray,
    source: Layer,
    name: str,
    role: str,
    *,
    leading_axes: int = 0,
    **kwargs: Any,
) -> Layer:
    """Add a derived ``kind`` ("image" | "labels") layer, or refresh our own one of that name.

    Only a layer this plugin made from the same source with the same role is updated in place;
    a user's layer of the same name is never touched (napari then picks a fresh name).
    """
    existing = _own_layer(viewer, name, role, layer_id(source), kind)
    if existing is not None and existing.data.shape == data.shape:
        existing.data = data
        for key, value in kwargs.items():
            setattr(existing, key, value)
        return existing
    layer_kw = derived_kwargs(source, name, role, leading_axes=leading_axes)
    layer_kw.update(kwargs)
    add = viewer.add_labels if kind == "labels" else viewer.add_image
    return add(data, **layer_kw)


def _own_layer(viewer, name: str, role: str, source_id: str, kind: str) -> Layer | None:
    if name not in viewer.layers:
        return None
    layer = viewer.layers[name]
    entry = layer_metadata(layer)
    if entry.get("role") != role or entry.get("source_id") != source_id:
        return None
    from napari.layers import Labels

    return layer if isinstance(layer, Labels) == (kind == "labels") else None
