"""NIfTI reading/writing (axis order, affines, exact round trips, errors) and checkpoints."""

from __future__ import annotations

import gzip
import os

import nibabel as nib
import numpy as np
import pytest
import torch

from napari_difftt.core import io
from napari_difftt.core.io import (
    CheckpointError,
    Volume,
    VolumeError,
    display_transform,
    load_checkpoint,
    read_nifti,
    save_checkpoint,
    write_nifti,
)

SPACING_IJK = (0.7, 0.8, 2.5)  # mm along NIfTI i, j, k


def _rotation(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]) @ np.array(
        [[1.0, 0.0, 0.0], [0.0, np.cos(0.3), -np.sin(0.3)], [0.0, np.sin(0.3), np.cos(0.3)]]
    )


def _affine(kind: str) -> np.ndarray:
    affine = np.eye(4)
    signs = {"ras": (1, 1, 1), "lps": (-1, -1, 1), "oblique": (1, 1, 1)}[kind]
    linear = np.diag(np.multiply(signs, SPACING_IJK))
    if kind == "oblique":
        linear = _rotation(0.4) @ linear
    affine[:3, :3] = linear
    affine[:3, 3] = (-12.5, 30.25, 7.0)
    return affine


def _write_raw(path, data, affine, slope=None):
    """Write with nibabel directly, with distinct qform/sform codes and a description."""
    image = nib.Nifti1Image(data, affine)
    image.header.set_qform(affine, code=1)
    image.header.set_sform(affine, code=2)
    image.header["descrip"] = b"napari-difftt test"
    image.header.set_xyzt_units("mm", "sec")
    if slope is not None:
        image.header.set_slope_inter(*slope)
    nib.save(image, path)
    return path


def _raw_data(shape=(5, 4, 3)) -> np.ndarray:
    return np.arange(np.prod(shape), dtype=np.int16).reshape(shape)


