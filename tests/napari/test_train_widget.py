"""Train widget: start/stop a tiny run, checkpoint kept and handed to Run model, live plot,
responsive viewer, bad input explained without touching the user's layers."""

from __future__ import annotations

import time

import numpy as np
import pytest
from qtpy.QtCore import QRect, QTimer

from napari_difftt.core.data import parse_size
from napari_difftt.widgets._plot import (
    MARGIN_BOTTOM,
    MARGIN_LEFT,
    MARGIN_RIGHT,
    MARGIN_TOP,
    LossPlot,
)
from napari_difftt.widgets._state import ViewerState


def _tiny_settings(widget, folder, iterations=40) -> None:
    widget.set_settings(iterations=iterations, patch_size=(16, 16, 16), width=4, pieces=2,
                        val_every=2, device="cpu")
    widget.checkpoint_dir.value = folder


def test_start_then_stop_keeps_a_checkpoint_and_plots(viewer, dock, tiny_phantom, tmp_path, qtbot):
    from napari_difftt.core.io import load_checkpoint

    image, labels = tiny_phantom
    originals = [np.array(layer.data, copy=True) for layer in (image, labels)]
    widget = dock("Train")
    widget.image_choice.set_layer(image)
    widget.labels_choice.set_layer(labels)
    _tiny_settings(widget, tmp_path)
    ticks = []
    timer = QTimer()
    timer.timeout.connect(lambda: ticks.append(widget.progress.value()))
    timer.start(20)
    started = time.perf_counter()

    assert widget.start() is not None
    assert widget.start_button.text() == "Stop training"
    qtbot.waitUntil(lambda: len(widget.plot.dice) >= 1, timeout=120_000)  # step 2: validation
    # one pair: the Dice is the training image's, and the plot says so
    assert widget.plot.dice_label == "Dice on the training image"
    # the validation preview is an Image layer in the image's geometry, grey and additive
    preview = viewer.layers[f"{image.name} training preview"]
    assert preview.data.shape == image.data.shape
    np.testing.assert_allclose(preview.scale, image.scale)
    assert preview.colormap.name == "gray" and preview.blending == "additive"
    widget.toggle()  # the Start button is now Stop
    qtbot.waitUntil(lambda: not widget.running, timeout=120_000)
    timer.stop()
    elapsed = time.perf_counter() - started

    event = widget.last_event
    assert event.stopped and event.step < 40
    assert widget.checkpoint.is_file()
    checkpoint = load_checkpoint(widget.checkpoint)
    assert checkpoint["model"]["kind"] == "bch" and checkpoint["model"]["width"] == 4
    assert checkpoint["training"]["step"] == event.step
    assert ViewerState.of(viewer).trained_checkpoint == widget.checkpoint  # Run model sees it
    assert len(widget.plot.losses) == event.step and len(widget.plot.dice) >= 1
    assert "stopped at step" in widget.status.text()
    assert widget.start_button.text() == "Start training"
    # the GUI kept running while the worker trained: the 20 ms timer ticked through the run (at
    # least a tenth of its ticks, on a loaded machine) and saw the progress move
    assert len(ticks) >= max(3, 0.1 * elapsed / 0.020) and len(set(ticks)) >= 2
    assert preview not in viewer.layers  # it showed an intermediate model: gone at the end
    for layer, original in zip((image, labels), originals, strict=True):
        np.testing.assert_array_equal(layer.data, original)


@pytest.mark.parametrize(
    ("make_image", "make_labels", "message"),
    [
        (lambda: np.zeros((2, 8, 8, 8), np.float32), lambda: np.zeros((2, 8, 8, 8), np.uint8),
         "4D"),
        (lambda: np.zeros((8, 8, 3), np.uint8), lambda: np.zeros((8, 8, 3), np.uint8), "RGB"),
        (lambda: np.zeros((8, 8, 8), np.float32), lambda: np.zeros((8, 8, 9), np.uint8),
         "differ in shape"),
        (lambda: np.zeros((8, 8, 8), np.float32), lambda: np.full((8, 8, 8), 3, np.uint8),
         "one structure"),
    ],
)
def test_bad_training_data_is_explained(viewer, dock, tmp_path, make_image, make_labels, message):
    image = viewer.add_image(make_image(), name="img", rgb=message == "RGB")
    labels = viewer.add_labels(make_labels(), name="lab")
    widget = dock("Train")
    widget.image_choice.set_layer(image)
    widget.labels_choice.set_layer(labels)
    _tiny_settings(widget, tmp_path)
    assert widget.start() is None
    assert message in widget.status.text() and not widget.running
    assert [layer.name for layer in viewer.layers] == ["img", "lab"]
    assert not any(tmp_path.iterdir())  # nothing written


