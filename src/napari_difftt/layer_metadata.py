"""Layer metadata and geometry without Qt or napari: what reader, writer, sample data, the
pipeline and the widgets share.

Every layer this plugin creates carries the namespaced, versioned metadata entry
``layer.metadata["napari_difftt"]``::

    {"version": 1,
     "affine": (4, 4) ndarray,   # our index (z, y, x, 1) → world mm (core.io convention)
     "header": nibabel header | None,   # the original file's header, restored on export
     "path": str | None,         # the file it came from
     "role": str | None,         # "probability", "segmentation", "prior", ... for derived layers
     "source": str | None,       # name of the layer it was derived from (shown, not matched)
     "source_id": str | None}    # napari ``unique_id`` of that layer: what derived layers are
                                 # matched by

Identity is napari's own ``Layer.unique_id``, never the layer name, so renaming a layer keeps
what the plugin knows about it. napari shows the *diagonal* part of the affine
(``scale``/``translate``, ``units="mm"``); oblique volumes keep their true affine only here.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from napari.layers import Layer

    from .core.io import Volume

__all__ = [
    "META_KEY",
    "META_VERSION",
    "affine_kwargs",
    "layer_affine",
    "layer_kwargs",
    "layer_metadata",
    "layer_volume",
    "metadata_entry",
    "spacing_kwargs",
    "spacing_of",
]

META_KEY = "napari_difftt"
META_VERSION = 1


def layer_kwargs(volume: Volume, name: str) -> dict[str, Any]:
    """napari layer keyword arguments (name, scale, translate, units, metadata) for a volume."""
    from .core.io import display_transform

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


def affine_kwargs(
    array: np.ndarray, affine: np.ndarray, name: str, role: str | None = None
) -> dict[str, Any]:
    """:func:`layer_kwargs` of an ``array`` drawn with the ``(4, 4)`` index → world mm
    ``affine`` (computed, no file behind it), with the metadata ``role``."""
    from .core.io import Volume

    kwargs = layer_kwargs(Volume(array, np.asarray(affine, dtype=float)), name)
    kwargs["metadata"][META_KEY]["role"] = role
    return kwargs


def spacing_kwargs(
    spacing: tuple[float, ...], name: str, origin: tuple[float, ...] | None = None
) -> dict[str, Any]:
    """Layer keyword arguments for an array with voxel ``spacing`` (mm) whose first voxel is at
    ``origin`` (world mm, array order; default 0), no file."""
    from .core.io import Volume, display_affine

    ndim = len(spacing)
    origin = (0.0,) * ndim if origin is None else tuple(origin)
    placeholder = np.empty((1,) * ndim)  # display_transform reads only the number of axes
    return layer_kwargs(Volume(placeholder, display_affine(spacing, origin)), name)


def metadata_entry(metadata: dict | None) -> dict[str, Any]:
    """A shallow copy of our entry in a layer's ``metadata`` dict (empty when it has none, or
    one of another version)."""
    entry = (metadata or {}).get(META_KEY)
    if not isinstance(entry, dict) or entry.get("version") != META_VERSION:
        return {}
    return dict(entry)


def layer_metadata(layer: Layer) -> dict[str, Any]:
    """A shallow copy of the layer's ``napari_difftt`` entry (empty dict when it has none)."""
    return metadata_entry(layer.metadata)


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
    from .core.io import display_affine

    return display_affine(layer.scale, layer.translate)


def layer_volume(layer: Layer, array: np.ndarray | None = None) -> Volume:
    """A :class:`core.io.Volume` of ``array`` (default: the layer's data) in its geometry."""
    from .core.io import Volume

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
