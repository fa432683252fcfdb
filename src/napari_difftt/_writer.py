"""napari writers: Labels and Image layers to NIfTI with the source file's affine and header.

A layer read by :mod:`napari_difftt._reader` (or derived from one) carries its original affine
and header in ``metadata["napari_difftt"]``; they are written back exactly (oblique included).
Other layers get an affine from their scale/translate. napari's save dialog has already asked
before replacing a file, so these writers overwrite.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["write_image", "write_labels"]


def write_labels(path: str, data: Any, attributes: dict) -> list[str]:
    """Write a Labels layer (integers) to ``path`` (.nii / .nii.gz); returns the written path."""
    return [_write(path, data, attributes, labels=True)]


def write_image(path: str, data: Any, attributes: dict) -> list[str]:
    """Write an Image layer (float32) to ``path`` (.nii / .nii.gz); returns the written path."""
    return [_write(path, data, attributes, labels=False)]


def _write(path: str, data: Any, attributes: dict, labels: bool) -> str:
    from .core.io import Volume, write_nifti
    from .widgets._layers import META_KEY, META_VERSION, display_affine

    array = np.asarray(data)
    if array.ndim not in (2, 3) or attributes.get("rgb"):
        raise ValueError(
            f"cannot write {path}: NIfTI export needs a 2D/3D scalar layer, got shape {array.shape}"
        )
    if not str(path).lower().endswith((".nii", ".nii.gz")):
        path = f"{path}.nii.gz"
    entry = (attributes.get("metadata") or {}).get(META_KEY)
    known = isinstance(entry, dict) and entry.get("version") == META_VERSION
    if known and entry.get("affine") is not None:
        like = Volume(array, np.asarray(entry["affine"], dtype=float), entry.get("header"))
        return str(write_nifti(path, array, like, labels=labels, overwrite=True))
    ndim = array.ndim
    scale = attributes.get("scale", (1.0,) * ndim)
    translate = attributes.get("translate", (0.0,) * ndim)
    affine = display_affine(scale, translate)
    return str(write_nifti(path, array, affine=affine, labels=labels, overwrite=True))
