"""Work in a background thread with progress and cancel: the Slicer panel's (and later the web page's) fits."""

from __future__ import annotations

import threading
from typing import Callable

Progress = Callable[[float, str], None]
ShouldStop = Callable[[], bool]


class BackgroundJob:
    """``work(progress, should_stop)`` in a worker thread; the main thread polls it and collects the outcome.

    ``cancel()`` makes the work raise :class:`~shapeprior.fit.dals_fit.FitCancelled` at its
    next step; :meth:`result` re-raises whatever the worker raised.
    """

    def __init__(self, work: Callable[[Progress, ShouldStop], object], outputs: dict | None = None):
        # Options for whoever writes the result that the input implies (e.g. its volume as the
        # segmentation's reference geometry).
        self.outputs = outputs or {}
        self._stop = threading.Event()
        self._progress: tuple[float, str] = (0.0, "loading the model")
        self._result = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(work,), name="shapeprior-fit", daemon=True)

    def _run(self, work) -> None:
        try:
            self._result = work(self._report, self._stop.is_set)
        except BaseException as exc:  # handed to the main thread by result()
            self._error = exc

    def _report(self, fraction: float, stage: str) -> None:
        self._progress = (fraction, stage)  # one reference assignment: atomic

    def start(self) -> "BackgroundJob":
        self._thread.start()
        return self

    def cancel(self) -> None:
        self._stop.set()

    @property
    def cancelled(self) -> bool:
        return self._stop.is_set()

    @property
    def progress(self) -> tuple[float, str]:
        """(fraction done, stage name) of the latest step."""
        return self._progress

    @property
    def done(self) -> bool:
        return self._thread.ident is not None and not self._thread.is_alive()

    def result(self, timeout: float | None = None):
        """Wait for the worker (up to ``timeout`` s) and return its result or raise its error."""
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError("the fit is still running")
        if self._error is not None:
            raise self._error
        return self._result
