"""Sharding changes who does the work, never what is archived: for Hypothesis-generated
organizations (accounts × regions, an organization trail and overlapping account trails, late
keys, LookupEvents windows), ``ctagg once --shard I/N`` for every I, as concurrent real
processes, for N in {1, 2, 3, 5}, archive the same events as one process, each exactly once;
each source object (and each LookupEvents window) is handled by exactly one shard, the one
owning its (account, region) pair.

moto has no LookupEvents, so the shard processes get theirs from a small HTTP server in this
process speaking CloudTrail's JSON protocol (``AWS_ENDPOINT_URL_CLOUDTRAIL``); it tells the
account from the request's access key through moto's own STS records (the moto server thread
runs in this process) and the region from the SigV4 credential scope.

``CTAGG_SHARD_EXAMPLES`` sets the number of Hypothesis examples (default 2: the test stays
under ~90 s on two cores; each example runs 2 rounds of 1 + 2 + 3 + 5 processes).
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
import tempfile
import threading
import urllib.request
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from archivecheck import archived, content
from awsfixtures import client, log_key, log_object, record
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from aggregator.aws.slots import owns
from aggregator.config import ShardSettings
from aggregator.ingest.work import LOOKUP_BUCKET

ROOT = Path(__file__).resolve().parents[2]
LOG_ARCHIVE = "222222222222"
ORG = "o-hypothesis1"
ACCOUNT_POOL = [f"{n}" * 12 for n in (1, 3, 4, 5, 6, 7, 8, 9)]
REGION_POOL = ["us-east-1", "eu-west-1", "ap-south-1", "sa-east-1"]
UNTRAILED_REGIONS = ["eu-central-1", "ca-central-1"]  # no trail bucket holds these pairs' events
SHARD_COUNTS = [1, 2, 3, 5]
EXAMPLES = int(os.environ.get("CTAGG_SHARD_EXAMPLES", "2"))
YESTERDAY = (datetime.now(UTC) - timedelta(days=1)).replace(
    hour=0, minute=0, second=0, microsecond=0
)

Rec = dict[str, Any]


# ---------------------------------------------------------------- LookupEvents over HTTP


_SCOPE = re.compile(r"Credential=([^/]+)/\d{8}/([^/]+)/cloudtrail/aws4_request")


class History:
    """CloudTrail event history per (account, region): what LookupEvents answers."""

    def __init__(self) -> None:
        self.events: dict[tuple[str, str], list[Rec]] = {}
        self.requests: Counter[tuple[str, str]] = Counter()
        self.lock = threading.Lock()

    def answer(self, account: str, region: str, body: dict[str, Any]) -> dict[str, Any]:
        start, end = float(body["StartTime"]), float(body["EndTime"])
        hits = sorted(
            (
                r
                for r in self.events.get((account, region), [])
                if start <= _epoch(r["eventTime"]) < end
            ),
            key=lambda r: str(r["eventTime"]),
            reverse=True,  # newest first, as CloudTrail answers
        )
        size = int(body.get("MaxResults", 50))
        offset = int(body.get("NextToken", "0"))
        page = hits[offset : offset + size]
        with self.lock:
            self.requests[(account, region)] += 1
        out: dict[str, Any] = {
            "Events": [
                {
                    "EventId": r["eventID"],
                    "EventName": r["eventName"],
                    "EventTime": _epoch(r["eventTime"]),
                    "CloudTrailEvent": json.dumps(r),
                }
                for r in page
            ]
        }
        if offset + size < len(hits):
            out["NextToken"] = str(offset + size)
        return out


def _epoch(t: str) -> float:
    return datetime.fromisoformat(t.replace("Z", "+00:00")).timestamp()


def _account_of(access_key: str) -> str:
    from moto.iam.models import get_account_id_from

    return get_account_id_from(access_key)


@pytest.fixture(scope="module")
def lookup_server() -> Iterator[tuple[str, History]]:
    history = History()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            target = self.headers.get("X-Amz-Target", "")
            m = _SCOPE.search(self.headers.get("Authorization", ""))
            if not target.endswith(".LookupEvents") or m is None:
                self._send(400, {"__type": "UnsupportedOperation", "message": target})
                return
            self._send(200, history.answer(_account_of(m[1]), m[2], json.loads(raw or b"{}")))

        def _send(self, code: int, doc: dict[str, Any]) -> None:
            body = json.dumps(doc).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/x-amz-json-1.1")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", history
    server.shutdown()
    thread.join()


# ---------------------------------------------------------------- organizations


@dataclass
class File:
    bucket: str
    key: str
    records: list[Rec]
    late: bool  # arrives after the first round, under a key sorting before handled ones


@dataclass
class World:
    accounts: list[str]
    regions: list[str]
    files: list[File] = field(default_factory=list)
    lookup: dict[tuple[str, str], list[Rec]] = field(default_factory=dict)

    def planted(self) -> list[Rec]:
        by_id: dict[str, Rec] = {}
        for f in self.files:
            by_id.update((r["eventID"], r) for r in f.records)
        for recs in self.lookup.values():
            by_id.update((r["eventID"], r) for r in recs)
        return list(by_id.values())


def _event(account: str, region: str, i: int) -> Rec:
    t = YESTERDAY + timedelta(hours=8, minutes=i, seconds=i)
    return record(f"hyp-{account}-{region}-{i}", account, region, t.strftime("%Y-%m-%dT%H:%M:%SZ"))


@st.composite
def worlds(draw: st.DrawFn) -> World:
    accounts = draw(st.lists(st.sampled_from(ACCOUNT_POOL), min_size=2, max_size=5, unique=True))
    regions = draw(st.lists(st.sampled_from(REGION_POOL), min_size=2, max_size=3, unique=True))
    world = World(sorted(accounts), sorted(regions))
    day = YESTERDAY.strftime("%Y%m%d")
    n_files = 0
    trailed: dict[tuple[str, str], list[Rec]] = {}
    for account in world.accounts:
        for region in world.regions:
            n = draw(st.integers(1, 6))
            events = [_event(account, region, i) for i in range(n)]
            trailed[(account, region)] = events
            picks = st.sets(st.integers(0, n - 1), min_size=1)
            org_files = st.lists(st.tuples(picks, st.booleans()), min_size=1, max_size=2)
            acct_files = st.lists(st.tuples(picks, st.booleans()), max_size=2)
            org_base = f"AWSLogs/{ORG}/{account}/CloudTrail/{region}/"
            acct_base = f"AWSLogs/{account}/CloudTrail/{region}/"
            for bucket, base, drawn in (
                ("org-trail", org_base, draw(org_files)),  # the org trail covers every pair
                ("acct-trails", acct_base, draw(acct_files)),  # an overlapping account trail
            ):
                for chosen, late in drawn:
                    n_files += 1
                    # late files carry earlier key times than the first round's files
                    hhmm = f"0{n_files % 10}00" if late else f"1{n_files % 10}05"
                    key = log_key(base, account, region, f"{day}T{hhmm}Z", f"H{n_files:015d}")
                    recs = [events[i] for i in sorted(chosen)]
                    world.files.append(File(bucket, key, recs, late))
    # LookupEvents windows (integrity.lookup.targets): pairs no trail covers (a region outside
    # the trails' regions), each with its own events, and trailed pairs whose event history
    # repeats some of the trail files' events (dedupe keeps one copy) and adds its own
    untrailed = [(a, r) for a in world.accounts for r in UNTRAILED_REGIONS]
    targets = draw(st.lists(st.sampled_from(untrailed), min_size=1, max_size=3, unique=True))
    targets += draw(st.lists(st.sampled_from(sorted(trailed)), max_size=2, unique=True))
    for account, region in targets:
        own = [_event(account, region, 100 + i) for i in range(draw(st.integers(1, 4)))]
        events = trailed.get((account, region), [])
        shared = draw(st.sets(st.integers(0, len(events) - 1))) if events else set()
        world.lookup[(account, region)] = own + [events[i] for i in sorted(shared)]
    # every example has late keys (the simplest examples Hypothesis tries first would not)
    if not any(f.late for f in world.files):
        last = world.files[-1]
        last.late, last.key = True, last.key.replace(f"_{day}T1", f"_{day}T0")
    return world


# ---------------------------------------------------------------- running shards


def _reset_moto(url: str) -> None:
    req = urllib.request.Request(f"{url}/moto-api/reset", method="POST")
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert resp.status == 200


def _put(files: list[File]) -> None:
    s3 = client("s3", LOG_ARCHIVE)
    for f in files:
        s3.put_object(Bucket=f.bucket, Key=f.key, Body=log_object(f.records))


def _config(tmp: Path, world: World) -> Path:
    cfg: dict[str, Any] = {
        "state": {"path": str(tmp / "state.db")},
        "aws": {"region": "us-east-1", "max_attempts": 2},
        "credentials": {"role_arn_template": "arn:aws:iam::{account_id}:role/ctagg-member"},
        "discovery": {
            "accounts": {"source": "static", "static": [{"id": a} for a in world.accounts]},
            "regions": {"include": world.regions},
            "trails": {
                "discover": False,
                "static_sources": [
                    {
                        "bucket": "org-trail",
                        "organization_id": ORG,
                        "reader_account_id": LOG_ARCHIVE,
                    },
                    {"bucket": "acct-trails", "reader_account_id": LOG_ARCHIVE},
                ],
            },
        },
        "integrity": {
            "lookup": {
                "mode": "off",
                "targets": [{"account_id": a, "region": r} for a, r in sorted(world.lookup)],
                # one window: yesterday (the first run reads one day back)
                "window_secs": 86400,
                "overlap_secs": 300,
                "lag_secs": 0,
                "backfill_days": 1,
            }
        },
        "collect": {"max_concurrency": 2},
        "archive": {"bucket": "central"},
    }
    path = tmp / "config.yaml"
    path.write_text(json.dumps(cfg))
    return path


def _run_shards(config: Path, moto: str, lookup: str, n: int) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("CTAGG_SHARD_INDEX", "POD_NAME")}
    env.update(
        AWS_ENDPOINT_URL=moto,
        AWS_ENDPOINT_URL_CLOUDTRAIL=lookup,
        PYTHONPATH=str(ROOT),
        HOSTNAME="test-host",
    )
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "aggregator",
                "once",
                "--json",
                str(config),
                *(["--shard", f"{i}/{n}"] if n > 1 else []),
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        for i in range(n)
    ]
    for i, p in enumerate(procs):
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, (n, i, err[-3000:])
        report = json.loads(out.strip().splitlines()[-1])
        assert report["errors"] == 0, (n, i, report, err[-3000:])


def _handled(state: Path) -> set[tuple[str, str]]:
    """Every (bucket, key) a state handled: the open days' rows and the closed days'
    compressed name lists (a LookupEvents window starting two days back is closed at once)."""
    if not state.exists():
        return set()
    conn = sqlite3.connect(f"file:{state}?mode=ro", uri=True)
    try:
        out = {(b, k) for b, k in conn.execute("SELECT bucket, key FROM objects")}
        closed = "SELECT bucket, prefix, keys_z FROM prefixes WHERE closed AND keys_z IS NOT NULL"
        for bucket, prefix, keys_z in conn.execute(closed):
            names = zlib.decompress(keys_z).decode().split("\n")
            out |= {(bucket, prefix + name) for name in names if name}  # names lose the prefix
        return out
    finally:
        conn.close()


def _pair_of(key: str) -> tuple[str, str]:
    if key.startswith("lookup/"):  # lookup/<account>/<region>/<window>
        _, account, region, _ = key.split("/", 3)
        return account, region
    account, _, region = key.rsplit("/", 1)[-1].split("_")[:3]
    return account, region


def _window_key(account: str, region: str) -> str:
    """The one window of a target (``window_secs`` a day, the first run reads one day back):
    yesterday's cell, read from ``overlap_secs`` before it (``lookup.window_source_key``)."""
    start = YESTERDAY - timedelta(seconds=300)
    end = YESTERDAY + timedelta(days=1)
    return f"lookup/{account}/{region}/{start:%Y%m%dT%H%M%SZ}-{end:%Y%m%dT%H%M%SZ}"


