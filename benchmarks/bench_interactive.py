"""Interactive latency of the napari widgets, driven as a user would (real widgets, Xvfb).

    xvfb-run -a python benchmarks/bench_interactive.py [--repeats 30] [--cancel-size 160]

Prints p50/p95/max (ms) for: Shape prior value change → preview data (the displayed slice,
written at once, and the whole preview volume after it) at 64³/128³/256³; one t step of the
Flow explorer with its frames cached; Cancel → idle for Run model and Show flow at 160³; and
the largest event-loop gap (a 5 ms QTimer's lateness) while each kind of worker runs. The load
average is printed before and after: figures taken on a loaded machine are not idle figures.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30, help="changes per prior size")
    parser.add_argument("--cancel-size", type=int, default=160, help="volume edge for Cancel")
    parser.add_argument("--cancel-repeats", type=int, default=3)
    args = parser.parse_args()

    import napari

    print(f"machine: {platform.node()}, {os.cpu_count()} CPU(s), {platform.processor() or '?'}")
    print(f"load average before: {_load()}")
    viewer = napari.Viewer(show=True)
    rows: list[tuple[str, list[float]]] = []
    for edge in (64, 128, 256):
        slice_ms, volume_ms = prior_latency(viewer, edge, args.repeats)
        rows += [(f"prior change → slice shown, {edge}³", slice_ms),
                 (f"prior change → whole preview, {edge}³", volume_ms)]
    record = _predict(viewer, 64)
    rows.append(("t step, frames cached, 64³", t_step_latency(viewer, record)))
    gaps = worker_gaps(viewer, record)
    rows.append((f"Run model Cancel → idle, {args.cancel_size}³",
                 cancel_latency(viewer, args.cancel_size, args.cancel_repeats)))
    rows.append((f"Show flow Stop → idle, {args.cancel_size}³",
                 flow_cancel_latency(viewer, args.cancel_size, args.cancel_repeats)))
    print("\n| measurement | n | p50 ms | p95 ms | max ms |\n|---|---|---|---|---|")
    for name, values in rows:
        v = np.asarray(values)
        print(f"| {name} | {len(v)} | {np.percentile(v, 50):.1f} | {np.percentile(v, 95):.1f} "
              f"| {v.max():.1f} |")
    print("\n| worker | largest event-loop gap ms |\n|---|---|")
    for name, gap in gaps.items():
        print(f"| {name} | {gap:.0f} |")
    print(f"\nload average after: {_load()}")
    viewer.close()


def prior_latency(viewer, edge: int, repeats: int) -> tuple[list[float], list[float]]:
    """ms from a radius change to the displayed slice's new data, and to the whole preview."""
    from qtpy.QtWidgets import QApplication

    viewer.layers.clear()
    viewer.add_image(np.zeros((edge,) * 3, np.float32), name=f"cube{edge}")
    dock, widget = viewer.window.add_plugin_dock_widget("napari-difftt", "Shape prior")
    _settle(widget)
    box = widget.radii[2]
    slice_ms, volume_ms = [], []
    for k in range(repeats):
        start = time.perf_counter()
        box.setValue(box.value() + (1.0 if k % 2 == 0 else -1.0))
        slice_ms.append(1e3 * (time.perf_counter() - start))
        while not widget.preview_complete:
            QApplication.processEvents()
        volume_ms.append(1e3 * (time.perf_counter() - start))
        QApplication.processEvents()  # let napari draw before the next change
    viewer.window.remove_dock_widget(dock)
    return slice_ms, volume_ms


def t_step_latency(viewer, record, steps: int = 30) -> list[float]:
    """ms for one step of the t slider (set_current_step + the events it causes)."""
    from qtpy.QtWidgets import QApplication

    dock, widget = viewer.window.add_plugin_dock_widget("napari-difftt", "Flow explorer")
    layer = widget.show_flow()
    _wait(lambda: widget.job is None)
    axis = viewer.dims.ndim - layer.ndim
    times = []
    for k in range(steps):
        start = time.perf_counter()
        viewer.dims.set_current_step(axis, k % len(layer.data))
        QApplication.processEvents()
        times.append(1e3 * (time.perf_counter() - start))
    viewer.window.remove_dock_widget(dock)
    return times


