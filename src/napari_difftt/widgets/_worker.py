"""Run long core work (inference, training, frames) off the GUI thread, with progress and cancel.

:func:`start_job` runs a *generator* task in napari's ``thread_worker`` machinery: the task gets
``should_stop`` and yields ``(done, total, message)`` progress tuples; its return value is the
result. :func:`callback_task` wraps a callback-style function (``fn(progress, should_stop)``,
e.g. :func:`napari_difftt.pipeline.segment`) so that it runs in the worker's own thread, its
progress calls emitted as the worker's ``yielded`` signal — one thread per job.

Cancel sets a flag that the core polls (``should_stop``; the core raises
:class:`~napari_difftt.errors.Cancelled` or stops after saving). Abort (:meth:`Job.abort`, and
napari's own ``quit`` when its window closes) also closes the task generator at its next yield,
*inside the worker thread*, so its ``finally`` blocks (a trainer saving its checkpoint) run
there. Exceptions never escape the worker thread as such (superqt swallows a ``RuntimeError`` —
CUDA out-of-memory is one — as "worker deleted"): every outcome comes back through ``returned``
and is dispatched on the main thread, by exception *type*; an error other than
:class:`~napari_difftt.errors.Cancelled` is reported as that error even after Cancel.
``torch.cuda.empty_cache()`` runs in ``finally`` in the worker; a job started with
``release_memory=True`` (a prediction, a training) then gives the freed CPU heap back to the
system (:func:`napari_difftt.pipeline.release_freed_memory`), so an idle viewer does not keep
the job's peak.

A worker must never touch, from its thread:

* napari layers or the viewer (adding, removing, setting ``.data``, ``.metadata``, ...);
* Qt widgets, QTimer, QMessageBox, or the vispy canvas;
* :class:`~napari_difftt.widgets._state.ViewerState` (it emits signals widgets react to);
* napari notifications.

Give it plain numpy arrays, paths and configs copied before the start; take results back in
``on_done`` (main thread) and create layers there.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Generator
from dataclasses import dataclass
from functools import cache
from typing import Any

from ..errors import Cancelled, CheckpointError, OutOfMemory, VolumeError

__all__ = ["CallbackTask", "Job", "LatestJob", "Outcome", "callback_task", "explain",
           "start_job"]

ProgressItem = tuple[int, int, str]  # (done, total, message), as a task yields it
ShouldStop = Callable[[], bool]
Task = Callable[[ShouldStop], Generator[ProgressItem, None, Any]]


@dataclass(frozen=True)
class Outcome:
    """How a job ended: its value, or the error it raised, or that it was cancelled."""

    value: Any = None
    error: BaseException | None = None
    cancelled: bool = False


@dataclass(frozen=True)
class CallbackTask:
    """A function ``function(progress, should_stop) -> value`` to run as a job."""

    function: Callable[[Callable[..., None], ShouldStop], Any]


class Job:
    """A running task: the napari worker (signals ``yielded``, ``returned``, ``finished``) and
    its stop and abort flags."""

    def __init__(self, worker, stop: threading.Event, abort: threading.Event) -> None:
        self.worker = worker
        self._stop = stop
        self._abort = abort

    def cancel(self) -> None:
        """Ask the task to stop at its next check (it reports back as cancelled)."""
        self._stop.set()

    def abort(self) -> None:
        """Cancel, and close the task generator at its next yield, in the worker thread."""
        self._stop.set()
        self._abort.set()

    @property
    def cancel_requested(self) -> bool:
        return self._stop.is_set()


def start_job(
    task: Task | CallbackTask,
    *,
    on_progress: Callable[[int, int, str], None] | None = None,
    on_done: Callable[[Any], None] | None = None,
    on_error: Callable[[BaseException], None] | None = None,
    on_cancelled: Callable[[], None] | None = None,
    on_finished: Callable[[], None] | None = None,
    release_memory: bool = False,
) -> Job:
    """Start ``task`` in a worker thread; the callbacks run on the main (GUI) thread.

    ``on_progress(done, total, message)`` per yielded tuple; then exactly one of
    ``on_done(value)``, ``on_error(error)`` (default: a napari error notification from
    :func:`explain`) or ``on_cancelled()``; then ``on_finished()`` whatever happened.
    ``release_memory``: the worker gives freed CPU memory back to the system as the task ends
    (for long jobs; 3–60 ms, and the next job faults its pages afresh).
    """
    stop, abort, relay = threading.Event(), threading.Event(), []
    worker = _worker_class()(_guarded, task, stop, abort, relay, release_memory)
    relay.append(worker.yielded.emit)  # how a callback task's progress reaches the GUI thread
    job = Job(worker, stop, abort)
    worker.abort_job = job.abort

    def dispatch(outcome: Outcome) -> None:
        if outcome.cancelled:
            if on_cancelled is not None:
                on_cancelled()
        elif outcome.error is not None:
            (on_error or _notify)(outcome.error)
        elif on_done is not None:
            on_done(outcome.value)

    if on_progress is not None:
        worker.yielded.connect(lambda item: on_progress(*item))
    worker.returned.connect(dispatch)
    if on_finished is not None:
        worker.finished.connect(on_finished)
    worker.start()
    return job


class LatestJob:
    """"Latest value wins" background work.

    :meth:`submit` asks the running job (if any) to stop and runs the new task: when the old
    one has ended (the default: one job at a time), or at once with ``overlap=True`` (the old
    one winds down beside it). A task submitted while another waits replaces the waiting one.
    Only the latest submission's outcome reaches its callbacks: a superseded job's result,
    error or cancellation is dropped, so a slow old result never overwrites a newer one.
    :meth:`stop` stops the latest job (its cancellation is delivered); :meth:`drop` stops it
    and delivers nothing. ``on_idle`` runs when the last job has ended. Callbacks run on the
    GUI thread (as :func:`start_job`'s); pass them through a widget's lifetime guard.
    """

    def __init__(self, *, overlap: bool = False, on_idle: Callable[[], None] | None = None):
        self.job: Job | None = None  # the latest job, while any job runs
        self._overlap = overlap
        self._on_idle = on_idle
        self._running = 0  # jobs started and not yet finished
        self._serial = 0  # submissions so far; the latest is the one delivered
        self._waiting: tuple | None = None  # (serial, task, callbacks) to start next

    @property
    def idle(self) -> bool:
        """True when nothing runs or waits."""
        return self._running == 0 and self._waiting is None

    @property
    def latest(self) -> int:
        """The serial number of the latest submission (0: none yet)."""
        return self._serial

    def submit(
        self,
        task: Task | CallbackTask,
        *,
        on_done: Callable[[Any], None] | None = None,
        on_error: Callable[[BaseException], None] | None = None,
        on_cancelled: Callable[[], None] | None = None,
        on_progress: Callable[[int, int, str], None] | None = None,
    ) -> int:
        """Run ``task`` as the latest work; returns its serial number."""
        self._serial += 1
        self._waiting = (self._serial, task, (on_done, on_error, on_cancelled, on_progress))
        running = self.job
        if running is not None:
            running.cancel()  # it reports back as cancelled (dropped)
        if running is None or self._overlap:
            self._start()
        return self._serial

    def stop(self) -> None:
        """Drop the waiting task and ask the latest job to stop (it reports as cancelled)."""
        self._waiting = None
        if self.job is not None:
            self.job.cancel()

    def drop(self) -> None:
        """As :meth:`stop`, but nothing of the latest job is delivered any more."""
        self._serial += 1
        self.stop()

    def _start(self) -> None:
        serial, task, (on_done, on_error, on_cancelled, on_progress) = self._waiting
        self._waiting = None

        def latest(callback):
            if callback is None:
                return None
            return lambda *args: callback(*args) if serial == self._serial else None

        self._running += 1
        self.job = start_job(task, on_progress=latest(on_progress), on_done=latest(on_done),
                             on_error=latest(on_error or _notify),
                             on_cancelled=latest(on_cancelled), on_finished=self._finished)

    def _finished(self) -> None:
        self._running -= 1
        if self._running > 0:
            return
        if self._waiting is not None:
            self._start()
            return
        self.job = None
        if self._on_idle is not None:
            self._on_idle()


def callback_task(function: Callable[[Callable[..., None], ShouldStop], Any]) -> CallbackTask:
    """``function(progress, should_stop) -> value`` as a task: it runs in the worker's thread
    (no helper thread) and each ``progress(done, total, message="")`` call is emitted as the
    worker's ``yielded`` signal."""
    return CallbackTask(function)


def explain(error: BaseException) -> str:
    """A user-facing sentence: what happened and what to do (chosen by the error's type)."""
    name = type(error).__name__
    text = str(error) or name
    if isinstance(error, OutOfMemory):  # its message already says what to do
        return text
    if _is_cuda_out_of_memory(error):
        return (f"The GPU ran out of memory ({text.splitlines()[0]}). Choose 'cpu' in the device "
                "list, close other GPU programs, or crop the image.")
    if isinstance(error, CheckpointError):
        return f"Cannot use this checkpoint: {text}. Pick another file or the bundled default."
    if isinstance(error, VolumeError):
        return f"Cannot read the volume: {text}."
    if isinstance(error, FileNotFoundError):
        return f"{text}. Check the path."
    if isinstance(error, FileExistsError):
        return f"{text}. Choose another name or allow overwriting."
    if isinstance(error, ValueError | TypeError):
        return f"Invalid input: {text}"
    return f"{name}: {text}"


def _notify(error: BaseException) -> None:
    from napari.utils.notifications import show_error

    show_error(explain(error))


def _guarded(
    task: Task | CallbackTask, stop: threading.Event, abort: threading.Event, relay: list,
    release_memory: bool,
) -> Generator[ProgressItem, None, Outcome]:
    """Run the task; turn every ending into an :class:`Outcome`; free cached GPU memory (and,
    with ``release_memory``, freed CPU memory).

    On abort the task generator is closed here, in the worker thread. ``relay[0]`` emits a
    callback task's progress.
    """
    try:
        if isinstance(task, CallbackTask):
            emit = relay[0]
            value = task.function(lambda d, t, m="": emit((d, t, m)), stop.is_set)
            return Outcome(value=value)
        steps = task(stop.is_set)
        try:
            item = next(steps)
            while True:
                yield item
                if abort.is_set():
                    steps.close()  # GeneratorExit at the task's yield: its cleanup runs here
                    return Outcome(cancelled=True)
                item = next(steps)
        except StopIteration as done:
            return Outcome(value=done.value)
    except Cancelled:
        return Outcome(cancelled=True)
    except Exception as error:
        return Outcome(error=error)
    finally:
        _empty_cuda_cache()
        if release_memory:
            from ..pipeline import release_freed_memory

            release_freed_memory()


@cache
def _worker_class() -> type:
    """napari's generator worker whose ``quit`` (napari's abort, e.g. when its window closes)
    aborts the job instead of dropping the task generator suspended in the thread."""
    from napari.qt.threading import GeneratorWorker

    class Worker(GeneratorWorker):
        abort_job: Callable[[], None]

        def quit(self) -> None:
            self.abort_job()

    return Worker


def _is_cuda_out_of_memory(error: BaseException) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(error, torch.cuda.OutOfMemoryError)


def _empty_cuda_cache() -> None:
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
