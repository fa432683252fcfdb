"""File-name conventions of NIfTI volumes (torch-free, so the CLI and the reader import it fast)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["NIFTI_SUFFIXES", "is_nifti", "nifti_stem"]

NIFTI_SUFFIXES = (".nii.gz", ".nii")


def is_nifti(path: str | os.PathLike) -> bool:
    """Whether the file name ends in ``.nii`` or ``.nii.gz`` (any case)."""
    return Path(path).name.lower().endswith(NIFTI_SUFFIXES)


def nifti_stem(path: str | os.PathLike) -> str:
    """The file name without ``.nii.gz`` / ``.nii`` (any case): ``case_01.nii.gz`` → ``case_01``;
    any other name loses its last suffix only."""
    name = Path(path).name
    for suffix in NIFTI_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem
