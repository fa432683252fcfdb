"""Typed exceptions and warnings of napari-difftt (torch-free, so the widgets can catch them).

Each message names the file or value at fault and what would be valid; callers branch on the
type, never on the message text.
"""

from __future__ import annotations

import errno

__all__ = [
    "AnnotationError",
    "Cancelled",
    "CheckpointError",
    "ConfigConflict",
    "DiskFull",
    "IncompatibleCheckpoint",
    "NoForegroundWarning",
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


class DiskFull(OSError):
    """A write that ran out of space (a full disk, a quota, a file-size limit such as
    ``ulimit -f``). ``str()`` is one line: ``no space left on DEVICE writing PATH (needed N MB,
    free M MB)`` (MB = 10⁶ bytes; DEVICE is the mount point; free counts the file-size limit).
    Nothing partial is left at ``path``."""

    def __init__(
        self, device: str, path: str, needed: int, free: int, code: int = errno.ENOSPC
    ) -> None:
        message = (f"no space left on {device} writing {path} (needed {_mb(needed)} MB, free "
                   f"{_mb(free)} MB)")
        super().__init__(code, message)
        self.device, self.path, self.needed, self.free = device, path, needed, free

    def __str__(self) -> str:
        return str(self.strerror)


class UnverifiedCheckpointWarning(UserWarning):
    """A checkpoint written before checksums existed: it loads, but its integrity is unknown."""


class SquaringCapWarning(RuntimeWarning):
    """Scaling and squaring hit its cap of squarings: the first step exceeds ``max_step``."""


class NoForegroundWarning(UserWarning):
    """A training volume without a foreground voxel among volumes that have some."""


class SpacingWarning(UserWarning):
    """An image's voxel spacing differs from the model's training spacing by more than 20 %."""


class AnnotationError(ValueError):
    """Painted labels that cannot become training labels (nothing painted, paint along two
    axes, a value that is neither organ, background nor unlabelled); the message says how to
    fix the painting."""


class IncompatibleCheckpoint(ValueError):
    """A valid checkpoint that does not fit the run asked for (another dimensionality or model
    kind); the message names both."""


def _mb(size: int) -> str:
    """Bytes as MB (10⁶ bytes) with one decimal."""
    return f"{size / 1e6:.1f}"
