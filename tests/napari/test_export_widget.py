"""Export widget: it exports the viewer's prediction record only; NIfTI outputs keep the
source's affine/header, OBJ/STL surfaces in world mm, no silent overwrite, and a failure
leaves no file behind."""

from __future__ import annotations

import struct

import nibabel as nib
import numpy as np
from difftt_helpers import blob
from qtpy.QtWidgets import QMessageBox

from napari_difftt._reader import read_layers
from napari_difftt.layer_metadata import layer_volume
from napari_difftt.pipeline import Result
from napari_difftt.widgets._layers import add_derived
from napari_difftt.widgets._state import ViewerState

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
    prediction = Prediction(probability, mask, displacement.astype(np.float32), None,
                            probability)
    prob_layer = add_derived(viewer, "image", probability, image, "scan probability",
                             "probability")
    seg_layer = add_derived(viewer, "labels", mask, image, "scan segmentation", "segmentation")
    record = Result(prediction, layer_volume(image), None, "bch", checkpoint=tmp_path / "m.pt",
                    source=image.unique_id, layers={"probability": prob_layer.unique_id,
                                                    "segmentation": seg_layer.unique_id})
    ViewerState.of(viewer).set_prediction(record)
    return image, mask, a, displacement


def test_export_everything(viewer, dock, tmp_path, notes):
    _, mask, a, displacement = _setup(viewer, tmp_path)
    widget = dock("Export")
    assert "Prediction of 'scan'" in widget.source.text()  # the record, not a layer pairing
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
    for key in ("prob", "jacdet", "displacement"):
        widget.want[key].value = False
    widget.mesh_format.value = ".obj"
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


def test_folder_follows_the_source_file_and_edits_are_exported(viewer, dock, tmp_path):
    image, mask, _, _ = _setup(viewer, tmp_path)
    widget = dock("Export")
    assert widget.folder.value == tmp_path  # the scan's folder, not the working directory
    assert widget.want["mesh"].enabled and widget.want["mesh"].value
    image.name = "scan renamed"
    [segmentation] = [layer for layer in viewer.layers if layer.name == "scan segmentation"]
    before = int(mask.sum())
    segmentation.data[0, 0, 0] = 1  # a correction painted by the user
    widget.set_output(tmp_path, "edited")
    widget.want["mesh"].value = False
    assert {p.name for p in widget.export()} >= {"edited_seg.nii.gz"}
    saved = np.asarray(nib.load(tmp_path / "edited_seg.nii.gz").dataobj).T
    assert saved[0, 0, 0] == 1 and saved.sum() == before + 1


def test_before_any_run_it_offers_nothing_and_says_why(viewer, dock, tmp_path, notes):
    """The old widget offered any Labels layer (the ground truth) as "the segmentation"."""
    viewer.add_labels(np.zeros((4, 5, 6), np.uint8), name="ground truth")
    widget = dock("Export")
    assert not widget.export_button.enabled and "No prediction" in widget.source.text()
    widget.set_output(tmp_path, "case")
    assert widget.export() == []
    assert notes[-1][0] == "error" and "run the model first" in notes[-1][1]
    assert list(tmp_path.iterdir()) == []


def test_a_failed_export_leaves_no_file_behind(viewer, dock, tmp_path, monkeypatch, notes):
    from napari_difftt.core import mesh

    _setup(viewer, tmp_path)
    widget = dock("Export")
    out = tmp_path / "out"
    out.mkdir()
    widget.set_output(out, "case")

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(mesh, "write_mesh", full_disk)
    assert widget.export() == []
    assert list(out.iterdir()) == []  # seg, prob, det J, displacement were removed again
    assert "Nothing was written" in widget.message.text() and notes[-1][0] == "error"


def test_a_prediction_without_a_flow_offers_no_jacobian(viewer, dock, tmp_path):
    from napari_difftt.core.inference import Prediction

    image = viewer.add_image(np.zeros((8, 9), np.float32), name="flat")
    zeros = np.zeros((8, 9), np.float32)
    record = Result(Prediction(zeros, zeros.astype(np.uint8), None, None, zeros),
                    layer_volume(image), None, "unet", source=image.unique_id)
    ViewerState.of(viewer).set_prediction(record)
    widget = dock("Export")
    assert not widget.want["jacdet"].enabled and not widget.want["mesh"].enabled
    assert "3D" in widget.want["mesh"].tooltip
    widget.set_output(tmp_path, "flat")
    assert [p.name for p in widget.export()] == ["flat_seg.nii.gz", "flat_prob.nii.gz"]
