"""napari writers: Labels and Image layers to NIfTI with the source file's affine and header.

A layer read by :mod:`napari_difftt._reader` (or derived from one) carries its original affine
and header in ``metadata["napari_difftt"]``; they are written back exactly (oblique included)
while the layer's scale and translate are those the affine gives. A layer moved or rescaled in
napari is written with its current scale/translate (the header kept, its affine replaced);
plain layers get an affine from their scale/translate, a header in mm and sform code 2
(aligned). napari's save dialog has already asked before replacing a file, so these writers
overwrite.
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
    from .core.io import Volume, display_affine, write_nifti
    from .layer_metadata import metadata_entry

    array = np.asarray(data)
    if array.ndim not in (2, 3) or attributes.get("rgb"):
        raise ValueError(
            f"cannot write {path}: NIfTI export needs a 2D/3D scalar layer, got shape {array.shape}"
        )
    if not str(path).lower().endswith((".nii", ".nii.gz")):
        path = f"{path}.nii.gz"
    entry = metadata_entry(attributes.get("metadata"))
    ndim = array.ndim
    scale = tuple(attributes.get("scale", (1.0,) * ndim))
    translate = tuple(attributes.get("translate", (0.0,) * ndim))
    stored, header = entry.get("affine"), entry.get("header")
    if stored is not None and _same_geometry(np.asarray(stored, float), scale, translate):
        affine = np.asarray(stored, dtype=float)
    else:
        affine = display_affine(scale, translate)
    like = Volume(array, affine, _mm_header() if header is None else header)
    return str(write_nifti(path, array, like, labels=labels, overwrite=True))


def _same_geometry(affine: np.ndarray, scale: tuple, translate: tuple) -> bool:
    """Whether napari's scale/translate are still those the stored affine displays as."""
    from .core.io import Volume, display_transform

    shown = display_transform(Volume(np.empty((1,) * len(scale)), affine))
    return bool(np.allclose(shown[0], scale) and np.allclose(shown[1], translate))


def _mm_header():
    """A NIfTI-1 header whose spatial unit is the millimetre (napari-difftt's world unit)."""
    import nibabel as nib

    header = nib.Nifti1Header()
    header.set_xyzt_units("mm")
    return header
