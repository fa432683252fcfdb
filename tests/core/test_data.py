"""Normalisation, phantoms, sparse labels, patches and NIfTI folder data sets."""

from __future__ import annotations

import time
from dataclasses import replace

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from napari_difftt.core.data import (
    Patch,
    Sample,
    array_sample,
    load_nifti_folder,
    make_phantom,
    mirrored,
    normalise_intensity,
    parse_size,
    sample_patch,
    sparse_annotation,
    split_validation,
    write_phantom_dataset,
)
from napari_difftt.core.io import read_nifti, write_nifti

# ---- normalise_intensity ----------------------------------------------------------------


def test_normalise_maps_percentiles_to_unit_interval():
    array = np.arange(101, dtype=np.float64)  # percentile p is exactly p
    out = normalise_intensity(array, lower=10.0, upper=60.0)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, np.clip((array - 10) / 50, 0, 1), atol=1e-6)
    default = normalise_intensity(array)
    assert default[1] == 0.0 and default[99] == 1.0 and default[50] == pytest.approx(49 / 98)


def test_normalise_constant_and_errors():
    np.testing.assert_array_equal(normalise_intensity(np.full((3, 4), 7.0)), np.zeros((3, 4)))
    bad = np.zeros((4, 4))
    bad[1, 1] = bad[2, 2] = np.nan
    with pytest.raises(ValueError, match=r"contains 2 NaN/Inf voxel"):
        normalise_intensity(bad)
    with pytest.raises(ValueError, match="lower < upper"):
        normalise_intensity(np.zeros(3), lower=50, upper=50)
    with pytest.raises(ValueError, match="empty"):
        normalise_intensity(np.zeros(0))


# ---- make_phantom -----------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(64, 64, 64), (24, 20, 28), (48, 40)])
@pytest.mark.parametrize("seed", [0, 1, 7])
def test_phantom_has_one_smooth_hole_free_organ(shape, seed):
    phantom = make_phantom(shape, seed=seed)
    image, labels = phantom.image, phantom.labels
    assert image.shape == labels.shape == shape
    assert image.dtype == np.float32 and labels.dtype == np.uint8
    assert set(np.unique(labels)) == {0, 1}
    assert ndimage.label(labels)[1] == 1  # one face-connected component
    assert ndimage.label(1 - labels)[1] == 1  # background connected too: no holes/cavities
    np.testing.assert_array_equal(ndimage.binary_fill_holes(labels), labels)
    assert 0.01 < labels.mean() < 0.25
    border = np.ones(shape, bool)
    border[tuple(slice(1, -1) for _ in shape)] = False
    assert not labels[border].any()  # the organ lies inside the volume
    # learnable: the organ is clearly brighter than the background on average
    assert image[labels == 1].mean() - image[labels == 0].mean() > 0.25
    # smooth: opening with a small ball barely changes the mask (no spikes or one-voxel threads)
    opened = ndimage.binary_opening(labels, ndimage.generate_binary_structure(len(shape), 1))
    assert (opened != labels).sum() < 0.05 * labels.sum()


def test_phantom_is_seeded_and_varied():
    a, b = make_phantom((24, 24, 24), seed=3), make_phantom((24, 24, 24), seed=3)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.labels, b.labels)
    c = make_phantom((24, 24, 24), seed=4)
    assert (a.labels != c.labels).mean() > 0.01
    centres = [ndimage.center_of_mass(make_phantom((24, 24, 24), seed=s).labels) for s in range(6)]
    assert np.ptp(np.asarray(centres), axis=0).min() > 1.0  # position varies along every axis


def test_phantom_has_noise_bias_and_texture():
    phantom = make_phantom((32, 32, 32), seed=2)
    background = phantom.image[phantom.labels == 0]
    assert background.std() > 0.04  # texture + bias + noise, not a flat background
    # texture and bias vary the local mean level, far beyond what white noise alone would do
    local_mean = ndimage.gaussian_filter(phantom.image, 3.0)
    far_from_organ = ndimage.distance_transform_edt(phantom.labels == 0) > 8
    assert local_mean[far_from_organ].std() > 0.02


