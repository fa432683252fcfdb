"""Run model dock widget: segment an image with a checkpoint, in a worker, with cancel.

Outputs a probability Image layer and a segmentation Labels layer (derived from the image:
same scale/translate/affine/metadata), keeps the :class:`~core.inference.Prediction` in the
viewer's :class:`~napari_difftt.widgets._state.ViewerState` for the Flow explorer, Jacobian and
Export widgets, shows the prediction's topology report (fold fractions, central and digital;
components at face and full connectivity) and, given a ground-truth Labels layer, shows Dice,
HD, HD95, % det J ≤ 0 and connected components (:func:`core.metrics.evaluate_case`). The work is
:func:`napari_difftt.pipeline.segment`; this widget only orchestrates. Problems
(4D/RGB image, shape mismatch, bad checkpoint, CUDA out of memory, cancel) end in a
notification saying what to do; no user layer is modified or deleted.
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
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from ..layer_metadata import layer_volume
from ..pipeline import Result, format_metrics, format_topology, segment
from ._controls import LayerChooser, folder_edit
from ._layers import PREDICTION_VIEWS, add_derived, readable_in_3d, retire_derived
from ._lifetime import Lifetime
from ._shortcuts import key_text, register
from ._state import ViewerState
from ._worker import Job, callback_task, explain, start_job

if TYPE_CHECKING:
    from napari.layers import Image, Labels

    import napari

__all__ = ["RunModelWidget"]

FOLDER_OUTPUTS = ("seg", "prob")  # keys of pipeline.OUTPUTS, as `predict --probabilities`
# 0 clear, 1 magenta (the sample's ground truth is lime), as a colour cycle: napari draws a
# cycle at once, where a {value: colour} map costs ~1 s of numba compilation on first use
SEGMENTATION_COLOURS = ["transparent", "magenta"]
NO_IMAGE = "Open an image to run the model (File ▸ Open Sample ▸ napari-difftt for one)."


class RunModelWidget(QWidget):
    """Choose image, checkpoint, device (and optional ground truth); Run / Cancel."""

    def __init__(self, napari_viewer: napari.Viewer, parent=None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.state = ViewerState.of(napari_viewer)
        self.job: Job | None = None
        self._checkpoint: Path | None = None  # None: the bundled default
        self._running_on: Image | None = None  # the image layer of the current run
        self._resampled = False  # whether the current run resamples to the model's spacing

        self.image = LayerChooser(napari_viewer, "image", sources_only=True)
        self.truth = LayerChooser(napari_viewer, "labels", allow_none=True, sources_only=True)
        self.checkpoint_label = QLabel()  # the file name; the full path is its tooltip
        self.browse_button = QPushButton("Browse…")
        self.default_button = QPushButton("Default")
        self.device = QComboBox()
        self.device_used = QLabel("—")
        self.run_button = QPushButton("Run")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.resample = QCheckBox("resample to the model's spacing")
        self.folder_in = folder_edit("every NIfTI volume in this folder is segmented",
                                     placeholder="NIfTI folder")
        self.folder_out = folder_edit("outputs get the names `napari-difftt predict "
                                      "--probabilities` writes: NAME_seg.nii.gz and "
                                      "NAME_prob.nii.gz; existing ones are kept unless "
                                      "'replace existing outputs' is ticked",
                                      placeholder="output folder")
        self.overwrite = QCheckBox("replace existing outputs")
        self.folder_button = QPushButton("Run folder")
        for control, tip in (
            (self.browse_button, "Choose a checkpoint file (.pt) written by Train or the CLI"),
            (self.default_button, "Use the bundled model again"),
            (self.device, "where the model runs: auto picks a GPU when there is one"),
            (self.run_button, f"Segment the chosen image in the background ({key_text('run')})"),
            (self.cancel_button, "Stop the running prediction within about a second; "
                                 f"nothing is added to the viewer ({key_text('cancel')})"),
            (self.truth, "optional ground truth: Dice, HD and HD95 against it"),
            (self.resample, "resample the image to the model's training spacing for the "
                            "network and the result back onto the image's grid (as `napari-"
                            "difftt predict --spacing model`); its flow then lives on the "
                            "network's grid, so Flow explorer and Jacobian are off"),
            (self.overwrite, "replace outputs of the same names in the output folder"),
            (self.folder_button, "Segment the folder in the background (Cancel stops it; "
                                 "files already written are kept)"),
        ):
            control.setToolTip(tip)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.progress.setFormat("%p%")
        self.message = QLabel()
        self.message.setWordWrap(True)
        self.metrics = QLabel()
        self.metrics.setWordWrap(True)
        self.topology = QLabel()  # the prediction's folds and components (no ground truth needed)
        self.topology.setWordWrap(True)
        self._build_layout()

        self._fill_devices()
        self.browse_button.clicked.connect(self._browse)
        self.default_button.clicked.connect(lambda: self.set_checkpoint(None))
        self.image.layer_changed.connect(self._image_changed)
        self._image_changed(self.image.layer())
        self.run_button.clicked.connect(self.run)
        self.folder_button.clicked.connect(
            lambda: self.run_folder(self.folder_in.line_edit.value,
                                    self.folder_out.line_edit.value, self.overwrite.isChecked()))
        self.cancel_button.clicked.connect(self.cancel)
        self.set_checkpoint(self.state.trained_checkpoint)
        self.state.changed.connect(self._on_state)
        self.lifetime = Lifetime(self, self._on_closed)
        register(napari_viewer, self, {"run": self.run, "cancel": self.cancel})

    # ------------------------------------------------------------------ public API
    def checkpoint(self) -> Path:
        """The checkpoint that Run will use (unless a file was chosen: the bundled model of the
        chosen image's dimensionality)."""
        if self._checkpoint is not None:
            return self._checkpoint
        from ..pipeline import default_checkpoint

        layer = self.image.layer()
        return Path(default_checkpoint(2 if layer is not None and layer.ndim == 2 else 3))

    def set_checkpoint(self, path: str | Path | None) -> None:
        """Use checkpoint ``path`` (None: the bundled default)."""
        self._checkpoint = None if path is None else Path(path)
        try:
            chosen = self.checkpoint()
            shown, tip = chosen.name + (" (bundled)" if path is None else ""), str(chosen)
        except FileNotFoundError as error:
            chosen, shown, tip = None, "bundled model missing", str(error)
        self.checkpoint_label.setText(shown)
        self.checkpoint_label.setToolTip(tip)
        self.state.set_checkpoint(chosen)

    def set_device(self, spec: str) -> None:
        """Select a device by spec ("auto", "cpu", "cuda:0", "mps")."""
        index = self.device.findData(spec)
        if index < 0:
            raise ValueError(f"device {spec!r} is not offered here; choose one of "
                             f"{[self.device.itemData(i) for i in range(self.device.count())]}")
        self.device.setCurrentIndex(index)

    def run(self) -> Job | None:
        """Check the inputs and start the prediction; None (and a notification) if they are bad."""
        from napari.utils.notifications import show_error

        if self.job is not None:
            show_error("Run model: a prediction is already running; cancel it first.")
            return None
        try:
            image, truth, checkpoint = self._inputs()
        except (ValueError, FileNotFoundError, RuntimeError) as error:
            self.message.setText(explain(error))
            show_error(f"Run model: {explain(error)}")
            return None
        prior = self.state.prior_for(image)
        volume = layer_volume(image, np.asarray(image.data))
        truth_data = None if truth is None else np.asarray(truth.data)
        device = self.device.currentData()
        resample = "model" if self.resample.isChecked() else None

        source = image.unique_id

        def work(progress, should_stop) -> Result:
            return segment(volume, checkpoint, prior, truth_data, progress, should_stop,
                           device=device, resample_mm=resample, source=source)

        self._busy(True, f"running on {image.name}…")
        self._running_on = image
        self._resampled = resample is not None
        return self._start(work, self._on_done, self._on_cancelled)

    def run_folder(self, folder: str | Path, out: str | Path, overwrite: bool = False
                   ) -> Job | None:
        """Segment every NIfTI volume in ``folder`` into ``out`` (:data:`FOLDER_OUTPUTS`, the
        names ``napari-difftt predict --probabilities`` writes), with
        :func:`napari_difftt.pipeline.predict_files`; existing outputs are refused before any
        work unless ``overwrite``."""
        from napari.utils.notifications import show_error

        from ..pipeline import plan_files, predict_files

        if self.job is not None:
            show_error("Run model: a prediction is already running; cancel it first.")
            return None
        try:
            if not str(folder).strip() or not str(out).strip():
                raise ValueError("choose an input folder and an output folder")
            folder = Path(str(folder).strip()).expanduser()
            out = Path(str(out).strip()).expanduser()
            if not folder.is_dir():
                raise FileNotFoundError(f"input folder not found: {folder}")
            planned = plan_files([folder], out, FOLDER_OUTPUTS, overwrite)
            checkpoint = self.checkpoint()
        except FileExistsError as error:  # the choice the GUI offers, named as it is shown
            text = (f"{error}. Tick 'replace existing outputs' to replace them, or choose "
                    "another output folder.")
            show_error(f"Run model: {text}")
            self.message.setText(text)
            return None
        except (ValueError, OSError) as error:
            show_error(f"Run model: {explain(error)}")
            self.message.setText(explain(error))
            return None
        device = self.device.currentData()

        def work(progress, should_stop):
            return predict_files(list(planned), out, checkpoint, FOLDER_OUTPUTS, progress,
                                 should_stop, overwrite, device=device)

        self._clear_results()
        self._busy(True, f"segmenting {len(planned)} volume(s) from {folder}…")
        return self._start(work, self._on_folder_done, self._on_folder_cancelled)

    def _start(self, work, on_done, on_cancelled) -> Job:
        """Run ``work(progress, should_stop)`` in a worker, its signals guarded by the lifetime."""
        live = self.lifetime.guard  # a closed widget ignores late worker signals
        self.job = start_job(
            callback_task(work),
            on_progress=live(self._on_progress),
            on_done=live(on_done),
            on_error=live(self._on_error),
            on_cancelled=live(on_cancelled),
            on_finished=live(self._on_finished),
            release_memory=True,
        )
        return self.job

    def cancel(self) -> None:
        """Stop the running prediction at its next check; nothing is added to the viewer."""
        if self.job is not None:
            self.job.cancel()
            self.message.setText("cancelling…")

    # ------------------------------------------------------------------ worker callbacks
    def _on_progress(self, done: int, total: int, message: str) -> None:
        self.progress.setRange(0, max(int(total), 1))
        self.progress.setValue(int(done))
        if message:
            self.message.setText(message)

    def _on_done(self, result: Result) -> None:
        from napari.utils.notifications import show_info

        image = self._running_on
        prediction = result.prediction
        if image not in self.viewer.layers:
            self.message.setText(f"'{image.name}' was removed while the model ran; "
                                 "results discarded.")
            return
        probability = add_derived(
            self.viewer, "image", prediction.probability, image, f"{image.name} probability",
            "probability", colormap="viridis", contrast_limits=(0.0, 1.0), opacity=0.6,
            blending="additive", visible=False,
        )
        segmentation = add_derived(
            self.viewer, "labels", prediction.segmentation, image, f"{image.name} segmentation",
            "segmentation", opacity=1.0, colormap=SEGMENTATION_COLOURS,
        )
        # an outline in 2D, so the image and a ground truth show through
        readable_in_3d(self.viewer, segmentation, contour=2)
        retired = retire_derived(self.viewer, image, PREDICTION_VIEWS)
        result.layers.update(probability=probability.unique_id,
                             segmentation=segmentation.unique_id)
        self.state.set_prediction(result)
        self.device_used.setText(result.device)
        self.metrics.setText(format_metrics(result.metrics) if result.metrics else "")
        self.topology.setText(format_topology(result.topology) if result.topology else "")
        text = f"done in {result.seconds:.1f} s on {result.device}"
        if result.threshold != 0.5:
            text += f"; segmented where the probability > {result.threshold:g} (calibrated)"
        if self._resampled:
            text += (", resampled to the model's training spacing for the network and back "
                     "onto the image's grid")
        wanted = f"{image.name} segmentation"
        if segmentation.name != wanted:
            text += (f". '{wanted}' holds your edits, so it was kept: this result is "
                     f"'{segmentation.name}'")
        if retired:
            text += f". Removed the previous prediction's views: {', '.join(retired)}"
        if result.warning:
            from napari.utils.notifications import show_warning

            text += (f". Warning: {result.warning}. Tick 'resample to the model's spacing' to "
                     "resample here")
            show_warning(f"Run model: {result.warning}")
        self.message.setText(text)
        show_info(f"Run model: {text}")

    def _on_folder_done(self, result) -> None:
        from napari.utils.notifications import show_info

        text = (f"segmented {result.files} volume(s): {len(result.written)} file(s) in "
                f"{result.folder}")
        self.message.setText(text)
        show_info(f"Run model: {text}")

    def _on_folder_cancelled(self) -> None:
        from napari.utils.notifications import show_info

        text = "folder run cancelled; the files already written are kept"
        self.message.setText(text)
        show_info(f"Run model: {text}")

    def _on_error(self, error: BaseException) -> None:
        from napari.utils.notifications import show_error

        text = explain(error)
        self._clear_results()
        self.message.setText(text)
        show_error(f"Run model: {text}")

    def _on_cancelled(self) -> None:
        from napari.utils.notifications import show_info

        self._clear_results()
        self.message.setText("cancelled; no layer was changed")
        show_info("Run model: cancelled; no layer was changed. Press Run to start again.")

    def _on_finished(self) -> None:
        self.job = None
        self._busy(False)

    # ------------------------------------------------------------------ internals
    def _clear_results(self) -> None:
        """Forget the previous run's figures: they do not describe what is now on screen."""
        self.device_used.setText("—")
        self.metrics.setText("")
        self.topology.setText("")
        self.progress.setRange(0, 1)
        self.progress.setValue(0)

    def _inputs(self) -> tuple[Image, Labels | None, Path]:
        image = self.image.layer()
        if image is None:
            raise ValueError("choose an image layer (File ▸ Open Sample ▸ napari-difftt for one)")
        if getattr(image, "rgb", False):
            raise ValueError(f"'{image.name}' is an RGB image; the model needs a single-channel "
                             "2D or 3D scalar image (convert it to grayscale first)")
        if image.ndim not in (2, 3):
            raise ValueError(f"'{image.name}' has {image.ndim} dimensions {image.data.shape}; the "
                             "model needs a 2D or 3D image (split time points/channels first)")
        truth = self.truth.layer()
        if truth is not None and truth.data.shape != image.data.shape:
            raise ValueError(f"ground truth '{truth.name}' has shape {truth.data.shape} but "
                             f"'{image.name}' has {image.data.shape}; choose matching layers")
        checkpoint = self.checkpoint()
        if not checkpoint.is_file():
            raise FileNotFoundError(f"checkpoint not found: {checkpoint}")
        return image, truth, checkpoint

    def _image_changed(self, layer) -> None:
        self.truth.set_ndim(None if layer is None else layer.ndim)
        if self._checkpoint is None:  # the bundled model follows the image: 2D or 3D
            self.set_checkpoint(None)
        if self.job is None:  # the last message was about another image (or none)
            self.run_button.setEnabled(layer is not None)
            self.message.setText(NO_IMAGE if layer is None else "")

    def _busy(self, busy: bool, text: str = "") -> None:
        self.run_button.setEnabled(not busy and self.image.layer() is not None)
        self.folder_button.setEnabled(not busy)
        self.cancel_button.setEnabled(busy)
        if busy:
            self.progress.setRange(0, 0)  # indeterminate until the first report
            self.message.setText(text)
        elif self.progress.maximum() == 0:
            self.progress.setRange(0, 1)

    def _fill_devices(self) -> None:
        from ..core.device import list_devices

        self.device.clear()
        for info in list_devices():
            self.device.addItem(info.label, info.spec)

    def _browse(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Choose a napari-difftt checkpoint", "",
                                              "Checkpoints (*.pt *.pth);;All files (*)")
        if path:
            self.set_checkpoint(path)

    def _on_state(self, field: str) -> None:
        if field == "trained_checkpoint" and self.state.trained_checkpoint is not None:
            self.set_checkpoint(self.state.trained_checkpoint)

    def _on_closed(self) -> None:
        if self.job is not None:
            self.job.cancel()
        self.state.changed.disconnect(self._on_state)

    def _build_layout(self) -> None:
        form = QFormLayout()
        form.addRow("image", self.image)
        form.addRow("checkpoint", self.checkpoint_label)
        row = QHBoxLayout()
        row.addWidget(self.browse_button)
        row.addWidget(self.default_button)
        form.addRow("", row)
        form.addRow("device", self.device)
        form.addRow("used", self.device_used)
        form.addRow("ground truth", self.truth)
        form.addRow(self.resample)
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.cancel_button)
        batch = QGroupBox("folder of NIfTI volumes")
        batch_form = QFormLayout(batch)
        batch_form.addRow("input", self.folder_in.native)
        batch_form.addRow("output", self.folder_out.native)
        batch_form.addRow(self.overwrite)
        batch_form.addRow(self.folder_button)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addWidget(self.progress)  # beside Run: on screen in a short dock
        layout.addWidget(self.message)
        layout.addWidget(self.topology)
        layout.addWidget(self.metrics)
        layout.addWidget(batch)
        layout.addStretch(1)

