"""Train: fit a template transformer on open Image/Labels pairs or an imagesTr/labelsTr folder.

One Start button that becomes Stop; training runs :meth:`core.train.Trainer.events` in a
generator worker (:func:`._worker.start_job`) and every step's :class:`TrainEvent` reaches the
GUI through the worker's ``yielded`` signal only (the progress slot carries the event). The loss
and validation Dice are plotted live; the validation volume's probability is refreshed in place
as an Image layer every "validate every" steps. Stop (or closing the viewer) asks the trainer to
stop after the current step, and the trainer saves its checkpoint before it ends, in the worker
thread (the GUI thread never waits for it). The settings start at :class:`TrainConfig`'s
defaults, and the data are checked and split by :mod:`core.data`. Every
checkpoint written becomes the viewer's trained model at once (:class:`ViewerState`), so Run
model can use it. Validation: with two or more pairs the last one is held out; with one, the
training volume itself is validated (the label says so).
"""

from __future__ import annotations

import time
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from napari.utils.notifications import show_info, show_warning
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QCheckBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QProgressBar,
    QPushButton,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from ..errors import AnnotationError
from ..layer_metadata import affine_kwargs
from ._controls import LayerChooser, folder_edit
from ._layers import add_derived, spacing_of
from ._lifetime import Lifetime
from ._painted import PaintedSlices
from ._plot import LossPlot
from ._state import ViewerState

if TYPE_CHECKING:
    from napari.layers import Layer

    import napari

    from ..core.train import TrainEvent

__all__ = ["TrainWidget", "layer_sample"]

PREVIEW_ROLE = "training_preview"
# the widget's own default (TrainConfig's is 0, only at the end): the live plot and preview
# need a validation, and each one a checkpoint, every so many steps
VALIDATE_EVERY = 50
# the training preview: grey and additive (0 adds nothing), half strength
PREVIEW_LOOK = {"colormap": "gray", "contrast_limits": (0.0, 1.0), "blending": "additive",
                "opacity": 0.5}
USER_ROLE = Qt.ItemDataRole.UserRole
DICE_LABELS = {True: "validation Dice", False: "Dice on the training image"}  # by held_out
# the TrainConfig fields the form offers, in two columns; the rest keep their defaults
FORM = (("kind", "iterations", "patch_size", "lr", "width", "pieces", "prior", "train_beta",
         "device", "seed", "val_every"),)  # one column: the dock stays narrow
LABELS = {"kind": "model", "lr": "learning rate", "pieces": "pieces T",
          "val_every": "validate every", "train_beta": "train β"}
OPTIONS = {  # magicgui options beyond each field's type and default (choices: at build time)
    "kind": {"tooltip": "bch: time-dependent diffeomorphic flow; svf: "
             "stationary; stt: displacement (not diffeomorphic); unet: direct segmentation"},
    "iterations": {"min": 1, "max": 1_000_000, "tooltip": "training steps (one random patch "
                   "each)"},
    "patch_size": {"tooltip": "patch size in voxels, array order: D, H, W (3D) or H, W (2D)"},
    "lr": {"min": 1e-6, "max": 1.0, "step": 1e-4, "tooltip": "Adam learning rate"},
    "width": {"min": 2, "max": 64, "tooltip": "U-Net base width (channels at full resolution)"},
    "pieces": {"min": 1, "max": 16, "tooltip": "T: velocity fields of the time-dependent flow "
               "(bch only)"},
    "prior": {"tooltip": "which prior parameters train: fixed "
              "(none), the mean, one scale, the radii (diagonal Σ) or the full covariance"},
    "train_beta": {"tooltip": "also learn the prior's shape exponent β"},
    "device": {"tooltip": "where training runs: auto picks a GPU when there is one"},
    "seed": {"min": 0, "max": 2**31 - 1, "tooltip": "random seed: the same seed and data give "
             "the same run"},
    "val_every": {"min": 1, "max": 100_000, "tooltip": "steps between validations, preview "
                  "updates and checkpoints"},
}


@dataclass(frozen=True, eq=False)
class Pair:
    """Image and labels layers chosen for training (the layers, so a rename keeps the pair)."""

    image: Layer
    labels: Layer

    def __str__(self) -> str:
        return f"{self.image.name}  ↔  {self.labels.name}"