def test_phantom_spacing_and_speed():
    assert make_phantom((16, 16, 16)).spacing == (1.0, 1.0, 1.0)
    assert make_phantom((16, 16), spacing=(2, 0.5)).spacing == (2.0, 0.5)
    make_phantom((64, 64, 64), seed=0)  # warm up
    start = time.process_time()  # CPU time: robust to other jobs sharing the cores
    make_phantom((64, 64, 64), seed=1)
    assert time.process_time() - start < 0.5


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"shape": (64,)}, "shape must be 2 or 3 ints"),
        ({"shape": (4, 64, 64)}, "shape must be 2 or 3 ints >= 8"),
        ({"shape": (16, 16), "spacing": (1.0,)}, "spacing must be 2 positive"),
        ({"shape": (16, 16), "spacing": (1.0, -1.0)}, "spacing must be 2 positive"),
    ],
)
def test_phantom_argument_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_phantom(**kwargs)


# ---- sparse_annotation ------------------------------------------------------------------


def test_sparse_annotation_keeps_only_given_axial_slices():
    labels = np.random.default_rng(0).integers(0, 2, size=(5, 4, 3)).astype(np.uint8)
    sparse = sparse_annotation(labels, 2)
    np.testing.assert_array_equal(sparse[2], labels[2])
    assert (np.delete(sparse, 2, axis=0) == 255).all()
    both = sparse_annotation(labels, [0, -1], ignore_value=9)
    np.testing.assert_array_equal(both[[0, 4]], labels[[0, 4]])
    assert (both[1:4] == 9).all() and both.dtype == np.uint8
    with pytest.raises(ValueError, match=r"slice 5 is outside 0…4"):
        sparse_annotation(labels, 5)
    with pytest.raises(ValueError, match=r"ignore_value must be an int in 2\.\.255"):
        sparse_annotation(labels, 0, ignore_value=1)


# ---- sample_patch -----------------------------------------------------------------------


def _coded_sample(shape) -> Sample:
    """Voxel values encode their index, so a patch shows exactly where it was cut."""
    image = np.arange(np.prod(shape), dtype=np.float32).reshape(shape) + 1
    labels = (np.arange(np.prod(shape)).reshape(shape) % 2).astype(np.uint8)
    return Sample(image, labels, (1.0,) * len(shape), "coded")


def test_patch_is_the_crop_at_its_offset():
    sample = _coded_sample((9, 7, 8))
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(30):
        patch = sample_patch(sample, (4, 7, 3), rng)
        assert patch.image.shape == patch.labels.shape == (1, 4, 7, 3)
        assert patch.full_shape == (9, 7, 8)
        z, y, x = patch.offset
        assert 0 <= z <= 5 and y == 0 and 0 <= x <= 5
        window = np.s_[z : z + 4, y : y + 7, x : x + 3]
        np.testing.assert_array_equal(patch.image[0], sample.image[window])
        np.testing.assert_array_equal(patch.labels[0], sample.labels[window])
        seen.add(patch.offset)
    assert len(seen) > 10  # offsets are random
    again = [sample_patch(sample, 4, np.random.default_rng(5)).offset for _ in range(2)]
    assert again[0] == again[1]


def test_patch_pads_small_volumes_with_zeros_and_ignore():
    sample = _coded_sample((3, 10))
    for seed in range(10):
        patch = sample_patch(sample, (6, 4), np.random.default_rng(seed), ignore_value=200)
        z, x = patch.offset
        assert -3 <= z <= 0 and 0 <= x <= 6
        inside = patch.image[0] > 0
        assert inside.sum() == 3 * 4
        assert (patch.labels[0][~inside] == 200).all() and (patch.image[0][~inside] == 0).all()
        # offset + local index is the volume index for every real voxel
        for local in zip(*np.nonzero(inside), strict=True):
            index = (local[0] + z, local[1] + x)
            assert patch.image[0][local] == sample.image[index]
            assert patch.labels[0][local] == sample.labels[index]


def _crop(volume: np.ndarray, offset, size, fill) -> np.ndarray:
    """The (1, *size) crop of ``volume`` at ``offset``, ``fill`` outside it."""
    out = np.full(size, fill, dtype=volume.dtype)
    source = tuple(slice(max(o, 0), min(o + p, n))
                   for o, p, n in zip(offset, size, volume.shape, strict=True))
    target = tuple(slice(s.start - o, s.stop - o) for s, o in zip(source, offset, strict=True))
    out[target] = volume[source]
    return out[None]


