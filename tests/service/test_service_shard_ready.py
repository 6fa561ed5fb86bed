"""A sharded daemon against moto: /readyz has a ``shard_holds_slots`` check that stays red
(saying why) until the shard's first cycle start checked the layout and wrote its writer
marker, turns red again when a later cycle is refused (the layout changed under it), and
/metrics says how many slots and (account, region) pairs the shard owns and whether it holds
them. One shard: no such check, and the slot gauge counts every slot."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from archivecheck import assert_exactly_once, central_bodies
from awsfixtures import StsSessions, client, log_key, log_object, make_source, record

from aggregator.aws.inventory import Account, Inventory
from aggregator.aws.slots import owned_slots, owns
from aggregator.config import Settings, ShardSettings, parse_settings
from aggregator.ingest.resize import InstallationMismatch
from aggregator.service.daemon import Daemon
from tests.service.test_service_daemon import PipelineApp, series

ACCOUNTS = ["111111111111", "333333333333", "444444444444"]
REGIONS = ["us-east-1", "eu-west-1", "ap-south-1"]
TODAY = time.strftime("%Y%m%d", time.gmtime())


@pytest.fixture
def planted(moto: str) -> dict[str, Any]:
    """One trail object of two events per (account, region) pair; the full inventory."""
    s3 = client("s3")
    s3.create_bucket(Bucket="central")
    s3.create_bucket(Bucket="org-trail")
    when = f"{TODAY[:4]}-{TODAY[4:6]}-{TODAY[6:]}T01:00:00Z"
    sources, events = [], []
    for n, account in enumerate(ACCOUNTS):
        for region in REGIONS:
            src = make_source("org-trail", account, region)
            recs = [record(f"e-{account}-{region}-{j}", account, region, when) for j in range(2)]
            key = log_key(src.prefix, account, region, f"{TODAY}T0100Z", f"K{n:015d}")
            s3.put_object(Bucket="org-trail", Key=key, Body=log_object(recs))
            sources.append(src)
            events += recs
    inventory = Inventory(
        accounts=[Account(a) for a in ACCOUNTS],
        regions={a: list(REGIONS) for a in ACCOUNTS},
        trails=[],
        sources=sources,
        failures=[],
    )
    return {"inventory": inventory, "events": events}


def settings(tmp_path: Path, shard: dict[str, Any] | None) -> Settings:
    doc: dict[str, Any] = {
        "state": {"path": str(tmp_path / "state.db")},
        "archive": {"bucket": "central"},
        "aws": {"max_attempts": 1},
        "collect": {"max_concurrency": 2},
        "integrity": {"lookup": {"mode": "off"}},
        "service": {
            "health_host": "127.0.0.1",
            "health_port": 0,
            "ingest_interval_secs": 3600,
            "shutdown_timeout_secs": 5,
        },
    }
    if shard is not None:
        doc["shard"] = shard
    return parse_settings(doc)


async def get(url: str) -> tuple[int, dict[str, Any] | str]:
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        text = await r.text()
        ctype = r.headers.get("Content-Type", "")
        return r.status, json.loads(text) if "json" in ctype else text


async def until_ready(base: str, secs: float = 30) -> dict[str, Any]:
    """/readyz's body once it answers 200 (fails with its last answer after ``secs``)."""
    deadline = time.monotonic() + secs
    while True:
        status, body = await get(base + "/readyz")
        if status == 200:
            assert isinstance(body, dict)
            return body
        assert time.monotonic() < deadline, body
        await asyncio.sleep(0.1)


async def started(daemon: Daemon) -> tuple[asyncio.Task[int], str]:
    run = asyncio.create_task(daemon.run(install_signals=False))
    while daemon.server.port == 0:  # noqa: ASYNC110 (the server sets its port when bound)
        await asyncio.sleep(0.01)
    return run, f"http://127.0.0.1:{daemon.server.port}"


