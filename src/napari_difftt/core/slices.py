"""Sparse annotations: a volume painted on a few slices → training labels, and the prior they
imply (docs/RESULTS.md, "Sparse annotations").

A painted array (a napari Labels layer, or a label file) holds 0, the organ value and
optionally an explicit "unlabelled" value. Along the chosen ``axis``, a slice that holds any
organ voxel counts as fully annotated: 0 there is background. Every other slice, and every
voxel painted with the unlabelled value, becomes ``ignore_value`` (left out of the loss).

Painted slices along two axes at once are refused by this rule: when the organ voxels of three
or more slices along ``axis`` all lie in one and the same slice along another axis (a line in
each of them, which is what a slice painted along that other axis leaves behind), the paint is
along two axes. A whole organ painted densely does not trip it (its sections are areas).

:func:`fit_to_slices` fits the generalised Gaussian prior to the annotated slices (the rule and
its measurement are in its docstring and docs/RESULTS.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
from scipy import ndimage

from ..errors import AnnotationError
from .prior import GeneralisedGaussianPrior

__all__ = [
    "AXIS_NAMES",
    "DEPTH_RANGE",
    "SliceLabels",
    "annotated_axis",
    "annotated_slices",
    "axis_name",
    "evenly_spaced_slices",
    "fit_to_slices",
    "image_mask_targets",
    "image_segmentation_targets",
    "paint",
    "painted_sample",
    "painted_slices",
    "slice_fits",
]

# how axes are named to the user, array order (z, y, x) in 3D and (rows, columns) in 2D
AXIS_NAMES = {3: ("z", "y", "x"), 2: ("rows", "columns")}
TWO_AXES_SLICES = 3  # slices along the chosen axis whose paint lies in one slice of another
# with an image, the organ's depth is read off it (:func:`fit_to_slices`, _depth_from_image)
DEPTH_SMOOTHING = 1.0  # voxels, σ of the Gaussian before the intensity threshold
DEPTH_AGREEMENT = 0.9  # the threshold must reproduce this fraction of the painted slices
DEPTH_RANGE = (0.5, 2.0)  # the image's through-plane radius, bounded × the slices' fit
# voxels around the organ seen in the image that the segmentation is not taught as background
# (:func:`image_segmentation_targets`; docs/RESULTS.md, "The segmentation from the image")
IMAGE_BACKGROUND_MARGIN = 2


@dataclass(frozen=True, eq=False)
class SliceLabels:
    """Training labels made from a painted array, and what counts."""

    labels: np.ndarray  # (*S) uint8: 0 background, 1 organ, ignore_value unlabelled
    axis: int  # the axis the slices are taken along (array order)
    slices: tuple[int, ...]  # indices of the annotated slices along ``axis``, ascending
    voxels: int  # labelled voxels (not ignore_value), the ones the loss sees
    organ_voxels: int  # of which organ
    ignore_value: int

    def summary(self) -> str:
        """``"3 slices along z, 12288 voxels count (1034 organ)"``."""
        name = axis_name(self.axis, self.labels.ndim)
        slices = f"{len(self.slices)} slice{'s' if len(self.slices) != 1 else ''}"
        return f"{slices} along {name}, {self.voxels} voxels count ({self.organ_voxels} organ)"


def axis_name(axis: int, ndim: int) -> str:
    """The user's name of array ``axis`` of an ``ndim``-D volume ("z", "y", "x", "rows" ...)."""
    return AXIS_NAMES[ndim][axis]