def test_missing_folder_and_bad_patch_are_explained(viewer, dock, tiny_phantom, tmp_path):
    widget = dock("Train")
    _tiny_settings(widget, tmp_path)
    widget.set_settings(patch_size="16, 16")
    widget.progress.setRange(0, 300)  # what an earlier run left
    widget.progress.setValue(6)
    assert widget.start() is None and "2 numbers but the images are 3D" in widget.status.text()
    assert widget.progress.value() == 0 and widget.progress.text() == "not running"
    widget.set_settings(patch_size="32, 32, 32")  # larger than the 16 × 24 × 20 image
    assert widget.start() is None and not widget.running
    assert "larger than 'tiny' (16 × 24 × 20)" in widget.status.text()
    widget.source_tabs.setCurrentIndex(1)
    widget.folder.value = tmp_path / "nowhere"
    assert widget.start() is None and "imagesTr" in widget.status.text()


def test_closing_the_viewer_stops_training_and_saves(make_napari_viewer, tmp_path, qtbot):
    from napari.layers import Layer

    from napari_difftt._sample_data import phantom_layers
    from napari_difftt.core.io import load_checkpoint

    own = make_napari_viewer()
    for item in phantom_layers((16, 24, 20), 5, (2.0, 1.0, 1.5), "p"):
        own.add_layer(Layer.create(*item))
    _, widget = own.window.add_plugin_dock_widget("napari-difftt", "Train")
    _tiny_settings(widget, tmp_path, iterations=500)
    widget.val_every.value = 1000  # no periodic checkpoint: only the one written on stopping
    widget.start()
    job = widget.job
    qtbot.waitUntil(lambda: widget.progress.value() >= 1, timeout=120_000)
    own.close()
    qtbot.waitUntil(lambda: not job.worker.is_running, timeout=120_000)
    qtbot.wait(100)  # a queued signal reaching a deleted widget would fail the test here
    saved = list(tmp_path.glob("*.pt"))
    assert job.cancel_requested and len(saved) == 1
    assert 1 <= load_checkpoint(saved[0])["training"]["step"] < 500


def test_loss_plot_keeps_points_and_skips_non_finite(qtbot):
    plot = LossPlot()
    qtbot.addWidget(plot)
    plot.reset(10)
    plot.add(1, 0.7)
    plot.add(2, float("nan"), 0.5)
    plot.add(3, 0.4, float("inf"))
    assert plot.losses == [(1, 0.7), (3, 0.4)] and plot.dice == [(2, 0.5)]
    plot.resize(300, 160)
    inside = QRect(MARGIN_LEFT + 2, MARGIN_TOP + 2, 300 - MARGIN_LEFT - MARGIN_RIGHT - 4,
                   160 - MARGIN_TOP - MARGIN_BOTTOM - 4)  # the plot area, without axes or legend
    loss, dice = plot._colours["loss"], plot._colours["dice"]
    painted = plot.grab().toImage()
    assert _count(painted, inside, loss) > 20 and _count(painted, inside, dice) > 4  # line, dot
    area = inside.width() * inside.height()
    assert _count(painted, inside, plot._colours["background"]) > 0.8 * area  # the rest is empty
    plot.reset(5)
    assert plot.losses == [] and plot.total == 5
    assert _count(plot.grab().toImage(), inside, loss) == 0  # nothing plotted any more


def _count(image, rect, colour, tolerance: int = 24) -> int:
    """Pixels of ``image`` inside ``rect`` within ``tolerance`` of ``colour`` on every channel."""
    target = (colour.red(), colour.green(), colour.blue())
    count = 0
    for x in range(rect.left(), rect.right() + 1):
        for y in range(rect.top(), rect.bottom() + 1):
            pixel = image.pixelColor(x, y)
            found = (pixel.red(), pixel.green(), pixel.blue())
            count += all(abs(a - b) <= tolerance for a, b in zip(found, target, strict=True))
    return count


