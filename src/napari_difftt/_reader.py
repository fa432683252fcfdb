"""napari reader for NIfTI volumes (``*.nii``, ``*.nii.gz``) through :mod:`napari_difftt.core.io`.

Layers get ``scale``/``translate``/``units="mm"`` from the affine (the diagonal part for oblique
volumes) and the true affine and header in ``metadata["napari_difftt"]`` (see
:mod:`napari_difftt.layer_metadata`). Label-like files open as Labels: integer voxels with few
distinct values, or a file name containing "label", "seg" or "mask".
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .core.paths import is_nifti, nifti_stem

__all__ = ["get_reader", "is_label_like", "read_layers"]

LayerData = tuple[np.ndarray, dict[str, Any], str]
_LABEL_WORDS = ("label", "seg", "mask")
_MAX_LABEL_VALUES = 64  # integer volumes with at most this many distinct values are labels


def get_reader(path: str | Sequence[str]) -> Callable[[Any], list[LayerData]] | None:
    """The reader function when every path is a NIfTI file; None for anything else."""
    paths = [path] if isinstance(path, str | os.PathLike) else list(path)
    if not paths or not all(is_nifti(p) for p in paths):
        return None
    return read_layers


def read_layers(path: str | Sequence[str]) -> list[LayerData]:
    """Read one or more NIfTI files into napari layer data tuples (image or labels)."""
    from .core.io import read_nifti
    from .layer_metadata import layer_kwargs

    paths = [path] if isinstance(path, str | os.PathLike) else list(path)
    layers = []
    for item in paths:
        volume = read_nifti(item)
        name = nifti_stem(item)
        kwargs = layer_kwargs(volume, name)
        if is_label_like(volume.array, name):
            layers.append((_as_labels(volume.array, Path(item)), kwargs, "labels"))
        else:
            layers.append((volume.array, kwargs, "image"))
    return layers


def is_label_like(array: np.ndarray, name: str) -> bool:
    """True for a name containing label/seg/mask, or integer voxels with few distinct values."""
    lowered = name.lower()
    if any(word in lowered for word in _LABEL_WORDS):
        return bool(array.dtype.kind in "biu" or np.array_equal(array, np.round(array)))
    if array.dtype.kind not in "biu":
        return False
    return len(np.unique(array)) <= _MAX_LABEL_VALUES


def _as_labels(array: np.ndarray, path: Path) -> np.ndarray:
    if array.dtype.kind in "iu":
        return array
    if array.dtype.kind == "b":
        return array.astype(np.uint8)
    if array.min() < 0 or array.max() > np.iinfo(np.int32).max:
        raise ValueError(f"{path}: label values {array.min()}…{array.max()} do not fit int32")
    return array.astype(np.int32 if array.max() > 255 else np.uint8)
