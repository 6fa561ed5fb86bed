"""Timing: the daemon's periodic jobs on APScheduler 3 (asyncio), and a clean shutdown.

* Every job runs with ``max_instances=1`` and ``coalesce=True``: a run never overlaps the
  previous one of the same job; runs missed while it was busy collapse into one.
* A job run that raises is logged (``scheduler.job_failed``, with the reason), counted (metrics
  and the ``job_runs`` table) and the process carries on. A job registered with ``retry``
  (discovery, ingest) runs again after a bounded backoff (``service.retry_initial_secs``
  doubling up to ``service.retry_max_secs``, never later than its interval) instead of waiting
  a whole interval; other jobs run again at their next interval.
* SIGTERM / SIGINT: the scheduler is paused (no new runs), :attr:`Scheduler.stopping` is set so
  running jobs stop taking new work, in-flight runs get ``shutdown_timeout_secs`` to finish and
  are then cancelled (abandoned: whatever they did not commit is redone next start, because
  checkpoints advance only after the central write), the ``on_shutdown`` hooks flush, and
  :meth:`Scheduler.run` returns 0.

No business logic lives here: jobs are registered by name with a coroutine function.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from apscheduler.events import EVENT_JOB_MAX_INSTANCES, EVENT_JOB_MISSED, JobEvent
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from aggregator.config import ServiceSettings
from aggregator.log import get_logger
from aggregator.service.health import Condition, Health
from aggregator.service.metrics import Metrics

log = get_logger("aggregator.scheduler")

JobFn = Callable[[], Awaitable[Any]]
Hook = Callable[[], Awaitable[None] | None]

# Intervals of the built-in jobs come from these ServiceSettings fields.
BUILTIN_INTERVALS = {
    "discovery": "discovery_interval_secs",
    "ingest": "ingest_interval_secs",
    "forward": "forward_interval_secs",
    "retention": "retention_interval_secs",
}


@dataclass
class JobSpec:
    name: str
    fn: JobFn
    interval_secs: float
    run_at_start: bool = True
    start_delay_secs: float = 0.0
    on_success: Callable[[Any], None] | None = None
    retry: bool = False


@dataclass
class JobStats:
    runs: int = 0
    failures: int = 0
    skipped: int = 0
    last_error: str | None = None
    last_ok_at: float | None = None
    running: bool = False
    durations: list[float] = field(default_factory=list)
    consecutive_failures: int = 0
    retry_in_secs: float | None = None  # set while a retry after a failure is scheduled


def describe_error(exc: BaseException) -> str:
    """One line saying why a job failed, for logs and ``/readyz``: the error's own words when
    it has them (``what``; ``hint``), an AWS error's meaning, else type and message. None of
    these carry a credential (AWS error messages do not; config secrets are SecretStr)."""
    from aggregator.aws.errors import explain

    what, hint = getattr(exc, "what", None), getattr(exc, "hint", None)
    if isinstance(what, str):
        text = f"{what}; {hint}" if hint else what
    elif (said := explain(exc)) is not None:
        context = str(exc).split(":", 1)[0] if type(exc).__name__ == "DiscoveryError" else ""
        text = f"{context + ': ' if context else ''}{said.what}" + (
            f"; {said.hint}" if said.hint else ""
        )
    else:
        text = f"{type(exc).__name__}: {exc}"
    return text[:500]


def backoff_secs(settings: ServiceSettings, failures: int, interval: float) -> float:
    """The wait before retry number ``failures`` (1, 2, ...): doubling from the initial wait,
    capped at ``retry_max_secs`` and at the job's own interval."""
    wait = settings.retry_initial_secs * 2 ** max(0, failures - 1)
    return float(min(wait, settings.retry_max_secs, interval))


def interval_for(settings: ServiceSettings, name: str) -> float:
    """A job's interval from the ``service`` config section."""
    if name in settings.job_intervals_secs:
        return float(settings.job_intervals_secs[name])
    if name in BUILTIN_INTERVALS:
        return float(getattr(settings, BUILTIN_INTERVALS[name]))
    raise KeyError(f"no interval for job {name!r}: set service.job_intervals_secs.{name}")


