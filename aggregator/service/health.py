"""Probes and metrics on one HTTP port (aiohttp): ``/livez``, ``/readyz``, ``/metrics``.

Readiness is a set of named condition objects the application updates as it learns things
(``state_open``, ``discovery_done``, ``ingest_recent``); each reports ok/not ok with a reason.
Liveness only says the process and its event loop answer and nothing fatal was declared (a
scheduler that died, a state file that cannot be opened): Kubernetes restarts on liveness, so it
must not fail for things a restart does not fix (an AWS outage).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson
from aiohttp import web

from aggregator.log import get_logger
from aggregator.service.metrics import CONTENT_TYPE, Metrics

log = get_logger("aggregator.health")

Clock = Callable[[], float]


@dataclass
class Condition:
    """A condition the app sets explicitly (``discovery_done.set(True)``)."""

    name: str
    ok: bool = False
    reason: str = "not yet checked"
    changed_at: float = field(default_factory=time.time)

    def set(self, ok: bool, reason: str = "") -> None:
        if ok != self.ok or reason != self.reason:
            self.changed_at = time.time()
        self.ok, self.reason = ok, reason or ("ok" if ok else "failing")

    def status(self, now: float) -> tuple[bool, str]:
        return self.ok, self.reason


@dataclass
class Recency:
    """Ok while the last ``mark()`` is at most ``max_age_secs`` old (e.g. last ingest cycle)."""

    name: str
    max_age_secs: float
    last_at: float | None = None
    never_reason: str = "never happened"
    last_error: str | None = None  # why the latest attempt failed (cleared by the next mark)

    def mark(self, at: float) -> None:
        self.last_at = at
        self.last_error = None

    def failed(self, reason: str) -> None:
        self.last_error = reason

    def status(self, now: float) -> tuple[bool, str]:
        why = f"; last attempt failed: {self.last_error}" if self.last_error else ""
        if self.last_at is None:
            return False, self.never_reason + why
        age = now - self.last_at
        if age > self.max_age_secs:
            return False, f"last one {age:.0f}s ago (max {self.max_age_secs:.0f}s){why}"
        return True, f"last one {age:.0f}s ago{why}"


@dataclass
class Probe:
    """Ok when a callable returns True (evaluated on every request, e.g. the state answers)."""

    name: str
    check: Callable[[], bool]
    failing_reason: str = "check failed"

    def status(self, now: float) -> tuple[bool, str]:
        try:
            return (True, "ok") if self.check() else (False, self.failing_reason)
        except Exception as exc:
            return False, f"{type(exc).__name__}"


class Check(Protocol):
    """A named readiness or liveness check (:class:`Condition`, :class:`Recency`,
    :class:`Probe`, or one of the app's own, such as the forwarding connectors')."""

    @property
    def name(self) -> str: ...

    def status(self, now: float) -> tuple[bool, str]: ...


class Health:
    """Liveness and readiness conditions, by name."""

    def __init__(self, clock: Clock = time.time) -> None:
        self.clock = clock
        self.ready: dict[str, Check] = {}
        self.live: dict[str, Check] = {}

    def add_ready(self, check: Check) -> Check:
        self.ready[check.name] = check
        return check

    def add_live(self, check: Check) -> Check:
        self.live[check.name] = check
        return check

    def _report(self, checks: dict[str, Check]) -> tuple[bool, dict[str, Any]]:
        now = self.clock()
        out: dict[str, Any] = {}
        ok_all = True
        for name, check in checks.items():
            ok, reason = check.status(now)
            ok_all &= ok
            out[name] = {"ok": ok, "reason": reason}
        return ok_all, out

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Not ready when any readiness condition fails (or none were registered)."""
        ok, report = self._report(self.ready)
        return ok and bool(self.ready), report

    def liveness(self) -> tuple[bool, dict[str, Any]]:
        return self._report(self.live)


def build_app(
    health: Health, metrics: Metrics, refresh: Callable[[], None] | None = None
) -> web.Application:
    """The aiohttp app; ``refresh`` recomputes state-derived gauges before each scrape."""

    async def livez(_: web.Request) -> web.Response:
        ok, report = health.liveness()
        return _json(ok, report)

    async def readyz(_: web.Request) -> web.Response:
        ok, report = health.readiness()
        return _json(ok, report)

    async def metrics_handler(_: web.Request) -> web.Response:
        # In a thread: a large organization's scrape is tens of thousands of lines (bench/
        # metrics_scrape.py) and must not stall the event loop the ingest workers run on.
        try:
            body = await asyncio.to_thread(metrics.exposition, refresh)
        except Exception as exc:  # a scrape must not take the process down
            log.warning("health.metrics_refresh_failed", error_type=type(exc).__name__)
            body = await asyncio.to_thread(metrics.exposition)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})

    app = web.Application()
    app.router.add_get("/livez", livez)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_handler)
    return app


def _json(ok: bool, checks: dict[str, Any]) -> web.Response:
    body = orjson.dumps({"status": "ok" if ok else "failing", "checks": checks})
    return web.Response(body=body, status=200 if ok else 503, content_type="application/json")


class HealthServer:
    """Runs the app on ``host:port`` (port 0: a free one; see :attr:`port`)."""

    def __init__(self, app: web.Application, host: str, port: int) -> None:
        self.app, self.host, self.port = app, host, port
        self._runner: web.AppRunner | None = None

    async def start(self) -> int:
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
        await site.start()
        server = getattr(site, "_server", None)
        if server is not None and server.sockets:
            self.port = int(server.sockets[0].getsockname()[1])
        log.info("health.listening", host=self.host, port=self.port)
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
