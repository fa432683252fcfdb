"""Data for training and evaluation: normalisation, phantoms, NIfTI folders, patches.

Arrays are in array order (z, y, x) (see :mod:`.io`); labels are uint8 with 0 = background,
1 = organ and ``ignore_value`` (default 255) = unlabelled, left out of the loss.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from ..errors import VolumeError
from .io import Volume, read_nifti, write_nifti
from .paths import NIFTI_SUFFIXES, nifti_stem
from .spacing import check_spacing

__all__ = [
    "ORGANS",
    "Patch",
    "Phantom",
    "Sample",
    "array_sample",
    "check_segmentable",
    "label_values_outside",
    "load_nifti_folder",
    "make_phantom",
    "mirrored",
    "normalise_intensity",
    "parse_size",
    "resample",
    "resample_back",
    "same_geometry",
    "sample_patch",
    "sparse_annotation",
    "split_validation",
    "write_phantom_dataset",
]

ORGANS = ("ellipsoid", "lobed")  # the organ shapes of make_phantom
_CHANNEL = re.compile(r"(.+)_(\d{4})$")  # nnU-Net image names: case_0000 ↔ label case


@dataclass(frozen=True, eq=False)
class Phantom:
    """A synthetic volume with one smooth, connected, hole-free organ."""

    image: np.ndarray  # (*S) float32, roughly in [0, 1]
    labels: np.ndarray  # (*S) uint8 in {0, 1}
    spacing: tuple[float, ...]  # mm per array axis


@dataclass(frozen=True, eq=False)
class Sample:
    """One training/evaluation volume."""

    image: np.ndarray  # (*S) float32, intensity-normalised
    labels: np.ndarray | None  # (*S) uint8 in {0, 1, ignore_value}, or None
    spacing: tuple[float, ...]  # mm per array axis
    name: str
    affine: np.ndarray | None = None  # (4, 4) index (z, y, x, 1) → world mm (after resampling)
    # (*S) uint8 like labels: the pose level's mask targets where they differ from the labels
    # (core.slices.image_mask_targets); None: the labels
    mask_targets: np.ndarray | None = None
    # (*S) uint8: a second target of the segmentation off the painted voxels
    # (core.slices.image_segmentation_targets); None: the labels only
    segmentation_targets: np.ndarray | None = None


@dataclass(frozen=True, eq=False)
class Patch:
    """A crop of a :class:`Sample` and where it lies in the full volume."""

    image: np.ndarray  # (1, *P) float32, zeros where padded
    labels: np.ndarray | None  # (1, *P) uint8, ignore_value where padded
    offset: tuple[int, ...]  # volume index of patch voxel 0 (negative where padded before)
    full_shape: tuple[int, ...]  # shape of the whole volume (*S)
    mask_targets: np.ndarray | None = None  # (1, *P) uint8, the Sample's cropped alike
    segmentation_targets: np.ndarray | None = None  # (1, *P) uint8, likewise


def normalise_intensity(array: np.ndarray, lower: float = 1.0, upper: float = 99.0) -> np.ndarray:
    """Map the ``lower`` and ``upper`` percentiles to 0 and 1, clip, return float32 (*S).

    A constant image (both percentiles equal) becomes zeros. NaN/Inf raise ValueError.
    """
    if not 0.0 <= lower < upper <= 100.0:
        raise ValueError(
            f"percentiles must satisfy 0 <= lower < upper <= 100, got {lower}, {upper}"
        )
    array = np.asarray(array, dtype=np.float32)
    if array.size == 0:
        raise ValueError("cannot normalise an empty array")
    finite = np.isfinite(array)
    if not finite.all():
        raise ValueError(f"image contains {array.size - np.count_nonzero(finite)} NaN/Inf voxel(s)")
    low, high = np.percentile(array, [lower, upper])
    if high <= low:
        return np.zeros_like(array)
    return np.clip((array - low) / (high - low), 0.0, 1.0).astype(np.float32)


def check_segmentable(image: np.ndarray, name: str) -> None:
    """Refuse, naming ``name``, an image ``(*S)`` there is nothing to segment in:
    :class:`~napari_difftt.errors.VolumeError` for a shape other than 2D/3D with >= 2 voxels per
    axis, no finite voxel (all NaN/Inf, e.g. everything masked), or no contrast (every finite
    voxel equal: a constant image would be "segmented" as the prior itself)."""
    image = np.asarray(image)
    if image.ndim not in (2, 3) or min(image.shape, default=0) < 2:
        raise VolumeError(f"{name} has shape {image.shape}; expected a 2D or 3D image with >= 2 "
                          "voxels per axis")
    finite = image[np.isfinite(image)] if image.dtype.kind == "f" else image.ravel()
    if finite.size == 0:
        raise VolumeError(f"{name} has no finite voxel (all {image.size} are NaN/Inf): there is "
                          "nothing to segment")
    low, high = finite.min(), finite.max()
    if low == high:
        raise VolumeError(f"{name} has no contrast: every voxel is {low:g}, so there is nothing "
                          "to segment (a blank or wrongly exported image?)")


def make_phantom(
    shape: Sequence[int] = (64, 64, 64),
    seed: int = 0,
    spacing: Sequence[float] | None = None,
    organ: str = "ellipsoid",
) -> Phantom:
    """A seeded phantom: one organ (brighter and finer-textured) in a smooth textured
    background, times a smooth bias field, plus Gaussian noise. 2D when ``len(shape) == 2``.

    ``organ`` (one of :data:`ORGANS`):

    * ``"ellipsoid"`` — a smoothly deformed, randomly placed and rotated ellipsoid, star-shaped
      about its centre;
    * ``"lobed"`` — a small body (≈ 10–17 voxels across at 48³) with 2–4 lobes of 6–12 voxels
      joined to it and a dent carved into it: lobes, necks and concavities, 10–40 voxels across
      in all at 48³, the shapes one deformed ellipsoid fits worst.

    Either organ is well inside the volume; the mask is checked to be one face-connected
    component without holes (the largest component, filled, is kept where discretisation breaks
    that). The organ is drawn in normalised coordinates; ``spacing`` (mm per axis, default 1) is
    only recorded.
    """
    shape = _check_shape(shape)
    spacing = (1.0,) * len(shape) if spacing is None else check_spacing(spacing, len(shape))
    if organ not in ORGANS:
        raise ValueError(f"organ must be one of {ORGANS}, got {organ!r}")
    rng = np.random.default_rng(seed)
    labels = _organ(shape, rng) if organ == "ellipsoid" else _lobed_organ(shape, rng)
    edge = ndimage.gaussian_filter(labels.astype(np.float32), 0.7)  # partial-volume boundary
    background = 0.30 + 0.06 * _smooth_noise(rng, shape, 4.0)
    organ = 0.70 + 0.05 * _smooth_noise(rng, shape, 1.0)
    bias = np.exp(0.15 * _smooth_noise(rng, shape, 16.0))
    image = (background + edge * (organ - background)) * bias
    image += rng.normal(0.0, 0.04, size=shape).astype(np.float32)
    return Phantom(image.astype(np.float32), labels, spacing)


def sparse_annotation(
    labels: np.ndarray, keep_slices: int | Iterable[int], ignore_value: int = 255
) -> np.ndarray:
    """Keep the labels of the axial slices ``keep_slices`` (indices along axis 0); mark every
    other voxel ``ignore_value``. Returns a new uint8 array (*S)."""
    _check_ignore_value(ignore_value)
    labels = np.asarray(labels)
    keep = [keep_slices] if isinstance(keep_slices, int | np.integer) else list(keep_slices)
    for index in keep:
        if not -labels.shape[0] <= int(index) < labels.shape[0]:
            raise ValueError(f"slice {index} is outside 0…{labels.shape[0] - 1} (axis 0)")
    out = np.full(labels.shape, ignore_value, dtype=np.uint8)
    out[keep] = labels[keep]
    return out


def sample_patch(
    sample: Sample,
    patch_size: int | Sequence[int],
    rng: np.random.Generator | int | None = None,
    ignore_value: int = 255,
) -> Patch:
    """A random crop of ``patch_size`` (*P) voxels from ``sample``.

    Along an axis where the volume is smaller than the patch, the whole volume is placed at a
    random position in the patch and the rest padded (image 0, labels ``ignore_value``); the
    offset is then negative, so offset + local index is always the volume index.
    """
    _check_ignore_value(ignore_value)
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    full_shape = tuple(sample.image.shape)
    for what in ("labels", "mask_targets", "segmentation_targets"):
        array = getattr(sample, what)
        if array is not None and array.shape != full_shape:
            raise ValueError(f"sample {sample.name!r}: image shape {full_shape} and {what} "
                             f"shape {array.shape} differ")
    size = _check_patch_size(patch_size, len(full_shape))
    offset = tuple(
        int(rng.integers(0, n - p + 1)) if n >= p else -int(rng.integers(0, p - n + 1))
        for n, p in zip(full_shape, size, strict=True)
    )
    source = tuple(
        slice(max(o, 0), min(o + p, n)) for o, p, n in zip(offset, size, full_shape, strict=True)
    )
    target = tuple(slice(s.start - o, s.stop - o) for s, o in zip(source, offset, strict=True))
    image = np.zeros((1, *size), dtype=np.float32)
    image[(0, *target)] = sample.image[source]

    def crop(array: np.ndarray | None) -> np.ndarray | None:
        if array is None:
            return None
        cropped = np.full((1, *size), ignore_value, dtype=np.uint8)
        cropped[(0, *target)] = array[source]
        return cropped

    return Patch(image, crop(sample.labels), offset, full_shape, crop(sample.mask_targets),
                 crop(sample.segmentation_targets))


def mirrored(patch: Patch, rng: np.random.Generator) -> Patch:
    """``patch`` flipped along each spatial axis with probability ½ (image, labels and
    targets alike):
    the same patch of the volume mirrored along those axes, so its offset is mirrored too
    (S − offset − P) and offset + local index stays the volume index — what the prior and
    the pose level are evaluated at. The training augmentation of ``TrainConfig.mirror``."""
    axes = tuple(k for k in range(patch.image.ndim - 1) if rng.random() < 0.5)
    if not axes:
        return patch
    flip = tuple(1 + k for k in axes)
    sizes = zip(patch.offset, patch.image.shape[1:], patch.full_shape, strict=True)
    offset = tuple(n - o - p if k in axes else o for k, (o, p, n) in enumerate(sizes))

    def flipped(array: np.ndarray | None) -> np.ndarray | None:
        return None if array is None else np.flip(array, flip).copy()

    return Patch(flipped(patch.image), flipped(patch.labels), offset, patch.full_shape,
                 flipped(patch.mask_targets), flipped(patch.segmentation_targets))


def load_nifti_folder(
    images_dir: str | os.PathLike,
    labels_dir: str | os.PathLike | None = None,
    spacing: float | None = None,
    ignore_value: int = 255,
) -> list[Sample]:
    """Read every .nii/.nii.gz in ``images_dir`` (sorted by name) as a normalised :class:`Sample`.

    Labels are matched by name in ``labels_dir``: ``case.nii.gz`` ↔ ``case.nii.gz``, or nnU-Net
    style ``case_0000.nii.gz`` ↔ ``case.nii.gz``. Images and labels must share shape and
    affine; labels may hold only 0, 1 and ``ignore_value``. ``spacing`` (mm) resamples both to
    that isotropic spacing (linear for images, nearest for labels).
    """
    _check_ignore_value(ignore_value)
    images_dir = _check_dir(images_dir, "images")
    labels_dir = None if labels_dir is None else _check_dir(labels_dir, "labels")
    if spacing is not None and not (np.isfinite(spacing) and spacing > 0):
        raise ValueError(f"spacing must be a positive number of mm, got {spacing!r}")
    files = _nifti_files(images_dir)
    if not files:
        raise ValueError(f"{images_dir} holds no .nii or .nii.gz images")
    names = [_case_name(path) for path in files]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(
            f"{images_dir} holds several images for case(s) {', '.join(duplicates)} (multi-channel "
            "inputs are not supported)"
        )
    samples = []
    for path, name in zip(files, names, strict=True):
        image = read_nifti(path)
        labels = None
        if labels_dir is not None:
            labels = read_nifti(_label_file(labels_dir, path, name))
            _check_pair(image, labels, ignore_value)
        check_segmentable(image.array, str(path))
        samples.append(_sample(image, labels, name, spacing))
    return samples


def array_sample(
    image: np.ndarray,
    labels: np.ndarray,
    spacing: Sequence[float],
    name: str,
    ignore_value: int = 255,
) -> Sample:
    """A :class:`Sample` from in-memory arrays ``(*S)`` (copied; the image intensity-normalised).

    The same checks as :func:`load_nifti_folder`: one shape, labels only 0, 1 and
    ``ignore_value`` (ValueError naming ``name`` otherwise), an image there is something to
    segment in (:func:`check_segmentable`: VolumeError).
    """
    _check_ignore_value(ignore_value)
    image, labels = np.asarray(image), np.asarray(labels)
    if labels.shape != image.shape:
        raise ValueError(
            f"labels {labels.shape} and image {name!r} {image.shape} differ in shape; pair each "
            "image with its own labels"
        )
    bad = label_values_outside(labels, ignore_value)
    if bad.size:
        raise ValueError(
            f"labels of {name!r} hold values {bad[:5].tolist()}; one structure is segmented: use "
            f"0 (background), 1 (structure) and {ignore_value} (unlabelled)"
        )
    check_segmentable(image, f"image {name!r}")  # before normalising: the user's values
    spacing = check_spacing(spacing, image.ndim)
    return Sample(normalise_intensity(image), labels.astype(np.uint8), spacing, name)


def split_validation(samples: Sequence[Sample]) -> tuple[list[Sample], list[Sample]]:
    """(train, val): the last sample held out when there are two or more; with one, it is both
    (validated on itself)."""
    samples = list(samples)
    if not samples:
        raise ValueError("no training samples")
    if len(samples) >= 2:
        return samples[:-1], samples[-1:]
    return samples, samples


def parse_size(
    text: str, ndim: int | None = None, *, minimum: int = 1, what: str = "size"
) -> tuple[int, ...]:
    """``"64, 64, 64"``, ``"64x64x64"`` or ``"64 64"`` → a size in voxels, array order.

    2 or 3 ints of at least ``minimum``; with ``ndim``, exactly that many. The ValueError starts
    with ``what`` and quotes the text.
    """
    parts = [part for part in re.split(r"[\s,x×]+", text.strip().lower()) if part]
    try:
        size = tuple(int(part) for part in parts)
    except ValueError:
        raise ValueError(f"{what}: {text.strip()!r} is not like 64x64x64 or '64, 64, 64'") from None
    if len(size) not in (2, 3) or min(size) < minimum:
        raise ValueError(
            f"{what}: {text.strip()!r} needs 2 or 3 axes of at least {minimum} voxel(s)"
        )
    if ndim is not None and len(size) != ndim:
        raise ValueError(f"{what} {size} has {len(size)} numbers but the images are {ndim}D")
    return size


def write_phantom_dataset(
    root: str | os.PathLike,
    n_train: int = 4,
    n_test: int = 2,
    shape: Sequence[int] = (64, 64, 64),
    seed: int = 0,
    spacing: Sequence[float] | None = None,
    organ: str = "ellipsoid",
) -> Path:
    """Write phantoms as ``root/imagesTr, labelsTr, imagesTs, labelsTs`` (``phantom_NNN.nii.gz``,
    images float32, labels uint8) with a diagonal affine of ``spacing``; return ``root``.

    Phantom k (train first, then test) uses seed ``seed + k`` and the ``organ`` of
    :func:`make_phantom`. Existing files are not replaced.
    """
    root = Path(root)
    shape = _check_shape(shape)
    spacing = (1.0,) * len(shape) if spacing is None else check_spacing(spacing, len(shape))
    affine = np.diag([*(1.0,) * (3 - len(shape)), *spacing, 1.0])
    for split, first, count in (("Tr", 0, n_train), ("Ts", n_train, n_test)):
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ValueError(f"n_train and n_test must be non-negative ints, got {count!r}")
        for folder in (f"images{split}", f"labels{split}"):
            (root / folder).mkdir(parents=True, exist_ok=True)
        for index in range(first, first + count):
            phantom = make_phantom(
                shape, seed=seed + index, spacing=spacing, organ=organ
            )
            name = f"phantom_{index:03d}.nii.gz"
            write_nifti(root / f"images{split}" / name, phantom.image, affine=affine)
            write_nifti(root / f"labels{split}" / name, phantom.labels, affine=affine, labels=True)
    return root


# --------------------------------------------------------------------------------------------
# phantom helpers


def _organ(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """uint8 mask of a deformed ellipsoid {ρ ≤ 1 + δ(direction)} in normalised coordinates."""
    ndim = len(shape)
    axes = [np.linspace(-1.0, 1.0, n, dtype=np.float32) for n in shape]
    centre = rng.uniform(-0.2, 0.2, ndim)
    radii = rng.uniform(0.35, 0.5, ndim)
    rotation = _random_rotation(ndim, rng)
    # Local coordinates q = Rᵀ(x − c) / r, built axis by axis to stay cheap (broadcasting).
    grids = np.meshgrid(
        *[a - c for a, c in zip(axes, centre, strict=True)], indexing="ij", sparse=True
    )
    local = [sum(rotation[k, j] * grids[k] for k in range(ndim)) / radii[j] for j in range(ndim)]
    rho = np.sqrt(sum(q * q for q in local))
    direction = [q / np.maximum(rho, 1e-6) for q in local]
    # δ: a few smooth waves over the unit sphere; |δ| ≤ 0.25 keeps the shape star-shaped.
    delta = np.zeros(shape, dtype=np.float32)
    waves = 4
    for _ in range(waves):
        w = rng.normal(size=ndim)
        w /= np.linalg.norm(w)
        projection = sum(w[j] * direction[j] for j in range(ndim))
        delta += np.sin(rng.uniform(1.0, 3.0) * projection + rng.uniform(0, 2 * np.pi))
    mask = rho <= 1.0 + (0.25 / waves) * delta
    return _single_filled_component(mask).astype(np.uint8)


def _lobed_organ(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """uint8 mask of a body ellipsoid ∪ 2–4 lobe ellipsoids − one dent, normalised coordinates.

    Each lobe's centre lies just inside the body's surface along a random direction, so it joins
    the body through a neck; the dent is a ball centred on the surface along another direction.
    """
    ndim = len(shape)
    axes = [np.linspace(-1.0, 1.0, n, dtype=np.float32) for n in shape]
    grids = np.meshgrid(*axes, indexing="ij", sparse=True)
    centre = rng.uniform(-0.12, 0.12, ndim)
    body = rng.uniform(0.2, 0.35, ndim)
    mask = _ellipsoid(grids, centre, body, _random_rotation(ndim, rng))
    for _ in range(int(rng.integers(2, 5))):
        direction = _unit(rng, ndim)
        radii = rng.uniform(0.12, 0.25, ndim)
        where = centre + direction * body * rng.uniform(1.0, 1.6)
        where = np.clip(where, -0.85 + radii.max(), 0.85 - radii.max())
        mask |= _ellipsoid(grids, where, radii, _random_rotation(ndim, rng))
    dent = centre + _unit(rng, ndim) * body
    mask &= ~_ellipsoid(grids, dent, np.full(ndim, rng.uniform(0.08, 0.14)), np.eye(ndim))
    return _single_filled_component(mask).astype(np.uint8)


def _ellipsoid(grids: list[np.ndarray], centre: np.ndarray, radii: np.ndarray,
               rotation: np.ndarray) -> np.ndarray:
    """Boolean mask of {‖diag(1/r) Rᵀ (x − c)‖ ≤ 1} on the broadcast ``grids``."""
    ndim = len(grids)
    shifted = [g - c for g, c in zip(grids, centre, strict=True)]
    local = [sum(rotation[k, j] * shifted[k] for k in range(ndim)) / radii[j]
             for j in range(ndim)]
    return sum(q * q for q in local) <= 1.0


def _unit(rng: np.random.Generator, ndim: int) -> np.ndarray:
    vector = rng.normal(size=ndim)
    return vector / np.linalg.norm(vector)


def _single_filled_component(mask: np.ndarray) -> np.ndarray:
    labelled, count = ndimage.label(mask)  # face connectivity
    if count > 1:
        sizes = np.bincount(labelled.ravel())[1:]
        mask = labelled == 1 + int(np.argmax(sizes))
    return ndimage.binary_fill_holes(mask)


def _random_rotation(ndim: int, rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(ndim, ndim)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """Gaussian noise smoothed over ``sigma`` voxels, rescaled to unit standard deviation.

    Large sigmas are drawn on a coarse grid and interpolated up (same look, much cheaper).
    """
    factor = max(1, int(sigma // 2))
    coarse = tuple(max(2, -(-n // factor)) for n in shape)
    noise = ndimage.gaussian_filter(rng.standard_normal(coarse).astype(np.float32), sigma / factor)
    if coarse != shape:
        noise = ndimage.zoom(noise, [n / c for n, c in zip(shape, coarse, strict=True)], order=1)
    noise = noise[tuple(slice(0, n) for n in shape)]
    return (noise - noise.mean()) / max(float(noise.std()), 1e-6)


# --------------------------------------------------------------------------------------------
# folder helpers


def _nifti_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith(NIFTI_SUFFIXES))


def _case_name(path: Path) -> str:
    match = _CHANNEL.fullmatch(nifti_stem(path))
    return match.group(1) if match else nifti_stem(path)


def _label_file(labels_dir: Path, image: Path, case: str) -> Path:
    stems = dict.fromkeys((nifti_stem(image), case))
    candidates = [labels_dir / f"{stem}{suffix}" for stem in stems for suffix in NIFTI_SUFFIXES]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    looked = ", ".join(c.name for c in candidates)
    raise FileNotFoundError(f"no label file for {image} in {labels_dir} (looked for {looked})")


def label_values_outside(labels: np.ndarray, ignore_value: int) -> np.ndarray:
    """The distinct values of ``labels`` other than 0, 1 and ``ignore_value`` (sorted)."""
    values = np.unique(labels)
    return values[~np.isin(values, (0, 1, ignore_value))]


def same_geometry(affine_a: np.ndarray, affine_b: np.ndarray) -> bool:
    """Whether two 4×4 voxel-to-mm affines describe the same voxels (1e-3 mm, 1e-5 relative)."""
    return bool(np.allclose(affine_a, affine_b, rtol=1e-5, atol=1e-3))


def _check_pair(image: Volume, labels: Volume, ignore_value: int) -> None:
    if image.array.shape != labels.array.shape:
        raise ValueError(
            f"image {image.path} has shape {image.array.shape} but labels {labels.path} have "
            f"shape {labels.array.shape}"
        )
    if not same_geometry(image.affine, labels.affine):
        raise ValueError(
            f"image {image.path} and labels {labels.path} have different affines (voxel-to-mm "
            f"geometry):\n{image.affine}\nvs\n{labels.affine}"
        )
    bad = label_values_outside(labels.array, ignore_value)
    if bad.size:
        shown = ", ".join(f"{v:g}" for v in bad[:10]) + (" …" if bad.size > 10 else "")
        raise ValueError(
            f"labels {labels.path} hold values other than 0, 1 and {ignore_value} (ignore): {shown}"
        )


def _sample(image: Volume, labels: Volume | None, name: str, spacing: float | None) -> Sample:
    array, affine, old = image.array, image.affine, image.spacing
    label_array = None if labels is None else labels.array.astype(np.uint8)
    if spacing is not None:
        array = resample(array.astype(np.float32), old, spacing, order=1)
        if label_array is not None:
            label_array = resample(label_array, old, spacing, order=0)
        columns = slice(3 - array.ndim, 3)
        affine = affine.copy()
        affine[:3, columns] *= spacing / np.asarray(old)
        old = (float(spacing),) * array.ndim
    return Sample(normalise_intensity(array), label_array, tuple(old), name, affine)


def resample(array: np.ndarray, old: Sequence[float], new: float, order: int) -> np.ndarray:
    """Resample (*S) from spacing ``old`` to isotropic ``new`` mm; voxel 0 stays in place."""
    step = np.asarray([new / s for s in old])
    shape = tuple(
        int(np.floor((n - 1) / t + 1e-9)) + 1 for n, t in zip(array.shape, step, strict=True)
    )
    return ndimage.affine_transform(array, step, output_shape=shape, order=order, mode="nearest")


def resample_back(
    array: np.ndarray, spacing: Sequence[float], original: Sequence[float], shape: Sequence[int]
) -> np.ndarray:
    """The inverse of :func:`resample`: ``array`` of ``spacing`` mm onto ``shape`` voxels of
    ``original`` mm (linear, voxel 0 kept in place)."""
    step = np.asarray(original, dtype=float) / np.asarray(spacing, dtype=float)
    return ndimage.affine_transform(array, step, output_shape=tuple(shape), order=1,
                                    mode="nearest")


# --------------------------------------------------------------------------------------------
# argument checks


def _check_shape(shape: Sequence[int]) -> tuple[int, ...]:
    shape = tuple(shape)
    if len(shape) not in (2, 3) or not all(
        isinstance(n, int | np.integer) and n >= 8 for n in shape
    ):
        raise ValueError(f"shape must be 2 or 3 ints >= 8, got {shape!r}")
    return tuple(int(n) for n in shape)


def _check_patch_size(patch_size: int | Sequence[int], ndim: int) -> tuple[int, ...]:
    size = (patch_size,) * ndim if isinstance(patch_size, int | np.integer) else tuple(patch_size)
    if len(size) != ndim or not all(isinstance(p, int | np.integer) and p >= 1 for p in size):
        raise ValueError(
            f"patch_size must be {ndim} positive ints for a {ndim}D volume, got {patch_size!r}"
        )
    return tuple(int(p) for p in size)


def _check_ignore_value(value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or not 2 <= value <= 255:
        raise ValueError(f"ignore_value must be an int in 2..255 (labels are uint8), got {value!r}")


def _check_dir(folder: str | os.PathLike, what: str) -> Path:
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{what} folder not found: {folder}")
    return folder