@pytest.mark.parametrize("shape", [(7, 6, 9), (3, 5, 9)])  # cropped; padded along axis 0
def test_mirrored_is_the_same_patch_of_the_mirrored_volume(shape):
    sample = _coded_sample(shape)
    # the pose mask's and the segmentation's targets travel with the labels: cropped and
    # flipped alike
    coded = np.arange(np.prod(shape)).reshape(shape)
    sample = replace(sample, mask_targets=(coded % 3).astype(np.uint8),
                     segmentation_targets=(coded % 5).astype(np.uint8))
    rng = np.random.default_rng(1)
    flips = set()
    combinations = [tuple(k for k in range(3) if bits >> k & 1) for bits in range(8)]
    for _ in range(40):
        patch = sample_patch(sample, (4, 5, 6), rng)
        out = mirrored(patch, rng)
        assert out.full_shape == patch.full_shape
        # the coded image's values are distinct: one set of flipped axes explains the patch
        (axes,) = [a for a in combinations if np.array_equal(
            out.image, _crop(np.flip(sample.image, a), out.offset, (4, 5, 6), 0.0))]
        np.testing.assert_array_equal(
            out.labels, _crop(np.flip(sample.labels, axes), out.offset, (4, 5, 6), 255))
        np.testing.assert_array_equal(
            out.mask_targets, _crop(np.flip(sample.mask_targets, axes), out.offset, (4, 5, 6), 255))
        np.testing.assert_array_equal(out.segmentation_targets, _crop(
            np.flip(sample.segmentation_targets, axes), out.offset, (4, 5, 6), 255))
        assert all(out.offset[k] == patch.offset[k] for k in range(3) if k not in axes)
        flips.add(axes)
    assert len(flips) == 8  # every combination of the three axes is drawn
    unlabelled = Patch(patch.image, None, patch.offset, patch.full_shape)
    assert all(mirrored(unlabelled, rng).labels is None for _ in range(4))
    with pytest.raises(ValueError, match="mask_targets shape"):
        sample_patch(replace(sample, mask_targets=sample.labels[:-1]), (4, 5, 6), rng)
    with pytest.raises(ValueError, match="segmentation_targets shape"):
        sample_patch(replace(sample, segmentation_targets=sample.labels[:-1]), (4, 5, 6), rng)


def test_patch_without_labels_and_errors():
    sample = Sample(np.zeros((5, 5), np.float32), None, (1.0, 1.0), "x")
    assert sample_patch(sample, 3, 0).labels is None
    with pytest.raises(ValueError, match="patch_size must be 2 positive ints for a 2D volume"):
        sample_patch(sample, (3, 3, 3), 0)
    bad = Sample(np.zeros((5, 5), np.float32), np.zeros((5, 4), np.uint8), (1.0, 1.0), "bad")
    with pytest.raises(ValueError, match=r"sample 'bad': image shape \(5, 5\) and labels"):
        sample_patch(bad, 3, 0)


# ---- NIfTI folders ----------------------------------------------------------------------


def test_phantom_dataset_layout_and_loading(tmp_path):
    root = write_phantom_dataset(tmp_path / "ds", n_train=2, n_test=1, shape=(16, 12, 10),
                                 seed=5, spacing=(2.0, 1.0, 0.5))  # fmt: skip
    for folder in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        assert (root / folder).is_dir()
    assert sorted(p.name for p in (root / "imagesTr").iterdir()) == [
        "phantom_000.nii.gz",
        "phantom_001.nii.gz",
    ]
    assert [p.name for p in (root / "labelsTs").iterdir()] == ["phantom_002.nii.gz"]
    assert nib.load(root / "labelsTr" / "phantom_000.nii.gz").get_data_dtype() == np.uint8
    samples = load_nifti_folder(root / "imagesTr", root / "labelsTr")
    assert [s.name for s in samples] == ["phantom_000", "phantom_001"]
    phantom = make_phantom((16, 12, 10), seed=6, spacing=(2.0, 1.0, 0.5))
    np.testing.assert_array_equal(samples[1].labels, phantom.labels)
    np.testing.assert_allclose(samples[1].image, normalise_intensity(phantom.image), atol=1e-6)
    assert samples[1].spacing == (2.0, 1.0, 0.5)
    assert samples[1].image.dtype == np.float32 and samples[1].labels.dtype == np.uint8
    np.testing.assert_array_equal(
        samples[1].affine, read_nifti(root / "imagesTr" / "phantom_001.nii.gz").affine
    )
    unlabelled = load_nifti_folder(root / "imagesTs")
    assert unlabelled[0].labels is None and unlabelled[0].name == "phantom_002"


def test_two_dimensional_dataset(tmp_path):
    root = write_phantom_dataset(tmp_path, n_train=1, n_test=0, shape=(20, 24))
    (sample,) = load_nifti_folder(root / "imagesTr", root / "labelsTr")
    assert sample.image.shape == (20, 24) and sample.spacing == (1.0, 1.0)
    assert not list((root / "imagesTs").iterdir())