class TrainWidget(QWidget):
    """Dock widget: training data, settings, Start/Stop, progress, live loss plot and preview."""

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.state = ViewerState.of(napari_viewer)
        self.job = None
        self.checkpoint: Path | None = None
        self.last_event: TrainEvent | None = None
        self.preview_layer: Layer | None = None
        self._preview_source: Layer | None = None
        self._started = 0.0
        self._running: dict = {}  # "held_out": whether validation uses held-out pairs
        self.counted = ""  # what counts of the painted slices, per labels layer ("" if dense)

        layout = QVBoxLayout(self)
        self.start_button = QPushButton("Start training")
        self.start_button.setToolTip("Start training in the background; press again to stop "
                                     "after the current step (a checkpoint is saved)")
        self.progress = QProgressBar()
        self._reset_progress()
        self.status = QLabel("Choose training data, then Start.")
        self.status.setWordWrap(True)
        self.status.setMinimumHeight(3 * self.status.fontMetrics().lineSpacing())
        self.plot = LossPlot(napari_viewer)
        # Start, progress and the plot first: visible without scrolling at 800 px; the data and
        # settings below them scroll
        layout.addWidget(self.start_button)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        layout.addWidget(self.plot)
        layout.addWidget(self._data_box())
        layout.addWidget(self._settings_box())
        layout.addWidget(self.summary)  # outside the box: a folded box greys what it holds
        layout.addStretch(1)
        self.start_button.clicked.connect(self.toggle)
        self.lifetime = Lifetime(self, lambda: _stop_on_close(self))

    # ---------------------------------------------------------------- layout
    def _data_box(self) -> QGroupBox:
        box = QGroupBox("training data")
        self.source_tabs = QTabWidget()
        layers = QWidget()
        self.image_choice = LayerChooser(self.viewer, "image", sources_only=True)
        self.labels_choice = LayerChooser(self.viewer, "labels", sources_only=True)
        self.pairs = QListWidget()
        self.pairs.setMaximumHeight(3 * self.pairs.fontMetrics().lineSpacing() + 8)
        self.pairs.setToolTip("With two or more pairs the last one is held out for validation")
        add, remove = QPushButton("Add pair"), QPushButton("Remove")
        add.setToolTip("Add the chosen image and labels as one training pair")
        remove.setToolTip("Remove the selected pair from the list")
        add.clicked.connect(self.add_pair)
        remove.clicked.connect(lambda: self.pairs.takeItem(self.pairs.currentRow()))
        form = QFormLayout(layers)
        form.addRow("image", self.image_choice)
        form.addRow("labels", self.labels_choice)
        row = QHBoxLayout()
        row.addWidget(add)
        row.addWidget(remove)
        form.addRow(row)
        form.addRow(self.pairs)
        self._sparse_rows(form)
        self.folder = folder_edit("A folder with imagesTr/ and labelsTr/ NIfTI files of equal "
                                  "names", label="folder",
                                  placeholder="folder holding imagesTr/ and labelsTr/")
        self.source_tabs.addTab(layers, "open layers")
        self.source_tabs.addTab(self.folder.native, "folder")
        QVBoxLayout(box).addWidget(self.source_tabs)
        return box

    def _sparse_rows(self, form: QFormLayout) -> None:
        """"labels are painted slices along …": the option, its axis and unlabelled value, and
        what counts of the chosen labels layer (updated as the user paints)."""
        self.sparse = QCheckBox("labels are painted slices")
        self.sparse.setToolTip("Tick when the labels are painted on a few slices only: slices "
                               "along the axis below that hold paint count as fully annotated "
                               "(0 = background there), every other slice as unlabelled")
        self.slice_controls = PaintedSlices(self.viewer, self.image_choice.layer,
                                            self._update_count)
        self.sparse_count = QLabel()
        self.sparse_count.setWordWrap(True)
        axis, unlabelled = self.slice_controls.axis, self.slice_controls.unlabelled
        form.addRow(self.sparse)
        form.addRow(axis.label, axis.native)
        form.addRow(unlabelled.label, unlabelled.native)
        form.addRow(self.sparse_count)
        self.sparse.toggled.connect(self._show_sparse)
        self.image_choice.layer_changed.connect(lambda _: self.slice_controls.follow_image())
        self.labels_choice.layer_changed.connect(self._watch_labels)
        self.slice_controls.follow_image()
        self._watch_labels(self.labels_choice.layer())
        self._show_sparse(False)

    def _show_sparse(self, sparse: bool) -> None:
        for control in (self.slice_controls.axis, self.slice_controls.unlabelled):
            control.enabled = sparse
        self.sparse_count.setVisible(sparse)
        self._update_count()

    def _watch_labels(self, layer) -> None:
        self.slice_controls.watch(layer)
        self._update_count()

    def _update_count(self) -> None:
        if self.sparse.isChecked():
            self.sparse_count.setText(self.slice_controls.count(self.labels_choice.layer()))

    def _painted_labels(self, layer: Layer):
        """The training labels of a Labels layer painted on slices and what counts of them
        (:meth:`PaintedSlices.labels`; AnnotationError naming the layer if it cannot train)."""
        from ..core.train.config import DEFAULTS

        try:
            return self.slice_controls.labels(np.asarray(layer.data), DEFAULTS.ignore_value)
        except AnnotationError as error:
            raise AnnotationError(f"labels {layer.name!r}: {error}") from None

    def _settings_box(self) -> QGroupBox:
        """The settings: a magicgui form built from :class:`TrainConfig`'s fields (their types
        and defaults; :data:`FORM` says which, :data:`OPTIONS` adds choices, ranges and tips)."""
        from magicgui.widgets import Container

        box = QGroupBox("settings")
        self.settings = settings_form()
        self.val_every = self.settings.val_every
        self.settings.iterations.changed.connect(self._follow_run_length)
        self._follow_run_length(self.settings.iterations.value)
        self.checkpoint_dir = folder_edit("where checkpoints are written (one file per run)",
                                          Path.home() / "napari-difftt-checkpoints",
                                          label="checkpoints")
        form = Container(widgets=[self.settings.container, self.checkpoint_dir])
        # collapsible (ticked: shown), so the tab fits a laptop screen; a summary below when folded
        self.summary = QLabel()
        self.summary.setWordWrap(True)
        box.setCheckable(True)
        box.setChecked(False)
        box.setToolTip("Tick to show every setting")
        box.toggled.connect(lambda shown: (form.native.setVisible(shown),
                                           self.summary.setVisible(not shown)))
        form.native.setVisible(False)
        self.settings.container.changed.connect(self._summarise)
        self._summarise()
        QVBoxLayout(box).addWidget(form.native)
        self.settings_box = box
        return box

    def _summarise(self, *_) -> None:
        values = self.settings.asdict()
        self.summary.setText(f"{values['kind']}, {values['iterations']} steps, patch "
                             f"{values['patch_size']}, validate every {values['val_every']}, "
                             f"{values['device']} (tick 'settings' to change)")

    def set_settings(self, **values) -> None:
        """Set form fields by their :class:`TrainConfig` name, e.g. ``iterations=20``;
        ``patch_size`` as text ("16, 16, 16") or a tuple."""
        for name, value in values.items():
            if name == "patch_size" and not isinstance(value, str):
                value = ", ".join(map(str, value))
            getattr(self.settings, name).value = value

    def _follow_run_length(self, iterations: int) -> None:
        """Validate about ten times per run (every :data:`VALIDATE_EVERY` steps at most), so a
        short run still draws a Dice curve; the user may set another cadence afterwards."""
        self.val_every.value = validation_cadence(int(iterations))

    # ---------------------------------------------------------------- public API
    @property
    def running(self) -> bool:
        return self.job is not None

    def add_pair(self) -> Pair | None:
        """Add the chosen image/labels layers to the training pairs (checked at Start)."""
        image, labels = self.image_choice.layer(), self.labels_choice.layer()
        if image is None or labels is None:
            show_warning("Train: open an Image and a Labels layer to pair them.")
            return None
        pair = Pair(image, labels)
        self.pairs.addItem(str(pair))
        self.pairs.item(self.pairs.count() - 1).setData(USER_ROLE, pair)
        return pair

    def toggle(self) -> None:
        """Start training, or stop the run in progress."""
        if self.running:
            self.stop()
        else:
            self.start()

    def start(self):
        """Check the inputs and start training in a worker; returns the job (None on bad input)."""
        from ._worker import explain, start_job

        if self.running:
            return self.job
        try:
            config, load, preview_source = self._prepare()
        except (ValueError, TypeError, FileNotFoundError) as error:
            self._reset_progress()  # no old "step 6 of 300" beside a refusal
            self._tell(f"Train: {explain(error)}")
            return None
        self.checkpoint = Path(config.checkpoint)
        self.last_event = None
        self._preview_source = preview_source
        self.plot.reset(config.iterations)
        self.progress.setRange(0, config.iterations)
        self.progress.setValue(0)
        self.progress.setFormat("step %v of %m")
        self.start_button.setText("Stop training")
        counted = f"painted slices: {self.counted}; " if self.counted else ""
        self.status.setText(f"{counted}loading data and building the model …")
        self._started = time.perf_counter()

        running = self._running = {}  # the task must not reference the widget itself

        def task(should_stop):
            from ..pipeline import train

            samples, val = load()
            check_patch(config.patch_size, samples)
            running["held_out"] = val[0] is not samples[-1]  # one pair: validated on itself
            running["preview_affine"] = val[0].affine  # the preview's geometry, from a folder
            steps = 0
            with closing(train(config, samples, val, should_stop)) as events:  # closed here
                for event in events:
                    yield event.step, event.total, event
                    steps = event.step
            return steps

        self.lifetime.watch(self)
        live = self.lifetime.guard
        self.job = start_job(task, on_progress=live(self._on_event), on_done=live(self._on_done),
                             on_error=live(self._on_error), on_finished=live(self._on_finished),
                             release_memory=True)
        return self.job

    def stop(self) -> None:
        """Stop after the current step; the trainer saves a checkpoint first."""
        if self.job is not None:
            self.job.cancel()
            self.start_button.setEnabled(False)
            self.status.setText("stopping after this step and saving a checkpoint …")

    # ---------------------------------------------------------------- inputs
    def _prepare(self):
        """Config, a loader of (train, val) samples for the worker, and the preview's layer."""
        from ..core.train.config import TrainConfig
        from ..pipeline import parse_size, split_validation

        if not str(self.checkpoint_dir.value).strip(". "):
            raise ValueError("choose a checkpoint folder")
        folder = Path(self.checkpoint_dir.value).expanduser()
        if folder.exists() and not folder.is_dir():
            raise ValueError(f"checkpoint folder {folder} is a file")
        self.counted = ""
        values = self.settings.asdict()
        kind = values["kind"]
        checkpoint = folder / f"difftt_{kind}_{time.strftime('%Y%m%d-%H%M%S')}.pt"
        if self.source_tabs.currentIndex() == 0:
            train, val, preview_source = self._layer_samples()
            ndim = train[0].image.ndim
            load = lambda: (train, val)  # noqa: E731 (already copied, no disk access)
        else:
            root = Path(self.folder.value).expanduser()
            images, labels = root / "imagesTr", root / "labelsTr"
            if not images.is_dir() or not labels.is_dir():
                raise FileNotFoundError(f"{root} must hold imagesTr/ and labelsTr/ folders")
            ndim, preview_source = None, None
            load = lambda: split_validation(_load_folder(images, labels))  # noqa: E731
        values["patch_size"] = parse_size(values["patch_size"], ndim, what="patch size")
        if self.source_tabs.currentIndex() == 0:
            check_patch(values["patch_size"], train)  # folder data: checked once loaded
        folder.mkdir(parents=True, exist_ok=True)
        config = TrainConfig(**values, checkpoint=str(checkpoint),
                             checkpoint_every=values["val_every"])
        return config, load, preview_source

    def _layer_samples(self):
        from ..pipeline import split_validation

        pairs = [self.pairs.item(i).data(USER_ROLE) for i in range(self.pairs.count())]
        if not pairs:
            image, labels = self.image_choice.layer(), self.labels_choice.layer()
            if image is None or labels is None:
                raise ValueError("open an Image and a Labels layer (or choose a folder of data)")
            pairs = [Pair(image, labels)]
        samples, counts = [], []
        for pair in pairs:
            for layer in (pair.image, pair.labels):
                if layer not in self.viewer.layers:
                    raise ValueError(f"layer {layer.name!r} was closed; remove its pair")
            labels = None
            if self.sparse.isChecked():
                labels, counted = self._painted_labels(pair.labels)
                counts.append(f"'{pair.labels.name}': {counted.text}")
            samples.append(layer_sample(pair.image, pair.labels, labels))
        self.counted = "; ".join(counts)
        if len({sample.image.ndim for sample in samples}) > 1:
            raise ValueError("training pairs mix 2D and 3D images; use one kind")
        train, val = split_validation(samples)
        preview_source = pairs[-1].image
        return train, val, preview_source

    # ---------------------------------------------------------------- worker callbacks
    def _on_event(self, step: int, total: int, event: TrainEvent) -> None:
        self.last_event = event
        if event.checkpoint is not None:
            self.checkpoint = Path(event.checkpoint)
            self.state.set_trained_checkpoint(event.checkpoint)
        if event.stopped:  # no new step: the run ends here with its checkpoint
            return
        self.progress.setValue(step)
        held_out = self._running.get("held_out", True)
        self.plot.set_dice_label(DICE_LABELS[held_out])
        self.plot.add(step, event.loss, event.val_dice)
        rate = step / max(time.perf_counter() - self._started, 1e-9)
        text = f"step {step}/{total}, loss {event.loss:.4f} ({rate:.2f} steps/s)"
        if event.val_dice is not None:
            text += f", {DICE_LABELS[held_out]} {event.val_dice:.3f}"
            if not held_out:
                text += " (one pair: nothing held out; add a second pair to validate)"
        self.status.setText(text)
        if event.preview is not None:
            self._show_preview(event.preview)

    def _show_preview(self, preview: np.ndarray) -> None:
        """Show the validation probability in the validation volume's own geometry: that of its
        layer, or (folder data) of its file's affine; grey and additive, so where the
        probability is 0 the image shows unchanged."""
        source = self._preview_source
        if source is not None and source in self.viewer.layers:
            if source.data.shape == preview.shape:
                self.preview_layer = add_derived(self.viewer, "image", preview, source,
                                                 f"{source.name} training preview",
                                                 PREVIEW_ROLE, **PREVIEW_LOOK)
                return
        if self.preview_layer is not None and self.preview_layer in self.viewer.layers:
            self.preview_layer.data = preview
            return
        affine = self._running.get("preview_affine")
        if affine is None:
            affine = np.eye(4)
        kwargs = affine_kwargs(preview, affine, "training preview", PREVIEW_ROLE)
        self.preview_layer = self.viewer.add_image(preview, **kwargs, **PREVIEW_LOOK)

    def _remove_preview(self) -> None:
        """Training ended: its preview shows an intermediate model, so it goes."""
        layer, self.preview_layer = self.preview_layer, None
        if layer is not None and layer in self.viewer.layers:
            self.viewer.layers.remove(layer)

    def _reset_progress(self) -> None:
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.progress.setFormat("not running")

    def _on_done(self, steps: int) -> None:
        event = self.last_event
        stopped = bool(event and event.stopped)
        where = f" Checkpoint: {self.checkpoint}" if self.checkpoint else ""
        what = f"stopped at step {steps}" if stopped else f"finished {steps} steps"
        message = f"Training {what}.{where} Run model can use it now."
        self.status.setText(message)
        show_info(message)

    def _on_error(self, error: BaseException) -> None:
        from ._worker import explain

        saved = ""
        if self.checkpoint is not None and self.checkpoint.is_file():
            saved = f" The last checkpoint is kept: {self.checkpoint}."
        self._tell(f"Training failed: {explain(error)}.{saved}")

    def _on_finished(self) -> None:
        self.job = None
        self.start_button.setText("Start training")
        self.start_button.setEnabled(True)
        self._remove_preview()

    def _tell(self, message: str) -> None:
        show_warning(message)
        self.status.setText(message)


