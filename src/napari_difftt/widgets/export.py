"""Export dock widget: segmentation, probability and Jacobian determinant to NIfTI with the
source image's affine and header, the displacement, and the segmentation surface as a mesh.

The files are those of ``napari-difftt predict`` (one contract,
:data:`napari_difftt.pipeline.OUTPUTS`, written by :func:`napari_difftt.pipeline.export`):
``<stem>_seg.nii.gz``, ``<stem>_prob.nii.gz``, ``<stem>_jacdet.nii.gz`` (det ∇Φ, central
differences), ``<stem>_displacement.npy`` (``(n, *S)`` float32, voxels) and
``<stem>_surface.stl|.obj``. Existing files are never replaced silently: one QMessageBox asks
once for all of them (tests monkeypatch ``QMessageBox.question``). The folder defaults to the
segmentation's source file's folder. The Jacobian determinant and displacement come from the
last prediction in the viewer state.
"""

from __future__ import annotations

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

from ..layer_metadata import layer_metadata, layer_volume
from ..pipeline import Result, export, output_paths
from ._controls import LayerChooser
from ._lifetime import Lifetime
from ._state import ViewerState
from ._worker import explain

if TYPE_CHECKING:
    import napari

__all__ = ["ExportWidget"]

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
        self.want_displacement = QCheckBox("displacement, voxels (.npy)")
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
            (self.want_displacement, "Φ(x) − x in voxels, (n, *S) float32 in array order"),
            (self.want_mesh, MESH_TIPS[True]),
            (self.mesh_format, "mesh file format"),
            (self.folder, "output folder (default: the source file's folder)"),
            (self.browse_button, "Choose the output folder"),
            (self.stem, "file names start with this, e.g. <stem>_seg.nii.gz"),
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
            result, volume, what = self._inputs()
            paths = output_paths(self._folder(), self.stem.text().strip(), what,
                                 self.mesh_format.currentText())
        except (ValueError, FileNotFoundError) as error:
            show_error(f"Export: {explain(error)}")
            self.message.setText(explain(error))
            return []
        existing = [path for path in paths.values() if path.exists()]
        replace = not existing or self._confirm_overwrite(existing)
        skipped = [] if replace else existing
        kept = [key for key, path in paths.items() if path not in skipped]
        written = []
        if kept:
            try:
                written = export(result, volume, self._folder(), self.stem.text().strip(), kept,
                                 overwrite=True, mesh_format=self.mesh_format.currentText())
            except (OSError, ValueError) as error:
                show_error(f"Export: {explain(error)}")
        text = f"wrote {len(written)} file(s) to {self._folder()}"
        if skipped:
            text += f"; kept {len(skipped)} existing file(s): {', '.join(p.name for p in skipped)}"
        self.message.setText(text)
        show_info(f"Export: {text}")
        return written

    # ------------------------------------------------------------------ internals
    def _inputs(self):
        """(result to export, volume giving the affine and header, output keys), checked."""
        folder = self._folder()
        if not folder.is_dir():
            raise FileNotFoundError(f"output folder not found: {folder}")
        boxes = (("seg", self.want_segmentation), ("jacdet", self.want_jacobian),
                 ("displacement", self.want_displacement), ("mesh", self.want_mesh))
        what = [key for key, box in boxes if box.isChecked()]
        probability = self.probability.layer()
        if self.want_probability.isChecked() and probability is not None:
            what.insert(1, "prob")
        segmentation = self.segmentation.layer()
        if {"seg", "mesh"} & set(what) and segmentation is None:
            raise ValueError("choose a segmentation (Labels) layer, or untick it and the mesh")
        record = self.state.prediction
        displacement = None if record is None else record.prediction.displacement
        if {"jacdet", "displacement"} & set(what) and displacement is None:
            raise ValueError("the Jacobian and displacement need a prediction with a flow: run "
                             "a bch/svf/stt model first, or untick them")
        if not what:
            raise ValueError("nothing to export: tick at least one output")
        volume = layer_volume(segmentation if segmentation is not None else record.source)
        result = Result.of_arrays(
            None if segmentation is None else np.asarray(segmentation.data), volume.affine,
            None if "prob" not in what else np.asarray(probability.data), displacement)
        return result, volume, what

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

