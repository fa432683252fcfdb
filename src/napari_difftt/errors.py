"""Typed exceptions and warnings of napari-difftt (torch-free, so the widgets can catch them).

Each message names the file or value at fault and what would be valid; callers branch on the
type, never on the message text.
"""

from __future__ import annotations

__all__ = [
    "AnnotationError",
    "Cancelled",
    "CheckpointError",
    "ConfigConflict",
    "IncompatibleCheckpoint",
    "OutOfMemory",
    "OutputPathError",
    "SpacingWarning",
    "SquaringCapWarning",
    "UnverifiedCheckpointWarning",
    "VolumeError",
]


class Cancelled(Exception):
    """The work was cancelled (``should_stop()`` returned True); nothing was produced."""


class OutOfMemory(RuntimeError):
    """The volume does not fit in the device's memory (estimated beforehand, or CUDA said so);
    the message says what to do."""


class VolumeError(ValueError):
    """A file that is not a usable 2D/3D scalar volume; the message names the file."""


class CheckpointError(ValueError):
    """A file that is not a valid checkpoint (corrupt, damaged, another format, too new, not
    plain data); the message names the file."""


class ConfigConflict(ValueError):
    """Settings that contradict a checkpoint being resumed; the message lists each one."""


class OutputPathError(ValueError):
    """An output path that cannot be written (a folder where a file is meant, a file where a
    folder is meant, no write permission); checked before any work starts."""


class UnverifiedCheckpointWarning(UserWarning):
    """A checkpoint written before checksums existed: it loads, but its integrity is unknown."""


class SquaringCapWarning(RuntimeWarning):
    """Scaling and squaring hit its cap of squarings: the first step exceeds ``max_step``."""


class SpacingWarning(UserWarning):
    """An image's voxel spacing differs from the model's training spacing by more than 20 %."""


class AnnotationError(ValueError):
    """Painted labels that cannot become training labels (nothing painted, paint along two
    axes, a value that is neither organ, background nor unlabelled); the message says how to
    fix the painting."""


class IncompatibleCheckpoint(ValueError):
    """A valid checkpoint that does not fit the run asked for (another dimensionality or model
    kind); the message names both."""