def settings_form():
    """A magicgui Container of the :data:`FORM` fields of :class:`TrainConfig`: each widget
    named as the field, of the field's type, at its default (``val_every``: the widget's own
    :data:`VALIDATE_EVERY`; ``patch_size`` as text, parsed at Start)."""
    import typing

    from magicgui.widgets import Container, create_widget

    from ..core.device import list_devices
    from ..core.train.config import DEFAULTS, KINDS, PARAMETERISATIONS, TrainConfig

    hints = typing.get_type_hints(TrainConfig)
    choices = {"kind": KINDS, "prior": PARAMETERISATIONS,
               "device": [(info.label, info.spec) for info in list_devices()]}
    columns = []
    for names in FORM:
        widgets = []
        for name in names:
            value, annotation = getattr(DEFAULTS, name), hints[name]
            options = dict(OPTIONS.get(name, {}))
            if name in choices:
                options["choices"] = choices[name]
            if name == "patch_size":
                value, annotation = ", ".join(map(str, value)), str
            elif name == "val_every":
                value = VALIDATE_EVERY
            widget = create_widget(value=value, annotation=annotation, name=name,
                                   label=LABELS.get(name, name.replace("_", " ")),
                                   options=options)
            if name == "lr":
                widget.native.setDecimals(6)
                widget.value = value
            widgets.append(widget)
        columns.append(Container(widgets=widgets))
    return SettingsForm(Container(widgets=columns, layout="horizontal", labels=False))


