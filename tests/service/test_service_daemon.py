"""The daemon against moto: readiness flips as discovery and the first cycle complete, and
/metrics carries per account × region series with the right labels after a real ingest cycle."""

from __future__ import annotations

import asyncio
import io
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from awsfixtures import StsSessions, client, log_key, log_object, make_source, record
from prometheus_client.parser import text_string_to_metric_families

from aggregator.aws.clients import Aws
from aggregator.aws.inventory import Account, AccountFailure, Inventory
from aggregator.aws.slots import for_shard
from aggregator.config import Settings, parse_settings
from aggregator.ingest.cycle import Ingestor
from aggregator.service.daemon import Daemon, MeteredState

A1, A2 = "111111111111", "222222222222"
TODAY = time.strftime("%Y%m%d", time.gmtime())


class PipelineApp:
    """The real ingest path with a fixed inventory (discovery is another room's work),
    filtered to the config's shard as ``App.refresh_discovery`` does; ``broker``: the STS
    sessions (default: A2's role cannot be assumed)."""

    def __init__(
        self,
        settings: Settings,
        inventory: Inventory,
        discovery_delay: float,
        broker: StsSessions | None = None,
    ) -> None:
        self.settings = settings
        self.state = MeteredState(settings.state.path)
        self.aws = Aws(settings.aws)
        self.broker = StsSessions(deny={A2}) if broker is None else broker
        self.ingestor = Ingestor(settings, self.state, self.broker, self.aws)
        self.inventory: Inventory | None = None
        self._inventory = inventory
        self._delay = discovery_delay
        self.closed = False

    async def refresh_discovery(self) -> Inventory:
        await asyncio.sleep(self._delay)
        self.inventory = for_shard(self._inventory, self.settings.shard)
        return self.inventory

    async def run_once(self) -> Any:
        assert self.inventory is not None
        return await self.ingestor.run(self.inventory)

    def request_stop(self) -> None:
        self.ingestor.stop.set()

    async def close(self) -> None:
        self.state.close()
        self.closed = True


@pytest.fixture
def trail(moto: str) -> Inventory:
    s3 = client("s3")
    s3.create_bucket(Bucket="central")
    s3.create_bucket(Bucket="org-trail")
    src1 = make_source("org-trail", A1)
    src2 = make_source("org-trail", A1, "eu-west-1")
    src3 = make_source("org-trail", A2, reader=A2)
    when = f"{TODAY[:4]}-{TODAY[4:6]}-{TODAY[6:]}T01:00:00Z"
    for i in range(3):
        key = log_key(src1.prefix, A1, "us-east-1", f"{TODAY}T01{i}0Z", f"Abc{i:013d}")
        recs = [record(f"e-{i}-{j}", A1, time=when) for j in range(4)]
        s3.put_object(Bucket="org-trail", Key=key, Body=log_object(recs))
    dup = log_key(src1.prefix, A1, "us-east-1", f"{TODAY}T0200Z", "Dup0000000000001")
    s3.put_object(Bucket="org-trail", Key=dup, Body=log_object([record("e-0-0", A1, time=when)]))
    key = log_key(src2.prefix, A1, "eu-west-1", f"{TODAY}T0100Z")
    s3.put_object(Bucket="org-trail", Key=key, Body=log_object([record("w-1", A1, "eu-west-1")]))
    bad = log_key(src2.prefix, A1, "eu-west-1", f"{TODAY}T0300Z", "Bad0000000000001")
    s3.put_object(Bucket="org-trail", Key=bad, Body=b"not gzip, not json")
    return Inventory(
        accounts=[Account(A1), Account(A2)],
        regions={A1: ["us-east-1", "eu-west-1"], A2: ["us-east-1"]},
        trails=[],
        sources=[src1, src2, src3],
        failures=[AccountFailure("333333333333", "describe_trails", "AccessDenied: no")],
    )


