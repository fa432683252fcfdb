"""MNIST-format digit data: an IDX reader/writer, the rotation protocol and loaders.

IDX files (LeCun's MNIST format, also used by Fashion-MNIST) are a 4-byte magic number
``0x00 0x00 <dtype code> <number of dimensions>``, one big-endian int32 per dimension, then the
data in C order, big-endian. They may be gzipped (detected from the content, not the name).

The rotation protocol (the paper's rotated-MNIST classification task): every image is rotated
about its centre by an angle drawn uniformly from [−90°, 90°], seeded, with bilinear
interpolation and zero fill. Positive angles turn the content counter-clockwise as displayed
(row 0 at the top), so +90° equals ``numpy.rot90``.
"""

from __future__ import annotations

import gzip
import math
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from ..flow.grid import normalised_identity, normalised_per_voxel, sample

__all__ = [
    "Digits",
    "IDXError",
    "RotatedDigits",
    "find_idx_files",
    "load_digits",
    "read_idx",
    "rotate_images",
    "rotated_digits",
    "write_idx",
]

# IDX dtype codes → numpy dtypes (big-endian on disk).
_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_CODES = {dtype.newbyteorder("="): code for code, dtype in _DTYPES.items()}
_PREFIXES = {"train": ("train",), "test": ("t10k", "test")}
CLASSES = 10  # MNIST and Fashion-MNIST label values are 0..9
_ROTATION_CHUNK = 4096  # images rotated per grid_sample call (bounds memory)


class IDXError(ValueError):
    """An IDX file that cannot be read: bad magic number, dtype code, dimensions or size."""


class Digits(NamedTuple):
    """One split of an MNIST-format data set, as stored."""

    images: np.ndarray  # (N, H, W) uint8
    labels: np.ndarray  # (N,) int64 class indices


class RotatedDigits(NamedTuple):
    """One split after the rotation protocol, ready for training."""

    images: torch.Tensor  # (N, 1, H, W) float32 in [0, 1]
    labels: torch.Tensor  # (N,) int64
    angles: torch.Tensor  # (N,) float32, degrees (counter-clockwise as displayed)


def read_idx(path: str | Path, ndim: int | None = None) -> np.ndarray:
    """Read an IDX file (raw or gzipped) into a native-endian array of its stored shape.

    ``ndim`` (optional) is the number of dimensions the caller needs (3 for images, 1 for
    labels). Raises :class:`IDXError` naming the file for a wrong magic number, an unknown dtype
    code, a truncated header or data, trailing bytes or an unexpected number of dimensions.
    """
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as error:
            raise IDXError(f"{path} is a truncated or corrupt gzip file ({error})") from error
    if len(raw) < 4:
        raise IDXError(f"{path} is too short for an IDX header ({len(raw)} bytes, need 4)")
    if raw[0] != 0 or raw[1] != 0:
        raise IDXError(
            f"{path} is not an IDX file: magic number 0x{raw[:4].hex()} should start with 0x0000"
        )
    code, dims = raw[2], raw[3]
    if code not in _DTYPES:
        known = ", ".join(f"0x{c:02x}" for c in _DTYPES)
        raise IDXError(f"{path} has unknown IDX dtype code 0x{code:02x} (known: {known})")
    if dims == 0:
        raise IDXError(f"{path} declares 0 dimensions in its IDX header")
    if ndim is not None and dims != ndim:
        raise IDXError(f"{path} holds {dims}-dimensional data, expected {ndim} (idx{ndim})")
    header = 4 + 4 * dims
    if len(raw) < header:
        raise IDXError(f"{path} is truncated inside its header ({len(raw)} of {header} bytes)")
    shape = tuple(int(s) for s in np.frombuffer(raw, dtype=">u4", count=dims, offset=4))
    dtype = _DTYPES[code]
    expected = math.prod(shape) * dtype.itemsize
    found = len(raw) - header
    if found < expected:
        raise IDXError(
            f"{path} is truncated: its header says {shape} {dtype.name} ({expected} bytes of data) "
            f"but only {found} bytes follow"
        )
    if found > expected:
        raise IDXError(
            f"{path} has {found - expected} bytes after the {expected} bytes of {shape} "
            f"{dtype.name} data its header declares"
        )
    data = np.frombuffer(raw, dtype=dtype, count=math.prod(shape), offset=header)
    return data.reshape(shape).astype(dtype.newbyteorder("="))


def write_idx(path: str | Path, array: np.ndarray) -> Path:
    """Write ``array`` as an IDX file (gzipped when the name ends in ``.gz``); returns the path."""
    path = Path(path)
    array = np.asarray(array)
    code = _CODES.get(array.dtype.newbyteorder("="))
    if code is None:
        raise TypeError(f"IDX cannot store dtype {array.dtype}; use one of uint8, int8, int16, "
                        "int32, float32, float64")
    if not 1 <= array.ndim <= 255:
        raise ValueError(f"IDX needs 1..255 dimensions, got an array of shape {array.shape}")
    payload = (
        bytes([0, 0, code, array.ndim])
        + np.asarray(array.shape, dtype=">u4").tobytes()
        + np.ascontiguousarray(array, dtype=_DTYPES[code]).tobytes()
    )
    path.write_bytes(gzip.compress(payload, mtime=0) if path.suffix == ".gz" else payload)
    return path


