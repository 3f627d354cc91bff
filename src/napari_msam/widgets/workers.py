"""One FIFO inference worker thread that owns the model and the :class:`~napari_msam.session.Session`.

Why one thread: the Session is stateful (clicks, cached embedding, previous logits) and not thread-safe,
so every model call (load, set_image, click, undo, auto N-click) runs on this thread, strictly in the
order it was submitted; the GUI thread never touches torch. Results come back through Qt signals, which
Qt delivers on the GUI thread (queued connection) because this QObject lives there.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from qtpy.QtCore import QObject, Signal

from ..errors import MSAMError

log = logging.getLogger(__name__)


class Cancelled(Exception):
    """Raised inside a job (via :meth:`JobContext.check_cancel`) when the user pressed Cancel."""


@dataclass
class WorkerState:
    """What lives on the worker thread: the loaded model, the session and what it was built for."""

    loaded: Any = None              # napari_msam.model.weights.LoadedModel
    model_key: Any = None           # identifies the loaded model (path or "default")
    session: Any = None             # napari_msam.session.Session
    image_key: Any = None           # identifies the image/modality/device the session was set for
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class JobResult:
    job_id: int
    name: str
    value: Any = None
    error: str | None = None        # readable message; None on success
    cancelled: bool = False
    seconds: float = 0.0            # time the job itself ran
    pending: int = 0                # jobs still waiting when this one finished


class JobContext:
    """Handed to every job: the worker state plus progress reporting and cancellation."""

    def __init__(self, worker: InferenceWorker, job_id: int, name: str) -> None:
        self.worker = worker
        self.job_id = job_id
        self.name = name

    @property
    def state(self) -> WorkerState:
        return self.worker.state

    def progress(self, payload: Any) -> None:
        """Send ``payload`` to the GUI thread now (``InferenceWorker.progress`` signal)."""
        self.worker._emit(self.worker.progress, (self.job_id, self.name, payload))

    def cancelled(self) -> bool:
        return self.worker.is_cancelled(self.job_id)

    def check_cancel(self) -> None:
        if self.cancelled():
            raise Cancelled()


JobFn = Callable[..., Any]


def friendly_error(exc: BaseException) -> str:
    """One line a user can act on; unexpected exceptions keep their type name (traceback goes to the log)."""
    if isinstance(exc, MSAMError):
        return str(exc)
    if isinstance(exc, MemoryError):
        return "out of memory: try the CPU device, a smaller model or a smaller image"
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if "CUDA out of memory" in text or "OutOfMemoryError" in type(exc).__name__:
        return "the GPU ran out of memory: switch the device to CPU or close other GPU programs"
    if isinstance(exc, (ValueError, KeyError, FileNotFoundError, OSError)):
        return text or type(exc).__name__
    return f"unexpected {type(exc).__name__}: {text}" if text else f"unexpected {type(exc).__name__}"


class InferenceWorker(QObject):
    """A single daemon thread running submitted jobs first-in first-out.

    ``submit(name, fn, *args)`` queues ``fn(ctx, *args)`` and returns a job id; ``finished`` carries a
    :class:`JobResult` for every job (success, error or cancelled), ``progress`` carries
    ``(job_id, name, payload)`` tuples sent by jobs, ``queue_changed`` the number of waiting + running
    jobs. ``close()`` stops the thread (pending jobs are dropped) and waits for it.
    """

    finished = Signal(object)
    progress = Signal(object)
    queue_changed = Signal(int)
    started_job = Signal(object)  # (job_id, name)

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.state = WorkerState()
        self._queue: queue.Queue = queue.Queue()
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._cancelled: set[int] = set()
        self._running: int | None = None
        self._pending = 0
        self._closed = False
        self._idle = threading.Event()
        self._idle.set()
        self._thread = threading.Thread(target=self._loop, name="napari-msam-inference", daemon=True)
        self._thread.start()

    # ---------------------------------------------------------------- GUI-thread API
    def submit(self, name: str, fn: JobFn, *args: Any, **kwargs: Any) -> int:
        if self._closed:
            raise RuntimeError("the inference worker is closed")
        job_id = next(self._ids)
        with self._lock:
            self._pending += 1
            self._idle.clear()
            n = self._pending
        self._queue.put((job_id, name, fn, args, kwargs))
        self.queue_changed.emit(n)
        return job_id

    @property
    def pending(self) -> int:
        """Jobs waiting or running."""
        with self._lock:
            return self._pending

    @property
    def running_job(self) -> int | None:
        with self._lock:
            return self._running

    def cancel(self, job_id: int | None = None) -> None:
        """Cancel one job (the running one when ``job_id`` is None); queued jobs are skipped."""
        with self._lock:
            target = self._running if job_id is None else job_id
            if target is not None:
                self._cancelled.add(target)

    def is_cancelled(self, job_id: int) -> bool:
        with self._lock:
            return job_id in self._cancelled

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until no job is pending (for scripts; the GUI reacts to ``finished`` instead)."""
        return self._idle.wait(timeout)

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def close(self, timeout: float = 30.0) -> None:
        """Stop after the running job; drop queued jobs; join the thread."""
        if self._closed:
            return
        self._closed = True
        with self._lock:
            if self._running is not None:
                self._cancelled.add(self._running)
        # drain queued jobs so the sentinel is next
        try:
            while True:
                self._queue.get_nowait()
        except queue.Empty:
            pass
        self._queue.put(None)
        self._thread.join(timeout)
        self.state = WorkerState()

    # ---------------------------------------------------------------- worker thread
    def _emit(self, signal: Any, value: Any) -> None:
        """Emit unless the Qt side is gone (window closed without ``close()``): never kill the thread."""
        if self._closed:
            return
        try:
            signal.emit(value)
        except RuntimeError:  # wrapped C/C++ object deleted
            self._closed = True

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                break
            job_id, name, fn, args, kwargs = item
            with self._lock:
                self._running = job_id
                skip = job_id in self._cancelled
            result = JobResult(job_id, name)
            t0 = time.perf_counter()
            if skip or self._closed:
                result.cancelled = True
            else:
                self._emit(self.started_job, (job_id, name))
                try:
                    result.value = fn(JobContext(self, job_id, name), *args, **kwargs)
                except Cancelled:
                    result.cancelled = True
                except BaseException as exc:  # the thread must survive anything a job does
                    if isinstance(exc, MSAMError):
                        log.info("napari-msam job %r: %s", name, exc)
                    else:
                        log.warning("napari-msam job %r failed", name, exc_info=True)
                    result.error = friendly_error(exc)
            result.seconds = time.perf_counter() - t0
            with self._lock:
                self._running = None
                self._cancelled.discard(job_id)
                self._pending = max(0, self._pending - 1)
                result.pending = self._pending
                if self._pending == 0:
                    self._idle.set()
            if not self._closed:
                self._emit(self.finished, result)
                self._emit(self.queue_changed, result.pending)
        with self._lock:
            self._pending = 0
            self._idle.set()
