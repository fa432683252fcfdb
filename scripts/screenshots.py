"""The README's widget screenshots, from real runs in napari on a 1280×800 screen.

    xvfb-run -a -s "-screen 0 1280x800x24" python scripts/screenshots.py [--out docs/images]

Opens the 3D phantom and the tabbed dock (*All widgets (tabs)*), then, one tab each: tunes
the shape prior; runs the bundled model against the ground truth; shows the flow at t = ½ with
its arrows; computes det J of Φ; trains a few steps; paints the organ on 3 slices and fine-tunes
the bundled model on them for ``--minutes`` (Segment from my slices); opens Export; shows the
Help tab (the reader preference it could set lives in this run's own settings file). Torch uses
``--threads`` threads. ``--brain FOLDER`` instead opens a volume of your own — ``image.nii.gz``
and its dense ``labels.nii.gz`` (e.g. from scripts/experiments/mni_brain.py) — and takes only
the Segment-from-my-slices shot of it, ``widget_slices_brain.png``. Each
picture is ``viewer.screenshot(canvas_only=False)`` of the whole window, stored as a
256-colour PNG to keep the README light.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

SCREEN = (1280, 800)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/images"))
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--minutes", type=float, default=0.5,
                        help="fine-tuning budget of the Segment-from-my-slices shot")
    parser.add_argument("--brain", type=Path,
                        help="folder with image.nii.gz and labels.nii.gz: only its slices shot")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    settings = tempfile.TemporaryDirectory()  # napari's settings for this run only
    os.environ["NAPARI_CONFIG"] = str(Path(settings.name) / "settings.yaml")

    import torch
    from napari.settings import get_settings

    import napari

    torch.set_num_threads(args.threads)

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from bench_interactive import short_training

    get_settings().application.gui_notification_level = "error"  # no toast over the canvas

    viewer = napari.Viewer(title="napari-difftt", show=True)
    viewer.window.resize(*SCREEN)
    if args.brain is not None:
        _brain_shot(viewer, args.brain, args.minutes, args.out / "widget_slices_brain.png")
        viewer.close()
        settings.cleanup()
        return
    viewer.open_sample("napari-difftt", "phantom_3d")
    _, tabs = viewer.window.add_plugin_dock_widget("napari-difftt", "All widgets (tabs)")
    viewer.dims.set_point(0, viewer.dims.range[0].start + 0.5 * _extent(viewer, 0))
    shots = []

    prior = tabs.show_tab("Shape prior")
    prior.radii[1].setValue(prior.radii[1].value() * 1.3)
    _settle(lambda: prior.preview_complete)
    shots.append(_shot(viewer, args.out / "widget_prior.png"))
    _hide_roles(viewer, "prior", "prior_contour")  # the preview would cover the results below

    run = tabs.show_tab("Run model")
    run.truth.set_layer("phantom labels")
    run.set_device("cpu")
    run.run()
    _settle(lambda: run.job is None)
    shots.append(_shot(viewer, args.out / "widget_run_model.png"))

    flow = tabs.show_tab("Flow explorer")
    flow.show_vectors.setChecked(True)
    flow.show_flow()  # the frames are built in a worker; the layer comes with them
    _settle(lambda: flow.job is None)
    layer = flow.layer
    flow.step_t(len(layer.data) // 2)
    _settle()
    shots.append(_shot(viewer, args.out / "widget_flow_explorer.png"))
    for item in (layer, flow.vectors):
        item.visible = False

    jacobian = tabs.show_tab("Jacobian")
    jacobian.compute()
    _settle(lambda: jacobian.job is None)
    shots.append(_shot(viewer, args.out / "widget_jacobian.png"))
    _hide_roles(viewer, "jacobian", "deformed_grid", "folds")

    train = tabs.show_tab("Train")
    with tempfile.TemporaryDirectory() as folder:
        short_training(train, "phantom", 30, folder)
        train.start()
        _settle(lambda: not train.running)
        shots.append(_shot(viewer, args.out / "widget_train.png"))  # its preview is gone

        shots.append(_slices_shot(viewer, tabs, folder, args.minutes,
                                  args.out / "widget_slices.png", "phantom", "phantom labels"))

    tabs.show_tab("Export")
    shots.append(_shot(viewer, args.out / "widget_export.png"))
    tabs.show_tab("Help")
    shots.append(_shot(viewer, args.out / "widget_help.png"))
    viewer.close()
    settings.cleanup()
    for path in shots:
        print(f"{path} ({path.stat().st_size // 1024} KiB)")


def _shot(viewer, path: Path) -> Path:
    from PIL import Image

    _settle()
    viewer.reset_view()
    _settle()
    Image.fromarray(viewer.screenshot(canvas_only=False)).convert("RGB").quantize(256).save(
        path, optimize=True)
    return path


def _brain_shot(viewer, brain: Path, minutes: float, path: Path) -> None:
    """Open ``brain``'s image and labels through the plugin's reader, take the slices shot."""
    viewer.open([str(brain / "image.nii.gz"), str(brain / "labels.nii.gz")],
                plugin="napari-difftt", stack=False)
    image, labels = (layer.name for layer in viewer.layers)
    _, tabs = viewer.window.add_plugin_dock_widget("napari-difftt", "All widgets (tabs)")
    with tempfile.TemporaryDirectory() as folder:
        print(f"{_slices_shot(viewer, tabs, folder, minutes, path, image, labels)}")


def _slices_shot(viewer, tabs, folder: str, minutes: float, path: Path, image: str,
                 truth: str) -> Path:
    """Paint the organ of the Labels layer ``truth`` on 3 z slices, fine-tune the bundled
    model on them and the Image layer ``image`` for ``minutes``, show the result."""
    import numpy as np

    from napari_difftt.core.slices import evenly_spaced_slices, paint

    _hide_roles(viewer, "probability", "segmentation")  # Run model's result
    truth = viewer.layers[truth]
    truth.visible = False
    mask = np.asarray(truth.data)
    painted = viewer.add_labels(paint(mask, evenly_spaced_slices(mask, 3)), name="my slices",
                                scale=truth.scale, translate=truth.translate,
                                units=truth.units, opacity=0.5)
    viewer.dims.set_point(0, float(painted.data_to_world((evenly_spaced_slices(mask, 3)[1],
                                                          0, 0))[0]))
    slices = tabs.show_tab("Segment from my slices")
    slices.image.value = viewer.layers[image]
    slices.painted.value = painted
    slices.minutes.value = minutes
    slices.device.value = "cpu"
    slices.folder.value = folder
    slices.start()
    _settle(lambda: not slices.running)
    painted.visible = False  # the result's contour over the image, not the paint
    tabs.currentWidget().ensureWidgetVisible(slices.topology)  # the report, below the fold
    return _shot(viewer, path)


def _hide_roles(viewer, *roles: str) -> None:
    from napari_difftt.layer_metadata import layer_metadata

    for layer in viewer.layers:
        if layer_metadata(layer).get("role") in roles:
            layer.visible = False


def _extent(viewer, axis: int) -> float:
    world = viewer.dims.range[axis]
    return world.stop - world.start


def _settle(done=lambda: True, seconds: float = 900.0) -> None:
    """Run Qt's event loop until ``done()`` (checked every 0.1 s) or ``seconds`` pass, then let
    napari draw. A real event loop, as a user's napari runs: polling processEvents() instead
    cost a fine-tune in the dock a quarter of its steps (docs/PERFORMANCE.md)."""
    from qtpy.QtCore import QEventLoop, QTimer
    from qtpy.QtWidgets import QApplication

    deadline = time.perf_counter() + seconds
    loop = QEventLoop()
    timer = QTimer()
    timer.timeout.connect(lambda: (done() or time.perf_counter() > deadline) and loop.quit())
    timer.start(100)
    if not done():
        loop.exec_()
    timer.stop()
    for _ in range(20):  # let napari draw
        QApplication.processEvents()
        time.sleep(0.02)


if __name__ == "__main__":
    main()
