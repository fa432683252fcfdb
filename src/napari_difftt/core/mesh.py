"""Surface meshes of segmentations, written as Wavefront OBJ or STL (binary or ASCII).

Vertices are in world millimetres: marching cubes runs on the voxel grid (array order z, y, x)
and the volume's affine (core.io convention: index (z, y, x, 1) → world (x, y, z) mm) maps
them, so the mesh overlays the NIfTI volume in any viewer. For a diagonal affine this is
``marching_cubes(..., spacing=spacing)`` shifted to the origin. Faces are wound so normals
point out of the object (also under an affine with a reflection).
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .io import atomic_write

__all__ = ["Mesh", "surface_mesh", "write_mesh"]

MESH_SUFFIXES = (".obj", ".stl")


@dataclass(frozen=True)
class Mesh:
    """A triangle mesh."""

    vertices: np.ndarray  # (V, 3) float64, world mm (x, y, z)
    faces: np.ndarray  # (F, 3) int64 vertex indices, counter-clockwise seen from outside

    def face_normals(self) -> np.ndarray:
        """Unit normals ``(F, 3)`` (right-hand rule on the vertex order)."""
        a, b, c = (self.vertices[self.faces[:, k]] for k in range(3))
        normals = np.cross(b - a, c - a)
        length = np.linalg.norm(normals, axis=1, keepdims=True)
        return normals / np.where(length > 0, length, 1.0)


def surface_mesh(mask: np.ndarray, affine: np.ndarray | None = None) -> Mesh:
    """The boundary of ``mask`` ``(D, H, W)`` (nonzero = inside) as a closed triangle mesh.

    The mask is padded by one voxel so objects touching the border are closed too.
    ``affine`` ``(4, 4)`` maps voxel index (z, y, x, 1) to world mm (default: identity on
    (z, y, x) → (x, y, z), 1 mm voxels). Raises ValueError for a 2D or empty mask.
    """
    from skimage.measure import marching_cubes

    mask = np.asarray(mask)
    if mask.ndim != 3:
        raise ValueError(f"a surface mesh needs a 3D segmentation, got shape {mask.shape}")
    inside = mask != 0
    if not inside.any():
        raise ValueError("the segmentation is empty: there is no surface to export")
    if affine is None:
        affine = np.eye(4)[[2, 1, 0, 3]]
    affine = np.asarray(affine, dtype=float)
    if affine.shape != (4, 4) or not np.isfinite(affine).all():
        raise ValueError(f"affine must be a finite (4, 4) matrix, got shape {affine.shape}")
    padded = np.pad(inside.astype(np.float32), 1)
    vertices, faces, _, _ = marching_cubes(padded, level=0.5)
    index = vertices.astype(np.float64) - 1.0  # undo the padding
    world = index @ affine[:3, :3].T + affine[:3, 3]
    faces = faces.astype(np.int64)
    # marching_cubes winds faces counter-clockwise seen from outside in index (z, y, x) space,
    # a left-handed frame when read as (x, y, z): one reflection from the axis order, one more
    # for every reflection in the affine.
    if np.linalg.det(affine[:3, :3]) > 0:
        faces = faces[:, [0, 2, 1]]
    return Mesh(world, faces)


def write_mesh(
    path: str | os.PathLike, mesh: Mesh, *, binary: bool = True, overwrite: bool = False
) -> Path:
    """Write ``mesh`` as .obj (text) or .stl (binary unless ``binary=False``); return the path.

    Refuses to replace an existing file unless ``overwrite=True`` (FileExistsError).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in MESH_SUFFIXES:
        raise ValueError(f"{path}: mesh file names must end in .obj or .stl")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
    if suffix == ".obj":
        writer = _write_obj
    else:
        writer = _write_stl_binary if binary else _write_stl_ascii
    return atomic_write(path, lambda tmp: writer(tmp, mesh), overwrite=overwrite)


def _write_obj(path: Path, mesh: Mesh) -> None:
    with open(path, "w", encoding="ascii") as out:
        out.write("# napari-difftt segmentation surface, world mm\n")
        np.savetxt(out, mesh.vertices, fmt="v %.6f %.6f %.6f")
        np.savetxt(out, mesh.faces + 1, fmt="f %d %d %d")  # OBJ indices start at 1


def _write_stl_binary(path: Path, mesh: Mesh) -> None:
    records = np.zeros(len(mesh.faces), dtype=[("normal", "<f4", 3), ("vertices", "<f4", (3, 3)),
                                                ("attribute", "<u2")])
    records["normal"] = mesh.face_normals()
    records["vertices"] = mesh.vertices[mesh.faces]
    with open(path, "wb") as out:
        out.write(b"napari-difftt segmentation surface, world mm".ljust(80, b" "))
        out.write(struct.pack("<I", len(records)))
        out.write(records.tobytes())


def _write_stl_ascii(path: Path, mesh: Mesh) -> None:
    with open(path, "w", encoding="ascii") as out:
        out.write("solid segmentation\n")
        for normal, triangle in zip(mesh.face_normals(), mesh.vertices[mesh.faces], strict=True):
            out.write(f"  facet normal {normal[0]:e} {normal[1]:e} {normal[2]:e}\n    outer loop\n")
            for vertex in triangle:
                out.write(f"      vertex {vertex[0]:e} {vertex[1]:e} {vertex[2]:e}\n")
            out.write("    endloop\n  endfacet\n")
        out.write("endsolid segmentation\n")