def test_the_settings_form_is_built_from_train_config(viewer, dock, tiny_phantom, tmp_path):
    """Every form field is a TrainConfig field of that name, at its default; Start hands the
    form's values to TrainConfig as they are (no hand-written mirror to drift)."""
    from dataclasses import fields

    from napari_difftt.core.train import DEFAULTS
    from napari_difftt.widgets.train import FORM, VALIDATE_EVERY

    widget = dock("Train")
    names = [name for column in FORM for name in column]
    assert set(names) <= {f.name for f in fields(DEFAULTS)}
    values = widget.settings.asdict()
    assert list(values) == names
    for name in names:
        expected = {"patch_size": ", ".join(map(str, DEFAULTS.patch_size)),
                    "val_every": VALIDATE_EVERY}.get(name, getattr(DEFAULTS, name))
        assert values[name] == pytest.approx(expected), name
    assert parse_size(values["patch_size"]) == DEFAULTS.patch_size
    widget.set_settings(kind="svf", lr=0.00123, seed=7, train_beta=True, prior="diag",
                        patch_size="16, 16, 16", device="cpu")
    widget.checkpoint_dir.value = tmp_path
    config, _, _ = widget._prepare()
    assert (config.kind, config.lr, config.seed, config.train_beta, config.prior) == (
        "svf", pytest.approx(0.00123), 7, True, "diag")
    assert config.patch_size == (16, 16, 16) and config.checkpoint_every == VALIDATE_EVERY


def test_two_pairs_hold_the_last_one_out_and_one_pair_validates_on_itself(viewer, dock):
    from napari.layers import Image, Labels, Layer

    from napari_difftt._sample_data import phantom_layers

    for prefix, seed in (("a", 1), ("b", 2)):
        for item in phantom_layers((16, 16, 16), seed, (1.0, 1.0, 1.0), prefix):
            viewer.add_layer(Layer.create(*item))
    images = [layer for layer in viewer.layers if isinstance(layer, Image)]
    labels = [layer for layer in viewer.layers if isinstance(layer, Labels)]
    widget = dock("Train")
    widget.image_choice.set_layer(images[0])
    widget.labels_choice.set_layer(labels[0])
    train, val, _ = widget._layer_samples()  # no pair added: the chosen layers, validated on
    assert [s.name for s in train] == [s.name for s in val] == [images[0].name]
    for image, label in zip(images, labels, strict=True):
        widget.image_choice.set_layer(image)
        widget.labels_choice.set_layer(label)
        widget.add_pair()
    train, val, preview = widget._layer_samples()
    assert [s.name for s in train] == [images[0].name] and [s.name for s in val] == [images[1].name]
    assert preview.name == images[1].name  # the preview shows the held-out image


def test_a_pair_follows_its_layers_through_a_rename(viewer, dock, tiny_phantom):
    """Pairs held layer names: a renamed layer was "closed; remove its pair"."""
    image, labels = tiny_phantom
    widget = dock("Train")
    widget.image_choice.set_layer(image)
    widget.labels_choice.set_layer(labels)
    pair = widget.add_pair()
    image.name = "scan renamed"
    train, _, preview = widget._layer_samples()
    assert preview is image and [s.name for s in train] == ["scan renamed"]
    assert str(pair).startswith("scan renamed")


def test_validation_follows_the_run_length(viewer, dock):
    widget = dock("Train")
    widget.set_settings(iterations=20)  # a short run still gets ten Dice points
    assert widget.val_every.value == 2
    widget.set_settings(iterations=5000)
    assert widget.val_every.value == 50  # VALIDATE_EVERY at most
    widget.set_settings(iterations=3)
    assert widget.val_every.value == 1


def test_folder_training_previews_in_the_volumes_own_geometry(viewer, dock, tmp_path, qtbot):
    """Folder data have no layer: the preview takes the validation file's spacing and origin
    (2.5 mm, translated), not 1 mm at 0, and leaves the viewer's extent alone."""
    import nibabel as nib
    from difftt_helpers import blob

    from napari_difftt._reader import read_layers

    root = tmp_path / "data"
    affine = np.diag([2.5, 2.5, 2.5, 1.0])
    affine[:3, 3] = (-20.0, 10.0, 5.0)
    for folder in ("imagesTr", "labelsTr"):
        (root / folder).mkdir(parents=True)
    for k, centre in enumerate(((8, 8, 8), (7, 9, 8))):
        mask = blob((16, 16, 16), centre, (4, 5, 4))
        image = mask * 1.0 + np.random.default_rng(k).normal(0, 0.1, mask.shape)
        nib.save(nib.Nifti1Image(image.astype(np.float32), affine), root / "imagesTr" /
                 f"case{k}.nii.gz")
        nib.save(nib.Nifti1Image(mask, affine), root / "labelsTr" / f"case{k}.nii.gz")
    _, expected, _ = read_layers(str(root / "imagesTr" / "case1.nii.gz"))[0]  # held out
    viewer.add_image(np.zeros((16, 16, 16), np.float32), scale=expected["scale"],
                     translate=expected["translate"], name="case1 open")
    extent = np.array(viewer.layers.extent.world)
    widget = dock("Train")
    _tiny_settings(widget, tmp_path / "ckpt", iterations=200)
    widget.source_tabs.setCurrentIndex(1)
    widget.folder.value = root
    assert widget.start() is not None
    qtbot.waitUntil(lambda: widget.preview_layer is not None, timeout=120_000)
    preview = widget.preview_layer
    np.testing.assert_allclose(preview.scale, expected["scale"])
    np.testing.assert_allclose(preview.translate, expected["translate"])
    np.testing.assert_allclose(viewer.layers.extent.world, extent)  # the z slider keeps 0–75
    widget.stop()
    qtbot.waitUntil(lambda: not widget.running, timeout=120_000)
    assert preview not in viewer.layers


