"""NIfTI volumes with their affine, and safe, versioned checkpoints.

Array order: NIfTI stores voxels as (i, j, k); we hand out arrays transposed to (k, j, i), i.e.
(z, y, x) with axis 0 the slice axis, and an affine that maps *our* index (z, y, x, 1) to world
mm. A 2D volume (H, W) is one slice: its affine maps (0, y, x, 1). A NIfTI file stored as
(X, Y, 1) or with a trailing singleton 4th axis is read as the 2D/3D array it really is; writing
with ``like=`` restores the original shape, affine and header, so files round-trip exactly.
Every write goes to a temporary file in the target folder and is renamed into place
(:func:`os.replace`), so an interrupted write never leaves a partial file.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import re
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import nibabel as nib
import numpy as np

from ..errors import CheckpointError, OutputPathError, UnverifiedCheckpointWarning, VolumeError
from .atomic import atomic_write

if TYPE_CHECKING:
    import torch

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "CheckpointError",
    "Volume",
    "VolumeError",
    "atomic_write",
    "check_output_file",
    "check_output_folder",
    "display_affine",
    "display_transform",
    "encode_checkpoint",
    "load_checkpoint",
    "read_nifti",
    "save_checkpoint",
    "write_nifti",
]

CHECKPOINT_FORMAT = "napari-difftt"
CHECKPOINT_VERSION = 1  # newest version this code reads and the one it writes

# Reversing the index order (i, j, k) ↔ (k, j, i) is an exact permutation of affine columns.
_REVERSE = np.array([[0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=float)
_PLAIN = (str, int, float, bool, type(None))  # exact types: subclasses pickle as globals
_READ_ERRORS = (OSError, EOFError, ValueError, zlib.error, nib.filebasedimages.ImageFileError,
                nib.spatialimages.HeaderDataError)  # the last: e.g. datatype 999 or 1 (bits)
CHECKSUM_KEY = "sha256"  # SHA-256 of everything else in the payload (see _digest)


@dataclass(frozen=True)
class Volume:
    """A scalar volume in array order with its geometry."""

    array: np.ndarray  # (D, H, W) or (H, W): (k, j, i) order
    affine: np.ndarray  # (4, 4): our index (z, y, x, 1) → world mm (z = 0 for 2D)
    header: Any = None  # the original nibabel header (None for arrays not read from a file)
    path: Path | None = None

    @property
    def spacing(self) -> tuple[float, ...]:
        """Voxel size in mm per array axis."""
        return _spacing(self.affine, self.array.ndim)

    @property
    def is_oblique(self) -> bool:
        """True when an array axis is not parallel to a world axis."""
        columns = self.affine[:3, 3 - self.array.ndim : 3]
        return not bool(
            np.allclose(np.abs(columns).max(0), np.linalg.norm(columns, axis=0), rtol=1e-6)
        )


def read_nifti(path: str | os.PathLike) -> Volume:
    """Read a 2D or 3D NIfTI file (.nii or .nii.gz) as a :class:`Volume` in (k, j, i) order.

    Raises FileNotFoundError for a missing file and :class:`VolumeError` for an unreadable,
    truncated or corrupt file, for vector/RGB/4D data, and for NaN or Inf voxels.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"NIfTI file not found: {path}")
    try:
        with nib.imageglobals.LoggingOutputSuppressor():  # nibabel logs header faults to stderr
            image = nib.load(path)
        if not isinstance(image, nib.Nifti1Image | nib.Nifti2Image):
            raise VolumeError(f"{path} is a {type(image).__name__}, not a NIfTI-1/2 image")
        data = np.asanyarray(image.dataobj)
    except VolumeError:
        raise
    except _READ_ERRORS as error:
        raise VolumeError(
            f"cannot read {path}: it is truncated, corrupt or not NIfTI ({error})"
        ) from error
    if data.dtype.names is not None or data.dtype.kind not in "biuf":
        raise VolumeError(
            f"{path} holds {data.dtype} voxels (RGB or vector data); expected a scalar volume"
        )
    data = _squeeze(data, path)
    finite = np.isfinite(data) if data.dtype.kind == "f" else None
    if finite is not None and not finite.all():
        bad = int(data.size - np.count_nonzero(finite))
        raise VolumeError(f"{path} contains {bad} NaN/Inf voxel(s) out of {data.size}")
    return Volume(np.ascontiguousarray(data.T), image.affine @ _REVERSE, image.header, path)


