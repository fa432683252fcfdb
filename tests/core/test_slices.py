"""Painted slices → training labels (counts, refusals) and the prior fitted to the slices."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from napari_difftt.core.data import make_phantom
from napari_difftt.core.prior import fit_to_mask
from napari_difftt.core.slices import (
    DEPTH_RANGE,
    annotated_axis,
    annotated_slices,
    evenly_spaced_slices,
    fit_to_slices,
    image_mask_targets,
    image_segmentation_targets,
    paint,
    painted_slices,
)
from napari_difftt.errors import AnnotationError


@pytest.fixture(scope="module")
def organ() -> np.ndarray:
    return make_phantom((32, 32, 32), seed=2).labels


def test_painted_slices_count_fully_and_the_rest_is_unlabelled(organ):
    slices = evenly_spaced_slices(organ, 3, axis=1)
    result = painted_slices(paint(organ, slices, axis=1), 1)
    assert result.slices == slices and result.axis == 1
    labels = np.moveaxis(result.labels, 1, 0)
    for index in range(32):
        if index in slices:  # the whole slice is labelled: organ 1, background 0
            assert set(np.unique(labels[index])) <= {0, 1}
            np.testing.assert_array_equal(labels[index], np.moveaxis(organ, 1, 0)[index])
        else:
            assert (labels[index] == 255).all()
    assert result.voxels == 3 * 32 * 32
    assert result.organ_voxels == int(np.moveaxis(organ, 1, 0)[list(slices)].sum())
    assert result.summary().startswith("3 slices along y, 3072 voxels count")


def test_an_explicit_unlabelled_value_is_left_out(organ):
    painted = paint(organ, [16])
    painted[16, :4] = 7  # "I do not know" in part of the painted slice
    painted[3, 0, 0] = 7  # and alone in another slice: that slice stays unlabelled
    result = painted_slices(painted, 0, unlabelled=7, ignore_value=200)
    assert result.slices == (16,)
    assert (result.labels[16, :4] == 200).all()
    assert result.voxels == 32 * 32 - 4 * 32
    with pytest.raises(AnnotationError, match=r"value\(s\) 7: only 0 \(background\), 1"):
        painted_slices(painted, 0)
    with pytest.raises(AnnotationError, match="unlabelled value must differ from 0"):
        painted_slices(painted, 0, unlabelled=1)


def test_two_dimensional_rows_and_columns():
    mask = make_phantom((32, 32), seed=1).labels
    rows = painted_slices(paint(mask, [10, 16], axis=0), 0)
    assert rows.slices == (10, 16) and rows.voxels == 64
    columns = painted_slices(paint(mask, [15], axis=1), 1)
    assert columns.slices == (15,) and (columns.labels[:, 14] == 255).all()
    assert columns.summary().startswith("1 slice along columns")


def test_nothing_painted_is_refused_with_how_to_fix():
    with pytest.raises(AnnotationError, match="nothing is painted: paint the organ with label 1"):
        painted_slices(np.zeros((8, 8, 8), np.uint8), 0)


def test_paint_along_two_axes_is_refused_naming_both(organ):
    painted = paint(organ, [16]) | paint(organ, [15], axis=2)
    with pytest.raises(AnnotationError, match=r"two axes.* along z .* single slice x = 15"):
        painted_slices(painted, 0)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_a_densely_painted_organ_is_not_mistaken_for_two_axes(axis):
    for seed in range(6):
        for kind in ("ellipsoid", "lobed"):
            mask = make_phantom((32, 32, 32), seed=seed, organ=kind).labels
            assert painted_slices(mask, axis).organ_voxels == mask.sum()


def test_a_bad_axis_is_refused():
    with pytest.raises(AnnotationError, match="axis must be one of 0…1"):
        painted_slices(np.ones((8, 8), np.uint8), 2)


def test_annotated_axis_is_the_one_with_the_fewest_labelled_slices(organ):
    labels = painted_slices(paint(organ, [12, 20], axis=2), 2).labels
    assert annotated_axis(labels) == 2
    assert annotated_axis(organ) is None  # dense


def test_annotated_slices_are_those_holding_organ_along_the_annotated_axis(organ):
    labels = painted_slices(paint(organ, [12, 20], axis=2), 2).labels
    labels[:, :, 20][labels[:, :, 20] == 1] = 0  # slice 20 labelled, but all background
    axis, slices = annotated_slices(labels)
    assert axis == 2 and slices.tolist() == [12]
    assert annotated_slices(organ) is None  # dense
    assert annotated_slices(np.full(organ.shape, 255, np.uint8)) is None  # nothing labelled


def test_several_slices_fit_the_dense_prior_closely(organ):
    dense = fit_to_mask(organ)
    sparse = fit_to_slices(painted_slices(paint(organ, evenly_spaced_slices(organ, 3)), 0)
                           .labels, 0)
    voxel = 2.0 / 31  # normalised units per voxel
    assert np.abs(sparse.mean.numpy() - dense.mean.numpy()).max() < voxel
    np.testing.assert_allclose(np.sqrt(np.linalg.eigvalsh(sparse.covariance.numpy())),
                               np.sqrt(np.linalg.eigvalsh(dense.covariance.numpy())), rtol=0.1)


def test_every_slice_painted_gives_the_dense_fit(organ):
    every = painted_slices(organ, 0).labels
    dense, sparse = fit_to_mask(organ), fit_to_slices(every, 0)
    np.testing.assert_allclose(sparse.mean.numpy(), dense.mean.numpy(), atol=1e-6)
    np.testing.assert_allclose(sparse.covariance.numpy(), dense.covariance.numpy(), atol=0.01)


def _spheroid(depth: float, width: float, centre: float = 20.0, shape=(40, 32, 32)):
    """A bright solid spheroid (radius ``depth`` voxels along axis 0, ``width`` in-plane) in
    Gaussian noise, and its mask."""
    zz, yy, xx = np.mgrid[: shape[0], : shape[1], : shape[2]].astype(np.float64)
    mask = ((zz - centre) / depth) ** 2 + ((yy - 16) ** 2 + (xx - 16) ** 2) / width**2 <= 1
    image = mask + np.random.default_rng(0).normal(0.0, 0.2, shape)
    return image.astype(np.float32), mask.astype(np.uint8)


def _through_plane(prior, shape) -> tuple[float, float]:
    """(centre, radius) of ``prior`` along axis 0, in voxels."""
    half = (shape[0] - 1) / 2
    return (prior.mean[0].item() * half + half, prior.covariance[0, 0].item() ** 0.5 * half)


def test_one_slice_reads_the_organs_depth_off_the_image():
    image, mask = _spheroid(depth=12.0, width=7.0)  # twice as deep as wide
    labels = painted_slices(paint(mask, (20,)), 0).labels
    centre, radius = _through_plane(fit_to_slices(labels, 0, image=image), mask.shape)
    dense = _through_plane(fit_to_mask(mask), mask.shape)
    assert radius == pytest.approx(dense[1], rel=0.1) and centre == pytest.approx(20.0, abs=0.5)
    # without the image the organ is taken to be as deep as it is wide
    assert _through_plane(fit_to_slices(labels, 0), mask.shape)[1] == pytest.approx(7.0, rel=0.1)


def test_several_slices_are_deepened_to_the_image_never_below_the_slabs():
    image, mask = _spheroid(depth=12.0, width=7.0)
    labels = painted_slices(paint(mask, evenly_spaced_slices(mask, 3)), 0).labels
    slabs, deepened = fit_to_slices(labels, 0), fit_to_slices(labels, 0, image=image)
    dense = _through_plane(fit_to_mask(mask), mask.shape)[1]
    slab_radius = _through_plane(slabs, mask.shape)[1]
    assert slab_radius < 0.95 * dense  # the slabs stop short of the tips
    assert _through_plane(deepened, mask.shape)[1] == pytest.approx(dense, rel=0.05)
    np.testing.assert_allclose(deepened.mean.numpy(), slabs.mean.numpy())  # centre kept
    np.testing.assert_allclose(deepened.covariance.numpy()[1:, 1:],
                               slabs.covariance.numpy()[1:, 1:])  # in-plane kept
    # an image that shows the organ on the painted slices only: no deeper than one slice
    shallow = np.where(labels == 1, 1.0, 0.0).astype(np.float32)
    np.testing.assert_allclose(fit_to_slices(labels, 0, image=shallow).covariance.numpy(),
                               slabs.covariance.numpy())


def test_the_depth_off_the_image_is_bounded_and_follows_an_off_centre_slice():
    image, mask = _spheroid(depth=12.0, width=7.0)
    labels = painted_slices(paint(mask, (14,)), 0).labels  # 6 voxels above the centre
    centre, radius = _through_plane(fit_to_slices(labels, 0, image=image), mask.shape)
    assert 14.0 < centre <= 14.0 + radius / 2 + 1e-6  # towards the organ, at most r / 2
    column = image.copy()
    column[:, 12:20, 12:20] = 1.0  # a bright tube through the section, as deep as the volume
    labels = painted_slices(paint(mask, (20,)), 0).labels
    inplane = _through_plane(fit_to_slices(labels, 0), mask.shape)[1]
    deep = _through_plane(fit_to_slices(labels, 0, image=column), mask.shape)[1]
    assert deep == pytest.approx(DEPTH_RANGE[1] * inplane, rel=1e-6)


def test_an_image_that_does_not_show_the_organ_leaves_the_isotropic_depth():
    _, mask = _spheroid(depth=12.0, width=7.0)
    labels = painted_slices(paint(mask, (20,)), 0).labels
    noise = np.random.default_rng(1).normal(size=mask.shape).astype(np.float32)
    with_noise, without = fit_to_slices(labels, 0, image=noise), fit_to_slices(labels, 0)
    np.testing.assert_allclose(with_noise.covariance.numpy(), without.covariance.numpy())
    np.testing.assert_allclose(with_noise.mean.numpy(), without.mean.numpy())
    with pytest.raises(ValueError, match="differ in shape"):
        fit_to_slices(labels, 0, image=noise[:-1])


def test_one_slice_takes_the_through_plane_radius_in_mm():
    disc = np.zeros((20, 40, 40), np.uint8)
    yy, xx = np.mgrid[:40, :40]
    disc[10] = (yy - 20) ** 2 + (xx - 20) ** 2 <= 8**2
    prior = fit_to_slices(disc, 0, spacing=(2.0, 1.0, 1.0))
    to_voxels = (np.asarray(disc.shape) - 1) / 2
    radii = np.sqrt(np.diag(prior.covariance.numpy())) * to_voxels
    assert radii[1] == pytest.approx(8.0, rel=0.05) and radii[2] == pytest.approx(8.0, rel=0.05)
    assert radii[0] == pytest.approx(radii[1] / 2.0, rel=1e-6)  # 8 mm deep at 2 mm per voxel
    assert prior.mean.numpy()[0] * to_voxels[0] + to_voxels[0] == pytest.approx(10.0)


def test_the_pose_mask_targets_are_the_organ_seen_in_the_image_off_the_slices():
    image, mask = _spheroid(depth=12.0, width=7.0)
    labels = painted_slices(paint(mask, (20,)), 0).labels
    targets = image_mask_targets(labels, image)
    known = labels != 255
    np.testing.assert_array_equal(targets[known], labels[known])  # the painting wins
    off = ~known
    # off the slice: the organ's far sections are taught as organ, the dark voxels background
    assert (targets[off] == 1).sum() > 0.9 * mask[off].sum()
    assert np.mean(mask[off][targets[off] == 1]) > 0.97
    assert np.mean(mask[off][targets[off] == 0] == 0) > 0.99
    assert not targets[:2].any()  # the ends of the volume, beyond the organ: background
    assert targets[10, 16, 16] == 1 and labels[10, 16, 16] == 255  # near the tip, not painted
    # an organ-like structure off the painted organ's footprint is neither organ nor background
    other = image.copy()
    other[30:36, 0:5, 0:5] = 1.0
    away = image_mask_targets(labels, other)
    assert (away[31:35, 0:4, 0:4] == 255).all()  # its smoothed rim may read as background
    np.testing.assert_array_equal(away[:, 8:24, 8:24], targets[:, 8:24, 8:24])


def test_the_segmentation_targets_leave_the_painting_and_a_margin_round_the_organ_out():
    image, mask = _spheroid(depth=12.0, width=7.0)
    labels = painted_slices(paint(mask, (20,)), 0).labels
    pose = image_mask_targets(labels, image)
    targets = image_segmentation_targets(pose, labels)
    assert (targets[labels != 255] == 255).all()  # the painted slice has its own loss term
    off = labels == 255
    np.testing.assert_array_equal(targets[off] == 1, pose[off] == 1)  # the same organ
    # background only beyond the margin: every 0 is more than 2 voxels from the organ
    organ = pose == 1
    near = ndimage.binary_dilation(organ, iterations=2)
    assert ((pose == 0) & near & off).any()  # there was background near the organ ...
    assert not (targets[near] == 0).any()  # ... left unlabelled
    assert ((targets == 0) == ((pose == 0) & ~near & off)).all()
    hollow = pose.copy()
    hollow[20:22, 15:17, 15:17] = 0  # a pocket inside the organ seen in the image
    assert (image_segmentation_targets(hollow, labels, margin=0)[21, 15:17, 15:17] == 255).all()
    with pytest.raises(ValueError, match="margin must be a whole number"):
        image_segmentation_targets(pose, labels, margin=-1)
    with pytest.raises(ValueError, match="differ in shape"):
        image_segmentation_targets(pose[:-1], labels)


def test_no_pose_mask_targets_for_dense_labels_or_an_image_that_does_not_show_the_organ():
    image, mask = _spheroid(depth=12.0, width=7.0)
    assert image_mask_targets(mask, image) is None  # dense: the labels already say it all
    labels = painted_slices(paint(mask, (20,)), 0).labels
    noise = np.random.default_rng(1).normal(size=mask.shape).astype(np.float32)
    assert image_mask_targets(labels, noise) is None
    with pytest.raises(ValueError, match="differ in shape"):
        image_mask_targets(labels, image[:-1])
