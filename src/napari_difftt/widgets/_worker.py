"""Run long core work (inference, training, frames) off the GUI thread, with progress and cancel.

:func:`start_job` runs a *generator* task in napari's ``thread_worker`` machinery: the task gets
``should_stop`` and yields ``(done, total, message)`` progress tuples; its return value is the
result. :func:`callback_task` adapts a callback-style core function
(``fn(progress, should_stop)``, e.g. ``core.inference.predict_volume``) into such a generator.

Cancel sets a flag that the core polls (``should_stop``; the core raises ``Cancelled`` or stops
after saving). Exceptions never escape the worker thread as such (superqt swallows a
``RuntimeError`` — CUDA out-of-memory is one — as "worker deleted"): every outcome comes back
through ``returned`` and is dispatched on the main thread. ``torch.cuda.empty_cache()`` runs in
``finally`` in the worker.

A worker must never touch, from its thread:

* napari layers or the viewer (adding, removing, setting ``.data``, ``.metadata``, ...);
* Qt widgets, QTimer, QMessageBox, or the vispy canvas;
* :class:`~napari_difftt.widgets._state.ViewerState` (it emits signals widgets react to);
* napari notifications.

Give it plain numpy arrays, paths and configs copied before the start; take results back in
``on_done`` (main thread) and create layers there.
"""

from __future__ import annotations

import queue
import sys
import threading
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

__all__ = ["Job", "Outcome", "callback_task", "explain", "start_job"]

Progress = tuple[int, int, str]  # (done, total, message)
ShouldStop = Callable[[], bool]
Task = Callable[[ShouldStop], Generator[Progress, None, Any]]


@dataclass(frozen=True)
class Outcome:
    """How a job ended: its value, or the error it raised, or that it was cancelled."""

    value: Any = None
    error: BaseException | None = None
    cancelled: bool = False


class Job:
    """A running task: the napari worker (signals ``yielded``, ``returned``, ``finished``) and
    its stop flag."""

    def __init__(self, worker, stop: threading.Event) -> None:
        self.worker = worker
        self._stop = stop

    def cancel(self) -> None:
        """Ask the task to stop at its next check (it reports back as cancelled)."""
        self._stop.set()

    @property
    def cancel_requested(self) -> bool:
        return self._stop.is_set()


def start_job(
    task: Task,
    *,
    on_progress: Callable[[int, int, str], None] | None = None,
    on_done: Callable[[Any], None] | None = None,
    on_error: Callable[[BaseException], None] | None = None,
    on_cancelled: Callable[[], None] | None = None,
    on_finished: Callable[[], None] | None = None,
) -> Job:
    """Start ``task`` in a worker thread; the callbacks run on the main (GUI) thread.

    ``on_progress(done, total, message)`` per yielded tuple; then exactly one of
    ``on_done(value)``, ``on_error(error)`` (default: a napari error notification from
    :func:`explain`) or ``on_cancelled()``; then ``on_finished()`` whatever happened.
    """
    from napari.qt.threading import create_worker

    stop = threading.Event()
    worker = create_worker(_guarded, task, stop, _start_thread=False)

    def dispatch(outcome: Outcome) -> None:
        if outcome.cancelled:
            if on_cancelled is not None:
                on_cancelled()
        elif outcome.error is not None:
            if on_error is not None:
                on_error(outcome.error)
            else:
                from napari.utils.notifications import show_error

                show_error(explain(outcome.error))
        elif on_done is not None:
            on_done(outcome.value)

    if on_progress is not None:
        worker.yielded.connect(lambda item: on_progress(*item))
    worker.returned.connect(dispatch)
    if on_finished is not None:
        worker.finished.connect(on_finished)
    worker.start()
    return Job(worker, stop)


def callback_task(function: Callable[[Callable[[int, int, str], None], ShouldStop], Any]) -> Task:
    """Adapt ``function(progress, should_stop) -> value`` into a generator task.

    The function runs in a helper thread; its progress calls are relayed as yields.
    """

    def task(should_stop: ShouldStop) -> Generator[Progress, None, Any]:
        events: queue.SimpleQueue = queue.SimpleQueue()
        box: dict[str, Any] = {}

        def target() -> None:
            try:
                box["value"] = function(lambda d, t, m="": events.put((d, t, m)), should_stop)
            except BaseException as error:  # handed to the generator below, re-raised there
                box["error"] = error
            finally:
                events.put(None)

        thread = threading.Thread(target=target, name="napari-difftt task", daemon=True)
        thread.start()
        try:
            while (item := events.get()) is not None:
                yield item
        finally:
            thread.join()
        if "error" in box:
            raise box["error"]
        return box["value"]

    return task


def explain(error: BaseException) -> str:
    """A user-facing sentence: what happened and what to do."""
    name = type(error).__name__
    text = str(error) or name
    if name == "OutOfMemory":  # core.inference's message already says what to do
        return text
    if name == "OutOfMemoryError" or "out of memory" in text.lower():
        return (f"The GPU ran out of memory ({text.splitlines()[0]}). Choose 'cpu' in the device "
                "list, close other GPU programs, or crop the image.")
    if name == "CheckpointError":
        return f"Cannot use this checkpoint: {text}. Pick another file or the bundled default."
    if name == "VolumeError":
        return f"Cannot read the volume: {text}."
    if isinstance(error, FileNotFoundError):
        return f"{text}. Check the path."
    if isinstance(error, FileExistsError):
        return f"{text}. Choose another name or allow overwriting."
    if isinstance(error, ValueError | TypeError):
        return f"Invalid input: {text}"
    return f"{name}: {text}"


def _guarded(task: Task, stop: threading.Event) -> Generator[Progress, None, Outcome]:
    """Run the task; turn every ending into an :class:`Outcome`; free cached GPU memory."""
    try:
        value = yield from task(stop.is_set)
    except Exception as error:
        return Outcome(error=error, cancelled=stop.is_set())
    finally:
        _empty_cuda_cache()
    return Outcome(value=value)


def _empty_cuda_cache() -> None:
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
