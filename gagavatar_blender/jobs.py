"""Long jobs (tracking, reconstruction, downloads) off Blender's main thread.

A :class:`Job` runs ``work(progress, cancel)``, a function that never touches bpy, either in a
worker thread (interactive sessions: a modal operator polls it from a timer, see
``operators/job_operator.py``) or inline (background mode and scripts: the operator runs to completion).
Its outcome is ``result`` or ``error``; the Blender data is made afterwards, on the main thread,
so a failed or cancelled job leaves the scene as it was.
"""
from __future__ import annotations

import threading
import traceback
from typing import Any, Callable, Optional

Work = Callable[[Callable[[float, str], None], Callable[[], bool]], Any]

_active: Optional["Job"] = None
_lock = threading.Lock()


class Job:
    """One unit of background work with progress (0..1 and a label) and cancellation."""

    def __init__(self, label: str, work: Work):
        self.label = label
        self.work = work
        self.fraction = 0.0
        self.status = label
        self.result: Any = None
        self.error: Optional[BaseException] = None
        self.error_details = ""
        self._cancel = threading.Event()
        self._done = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def progress(self, fraction: float, status: str = "") -> None:
        """Called by the work: ``fraction`` 0..1 and what it is doing."""
        self.fraction = min(max(float(fraction), 0.0), 1.0)
        if status:
            self.status = status

    def cancel(self) -> None:
        """Ask the work to stop at its next check."""
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def run(self) -> None:
        """Run the work in the calling thread (records the result or the exception)."""
        global _active
        try:
            self.result = self.work(self.progress, self._cancel.is_set)
            if self.cancelled:
                from ..engine.errors import Cancelled
                raise Cancelled(f"{self.label}: cancelled")
        except BaseException as err:  # recorded for the main thread, which reports it
            self.error = err
            self.error_details = traceback.format_exc()
        finally:
            with _lock:
                if _active is self:
                    _active = None
            self._done.set()

    def start(self) -> None:
        """Run the work in a daemon thread; only one job runs at a time."""
        self._claim()
        self._thread = threading.Thread(target=self.run, name=f"gagavatar: {self.label}", daemon=True)
        self._thread.start()

    def run_inline(self) -> None:
        """Run to completion now (background mode, scripts)."""
        self._claim()
        self.run()

    def wait(self, timeout: Optional[float] = None) -> bool:
        return self._done.wait(timeout)

    def _claim(self) -> None:
        global _active
        with _lock:
            if _active is not None and not _active.done:
                from ..engine.errors import GAGAvatarError
                raise GAGAvatarError(f"'{_active.label}' is still running: wait for it or cancel it (Esc)")
            _active = self


def active() -> Optional[Job]:
    """The job running now, if any."""
    return _active


def check(cancel: Callable[[], bool], label: str) -> None:
    """Raise ``Cancelled`` if ``cancel()`` is true (call between stages of a job)."""
    if cancel():
        from ..engine.errors import Cancelled
        raise Cancelled(f"{label}: cancelled")
