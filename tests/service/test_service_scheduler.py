"""The scheduler runs jobs on their intervals without overlap, survives crashing jobs, and on a
stop signal lets in-flight work finish (or abandons it after the timeout) and returns 0."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from aggregator.config import ServiceSettings
from aggregator.service.health import Health
from aggregator.service.metrics import Metrics
from aggregator.service.scheduler import Scheduler, interval_for, wait_or_stop
from aggregator.state import State


def settings(**kw: float) -> ServiceSettings:
    return ServiceSettings.model_validate({"shutdown_timeout_secs": 2, **kw})


def metric(m: Metrics, name: str, **labels: str) -> float:
    for fam in text_string_to_metric_families(m.exposition().decode()):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return 0.0


async def stop_after(sched: Scheduler, secs: float) -> None:
    await asyncio.sleep(secs)
    sched.request_stop("test")


def test_intervals_come_from_the_service_section() -> None:
    """Built-in jobs read their *_interval_secs; others come from job_intervals_secs by name."""
    s = ServiceSettings.model_validate(
        {"ingest_interval_secs": 42, "job_intervals_secs": {"integrity": 7}}
    )
    assert interval_for(s, "ingest") == 42
    assert interval_for(s, "integrity") == 7
    with pytest.raises(KeyError, match=r"job_intervals_secs\.detect"):
        interval_for(s, "detect")


async def test_runs_never_overlap_and_overlaps_are_counted() -> None:
    """A job slower than its interval runs one instance at a time; the skipped starts count."""
    m = Metrics()
    sched = Scheduler(settings(), metrics=m)
    running = 0
    peak = 0
    runs = 0

    async def slow() -> None:
        nonlocal running, peak, runs
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.35)
        running -= 1
        runs += 1

    sched.register("ingest", slow, interval_secs=0.1)
    task = asyncio.create_task(stop_after(sched, 1.2))
    assert await sched.run(install_signals=False) == 0
    await task
    assert peak == 1
    assert runs >= 2
    assert sched.stats["ingest"].skipped >= 1
    assert metric(m, "ctagg_job_runs_total", job_name="ingest", outcome="skipped") >= 1
    assert metric(m, "ctagg_job_runs_total", job_name="ingest", outcome="ok") == runs


async def test_a_crashing_job_is_counted_and_the_others_go_on(tmp_path: Path) -> None:
    """Every run of one job raises; it is logged and counted (metrics and job_runs table), it
    keeps being scheduled, and the healthy job keeps running."""
    m = Metrics()
    state = State(tmp_path / "s.db")
    sched = Scheduler(settings(), metrics=m, recorder=state.jobs)
    ok_runs = 0

    async def boom() -> None:
        raise RuntimeError("account 123 exploded")

    async def fine() -> None:
        nonlocal ok_runs
        ok_runs += 1

    sched.register("forward", boom, interval_secs=0.1)
    sched.register("ingest", fine, interval_secs=0.1)
    task = asyncio.create_task(stop_after(sched, 0.6))
    assert await sched.run(install_signals=False) == 0
    await task
    assert sched.stats["forward"].failures >= 3
    assert ok_runs >= 3
    assert metric(m, "ctagg_job_runs_total", job_name="forward", outcome="error") >= 3
    rows = state.jobs.runs()
    assert rows["forward"]["failures"] >= 3
    assert rows["forward"]["last_error"] == "RuntimeError: account 123 exploded"
    assert rows["ingest"]["last_ok_at"] is not None
    assert rows["ingest"]["failures"] == 0
    state.close()


async def test_stop_lets_cooperative_work_finish_and_flushes() -> None:
    """A running job that watches `stopping` finishes its current unit, is not abandoned, and the
    shutdown hooks run after it."""
    sched = Scheduler(settings())
    events: list[str] = []

    async def cycle() -> None:
        events.append("start")
        for _ in range(100):  # 100 units of work
            if sched.stopping.is_set():
                events.append("stopped-taking-work")
                return
            await asyncio.sleep(0.02)
        events.append("completed")

    def flush() -> None:
        events.append("flushed")

    sched.register("ingest", cycle, interval_secs=60)
    sched.on_shutdown(flush)
    task = asyncio.create_task(stop_after(sched, 0.2))
    t0 = time.perf_counter()
    assert await sched.run(install_signals=False) == 0
    await task
    assert time.perf_counter() - t0 < 1.5
    assert events == ["start", "stopped-taking-work", "flushed"]
    assert sched.abandoned == []


async def test_stop_abandons_stuck_work_after_the_timeout() -> None:
    """A job that ignores the stop is cancelled once shutdown_timeout_secs has passed; run()
    still returns 0, in about the timeout."""
    sched = Scheduler(settings(shutdown_timeout_secs=0.5))
    cancelled = asyncio.Event()

    async def stuck() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    sched.register("ingest", stuck, interval_secs=60)
    task = asyncio.create_task(stop_after(sched, 0.1))
    t0 = time.perf_counter()
    assert await sched.run(install_signals=False) == 0
    await task
    elapsed = time.perf_counter() - t0
    assert cancelled.is_set()
    assert sched.abandoned == ["ingest"]
    assert 0.5 <= elapsed < 2.0


async def test_sigterm_stops_the_scheduler_and_liveness_reports_it() -> None:
    """SIGTERM to the process triggers the same clean stop; liveness says running, then
    stopped."""
    health = Health()
    sched = Scheduler(settings(), health=health)
    seen: list[bool] = []

    async def job() -> None:
        seen.append(health.liveness()[0])
        os.kill(os.getpid(), signal.SIGTERM)

    sched.register("discovery", job, interval_secs=60)
    assert await asyncio.wait_for(sched.run(install_signals=True), timeout=10) == 0
    assert seen == [True]
    ok, report = health.liveness()
    assert ok is False
    assert report["scheduler_running"]["reason"] == "stopped"


async def test_wait_or_stop_returns_early_on_stop() -> None:
    """Jobs can sleep between units of work and wake as soon as a stop is requested."""
    ev = asyncio.Event()
    asyncio.get_running_loop().call_later(0.05, ev.set)
    t0 = time.perf_counter()
    assert await wait_or_stop(ev, 10) is True
    assert time.perf_counter() - t0 < 1
    assert await wait_or_stop(asyncio.Event(), 0.01) is False


async def test_a_failed_retrying_job_runs_again_after_a_bounded_backoff() -> None:
    """A discovery-like job (interval one hour) that fails twice is tried again after seconds,
    not after the interval; each failure's log line carries the reason and the wait."""
    import io
    import json

    from aggregator import log

    captured = io.StringIO()
    log.configure("INFO", json=True, stream=captured)
    sched = Scheduler(settings(retry_initial_secs=0.2, retry_max_secs=0.3))
    starts: list[float] = []

    async def flaky() -> str:
        starts.append(time.monotonic())
        if len(starts) <= 3:
            raise ConnectionError(f"endpoint down (attempt {len(starts)})")
        sched.request_stop("done")
        return "ok"

    sched.register("discovery", flaky, interval_secs=3600, retry=True)
    try:
        assert await asyncio.wait_for(sched.run(install_signals=False), timeout=10) == 0
    finally:
        log.configure("INFO")
    assert len(starts) == 4
    waits = [b - a for a, b in itertools.pairwise(starts)]
    assert 0.15 < waits[0] < 1.0  # retry_initial_secs
    assert 0.25 < waits[1] < 1.0  # doubled, capped at retry_max_secs (0.3)
    assert 0.25 < waits[2] < 1.0
    failed = [json.loads(x) for x in captured.getvalue().splitlines() if "job_failed" in x]
    assert [f["attempt"] for f in failed] == [1, 2, 3]
    assert [f["retry_in_secs"] for f in failed] == [0.2, 0.3, 0.3]
    assert failed[0]["reason"] == "ConnectionError: endpoint down (attempt 1)"
    assert sched.stats["discovery"].consecutive_failures == 0


async def test_a_job_without_retry_waits_for_its_interval() -> None:
    sched = Scheduler(settings(retry_initial_secs=0.1))
    runs = 0

    async def failing() -> None:
        nonlocal runs
        runs += 1
        raise RuntimeError("x")

    sched.register("retention", failing, interval_secs=3600)
    task = asyncio.create_task(stop_after(sched, 0.6))
    assert await sched.run(install_signals=False) == 0
    await task
    assert runs == 1


def test_backoff_doubles_and_is_bounded_by_the_max_and_the_interval() -> None:
    from aggregator.service.scheduler import backoff_secs

    s = settings()  # defaults: 5 s doubling up to 300 s
    assert [backoff_secs(s, n, 3600) for n in range(1, 9)] == [5, 10, 20, 40, 80, 160, 300, 300]
    assert backoff_secs(s, 9, 60) == 60
