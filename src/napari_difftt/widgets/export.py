"""Export dock widget: segmentation, probability, Jacobian determinant and displacement to NIfTI
with the source image's affine and header, and the segmentation surface as an OBJ/STL mesh.

Files are named ``<stem>_<what>.nii.gz`` in the chosen folder. Existing files are never
replaced silently: one QMessageBox asks once for all of them (tests monkeypatch
``QMessageBox.question``). The folder defaults to the segmentation's source file's folder.
The Jacobian determinant and displacement come from the last prediction in the viewer state
(:func:`core.flow.jacobian_det`, central differences); the displacement is written as one file
per array axis, ``_displacement_{z,y,x}_mm``, in millimetres (voxels × spacing).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QMessageBox,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from ._controls import LayerChooser
from ._layers import layer_metadata, layer_volume, spacing_of
from ._lifetime import Lifetime
from ._state import ViewerState
from ._worker import explain

if TYPE_CHECKING:
    import napari

__all__ = ["ExportWidget"]

AXES = ("z", "y", "x")
MESH_TIPS = {True: "the segmentation's surface as a triangle mesh in world mm",
             False: "a 2D segmentation has no surface: the mesh needs a 3D segmentation"}


class ExportWidget(QWidget):
    """Choose what to export, a folder and a file stem; Export writes the files."""

    def __init__(self, napari_viewer: napari.Viewer, parent=None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.state = ViewerState.of(napari_viewer)
        self.segmentation = LayerChooser(napari_viewer, "labels")
        self.probability = LayerChooser(napari_viewer, "image", allow_none=True)
        self.want_segmentation = QCheckBox("segmentation (NIfTI)")
        self.want_probability = QCheckBox("probability (NIfTI)")
        self.want_jacobian = QCheckBox("Jacobian determinant (NIfTI)")
        self.want_displacement = QCheckBox("displacement, mm per axis (NIfTI)")
        self.want_mesh = QCheckBox("surface mesh")
        self.mesh_format = QComboBox()
        self.mesh_format.addItems([".stl", ".obj"])
        for box in (self.want_segmentation, self.want_probability, self.want_jacobian,
                    self.want_displacement, self.want_mesh):
            box.setChecked(True)
        self.folder = QLineEdit(str(Path.cwd()))  # until a segmentation from a file is chosen
        self._folder_chosen = False
        self.browse_button = QPushButton("Browse…")
        self.stem = QLineEdit("difftt")
        self.export_button = QPushButton("Export")
        for control, tip in (
            (self.want_segmentation, "labels 0/1 with the source's affine and header"),
            (self.want_probability, "the model's probability, float32"),
            (self.want_jacobian, "det ∇Φ by central differences (≤ 0: folded)"),
            (self.want_displacement, "Φ(x) − x in mm, one file per array axis"),
            (self.want_mesh, MESH_TIPS[True]),
            (self.mesh_format, "mesh file format"),
            (self.folder, "output folder (default: the source file's folder)"),
            (self.browse_button, "Choose the output folder"),
            (self.stem, "file names start with this, e.g. <stem>_segmentation.nii.gz"),
            (self.export_button, "Write every ticked output; asks once before replacing files"),
            (self.probability, "the probability layer to export"),
        ):
            control.setToolTip(tip)
        self.message = QLabel()
        self.message.setWordWrap(True)
        self._build_layout()
        self.browse_button.clicked.connect(self._browse)
        self.export_button.clicked.connect(self.export)
        self.segmentation.layer_changed.connect(self._suggest_stem)
        self._suggest_stem(self.segmentation.layer())
        self.state.changed.connect(self._on_state)
        self._lifetime = Lifetime(self, lambda: self.state.changed.disconnect(self._on_state))
        self._on_state("prediction")

    # ------------------------------------------------------------------ public API
    def set_output(self, folder: str | Path, stem: str) -> None:
        """Write into ``folder`` with file names starting with ``stem``."""
        self._folder_chosen = True
        self.folder.setText(str(folder))
        self.stem.setText(stem)

    def export(self) -> list[Path]:
        """Write every checked output; returns the files written (skipped ones left out)."""
        from napari.utils.notifications import show_error, show_info

        try:
            jobs = self._jobs()
        except (ValueError, FileNotFoundError) as error:
            show_error(f"Export: {explain(error)}")
            self.message.setText(explain(error))
            return []
        existing = [path for path, _ in jobs if path.exists()]
        replace = not existing or self._confirm_overwrite(existing)
        written, skipped = [], []
        for path, write in jobs:
            overwrite = path.exists()
            if overwrite and not replace:
                skipped.append(path)
                continue
            try:
                written.append(write(path, overwrite))
            except (OSError, ValueError) as error:
                show_error(f"Export: {path.name}: {explain(error)}")
        text = f"wrote {len(written)} file(s) to {self._folder()}"
        if skipped:
            text += f"; kept {len(skipped)} existing file(s): {', '.join(p.name for p in skipped)}"
        self.message.setText(text)
        show_info(f"Export: {text}")
        return written

    # ------------------------------------------------------------------ internals
    def _jobs(self) -> list[tuple[Path, Callable[[Path, bool], Path]]]:
        """(path, write(path, overwrite) -> Path) for every checked output, inputs checked."""
        from ..core.io import write_nifti

        folder, stem = self._folder(), self.stem.text().strip()
        if not stem:
            raise ValueError("enter a file name stem")
        if not folder.is_dir():
            raise FileNotFoundError(f"output folder not found: {folder}")
        segmentation = self.segmentation.layer()
        record = self.state.prediction
        jobs = []
        needs_segmentation = self.want_segmentation.isChecked() or self.want_mesh.isChecked()
        if needs_segmentation and segmentation is None:
            raise ValueError("choose a segmentation (Labels) layer, or untick it and the mesh")
        if self.want_segmentation.isChecked():
            like = layer_volume(segmentation)
            jobs.append((folder / f"{stem}_segmentation.nii.gz",
                         lambda p, o: write_nifti(p, like.array, like, labels=True, overwrite=o)))
        if self.want_probability.isChecked() and self.probability.layer() is not None:
            prob = layer_volume(self.probability.layer())
            jobs.append((folder / f"{stem}_probability.nii.gz",
                         lambda p, o: write_nifti(p, prob.array, prob, overwrite=o)))
        fields_wanted = self.want_jacobian.isChecked() or self.want_displacement.isChecked()
        displacement = None if record is None else record.prediction.displacement
        if fields_wanted and displacement is None:
            raise ValueError("the Jacobian and displacement need a prediction with a flow: run "
                             "a bch/svf/stt model first, or untick them")
        if fields_wanted:
            source = layer_volume(record.source, np.zeros(displacement.shape[1:], np.float32))
        if self.want_jacobian.isChecked():
            jobs.append((folder / f"{stem}_jacobian.nii.gz",
                         lambda p, o: write_nifti(p, _jacobian_det(displacement), source,
                                                  overwrite=o)))
        if self.want_displacement.isChecked():
            spacing = spacing_of(record.source)
            n = displacement.shape[0]
            for k, axis in enumerate(AXES[3 - n :]):
                component = (displacement[k] * spacing[k]).astype(np.float32)
                jobs.append((folder / f"{stem}_displacement_{axis}_mm.nii.gz",
                             lambda p, o, c=component: write_nifti(p, c, source, overwrite=o)))
        if self.want_mesh.isChecked():
            jobs.append((folder / f"{stem}_surface{self.mesh_format.currentText()}",
                         lambda p, o: _write_surface(p, segmentation, o)))
        if not jobs:
            raise ValueError("nothing to export: tick at least one output")
        return jobs

    def _confirm_overwrite(self, paths: list[Path]) -> bool:
        """One question for every file that exists: replace them all, or keep them all."""
        names = "\n".join(path.name for path in paths)
        answer = QMessageBox.question(
            self, "Replace files?",
            f"{len(paths)} file(s) exist in {paths[0].parent}:\n{names}\nReplace them?",
            QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
            QMessageBox.StandardButton.No,
        )
        return answer == QMessageBox.StandardButton.Yes

    def _folder(self) -> Path:
        return Path(self.folder.text().strip()).expanduser()

    def _browse(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Export to folder", self.folder.text())
        if folder:
            self._folder_chosen = True
            self.folder.setText(folder)

    def _suggest_stem(self, layer) -> None:
        """Follow the chosen segmentation: its stem, its source file's folder, mesh for 3D."""
        if layer is None:
            return
        self.stem.setText(layer.name.removesuffix(" segmentation").replace(" ", "_"))
        is_3d = layer.ndim == 3
        self.want_mesh.setEnabled(is_3d)
        self.mesh_format.setEnabled(is_3d)
        if not is_3d:
            self.want_mesh.setChecked(False)
        self.want_mesh.setToolTip(MESH_TIPS[is_3d])
        path = layer_metadata(layer).get("path")
        if path is not None and not self._folder_chosen:
            self.folder.setText(str(Path(path).parent))

    def _on_state(self, field: str) -> None:
        record = self.state.prediction
        if field != "prediction" or record is None:
            return
        if record.segmentation is not None and record.segmentation in self.viewer.layers:
            self.segmentation.set_layer(record.segmentation)
        if record.probability is not None and record.probability in self.viewer.layers:
            self.probability.set_layer(record.probability)

    def _build_layout(self) -> None:
        form = QFormLayout()
        form.addRow("segmentation", self.segmentation)
        form.addRow("probability", self.probability)
        form.addRow(self.want_segmentation)
        form.addRow(self.want_probability)
        form.addRow(self.want_jacobian)
        form.addRow(self.want_displacement)
        mesh_row = QHBoxLayout()
        mesh_row.addWidget(self.want_mesh)
        mesh_row.addWidget(self.mesh_format)
        form.addRow(mesh_row)
        folder_row = QHBoxLayout()
        folder_row.addWidget(self.folder, 1)
        folder_row.addWidget(self.browse_button)
        form.addRow("folder", folder_row)
        form.addRow("file stem", self.stem)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.export_button)
        layout.addWidget(self.message)
        layout.addStretch(1)


def _jacobian_det(displacement: np.ndarray) -> np.ndarray:
    """det J of Φ = id + u, u ``(n, *S)`` in voxels → ``(*S)`` float32 (central differences)."""
    import torch

    from ..core.flow import jacobian_det

    field = torch.from_numpy(np.ascontiguousarray(displacement, dtype=np.float32))[None]
    return jacobian_det(field)[0].numpy().astype(np.float32)


def _write_surface(path: Path, layer, overwrite: bool) -> Path:
    from ..core.mesh import surface_mesh, write_mesh

    volume = layer_volume(layer)
    return write_mesh(path, surface_mesh(volume.array, volume.affine), overwrite=overwrite)
