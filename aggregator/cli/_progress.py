"""Progress on long work, for every command that has some (backfill, replay, completeness,
digest validation, reconcile): a rich bar with rate and ETA on a terminal, a periodic
``progress`` log line otherwise (a pipe, a container's log).

    with progress("replay to splunk", unit="objects") as p:
        report = await replay(..., progress=p.report)   # p.report(done, total)

The work below the CLI never imports this module: it takes a plain callback
``progress(done, total)`` (``total`` None while unknown; both cumulative), so a stage stays free
of rich and of the terminal. ``p.advance(n)`` and ``p.report(done, total)`` may be mixed; the
bar goes to stderr, so stdout keeps the command's data (JSON, tables).

rich and structlog are imported when progress starts, not when a command module loads.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import IO, Any


class Progress:
    """One piece of work's progress (see the module). ``terminal``: force the bar (True) or
    the log lines (False); default: a bar when ``stream`` (stderr) is a terminal."""

    def __init__(
        self,
        what: str,
        *,
        unit: str = "objects",
        total: int | None = None,
        every_secs: float = 10.0,
        stream: IO[str] | None = None,
        terminal: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.what = what
        self.unit = unit
        self.total = total
        self.done = 0
        self.every_secs = every_secs
        self.stream = stream or sys.stderr
        self.terminal = self.stream.isatty() if terminal is None else terminal
        self.clock = clock
        self._started = clock()
        self._said = self._started
        self._bar: Any = None
        self._task: Any = None
        self._log: Any = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> Progress:
        self._started = self._said = self.clock()
        if self.terminal:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                TaskProgressColumn,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )
            from rich.progress import (
                Progress as RichProgress,
            )

            self._bar = RichProgress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TaskProgressColumn(),
                TextColumn("{task.fields[rate]}"),
                TimeElapsedColumn(),
                TextColumn("eta"),
                TimeRemainingColumn(),
                console=Console(file=self.stream),
                transient=False,
            )
            self._bar.start()
            self._task = self._bar.add_task(self.what, total=self.total, rate="")
        else:
            from aggregator.log import get_logger

            self._log = get_logger("aggregator.progress")
        return self

    def close(self, *, failed: bool = False) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done, rate=self._rate_text())
            self._bar.stop()
            self._bar = None
        elif self._log is not None:
            self._line("progress.done" if not failed else "progress.stopped")

    def __enter__(self) -> Progress:
        return self.start()

    def __exit__(self, exc_type: object, *_: object) -> None:
        self.close(failed=exc_type is not None)

    # ------------------------------------------------------------------ reporting

    def advance(self, n: int = 1) -> None:
        self.report(self.done + n, self.total)

    def report(self, done: int, total: int | None = None) -> None:
        """``done`` of ``total`` so far (the callback stages take)."""
        self.done = done
        if total is not None:
            self.total = total
        if self._bar is not None:
            self._bar.update(self._task, completed=done, total=self.total, rate=self._rate_text())
            return
        now = self.clock()
        if self._log is not None and now - self._said >= self.every_secs:
            self._said = now
            self._line("progress")

    # ------------------------------------------------------------------ figures

    def rate(self) -> float:
        """Units per second since the start."""
        elapsed = max(self.clock() - self._started, 1e-9)
        return self.done / elapsed

    def eta_secs(self) -> float | None:
        rate = self.rate()
        if self.total is None or rate <= 0:
            return None
        return max(0.0, (self.total - self.done) / rate)

    def _rate_text(self) -> str:
        return f"{self.rate():,.1f} {self.unit}/s"

    def _line(self, event: str) -> None:
        eta = self.eta_secs()
        self._log.info(
            event,
            stage=self.what,
            count=self.done,
            total=self.total,
            unit=self.unit,
            rate_per_sec=round(self.rate(), 2),
            eta_secs=None if eta is None else round(eta),
            duration_ms=int((self.clock() - self._started) * 1000),
        )


@contextmanager
def progress(what: str, **kw: Any) -> Iterator[Progress]:
    """``with progress("backfill", unit="events") as p:`` (see :class:`Progress`)."""
    p = Progress(what, **kw).start()
    failed = True
    try:
        yield p
        failed = False
    finally:
        p.close(failed=failed)