def _pair(tmp_path, image_name, label_name, labels=None, label_affine=None, shape=(4, 5, 6)):
    images, label_dir = tmp_path / "images", tmp_path / "labels"
    images.mkdir(exist_ok=True)
    label_dir.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    write_nifti(images / image_name, rng.normal(size=shape))
    labels = rng.integers(0, 2, size=shape) if labels is None else labels
    write_nifti(label_dir / label_name, labels, affine=label_affine, labels=True)
    return images, label_dir


def test_nnunet_names_match(tmp_path):
    images, labels = _pair(tmp_path, "case7_0000.nii.gz", "case7.nii")
    (sample,) = load_nifti_folder(images, labels)
    assert sample.name == "case7"


def test_missing_label_names_the_files(tmp_path):
    images, labels = _pair(tmp_path, "a_0000.nii.gz", "b.nii.gz")
    with pytest.raises(
        FileNotFoundError, match=r"no label file for .*a_0000\.nii\.gz .*a\.nii\.gz"
    ):
        load_nifti_folder(images, labels)


def test_shape_mismatch_names_both_files(tmp_path):
    images, labels = _pair(tmp_path, "a.nii.gz", "a.nii.gz")
    write_nifti(labels / "a.nii.gz", np.zeros((4, 5, 7)), labels=True, overwrite=True)
    with pytest.raises(
        ValueError, match=r"image .*images/a\.nii\.gz has shape .* labels .*labels/a\.nii\.gz"
    ):
        load_nifti_folder(images, labels)


def test_affine_mismatch_names_both_files(tmp_path):
    images, labels = _pair(
        tmp_path, "a.nii.gz", "a.nii.gz", label_affine=np.diag([1.0, 1.0, 2.0, 1.0])
    )
    with pytest.raises(
        ValueError, match=r"images/a\.nii\.gz and labels .*labels/a\.nii\.gz have different affines"
    ):
        load_nifti_folder(images, labels)


def test_bad_label_values_are_listed(tmp_path):
    values = np.zeros((4, 5, 6), dtype=np.int16)
    values[0, 0, :3] = (2, 7, 255)
    images, labels = _pair(tmp_path, "a.nii.gz", "a.nii.gz", labels=values)
    with pytest.raises(
        ValueError,
        match=r"labels .*a\.nii\.gz hold values other than 0, 1 and 255 \(ignore\): 2, 7$",
    ):
        load_nifti_folder(images, labels)
    values[0, 0, :2] = (1, 1)
    write_nifti(labels / "a.nii.gz", values, labels=True, overwrite=True)
    (sample,) = load_nifti_folder(images, labels)
    assert sample.labels[0, 0, 2] == 255