@pytest.fixture
def painted_twice(viewer, tiny_phantom):
    """The tiny phantom's image, a Labels layer painted with its organ on 2 z slices, those
    slices and the dense truth."""
    from napari_difftt.core.slices import evenly_spaced_slices, paint

    image, truth = tiny_phantom
    truth = np.asarray(truth.data)
    slices = list(evenly_spaced_slices(truth, 2))
    layer = viewer.add_labels(paint(truth, slices), name="my slices")
    return image, layer, slices, truth


def test_labels_painted_on_two_slices_train_as_painted_slices(viewer, dock, painted_twice,
                                                              tmp_path, qtbot, monkeypatch):
    """Ticked "labels are painted slices": the trainer receives the painted slices as labels
    (0 background, 1 organ there) and every other slice unlabelled; the count is shown first."""
    from napari_difftt import pipeline
    from napari_difftt.core.slices import paint
    from napari_difftt.core.train import DEFAULTS

    image, layer, slices, truth = painted_twice
    received = []

    def train(config, samples, val, should_stop):  # what the trainer would be given
        received.append(samples)
        yield from ()

    monkeypatch.setattr(pipeline, "train", train)
    widget = dock("Train")
    widget.image_choice.set_layer(image)
    widget.labels_choice.set_layer(layer)
    _tiny_settings(widget, tmp_path)
    axis = widget.slice_controls.axis
    assert axis.value == 0 and not axis.enabled  # the axis the viewer slices; off by default
    widget.sparse.click()
    assert axis.enabled and widget.sparse_count.isVisibleTo(widget)
    assert widget.sparse_count.text().startswith(f"2 slices along z, {2 * 24 * 20} voxels count")
    layer.data = paint(truth, [*slices, sum(slices) // 2])  # the count follows the painting
    assert widget.sparse_count.text().startswith("3 slices along z")
    layer.data = paint(truth, slices)
    assert widget.start() is not None
    assert widget.status.text().startswith("painted slices: 'my slices': 2 slices along z")
    qtbot.waitUntil(lambda: not widget.running, timeout=60_000)
    (samples,) = received
    labels = samples[0].labels
    np.testing.assert_array_equal(labels[slices], truth[slices] != 0)
    others = np.setdiff1d(np.arange(labels.shape[0]), slices)
    assert (labels[others] == DEFAULTS.ignore_value).all()
    viewer.dims.order = (2, 0, 1)  # the viewer now slices along x: so does the option
    assert axis.value == 2


def test_painted_slices_that_cannot_train_are_refused_in_the_widget(viewer, dock, painted_twice,
                                                                    tmp_path):
    from napari_difftt.core.slices import paint, painted_slices
    from napari_difftt.errors import AnnotationError

    image, layer, slices, truth = painted_twice
    layer.data = paint(truth, slices) | paint(truth, [10], axis=2)  # along z and along x
    with pytest.raises(AnnotationError) as refused:
        painted_slices(layer.data, 0)
    widget = dock("Train")
    widget.image_choice.set_layer(image)
    widget.labels_choice.set_layer(layer)
    _tiny_settings(widget, tmp_path / "out")
    widget.sparse.click()
    assert widget.sparse_count.text() == f"Cannot train yet: {refused.value}"
    assert widget.start() is None and not widget.running
    assert widget.status.text().endswith(f"labels 'my slices': {refused.value}")
    assert "painted along two axes" in str(refused.value)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_a_2d_image_offers_rows_or_columns(viewer, dock):
    image = viewer.add_image(np.zeros((12, 10), np.float32), name="flat")
    labels = viewer.add_labels(np.zeros((12, 10), np.uint8), name="flat labels")
    widget = dock("Train")
    widget.image_choice.set_layer(image)
    widget.labels_choice.set_layer(labels)
    widget.sparse.click()
    axis = widget.slice_controls.axis
    assert [axis.native.itemText(i) for i in range(axis.native.count())] == ["rows (0)",
                                                                           "columns (1)"]
    assert axis.value == 0
    assert widget.sparse_count.text().startswith("Cannot train yet: nothing is painted")