class Scheduler:
    """Registers jobs, runs them until a stop signal, then shuts down within the timeout."""

    def __init__(
        self,
        settings: ServiceSettings,
        *,
        metrics: Metrics | None = None,
        health: Health | None = None,
        recorder: Any = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.health = health
        self.recorder = recorder
        self.jobs: dict[str, JobSpec] = {}
        self.stats: dict[str, JobStats] = {}
        self.stopping = asyncio.Event()
        self._stop_requested: asyncio.Event | None = None
        self._inflight: dict[str, asyncio.Task[Any]] = {}
        self._on_shutdown: list[Hook] = []
        self._aps: AsyncIOScheduler | None = None
        self.abandoned: list[str] = []
        self._live = Condition("scheduler_running", ok=False, reason="not started")
        if health is not None:
            health.add_live(self._live)

    # ------------------------------------------------------------------ registration

    def register(
        self,
        name: str,
        fn: JobFn,
        *,
        interval_secs: float | None = None,
        run_at_start: bool = True,
        start_delay_secs: float = 0.0,
        on_success: Callable[[Any], None] | None = None,
        retry: bool = False,
    ) -> JobSpec:
        """``retry``: after a failed run, run again after a bounded backoff (see the module)."""
        if name in self.jobs:
            raise ValueError(f"job {name!r} registered twice")
        interval = interval_secs if interval_secs is not None else interval_for(self.settings, name)
        spec = JobSpec(name, fn, interval, run_at_start, start_delay_secs, on_success, retry)
        self.jobs[name] = spec
        self.stats[name] = JobStats()
        return spec

    def on_shutdown(self, hook: Hook) -> None:
        """Called in order after in-flight work finished or was abandoned (flush, close)."""
        self._on_shutdown.append(hook)

    # ------------------------------------------------------------------ one run

    async def run_job(self, name: str) -> Any:
        """Run one job now (what the scheduler calls). Exceptions are contained here."""
        spec = self.jobs[name]
        st = self.stats[name]
        if self.stopping.is_set():
            return None
        task = asyncio.current_task()
        assert task is not None
        self._inflight[name] = task
        st.running = True
        started = time.time()
        t0 = time.perf_counter()
        self._record("started", name, started)
        log.info("scheduler.job_started", job=name)
        try:
            result = await spec.fn()
        except asyncio.CancelledError:
            duration = time.perf_counter() - t0
            log.warning("scheduler.job_abandoned", job=name, duration_ms=int(duration * 1000))
            self.abandoned.append(name)
            self._record("finished", name, time.time(), "abandoned at shutdown")
            raise
        except Exception as exc:
            duration = time.perf_counter() - t0
            st.runs += 1
            st.failures += 1
            st.consecutive_failures += 1
            st.last_error = describe_error(exc)
            if self.metrics:
                self.metrics.job_finished(name, "error", duration, time.time())
            self._record("finished", name, time.time(), st.last_error)
            retry = self._schedule_retry(spec, st)
            log.error(
                "scheduler.job_failed",
                job=name,
                error_type=type(exc).__name__,
                reason=st.last_error,
                attempt=st.consecutive_failures,
                retry_in_secs=retry,
                duration_ms=int(duration * 1000),
            )
            return None
        finally:
            st.running = False
            self._inflight.pop(name, None)
        duration = time.perf_counter() - t0
        now = time.time()
        st.runs += 1
        st.last_ok_at = now
        st.consecutive_failures = 0
        st.retry_in_secs = None
        st.durations.append(duration)
        del st.durations[:-100]
        if self.metrics:
            self.metrics.job_finished(name, "ok", duration, now)
        self._record("finished", name, now, None)
        log.info("scheduler.job_done", job=name, duration_ms=int(duration * 1000))
        if spec.on_success is not None:
            try:
                spec.on_success(result)
            except Exception as exc:
                log.error("scheduler.on_success_failed", job=name, error_type=type(exc).__name__)
        return result

    def _schedule_retry(self, spec: JobSpec, st: JobStats) -> float | None:
        """Move a failed retrying job's next run to now + backoff; returns the wait (None when
        the job just waits for its next interval)."""
        if not spec.retry or self._aps is None or self.stopping.is_set():
            return None
        wait = backoff_secs(self.settings, st.consecutive_failures, spec.interval_secs)
        job = self._aps.get_job(spec.name)
        if job is None:
            return None
        when = datetime.now(UTC) + timedelta(seconds=wait)
        nxt = job.next_run_time
        if nxt is None or when < nxt:
            job.modify(next_run_time=when)
        st.retry_in_secs = round(wait, 3)
        return st.retry_in_secs

    def _record(self, method: str, *args: Any) -> None:
        if self.recorder is None:
            return
        try:
            getattr(self.recorder, method)(*args)
        except Exception as exc:  # bookkeeping must never fail a job
            log.warning("scheduler.record_failed", stage=method, error_type=type(exc).__name__)

    def _on_aps_event(self, event: JobEvent) -> None:
        name = str(event.job_id)
        if name not in self.stats:
            return
        if event.code == EVENT_JOB_MAX_INSTANCES:
            self.stats[name].skipped += 1
            if self.metrics:
                self.metrics.job_finished(name, "skipped", 0.0, time.time())
            log.info("scheduler.job_skipped_overlap", job=name)
        elif event.code == EVENT_JOB_MISSED:
            log.warning("scheduler.job_missed", job=name)

    # ------------------------------------------------------------------ lifecycle

    def request_stop(self, reason: str = "requested") -> None:
        if self._stop_requested is not None and not self._stop_requested.is_set():
            log.info("scheduler.stop_requested", stage=reason)
            self._stop_requested.set()

    async def run(self, *, install_signals: bool = True) -> int:
        """Run until SIGTERM/SIGINT (or :meth:`request_stop`); returns the exit code (0)."""
        loop = asyncio.get_running_loop()
        self._stop_requested = asyncio.Event()
        if install_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.request_stop, sig.name)
        aps = AsyncIOScheduler(event_loop=loop, timezone=UTC)
        self._aps = aps
        aps.add_listener(self._on_aps_event, EVENT_JOB_MAX_INSTANCES | EVENT_JOB_MISSED)
        now = datetime.now(UTC)
        for spec in self.jobs.values():
            first = now + timedelta(seconds=spec.start_delay_secs)
            aps.add_job(
                self.run_job,
                "interval",
                args=[spec.name],
                id=spec.name,
                name=spec.name,
                seconds=spec.interval_secs,
                next_run_time=first if spec.run_at_start else None,
                max_instances=1,
                coalesce=True,
                misfire_grace_time=int(self.settings.misfire_grace_secs),
                replace_existing=True,
            )
            if not spec.run_at_start:  # a paused job gets its first regular run time
                aps.get_job(spec.name).modify(
                    next_run_time=now + timedelta(seconds=spec.interval_secs)
                )
        aps.start()
        self._live.set(True, "running")
        log.info(
            "scheduler.started",
            jobs={s.name: s.interval_secs for s in self.jobs.values()},
        )
        try:
            await self._stop_requested.wait()
        finally:
            await self._shutdown(aps)
            if install_signals:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.remove_signal_handler(sig)
        return 0

    async def _shutdown(self, aps: AsyncIOScheduler) -> None:
        timeout = self.settings.shutdown_timeout_secs
        t0 = time.perf_counter()
        aps.pause()  # no new runs from here on
        self.stopping.set()  # running jobs stop taking new work
        self._live.set(True, "stopping")
        pending = [t for t in self._inflight.values() if not t.done()]
        log.info("scheduler.draining", count=len(pending), timeout_secs=timeout)
        if pending:
            _, still = await asyncio.wait(pending, timeout=timeout)
            if still:
                for t in still:
                    t.cancel()
                # give cancelled runs a moment to unwind (close clients, roll back)
                await asyncio.wait(still, timeout=max(1.0, min(10.0, timeout / 4)))
        aps.shutdown(wait=False)
        for hook in self._on_shutdown:
            try:
                res = hook()
                if asyncio.iscoroutine(res):
                    await asyncio.wait_for(res, timeout=max(1.0, timeout / 4))
            except Exception as exc:
                log.error("scheduler.shutdown_hook_failed", error_type=type(exc).__name__)
        self._live.set(False, "stopped")
        log.info(
            "scheduler.stopped",
            abandoned=sorted(set(self.abandoned)),
            duration_ms=int((time.perf_counter() - t0) * 1000),
        )


async def wait_or_stop(stopping: asyncio.Event, seconds: float) -> bool:
    """Sleep up to ``seconds``; True when the stop event fired first."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stopping.wait(), timeout=seconds)
    return stopping.is_set()
