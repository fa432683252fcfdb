"""Cross-widget state: one per viewer, layers matched by identity (not name), arrays released
with their layers; the workers' endings."""

from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest
from difftt_helpers import record_of, zero_flow

from napari_difftt.layer_metadata import META_KEY
from napari_difftt.widgets._state import ViewerState

TIMEOUT_MS = 120_000


def _record(image, shape):
    """A hand-made prediction of ``image`` with a flow (zero displacement)."""
    from napari_difftt.core.inference import Prediction

    zeros = np.zeros(shape, np.float32)
    flow = np.zeros((len(shape), *shape), np.float32)
    prediction = Prediction(zeros, zeros.astype(np.uint8), flow, zero_flow(shape), zeros)
    return record_of(image, prediction)


def test_the_state_is_the_viewers_not_its_proxys(viewer):
    """Widgets get a short-lived proxy of the viewer: the state must be keyed by the viewer."""
    import wrapt

    state = ViewerState.of(wrapt.ObjectProxy(viewer))  # the proxy is dropped at once
    gc.collect()
    assert ViewerState.of(viewer) is state


def test_renaming_an_image_keeps_its_prediction_and_prior(viewer, dock, tiny_phantom, qtbot):
    image, _ = tiny_phantom
    state = ViewerState.of(viewer)
    record = _record(image, image.data.shape)
    state.set_prediction(record)
    state.set_prior({"type": "generalised_gaussian"}, source=image)
    explorer = dock("Flow explorer")
    explorer.path.setCurrentIndex(explorer.path.findData("stationary"))
    explorer.count.setValue(2)
    explorer.show_flow()  # the frames are built in a worker; the layer comes with them
    qtbot.waitUntil(lambda: explorer.job is None, timeout=TIMEOUT_MS)
    frames = explorer.layer

    image.name = "renamed"
    assert state.prediction is record
    assert state.prior_for(image) == {"type": "generalised_gaussian"}
    assert frames.metadata[META_KEY]["source_id"] == image.unique_id
    assert state.source() is image
    count = len(viewer.layers)
    explorer.show_flow()
    qtbot.waitUntil(lambda: explorer.job is None, timeout=TIMEOUT_MS)
    assert explorer.layer == frames and len(viewer.layers) == count  # found by identity

    other = viewer.add_image(np.zeros_like(image.data), name="tiny")  # the old name, another id
    assert state.prior_for(other) is None


def test_run_model_uses_the_prior_tuned_on_a_renamed_image(viewer, dock, tiny_phantom,
                                                           tiny_checkpoint, qtbot):
    from napari_difftt.core.prior import GeneralisedGaussianPrior

    image, _ = tiny_phantom
    tuned = GeneralisedGaussianPrior(3, mean=(0.2, 0.0, -0.1), beta=2.0).to_dict()
    ViewerState.of(viewer).set_prior(tuned, source=image)
    image.name = "renamed"
    widget = dock("Run model")
    widget.set_checkpoint(tiny_checkpoint)
    widget.set_device("cpu")
    widget.run()
    qtbot.waitUntil(lambda: widget.job is None, timeout=TIMEOUT_MS)
    record = ViewerState.of(viewer).prediction
    assert record.prior == tuned  # provenance: the prior used
    assert record.kind == "bch" and record.source == image.unique_id
    assert state_layers(viewer, record) == {"probability": "renamed probability",
                                            "segmentation": "renamed segmentation"}


def state_layers(viewer, record) -> dict[str, str]:
    """role → name of the record's derived layers, found by identity."""
    state = ViewerState.of(viewer)
    return {role: state.layer(uid).name for role, uid in record.layers.items()}


def test_removing_the_image_releases_its_prediction(viewer, tiny_phantom):
    image, _ = tiny_phantom
    state = ViewerState.of(viewer)
    state.set_prediction(_record(image, image.data.shape))
    state.set_prior({"type": "generalised_gaussian"}, source=image)
    displacement = weakref.ref(state.prediction.prediction.displacement)
    seen = []
    state.changed.connect(seen.append)
    viewer.layers.remove(image)
    gc.collect()
    assert state.prediction is None and state.prior is None
    assert displacement() is None  # the large arrays are gone
    assert seen == ["prediction", "prior"]


def test_an_error_after_cancel_is_reported_as_that_error(qtbot):
    from napari_difftt.widgets._worker import start_job

    seen = []

    def task(should_stop):
        yield 0, 1, "working"
        while not should_stop():
            pass
        raise OSError("disk full while stopping")

    job = start_job(task, on_error=seen.append, on_cancelled=lambda: seen.append("cancelled"))
    qtbot.waitUntil(lambda: job.worker.is_running, timeout=TIMEOUT_MS)
    job.cancel()
    qtbot.waitUntil(lambda: bool(seen), timeout=TIMEOUT_MS)
    assert isinstance(seen[0], OSError) and "disk full" in str(seen[0])