def write_nifti(
    path: str | os.PathLike,
    array: np.ndarray,
    like: Volume | None = None,
    *,
    affine: np.ndarray | None = None,
    labels: bool = False,
    overwrite: bool = False,
) -> Path:
    """Write ``array`` ((D, H, W) or (H, W), (k, j, i) order) as NIfTI; return the path.

    ``like`` supplies the header and affine (restored exactly, including the original stored
    shape); ``affine`` (our index (z, y, x, 1) → world mm) overrides its affine; with neither,
    1 mm voxels at the origin. ``labels=True`` stores the smallest integer type that holds the
    values (uint8, int16, int32); otherwise float32. Scaling (scl_slope/inter) is reset.
    """
    path = Path(path)
    if not path.name.endswith((".nii", ".nii.gz")):
        raise ValueError(f"{path}: NIfTI file names must end in .nii or .nii.gz")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
    array = np.asarray(array)
    if array.ndim not in (2, 3):
        raise ValueError(f"array for {path} must be 2D or 3D, got shape {array.shape}")
    if like is not None and like.array.shape != array.shape:
        raise ValueError(
            f"array shape {array.shape} does not match {like.path or 'like'} {like.array.shape}"
        )
    data = _to_stored_dtype(array, labels, path).T
    header = like.header.copy() if like is not None and like.header is not None else None
    if header is not None and _squeeze_shape(header.get_data_shape()) == data.shape:
        data = data.reshape(header.get_data_shape())  # e.g. (X, Y) stored as (X, Y, 1)
    if affine is not None:
        nifti_affine = _check_affine(affine) @ _REVERSE
    elif like is not None:
        nifti_affine = like.affine @ _REVERSE  # _REVERSE is its own inverse
    else:
        nifti_affine = np.eye(4)
    kind = nib.Nifti2Image if isinstance(header, nib.Nifti2Header) else nib.Nifti1Image
    image = kind(data, nifti_affine, header)
    image.header.set_data_dtype(data.dtype)
    image.header.set_slope_inter(None, None)
    if labels:
        image.header["cal_min"], image.header["cal_max"] = 0, 0  # the image's window is meaningless
    return atomic_write(path, lambda tmp: nib.save(image, tmp), overwrite=overwrite)


def check_output_file(
    path: str | os.PathLike, *, overwrite: bool = False, what: str = "output"
) -> Path:
    """Check, before any work, that a file can be written at ``path``; returns it.

    Refused, naming the path: an existing file without ``overwrite`` (FileExistsError); an
    existing folder there, a file where a parent folder should be, or a nearest existing parent
    folder that is not writable (:class:`~napari_difftt.errors.OutputPathError`).
    """
    path = Path(path)
    if path.is_dir():
        raise OutputPathError(f"{what} {path} is a folder; give a file name inside it instead")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{what} {path} exists; pass --overwrite to replace it")
    check_output_folder(path.parent, what=f"{what} {path}: folder")
    return path