class SettingsForm:
    """The settings form: a magicgui Container of columns, its fields reached by name
    (``form.iterations``) and read together (:meth:`asdict`), as for a flat Container."""

    def __init__(self, container) -> None:
        self.container = container
        self.fields = {widget.name: widget for column in container for widget in column}

    def __getattr__(self, name: str):
        try:
            return self.__dict__["fields"][name]
        except KeyError:
            raise AttributeError(f"the settings form has no field {name!r}") from None

    def asdict(self) -> dict:
        """``{field name: value}`` in the form's order."""
        return {name: widget.value for name, widget in self.fields.items()}


def validation_cadence(iterations: int) -> int:
    """Steps between validations for a run of ``iterations`` steps: about ten per run, at most
    every :data:`VALIDATE_EVERY` steps."""
    return max(1, min(VALIDATE_EVERY, iterations // 10))


def check_patch(patch: tuple[int, ...], samples) -> None:
    """ValueError naming the first training volume that the patch does not fit (a patch larger
    than the volume would train mostly on padding)."""
    for sample in samples:
        shape = sample.image.shape
        if any(p > s for p, s in zip(patch, shape, strict=True)):
            raise ValueError(
                f"the patch {' × '.join(map(str, patch))} is larger than '{sample.name}' "
                f"({' × '.join(map(str, shape))}); choose a patch of at most its size")


def layer_sample(image: Layer, labels: Layer, training_labels: np.ndarray | None = None):
    """A :class:`core.data.Sample` from an Image and a Labels layer (copied, normalised);
    ``training_labels`` ``(*S)`` replace the layer's data (painted slices made training labels).

    Raises ValueError naming the layer for RGB, multiscale and 4D+ images; shapes and label
    values are checked by :func:`core.data.array_sample`.
    """
    from ..core.train.config import DEFAULTS
    from ..pipeline import training_sample as sample

    if getattr(image, "rgb", False):
        raise ValueError(f"image {image.name!r} is RGB; Train needs a grey-scale 2D or 3D image")
    if image.multiscale or labels.multiscale:
        raise ValueError(f"{image.name!r}/{labels.name!r}: multiscale layers are not supported")
    if image.ndim not in (2, 3):
        raise ValueError(
            f"image {image.name!r} is {image.ndim}D; Train needs a 2D or 3D volume "
            "(split time series or channels into separate layers)"
        )
    data = labels.data if training_labels is None else training_labels
    return sample(image.data, data, spacing_of(image), image.name, DEFAULTS.ignore_value)


def _load_folder(images: Path, labels: Path) -> list:
    from ..core.train.config import DEFAULTS
    from ..pipeline import folder_samples

    return folder_samples(images, labels, DEFAULTS.ignore_value)


def _stop_on_close(widget: TrainWidget) -> None:
    """The viewer closed: abort a running job. Its worker thread closes the trainer's generator
    at the next step (GeneratorExit in ``Trainer.events``: it saves the work done so far); Qt's
    thread pool lets it finish before the application exits — nothing waits on the GUI thread.
    """
    job = widget.job
    if job is None:
        return
    job.abort()
    show_warning("Train: the viewer closed during training; the run stops after this step and "
                 f"writes its checkpoint to {widget.checkpoint}.")
