"""``napari-difftt demo``: napari with the 3D phantom, the pretrained model and every widget.

Interactive: opens napari with the sample volume and its ground truth, docks all widgets, runs
the model and prints the metrics against the phantom's labels. ``--headless --out DIR`` runs the
same pipeline without a screen and writes the segmentation (NIfTI), the metrics (JSON) and a
screenshot (PNG): napari's own, on a virtual X display (Xvfb) when one is installed, otherwise
(or with ``--montage``) a slice montage drawn with numpy/scikit-image — the output says which.
On Linux without a display, the interactive demo says so and runs the headless one.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

HELP = "open napari with the sample volume, the pretrained model and all widgets (or --headless)"

DEFAULT_OUT = "napari-difftt-demo"
STEM = "phantom"  # the segmentation is written as phantom_seg.nii.gz (pipeline.OUTPUTS)
WIDGETS = ("Shape prior", "Flow explorer", "Jacobian", "Train", "Export", "Run model")
SCREEN = (1600, 1000)
TIMEOUT_S = 600.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="model checkpoint (default: the bundled pretrained model)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    parser.add_argument("--headless", action="store_true",
                        help="no window: write the segmentation, metrics and a screenshot to --out")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"output folder for --headless (default: ./{DEFAULT_OUT})")
    parser.add_argument("--montage", action="store_true",
                        help="headless: draw a slice montage instead of a napari screenshot")


def run(args: argparse.Namespace) -> int:
    from ..pipeline import default_checkpoint

    checkpoint = Path(args.checkpoint) if args.checkpoint else default_checkpoint()
    if not checkpoint.is_file():
        raise FileNotFoundError(f"checkpoint not found: {checkpoint}")
    headless = args.headless
    if not headless and _no_screen():
        print("napari-difftt demo: no screen found (DISPLAY and WAYLAND_DISPLAY are unset); "
              "running the headless demo instead")
        headless = True
    chosen = Path(args.checkpoint) if args.checkpoint else None  # None: shown as "bundled"
    if not headless:
        return _interactive(chosen, args.device)
    out = Path(args.out or DEFAULT_OUT)
    out.mkdir(parents=True, exist_ok=True)
    if args.montage or shutil.which("Xvfb") is None:
        reason = "--montage was given" if args.montage else "Xvfb is not installed"
        print(f"napari-difftt demo: {reason}: drawing a slice montage instead of a napari "
              "screenshot")
        return _headless_montage(checkpoint, args.device, out)
    with _virtual_display() as display:
        print(f"napari-difftt demo: napari on a virtual display {display} (Xvfb)")
        return _headless_napari(chosen, args.device, out)


# ------------------------------------------------------------------------------ napari paths
def _interactive(checkpoint: Path | None, device: str) -> int:
    import napari

    _, widget = _open_demo(checkpoint, device, show=True)
    widget.state.changed.connect(
        lambda field: field == "prediction" and widget.state.prediction is not None
        and _print_metrics(widget.state.prediction))
    widget.run()
    napari.run()
    return 0


def _headless_napari(checkpoint: Path | None, device: str, out: Path) -> int:
    from qtpy.QtWidgets import QApplication

    from ..pipeline import export

    viewer, widget = _open_demo(checkpoint, device, show=True)
    try:
        if widget.run() is None:
            raise RuntimeError(f"the model could not start: {widget.message.text()}")
        deadline = time.monotonic() + TIMEOUT_S
        while widget.job is not None:
            if time.monotonic() > deadline:
                widget.cancel()
                raise RuntimeError(f"the prediction took longer than {TIMEOUT_S:.0f} s")
            QApplication.processEvents()
            time.sleep(0.02)
        result = widget.state.prediction
        if result is None:
            raise RuntimeError(f"the prediction failed: {widget.message.text()}")
        _print_metrics(result)
        written = export(result, out, STEM, ["seg"], overwrite=True)
        written.append(_write_metrics(out, result))
        for _ in range(10):  # let the dock widgets lay out before the screenshot
            QApplication.processEvents()
            time.sleep(0.05)
        screenshot = out / "demo.png"
        viewer.screenshot(path=str(screenshot), canvas_only=False)
        written.append(screenshot)
        print("napari-difftt demo: screenshot taken by napari (viewer.screenshot)")
        _print_written(written)
    finally:
        viewer.close()
    return 0


def _open_demo(checkpoint: Path | None, device: str, show: bool):
    """A viewer with the 3D phantom and every widget (``checkpoint`` None: the bundled model);
    returns (viewer, Run model widget)."""
    import napari

    from ..layer_metadata import layer_metadata

    viewer = napari.Viewer(title="napari-difftt demo", show=show)
    if show:
        viewer.window.resize(*SCREEN)
    viewer.open_sample("napari-difftt", "phantom_3d")
    widgets = {}
    for name in WIDGETS:
        try:
            dock, widgets[name] = viewer.window.add_plugin_dock_widget(
                "napari-difftt", name, tabify=bool(widgets))
        except Exception as error:  # a broken widget must not stop the demo; say which
            print(f"napari-difftt demo: could not open the {name!r} widget: {error}",
                  file=sys.stderr)
    if "Run model" not in widgets:
        raise RuntimeError("the Run model widget could not be opened")
    dock.raise_()
    widget = widgets["Run model"]
    widget.image.set_layer("phantom")
    widget.truth.set_layer("phantom labels")
    widget.set_checkpoint(checkpoint)
    widget.set_device(device if widget.device.findData(device) >= 0 else "auto")
    for layer in viewer.layers:  # the prior preview would cover the result; one click away
        if layer_metadata(layer).get("role") in ("prior", "prior_contour"):
            layer.visible = False
    viewer.layers.selection.active = viewer.layers["phantom"]
    return viewer, widget


@contextmanager
def _virtual_display():
    """Start ``Xvfb`` on a free display (it picks one: -displayfd) and point DISPLAY at it."""
    read_end, write_end = os.pipe()
    width, height = SCREEN
    process = subprocess.Popen(
        ["Xvfb", "-displayfd", str(write_end), "-screen", "0", f"{width}x{height}x24",
         "-nolisten", "tcp"],
        pass_fds=(write_end,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    os.close(write_end)
    saved = {key: os.environ.get(key) for key in ("DISPLAY", "QT_QPA_PLATFORM")}
    try:
        ready, _, _ = select.select([read_end], [], [], 20.0)
        number = os.read(read_end, 64).decode().strip() if ready else ""
        if not number:
            raise RuntimeError("Xvfb did not start within 20 s; use --montage instead")
        os.environ["DISPLAY"] = f":{number}"
        os.environ["QT_QPA_PLATFORM"] = "xcb"
        yield os.environ["DISPLAY"]
    finally:
        os.close(read_end)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()


def _no_screen() -> bool:
    return sys.platform.startswith("linux") and not (
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


# ------------------------------------------------------------------------------ montage path
def _headless_montage(checkpoint: Path, device: str, out: Path) -> int:
    """The same pipeline without Qt or napari, and a slice montage as the picture."""
    from skimage.io import imsave

    from .._sample_data import PHANTOM_3D, PHANTOM_3D_ORIGIN
    from ..core.data import make_phantom
    from ..core.io import Volume, display_affine
    from ..pipeline import export, segment

    shape, seed, spacing = PHANTOM_3D
    phantom = make_phantom(shape, seed=seed, spacing=spacing)
    volume = Volume(phantom.image, display_affine(phantom.spacing, PHANTOM_3D_ORIGIN))
    result = segment(volume, checkpoint, truth=phantom.labels, progress=_print_progress,
                     device=device)
    prediction = result.prediction
    _print_metrics(result)
    written = export(result, out, STEM, ["seg"], overwrite=True)
    written.append(_write_metrics(out, result))
    picture = out / "demo.png"
    imsave(picture, montage(phantom.image, prediction.segmentation, phantom.labels),
           check_contrast=False)
    written.append(picture)
    print("napari-difftt demo: screenshot is a slice montage (numpy/scikit-image), not napari: "
          "grey image, red = predicted boundary, green = ground-truth boundary")
    _print_written(written)
    return 0


def montage(image, segmentation, truth, slices: int = 6):
    """Axial slices side by side, boundaries drawn in colour, enlarged by :func:`montage_zoom`:
    uint8 RGB ``(zoom·(H + 4), zoom·slices·(W + 4), 3)``."""
    import numpy as np
    from skimage.segmentation import find_boundaries

    picks = np.linspace(0, image.shape[0] - 1, slices + 2)[1:-1].round().astype(int)
    low, high = np.percentile(image, (1, 99))
    tiles = []
    for z in picks:
        grey = np.clip((image[z] - low) / max(high - low, 1e-6), 0, 1)
        tile = np.repeat((grey * 255).astype(np.uint8)[..., None], 3, axis=-1)
        tile[find_boundaries(truth[z] != 0, mode="inner")] = (40, 220, 40)
        tile[find_boundaries(segmentation[z] != 0, mode="inner")] = (240, 40, 40)
        tiles.append(np.pad(tile, ((2, 2), (2, 2), (0, 0))))
    picture = np.concatenate(tiles, axis=1)
    zoom = montage_zoom(image.shape)
    return picture.repeat(zoom, axis=0).repeat(zoom, axis=1)


def montage_zoom(shape) -> int:
    """Integer up-scaling so that small volumes give a legible picture (~200 px high)."""
    return max(1, 200 // (shape[1] + 4))


# ------------------------------------------------------------------------------ reporting
def _print_metrics(result) -> None:
    from ..pipeline import format_metrics

    if result is None:
        return
    print(f"napari-difftt demo: segmented in {result.seconds:.1f} s on {result.device} with "
          f"{result.checkpoint.name}; against the phantom's ground truth:")
    for line in format_metrics(result.metrics or {}).splitlines():
        print(f"  {line}")


def _print_progress(done: int, total: int, message: str) -> None:
    print(f"  [{done}/{total}] {message}")


def _write_metrics(out: Path, result) -> Path:
    path = out / "metrics.json"
    metrics = {key: (None if value is None else float(value))
               for key, value in (result.metrics or {}).items()}
    payload = {"checkpoint": str(result.checkpoint), "device": result.device,
               "seconds": result.seconds, "metrics": metrics}
    path.write_text(json.dumps(payload, indent=2, allow_nan=True) + "\n")
    return path


def _print_written(paths) -> None:
    for path in paths:
        print(f"napari-difftt demo: wrote {path}")