def test_empty_and_missing_folders(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    with pytest.raises(ValueError, match=r"empty holds no \.nii or \.nii\.gz images"):
        load_nifti_folder(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match=r"images folder not found: .*nowhere"):
        load_nifti_folder(tmp_path / "nowhere")


def test_multichannel_is_refused(tmp_path):
    images, labels = _pair(tmp_path, "a_0000.nii.gz", "a.nii.gz")
    write_nifti(images / "a_0001.nii.gz", np.zeros((4, 5, 6)))
    with pytest.raises(ValueError, match=r"several images for case\(s\) a \(multi-channel"):
        load_nifti_folder(images, labels)


def test_resampling_to_isotropic_spacing(tmp_path):
    # A linear ramp along z resamples exactly (order 1); labels stay nearest-neighbour.
    shape = (5, 4, 9)
    affine = np.diag([3.0, 1.0, 0.5, 1.0])  # our (z, y, x) spacing 3, 1, 0.5 mm
    affine[:3, 3] = (10.0, 20.0, 30.0)
    ramp = np.broadcast_to(np.arange(5, dtype=float)[:, None, None] * 3.0, shape)
    labels = np.zeros(shape, np.uint8)
    labels[2:, :, 4:] = 1
    (tmp_path / "i").mkdir()
    (tmp_path / "l").mkdir()
    write_nifti(tmp_path / "i" / "r.nii.gz", ramp + np.arange(9) * 0.0, affine=affine)
    write_nifti(tmp_path / "l" / "r.nii.gz", labels, affine=affine, labels=True)
    (sample,) = load_nifti_folder(tmp_path / "i", tmp_path / "l", spacing=1.0)
    assert sample.image.shape == (13, 4, 5) and sample.labels.shape == (13, 4, 5)
    assert sample.spacing == (1.0, 1.0, 1.0)
    z_mm = np.arange(13.0)  # world z of each resampled slice relative to voxel 0
    resampled_ramp = np.broadcast_to(z_mm[:, None, None], (13, 4, 5))
    np.testing.assert_allclose(sample.image, normalise_intensity(resampled_ramp), atol=1e-5)
    expected = (np.round(z_mm / 3) >= 2)[:, None, None] & (np.arange(5) >= 2)[None, None, :]
    np.testing.assert_array_equal(sample.labels, np.broadcast_to(expected, (13, 4, 5)))
    # the affine still maps each resampled voxel to its world position
    np.testing.assert_allclose(sample.affine @ [12, 3, 4, 1], [10 + 12, 20 + 3, 30 + 4, 1])


def test_bad_spacing_argument(tmp_path):
    images, labels = _pair(tmp_path, "a.nii.gz", "a.nii.gz")
    with pytest.raises(ValueError, match="spacing must be a positive number of mm"):
        load_nifti_folder(images, labels, spacing=0.0)


def _named(*names: str) -> list[Sample]:
    return [Sample(np.zeros((4, 4), np.float32), None, (1.0, 1.0), name) for name in names]


def test_split_validation_holds_the_last_sample_out_or_validates_on_the_only_one():
    train, val = split_validation(_named("a", "b", "c"))
    assert [s.name for s in train] == ["a", "b"] and [s.name for s in val] == ["c"]
    train, val = split_validation(_named("a"))
    assert [s.name for s in train] == [s.name for s in val] == ["a"]
    with pytest.raises(ValueError, match="no training samples"):
        split_validation([])


def test_array_sample_copies_normalises_and_checks_like_the_folder_loader():
    image = np.arange(64, dtype=np.float64).reshape(4, 4, 4)
    labels = np.zeros((4, 4, 4), np.int64)
    labels[1:3, 1:3, 1:3], labels[0] = 1, 255
    sample = array_sample(image, labels, (2.0, 1.0, 1.0), "case")
    assert sample.image.dtype == np.float32 and sample.labels.dtype == np.uint8
    np.testing.assert_array_equal(sample.image, normalise_intensity(image))
    assert sample.spacing == (2.0, 1.0, 1.0) and sample.name == "case"
    labels[0, 0, 0] = 3
    with pytest.raises(ValueError, match=r"'case' hold values \[3\]; one structure"):
        array_sample(image, labels, (1.0, 1.0, 1.0), "case")
    with pytest.raises(ValueError, match="differ in shape"):
        array_sample(image, labels[:2], (1.0, 1.0, 1.0), "case")
    with pytest.raises(ValueError, match="spacing must be 3 positive numbers"):
        array_sample(image, np.zeros_like(labels), (1.0, 1.0), "case")


@pytest.mark.parametrize("text", ["64, 48, 32", "64x48x32", "64 48 32", " 64 × 48 × 32 "])
def test_parse_size_reads_commas_crosses_and_spaces(text):
    assert parse_size(text) == (64, 48, 32)


def test_parse_size_names_what_is_wrong():
    with pytest.raises(ValueError, match=r"patch size: '8, a' is not like"):
        parse_size("8, a", what="patch size")
    with pytest.raises(ValueError, match=r"'12' needs 2 or 3 axes of at least 1 voxel"):
        parse_size("12")
    with pytest.raises(ValueError, match=r"\(16, 16\) has 2 numbers but the images are 3D"):
        parse_size("16, 16", 3)
    assert parse_size("1x1") == (1, 1)
    with pytest.raises(ValueError, match="at least 2 voxel"):
        parse_size("1x1", minimum=2)


@pytest.mark.parametrize("shape", [(48, 48, 48), (96, 96)])
def test_lobed_phantoms_are_one_filled_non_convex_component(shape):
    from skimage.morphology import convex_hull_image

    solidities = []
    for seed in range(4):
        mask = make_phantom(shape, seed=seed, organ="lobed").labels.astype(bool)
        assert ndimage.label(mask)[1] == 1
        assert np.array_equal(ndimage.binary_fill_holes(mask), mask)
        assert not mask[0].any() and not mask[-1].any()  # well inside the volume
        solidities.append(mask.sum() / convex_hull_image(mask).sum())
    # lobes and dents: clearly less solid than an ellipsoid (solidity ≈ 1)
    assert np.mean(solidities) < 0.85


def test_make_phantom_refuses_an_unknown_organ():
    with pytest.raises(ValueError, match="organ must be one of"):
        make_phantom((16, 16, 16), organ="kidney")