def painted_slices(
    painted: np.ndarray,
    axis: int,
    *,
    organ: int = 1,
    unlabelled: int | None = None,
    ignore_value: int = 255,
) -> SliceLabels:
    """Turn a painted array ``(*S)`` (2D or 3D) into :class:`SliceLabels` (module docstring).

    ``organ`` is the painted value of the organ, ``unlabelled`` an optional value marking
    voxels as unlabelled, ``ignore_value`` the value unlabelled voxels get in the result.
    Raises :class:`~napari_difftt.errors.AnnotationError` (the message says how to fix it) for
    another value, no organ voxel, or paint along two axes.
    """
    painted = np.asarray(painted)
    if painted.ndim not in (2, 3):
        raise AnnotationError(f"the painted labels are {painted.ndim}D {painted.shape}; paint a "
                              "2D or 3D Labels layer of the image's shape")
    axis = _check_axis(axis, painted.ndim)
    if unlabelled in (0, organ):
        raise AnnotationError(f"the unlabelled value must differ from 0 (background) and "
                              f"{organ} (organ), got {unlabelled}; choose another value or none")
    allowed = [0, organ] + ([] if unlabelled is None else [unlabelled])
    values = np.unique(painted)
    bad = values[~np.isin(values, allowed)]
    if bad.size:
        shown = ", ".join(str(v) for v in bad[:5].tolist()) + (" …" if bad.size > 5 else "")
        extra = "" if unlabelled is None else f", {unlabelled} (unlabelled)"
        raise AnnotationError(
            f"the painted labels hold value(s) {shown}: only 0 (background), {organ} (organ)"
            f"{extra} are understood; repaint those voxels with {organ} or erase them"
        )
    inside = painted == organ
    name = axis_name(axis, painted.ndim)
    if not inside.any():
        raise AnnotationError(
            f"nothing is painted: paint the organ with label {organ} on at least one slice "
            f"along {name} (the other slices count as unlabelled)"
        )
    _refuse_two_axes(inside, axis)
    annotated = _slices_holding(inside, axis)
    labels = np.full(painted.shape, ignore_value, dtype=np.uint8)
    index = [slice(None)] * painted.ndim
    index[axis] = annotated
    labels[tuple(index)] = inside[tuple(index)]
    if unlabelled is not None:
        labels[painted == unlabelled] = ignore_value
    voxels = int(np.count_nonzero(labels != ignore_value))
    return SliceLabels(labels, axis, tuple(int(i) for i in annotated), voxels,
                       int(np.count_nonzero(labels == 1)), ignore_value)


def painted_sample(sample, axis: int, ignore_value: int = 255):
    """A ``core.data.Sample`` whose labels are painted slices along ``axis``, made training
    labels by :func:`painted_slices`; an AnnotationError names the sample."""
    try:
        labels = painted_slices(sample.labels, axis, unlabelled=ignore_value,
                                ignore_value=ignore_value).labels
    except AnnotationError as error:
        raise AnnotationError(f"labels of {sample.name!r}: {error}") from None
    return replace(sample, labels=labels)


def annotated_axis(labels: np.ndarray, ignore_value: int = 255) -> int | None:
    """The axis of sparse ``labels`` ``(*S)`` (0/1/ignore_value): the one with the fewest
    slices holding a labelled voxel (ties: the first). None for dense labels (no voxel
    unlabelled) or no labelled voxel."""
    known = np.asarray(labels) != ignore_value
    if known.all() or not known.any():
        return None
    return int(np.argmin([len(_slices_holding(known, a)) for a in range(known.ndim)]))


def annotated_slices(labels: np.ndarray,
                     ignore_value: int = 255) -> tuple[int, np.ndarray] | None:
    """(axis, slice indices ascending) of sparse ``labels`` ``(*S)``: the
    :func:`annotated_axis` and the slices along it that hold organ voxels (label 1). None for
    dense labels or no labelled voxel."""
    axis = annotated_axis(labels, ignore_value)
    if axis is None:
        return None
    return axis, _slices_holding(np.asarray(labels) == 1, axis)


