"""Export dock widget: the current prediction's files — segmentation, probability and Jacobian
determinant as NIfTI with the source image's affine and header, the displacement, and the
segmentation's surface as a mesh.

It exports the viewer's prediction record (:class:`napari_difftt.pipeline.Result`) and nothing
else: before any run it offers nothing and says why. The segmentation written is the record's
segmentation layer as it is now (the user's corrections included) while that layer exists,
else the predicted array; probability and displacement are the record's. The files are those of
``napari-difftt predict`` (one contract, :data:`napari_difftt.pipeline.OUTPUTS`, written by
:func:`napari_difftt.pipeline.export`, which checks everything before it writes anything).
Existing files are never replaced silently: one QMessageBox asks once for all of them (tests
monkeypatch ``QMessageBox.question``). The form is magicgui (check boxes, the mesh format, a
``FileEdit`` folder, the stem); the folder defaults to the source image's file's folder.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from qtpy.QtWidgets import QLabel, QMessageBox, QVBoxLayout, QWidget

from ..layer_metadata import layer_metadata
from ..pipeline import MESH_FORMATS, Result, export, output_paths
from ._controls import folder_edit
from ._lifetime import Lifetime
from ._state import ViewerState
from ._worker import explain

if TYPE_CHECKING:
    import napari

__all__ = ["ExportWidget"]

NO_PREDICTION = ("No prediction to export yet: run the model first (Run model). Export writes "
                 "a prediction's segmentation, probability, det J, displacement and surface.")
CHOICES = {  # output key → (label, tooltip)
    "seg": ("segmentation (NIfTI)", "labels 0/1 with the source's affine and header (your "
                                    "edits of the segmentation layer included)"),
    "prob": ("probability (NIfTI)", "the model's probability, float32"),
    "jacdet": ("Jacobian determinant (NIfTI)", "det ∇Φ by central differences (≤ 0: folded)"),
    "displacement": ("displacement, voxels (.npy)", "Φ(x) − x in voxels, (n, *S) float32 in "
                                                    "array order"),
    "mesh": ("surface mesh", "the segmentation's surface as a triangle mesh in world mm"),
}
FLOWLESS = "this prediction has no flow (a U-Net): no det J or displacement"
FLAT = "a 2D segmentation has no surface: the mesh needs a 3D segmentation"


class ExportWidget(QWidget):
    """Choose what to export of the current prediction, a folder and a file stem; Export."""

    def __init__(self, napari_viewer: napari.Viewer, parent=None) -> None:
        from magicgui.widgets import CheckBox, ComboBox, Container, LineEdit, PushButton

        super().__init__(parent)
        self.viewer = napari_viewer
        self.state = ViewerState.of(napari_viewer)
        self.want = {key: CheckBox(value=True, text=label, tooltip=tip)
                     for key, (label, tip) in CHOICES.items()}
        self.mesh_format = ComboBox(choices=MESH_FORMATS, value=MESH_FORMATS[0], label="mesh",
                                    tooltip="mesh file format")
        self.folder = folder_edit("output folder (default: the source file's folder)",
                                  Path.cwd(), label="folder")
        self._folder_chosen = False
        self.stem = LineEdit(value="difftt", label="file stem",
                             tooltip="file names start with this, e.g. <stem>_seg.nii.gz")
        self.export_button = PushButton(text="Export", tooltip="Write every ticked output; "
                                                               "asks once before replacing files")
        self.form = Container(widgets=[*self.want.values(), self.mesh_format, self.folder,
                                       self.stem, self.export_button])
        self.source = QLabel(NO_PREDICTION)
        self.source.setWordWrap(True)
        self.message = QLabel()
        self.message.setWordWrap(True)
        self.form.margins = (0, 0, 0, 0)  # the dock's own margins suffice: Export stays on screen
        layout = QVBoxLayout(self)
        layout.addWidget(self.source)
        layout.addWidget(self.form.native)
        layout.addWidget(self.message)
        layout.addStretch(1)
        self.export_button.changed.connect(self.export)
        self.folder.line_edit.changed.connect(self._folder_edited)
        self.state.changed.connect(self._on_state)
        self._lifetime = Lifetime(self, lambda: self.state.changed.disconnect(self._on_state))
        self._on_state("prediction")

    # ------------------------------------------------------------------ public API
    def set_output(self, folder: str | Path, stem: str) -> None:
        """Write into ``folder`` with file names starting with ``stem``."""
        self.folder.value = Path(folder)
        self._folder_chosen = True
        self.stem.value = stem

    def export(self) -> list[Path]:
        """Write every ticked output of the current prediction; returns the files written."""
        from napari.utils.notifications import show_error, show_info

        try:
            result, what = self._inputs()
            folder, stem = self._folder(), self.stem.value.strip()
            paths = output_paths(folder, stem, what, self.mesh_format.value)
        except (ValueError, FileNotFoundError) as error:
            show_error(f"Export: {explain(error)}")
            self.message.setText(explain(error))
            return []
        existing = [path for path in paths.values() if path.exists()]
        replace_them = not existing or self._confirm_overwrite(existing)
        skipped = [] if replace_them else existing
        kept = [key for key, path in paths.items() if path not in skipped]
        written: list[Path] = []
        if kept:
            try:
                written = export(result, folder, stem, kept, overwrite=True,
                                 mesh_format=self.mesh_format.value)
            except (OSError, ValueError) as error:
                text = f"{explain(error)} Nothing was written."
                show_error(f"Export: {text}")
                self.message.setText(text)
                return []
        text = f"wrote {len(written)} file(s) to {folder}"
        if skipped:
            text += f"; kept {len(skipped)} existing file(s): {', '.join(p.name for p in skipped)}"
        self.message.setText(text)
        show_info(f"Export: {text}")
        return written

    # ------------------------------------------------------------------ internals
    def _inputs(self) -> tuple[Result, list[str]]:
        """(the record to export, with the segmentation layer's current data; output keys)."""
        record = self.state.prediction
        if record is None:
            raise ValueError(NO_PREDICTION)
        folder = self._folder()
        if not folder.is_dir():
            raise FileNotFoundError(f"output folder not found: {folder}")
        what = [key for key, box in self.want.items() if box.value and box.enabled]
        if not what:
            raise ValueError("nothing to export: tick at least one output")
        layer = self.state.layer(record.layers.get("segmentation"))
        if layer is None or ("seg" not in what and "mesh" not in what):
            return record, what
        edited = np.asarray(layer.data)
        if edited.shape != record.prediction.segmentation.shape:
            raise ValueError(f"'{layer.name}' now has shape {edited.shape}, not the prediction's "
                             f"{record.prediction.segmentation.shape}")
        prediction = record.prediction._replace(segmentation=edited)
        return replace(record, prediction=prediction), what

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
        return Path(self.folder.value).expanduser()

    def _folder_edited(self, *_) -> None:
        self._folder_chosen = True

    def _on_state(self, field: str) -> None:
        """Offer what the current prediction has: its stem, its file's folder, flow outputs
        only with a flow, the mesh only in 3D; nothing before a run."""
        if field != "prediction":
            return
        record = self.state.prediction
        self.export_button.enabled = record is not None
        self.form.enabled = record is not None
        if record is None:
            self.source.setText(NO_PREDICTION)
            return
        source = self.state.source()
        name = "a removed image" if source is None else source.name
        checkpoint = "" if record.checkpoint is None else f", {record.checkpoint.name}"
        self.source.setText(f"Prediction of '{name}' ({record.kind}{checkpoint})")
        if source is not None:
            self.stem.value = source.name.replace(" ", "_")
        has_flow = record.prediction.displacement is not None
        is_3d = record.volume.array.ndim == 3
        for key, enabled, tip in (("jacdet", has_flow, FLOWLESS),
                                  ("displacement", has_flow, FLOWLESS), ("mesh", is_3d, FLAT)):
            self.want[key].enabled = enabled
            self.want[key].tooltip = CHOICES[key][1] if enabled else tip
        self.mesh_format.enabled = is_3d
        path = record.volume.path or (None if source is None else layer_metadata(source).get(
            "path"))
        if path is not None and not self._folder_chosen:
            with self.folder.line_edit.changed.blocked():
                self.folder.value = Path(path).parent