def find_idx_files(folder: str | Path, split: str) -> tuple[Path, Path]:
    """Paths of the ``(images, labels)`` IDX files of ``split`` ("train" or "test") in ``folder``.

    Accepts the usual names, gzipped or not: ``train-images-idx3-ubyte(.gz)``,
    ``train-images.idx3-ubyte`` and ``t10k-…`` (or ``test-…``) for the test split.
    """
    if split not in _PREFIXES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"data folder {folder} does not exist or is not a folder")
    found = []
    for kind, ndim in (("images", 3), ("labels", 1)):
        names = [
            f"{prefix}-{kind}{sep}idx{ndim}-ubyte{ext}"
            for prefix in _PREFIXES[split]
            for sep in ("-", ".")
            for ext in ("", ".gz")
        ]
        path = next((folder / name for name in names if (folder / name).is_file()), None)
        if path is None:
            raise FileNotFoundError(
                f"no {split} {kind} file in {folder}: expected one of {', '.join(names)}"
            )
        found.append(path)
    return found[0], found[1]


def load_digits(folder: str | Path, split: str) -> Digits:
    """Load one split of an MNIST-format data set from ``folder`` (see :func:`find_idx_files`).

    Checks that images are ``(N, H, W)`` uint8, labels ``(N,)`` uint8 class indices in
    0..9 (:data:`CLASSES`) and that both count N.
    """
    images_path, labels_path = find_idx_files(folder, split)
    images = read_idx(images_path, ndim=3)
    labels = read_idx(labels_path, ndim=1)
    for path, array in ((images_path, images), (labels_path, labels)):
        if array.dtype != np.uint8:
            raise IDXError(f"{path} stores {array.dtype}, expected unsigned bytes (code 0x08)")
    if len(images) != len(labels):
        raise IDXError(
            f"{images_path} holds {len(images)} images but {labels_path} holds {len(labels)} labels"
        )
    if len(images) == 0:
        raise IDXError(f"{images_path} holds no images")
    bad = np.unique(labels[labels >= CLASSES])
    if bad.size:
        shown = ", ".join(str(int(v)) for v in bad[:10]) + (" …" if bad.size > 10 else "")
        raise IDXError(
            f"{labels_path} holds label values outside 0..{CLASSES - 1}: {shown} "
            f"({int(np.isin(labels, bad).sum())} of {len(labels)} labels); MNIST-format "
            "digit sets have 10 classes"
        )
    return Digits(images, labels.astype(np.int64))


def rotate_images(images: torch.Tensor, angles: torch.Tensor | Sequence[float]) -> torch.Tensor:
    """Rotate each image ``(N, H, W)`` (float) about its centre by ``angles`` ``(N,)`` degrees.

    Counter-clockwise as displayed; bilinear interpolation, zeros outside. The rotation is
    about the pixel-grid centre in voxel units, so non-square images are not sheared.
    """
    if not isinstance(images, torch.Tensor) or images.ndim != 3 or not images.is_floating_point():
        raise ValueError("images must be a floating tensor of shape (N, H, W)")
    angles = torch.as_tensor(angles, dtype=images.dtype, device=images.device)
    if angles.shape != images.shape[:1]:
        raise ValueError(f"angles must have shape ({images.shape[0]},), got {tuple(angles.shape)}")
    height, width = images.shape[1:]
    base = normalised_identity((height, width), device=images.device, dtype=images.dtype)
    # voxel offsets from the centre; grid channel 0 is x (columns), channel 1 is y (rows)
    per_y, per_x = normalised_per_voxel((height, width))
    x, y = base[..., 0] / per_x, base[..., 1] / per_y
    out = torch.empty_like(images)
    for start in range(0, len(images), _ROTATION_CHUNK):
        theta = torch.deg2rad(angles[start:start + _ROTATION_CHUNK]).view(-1, 1, 1)
        cos, sin = torch.cos(theta), torch.sin(theta)
        # pull-back: output pixel p shows the input at R·p, R turning p by θ clockwise as
        # displayed (rows grow downwards), so the content turns θ counter-clockwise
        source_x = cos * x - sin * y
        source_y = sin * x + cos * y
        grid = torch.stack([source_x * per_x, source_y * per_y], dim=-1)
        chunk = images[start:start + _ROTATION_CHUNK].unsqueeze(1)
        out[start:start + _ROTATION_CHUNK] = sample(chunk, grid, padding="zeros").squeeze(1)
    return out


def rotated_digits(
    folder: str | Path,
    split: str,
    *,
    seed: int = 0,
    subset: int | None = None,
    max_angle: float = 90.0,
) -> RotatedDigits:
    """Load ``split`` from ``folder`` and apply the rotation protocol (angles ~ U[−max, max]°).

    ``subset`` keeps a seeded random subset of that many images (all when None or larger
    than the split). The same ``seed`` gives the same subset and angles.
    """
    if subset is not None and (isinstance(subset, bool) or not isinstance(subset, int)
                               or subset < 1):
        raise ValueError(f"subset must be a positive number of images or None, got {subset!r}")
    if not 0 <= max_angle <= 180:
        raise ValueError(f"max_angle must be in [0, 180] degrees, got {max_angle!r}")
    digits = load_digits(folder, split)
    rng = np.random.default_rng(seed)
    index = np.arange(len(digits.labels))
    if subset is not None and subset < len(index):
        index = np.sort(rng.permutation(len(index))[:subset])
    angles = rng.uniform(-max_angle, max_angle, size=len(index)).astype(np.float32)
    images = torch.from_numpy(digits.images[index].astype(np.float32) / 255.0)
    rotated = rotate_images(images, torch.from_numpy(angles)).clamp_(0.0, 1.0)
    return RotatedDigits(
        rotated.unsqueeze(1), torch.from_numpy(digits.labels[index]), torch.from_numpy(angles)
    )
