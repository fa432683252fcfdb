"""Surface meshes: closed, outward-facing, in world mm through the affine; OBJ/STL writers."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from napari_difftt.core.mesh import Mesh, surface_mesh, write_mesh


def _ball(shape=(20, 22, 24), centre=(10, 11, 12), radius=6.0) -> np.ndarray:
    grid = np.indices(shape, dtype=float)
    return (sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True)) <= radius**2)


def _signed_volume(mesh: Mesh) -> float:
    a, b, c = (mesh.vertices[mesh.faces[:, k]] for k in range(3))
    return float(np.einsum("ij,ij->i", a, np.cross(b, c)).sum() / 6.0)


@pytest.mark.parametrize("diagonal", [(1.0, 1.0, 1.0), (2.0, 0.5, 1.5), (-1.0, 2.0, -0.7)])
def test_ball_volume_orientation_and_position(diagonal):
    mask = _ball()
    affine = np.eye(4)[[2, 1, 0, 3]] @ np.diag([*diagonal, 1.0])  # (z, y, x) → (x, y, z)
    affine[:3, 3] = (5.0, -3.0, 12.0)
    mesh = surface_mesh(mask, affine)
    voxel_volume = abs(np.prod(diagonal))
    # outward normals ⇒ positive signed volume ≈ the voxel count (marching cubes shaves corners)
    assert _signed_volume(mesh) == pytest.approx(mask.sum() * voxel_volume, rel=0.05)
    centre = affine @ np.array([10.0, 11.0, 12.0, 1.0])
    np.testing.assert_allclose(mesh.vertices.mean(0), centre[:3], atol=0.05 * 6 * 2)
    normals = mesh.face_normals()
    outward = np.einsum("ij,ij->i", mesh.vertices[mesh.faces].mean(1) - centre[:3], normals)
    assert np.mean(outward > 0) > 0.99


def test_objects_touching_the_border_are_closed():
    mask = np.zeros((6, 6, 6), bool)
    mask[:3] = True  # a slab touching three faces of the volume
    mesh = surface_mesh(mask)
    edges = np.sort(mesh.faces[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2), axis=1)
    _, counts = np.unique(edges, axis=0, return_counts=True)
    assert np.all(counts == 2)  # every edge shared by exactly two faces: watertight


def test_writers_round_trip_and_refuse_to_overwrite(tmp_path):
    mesh = surface_mesh(_ball((12, 12, 12), (6, 6, 6), 3.0))
    obj = write_mesh(tmp_path / "m.obj", mesh)
    lines = obj.read_text().splitlines()
    v = np.array([[float(x) for x in line.split()[1:]] for line in lines if line.startswith("v ")])
    f = np.array([[int(x) for x in line.split()[1:]] for line in lines if line.startswith("f ")])
    np.testing.assert_allclose(v, mesh.vertices, atol=1e-6)
    np.testing.assert_array_equal(f - 1, mesh.faces)

    raw = write_mesh(tmp_path / "m.stl", mesh).read_bytes()
    [count] = struct.unpack("<I", raw[80:84])
    assert count == len(mesh.faces) and len(raw) == 84 + 50 * count
    records = np.frombuffer(raw[84:], dtype=[("n", "<f4", 3), ("v", "<f4", (3, 3)), ("a", "<u2")])
    np.testing.assert_allclose(records["v"], mesh.vertices[mesh.faces], atol=1e-5)
    np.testing.assert_allclose(records["n"], mesh.face_normals(), atol=1e-5)

    text = write_mesh(tmp_path / "a.stl", mesh, binary=False).read_text()
    assert text.startswith("solid") and text.count("facet normal") == len(mesh.faces)

    with pytest.raises(FileExistsError, match=r"m\.obj exists"):
        write_mesh(tmp_path / "m.obj", mesh)
    write_mesh(tmp_path / "m.obj", mesh, overwrite=True)
    with pytest.raises(ValueError, match=r"\.obj or \.stl"):
        write_mesh(tmp_path / "m.ply", mesh)


def test_bad_masks_are_explained():
    with pytest.raises(ValueError, match="3D segmentation"):
        surface_mesh(np.ones((4, 4)))
    with pytest.raises(ValueError, match="empty"):
        surface_mesh(np.zeros((4, 4, 4)))