def fit_to_slices(
    labels: np.ndarray,
    axis: int,
    spacing: Sequence[float] | None = None,
    ignore_value: int = 255,
    beta: float = 1.0,
    image: np.ndarray | None = None,
    **kwargs,
) -> GeneralisedGaussianPrior:
    """A prior whose ½-contour fits the organ seen in the annotated slices of ``labels``.

    ``labels`` ``(*S)`` hold 0/1/``ignore_value``; the slices along ``axis`` that hold organ
    voxels are used; ``spacing`` (mm per axis, default 1) only matters for one slice.

    * Two or more slices: each slice stands for the slab of the volume between the midpoints to
      its neighbours (the end slices for a slab as thick as their one gap). The organ's moments
      are the slab-weighted moments of the slices' organ voxels, plus the slab's own
      through-plane variance (thickness²/12); Σ = (n + 2) · covariance as in
      :func:`core.prior.fit_to_mask`. The centroid's drift across slices gives the tilt.
    * One slice: in-plane μ and Σ from the section (an (n−1)-ellipsoid: factor n + 1),
      through-plane μ at the slice and the radius equal to the in-plane radii's geometric mean
      in mm (an organ as deep as it is wide).
    * With an ``image`` ``(*S)`` whose intensities separate the painted organ from the painted
      slices' background, the organ is as deep as the organ-like region through the sections
      (:func:`_depth_from_image`): the through-plane radius is that region's, bounded to
      :data:`DEPTH_RANGE` × the radius above and never below the slabs'; one slice also
      takes the region's through-plane centre (within half the radius of the slice).

    Chosen by measurement on phantoms, lobed organs and 2D silhouettes
    (scripts/experiments/sparse_prior.py, docs/RESULTS.md). ``kwargs`` go to
    :class:`GeneralisedGaussianPrior`.
    """
    labels = np.asarray(labels)
    ndim = labels.ndim
    axis = _check_axis(axis, ndim)
    spacing = np.ones(ndim) if spacing is None else np.asarray(spacing, dtype=np.float64)
    inside = labels == 1
    slices = _slices_holding(inside, axis)
    if len(slices) == 0:
        raise AnnotationError("the annotated slices hold no organ voxel to fit a prior to")
    points = np.argwhere(inside).astype(np.float64)  # (N, n) voxel indices
    if len(slices) == 1:
        mean, covariance = _one_slice(points, axis, spacing)
    else:
        mean, covariance = _slab_moments(points, axis, slices)
    if image is not None:
        _deepen(mean, covariance, labels, np.asarray(image), axis, slices)
    scale = np.asarray([2.0 / (n - 1) for n in labels.shape])  # voxel → normalised
    return GeneralisedGaussianPrior(ndim, mean=mean * scale - 1.0,
                                    covariance=covariance * np.outer(scale, scale), beta=beta,
                                    **kwargs)


def slice_fits(samples: Sequence, ignore_value: int = 255,
               images: bool = False) -> list[GeneralisedGaussianPrior]:
    """:func:`fit_to_slices` of every sparsely labelled sample (``Sample``: labels with
    unlabelled voxels and at least ``ndim + 1`` organ voxels), its axis by
    :func:`annotated_axis`; ``images``: deepened to the organ seen in each sample's image."""
    fits = []
    for sample in samples:
        axis = annotated_axis(sample.labels, ignore_value)
        if axis is None or np.count_nonzero(sample.labels == 1) <= sample.labels.ndim:
            continue
        fits.append(fit_to_slices(sample.labels, axis, sample.spacing, ignore_value,
                                  image=sample.image if images else None))
    return fits


def image_mask_targets(labels: np.ndarray, image: np.ndarray,
                       ignore_value: int = 255) -> np.ndarray | None:
    """Targets ``(*S)`` uint8 for the pose level's mask (core.pose) on sparse ``labels``: the
    labels where they are known; on the unlabelled voxels 1 in the organ seen in ``image``
    through the painted slices (:func:`_organ_in_image`, the region the organ's depth is read
    from), 0 where the image is not organ-like, ``ignore_value`` elsewhere.

    The mask learns from the painted sections only otherwise, which never show it the organ's
    ends along the painted axis (docs/RESULTS.md, "The pose mask from the image"). None when
    ``labels`` are not painted slices along one axis or the image does not separate them.
    """
    annotated = annotated_slices(labels, ignore_value)
    if annotated is None:
        return None
    axis, slices = annotated
    if image.shape != labels.shape:
        raise ValueError(f"image {image.shape} and labels {labels.shape} differ in shape")
    found = _organ_in_image(np.asarray(image), labels, axis, slices)
    if found is None:
        return None
    organ, like = found
    targets = labels.copy()
    unlabelled = labels == ignore_value
    targets[unlabelled & organ] = 1
    targets[unlabelled & ~like] = 0
    return targets


