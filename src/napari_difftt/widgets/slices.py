"""Segment from my slices: paint a few slices of the open image, press one button, get the organ.

Pick the image and the Labels layer painted on a few slices (magicgui combos holding the layers
themselves), the axis the slices are taken along (default: the axis napari is slicing) and a
time budget. Before anything runs the dock says what counts ("3 slices along z, 12288 voxels
count"), or what to fix, and updates as you paint. One button fine-tunes the bundled model of
the image's dimensionality (or a chosen checkpoint) on those slices for the budget and then
segments the whole volume: a new segmentation layer (never one that exists), the topology
report, and the prediction record the Flow explorer, Jacobian and Export widgets read. The same
button stops the run (the checkpoint of the steps so far is kept; nothing is added).

A dock of its own rather than a button in Run model: it needs a painted layer, an axis, a time
budget and a checkpoint folder that Run model does not have, and a progress that runs for
minutes with a Stop, which Run model's one-second Cancel does not fit (docs/ARCHITECTURE.md).
The work is :mod:`napari_difftt.fine_tune`; this widget only orchestrates.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from magicgui.widgets import ComboBox, Container, FileEdit, FloatSpinBox
from napari.utils.notifications import show_info, show_warning
from qtpy.QtWidgets import QLabel, QProgressBar, QPushButton, QVBoxLayout, QWidget

from ..fine_tune import FINE_TUNE, Finished, Step, fine_tune
from ..layer_metadata import layer_metadata, layer_volume
from ..pipeline import format_topology
from ._layers import add_derived
from ._lifetime import Lifetime
from ._painted import PaintedSlices
from ._state import ViewerState
from ._worker import Job, explain, start_job
from .run_model import SEGMENTATION_COLOURS

if TYPE_CHECKING:
    import napari

__all__ = ["SlicesWidget"]

BUTTON = {False: "Segment from my slices", True: "Stop"}
CHECKPOINTS = Path.home() / "napari-difftt-checkpoints"


class SlicesWidget(QWidget):
    """Dock widget: image, painted labels, axis, budget; what counts; one button; progress."""

    def __init__(self, napari_viewer: napari.Viewer, parent=None) -> None:
        super().__init__(parent)
        from ..core.device import list_devices

        self.viewer = napari_viewer
        self.state = ViewerState.of(napari_viewer)
        self.job: Job | None = None
        self.last: Finished | None = None
        self._running_on = None

        self.image = ComboBox(label="image", choices=self._layers("image"),
                              tooltip="the image to segment (2D or 3D)")
        self.painted = ComboBox(label="painted labels", choices=self._layers("labels"),
                                tooltip="a Labels layer of the image's shape, the organ painted "
                                "with label 1 on a few slices; 0 is background there")
        self.slice_controls = PaintedSlices(napari_viewer, lambda: self.image.value,
                                            self.update_count)
        self.axis, self.unlabelled = self.slice_controls.axis, self.slice_controls.unlabelled
        self.minutes = FloatSpinBox(label="minutes", min=0.1, max=600.0, step=0.5,
                                    value=FINE_TUNE["minutes"],
                                    tooltip="time budget of the fine-tuning")
        self.start_from = FileEdit(label="start from", mode="r", filter="*.pt", value="",
                                   tooltip="a checkpoint to fine-tune (empty: the bundled model "
                                   "of the image's dimensionality)")
        self.folder = FileEdit(label="checkpoints", mode="d", value=str(CHECKPOINTS),
                               tooltip="where the fine-tuned checkpoint is written (a new file)")
        self.device = ComboBox(label="device",
                               choices=[(info.label, info.spec) for info in list_devices()],
                               tooltip="where fine-tuning runs: auto picks a GPU when there is one")
        self.form = Container(widgets=[self.image, self.painted, self.axis, self.unlabelled,
                                       self.minutes])
        # below the button and its progress: in a short dock those stay on screen
        self.files = Container(widgets=[self.start_from, self.folder, self.device])
        for control in (*self.form, *self.files):  # a file picker's parts explain themselves too
            for part in control.native.findChildren(QWidget):
                if not part.toolTip():
                    part.setToolTip(control.tooltip)
        self.count = QLabel()
        self.count.setWordWrap(True)
        self.button = QPushButton(BUTTON[False])
        self.button.setToolTip("fine-tune on the painted slices for the time budget, then "
                               "segment the whole image; press again to stop")
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.progress.setValue(0)
        self.progress.setFormat("%p% of the budget")
        self.status = QLabel("Paint the organ (label 1) on a few slices, then press the button.")
        self.status.setWordWrap(True)
        self.topology = QLabel()
        self.topology.setWordWrap(True)
        layout = QVBoxLayout(self)
        for widget in (self.form.native, self.count, self.button, self.progress, self.status,
                       self.topology, self.files.native):
            layout.addWidget(widget)
        layout.addStretch(1)

        self.button.clicked.connect(self.toggle)
        self.image.changed.connect(self.slice_controls.follow_image)
        self.painted.changed.connect(self._watch_painting)
        events = napari_viewer.layers.events
        self._layer_events = (events.inserted, events.removed, events.reordered)
        for event in self._layer_events:
            event.connect(self._layers_changed)
        self.lifetime = Lifetime(self, self._on_closed)
        self.slice_controls.follow_image()
        self._watch_painting()

    # ---------------------------------------------------------------- public API
    @property
    def running(self) -> bool:
        return self.job is not None

    def toggle(self) -> Job | None:
        """Start, or stop the run in progress."""
        if self.running:
            self.stop()
            return self.job
        return self.start()

    def start(self) -> Job | None:
        """Check the inputs and start fine-tuning in a worker (None and a message if bad)."""
        try:
            image, painted = self._chosen()
            volume = layer_volume(image, np.asarray(image.data))
            folder = Path(str(self.folder.value)).expanduser()
            out = folder / f"difftt_slices_{time.strftime('%Y%m%d-%H%M%S')}.pt"
            run = fine_tune(volume, np.array(painted.data), self.axis.value, out,
                            checkpoint=self._start_from(), minutes=float(self.minutes.value),
                            unlabelled=self.slice_controls.unlabelled_value(),
                            device=self.device.value)
        except (ValueError, TypeError, FileNotFoundError, FileExistsError, OSError) as error:
            self._tell(explain(error))
            return None

        def task(should_stop):
            for event in run.events(should_stop):
                if isinstance(event, Step):
                    yield int(1000 * event.fraction), 1000, event
                else:
                    return event
            return None

        self._running_on = image
        self.topology.setText("")
        self.progress.setValue(0)
        self.status.setText(f"fine-tuning on {run.counted.text} for "
                            f"{self.minutes.value:g} min …")
        self.button.setText(BUTTON[True])
        live = self.lifetime.guard
        self.job = start_job(task, on_progress=live(self._on_step), on_done=live(self._on_done),
                             on_error=live(self._on_error), on_finished=live(self._on_finished),
                             release_memory=True)
        return self.job

    def stop(self) -> None:
        """Stop after the current step: the checkpoint is kept, nothing is segmented."""
        if self.job is not None:
            self.job.cancel()
            self.button.setEnabled(False)
            self.status.setText("stopping after this step …")

    def update_count(self, *_) -> str:
        """Show (and return) what counts of the painting now, or what to fix."""
        text = self.slice_controls.count(self.painted.value)
        self.count.setText(text)
        return text

    # ---------------------------------------------------------------- worker callbacks
    def _on_step(self, done: int, total: int, step: Step) -> None:
        self.progress.setValue(done)
        self.status.setText(f"step {step.step}, loss {step.loss:.4f} "
                            f"({100 * step.fraction:.0f} % of the budget)")

    def _on_done(self, finished: Finished) -> None:
        self.last = finished
        self.state.set_trained_checkpoint(finished.checkpoint)
        image = self._running_on
        if finished.stopped:
            self.status.setText(f"stopped at step {finished.steps}; nothing was added. The "
                                f"checkpoint is kept: {finished.checkpoint}")
            return
        if image not in self.viewer.layers:
            self.status.setText(f"'{image.name}' was removed meanwhile; results discarded. "
                                f"Checkpoint: {finished.checkpoint}")
            return
        result, stamp = finished.result, time.strftime("%H%M%S")
        prediction = result.prediction
        probability = add_derived(
            self.viewer, "image", prediction.probability, image,
            f"{image.name} probability from slices {stamp}", "probability",
            colormap="viridis", contrast_limits=(0.0, 1.0), opacity=0.6, blending="additive",
            visible=False)
        segmentation = add_derived(
            self.viewer, "labels", prediction.segmentation, image,
            f"{image.name} segmentation from slices {stamp}", "segmentation",
            colormap=SEGMENTATION_COLOURS)
        segmentation.contour = 2
        record = dataclasses.replace(result, source=image.unique_id)
        record.layers.update(probability=probability.unique_id,
                             segmentation=segmentation.unique_id)
        self.state.set_prediction(record)
        self.topology.setText(format_topology(result.topology) if result.topology else "")
        text = (f"done in {finished.seconds / 60:.1f} min ({finished.steps} steps on "
                f"{finished.counted.text}); checkpoint {finished.checkpoint}")
        self.status.setText(text)
        show_info(f"Segment from my slices: {text}")

    def _on_error(self, error: BaseException) -> None:
        self._tell(f"Fine-tuning failed: {explain(error)}")

    def _on_finished(self) -> None:
        self.job = None
        self.button.setText(BUTTON[False])
        self.button.setEnabled(True)

    # ---------------------------------------------------------------- inputs
    def _chosen(self):
        image, painted = self.image.value, self.painted.value
        if image is None or painted is None:
            raise ValueError("choose an image and a Labels layer painted on a few slices")
        if getattr(image, "rgb", False) or image.ndim not in (2, 3):
            raise ValueError(f"'{image.name}' must be a grey-scale 2D or 3D image")
        if painted.data.shape != image.data.shape:
            raise ValueError(f"'{painted.name}' has shape {painted.data.shape} but "
                             f"'{image.name}' has {image.data.shape}; paint a Labels layer of "
                             "the image's shape (Layers ▸ New Labels layer)")
        return image, painted

    def _start_from(self) -> Path | None:
        text = str(self.start_from.value).strip()
        return Path(text).expanduser() if text not in ("", ".") else None

    def _layers(self, kind: str):
        from napari.layers import Image, Labels

        cls = Image if kind == "image" else Labels

        def choices(_widget=None):
            return [(layer.name, layer) for layer in self.viewer.layers if isinstance(layer, cls)
                    and layer_metadata(layer).get("role") is None]
        return choices

    # ---------------------------------------------------------------- viewer events
    def _layers_changed(self, *_) -> None:
        self.form.reset_choices()
        self._watch_painting()

    def _watch_painting(self, *_) -> None:
        self.slice_controls.watch(self.painted.value)
        self.update_count()

    def _on_closed(self) -> None:
        if self.job is not None:
            self.job.cancel()
        self.slice_controls.close()
        for event in self._layer_events:
            event.disconnect(self._layers_changed)

    def _tell(self, message: str) -> None:
        show_warning(f"Segment from my slices: {message}")
        self.status.setText(message)

