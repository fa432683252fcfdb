"""Interactive latency of the napari widgets, driven as a user would (real widgets, Xvfb).

    xvfb-run -a python benchmarks/bench_interactive.py [--repeats 30] [--cancel-size 160]

Prints p50/p95/max (ms) for: Shape prior value change → preview data (the displayed slice,
written at once, and the whole preview volume after it) at 64³/128³/256³; one t step of the
Flow explorer with its frames cached; Cancel → idle for Run model and Show flow at 160³; and,
while each kind of worker runs (inference, frames, Jacobian, training), the largest event-loop
gap (a 5 ms QTimer's lateness), split into napari's own layer creation (time inside
``viewer.add_*``) and the rest, with the longest stretch of plugin code on the GUI thread (the
start call and each worker callback, less the layer creation inside it). The load average is
printed before and after: figures taken on a loaded machine are not idle figures.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import time
from dataclasses import dataclass

import numpy as np

from napari_difftt.widgets._state import ViewerState

PARTS = ["prior", "step", "gaps", "cancel"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30, help="changes per prior size")
    parser.add_argument("--cancel-size", type=int, default=160, help="volume edge for Cancel")
    parser.add_argument("--cancel-repeats", type=int, default=3)
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=PARTS,
                        help="what to measure (default: all)")
    args = parser.parse_args()

    import napari

    print(f"machine: {platform.node()}, {os.cpu_count()} CPU(s), {platform.processor() or '?'}")
    print(f"load average before: {_load()}")
    viewer = napari.Viewer(show=True)
    rows: list[tuple[str, list[float]]] = []
    gaps: dict[str, Gaps] = {}
    if "prior" in args.parts:
        for edge in (64, 128, 256):
            slice_ms, volume_ms = prior_latency(viewer, edge, args.repeats)
            rows += [(f"prior change → slice shown, {edge}³", slice_ms),
                     (f"prior change → whole preview, {edge}³", volume_ms)]
    if "step" in args.parts or "gaps" in args.parts:
        record = _predict(viewer, 64)
        if "step" in args.parts:
            rows.append(("t step, frames cached, 64³", t_step_latency(viewer, record)))
        if "gaps" in args.parts:
            gaps = worker_gaps(viewer, record)
    if "cancel" in args.parts:
        rows.append((f"Run model Cancel → idle, {args.cancel_size}³",
                     cancel_latency(viewer, args.cancel_size, args.cancel_repeats)))
        rows.append((f"Show flow Stop → idle, {args.cancel_size}³",
                     flow_cancel_latency(viewer, args.cancel_size, args.cancel_repeats)))
    if rows:
        print("\n| measurement | n | p50 ms | p95 ms | max ms |\n|---|---|---|---|---|")
    for name, values in rows:
        v = np.asarray(values)
        print(f"| {name} | {len(v)} | {np.percentile(v, 50):.1f} | {np.percentile(v, 95):.1f} "
              f"| {v.max():.1f} |")
    if gaps:
        print("\n| worker | largest event-loop gap ms | of it napari adding layers ms | "
              "largest gap without layer creation ms | longest plugin code on the GUI thread "
              "ms | GUI thread in the largest gap |\n|---|---|---|---|---|---|")
    for name, gap in gaps.items():
        print(f"| {name} | {gap.gap:.0f} | {gap.adding_in_gap:.0f} | {gap.without_adding:.0f} "
              f"| {gap.ours:.0f} | {gap.where} |")
    print(f"\nload average after: {_load()}")
    viewer.close()


def prior_latency(viewer, edge: int, repeats: int) -> tuple[list[float], list[float]]:
    """ms from a radius change to the displayed slice's new data, and to the whole preview
    (shown: the preview layers exist, as after the first change, which also pays for napari
    adding the two layers)."""
    from qtpy.QtWidgets import QApplication

    viewer.layers.clear()
    viewer.add_image(np.zeros((edge,) * 3, np.float32), name=f"cube{edge}")
    dock, widget = viewer.window.add_plugin_dock_widget("napari-difftt", "Shape prior")
    widget.show_preview.setChecked(True)
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
    widget.show_flow()  # the frames are built in a worker; the layer comes with them
    _wait(lambda: widget.job is None)
    layer = widget.layer
    axis = viewer.dims.ndim - layer.ndim
    times = []
    for k in range(steps):
        start = time.perf_counter()
        viewer.dims.set_current_step(axis, k % len(layer.data))
        QApplication.processEvents()
        times.append(1e3 * (time.perf_counter() - start))
    viewer.window.remove_dock_widget(dock)
    return times


def worker_gaps(viewer, record) -> dict[str, Gaps]:
    """Event-loop gaps while each kind of worker runs, split as :class:`GuiClock` does."""
    import tempfile

    gaps = {}
    dock, widget = viewer.window.add_plugin_dock_widget("napari-difftt", "Run model")
    source = ViewerState.of(viewer).layer(record.source)
    widget.image.set_layer(source)
    widget.set_device("cpu")
    gaps["Run model, 64³ (adds 2 layers)"] = _gap_during(viewer, widget.run,
                                                         lambda: widget.job is None)
    viewer.window.remove_dock_widget(dock)
    from napari_difftt.widgets.flow_explorer import flow_layer

    dock, widget = viewer.window.add_plugin_dock_widget("napari-difftt", "Flow explorer")
    layer = "reuses its layer" if flow_layer(viewer, source) else "adds 1 layer"
    gaps[f"Show flow, 64³, 17 frames ({layer})"] = _gap_during(
        viewer, widget.show_flow, lambda: widget.job is None)
    viewer.window.remove_dock_widget(dock)
    dock, widget = viewer.window.add_plugin_dock_widget("napari-difftt", "Jacobian")
    gaps["Jacobian of Φ, 64³ (adds 3 layers)"] = _gap_during(viewer, widget.compute,
                                                             lambda: widget.job is None)
    viewer.window.remove_dock_widget(dock)
    dock, widget = viewer.window.add_plugin_dock_widget("napari-difftt", "Train")
    with tempfile.TemporaryDirectory() as folder:
        short_training(widget, source.name, 20, folder)
        gaps["Train, 20 steps of 32³, validation every 5 (adds 1 layer)"] = _gap_during(
            viewer, widget.start, lambda: not widget.running)
    viewer.window.remove_dock_widget(dock)
    return gaps


def cancel_latency(viewer, edge: int, repeats: int) -> list[float]:
    """ms from Cancel (2 s into a Run model pass at edge³) until the widget is idle again."""
    viewer.layers.clear()
    viewer.add_image(np.random.default_rng(0).random((edge,) * 3, np.float32), name="big")
    dock, widget = viewer.window.add_plugin_dock_widget("napari-difftt", "Run model")
    widget.set_device("cpu")
    widget.set_checkpoint(None)  # the bundled model, not the checkpoint "gaps" trained and removed
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
    from napari_difftt.core.flow.velocity import VelocitySpace
    from napari_difftt.core.inference import CoarseFlow, Prediction
    from napari_difftt.layer_metadata import layer_volume
    from napari_difftt.pipeline import Result

    viewer.layers.clear()
    image = viewer.add_image(np.zeros((edge,) * 3, np.float32), name="big")
    rng = np.random.default_rng(1)
    velocity = rng.normal(0, 1, (3, edge, edge, edge)).astype(np.float32)
    prior = np.zeros((edge,) * 3, np.float32)
    flow = CoarseFlow(velocity[None], velocity, VelocitySpace(factor=1), (edge,) * 3,
                      (slice(0, edge),) * 3)
    prediction = Prediction(prior, prior.astype(np.uint8), None, flow, prior)
    ViewerState.of(viewer).set_prediction(Result(prediction, layer_volume(image), None, "svf",
                                                 source=image.unique_id))
    dock, widget = viewer.window.add_plugin_dock_widget("napari-difftt", "Flow explorer")
    widget.path.setCurrentIndex(widget.path.findData("stationary"))
    times = []
    for _ in range(repeats):
        widget.show_flow()
        _wait(lambda: False, seconds=1.0)
        job = widget.job  # building or precomputing the frames, whichever runs now
        start = time.perf_counter()
        widget.cancel()
        _wait(lambda job=job: not job.worker.is_running)
        times.append(1e3 * (time.perf_counter() - start))
        _wait(lambda: widget.job is None)
    viewer.window.remove_dock_widget(dock)
    return times


def short_training(widget, image: str, iterations: int, folder: str) -> None:
    """Set the Train widget up for a short CPU run on ``image`` and its labels layer (width 4,
    32³ patches, validation every 5 steps), checkpoints in ``folder``."""
    widget.image_choice.set_layer(image)
    widget.labels_choice.set_layer(f"{image} labels")
    widget.set_settings(iterations=iterations, patch_size=(32, 32, 32), width=4, val_every=5,
                        device="cpu")
    widget.checkpoint_dir.value = folder


# ---------------------------------------------------------------------------------- helpers
def _predict(viewer, edge: int):
    """The bundled model's prediction of the 3D phantom, stored in the viewer state with its
    provenance (prior description, model kind) as Run model stores it."""
    from napari.layers import Layer

    from napari_difftt._sample_data import phantom_layers
    from napari_difftt.core.inference import default_checkpoint
    from napari_difftt.layer_metadata import layer_volume
    from napari_difftt.pipeline import segment
    viewer.layers.clear()
    image, _ = (viewer.add_layer(Layer.create(*d))
                for d in phantom_layers((edge,) * 3, 2026, (1.0, 1.0, 1.0), "phantom"))
    record = segment(layer_volume(image), default_checkpoint(), device="cpu",
                     source=image.unique_id)
    ViewerState.of(viewer).set_prediction(record)
    return record


@dataclass(frozen=True)
class Gaps:
    """ms: the largest event-loop gap, napari's layer creation inside it, the largest gap once
    layer creation is taken out, the longest single piece of plugin code on the GUI thread; and
    what the GUI thread was doing during the largest gap."""

    gap: float
    adding_in_gap: float
    without_adding: float
    ours: float
    where: str  # what the GUI thread was doing in the largest gap (StackSampler)


class GuiClock:
    """Times, on the GUI thread, napari adding layers (``viewer.add_*``) and the plugin's own
    code: the start call and every worker callback that ``start_job`` connects."""

    ADDERS = ("add_layer", "add_image", "add_labels", "add_vectors", "add_shapes", "add_points")

    def __init__(self, viewer) -> None:
        self.adding: list[tuple[float, float]] = []  # outermost add_* calls
        self.ours: list[float] = []  # seconds of plugin code per call, less adding inside it
        self._depth = 0
        self._patched: list[tuple[object, str, object]] = []
        self._cls = type(viewer)

    def __enter__(self) -> GuiClock:
        import sys

        from napari_difftt.widgets import _worker

        for name in self.ADDERS:
            self._patch(self._cls, name, self._timed_adder(getattr(self._cls, name)))
        timed = self._timed_start_job(_worker.start_job)
        for module in list(sys.modules.values()):
            if (module is not None and module.__name__.startswith("napari_difftt.widgets")
                    and getattr(module, "start_job", None) is _worker.start_job):
                self._patch(module, "start_job", timed)
        return self

    def __exit__(self, *_: object) -> None:
        for owner, name, original in reversed(self._patched):
            if original is None:
                delattr(owner, name)
            else:
                setattr(owner, name, original)

    def plugin(self, function):
        """``function`` timed as plugin code (napari's layer creation inside it taken out)."""
        def call(*args, **kwargs):
            start, before = time.perf_counter(), self._adding_total()
            try:
                return function(*args, **kwargs)
            finally:
                self.ours.append(time.perf_counter() - start - (self._adding_total() - before))
        return call

    def adding_within(self, start: float, end: float) -> float:
        return sum(max(0.0, min(end, b) - max(start, a)) for a, b in self.adding)

    def _adding_total(self) -> float:
        return sum(b - a for a, b in self.adding)

    def _patch(self, owner, name: str, value) -> None:
        self._patched.append((owner, name, owner.__dict__.get(name)))  # None: inherited
        setattr(owner, name, value)

    def _timed_adder(self, method):
        def add(viewer, *args, **kwargs):
            self._depth += 1
            start = time.perf_counter()
            try:
                return method(viewer, *args, **kwargs)
            finally:
                self._depth -= 1
                if self._depth == 0:
                    self.adding.append((start, time.perf_counter()))
        return add

    def _timed_start_job(self, start_job):
        def start(task, **callbacks):
            return start_job(task, **{k: v if v is None else self.plugin(v)
                                      for k, v in callbacks.items()})
        return start


def _gap_during(viewer, start, done) -> Gaps:
    from qtpy.QtCore import QTimer

    ticks = [time.perf_counter()]
    timer = QTimer()
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start(5)
    _wait(lambda: False, seconds=0.2)
    with GuiClock(viewer) as clock, StackSampler() as sampler:
        ticks.append(time.perf_counter())
        first = len(ticks) - 1
        clock.plugin(start)()
        _wait(done)
        timer.stop()
        ticks.append(time.perf_counter())
    spans = list(zip(ticks[first:-1], ticks[first + 1:], strict=True))
    lateness = [b - a - 0.005 for a, b in spans]
    worst = int(np.argmax(lateness))
    adding = [clock.adding_within(a, b) for a, b in spans]
    return Gaps(1e3 * lateness[worst], 1e3 * adding[worst],
                1e3 * max(late - add for late, add in zip(lateness, adding, strict=True)),
                1e3 * max(clock.ours, default=0.0), sampler.where(*spans[worst]))


class StackSampler:
    """Samples where the GUI thread is every 10 ms (from another thread), to say what a gap was:
    plugin code, napari/vispy, or Qt's own C++ / waiting for a core or the GIL. No sample
    at all in a gap means the sampler could not run either: another thread held the GIL.
    Python's cyclic garbage collection is off meanwhile (run on the GUI thread afterwards):
    collected in another thread, Qt objects in a cycle crashed the GL driver mid-paint."""

    def __init__(self, every: float = 0.01) -> None:
        import threading

        self.samples: list[tuple[float, str]] = []
        self._every = every
        self._main = threading.main_thread().ident
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> StackSampler:
        gc.disable()  # no collection in the sampler's thread: it could free Qt objects there
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        gc.enable()
        gc.collect()

    def where(self, start: float, end: float) -> str:
        """Share of the samples in ``[start, end]`` per kind, e.g. "napari 60 %, Qt/wait 40 %"."""
        from collections import Counter

        kinds = Counter(kind for t, kind in self.samples if start <= t <= end)
        total = sum(kinds.values())
        if not total:
            return "no sample (GIL held by a worker)"
        return ", ".join(f"{kind} {100 * n / total:.0f} %" for kind, n in kinds.most_common())

    def _run(self) -> None:
        import sys

        while not self._stop.wait(self._every):
            frame = sys._current_frames().get(self._main)
            self.samples.append((time.perf_counter(), _kind(frame)))


def _kind(frame) -> str:
    """Who runs in ``frame``'s stack: the innermost of plugin / napari code, else Qt or waiting."""
    while frame is not None:
        name = frame.f_code.co_filename
        if "napari_difftt" in name:
            return "plugin"
        if "/napari/" in name or "/vispy/" in name:
            return "napari"
        if name.endswith("bench_interactive.py"):
            return "Qt/wait"  # inside processEvents: C++ Qt, or blocked on a core or the GIL
        frame = frame.f_back
    return "Qt/wait"


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
