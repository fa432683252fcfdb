"""NIfTI reader/writer: layer geometry, exact round trips (RAS, LPS, anisotropic, oblique)."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from napari_difftt._reader import get_reader, is_label_like
from napari_difftt._writer import write_image, write_labels
from napari_difftt.layer_metadata import META_KEY, layer_affine
from napari_difftt.widgets._layers import derived_kwargs


def _oblique(angle_deg: float, spacing) -> np.ndarray:
    c, s = np.cos(np.radians(angle_deg)), np.sin(np.radians(angle_deg))
    rotation = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag(spacing)
    affine[:3, 3] = (-20.0, 7.5, 3.0)
    return affine


AFFINES = {
    "ras": np.array([[0.8, 0, 0, 10], [0, 0.8, 0, -5], [0, 0, 2.5, 2], [0, 0, 0, 1]]),
    "lps": np.diag([-0.7, -0.9, 3.0, 1.0]),
    "oblique": _oblique(30.0, (0.8, 1.2, 2.0)),
}


def _save(path, data, affine, code="scanner"):
    image = nib.Nifti1Image(data, affine)
    image.header.set_qform(affine, code=code)
    image.header.set_sform(affine, code=code)
    image.header["descrip"] = b"napari-difftt test"
    nib.save(image, path)
    return image


def test_reader_declines_other_files(tmp_path):
    assert get_reader(str(tmp_path / "volume.tif")) is None
    assert get_reader([str(tmp_path / "a.nii"), str(tmp_path / "b.png")]) is None
    assert get_reader(str(tmp_path / "a.nii.gz")) is not None


@pytest.mark.parametrize("kind", sorted(AFFINES))
def test_image_round_trip_keeps_affine_and_header(tmp_path, kind):
    rng = np.random.default_rng(0)
    data = rng.normal(size=(6, 7, 5)).astype(np.float32)  # NIfTI (i, j, k)
    affine = AFFINES[kind]
    source = tmp_path / f"{kind}.nii.gz"
    _save(source, data, affine)

    [(array, kwargs, layer_type)] = get_reader(str(source))(str(source))
    assert layer_type == "image"
    assert array.shape == (5, 7, 6)  # (k, j, i)
    np.testing.assert_array_equal(array, data.T)
    assert kwargs["units"] == ("mm", "mm", "mm")
    entry = kwargs["metadata"][META_KEY]
    assert entry["version"] == 1 and entry["path"] == str(source)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)[::-1]  # per (k, j, i)
    np.testing.assert_allclose(np.abs(kwargs["scale"]), spacing)
    if kind != "oblique":
        # world (z, y, x) of voxel (k, j, i) = translate + scale * index, exactly
        index = np.array([2.0, 3.0, 4.0])
        world_xyz = affine @ np.array([*index[::-1], 1.0])
        np.testing.assert_allclose(
            np.asarray(kwargs["translate"]) + np.asarray(kwargs["scale"]) * index, world_xyz[2::-1]
        )
    if kind == "lps":
        assert kwargs["scale"][1] < 0 and kwargs["scale"][2] < 0

    out = tmp_path / f"{kind}_out.nii.gz"
    [written] = write_image(str(out), array, kwargs)
    back = nib.load(written)
    np.testing.assert_allclose(back.affine, affine, atol=1e-6)
    np.testing.assert_array_equal(back.get_fdata(dtype=np.float32), data)
    assert back.header["descrip"].tobytes().rstrip(b"\0") == b"napari-difftt test"
    assert back.header.get_sform(coded=True)[1] == nib.load(source).header.get_sform(coded=True)[1]


def test_labels_open_as_labels_and_write_back_as_integers(tmp_path):
    data = np.zeros((8, 6, 4), dtype=np.int16)
    data[2:5, 1:4, 1:3] = 3
    source = tmp_path / "organ.nii"
    affine = np.diag([1.5, 1.5, 4.0, 1.0])
    _save(source, data, affine)
    [(array, kwargs, layer_type)] = get_reader(str(source))(str(source))
    assert layer_type == "labels" and array.dtype.kind in "iu"

    out = tmp_path / "organ_out.nii.gz"
    write_labels(str(out), array, kwargs)
    back = nib.load(out)
    assert np.asarray(back.dataobj).dtype == np.uint8  # smallest integer type holding 0…3
    np.testing.assert_array_equal(np.asarray(back.dataobj), data)
    np.testing.assert_allclose(back.affine, affine)


def test_label_heuristic():
    floats = np.linspace(0, 1, 27, dtype=np.float32).reshape(3, 3, 3)
    assert not is_label_like(floats, "ct")
    assert not is_label_like(np.arange(1000, dtype=np.int16).reshape(10, 10, 10), "ct")
    assert is_label_like(np.arange(27, dtype=np.int16).reshape(3, 3, 3) % 3, "ct")
    assert is_label_like(np.round(floats * 2), "liver_seg")  # float file named like labels
    assert not is_label_like(floats, "liver_seg")  # ... but not when values are not whole


def test_writer_without_file_metadata_uses_scale_and_translate(tmp_path):
    array = np.ones((4, 5, 6), dtype=np.float32)
    attributes = {"scale": (2.0, 0.5, 0.25), "translate": (10.0, -3.0, 1.0), "metadata": {}}
    [written] = write_image(str(tmp_path / "plain"), array, attributes)
    assert written.endswith(".nii.gz")
    back = nib.load(written)
    assert back.shape == (6, 5, 4)
    np.testing.assert_allclose(back.affine[:3, :3], np.diag([0.25, 0.5, 2.0]))
    np.testing.assert_allclose(back.affine[:3, 3], [1.0, -3.0, 10.0])
    assert back.header.get_xyzt_units()[0] == "mm"
    assert back.header["sform_code"] > 0  # a valid, coded sform: other tools use the affine


@pytest.mark.parametrize("kind", ["ras", "oblique"])
def test_writer_follows_a_layer_moved_in_napari(tmp_path, kind):
    from napari_difftt._reader import read_layers

    data = np.arange(4 * 5 * 6, dtype=np.float32).reshape(6, 5, 4)
    _save(tmp_path / "in.nii.gz", data, AFFINES[kind])
    [(array, kwargs, _)] = read_layers(str(tmp_path / "in.nii.gz"))
    [same] = write_image(str(tmp_path / "same.nii.gz"), array, kwargs)
    np.testing.assert_allclose(nib.load(same).affine, AFFINES[kind], atol=1e-6)  # unchanged

    moved = dict(kwargs, translate=tuple(t + 5.0 for t in kwargs["translate"]),
                 scale=tuple(2.0 * s for s in kwargs["scale"]))
    [written] = write_image(str(tmp_path / "moved.nii.gz"), array, moved)
    [(_, back, _)] = read_layers(written)
    np.testing.assert_allclose(back["scale"], moved["scale"], atol=1e-6)
    np.testing.assert_allclose(back["translate"], moved["translate"], atol=1e-6)


def test_writer_rejects_rgb_and_4d(tmp_path):
    with pytest.raises(ValueError, match="2D/3D scalar"):
        write_image(str(tmp_path / "x.nii"), np.zeros((2, 3, 4, 5)), {})
    with pytest.raises(ValueError, match="2D/3D scalar"):
        write_image(str(tmp_path / "x.nii"), np.zeros((3, 4, 3)), {"rgb": True})


def test_napari_opens_and_saves_through_the_manifest(make_napari_viewer, tmp_path):
    data = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    affine = AFFINES["oblique"]
    source = tmp_path / "scan.nii.gz"
    _save(source, data, affine)
    viewer = make_napari_viewer()
    [layer] = viewer.open(str(source), plugin="napari-difftt")
    assert layer.metadata[META_KEY]["affine"].shape == (4, 4)
    assert [str(u) for u in layer.units] == ["millimeter"] * 3
    out = tmp_path / "saved.nii.gz"
    viewer.layers.save(str(out), selected=False, plugin="napari-difftt")
    np.testing.assert_allclose(nib.load(out).affine, affine, atol=1e-6)


def test_derived_layers_copy_geometry_from_any_layer(viewer):
    """A derived layer of a plain user layer (no plugin metadata) still gets its geometry."""
    image = viewer.add_image(np.zeros((4, 5, 6), np.float32), scale=(2.0, -1.0, 0.5),
                             translate=(3.0, 9.0, -1.0), units="mm")
    kwargs = derived_kwargs(image, "field", "displacement", leading_axes=1)
    assert kwargs["scale"] == (1.0, 2.0, -1.0, 0.5)
    assert kwargs["translate"] == (0.0, 3.0, 9.0, -1.0)
    assert kwargs["units"][1:] == ("millimeter",) * 3
    np.testing.assert_array_equal(kwargs["affine"], np.eye(5))  # the source's (identity) affine
    entry = kwargs["metadata"][META_KEY]
    assert entry["role"] == "displacement" and entry["source"] == image.name
    np.testing.assert_allclose(entry["affine"], layer_affine(image))
    # world (x, y, z) of index (z, y, x) = (1, 2, 3): translate + scale · index, reversed
    world = entry["affine"] @ np.array([1.0, 2.0, 3.0, 1.0])
    np.testing.assert_allclose(world[:3], [-1.0 + 1.5, 9.0 - 2.0, 3.0 + 2.0])
    layer = viewer.add_image(np.zeros((3, 4, 5, 6), np.float32), **kwargs)
    assert layer.metadata[META_KEY]["version"] == 1
