"""DetectionService end to end: records -> deduped alerts -> persisted outbox -> webhook."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from aggregator.config import DetectSettings
from aggregator.detect.alerts import ArchivePointer
from aggregator.detect.service import DetectionService, sinks_from_settings
from aggregator.detect.sinks import WebhookSink
from aggregator.state import State

STRATUS = "stratus-red-team/detonation-logs"


class Hook:
    def __init__(self) -> None:
        self.status = 200
        self.bodies: list[dict[str, Any]] = []

    async def handle(self, request: web.Request) -> web.Response:
        if self.status == 200:
            self.bodies.append(await request.json())
        return web.Response(status=self.status)


@pytest.fixture
async def hook() -> AsyncIterator[tuple[Hook, str]]:
    h = Hook()
    app = web.Application()
    app.router.add_post("/h", h.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield h, f"http://127.0.0.1:{port}/h"
    await runner.cleanup()


def stratus(testdata: Path, name: str) -> list[dict[str, Any]]:
    return list(json.loads((testdata / STRATUS / f"aws.{name}.json").read_text()))


async def test_alerts_survive_failures_and_restarts(
    hook: tuple[Hook, str], testdata: Path, tmp_path: Path
) -> None:
    """Alerts are queued with their dedupe mark; a failing webhook keeps them for a retry after
    backoff, a restart keeps them too, and each is delivered exactly once when the hook works."""
    h, url = hook
    db = tmp_path / "state.db"
    settings = DetectSettings()
    records = stratus(testdata, "defense-evasion.cloudtrail-stop")
    ptr = ArchivePointer("central", "AWSLogs/o/1/CloudTrail/r/x.json.gz")

    state = State(db)
    svc = DetectionService(settings, state, [WebhookSink(url, attempts=1)], clock=lambda: 1000.0)
    alerts = svc.process(records, archive=ptr)
    assert len(alerts) == 2
    assert svc.process(records, archive=ptr) == []  # replay: nothing new
    h.status = 500
    assert await svc.deliver(now=1000.0) == 0
    assert await svc.deliver(now=1001.0) == 0  # backing off: not even attempted
    assert svc.store.outbox_size() == 2
    await svc.close()
    state.close()

    state = State(db)
    svc = DetectionService(settings, state, [WebhookSink(url, attempts=1)], clock=lambda: 2000.0)
    assert svc.process(records, archive=ptr) == []
    h.status = 200
    assert await svc.deliver(now=2000.0) == 2
    assert await svc.deliver(now=3000.0) == 0
    await svc.close()
    state.close()

    assert len(h.bodies) == 2
    assert {b["alert"]["archive"]["key"] for b in h.bodies} == {ptr.key}
    assert {b["finding"]["finding_info"]["uid"] for b in h.bodies} == {a.uid for a in alerts}


async def test_without_sinks_nothing_is_queued(testdata: Path, tmp_path: Path) -> None:
    """With no sink configured alerts are still deduplicated but no outbox grows."""
    state = State(tmp_path / "s.db")
    svc = DetectionService(DetectSettings(), state)
    assert len(svc.process(stratus(testdata, "defense-evasion.organizations-leave"))) == 2
    assert svc.store.outbox_size() == 0
    assert svc.hourly(now=2e9) == []
    await svc.close()
    state.close()


def test_disabled_rules_and_sinks_from_settings(testdata: Path, tmp_path: Path) -> None:
    """disabled_rule_ids switches rules off; a webhook_url makes a webhook sink."""
    settings = DetectSettings.model_validate(
        {
            "disabled_rule_ids": ["2b013649-0b9b-546a-9c34-490ccfea6a07"],
            "webhook_url": "https://hooks.example.test/x",
            "anomaly": {"enabled": False},
        }
    )
    assert [s.name for s in sinks_from_settings(settings, None)] == ["webhook"]
    state = State(tmp_path / "s.db")
    svc = DetectionService(settings, state)
    alerts = svc.process(stratus(testdata, "defense-evasion.organizations-leave"))
    assert [a.title for a in alerts] == ["Account Tried to Leave the Organization"]
    assert svc.anomalies is None
    state.close()
