"""The daemon's detection, archive digest and completeness jobs, in-process against moto: a
StopLogging event ingested from a trail bucket raises an alert delivered to a webhook and to
OpenSearch; the archive digest job writes a digest verify-archive accepts; the completeness job
queues a withheld file the next cycle fetches; retention keeps what detection has not read."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aioboto3
import pytest
from aiohttp import web
from awsfixtures import client, log_key, log_object, make_source, record
from prometheus_client.parser import text_string_to_metric_families
from trailgen import ACCOUNT, REGION, new_key, write_trail

from aggregator.archive.digest_keys import load_public_key_file
from aggregator.archive.verify import verify_archive
from aggregator.aws.inventory import Account, Inventory, Source
from aggregator.detect.follow import CURSOR
from aggregator.detect.store import DetectStore
from aggregator.ingest.cycle import Ingestor
from aggregator.service.daemon import Daemon
from aggregator.service.jobs import DEFAULT_INTERVALS, DetectionJobs, detect_floor, job_interval
from aggregator.service.metrics import Metrics
from tests.archive.test_archive_digests import write_keypair
from tests.fakes.opensearch import FakeOpenSearch
from tests.service.test_service_daemon import PipelineApp, get, series
from tests.service.test_service_daemon import settings as daemon_settings

A1 = "111111111111"
TODAY = time.strftime("%Y%m%d", time.gmtime())
STOP_LOGGING = "stratus-red-team/detonation-logs/aws.defense-evasion.cloudtrail-stop.json"


class Webhook:
    """A local Slack-compatible webhook receiver on 127.0.0.1."""

    def __init__(self) -> None:
        self.posts: list[dict[str, Any]] = []
        self.status = 200
        self.refused = 0
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def _hook(self, request: web.Request) -> web.Response:
        doc = await request.json()
        if self.status != 200:
            self.refused += 1
            return web.Response(status=self.status, text="down")
        self.posts.append(doc)
        return web.Response(text="ok")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self._hook)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = self.runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}/hook"

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


async def wait_for(cond: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 30
    while not cond():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.05)


def outbox(daemon: Daemon) -> float | None:
    return daemon.metrics.registry.get_sample_value("ctagg_detect_outbox_alerts")


async def stop(daemon: Daemon, run: asyncio.Task[int]) -> None:
    daemon.scheduler.request_stop("test")
    assert await asyncio.wait_for(run, timeout=20) == 0


def stop_logging_inventory(testdata: Path) -> Inventory:
    """A trail bucket with one ordinary object and one holding the Stratus StopLogging event."""
    s3 = client("s3")
    s3.create_bucket(Bucket="central")
    s3.create_bucket(Bucket="org-trail")
    src = make_source("org-trail", A1)
    when = f"{TODAY[:4]}-{TODAY[4:6]}-{TODAY[6:]}T01:00:00Z"
    plain = log_key(src.prefix, A1, "us-east-1", f"{TODAY}T0100Z", "Plain00000000001")
    s3.put_object(Bucket="org-trail", Key=plain, Body=log_object([record("ev-1", A1, time=when)]))
    stop = json.loads((testdata / STOP_LOGGING).read_text())
    key = log_key(src.prefix, A1, "us-east-1", f"{TODAY}T0105Z", "StopLog000000001")
    s3.put_object(Bucket="org-trail", Key=key, Body=log_object(stop))
    return Inventory([Account(A1)], {A1: ["us-east-1"]}, [], [src], [])


async def test_stop_logging_alert_reaches_webhook_and_opensearch(
    moto: str, tmp_path: Path, testdata: Path
) -> None:
    inv = stop_logging_inventory(testdata)
    hook = Webhook()
    await hook.start()
    server = FakeOpenSearch()
    await server.start()
    try:
        cfg = daemon_settings(
            tmp_path,
            service={
                "health_host": "127.0.0.1",
                "health_port": 0,
                "shutdown_timeout_secs": 5,
                "job_intervals_secs": {"detect": 0.2, "detect_deliver": 0.2},
            },
            forward={
                "poll_interval_secs": 0.05,
                "batch_max_wait_secs": 0,
                "connectors": [{"name": "os", "type": "opensearch", "hosts": [server.url]}],
            },
            detect={"webhook_url": hook.url, "connectors": ["os"]},
            integrity={"validate_digests": False},
        )
        app = PipelineApp(cfg, inv, discovery_delay=0)
        daemon = Daemon(app)
        run = asyncio.create_task(daemon.run(install_signals=False))

        def alert_docs() -> list[dict[str, Any]]:
            return [
                d
                for idx in server.indices.values()
                for d in idx.values()
                if d.get("class_uid") == 2004
            ]

        await wait_for(lambda: bool(hook.posts) and bool(alert_docs()), "alert delivered")
        await wait_for(lambda: app.state.ledger.max_id() == 2, "both objects archived")

        def events_forwarded() -> int:
            docs = [d for idx in server.indices.values() for d in idx.values()]
            return len(docs) - len(alert_docs())

        await wait_for(lambda: events_forwarded() == 2, "events forwarded")
        forwarded = events_forwarded()
        reg = daemon.metrics.registry
        await wait_for(
            lambda: (
                reg.get_sample_value("ctagg_detect_backlog_objects") == 0 and outbox(daemon) == 0
            ),
            "detection caught up, every alert delivered",
        )
        text = (await get(f"http://127.0.0.1:{daemon.server.port}/metrics"))[1]
        assert daemon.detection is not None
        floor = daemon.ledger_floor()
        await stop(daemon, run)
    finally:
        await hook.stop()
        await server.stop()

    # StopLogging matches more than one rule (CIS 3.5 CloudTrail changes, StopLogging): one
    # alert per rule x event, each delivered once to each sink
    posts = [p for p in hook.posts if p["alert"]["event_name"] == "StopLogging"]
    assert posts
    assert len(posts) == len(hook.posts)  # the ordinary event raised nothing
    assert len({p["alert"]["rule_id"] for p in posts}) == len(posts)
    for post in posts:
        assert "StopLogging" in post["text"]
        assert post["alert"]["event_id"] == "10163ed2-2253-469d-a5ee-cbc6651f8934"
        assert post["finding"]["class_uid"] == 2004
    post = posts[0]
    uids = sorted(d["finding_info"]["uid"] for d in alert_docs())
    assert uids == sorted(p["finding"]["finding_info"]["uid"] for p in posts)
    # the finding points at the central object holding the event
    assert "s3://central/" in json.dumps(post["finding"])
    # both events were forwarded too (the forwarding lane is separate from the alert sink)
    assert forwarded == 2
    alerts = series(text, "ctagg_detect_alerts_total")
    assert alerts[(("kind", "rule"),)] >= 1
    assert series(text, "ctagg_detect_backlog_objects")[()] == 0
    # every alert to both the webhook and OpenSearch
    assert series(text, "ctagg_detect_alerts_delivered_total")[()] == 2 * len(posts)
    assert series(text, "ctagg_job_runs_total")[(("job_name", "detect"), ("outcome", "ok"))] >= 1
    # everything scanned: detection holds nothing back from retention
    assert floor is not None
    assert floor > 2
    # every alert was delivered to both sinks: the outbox is empty
    state = app.state.__class__(cfg.state.path)
    try:
        assert DetectStore(state).outbox_size() == 0
        assert int(DetectStore(state).get_meta(CURSOR) or 0) == 2
    finally:
        state.close()


async def test_failing_alert_sink_keeps_alerts_and_the_daemon_running(
    moto: str, tmp_path: Path, testdata: Path
) -> None:
    """A webhook answering 503 fails the deliveries, not the daemon: ingest goes on, alerts wait
    in the outbox (metric), and are delivered once it recovers and their backoff is due."""
    inv = stop_logging_inventory(testdata)
    hook = Webhook()
    hook.status = 503
    await hook.start()
    offset = [0.0]
    try:
        cfg = daemon_settings(
            tmp_path,
            service={
                "health_host": "127.0.0.1",
                "health_port": 0,
                "shutdown_timeout_secs": 5,
                "job_intervals_secs": {"detect": 0.2, "detect_deliver": 0.2},
            },
            detect={"webhook_url": hook.url},
            integrity={"validate_digests": False},
        )
        app = PipelineApp(cfg, inv, discovery_delay=0)
        daemon = Daemon(app, clock=lambda: time.time() + offset[0])
        run = asyncio.create_task(daemon.run(install_signals=False))
        await wait_for(lambda: hook.refused >= 3, "delivery attempted")  # the sink's 3 tries
        base = f"http://127.0.0.1:{daemon.server.port}"
        await wait_for(lambda: app.state.ledger.max_id() == 2, "ingest went on")
        await wait_for(lambda: (outbox(daemon) or 0) > 0, "outbox metric")
        text = (await get(base + "/metrics"))[1]
        queued = series(text, "ctagg_detect_outbox_alerts")[()]
        assert queued >= 1
        assert series(text, "ctagg_detect_alerts_delivered_total")[()] == 0
        assert hook.posts == []
        hook.status = 200
        offset[0] = 3600.0  # past the backoff
        await wait_for(lambda: len(hook.posts) == queued, "delivered after recovery")
        await wait_for(lambda: outbox(daemon) == 0, "outbox empty")
        assert daemon.scheduler.stats["detect"].failures == 0
        await stop(daemon, run)
    finally:
        await hook.stop()
    assert {p["alert"]["event_name"] for p in hook.posts} == {"StopLogging"}


async def test_detection_that_cannot_start_never_stops_ingest(
    moto: str, tmp_path: Path, testdata: Path
) -> None:
    """A broken rule directory fails detection's start; ingest goes on, and retention's floor
    still keeps every object detection has not scanned."""
    inv = stop_logging_inventory(testdata)
    bad = tmp_path / "rules"
    bad.mkdir()
    (bad / "broken.yml").write_text("title: [unclosed\n")
    cfg = daemon_settings(
        tmp_path,
        detect={"rule_dirs": [str(bad)]},
        integrity={"validate_digests": False},
    )
    app = PipelineApp(cfg, inv, discovery_delay=0)
    daemon = Daemon(app)
    run = asyncio.create_task(daemon.run(install_signals=False))
    await wait_for(lambda: app.state.ledger.max_id() == 2, "a cycle")
    assert daemon.detection is None
    assert app.state.ledger.max_id() == 2
    assert daemon.ledger_floor() == 1  # nothing scanned: keep everything
    await stop(daemon, run)


def test_job_intervals_default_and_override(tmp_path: Path) -> None:
    cfg = daemon_settings(tmp_path, service={"job_intervals_secs": {"detect": 5}})
    assert job_interval(cfg.service, "detect") == 5
    assert job_interval(cfg.service, "completeness") == DEFAULT_INTERVALS["completeness"] == 3600


async def test_detection_start_from_newest_skips_archived_history(
    moto: str, tmp_path: Path
) -> None:
    """``detect.start_from: newest`` on a service that already archived objects: the first start
    persists the cursor at the newest ledger id (retention's floor is past the history) and
    scans nothing old; a restart leaves the cursor where it is and scans what came meanwhile."""
    from tests.archive.test_archive_digests import ingest, ingest_more

    cfg = daemon_settings(
        tmp_path, detect={"start_from": "newest"}, integrity={"validate_digests": False}
    )
    client("s3").create_bucket(Bucket="central")
    app = PipelineApp(cfg, Inventory([], {}, [], [], []), discovery_delay=0)
    try:
        await ingest(cfg, app.state, n_objects=3)
        newest = app.state.ledger.max_id()
        async with contextlib.AsyncExitStack() as stack:
            det = DetectionJobs(cfg, app.state, app.aws, Metrics())
            await det.start(stack)
            assert DetectStore(app.state).get_meta(CURSOR) == str(newest)
            assert detect_floor(app.state) == newest + 1
            assert await det.follow() == (0, 0)

        await ingest_more(cfg, app.state)  # while detection is down
        assert app.state.ledger.max_id() == newest + 1
        async with contextlib.AsyncExitStack() as stack:
            det = DetectionJobs(cfg, app.state, app.aws, Metrics())
            await det.start(stack)
            assert DetectStore(app.state).get_meta(CURSOR) == str(newest)  # not moved
            assert (await det.follow())[0] == 1

        assert detect_floor(app.state) == newest + 2
    finally:
        await app.close()


# ---------------------------------------------------------------------------- retention


async def test_retention_keeps_objects_detection_has_not_scanned(moto: str, tmp_path: Path) -> None:
    """Old central objects expire, but those past detection's cursor stay (and are not in the
    retention log); with detection disabled the same objects go."""
    from tests.archive.test_archive_digests import ingest

    cfg = daemon_settings(
        tmp_path,
        retention={"archive_days": 1},
        integrity={"validate_digests": False},
    )
    client("s3").create_bucket(Bucket="central")
    app = PipelineApp(cfg, Inventory([], {}, [], [], []), discovery_delay=0)
    await ingest(cfg, app.state, n_objects=3)
    rows = app.state.ledger.rows()
    DetectStore(app.state).set_meta(CURSOR, str(rows[0]["id"]))  # one of three scanned
    daemon = Daemon(app)
    assert detect_floor(app.state) == rows[1]["id"]
    report = await daemon._retention()
    assert report.pending_forward == 2
    assert [d.split("?")[0] for d in report.deleted] == [rows[0]["central_key"]]
    listed = client("s3").list_objects_v2(Bucket="central", Prefix="AWSLogs/")["Contents"]
    left = {o["Key"] for o in listed}
    assert left == {rows[1]["central_key"], rows[2]["central_key"]}
    assert [r["key"] for r in app.state.retention_log.rows("deleted")] == [rows[0]["central_key"]]

    await app.close()

    # detection disabled: no detection floor, the same objects go
    off_cfg = daemon_settings(
        tmp_path,
        retention={"archive_days": 1},
        integrity={"validate_digests": False},
        detect={"enabled": False},
    )
    off = Daemon(PipelineApp(off_cfg, Inventory([], {}, [], [], []), discovery_delay=0))
    assert off.ledger_floor() is None
    report = await off._retention()
    assert report.pending_forward == 0
    assert len(report.deleted) == 2
    await off.app.close()


# ---------------------------------------------------------------------------- integrity


async def test_archive_digest_job_writes_a_digest_verify_archive_accepts(
    moto: str, tmp_path: Path, testdata: Path
) -> None:
    inv = stop_logging_inventory(testdata)
    priv, pub = write_keypair(tmp_path)
    cfg = daemon_settings(
        tmp_path,
        service={
            "health_host": "127.0.0.1",
            "health_port": 0,
            "shutdown_timeout_secs": 5,
            "job_intervals_secs": {"archive_digest": 0.3},
        },
        detect={"enabled": False},
        integrity={
            "validate_digests": False,
            "archive_digest": {
                "enabled": True,
                "signing_key_path": str(priv),
                "public_key_path": str(pub),
            },
        },
    )
    app = PipelineApp(cfg, inv, discovery_delay=0)
    # two hours ahead: the hour every object was written in has ended (and settled)
    daemon = Daemon(app, clock=lambda: time.time() + 7200)
    run = asyncio.create_task(daemon.run(install_signals=False))
    await wait_for(lambda: app.state.ledger.max_id() == 2, "a cycle")
    await wait_for(
        lambda: (
            app.state.count("archive_digests") >= 1
            and daemon.scheduler.stats["archive_digest"].last_ok_at is not None
        ),
        "a digest",
    )
    await stop(daemon, run)
    from aggregator.state import State

    state = State(cfg.state.path)
    try:
        async with aioboto3.Session().client("s3", region_name="us-east-1") as s3:
            rep = await verify_archive(
                s3,
                cfg.archive,
                cfg.integrity.archive_digest,
                load_public_key_file(pub),
                state=state,
            )
    finally:
        state.close()
    assert rep.ok, rep.as_dict()
    assert (rep.digests, rep.objects, rep.objects_ok) == (1, 2, 2)
    assert rep.undigested_ledger_rows == 0


NOW = datetime(2024, 5, 1, 16, 0, tzinfo=UTC).timestamp()


@pytest.fixture
async def s3(moto: str) -> AsyncIterator[Any]:
    async with aioboto3.Session().client("s3", region_name="us-east-1") as c:
        yield c


async def test_completeness_job_queues_a_withheld_file_and_ingest_fills_it(
    s3: Any, tmp_path: Path, testdata: Path
) -> None:
    """Digests (our key) list six files, one withheld from the bucket: the job finds it
    missing, queues it, exports the gauges; once it turns up the next cycle fetches it."""
    from cryptography.hazmat.primitives import serialization

    client("s3").create_bucket(Bucket="central")
    key = new_key()
    trail = await write_trail(s3, testdata, key=key, bucket="trail-bucket", hours=3)
    withheld = trail.digest_hours[1][1]
    await s3.delete_object(Bucket=trail.bucket, Key=withheld)
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "ours.pem").write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    cfg = daemon_settings(
        tmp_path,
        service={
            "health_host": "127.0.0.1",
            "health_port": 0,
            "shutdown_timeout_secs": 5,
            "ingest_interval_secs": 0.5,
            "job_intervals_secs": {"completeness": 0.5},
        },
        collect={"max_concurrency": 2, "relist_days": 2},
        detect={"enabled": False},
        integrity={"public_key_dir": str(keys), "list_public_keys": False},
    )
    prefix = f"AWSLogs/{ACCOUNT}/CloudTrail/{REGION}/"
    src = Source(f"{trail.bucket}/{prefix}", ACCOUNT, REGION, trail.bucket, prefix)
    inv = Inventory([Account(ACCOUNT)], {ACCOUNT: [REGION]}, [], [src], [])
    app = PipelineApp(cfg, inv, discovery_delay=0)
    app.ingestor = Ingestor(cfg, app.state, app.broker, app.aws, clock=lambda: NOW)
    daemon = Daemon(app, clock=lambda: NOW)
    run = asyncio.create_task(daemon.run(install_signals=False))
    try:
        await wait_for(lambda: app.state.retry.items() != [], "the withheld file queued")
        (item,) = app.state.retry.items()
        assert (item.bucket, item.key) == (trail.bucket, withheld)
        await wait_for(lambda: daemon.completeness.collector.report is not None, "a report")
        text = (await get(f"http://127.0.0.1:{daemon.server.port}/metrics"))[1]
        labels = (("account_id", ACCOUNT), ("region", REGION))
        assert series(text, "ctagg_completeness_expected_files")[labels] == 6
        assert series(text, "ctagg_completeness_missing_files")[labels] == 1
        assert series(text, "ctagg_digest_results")[(*labels, ("status", "valid"))] == 3
        # the file turns up: a following ingest cycle fetches it by name, the job clears it
        await s3.put_object(Bucket=trail.bucket, Key=withheld, Body=trail.logs[withheld])
        await wait_for(lambda: app.state.retry.items() == [], "the queue drained")
        await wait_for(
            lambda: (
                daemon.completeness.collector.report is not None
                and daemon.completeness.collector.report.missing == []
            ),
            "complete",
        )
        runs = daemon.scheduler.stats["completeness"].runs
        assert daemon.scheduler.stats["completeness"].failures == 0
        assert runs >= 2  # the gauges were served across runs without re-registration
        text = (await get(f"http://127.0.0.1:{daemon.server.port}/metrics"))[1]
        assert series(text, "ctagg_completeness_missing_files")[labels] == 0
        assert series(text, "ctagg_completeness_ratio")[()] == 1.0
        assert (
            len(
                [
                    f
                    for f in text_string_to_metric_families(text)
                    if f.name == "ctagg_completeness_ratio"
                ]
            )
            == 1
        )
    finally:
        await stop(daemon, run)