@pytest.mark.parametrize("kind", ["ras", "lps", "oblique"])
def test_read_transposes_and_affine_maps_our_index(tmp_path, kind):
    data = _raw_data()
    path = _write_raw(tmp_path / f"{kind}.nii.gz", data, _affine(kind))
    volume = read_nifti(path)
    assert volume.array.shape == (3, 4, 5)
    np.testing.assert_array_equal(volume.array, data.T)
    assert volume.path == path
    for z, y, x in [(0, 0, 0), (2, 1, 4), (1, 3, 2)]:
        assert volume.array[z, y, x] == data[x, y, z]
        expected = nib.load(path).affine @ [x, y, z, 1]  # float32 sform of _affine(kind)
        np.testing.assert_allclose(volume.affine @ [z, y, x, 1], expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(volume.spacing, SPACING_IJK[::-1], rtol=1e-6)  # float32 sform
    assert volume.is_oblique == (kind == "oblique")


@pytest.mark.parametrize("kind", ["ras", "lps", "oblique"])
@pytest.mark.parametrize("labels", [False, True])
def test_round_trip_restores_affine_and_header_exactly(tmp_path, kind, labels):
    data = _raw_data()
    original = _write_raw(tmp_path / "in.nii.gz", data, _affine(kind))
    volume = read_nifti(original)
    out = write_nifti(tmp_path / "out.nii.gz", volume.array, like=volume, labels=labels)
    before, after = nib.load(original), nib.load(out)
    np.testing.assert_array_equal(after.affine, before.affine)
    np.testing.assert_array_equal(np.asanyarray(after.dataobj), data)
    keys = ["qform_code", "sform_code", "pixdim", "quatern_b", "quatern_c", "quatern_d",
            "qoffset_x", "qoffset_y", "qoffset_z", "srow_x", "srow_y", "srow_z", "descrip",
            "xyzt_units", "dim"]  # fmt: skip
    for key in keys:
        np.testing.assert_array_equal(after.header[key], before.header[key], err_msg=key)
    expected = np.uint8 if labels else np.float32
    assert after.get_data_dtype() == expected
    again = read_nifti(out)
    np.testing.assert_array_equal(again.affine, volume.affine)
    np.testing.assert_array_equal(again.array, volume.array)


def test_label_dtypes_and_scaling_reset(tmp_path):
    # The source image is stored with scaling; labels written "like" it must not inherit it.
    original = _write_raw(tmp_path / "scaled.nii", _raw_data(), _affine("ras"), slope=(2.0, 10.0))
    volume = read_nifti(original)
    assert volume.array.max() == 2 * 59 + 10  # scaling applied on read
    cases = [(255, np.uint8), (300, np.int16), (-1, np.int16), (70_000, np.int32)]
    for i, (value, dtype) in enumerate(cases):
        labels = np.zeros(volume.array.shape, dtype=np.int64)
        labels[1, 2, 3] = value
        path = write_nifti(tmp_path / f"l{i}.nii.gz", labels, like=volume, labels=True)
        image = nib.load(path)
        assert image.get_data_dtype() == dtype
        assert image.header.get_slope_inter() == (None, None)
        assert image.header["cal_max"] == 0
        read = read_nifti(path).array
        assert read.dtype == dtype
        np.testing.assert_array_equal(read, labels)


def test_labels_must_be_whole_numbers(tmp_path):
    with pytest.raises(ValueError, match="whole numbers"):
        write_nifti(tmp_path / "x.nii.gz", np.full((3, 3), 0.5), labels=True)
    with pytest.raises(ValueError, match="beyond int32"):
        write_nifti(tmp_path / "x.nii.gz", np.full((3, 3), 2**40), labels=True)


def test_images_are_float32_and_affine_argument(tmp_path):
    affine = np.diag([3.0, 2.0, 0.5, 1.0])  # our (z, y, x) → world
    affine[:3, 3] = (1.0, 2.0, 3.0)
    array = np.random.default_rng(0).normal(size=(2, 3, 4))
    path = write_nifti(tmp_path / "img.nii", array, affine=affine)
    assert nib.load(path).get_data_dtype() == np.float32
    volume = read_nifti(path)
    np.testing.assert_allclose(volume.array, array.astype(np.float32))
    np.testing.assert_array_equal(volume.affine, affine)
    assert volume.spacing == (3.0, 2.0, 0.5)


def test_default_affine_is_identity_in_nifti_order(tmp_path):
    path = write_nifti(tmp_path / "plain.nii.gz", np.zeros((2, 3, 4)))
    assert nib.load(path).shape == (4, 3, 2)
    np.testing.assert_array_equal(nib.load(path).affine, np.eye(4))
    assert read_nifti(path).spacing == (1.0, 1.0, 1.0)


@pytest.mark.parametrize("stored", [(5, 4), (5, 4, 1), (5, 4, 1, 1)])
def test_two_dimensional_files(tmp_path, stored):
    data = _raw_data(stored)
    path = _write_raw(tmp_path / "flat.nii.gz", data, _affine("ras"))
    volume = read_nifti(path)
    assert volume.array.shape == (4, 5)
    np.testing.assert_array_equal(volume.array, data.reshape(5, 4).T)
    np.testing.assert_allclose(volume.spacing, (0.8, 0.7))
    np.testing.assert_allclose(volume.affine @ [0, 3, 2, 1], _affine("ras") @ [2, 3, 0, 1])
    out = write_nifti(tmp_path / "out.nii.gz", volume.array, like=volume, labels=True)
    assert nib.load(out).shape == stored
    np.testing.assert_array_equal(nib.load(out).affine, nib.load(path).affine)


def test_header_of_another_shape_never_scrambles_data(tmp_path):
    other = read_nifti(_write_raw(tmp_path / "other.nii", _raw_data((3, 4, 5)), np.eye(4)))
    array = np.arange(60.0).reshape(3, 4, 5)  # same voxel count as `other`, another layout
    like = Volume(array, other.affine, other.header)
    out = write_nifti(tmp_path / "out.nii", array, like=like)
    np.testing.assert_array_equal(read_nifti(out).array, array)


def test_singleton_fourth_axis_is_squeezed(tmp_path):
    path = _write_raw(tmp_path / "t1.nii.gz", _raw_data((5, 4, 3, 1)), _affine("ras"))
    assert read_nifti(path).array.shape == (3, 4, 5)


@pytest.mark.parametrize(
    ("shape", "dtype"),
    [((5, 4, 3, 2), np.float32), ((5, 4, 3, 1, 3), np.float32), ((6,), np.int16)],
)
def test_not_a_scalar_volume(tmp_path, shape, dtype):
    path = tmp_path / "bad.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros(shape, dtype=dtype), np.eye(4)), path)
    with pytest.raises(VolumeError, match=rf"bad\.nii\.gz has shape \({shape[0]},"):
        read_nifti(path)


def test_rgb_volume_is_refused(tmp_path):
    rgb = np.zeros((4, 3, 2), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    path = tmp_path / "rgb.nii"
    nib.save(nib.Nifti1Image(rgb, np.eye(4)), path)
    with pytest.raises(VolumeError, match=r"rgb\.nii holds .* \(RGB or vector data\)"):
        read_nifti(path)


def test_nan_voxels_are_counted(tmp_path):
    data = np.zeros((4, 3, 2), dtype=np.float32)
    data[0, 0, 0] = data[1, 2, 1] = np.nan
    data[3, 0, 1] = np.inf
    path = _write_raw(tmp_path / "nan.nii.gz", data, np.eye(4))
    with pytest.raises(VolumeError, match=r"nan\.nii\.gz contains 3 NaN/Inf voxel\(s\) out of 24"):
        read_nifti(path)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"NIfTI file not found: .*missing\.nii\.gz"):
        read_nifti(tmp_path / "missing.nii.gz")


def test_truncated_and_corrupt_files(tmp_path):
    path = _write_raw(tmp_path / "good.nii.gz", np.random.default_rng(1).normal(size=(20, 20, 20)),
                      np.eye(4))  # fmt: skip
    blob = path.read_bytes()
    truncated = tmp_path / "truncated.nii.gz"
    truncated.write_bytes(blob[: len(blob) // 2])
    corrupt = tmp_path / "corrupt.nii.gz"
    corrupt.write_bytes(blob[:40] + bytes(b ^ 0xFF for b in blob[40:200]) + blob[200:])
    short = tmp_path / "short.nii"
    short.write_bytes(gzip.decompress(blob)[:1000])
    text = tmp_path / "text.nii"
    text.write_text("not an image")
    for bad in (truncated, corrupt, short, text):
        with pytest.raises(VolumeError, match=f"cannot read .*{bad.name}"):
            read_nifti(bad)


def test_write_refuses_to_overwrite(tmp_path):
    path = write_nifti(tmp_path / "a.nii.gz", np.zeros((2, 2, 2)))
    with pytest.raises(FileExistsError, match=r"a\.nii\.gz exists; pass overwrite=True"):
        write_nifti(path, np.ones((2, 2, 2)))
    assert read_nifti(path).array.max() == 0
    write_nifti(path, np.ones((2, 2, 2)), overwrite=True)
    assert read_nifti(path).array.min() == 1


def test_write_argument_errors(tmp_path):
    like = Volume(np.zeros((2, 3, 4)), np.eye(4))
    with pytest.raises(ValueError, match=r"must end in \.nii or \.nii\.gz"):
        write_nifti(tmp_path / "a.png", np.zeros((2, 2)))
    with pytest.raises(ValueError, match="must be 2D or 3D"):
        write_nifti(tmp_path / "a.nii", np.zeros(4))
    with pytest.raises(ValueError, match=r"does not match like \(2, 3, 4\)"):
        write_nifti(tmp_path / "a.nii", np.zeros((2, 3, 3)), like=like)
    with pytest.raises(ValueError, match=r"finite \(4, 4\) matrix"):
        write_nifti(tmp_path / "a.nii", np.zeros((2, 3, 4)), affine=np.eye(3))


def test_written_files_have_ordinary_permissions(tmp_path):
    reference = tmp_path / "reference"
    reference.write_bytes(b"")
    nifti = write_nifti(tmp_path / "new" / "a.nii.gz", np.zeros((2, 2)))  # folder created
    checkpoint = save_checkpoint(tmp_path / "a.pt", {})
    for path in (nifti, checkpoint):
        assert path.stat().st_mode == reference.stat().st_mode


def test_interrupted_write_leaves_old_file(tmp_path, monkeypatch):
    path = write_nifti(tmp_path / "keep.nii.gz", np.zeros((2, 2, 2)))
    blob = path.read_bytes()

    def crash(image, filename):
        with open(filename, "wb") as handle:
            handle.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(io.nib, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        write_nifti(path, np.ones((2, 2, 2)), overwrite=True)
    assert path.read_bytes() == blob
    assert os.listdir(tmp_path) == ["keep.nii.gz"]


def test_display_transform_axis_aligned():
    for signs in [(1, 1, 1), (-1, -1, 1)]:
        affine = np.eye(4)
        affine[:3, :3] = np.diag(np.multiply(signs, SPACING_IJK))
        affine[:3, 3] = (-12.5, 30.25, 7.0)
        volume = Volume(np.zeros((3, 4, 5)), affine @ io._REVERSE)
        scale, translate = display_transform(volume)
        assert scale == pytest.approx(np.multiply(signs, SPACING_IJK)[::-1])
        assert translate == (7.0, 30.25, -12.5)
        # napari's world point (z, y, x) is the NIfTI world point, reversed.
        index = np.array([2, 1, 3])
        world = volume.affine @ [*index, 1]
        np.testing.assert_allclose(np.multiply(scale, index) + translate, world[2::-1])


def test_display_transform_oblique_and_2d():
    affine = np.eye(4)
    affine[:3, :3] = _rotation(0.4) @ np.diag(SPACING_IJK)
    oblique = Volume(np.zeros((3, 4, 5)), affine @ io._REVERSE)
    scale, translate = display_transform(oblique)
    assert translate == (0.0, 0.0, 0.0)
    assert oblique.is_oblique
    assert scale == pytest.approx(SPACING_IJK[::-1])
    flat = Volume(np.zeros((4, 5)), np.diag([*SPACING_IJK, 1.0]) @ io._REVERSE)
    assert display_transform(flat) == (pytest.approx((0.8, 0.7)), (0.0, 0.0))


# ---- checkpoints ------------------------------------------------------------------------


class Payload:
    """An arbitrary object; unpickling it would run code (it must never be loaded)."""

    ran = False

    def __reduce__(self):
        return (_mark_ran, ())


def _mark_ran():
    Payload.ran = True
    return "ran"


def _checkpoint(**extra):
    return {
        "model": {"kind": "bch", "pieces": 4},
        "state_dict": {"w": torch.arange(6.0).reshape(2, 3)},
        "spacing": [1.0, 0.5, 0.5],
        "training": {"steps": 3, "loss": [0.5, 0.25], "best": None},
        "versions": {"torch": str(torch.__version__)},
        **extra,
    }


def test_checkpoint_round_trip(tmp_path):
    path = save_checkpoint(tmp_path / "sub" / "model.pt", _checkpoint())
    loaded = load_checkpoint(path)
    assert loaded["format"] == "napari-difftt" and loaded["version"] == 1
    torch.testing.assert_close(loaded["state_dict"]["w"], torch.arange(6.0).reshape(2, 3))
    assert loaded["training"] == {"steps": 3, "loss": [0.5, 0.25], "best": None}
    assert os.listdir(path.parent) == ["model.pt"]


def test_save_rejects_non_plain_values(tmp_path):
    with pytest.raises(TypeError, match=r"payload\['training'\]\['mask'\] is a numpy.ndarray"):
        save_checkpoint(tmp_path / "m.pt", _checkpoint(training={"mask": np.zeros(2)}))
    with pytest.raises(TypeError, match="must be a dict"):
        save_checkpoint(tmp_path / "m.pt", [1, 2])
    with pytest.raises(ValueError, match="format must be 'napari-difftt'"):
        save_checkpoint(tmp_path / "m.pt", _checkpoint(format="other"))
    assert not (tmp_path / "m.pt").exists()


def test_pickled_object_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({**_checkpoint(), "format": "napari-difftt", "version": 1, "x": Payload()}, path)
    with pytest.raises(CheckpointError, match=r"evil\.pt refers to \S*_mark_ran, .* refused"):
        load_checkpoint(path)
    assert not Payload.ran


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ([1, 2, 3], "not a napari-difftt checkpoint \\(holds a list\\)"),
        ({"format": "other", "version": 1}, "format='other'"),
        ({"version": 1}, "format=None"),
        ({"format": "napari-difftt", "version": 2}, "version 2, newer than .* supports \\(1\\)"),
        ({"format": "napari-difftt", "version": "1"}, "invalid checkpoint version '1'"),
    ],
)
def test_wrong_checkpoint_contents(tmp_path, content, message):
    path = tmp_path / "ckpt.pt"
    torch.save(content, path)
    with pytest.raises(CheckpointError, match=rf"ckpt\.pt .*{message}"):
        load_checkpoint(path)


def test_corrupt_checkpoints(tmp_path):
    good = save_checkpoint(tmp_path / "good.pt", _checkpoint())
    blob = good.read_bytes()
    for name, data in [("half.pt", blob[: len(blob) // 2]), ("junk.pt", b"\x00junk" * 50),
                       ("empty.pt", b"")]:  # fmt: skip
        (tmp_path / name).write_bytes(data)
        with pytest.raises(CheckpointError, match=rf"{name} is corrupt or truncated"):
            load_checkpoint(tmp_path / name)
    with pytest.raises(
        TypeError, match=r"payload\['versions'\]\['torch'\] is a torch.torch_version"
    ):
        save_checkpoint(tmp_path / "v.pt", _checkpoint(versions={"torch": torch.__version__}))
    with pytest.raises(FileNotFoundError, match=r"checkpoint not found: .*none\.pt"):
        load_checkpoint(tmp_path / "none.pt")


def test_interrupted_checkpoint_save_keeps_old_file(tmp_path, monkeypatch):
    path = save_checkpoint(tmp_path / "last.pt", _checkpoint())

    def crash(self, data):
        with open(self, "wb") as handle:
            handle.write(data[:16])
        raise KeyboardInterrupt

    monkeypatch.setattr(io.Path, "write_bytes", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, _checkpoint(training={"steps": 99}))
    assert load_checkpoint(path)["training"]["steps"] == 3
    assert os.listdir(tmp_path) == ["last.pt"]


@pytest.mark.parametrize(
    ("name", "stem"),
    [("case_01.nii.gz", "case_01"), ("CASE.NII.GZ", "CASE"), ("a.b.nii", "a.b"),
     ("notes.txt", "notes"), ("x.gz", "x")],
)
def test_nifti_stem_drops_the_nifti_suffix_in_any_case(name, stem):
    from napari_difftt.core.paths import is_nifti, nifti_stem

    assert nifti_stem(f"/some/folder/{name}") == stem
    assert is_nifti(name) == name.lower().endswith((".nii", ".nii.gz"))
