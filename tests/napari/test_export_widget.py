"""Export widget: NIfTI outputs keep the source's affine/header, Jacobian/displacement from the
last prediction, OBJ/STL surfaces in world mm, and no silent overwrite."""

from __future__ import annotations

import struct

import nibabel as nib
import numpy as np
from difftt_helpers import blob
from qtpy.QtWidgets import QMessageBox

from napari_difftt._reader import read_layers
from napari_difftt.widgets._layers import add_derived
from napari_difftt.widgets._state import PredictionRecord, ViewerState

SHAPE = (10, 12, 14)  # (k, j, i)
AFFINE = np.array([[0.0, 0.2, 1.5, -30.0],  # oblique: index (i, j, k) → RAS mm
                   [0.0, 0.98, -0.1, 12.0],
                   [2.5, 0.0, 0.0, 4.0],
                   [0.0, 0.0, 0.0, 1.0]])


def _setup(viewer, tmp_path):
    """A NIfTI image opened through the reader, a known prediction on it, its derived layers."""
    from napari.layers import Layer

    from napari_difftt.core.inference import Prediction

    path = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(np.random.default_rng(0).random(SHAPE[::-1], np.float32), AFFINE),
             path)
    [data] = read_layers(str(path))
    image = viewer.add_layer(Layer.create(*data))
    mask = blob(SHAPE, (5, 6, 7), (3, 4, 4))
    probability = mask.astype(np.float32) * 0.9
    a = np.array([[0.1, 0.0, 0.0], [0.05, -0.2, 0.0], [0.0, 0.0, 0.3]])  # u(x) = A x
    displacement = np.einsum("ij,j...->i...", a, np.indices(SHAPE, dtype=np.float32))
    prediction = Prediction(probability, mask, displacement.astype(np.float32), None, None,
                            probability)
    prob_layer = add_derived(viewer, "image", probability, image, "scan probability",
                             "probability")
    seg_layer = add_derived(viewer, "labels", mask, image, "scan segmentation", "segmentation")
    ViewerState.of(viewer).set_prediction(
        PredictionRecord(prediction, image, tmp_path / "model.pt", "cpu", prob_layer, seg_layer))
    return image, mask, a, displacement


def test_export_everything(viewer, dock, tmp_path, notes):
    _, mask, a, displacement = _setup(viewer, tmp_path)
    widget = dock("Export")
    assert widget.segmentation.layer().name == "scan segmentation"  # picked from the state
    assert widget.probability.layer().name == "scan probability"
    out = tmp_path / "out"
    out.mkdir()
    widget.set_output(out, "case")
    written = {p.name for p in widget.export()}
    # the names of `napari-difftt predict` (pipeline.OUTPUTS), so `evaluate` reads them
    assert written == {"case_seg.nii.gz", "case_prob.nii.gz", "case_jacdet.nii.gz",
                       "case_displacement.npy", "case_surface.stl"}

    seg = nib.load(out / "case_seg.nii.gz")
    np.testing.assert_allclose(seg.affine, AFFINE, atol=1e-6)  # the true oblique affine
    assert np.asarray(seg.dataobj).dtype == np.uint8
    np.testing.assert_array_equal(np.asarray(seg.dataobj), mask.T)
    prob = nib.load(out / "case_prob.nii.gz")
    assert prob.get_data_dtype() == np.float32
    np.testing.assert_allclose(prob.affine, AFFINE, atol=1e-6)

    jac = nib.load(out / "case_jacdet.nii.gz").get_fdata().T
    np.testing.assert_allclose(jac[1:-1, 1:-1, 1:-1], np.linalg.det(np.eye(3) + a), rtol=1e-5)
    saved = np.load(out / "case_displacement.npy")  # voxels, (n, *S), as predict writes it
    assert saved.dtype == np.float32
    np.testing.assert_array_equal(saved, displacement.astype(np.float32))

    raw = (out / "case_surface.stl").read_bytes()
    [count] = struct.unpack("<I", raw[80:84])
    assert len(raw) == 84 + 50 * count and count > 100
    triangles = np.frombuffer(raw[84:], dtype=[("n", "<f4", 3), ("v", "<f4", (3, 3)),
                                               ("a", "<u2")])["v"].reshape(-1, 3)
    inside = np.argwhere(mask)[:, ::-1]  # (i, j, k) of the voxels inside
    world = nib.affines.apply_affine(AFFINE, inside)
    assert np.all(triangles.min(0) > world.min(0) - 3)
    assert np.all(triangles.max(0) < world.max(0) + 3)
    assert notes[-1][0] == "info" and "wrote 5 file(s)" in notes[-1][1]


def test_never_overwrites_silently(viewer, dock, tmp_path, monkeypatch, notes):
    _setup(viewer, tmp_path)
    widget = dock("Export")
    for box in (widget.want_probability, widget.want_jacobian, widget.want_displacement):
        box.setChecked(False)
    widget.mesh_format.setCurrentText(".obj")
    widget.set_output(tmp_path, "case")
    first = widget.export()
    assert {p.name for p in first} == {"case_seg.nii.gz", "case_surface.obj"}
    obj = (tmp_path / "case_surface.obj").read_text().splitlines()
    faces = [line for line in obj if line.startswith("f ")]
    vertices = [line for line in obj if line.startswith("v ")]
    assert faces and max(int(i) for f in faces for i in f.split()[1:]) == len(vertices)

    (tmp_path / "case_surface.obj").write_text("keep me")
    asked = []

    def answer(choice):
        def question(parent, title, text, *args):
            asked.append(text)
            return choice
        return question

    monkeypatch.setattr(QMessageBox, "question", answer(QMessageBox.StandardButton.No))
    assert widget.export() == []
    # asked once for both files, naming each
    assert len(asked) == 1
    assert "case_seg.nii.gz" in asked[0] and "case_surface.obj" in asked[0]
    assert (tmp_path / "case_surface.obj").read_text() == "keep me"
    assert "kept 2 existing file(s)" in widget.message.text()

    monkeypatch.setattr(QMessageBox, "question", answer(QMessageBox.StandardButton.Yes))
    assert len(widget.export()) == 2 and len(asked) == 2
    assert (tmp_path / "case_surface.obj").read_text().startswith("# napari-difftt")


def test_folder_follows_the_source_file_and_2d_has_no_mesh(viewer, dock, tmp_path):
    _setup(viewer, tmp_path)
    widget = dock("Export")
    assert widget.folder.text() == str(tmp_path)  # the scan's folder, not the working directory
    assert widget.want_mesh.isEnabled() and widget.want_mesh.isChecked()
    viewer.add_labels(np.zeros((8, 9), np.uint8), name="flat")
    widget.segmentation.set_layer("flat")
    assert not widget.want_mesh.isEnabled() and not widget.want_mesh.isChecked()
    assert "3D" in widget.want_mesh.toolTip()


def test_missing_inputs_notify(viewer, dock, tmp_path, notes):
    widget = dock("Export")
    widget.set_output(tmp_path, "case")
    assert widget.export() == []
    assert notes[-1][0] == "error" and "segmentation" in notes[-1][1]
    viewer.add_labels(np.zeros((4, 5, 6), np.uint8), name="seg")
    widget.segmentation.set_layer("seg")
    assert widget.export() == []  # Jacobian/displacement need a prediction
    assert "Jacobian" in notes[-1][1]
    assert list(tmp_path.iterdir()) == []