async def test_a_shard_is_ready_only_once_it_holds_its_slots(
    tmp_path: Path, planted: dict[str, Any]
) -> None:
    """Before the first cycle (and after the layout check `ctagg run` makes before starting):
    not ready; after the first cycle's start: ready, with the owned slots, the marker's
    generation and the layout's epoch; a later cycle refused by a resize under it: not ready
    again, saying why. /metrics: owned slots and pairs, and whether it holds them."""
    shard = ShardSettings(index=1, count=2)
    mine = [(a, r) for a in ACCOUNTS for r in REGIONS if owns(shard, a, r)]
    assert 0 < len(mine) < len(ACCOUNTS) * len(REGIONS)  # a real split
    cfg = settings(tmp_path, {"count": 2, "index": 1})
    app = PipelineApp(cfg, planted["inventory"], 1.0, StsSessions())
    daemon = Daemon(app)

    ok, report = daemon.health.readiness()
    assert ok is False
    unclaimed = {"ok": False, "reason": "shard-1-of-2 has not claimed its writer marker yet"}
    assert report["shard_holds_slots"] == unclaimed
    await app.ingestor.check_installation()  # serve() does this before the daemon starts
    ok, report = daemon.health.readiness()
    assert report["shard_holds_slots"] == unclaimed  # the layout is recorded, not the marker

    run, base = await started(daemon)
    try:
        status, body = await get(base + "/readyz")  # discovery still running: no cycle yet
        assert status == 503
        assert isinstance(body, dict)
        assert body["checks"]["shard_holds_slots"] == unclaimed

        body = await until_ready(base)
        check = body["checks"]["shard_holds_slots"]
        slots = len(owned_slots(shard))
        assert check["ok"] is True
        assert check["reason"].startswith(
            f"shard-1-of-2 holds {slots} of 256 slots (writer generation 1 at "
        )
        assert check["reason"].endswith(", layout epoch 1)")
        marker = json.loads(central_bodies(prefix="_ctagg/")["_ctagg/writer.shard-1-of-2.json"])
        assert marker["generation"] == 1
        assert marker["written_at"] in check["reason"]

        _, text = await get(base + "/metrics")
        assert isinstance(text, str)
        assert series(text, "ctagg_shard_slots") == {(("shard", "1"),): slots}
        assert series(text, "ctagg_shard_pairs") == {(("shard", "1"),): len(mine)}
        assert series(text, "ctagg_shard_info") == {(("count", "2"), ("shard", "1")): 1}
        assert series(text, "ctagg_shard_holds_slots") == {(("shard", "1"),): 1}
        assert_exactly_once([e for e in planted["events"] if (e["recipientAccountId"],
                             e["awsRegion"]) in mine])  # fmt: skip

        # another process resized the installation to 3 while this one runs: its next
        # cycle is refused, and it no longer holds its slots
        client("s3").put_object(
            Bucket="central",
            Key="_ctagg/installation.json",
            Body=json.dumps({"slots": 256, "shards": 3, "epoch": 2}).encode(),
        )
        with pytest.raises(InstallationMismatch):
            await daemon._ingest()
        status, body = await get(base + "/readyz")
        assert status == 503
        assert isinstance(body, dict)
        check = body["checks"]["shard_holds_slots"]
        assert check["ok"] is False
        assert check["reason"].startswith(
            "shard-1-of-2 has not claimed its writer marker yet; latest claim failed: "
            "InstallationMismatch: s3://central/_ctagg/installation.json now records 3 "
            "shard(s) (epoch 2)"
        )
        _, text = await get(base + "/metrics")
        assert isinstance(text, str)
        assert series(text, "ctagg_shard_holds_slots") == {(("shard", "1"),): 0}
    finally:
        daemon.scheduler.request_stop("test")
        assert await asyncio.wait_for(run, timeout=15) == 0


async def test_one_shard_has_no_shard_check(tmp_path: Path, planted: dict[str, Any]) -> None:
    """count 1: /readyz has no shard_holds_slots check and turns ready after the first cycle as
    before; ctagg_shard_slots counts all 256 slots and ctagg_shard_pairs every pair."""
    app = PipelineApp(settings(tmp_path, None), planted["inventory"], 0.0, StsSessions())
    daemon = Daemon(app)
    assert "shard_holds_slots" not in daemon.health.ready
    run, base = await started(daemon)
    try:
        body = await until_ready(base)
        assert "shard_holds_slots" not in body["checks"]
        _, text = await get(base + "/metrics")
        assert isinstance(text, str)
        assert series(text, "ctagg_shard_slots") == {(("shard", "0"),): 256}
        assert series(text, "ctagg_shard_pairs") == {(("shard", "0"),): 9}
        assert series(text, "ctagg_shard_holds_slots") == {(("shard", "0"),): 1}
        assert set(central_bodies(prefix="_ctagg/")) == {"_ctagg/writer.json"}
        assert_exactly_once(planted["events"])
    finally:
        daemon.scheduler.request_stop("test")
        assert await asyncio.wait_for(run, timeout=15) == 0