def image_segmentation_targets(mask_targets: np.ndarray, labels: np.ndarray,
                               ignore_value: int = 255,
                               margin: int = IMAGE_BACKGROUND_MARGIN) -> np.ndarray:
    """Targets ``(*S)`` uint8 for the segmentation off the painted voxels, from the pose
    targets ``mask_targets`` of :func:`image_mask_targets`: 1 where those are organ, 0 where
    they are background more than ``margin`` voxels from the organ (its dilation, holes
    filled), ``ignore_value`` elsewhere — on the painted voxels too, which the segmentation
    loss already sees.

    The thresholded image misses dark parts of an organ and blurs its rim (recall 0.84 on the
    silhouettes); the margin keeps those voxels out of the background the output is taught
    (docs/RESULTS.md, "The segmentation from the image")."""
    if mask_targets.shape != labels.shape:
        raise ValueError(f"mask targets {mask_targets.shape} and labels {labels.shape} differ "
                         "in shape")
    if isinstance(margin, bool) or not isinstance(margin, int) or margin < 0:
        raise ValueError(f"margin must be a whole number of voxels >= 0, got {margin!r}")
    organ = mask_targets == 1
    near = organ if margin == 0 else ndimage.binary_dilation(organ, iterations=margin)
    near = ndimage.binary_fill_holes(near)
    targets = np.full(labels.shape, ignore_value, dtype=np.uint8)
    off = labels == ignore_value
    targets[off & organ] = 1
    targets[off & (mask_targets == 0) & ~near] = 0
    return targets


def evenly_spaced_slices(mask: np.ndarray, count: int, axis: int = 0) -> tuple[int, ...]:
    """``count`` slice indices along ``axis`` through the organ of ``mask`` ``(*S)``, at
    j / (count + 1) of its extent, j = 1 … count (one slice: the middle; three: the quartiles)
    — how the experiments paint "1 and 3 slices" (docs/RESULTS.md)."""
    mask = np.asarray(mask) != 0
    axis = _check_axis(axis, mask.ndim)
    present = _slices_holding(mask, axis)
    if present.size == 0 or count < 1:
        raise AnnotationError(f"need an organ voxel and count >= 1, got count={count!r}")
    first, last = present[0], present[-1]
    picks = [round(float(first + (last - first) * j / (count + 1))) for j in range(1, count + 1)]
    return tuple(sorted(set(picks)))


def paint(mask: np.ndarray, slices: Sequence[int], axis: int = 0) -> np.ndarray:
    """What a user paints: ``mask``'s organ (1) on ``slices`` along ``axis``, 0 elsewhere."""
    mask = np.asarray(mask) != 0
    painted = np.zeros(mask.shape, dtype=np.uint8)
    index = [slice(None)] * mask.ndim
    index[_check_axis(axis, mask.ndim)] = list(slices)
    painted[tuple(index)] = mask[tuple(index)]
    return painted


# --------------------------------------------------------------------------------------------
# helpers


def _slices_holding(mask: np.ndarray, axis: int) -> np.ndarray:
    """Indices (ascending) of the slices along ``axis`` where bool ``mask`` ``(*S)`` is set."""
    return np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))


