"""The GUI-thread side of the inference worker: each job's result goes to the callback it was submitted with.

Why apart from the worker: the worker thread only runs jobs in order and emits their results; which
piece of the widget waits for which result, and what to do with a result nobody waits for, is decided
here on the GUI thread. After :meth:`JobRouter.close` no callback runs any more.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

from qtpy.QtCore import QObject
from qtpy.QtWidgets import QApplication

from ._utils import close_quietly
from .workers import InferenceWorker, JobFn, JobResult

log = logging.getLogger(__name__)


class JobRouter(QObject):
    """Owns the :class:`InferenceWorker`; routes results and progress to per-job callbacks.

    ``report(text)`` shows an error nobody else handles; ``on_queue(n)`` hears how many jobs are
    queued or running after each change. A QObject, so that with its ``parent`` (the widget) deleted
    the worker's signals no longer reach it.
    """

    def __init__(self, report: Callable[[str], None], on_queue: Callable[[int], None],
                 parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.worker = InferenceWorker()
        self._report = report
        self._on_queue = on_queue
        self._handlers: dict[int, Callable[[JobResult], None]] = {}
        self._progress_handlers: dict[int, Callable[[Any], None]] = {}
        self.closed = False
        self.worker.finished.connect(self._on_finished)
        self.worker.progress.connect(self._on_progress)
        self.worker.queue_changed.connect(self._on_queue_changed)
        app = QApplication.instance()
        if app is not None:
            app.aboutToQuit.connect(functools.partial(close_quietly, self.worker))

    @property
    def pending(self) -> int:
        return self.worker.pending

    def submit(self, name: str, fn: JobFn, *args: Any, on_done: Callable[[JobResult], None] | None = None,
               on_progress: Callable[[Any], None] | None = None) -> int:
        """Queue ``fn(ctx, *args)`` on the worker; ``on_done`` / ``on_progress`` run on the GUI thread."""
        job_id = self.worker.submit(name, fn, *args)
        if on_done is not None:
            self._handlers[job_id] = on_done
        if on_progress is not None:
            self._progress_handlers[job_id] = on_progress
        return job_id

    def cancel(self, job_id: int) -> None:
        self.worker.cancel(job_id)

    def close(self, timeout: float = 30.0) -> None:
        """Stop the worker thread; results still on their way are dropped (idempotent)."""
        self.closed = True
        self.worker.close(timeout)

    def _on_finished(self, result: JobResult) -> None:
        handler = self._handlers.pop(result.job_id, None)
        self._progress_handlers.pop(result.job_id, None)
        if self.closed:
            return
        try:
            if handler is not None:
                handler(result)
            elif result.error:
                self._report(f"{result.name}: {result.error}")
        except Exception as exc:  # a GUI-side bug must not surface as a traceback dialog
            log.warning("handler for %s failed", result.name, exc_info=True)
            self._report(f"{result.name}: {exc}")
        self._on_queue_changed(self.worker.pending)

    def _on_progress(self, item: tuple) -> None:
        job_id, _name, payload = item
        handler = self._progress_handlers.get(job_id)
        if handler is not None and not self.closed:
            try:
                handler(payload)
            except Exception as exc:
                log.warning("progress handler failed", exc_info=True)
                self._report(str(exc))

    def _on_queue_changed(self, n: int) -> None:
        if not self.closed:
            self._on_queue(n)