def _archive_with(n: int, world: World, moto: str, lookup: str) -> Counter[bytes]:
    """A fresh moto, the first-round objects, N shards; the late objects, N shards again.
    Returns the central archive's events by content; checks who handled which object."""
    _reset_moto(moto)
    client("s3").create_bucket(Bucket="central")
    s3 = client("s3", LOG_ARCHIVE)
    for b in ("org-trail", "acct-trails"):
        s3.create_bucket(Bucket=b)
    with tempfile.TemporaryDirectory() as tmp:
        config = _config(Path(tmp), world)
        _put([f for f in world.files if not f.late])
        _run_shards(config, moto, lookup, n)
        _put([f for f in world.files if f.late])
        _run_shards(config, moto, lookup, n)

        states = (
            [Path(tmp) / "state.db"]
            if n == 1
            else [Path(tmp) / f"state.shard-{i}-of-{n}.db" for i in range(n)]
        )
        per_shard = [_handled(s) for s in states]
    rows = [row for h in per_shard for row in h]
    assert len(rows) == len(set(rows)), f"N={n}: an object handled by two shards"
    sources = {(f.bucket, f.key) for f in world.files}
    assert {r for r in rows if r[0] in ("org-trail", "acct-trails")} == sources, n
    for i, h in enumerate(per_shard):
        for _bucket, key in h:
            assert owns(ShardSettings(index=i, count=n), *_pair_of(key)), (n, i, key)
    windows = [k for b, k in rows if b == LOOKUP_BUCKET]
    assert sorted(windows) == sorted(_window_key(a, r) for a, r in world.lookup), n
    return Counter(content(e) for e in archived())


@pytest.mark.timeout(600)
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    # an example costs ~30 s of processes: shrinking a failure would take many minutes, so a
    # failure is reported as generated (still a whole organization, readable in the output)
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(world=worlds())
def test_n_shards_archive_what_one_process_archives(
    moto_server: str, lookup_server: tuple[str, History], world: World
) -> None:
    """For N in {1, 2, 3, 5} concurrent shard processes over the same organization (two
    rounds: the late keys arrive between them): the central archive holds exactly the planted
    events once each, the same as with one process; each object was one shard's."""
    url, history = lookup_server
    history.events = world.lookup
    planted = Counter(content(r) for r in world.planted())

    history.requests.clear()
    results = {n: _archive_with(n, world, moto_server, url) for n in SHARD_COUNTS}
    assert set(history.requests) == set(world.lookup)  # LookupEvents went to the fake

    assert results[1] == planted  # one process: every planted event, exactly once
    for n in SHARD_COUNTS[1:]:
        assert results[n] == results[1], f"N={n} archived something else than one process"