def _check_axis(axis: int, ndim: int) -> int:
    if isinstance(axis, bool) or not isinstance(axis, int | np.integer) or not -ndim <= axis < ndim:
        raise AnnotationError(f"axis must be one of 0…{ndim - 1} ({', '.join(AXIS_NAMES[ndim])}) "
                              f"for a {ndim}D volume, got {axis!r}")
    return int(axis) % ndim


def _refuse_two_axes(inside: np.ndarray, axis: int) -> None:
    """AnnotationError when ``TWO_AXES_SLICES`` slices along ``axis`` have all their paint in
    one slice along another axis (see the module docstring)."""
    ndim = inside.ndim
    moved = np.moveaxis(inside, axis, 0)  # (slices, *in-plane)
    painted = moved.any(axis=tuple(range(1, ndim)))
    for k, other in enumerate(a for a in range(ndim) if a != axis):
        rest = tuple(1 + j for j in range(ndim - 1) if j != k)
        occupied = moved.any(axis=rest) if rest else moved  # (slices, positions along other)
        single = painted & (occupied.sum(axis=1) == 1)
        if not single.any():
            continue
        where = occupied[single].argmax(axis=1)
        counts = np.bincount(where, minlength=occupied.shape[1])
        position = int(counts.argmax())
        if counts[position] >= TWO_AXES_SLICES:
            lines = np.flatnonzero(single)[where == position]
            name, other_name = axis_name(axis, ndim), axis_name(other, ndim)
            shown = ", ".join(str(i) for i in lines[:4].tolist()) + (" …" if len(lines) > 4 else "")
            raise AnnotationError(
                f"painted along two axes: the paint of {len(lines)} slices along {name} "
                f"({shown}) lies in the single slice {other_name} = {position}, as if that slice "
                f"were painted along {other_name}. Paint along one axis only: erase the "
                f"{other_name} slice, or choose the axis {other_name} and erase the {name} ones"
            )


def _one_slice(points: np.ndarray, axis: int, spacing: np.ndarray):
    """(μ, Σ) in voxels from one section (see :func:`fit_to_slices`)."""
    ndim = points.shape[1]
    plane = [a for a in range(ndim) if a != axis]
    if len(points) < ndim:
        raise AnnotationError(f"the annotated slice holds {len(points)} organ voxel(s); paint "
                              f"at least {ndim} to fit a prior")
    mean = points.mean(0)
    centred = points[:, plane] - mean[plane]
    section = (ndim + 1) * (centred.T @ centred) / len(points)
    section += np.eye(ndim - 1) / 12.0  # a voxel's own extent: a one-voxel-wide section is > 0
    covariance = np.zeros((ndim, ndim))
    covariance[np.ix_(plane, plane)] = section
    in_mm = section * np.outer(spacing[plane], spacing[plane])
    radius_mm = float(np.prod(np.linalg.eigvalsh(in_mm)) ** (1.0 / (2 * (ndim - 1))))
    covariance[axis, axis] = (radius_mm / spacing[axis]) ** 2
    return mean, covariance


def _deepen(mean: np.ndarray, covariance: np.ndarray, labels: np.ndarray, image: np.ndarray,
            axis: int, slices: np.ndarray) -> None:
    """Deepen a slice fit (voxels, in place) to the organ seen in ``image`` where it separates
    the organ (:func:`_depth_from_image`): the through-plane radius becomes the image's,
    bounded by :data:`DEPTH_RANGE` × the fit's (one slice: × the in-plane radius) and, with
    several slices, never below the slabs' own; one slice also takes the image's centre,
    within half that radius of the slice."""
    if image.shape != labels.shape:
        raise ValueError(f"image {image.shape} and labels {labels.shape} differ in shape")
    depth = _depth_from_image(image, labels, axis, slices)
    if depth is None:
        return
    centre, radius = depth
    fitted = float(np.sqrt(covariance[axis, axis]))
    low = DEPTH_RANGE[0] * fitted if len(slices) == 1 else fitted
    radius = float(np.clip(radius, low, DEPTH_RANGE[1] * fitted))
    if len(slices) == 1:
        mean[axis] = np.clip(centre, slices[0] - radius / 2, slices[0] + radius / 2)
    covariance[axis, axis] = radius**2  # a larger diagonal keeps a tilted Σ positive definite