def worker_gaps(viewer, record) -> dict[str, float]:
    """Largest lateness of a 5 ms timer while each worker runs (napari adding layers included)."""
    gaps = {}
    dock, widget = viewer.window.add_plugin_dock_widget("napari-difftt", "Run model")
    widget.image.set_layer(record.source)
    widget.set_device("cpu")
    gaps["Run model, 64³ (incl. adding layers)"] = _gap_during(widget.run,
                                                              lambda: widget.job is None)
    viewer.window.remove_dock_widget(dock)
    dock, widget = viewer.window.add_plugin_dock_widget("napari-difftt", "Flow explorer")
    gaps["Show flow, 64³, 17 frames"] = _gap_during(widget.show_flow, lambda: widget.job is None)
    viewer.window.remove_dock_widget(dock)
    dock, widget = viewer.window.add_plugin_dock_widget("napari-difftt", "Jacobian")
    gaps["Jacobian of Φ, 64³"] = _gap_during(widget.compute, lambda: widget.job is None)
    viewer.window.remove_dock_widget(dock)
    return gaps


def cancel_latency(viewer, edge: int, repeats: int) -> list[float]:
    """ms from Cancel (2 s into a Run model pass at edge³) until the widget is idle again."""
    viewer.layers.clear()
    viewer.add_image(np.random.default_rng(0).random((edge,) * 3, np.float32), name="big")
    dock, widget = viewer.window.add_plugin_dock_widget("napari-difftt", "Run model")
    widget.set_device("cpu")
    times = []
    for _ in range(repeats):
        widget.run()
        _wait(lambda: False, seconds=2.0)
        start = time.perf_counter()
        widget.cancel()
        _wait(lambda: widget.job is None)
        times.append(1e3 * (time.perf_counter() - start))
    viewer.window.remove_dock_widget(dock)
    return times


def flow_cancel_latency(viewer, edge: int, repeats: int) -> list[float]:
    """ms from Stop (1 s into precomputing frames of an edge³ prediction) until the worker ends."""
    from napari_difftt.core.inference import Prediction
    from napari_difftt.widgets._state import PredictionRecord, ViewerState

    viewer.layers.clear()
    image = viewer.add_image(np.zeros((edge,) * 3, np.float32), name="big")
    rng = np.random.default_rng(1)
    velocity = rng.normal(0, 1, (3, edge, edge, edge)).astype(np.float32)
    prior = np.zeros((edge,) * 3, np.float32)
    prediction = Prediction(prior, prior.astype(np.uint8), None, velocity, None, prior)
    from napari_difftt.core.inference import default_checkpoint

    ViewerState.of(viewer).set_prediction(PredictionRecord(prediction, image,
                                                           default_checkpoint(), "cpu"))
    dock, widget = viewer.window.add_plugin_dock_widget("napari-difftt", "Flow explorer")
    widget.path.setCurrentIndex(widget.path.findData("stationary"))
    times = []
    for _ in range(repeats):
        widget.show_flow()
        job = widget.job
        _wait(lambda: False, seconds=1.0)
        start = time.perf_counter()
        widget.cancel()
        _wait(lambda job=job: not job.worker.is_running)
        times.append(1e3 * (time.perf_counter() - start))
    viewer.window.remove_dock_widget(dock)
    return times


# ---------------------------------------------------------------------------------- helpers
def _predict(viewer, edge: int):
    """The bundled model's prediction of the 3D phantom, stored in the viewer state."""
    from napari.layers import Layer

    from napari_difftt._sample_data import phantom_layers
    from napari_difftt.core.inference import default_checkpoint, load_model, predict_volume
    from napari_difftt.widgets._state import PredictionRecord, ViewerState

    viewer.layers.clear()
    image, _ = (viewer.add_layer(Layer.create(*d))
                for d in phantom_layers((edge,) * 3, 2026, (1.0, 1.0, 1.0), "phantom"))
    loaded = load_model(default_checkpoint(), "cpu")
    prediction = predict_volume(loaded.model, np.asarray(image.data))
    record = PredictionRecord(prediction, image, default_checkpoint(), "cpu")
    ViewerState.of(viewer).set_prediction(record)
    return record


def _gap_during(start, done) -> float:
    from qtpy.QtCore import QTimer

    last, worst = [time.perf_counter()], [0.0]

    def tick() -> None:
        now = time.perf_counter()
        worst[0] = max(worst[0], now - last[0] - 0.005)
        last[0] = now

    timer = QTimer()
    timer.timeout.connect(tick)
    timer.start(5)
    _wait(lambda: False, seconds=0.2)
    start()
    _wait(done)
    timer.stop()
    return 1e3 * worst[0]


def _wait(condition, seconds: float = 600.0) -> None:
    from qtpy.QtWidgets import QApplication

    deadline = time.perf_counter() + seconds
    while not condition() and time.perf_counter() < deadline:
        QApplication.processEvents()
        time.sleep(0.001)


def _settle(widget) -> None:
    _wait(lambda: widget.preview_complete, seconds=30.0)


def _load() -> str:
    return ", ".join(f"{x:.2f}" for x in os.getloadavg()) + f" ({os.cpu_count()} cores)"


if __name__ == "__main__":
    main()
