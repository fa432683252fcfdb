"""Voxel spacing, checked without torch: the sample data and the NIfTI readers need it before
any model is loaded (the sample opens without importing torch)."""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["check_spacing"]


def check_spacing(spacing: Sequence[float], ndim: int) -> tuple[float, ...]:
    """``spacing`` as ``ndim`` floats (mm per axis), each finite and positive; else ValueError."""
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != ndim or not all(math.isfinite(s) and s > 0 for s in spacing):
        raise ValueError(f"spacing must be {ndim} positive numbers (mm per axis), got {spacing!r}")
    return spacing