def _depth_from_image(image: np.ndarray, labels: np.ndarray, axis: int,
                      slices: np.ndarray) -> tuple[float, float] | None:
    """(through-plane centre, radius) in voxels of the organ seen in ``image`` ``(*S)``
    through the sections painted in ``slices`` of ``labels`` (1 organ, 0 background there):
    the slice-area-weighted through-plane variance v of :func:`_organ_in_image`'s region gives
    the radius √((n + 2)·v), the moment :func:`core.prior.fit_to_mask` takes of a dense mask.
    None where that function finds no organ."""
    found = _organ_in_image(image, labels, axis, slices)
    if found is None:
        return None
    body = found[0]
    areas = body.sum(axis=tuple(a for a in range(labels.ndim) if a != axis)).astype(np.float64)
    along = np.arange(len(areas), dtype=np.float64)
    centre = float(areas @ along / areas.sum())
    variance = float(areas @ (along - centre) ** 2 / areas.sum())
    return centre, float(np.sqrt((labels.ndim + 2) * variance))


def _organ_in_image(image: np.ndarray, labels: np.ndarray, axis: int,
                    slices: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(organ, organ-like) ``(*S)`` bool: the organ seen in ``image`` through the sections
    painted in ``slices`` of ``labels``, and every voxel whose intensity is organ-like.

    The image, smoothed by :data:`DEPTH_SMOOTHING`, is thresholded half-way between the medians
    of the painted slices' organ and background voxels; the organ-like voxels within the
    sections' footprint (their union swept along ``axis``) that are face-connected to the
    sections (the component holding most painted organ voxels) are the organ. None when the
    threshold classifies less than :data:`DEPTH_AGREEMENT` of the painted slices' labelled
    voxels right.
    """
    smooth = ndimage.gaussian_filter(image.astype(np.float32), DEPTH_SMOOTHING)
    planes, painted = np.take(smooth, slices, axis), np.take(labels, slices, axis)
    organ, background = painted == 1, painted == 0
    if not organ.any() or not background.any():
        return None
    inside, outside = float(np.median(planes[organ])), float(np.median(planes[background]))
    threshold = (inside + outside) / 2
    like = smooth >= threshold if inside > outside else smooth <= threshold
    like_planes = np.take(like, slices, axis)
    right = np.count_nonzero(like_planes[organ]) + np.count_nonzero(~like_planes[background])
    if right < DEPTH_AGREEMENT * (np.count_nonzero(organ) + np.count_nonzero(background)):
        return None
    footprint = np.expand_dims(organ.any(axis=axis), axis)
    components, _ = ndimage.label(like & footprint)
    ids = np.take(components, slices, axis)[organ]
    ids = ids[ids > 0]
    if ids.size == 0:
        return None
    return components == np.bincount(ids).argmax(), like


def _slab_moments(points: np.ndarray, axis: int, slices: np.ndarray):
    """(μ, Σ) in voxels from slab-weighted slices (see :func:`fit_to_slices`)."""
    ndim = points.shape[1]
    gaps = np.diff(slices).astype(np.float64)
    thickness = np.empty(len(slices))
    thickness[0], thickness[-1] = gaps[0], gaps[-1]
    thickness[1:-1] = (gaps[:-1] + gaps[1:]) / 2
    of_slice = np.searchsorted(slices, points[:, axis].astype(int))
    weights = thickness[of_slice]
    mean = (weights[:, None] * points).sum(0) / weights.sum()
    centred = points - mean
    covariance = (weights[:, None] * centred).T @ centred / weights.sum()
    covariance[axis, axis] += float((weights * thickness[of_slice] ** 2).sum() / weights.sum()) / 12
    return mean, (ndim + 2) * covariance