def check_output_folder(folder: str | os.PathLike, *, what: str = "output folder") -> Path:
    """Check that ``folder`` is, or can be created as, a writable folder; returns it."""
    folder = Path(folder)
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise OutputPathError(f"{what} {folder}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputPathError(f"{what} {folder}: {existing} is not writable")
    return folder


def display_affine(scale, translate) -> np.ndarray:
    """The affine (index (z, y, x, 1) → world (x, y, z) mm) of napari's ``scale``/``translate``
    per array axis: the inverse of :func:`display_transform` for axis-aligned volumes."""
    ndim = len(scale)
    zyx = np.eye(4)
    zyx[3 - ndim : 3, 3 - ndim : 3] = np.diag(np.asarray(scale, dtype=float))
    zyx[3 - ndim : 3, 3] = np.asarray(translate, dtype=float)
    return zyx[[2, 1, 0, 3]]


def display_transform(volume: Volume) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """napari ``(scale, translate)`` per array axis, with world axes taken in (z, y, x) order.

    Exact for axis-aligned volumes (flips give negative scales); for oblique volumes it is the
    diagonal part (spacing with the sign of the diagonal) — keep ``volume.affine`` for the rest.
    """
    ndim = volume.array.ndim
    world_zyx = _REVERSE[:3, :3] @ volume.affine[:3]  # rows: world z, y, x
    spacing = _spacing(volume.affine, ndim)
    axes = range(3 - ndim, 3)
    scale = tuple(s if world_zyx[a, a] >= 0 else -s for s, a in zip(spacing, axes, strict=True))
    translate = tuple(float(world_zyx[a, 3]) for a in axes)
    return scale, translate


def save_checkpoint(path: str | os.PathLike, payload: dict) -> Path:
    """Atomically save a checkpoint dict (tensors, str, int, float, bool, None, list, tuple, dict).

    The bytes are :func:`encode_checkpoint`'s, so a full disk raises
    :class:`~napari_difftt.errors.DiskFull` with the exact size needed and leaves nothing.
    """
    path = Path(path)
    data = encode_checkpoint(payload, path)
    return atomic_write(path, lambda tmp: tmp.write_bytes(data), overwrite=True, size=len(data))


def encode_checkpoint(payload: dict, path: str | os.PathLike = "checkpoint") -> bytes:
    """The bytes :func:`save_checkpoint` writes (``path`` only names the file in errors).

    ``format`` and ``version`` are filled in when missing; ``sha256`` is (re)computed over the
    rest (tensor bytes, dtypes, shapes and the plain values) and verified on load. Anything
    ``torch.load(weights_only=True)`` would refuse (numpy arrays, arbitrary objects) is rejected
    here, naming its key.
    """
    if not isinstance(payload, dict):
        raise TypeError(
            f"checkpoint payload for {path} must be a dict, got {type(payload).__name__}"
        )
    payload = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **payload}
    if payload["format"] != CHECKPOINT_FORMAT:
        raise ValueError(
            f"checkpoint format must be {CHECKPOINT_FORMAT!r}, got {payload['format']!r}"
        )
    payload.pop(CHECKSUM_KEY, None)
    _check_plain("payload", payload)
    payload[CHECKSUM_KEY] = _digest(payload)
    import torch  # here, not at import: NIfTI I/O (and the sample data) need no torch

    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return buffer.getvalue()


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint safely (``weights_only=True``: no code runs) and check it.

    Raises FileNotFoundError for a missing file and, for anything else that is not a valid
    checkpoint, :class:`~napari_difftt.errors.CheckpointError` naming the file: corrupt,
    truncated or damaged (SHA-256 mismatch) files, pickled objects, another format, a newer
    version. A checkpoint written before checksums existed loads with an
    :class:`~napari_difftt.errors.UnverifiedCheckpointWarning` ("no checksum").
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        # torch >= 2.4 names the object "GLOBAL module.name", older ones "Unsupported class …"
        refused = re.search(r"(?:GLOBAL|Unsupported class) ([\w.]+)", str(error))
        if refused is None:
            raise CheckpointError(f"{path} is corrupt or truncated: {error}") from error
        raise CheckpointError(
            f"{path} refers to {refused.group(1)}, which is not plain data: refused for safety "
            "(checkpoints load with weights_only=True)"
        ) from error
    except Exception as error:  # a damaged zip or pickle raises almost any type
        raise CheckpointError(
            f"{path} is corrupt or truncated: {type(error).__name__}: {error}"
        ) from error
    if not isinstance(payload, dict):
        raise CheckpointError(
            f"{path} is not a napari-difftt checkpoint (holds a {type(payload).__name__})"
        )
    if payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path} is not a napari-difftt checkpoint (format={payload.get('format')!r})"
        )
    version = payload.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise CheckpointError(f"{path} has an invalid checkpoint version {version!r}")
    if version > CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{path} is checkpoint version {version}, newer than this napari-difftt supports "
            f"({CHECKPOINT_VERSION}); upgrade napari-difftt"
        )
    _verify(path, payload)
    return payload


# --------------------------------------------------------------------------------------------
# helpers


def _spacing(affine: np.ndarray, ndim: int) -> tuple[float, ...]:
    return tuple(float(s) for s in np.linalg.norm(affine[:3, 3 - ndim : 3], axis=0))


def _squeeze(data: np.ndarray, path: Path) -> np.ndarray:
    """(X, Y, Z, 1, …) → (X, Y, Z); (X, Y, 1) → (X, Y); anything else not 2D/3D is an error."""
    shape = _squeeze_shape(data.shape)
    if len(shape) not in (2, 3) or min(shape) < 1:
        raise VolumeError(f"{path} has shape {data.shape}; expected a 2D or 3D scalar volume")
    return data.reshape(shape)


