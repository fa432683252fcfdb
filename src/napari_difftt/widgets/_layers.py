"""Geometry and provenance of layers: one place that turns volumes into layers and back.

Every layer this plugin creates carries the namespaced, versioned metadata entry
``layer.metadata["napari_difftt"]``::

    {"version": 1,
     "affine": (4, 4) ndarray,   # our index (z, y, x, 1) → world mm (core.io convention)
     "header": nibabel header | None,   # the original file's header, restored on export
     "path": str | None,         # the file it came from
     "role": str | None,         # "probability", "segmentation", "prior", ... for derived layers
     "source": str | None}       # name of the layer it was derived from

napari shows the *diagonal* part of the affine (``scale``/``translate``, ``units="mm"``);
oblique volumes keep their true affine only here, so a written file gets it back exactly.
Derived layers (prior, probability, segmentation, Jacobian, flow frames) copy the source's
scale, translate, units, affine and metadata through :func:`derived_kwargs` — napari does not.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from napari.layers import Layer

    import napari

    from ..core.io import Volume

__all__ = [
    "META_KEY",
    "META_VERSION",
    "add_derived",
    "derived_kwargs",
    "display_affine",
    "layer_affine",
    "layer_kwargs",
    "layer_metadata",
    "layer_volume",
    "spacing_kwargs",
    "spacing_of",
]

META_KEY = "napari_difftt"
META_VERSION = 1


def layer_kwargs(volume: Volume, name: str) -> dict[str, Any]:
    """napari layer keyword arguments (name, scale, translate, units, metadata) for a volume."""
    from ..core.io import display_transform

    scale, translate = display_transform(volume)
    entry = {
        "version": META_VERSION,
        "affine": np.asarray(volume.affine, dtype=float).copy(),
        "header": volume.header,
        "path": None if volume.path is None else str(volume.path),
        "role": None,
        "source": None,
    }
    return {
        "name": name,
        "scale": scale,
        "translate": translate,
        "units": ("mm",) * volume.array.ndim,
        "metadata": {META_KEY: entry},
    }


def spacing_kwargs(spacing: tuple[float, ...], name: str) -> dict[str, Any]:
    """Layer keyword arguments for an array with voxel ``spacing`` (mm) at the origin, no file."""
    from ..core.io import Volume

    ndim = len(spacing)
    placeholder = np.empty((1,) * ndim)  # display_transform reads only the number of axes
    return layer_kwargs(Volume(placeholder, display_affine(spacing, (0.0,) * ndim)), name)


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
    if not entry:  # a user's layer without our metadata: record its display geometry
        world = layer_affine(source) if source.ndim in (2, 3) else None
        entry = {"version": META_VERSION, "affine": world, "path": None}
    entry.update(header=header, role=role, source=source.name)
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
    existing = _own_layer(viewer, name, role, source.name, kind)
    if existing is not None and existing.data.shape == data.shape:
        existing.data = data
        for key, value in kwargs.items():
            setattr(existing, key, value)
        return existing
    layer_kw = derived_kwargs(source, name, role, leading_axes=leading_axes)
    layer_kw.update(kwargs)
    add = viewer.add_labels if kind == "labels" else viewer.add_image
    return add(data, **layer_kw)


def display_affine(scale, translate) -> np.ndarray:
    """core.io affine (index (z, y, x, 1) → world (x, y, z) mm) of napari's scale/translate."""
    ndim = len(scale)
    zyx = np.eye(4)
    zyx[3 - ndim : 3, 3 - ndim : 3] = np.diag(np.asarray(scale, dtype=float))
    zyx[3 - ndim : 3, 3] = np.asarray(translate, dtype=float)
    return zyx[[2, 1, 0, 3]]


def layer_metadata(layer: Layer) -> dict[str, Any]:
    """A shallow copy of the layer's ``napari_difftt`` entry (empty dict when it has none)."""
    entry = layer.metadata.get(META_KEY)
    if not isinstance(entry, dict) or entry.get("version") != META_VERSION:
        return {}
    return dict(entry)


def layer_affine(layer: Layer) -> np.ndarray:
    """World affine ``(4, 4)`` of a 2D/3D layer in core.io's convention (index (z, y, x) → mm).

    The stored file affine when present; otherwise built from the layer's scale/translate.
    """
    entry = layer_metadata(layer)
    if entry.get("affine") is not None:
        return np.asarray(entry["affine"], dtype=float)
    if layer.ndim not in (2, 3):
        raise ValueError(
            f"layer {layer.name!r} has {layer.ndim} dimensions; only 2D/3D layers have an affine"
        )
    return display_affine(layer.scale, layer.translate)


def layer_volume(layer: Layer, array: np.ndarray | None = None) -> Volume:
    """A :class:`core.io.Volume` of ``array`` (default: the layer's data) in its geometry."""
    from ..core.io import Volume

    entry = layer_metadata(layer)
    data = np.asarray(layer.data if array is None else array)
    header = entry.get("header")
    path = entry.get("path")
    return Volume(data, layer_affine(layer), header, None if path is None else Path(path))


def spacing_of(layer: Layer) -> tuple[float, ...]:
    """Voxel size in mm per array axis (from the stored affine, else |scale|)."""
    entry = layer_metadata(layer)
    if entry.get("affine") is not None and layer.ndim in (2, 3):
        columns = np.asarray(entry["affine"], dtype=float)[:3, 3 - layer.ndim : 3]
        return tuple(float(s) for s in np.linalg.norm(columns, axis=0))
    return tuple(abs(float(s)) for s in layer.scale)


def _own_layer(viewer, name: str, role: str, source: str, kind: str) -> Layer | None:
    if name not in viewer.layers:
        return None
    layer = viewer.layers[name]
    entry = layer_metadata(layer)
    if entry.get("role") != role or entry.get("source") != source:
        return None
    from napari.layers import Labels

    return layer if isinstance(layer, Labels) == (kind == "labels") else None
