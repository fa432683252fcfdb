"""Layers of this plugin: turn volumes into layers and back, with their geometry and provenance.

The metadata entry and the Qt-free helpers live in :mod:`napari_difftt.layer_metadata`; this
module adds what needs a layer or a viewer. Derived layers (prior, probability, segmentation,
Jacobian, flow frames) copy the source's scale, translate, units, affine and metadata through
:func:`derived_kwargs` — napari does not — and record the source's napari ``unique_id``.

Nothing a user made is overwritten: the plugin remembers a checksum of the data it wrote into
each Labels layer (:func:`mark_written`); a layer whose data no longer match (painted, filled,
erased) is the user's, and :func:`add_derived` writes a new numbered layer ("NAME 2") instead.
"""

from __future__ import annotations

import copy
import weakref
import zlib
from typing import TYPE_CHECKING, Any

import numpy as np

from ..layer_metadata import (
    META_KEY,
    META_VERSION,
    layer_affine,
    layer_metadata,
    layer_volume,
    spacing_kwargs,
    spacing_of,
)

if TYPE_CHECKING:
    from napari.layers import Layer

    import napari

# layer_affine, layer_metadata, layer_volume, spacing_kwargs, spacing_of: from layer_metadata
__all__ = [
    "add_derived",
    "derived_kwargs",
    "edited",
    "layer_affine",
    "layer_metadata",
    "layer_volume",
    "mark_written",
    "readable_in_3d",
    "retire_derived",
    "spacing_kwargs",
    "spacing_of",
]

# Labels layer → checksum of the data this plugin last wrote into it (weak: layers come and go)
_WRITTEN: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()
_FOLLOWING: weakref.WeakSet = weakref.WeakSet()  # Labels layers readable_in_3d looks after
OPACITY_3D = 0.35  # a contour layer's opacity in 3D views: the image shows through it
STALE_SUFFIX = " (previous prediction)"  # an edited layer of an older result keeps its data
# roles of the layers computed from a prediction's flow: stale once a new prediction is stored
PREDICTION_VIEWS = frozenset({"flow_frames", "flow_vectors", "jacobian", "deformed_grid", "folds"})


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
    entry = copy.deepcopy(entry)
    if "affine" not in entry:  # a user's layer without our metadata: record its display geometry
        world = layer_affine(source) if source.ndim in (2, 3) else None
        entry = {"version": META_VERSION, "affine": world, "path": None}
    entry.update(header=header, role=role, source=source.name, source_id=source.unique_id)
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

    Only a layer this plugin made from the same source with the same role, and that the user
    has not edited (:func:`edited`), is updated in place; otherwise the result goes to the first
    free or refreshable numbered name "NAME 2", "NAME 3", … — so compare the returned layer's
    name with ``name`` to tell the user where it went. A user's layer is never touched.
    """
    for candidate in _numbered(name):
        if candidate not in viewer.layers:
            break
        existing = _own_layer(viewer, candidate, role, source.unique_id, kind)
        if existing is not None and existing.data.shape == data.shape and not edited(existing):
            existing.data = data
            for key, value in kwargs.items():
                setattr(existing, key, value)
            mark_written(existing)
            return existing
    layer_kw = derived_kwargs(source, candidate, role, leading_axes=leading_axes)
    layer_kw.update(kwargs)
    add = viewer.add_labels if kind == "labels" else viewer.add_image
    layer = add(data, **layer_kw)
    mark_written(layer)
    return layer


def mark_written(layer: Layer) -> None:
    """Remember the data of the Labels ``layer`` as the plugin's own (after writing into it)."""
    from napari.layers import Labels

    if isinstance(layer, Labels):  # keyed by the layer itself, not a widget's proxy of it
        _WRITTEN[getattr(layer, "__wrapped__", layer)] = _checksum(layer.data)


def edited(layer: Layer) -> bool:
    """True when ``layer`` holds data this plugin did not write: a Labels layer the user has
    painted, filled or erased since (or one the plugin never wrote). Image layers cannot be
    painted in napari: False."""
    from napari.layers import Labels

    if not isinstance(layer, Labels):
        return False
    written = _WRITTEN.get(getattr(layer, "__wrapped__", layer))
    return written is None or written != _checksum(layer.data)


def retire_derived(viewer: napari.Viewer, source: Layer, roles: set[str]) -> list[str]:
    """Remove the layers with one of ``roles`` derived from ``source`` (they show an older
    result); a layer the user edited is kept and renamed "… (previous prediction)". Returns
    the names of the layers removed."""
    wanted, removed = source.unique_id, []
    for layer in list(viewer.layers):
        entry = layer_metadata(layer)
        if entry.get("role") not in roles or entry.get("source_id") != wanted:
            continue
        if not edited(layer):
            removed.append(layer.name)
            viewer.layers.remove(layer)
        elif not layer.name.endswith(STALE_SUFFIX):
            layer.name = f"{layer.name}{STALE_SUFFIX}"
    return removed


def readable_in_3d(viewer: napari.Viewer, layer: Layer, contour: int) -> None:
    """Draw the Labels ``layer`` as a ``contour`` px outline in 2D views and, in 3D views (where
    napari renders an outline as a solid blob), as a see-through translucent volume at
    :data:`OPACITY_3D`; the 2D opacity comes back with the 2D view. Once per layer."""
    key = getattr(layer, "__wrapped__", layer)
    if key in _FOLLOWING:
        return
    _FOLLOWING.add(key)
    target, kept = weakref.ref(key), {"opacity": float(layer.opacity)}

    def follow(*_: object) -> None:
        labels = target()
        if labels is None or labels not in viewer.layers:
            viewer.dims.events.ndisplay.disconnect(follow)
            return
        if viewer.dims.ndisplay == 3:
            if labels.contour:
                kept["opacity"] = float(labels.opacity)
            labels.contour, labels.rendering, labels.opacity = 0, "translucent", OPACITY_3D
        else:
            labels.contour, labels.rendering, labels.opacity = contour, "iso_categorical", (
                kept["opacity"])

    viewer.dims.events.ndisplay.connect(follow)
    follow()


def _numbered(name: str):
    """``name``, then "name 2", "name 3", … (as many as needed)."""
    yield name
    number = 2
    while True:
        yield f"{name} {number}"
        number += 1


def _checksum(data: Any) -> int:
    array = np.ascontiguousarray(np.asarray(data))
    return zlib.crc32(array.view(np.uint8).reshape(-1), zlib.crc32(repr(
        (array.shape, array.dtype.str)).encode()))


def _own_layer(viewer, name: str, role: str, source_id: str, kind: str) -> Layer | None:
    layer = viewer.layers[name]
    entry = layer_metadata(layer)
    if entry.get("role") != role or entry.get("source_id") != source_id:
        return None
    from napari.layers import Labels

    return layer if isinstance(layer, Labels) == (kind == "labels") else None