def _squeeze_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Drop trailing singleton axes beyond the third, and the third of an (X, Y, 1) slice (not
    of (1, 1, 1) or (X, 1, 1): those stay 3D)."""
    shape = tuple(shape)
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) == 3 and shape[-1] == 1 and min(shape[:2]) > 1:
        shape = shape[:2]
    return shape


def _to_stored_dtype(array: np.ndarray, labels: bool, path: Path) -> np.ndarray:
    if not labels:
        return array.astype(np.float32)
    if array.dtype.kind == "b":
        return array.astype(np.uint8)
    if array.dtype.kind == "f":
        if not np.all(np.isfinite(array)) or not np.array_equal(array, np.round(array)):
            raise ValueError(f"labels for {path} must be whole numbers")
    elif array.dtype.kind not in "iu":
        raise ValueError(f"labels for {path} must be integers, got dtype {array.dtype}")
    low, high = (array.min(), array.max()) if array.size else (0, 0)
    for dtype in (np.uint8, np.int16, np.int32):
        info = np.iinfo(dtype)
        if info.min <= low and high <= info.max:
            return array.astype(dtype)
    raise ValueError(f"labels for {path} span {low}…{high}, beyond int32")


def _check_affine(affine: np.ndarray) -> np.ndarray:
    affine = np.asarray(affine, dtype=float)
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        raise ValueError(f"affine must be a finite (4, 4) matrix, got shape {affine.shape}")
    return affine


def _verify(path: Path, payload: dict) -> None:
    """Check the payload against its stored SHA-256 (a missing one only warns: old files)."""
    stored = payload.pop(CHECKSUM_KEY, None)
    if stored is None:
        warnings.warn(
            f"{path}: no checksum (written before checkpoints carried a SHA-256); loaded without "
            "an integrity check — save it again to add one",
            UnverifiedCheckpointWarning,
            stacklevel=3,
        )
        return
    try:
        actual = _digest(payload)
    except (TypeError, ValueError, RuntimeError) as error:
        raise CheckpointError(f"{path} holds values a checkpoint cannot hold: {error}") from error
    if stored != actual:
        raise CheckpointError(
            f"{path} is damaged: its SHA-256 is {actual[:16]}… but {str(stored)[:16]}… was "
            "stored when it was written (bit rot or an incomplete copy); restore it from a backup"
        )


def _digest(payload: dict) -> str:
    """SHA-256 (hex) of a plain payload: keys, types, plain values, tensor dtypes, shapes, bytes."""
    import torch

    digest = hashlib.sha256()

    def feed(value: object) -> None:
        if isinstance(value, dict):
            digest.update(b"{")
            for key in sorted(value, key=repr):
                digest.update(repr(key).encode() + b":")
                feed(value[key])
            digest.update(b"}")
        elif isinstance(value, list | tuple):
            digest.update(b"[" if isinstance(value, list) else b"(")
            for item in value:
                feed(item)
            digest.update(b"]")
        elif isinstance(value, torch.Tensor):
            tensor = value.detach().cpu().contiguous().reshape(-1)
            digest.update(f"T{tensor.dtype}{tuple(value.shape)}".encode())
            digest.update(tensor.view(torch.uint8).numpy().tobytes())
        elif type(value) in _PLAIN:
            digest.update(f"{type(value).__name__}:{value!r};".encode())
        else:
            raise TypeError(f"a {type(value).__name__} is not plain checkpoint data")

    feed(payload)
    return digest.hexdigest()


def _check_plain(key: str, value: object) -> None:
    import torch

    if isinstance(value, dict):
        for name, item in value.items():
            if not isinstance(name, str | int):
                raise TypeError(f"checkpoint {key} has a key of type {type(name).__name__}")
            _check_plain(f"{key}[{name!r}]", item)
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            _check_plain(f"{key}[{i}]", item)
    elif not (isinstance(value, torch.Tensor) or type(value) in _PLAIN):
        raise TypeError(
            f"checkpoint {key} is a {type(value).__module__}.{type(value).__name__}; only tensors, "
            "str, int, float, bool, None, list, tuple and dict are allowed"
        )