def test_abort_closes_the_task_in_its_own_thread_and_callbacks_use_no_helper_thread(
        qtbot, monkeypatch):
    import threading

    from napari_difftt.widgets._worker import callback_task, start_job

    closed_in, ran_in, progress = [], [], []

    def task(should_stop):
        try:
            while True:
                yield 0, 1, "step"
        finally:
            closed_in.append(threading.current_thread())

    job = start_job(task)
    qtbot.waitUntil(lambda: job.worker.is_running, timeout=TIMEOUT_MS)
    job.worker.quit()  # napari's abort, e.g. its window closing
    qtbot.waitUntil(lambda: not job.worker.is_running, timeout=TIMEOUT_MS)
    assert len(closed_in) == 1 and closed_in[0] is not threading.main_thread()

    def work(report, should_stop):
        ran_in.append(threading.current_thread())
        report(1, 2, "half")
        return 42

    def no_helper(self):
        raise AssertionError(f"a job started a second thread {self.name!r}")

    monkeypatch.setattr(threading.Thread, "start", no_helper)
    done = []
    job = start_job(callback_task(work), on_progress=lambda *p: progress.append(p),
                    on_done=done.append)
    qtbot.waitUntil(lambda: bool(done), timeout=TIMEOUT_MS)
    qtbot.waitUntil(lambda: bool(progress), timeout=TIMEOUT_MS)
    assert done == [42] and progress == [(1, 2, "half")]
    assert ran_in[0] is not threading.main_thread()


@pytest.mark.parametrize("release", [True, False])
def test_long_jobs_give_freed_memory_back_in_their_thread_after_the_task(qtbot, monkeypatch,
                                                                         release):
    import threading

    from napari_difftt import pipeline
    from napari_difftt.widgets._worker import callback_task, start_job

    events = []
    monkeypatch.setattr(pipeline, "release_freed_memory",
                        lambda: events.append(("released", threading.current_thread())))

    def work(report, should_stop):
        events.append(("task", threading.current_thread()))
        raise ValueError("a failing job releases too")

    seen = []
    start_job(callback_task(work), on_error=seen.append, release_memory=release)
    qtbot.waitUntil(lambda: bool(seen), timeout=TIMEOUT_MS)
    if release:
        (_, worker), (what, thread) = events
        assert what == "released" and thread is worker is not threading.main_thread()
    else:
        assert [what for what, _ in events] == ["task"]


def test_the_long_jobs_are_the_ones_that_release():
    """Run model (one volume and a folder), Train and Segment from my slices; not the previews."""
    import ast
    from pathlib import Path

    import napari_difftt.widgets as widgets

    released = set()
    for path in Path(widgets.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and getattr(node.func, "id", None) == "start_job"
                    and any(k.arg == "release_memory" and getattr(k.value, "value", False)
                            for k in node.keywords)):
                released.add(path.name)
    assert released == {"run_model.py", "train.py", "slices.py"}


@pytest.mark.parametrize("error, expected", [
    ("checkpoint", "Cannot use this checkpoint"),
    ("volume", "Cannot read the volume"),
    ("memory", "crop it"),
])
def test_explain_dispatches_on_the_error_type(error, expected):
    from napari_difftt.errors import CheckpointError, OutOfMemory, VolumeError
    from napari_difftt.widgets._worker import explain

    errors = {"checkpoint": CheckpointError("x.pt is damaged"),
              "volume": VolumeError("y.nii is 4D"), "memory": OutOfMemory("crop it")}
    assert explain(errors[error]).startswith(expected)
    # the same name on an unrelated type is not mistaken for it
    impostor = type("CheckpointError", (Exception,), {})("not ours")
    assert not explain(impostor).startswith("Cannot use this checkpoint")


def test_latest_job_runs_one_at_a_time_and_delivers_only_the_latest(qtbot):
    from napari_difftt.widgets._worker import LatestJob, callback_task

    ran, delivered, cancelled = [], [], []

    def slow(progress, should_stop):
        ran.append("slow")
        while not should_stop():
            pass
        return "slow"

    def quick(value):
        def work(progress, should_stop):
            ran.append(value)
            return value
        return callback_task(work)

    latest = LatestJob()
    latest.submit(callback_task(slow), on_done=delivered.append,
                  on_cancelled=lambda: cancelled.append("slow"))
    qtbot.waitUntil(lambda: ran == ["slow"], timeout=TIMEOUT_MS)
    latest.submit(quick("second"), on_done=delivered.append)  # waits, then is replaced
    latest.submit(quick("third"), on_done=delivered.append)
    qtbot.waitUntil(lambda: latest.idle, timeout=TIMEOUT_MS)
    assert ran == ["slow", "third"] and delivered == ["third"] and cancelled == []
    assert latest.latest == 3
    latest.submit(callback_task(slow), on_done=delivered.append)
    qtbot.waitUntil(lambda: ran[-1] == "slow", timeout=TIMEOUT_MS)
    latest.drop()
    qtbot.waitUntil(lambda: latest.idle, timeout=TIMEOUT_MS)
    assert delivered == ["third"]  # a dropped job's outcome is not delivered either


def test_latest_job_with_overlap_starts_at_once_and_stop_reports_the_cancellation(qtbot):
    from napari_difftt.errors import Cancelled
    from napari_difftt.widgets._worker import LatestJob, callback_task

    idle, cancelled, delivered = [], [], []

    def slow(progress, should_stop):
        while not should_stop():
            pass
        raise Cancelled("stopped")

    latest = LatestJob(overlap=True, on_idle=lambda: idle.append(True))
    latest.submit(callback_task(slow), on_cancelled=lambda: cancelled.append("first"))
    first = latest.job
    latest.submit(callback_task(slow), on_cancelled=lambda: cancelled.append("second"))
    second = latest.job
    assert second is not first and first.cancel_requested and not second.cancel_requested
    latest.stop()
    qtbot.waitUntil(lambda: latest.idle, timeout=TIMEOUT_MS)
    assert cancelled == ["second"] and idle == [True] and latest.job is None
    latest.submit(callback_task(lambda progress, should_stop: 5), on_done=delivered.append)
    qtbot.waitUntil(lambda: latest.idle, timeout=TIMEOUT_MS)
    assert delivered == [5] and idle == [True, True]
