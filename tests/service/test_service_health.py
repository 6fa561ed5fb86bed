"""/livez, /readyz and /metrics over real HTTP on 127.0.0.1; readiness follows its conditions."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from aggregator.service.health import Condition, Health, HealthServer, Probe, Recency, build_app
from aggregator.service.metrics import Metrics
from aggregator.state import State


class Clock:
    def __init__(self) -> None:
        self.t = 1_000_000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[str, Health, Clock, State]]:
    clock = Clock()
    state = State(tmp_path / "s.db")
    health = Health(clock=clock)
    health.add_ready(Probe("state_open", state.healthy, "state database does not answer"))
    health.add_ready(Condition("discovery_done"))
    health.add_ready(Recency("ingest_recent", max_age_secs=900, never_reason="no cycle yet"))
    metrics = Metrics()
    server = HealthServer(
        build_app(health, metrics, lambda: metrics.refresh_from_state(state)), "127.0.0.1", 0
    )
    port = await server.start()
    try:
        yield f"http://127.0.0.1:{port}", health, clock, state
    finally:
        await server.stop()


async def get(url: str) -> tuple[int, dict[str, object] | str, str]:
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        ctype = r.headers.get("Content-Type", "")
        body = await r.json() if ctype.startswith("application/json") else await r.text()
        return r.status, body, ctype


async def test_readiness_flips_with_conditions(
    served: tuple[str, Health, Clock, State],
) -> None:
    """Not ready until discovery is done and an ingest cycle finished recently; not ready again
    when the last cycle is too old or the state stops answering."""
    url, health, clock, state = served
    status, body, _ = await get(url + "/readyz")
    assert status == 503
    assert isinstance(body, dict)
    checks = body["checks"]
    assert isinstance(checks, dict)
    assert checks["state_open"]["ok"] is True
    assert checks["discovery_done"]["ok"] is False
    assert checks["ingest_recent"]["reason"] == "no cycle yet"

    health.ready["discovery_done"].set(True, "42 sources")  # type: ignore[union-attr]
    assert (await get(url + "/readyz"))[0] == 503
    health.ready["ingest_recent"].mark(clock.t)  # type: ignore[union-attr]
    status, body, _ = await get(url + "/readyz")
    assert status == 200
    assert body["status"] == "ok"  # type: ignore[index]

    clock.t += 901
    status, body, _ = await get(url + "/readyz")
    assert status == 503
    assert "max 900s" in body["checks"]["ingest_recent"]["reason"]  # type: ignore[index]

    health.ready["ingest_recent"].mark(clock.t)  # type: ignore[union-attr]
    assert (await get(url + "/readyz"))[0] == 200
    state.close()
    status, body, _ = await get(url + "/readyz")
    assert status == 503
    assert body["checks"]["state_open"]["ok"] is False  # type: ignore[index]


async def test_liveness_only_fails_on_declared_fatal_conditions(
    served: tuple[str, Health, Clock, State],
) -> None:
    """/livez is 200 while not ready; 503 once a liveness condition fails."""
    url, health, _, _ = served
    assert (await get(url + "/livez"))[0] == 200
    sched = health.add_live(Condition("scheduler_running", ok=True, reason="ok"))
    assert (await get(url + "/livez"))[0] == 200
    sched.set(False, "scheduler stopped")  # type: ignore[union-attr]
    status, body, _ = await get(url + "/livez")
    assert status == 503
    assert body["checks"]["scheduler_running"]["reason"] == "scheduler stopped"  # type: ignore[index]


async def test_metrics_endpoint_serves_prometheus_text(
    served: tuple[str, Health, Clock, State],
) -> None:
    """/metrics answers in the Prometheus text format with ctagg_ families."""
    url, *_ = served
    status, body, ctype = await get(url + "/metrics")
    assert status == 200
    assert ctype.startswith("text/plain")
    assert isinstance(body, str)
    assert "ctagg_build_info{" in body
    assert "# TYPE ctagg_objects_total counter" in body


def test_no_conditions_means_not_ready() -> None:
    """An app that registered nothing is not ready (fail closed)."""
    assert Health().readiness()[0] is False
    assert Health().liveness()[0] is True