def settings(tmp_path: Path, service: dict[str, Any] | None = None, **extra: Any) -> Settings:
    return parse_settings(
        {
            "state": {"path": str(tmp_path / "state.db")},
            "archive": {"bucket": "central"},
            "aws": {"max_attempts": 1},
            "collect": {"max_concurrency": 2},
            "service": {
                "health_host": "127.0.0.1",
                "health_port": 0,
                "ingest_interval_secs": 30,
                "shutdown_timeout_secs": 5,
                **(service or {}),
            },
            **extra,
        }
    )


async def get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        return r.status, await r.text()


def series(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name:
                out[tuple(sorted(s.labels.items()))] = s.value
    return out


async def test_readiness_and_metrics_after_a_cycle(tmp_path: Path, trail: Inventory) -> None:
    """Not ready while discovery runs; ready after the first cycle; /metrics then shows
    objects, events, duplicates and quarantines per account and region, assume-role failures
    per account, freshness gauges and the cycle duration histogram; stop returns 0."""
    app = PipelineApp(settings(tmp_path), trail, discovery_delay=0.6)
    daemon = Daemon(app)
    run = asyncio.create_task(daemon.run(install_signals=False))
    while daemon.server.port == 0:  # noqa: ASYNC110 (the server sets its port when bound)
        await asyncio.sleep(0.01)
    base = f"http://127.0.0.1:{daemon.server.port}"
    status, body = await get(base + "/readyz")
    assert status == 503
    assert '"discovery_done":{"ok":false' in body
    assert (await get(base + "/livez"))[0] == 200

    deadline = time.monotonic() + 30
    while (await get(base + "/readyz"))[0] != 200:
        assert time.monotonic() < deadline, await get(base + "/readyz")
        await asyncio.sleep(0.1)

    status, text = await get(base + "/metrics")
    assert status == 200
    use1 = (("account_id", A1), ("region", "us-east-1"))
    euw1 = (("account_id", A1), ("region", "eu-west-1"))
    assert series(text, "ctagg_objects_total")[use1] == 4
    assert series(text, "ctagg_events_total")[use1] == 12
    assert series(text, "ctagg_duplicates_total")[use1] == 1
    assert series(text, "ctagg_objects_total")[euw1] == 1
    assert series(text, "ctagg_quarantined_total")[euw1] == 1
    assert series(text, "ctagg_assume_role_failures_total") == {(("account_id", A2),): 1}
    ages = series(text, "ctagg_newest_event_age_seconds")
    assert set(ages) == {use1, euw1}
    assert all(v >= 0 for v in ages.values())
    assert use1 in series(text, "ctagg_newest_object_age_seconds")
    assert series(text, "ctagg_job_duration_seconds_count")[(("job_name", "ingest"),)] >= 1
    assert series(text, "ctagg_job_runs_total")[(("job_name", "discovery"), ("outcome", "ok"))] == 1
    assert series(text, "ctagg_discovered_sources")[()] == 3
    assert series(text, "ctagg_discovery_account_failures")[(("stage", "describe_trails"),)] == 1
    assert series(text, "ctagg_quarantine_objects")[(("status", "held"),)] == 1

    daemon.scheduler.request_stop("test")
    assert await asyncio.wait_for(run, timeout=15) == 0
    assert app.closed
    assert app.ingestor.stop.is_set()


HEC_TOKEN = "planted-hec-token-0f9e8d7c6b5a"


async def test_forwarding_metrics_and_no_secret_in_logs(
    tmp_path: Path, trail: Inventory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a Splunk HEC connector (token from the environment), the daemon runs the forwarder:
    every archived event reaches the sink, /metrics shows delivered events and an empty backlog
    for the connector, and no log line of the whole run (DEBUG, JSON) contains the token."""
    from aggregator import log
    from tests.fakes.splunk_hec import FakeSplunkHec

    hec = FakeSplunkHec({HEC_TOKEN})
    await hec.start()
    captured = io.StringIO()
    log.configure("DEBUG", json=True, stream=captured)
    monkeypatch.setenv("CTAGG_HEC_TOKEN", HEC_TOKEN)
    try:
        cfg = settings(
            tmp_path,
            forward={
                "poll_interval_secs": 0.05,
                "batch_max_wait_secs": 0,
                "connectors": [
                    {
                        "name": "hec",
                        "type": "splunk_hec",
                        "url": hec.url,
                        "token": "${CTAGG_HEC_TOKEN}",
                    }
                ],
            },
            service={
                "health_host": "127.0.0.1",
                "health_port": 0,
                "forward_interval_secs": 0.2,
                "shutdown_timeout_secs": 5,
            },
        )
        app = PipelineApp(cfg, trail, discovery_delay=0)
        daemon = Daemon(app)
        run = asyncio.create_task(daemon.run(install_signals=False))
        deadline = time.monotonic() + 30
        while len(hec.indexed) < 13:
            assert time.monotonic() < deadline, len(hec.indexed)
            await asyncio.sleep(0.05)
        base = f"http://127.0.0.1:{daemon.server.port}"
        conn = (("connector", "hec"),)
        while True:  # live: read from the lanes at each scrape
            text = (await get(base + "/metrics"))[1]
            if series(text, "ctagg_forward_delivered_total").get(conn) == 13:
                break
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
        assert series(text, "ctagg_forward_backlog_objects")[conn] == 0
        assert series(text, "ctagg_forward_rejected_total")[conn] == 0
        assert series(text, "ctagg_forward_up")[conn] == 1
        ready = json.loads((await get(base + "/readyz"))[1])
        assert ready["checks"]["connectors"] == {"ok": True, "reason": "1 connector(s) ok"}
        assert app.ingestor.should_pause is not None  # backpressure wired
        # retention's floor: every ledger row is delivered, so none is held back
        assert daemon.forwarder.floor() > app.state.ledger.max_id() > 0
        daemon.scheduler.request_stop("test")
        assert await asyncio.wait_for(run, timeout=15) == 0
    finally:
        await hec.stop()
        log.configure("INFO")
    out = captured.getvalue()
    assert '"event": "forward.started"' in out
    assert '"event": "daemon.stopped"' in out
    assert HEC_TOKEN not in out


async def test_failing_discovery_keeps_not_ready_with_the_reason(
    tmp_path: Path, trail: Inventory
) -> None:
    """Discovery that keeps failing never kills the daemon; /readyz stays 503 and says why."""

    class BrokenDiscovery(PipelineApp):
        async def refresh_discovery(self) -> Inventory:
            raise RuntimeError("organizations unreachable")

    app = BrokenDiscovery(
        settings(tmp_path, service={"discovery_interval_secs": 0.1}), trail, discovery_delay=0
    )
    daemon = Daemon(app)
    run = asyncio.create_task(daemon.run(install_signals=False))
    deadline = time.monotonic() + 15
    while daemon.scheduler.stats["discovery"].failures < 3:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    status, body = await get(f"http://127.0.0.1:{daemon.server.port}/readyz")
    assert status == 503
    assert "last attempt failed: RuntimeError: organizations unreachable" in body
    assert (await get(f"http://127.0.0.1:{daemon.server.port}/livez"))[0] == 200
    daemon.scheduler.request_stop("test")
    assert await asyncio.wait_for(run, timeout=15) == 0


async def test_a_failed_first_discovery_is_retried_in_seconds_not_the_interval(
    tmp_path: Path, trail: Inventory
) -> None:
    """`ctagg run` started while the endpoint is down: discovery (interval one hour) is tried
    again after the backoff, succeeds, and the first cycle follows; /readyz said why before."""

    class Flaky(PipelineApp):
        attempts = 0

        async def refresh_discovery(self) -> Inventory:
            Flaky.attempts += 1
            if Flaky.attempts <= 2:
                raise ConnectionError("Could not connect to the endpoint URL")
            return await super().refresh_discovery()

    cfg = settings(
        tmp_path,
        service={"discovery_interval_secs": 3600, "retry_initial_secs": 0.2, "retry_max_secs": 1},
    )
    app = Flaky(cfg, trail, discovery_delay=0)
    daemon = Daemon(app)
    run = asyncio.create_task(daemon.run(install_signals=False))
    deadline = time.monotonic() + 20
    reasons = set()
    while daemon.ingest_recent.last_at is None:
        assert time.monotonic() < deadline
        reasons.add(daemon.discovery_done.reason)
        await asyncio.sleep(0.02)
    assert Flaky.attempts == 3
    assert "last attempt failed: ConnectionError: Could not connect to the endpoint URL" in reasons
    assert daemon.scheduler.stats["discovery"].consecutive_failures == 0
    daemon.scheduler.request_stop("test")
    assert await asyncio.wait_for(run, timeout=15) == 0


async def test_a_failing_cycle_says_why_in_readyz_and_is_retried(
    tmp_path: Path, trail: Inventory
) -> None:
    """The central bucket is missing: the ingest job fails at its start (no object read), the
    reason is in /readyz, and it is retried after the backoff (not the 300 s interval)."""
    from aggregator.service.app import App

    client("s3").delete_bucket(Bucket="central")
    cfg = settings(
        tmp_path,
        service={"ingest_interval_secs": 300, "retry_initial_secs": 0.2, "retry_max_secs": 0.4},
    )
    app = PipelineApp(cfg, trail, discovery_delay=0)

    async def run_once() -> Any:  # the App's start-of-cycle check, then the real cycle
        await App.check_archive(app)  # type: ignore[arg-type]
        return await PipelineApp.run_once(app)

    app.run_once = run_once  # type: ignore[method-assign]
    daemon = Daemon(app)
    run = asyncio.create_task(daemon.run(install_signals=False))
    deadline = time.monotonic() + 20
    while daemon.scheduler.stats["ingest"].failures < 3:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    status, body = await get(f"http://127.0.0.1:{daemon.server.port}/readyz")
    assert status == 503
    assert "central archive s3://central does not exist (NoSuchBucket)" in body
    assert app.state.count("objects") == 0
    daemon.scheduler.request_stop("test")
    assert await asyncio.wait_for(run, timeout=15) == 0


async def test_a_paused_ingest_says_so_in_logs_readyz_and_metrics(
    tmp_path: Path, trail: Inventory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sink that keeps answering 503 busy: its backlog fills (max one object here) and
    collection pauses. The log says so with the connector, /readyz fails with the reason,
    /metrics has ctagg_ingest_paused 1; once the sink recovers it all clears."""
    import json

    from aggregator import log
    from tests.fakes.splunk_hec import FakeSplunkHec

    src = trail.sources[0]
    for i in range(40):  # more than the ingest queue holds, so listing meets the full backlog
        key = log_key(src.prefix, A1, "us-east-1", f"{TODAY}T05{i % 60:02d}Z", f"More{i:012d}")
        body = log_object(
            [record(f"more-{i}", A1, time=f"{TODAY[:4]}-{TODAY[4:6]}-{TODAY[6:]}T05:00:00Z")]
        )
        client("s3").put_object(Bucket="org-trail", Key=key, Body=body)
    hec = FakeSplunkHec({HEC_TOKEN})
    hec.busy_next = 10**9
    await hec.start()
    captured = io.StringIO()
    log.configure("INFO", json=True, stream=captured)
    monkeypatch.setenv("CTAGG_HEC_TOKEN", HEC_TOKEN)
    try:
        cfg = settings(
            tmp_path,
            forward={
                "poll_interval_secs": 0.05,
                "batch_max_wait_secs": 0,
                "backoff_initial_secs": 0.05,
                "backoff_max_secs": 0.1,
                "max_backlog_objects": 1,
                "connectors": [
                    {
                        "name": "hec",
                        "type": "splunk_hec",
                        "url": hec.url,
                        "token": "${CTAGG_HEC_TOKEN}",
                    }
                ],
            },
        )
        app = PipelineApp(cfg, trail, discovery_delay=0)
        daemon = Daemon(app)
        run = asyncio.create_task(daemon.run(install_signals=False))
        deadline = time.monotonic() + 30
        while app.ingestor.gate.paused_since is None:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        base = f"http://127.0.0.1:{daemon.server.port}"
        status, body = await get(base + "/readyz")
        check = json.loads(body)["checks"]["ingest_not_paused"]
        metrics = (await get(base + "/metrics"))[1]

        hec.busy_next = 0  # the sink recovers: the backlog drains and collection resumes
        # (with a backlog of one object it may pause again: wait for the cycle to end)
        while app.ingestor.gate.paused_since is not None or daemon.ingest_recent.last_at is None:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        after = json.loads((await get(base + "/readyz"))[1])["checks"]["ingest_not_paused"]
        metrics_after = (await get(base + "/metrics"))[1]
        daemon.scheduler.request_stop("test")
        assert await asyncio.wait_for(run, timeout=15) == 0
    finally:
        await hec.stop()
        log.configure("INFO")
    assert status == 503
    assert check["ok"] is False
    assert check["reason"].startswith("paused since ")
    assert "forward backlog full: hec 1/1 objects behind" in check["reason"]
    assert "forward.max_backlog_objects" in check["reason"]
    assert series(metrics, "ctagg_ingest_paused")[()] == 1
    assert series(metrics, "ctagg_ingest_pauses_total")[()] >= 1
    assert after == {"ok": True, "reason": "not paused"}
    assert series(metrics_after, "ctagg_ingest_paused")[()] == 0
    lines = [json.loads(x) for x in captured.getvalue().splitlines()]
    paused = [x for x in lines if x["event"] == "ingest.paused"]
    assert paused
    assert paused[0]["level"] == "warning"
    assert "hec 1/1" in paused[0]["reason"]
    assert any(x["event"] == "ingest.resumed" for x in lines)


async def test_daily_reconcile_reports_its_counts_in_metrics(
    tmp_path: Path, trail: Inventory
) -> None:
    """The daemon's reconcile job runs after the first cycle over the recent days, report-only:
    /metrics shows ctagg_reconcile_findings per kind and the time of the run; the planted
    orphan is still in the bucket afterwards (nothing repaired behind the operator's back)."""
    from aggregator.archive.store import KeyParts, central_key

    # in a region the cycle does not collect: the first cycle's read-back (the archive is not
    # empty, so it is read back where the cycle archives) would otherwise adopt it
    orphan = central_key("", KeyParts(A1, "eu-west-1", f"{TODAY}T0900Z", False), "x", "orphan")
    when = f"{TODAY[:4]}-{TODAY[4:6]}-{TODAY[6:]}T09:00:00Z"
    client("s3").put_object(
        Bucket="central",
        Key=orphan,
        Body=log_object([record("orphan", A1, "eu-west-1", time=when)]),
    )
    client("s3").put_object(Bucket="central", Key="AWSLogs/stray.txt", Body=b"x")
    app = PipelineApp(settings(tmp_path), trail, discovery_delay=0)
    daemon = Daemon(app)
    t0 = time.time()
    run = asyncio.create_task(daemon.run(install_signals=False))
    while daemon.server.port == 0:  # noqa: ASYNC110 (the server sets its port when bound)
        await asyncio.sleep(0.01)
    base = f"http://127.0.0.1:{daemon.server.port}"
    deadline = time.monotonic() + 30
    while True:
        text = (await get(base + "/metrics"))[1]
        last = series(text, "ctagg_reconcile_last_run_timestamp_seconds").get((), 0)
        runs = series(text, "ctagg_job_runs_total")
        if last and (("job_name", "reconcile"), ("outcome", "ok")) in runs:
            break
        assert time.monotonic() < deadline, "no reconcile run"
        await asyncio.sleep(0.1)
    daemon.scheduler.request_stop("test")
    assert await asyncio.wait_for(run, timeout=15) == 0

    assert last >= t0
    found = {dict(k)["kind"]: v for k, v in series(text, "ctagg_reconcile_findings").items()}
    assert found == {
        "unknown_objects": 1,
        "missing_objects": 0,
        "sha_mismatch": 0,
        "duplicate_events": 0,
        "outside_layout": 1,
        "unreadable": 0,
    }
    assert client("s3").head_object(Bucket="central", Key=orphan)
    assert runs[(("job_name", "reconcile"), ("outcome", "ok"))] == 1
