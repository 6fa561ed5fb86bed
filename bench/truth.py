"""The archive as the truth (issue 13): what the read-back costs.

    .venv/bin/python bench/truth.py [--quick] [--densities 12,60] [--hours 12] [--records 1000]
                                    [--catchup-regions 3] [--catchup-per-hour 4]
                                    [--catchup-records 250]

A moto server runs in its own process (pinned to the other core when there are two), so this
process measures only ctagg's own work on one core. Each scenario runs the real ingest path
(``Ingestor.run``: listing, GetObject, decode, read-back, dedupe against SQLite, PUT, commit)
against moto's S3 over HTTP, one cycle at a time, each on a ``State`` opened for it. Requests
are counted by wrapping the S3 client (``AioBaseClient._make_api_call``: one per API call,
retries inside it), by operation and bucket. Reported:

* **late hour** (per archive density, objects of ``--records`` records per hour): one state
  archives ``--hours`` hours of one day for one account-region (the organization trail);
  every central object is checked to be the source object byte for byte; the window is pruned
  past them (``State.prune_window``); then the account trail's copies of one late hour arrive
  (same events, other object names): the first late hour of the day reads the day back (one
  LIST per day prefix, a GET of every central object there); a second late hour of the same
  day finds it covered. Wall time, CPU, central GET/LIST per late hour; the central bucket is
  then decoded: every event exactly once.
* **catch-up** of a fresh state beside a 7-day archive: one state archives 7 days × 24 hours ×
  ``--catchup-per-hour`` objects for ``--catchup-regions`` regions of one account; its state
  file is deleted; a fresh state is given the account trail's copies of the same events and
  run cycle after cycle (default ``dedupe.readback_max_objects``, 2000 GETs per cycle) until no
  object is deferred. Cycles needed, time and GETs of each and in total; the central bucket is
  decoded: every event exactly once (nothing duplicated, nothing lost).

``--quick`` is a smoke run (small archives, under a minute). Numbers on a shared machine vary
by tens of per cent from run to run: repeat a scenario (``--repeat``) and read the spread.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import hashlib
import json
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aioboto3
import boto3
import orjson
from aiobotocore.client import AioBaseClient

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ingest import (  # bench/ingest.py: moto in its own process, on the other core
    start_moto,
    use_moto,
)

from aggregator.aws.clients import Aws
from aggregator.aws.inventory import Account, Inventory, Source
from aggregator.config import Settings, parse_settings
from aggregator.ingest.cycle import Ingestor
from aggregator.ingest.work import CycleReport
from aggregator.service.demo import find_testdata, load_records
from aggregator.service.runtime import tune_gc
from aggregator.state import State

ACCOUNT = "123456789012"  # moto's default identity: read with the base session
ORG_BUCKET = "bench-org-trail"
ACCT_BUCKET = "bench-acct-trail"
CENTRAL = "bench-central"
DAY = datetime(2024, 5, 1, tzinfo=UTC)

# ----------------------------------------------------------------------- request counting

CALLS: Counter[tuple[str, str]] = Counter()
_make_api_call = AioBaseClient._make_api_call


async def _counted(self: Any, operation_name: str, api_params: dict[str, Any]) -> Any:
    CALLS[(operation_name, str(api_params.get("Bucket", "")))] += 1
    return await _make_api_call(self, operation_name, api_params)


AioBaseClient._make_api_call = _counted  # every S3 call ctagg makes, by operation and bucket


def central_calls(op: str) -> int:
    return CALLS[(op, CENTRAL)]


# ----------------------------------------------------------------------- fixtures


def check(ok: bool, what: object) -> None:
    """A failed check ends the benchmark (not an assert: it holds under ``python -O`` too)."""
    if not ok:
        raise SystemExit(f"check failed: {what}")


class BaseSessions:
    """Every account read with the base identity (moto's default account)."""

    def __init__(self) -> None:
        self._session = aioboto3.Session(region_name="us-east-1")

    async def session_for(self, account_id: str | None) -> aioboto3.Session:
        return self._session


def source(bucket: str, region: str) -> Source:
    prefix = f"AWSLogs/{ACCOUNT}/CloudTrail/{region}/"
    return Source(
        source_id=f"{bucket}/{prefix}",
        account_id=ACCOUNT,
        region=region,
        bucket=bucket,
        prefix=prefix,
    )


def settings(path: str, url: str) -> Settings:
    return parse_settings(
        {
            "state": {"path": path},
            "aws": {"endpoint_url": url},
            "archive": {"bucket": CENTRAL},
            "collect": {"max_concurrency": 8, "relist_days": 10},
        },
        {},
    )


_BASE: list[dict[str, Any]] = []


def base_records() -> list[dict[str, Any]]:
    if not _BASE:
        testdata = find_testdata(ROOT)
        if testdata is None:
            raise SystemExit("shared/testdata not found")
        _BASE.extend(r for r in load_records(testdata) if len(orjson.dumps(r)) < 8000)
    return _BASE


@dataclass(frozen=True)
class Hour:
    """One hour of one region's events: ``per_hour`` log files of ``records`` records."""

    region: str
    start: datetime
    per_hour: int
    records: int

    def objects(self, copy: str) -> Iterator[tuple[str, bytes]]:
        """(key, gzip body) of each file. ``copy`` names the trail: the same events under
        other file names (an organization trail and an account trail deliver the same
        events in files of their own)."""
        base = base_records()
        for i in range(self.per_hour):
            # stamped minutes 5..59 of the hour, holding events of the 5 minutes before
            stamp = self.start + timedelta(minutes=5 + i * 55 // self.per_hour)
            recs = []
            for j in range(self.records):
                r = dict(base[(i * self.records + j) % len(base)])
                r["eventID"] = (
                    f"{self.region}-{self.start:%Y%m%d%H}-{i:03d}-{j:05d}"  # unique events
                )
                r["recipientAccountId"] = ACCOUNT
                r["awsRegion"] = self.region
                at = stamp - timedelta(seconds=300 * (self.records - j) / self.records)
                r["eventTime"] = at.strftime("%Y-%m-%dT%H:%M:%SZ")
                recs.append(r)
            ts = stamp.strftime("%Y%m%dT%H%MZ")
            key = (
                f"AWSLogs/{ACCOUNT}/CloudTrail/{self.region}/{stamp:%Y/%m/%d}/"
                f"{ACCOUNT}_CloudTrail_{self.region}_{ts}_{copy}{i:03d}{self.start:%d%H}.json.gz"
            )
            yield key, gzip.compress(orjson.dumps({"Records": recs}), 6)


def upload(bucket: str, hours: list[Hour], copy: str) -> dict[str, str]:
    """Puts the files of ``hours``; returns {sha256: key} of their bodies."""
    s3 = boto3.client("s3", region_name="us-east-1")
    shas = {}
    for h in hours:
        for key, body in h.objects(copy):
            s3.put_object(Bucket=bucket, Key=key, Body=body)
            shas[hashlib.sha256(body).hexdigest()] = key
    return shas


def reset(url: str) -> None:
    req = urllib.request.Request(url + "/moto-api/reset", method="POST")
    urllib.request.urlopen(req, timeout=30).close()
    s3 = boto3.client("s3", region_name="us-east-1")
    for b in (ORG_BUCKET, ACCT_BUCKET, CENTRAL):
        s3.create_bucket(Bucket=b)


def central_objects() -> dict[str, bytes]:
    s3 = boto3.client("s3", region_name="us-east-1")
    out = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=CENTRAL, Prefix="AWSLogs/"):
        for obj in page.get("Contents", ()):
            out[obj["Key"]] = s3.get_object(Bucket=CENTRAL, Key=obj["Key"])["Body"].read()
    return out


def exactly_once(bodies: dict[str, bytes], expected: int) -> tuple[int, int]:
    """(events decoded from the central bucket, distinct eventIDs); asserts both equal
    ``expected`` (every planted event has its own eventID)."""
    ids: Counter[str] = Counter()
    for body in bodies.values():
        for r in orjson.loads(gzip.decompress(body))["Records"]:
            ids[r["eventID"]] += 1
    total = sum(ids.values())
    check(
        total == expected and len(ids) == expected,
        f"central bucket: {total} events, {len(ids)} distinct, {expected} planted",
    )
    return total, len(ids)


@dataclass
class Run:
    wall: float
    cpu: float
    report: CycleReport
    central_get: int
    central_list: int
    central_put: int
    source_get: int


def cycle(cfg: Settings, sources: list[Source], clock: float) -> Run:
    """One ingest cycle on the state of ``cfg`` (opened for it, closed after it)."""
    regions = sorted({s.region for s in sources})

    async def go() -> CycleReport:
        state = State(cfg.state.path)
        try:
            ing = Ingestor(cfg, state, BaseSessions(), Aws(cfg.aws), clock=lambda: clock)
            return await ing.run(
                Inventory(
                    accounts=[Account(ACCOUNT)],
                    regions={ACCOUNT: regions},
                    trails=[],
                    sources=sources,
                    failures=[],
                )
            )
        finally:
            state.close()

    CALLS.clear()
    cpu0, t0 = time.process_time(), time.perf_counter()
    report = asyncio.run(go())
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    check(report.errors == 0 and report.quarantined == 0, report)
    source_get = sum(n for (op, b), n in CALLS.items() if op == "GetObject" and b != CENTRAL)
    return Run(
        wall,
        cpu,
        report,
        central_calls("GetObject"),
        central_calls("ListObjectsV2"),
        central_calls("PutObject"),
        source_get,
    )


def prune(cfg: Settings, before: datetime) -> int:
    state = State(cfg.state.path)
    try:
        return state.prune_window(before.timestamp(), cfg.dedupe.readback_lag_days)
    finally:
        state.close()


# ----------------------------------------------------------------------- scenarios


def late_hour(url: str, per_hour: int, hours: int, records: int) -> dict[str, Any]:
    """``hours`` hours of one day archived, the window pruned past them, then two late hours
    of that day arrive again (the account trail's copies)."""
    reset(url)
    region = "us-east-1"
    day = [Hour(region, DAY + timedelta(hours=h), per_hour, records) for h in range(hours)]
    clock = (DAY + timedelta(days=1, hours=12)).timestamp()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = settings(f"{tmp}/state.db", url)
        shas = upload(ORG_BUCKET, day, "O")
        build = cycle(cfg, [source(ORG_BUCKET, region)], clock)
        bodies = central_objects()
        # a whole clean object is archived as it came: same bytes (every central object's
        # SHA-256 is a source object's, one for one)
        same = {hashlib.sha256(b).hexdigest() for b in bodies.values()} == set(shas)
        check(same and len(bodies) == len(shas), "central objects are not the source bytes")
        pruned = prune(cfg, DAY + timedelta(hours=hours))
        late = []
        for h in (hours // 2, hours // 2 + 1):  # two late hours of the same day
            upload(ACCT_BUCKET, [day[h]], "A")
            run = cycle(cfg, [source(ACCT_BUCKET, region)], clock)
            check(run.report.events_archived == 0 and run.report.readback_deferred == 0, run)
            late.append(run)
        exactly_once(central_objects(), hours * per_hour * records)
    return {
        "per_hour": per_hour,
        "hours": hours,
        "records": records,
        "archive_objects": len(shas),
        "build_wall": build.wall,
        "build_eps": hours * per_hour * records / build.wall,
        "pruned_keys": pruned,
        "byte_for_byte": same,
        "late": late,
    }


def catch_up(
    url: str, regions: list[str], per_hour: int, records: int, days: int = 7
) -> dict[str, Any]:
    """A 7-day archive written by one state; that state lost; a fresh one given the account
    trail's copies of the same events, cycle after cycle until nothing waits."""
    reset(url)
    hours = [
        Hour(r, DAY + timedelta(hours=h), per_hour, records)
        for r in regions
        for h in range(days * 24)
    ]
    clock = (DAY + timedelta(days=days, hours=12)).timestamp()
    events = len(hours) * per_hour * records
    with tempfile.TemporaryDirectory() as tmp:
        cfg = settings(f"{tmp}/state.db", url)
        upload(ORG_BUCKET, hours, "O")
        build = cycle(cfg, [source(ORG_BUCKET, r) for r in regions], clock)
        check(build.report.events_archived == events, build.report)
        for suffix in ("", "-wal", "-shm"):
            Path(cfg.state.path + suffix).unlink(missing_ok=True)  # the state is lost
        upload(ACCT_BUCKET, hours, "A")
        copies = len(hours) * per_hour
        runs: list[Run] = []
        handled = 0
        while True:
            run = cycle(cfg, [source(ACCT_BUCKET, r) for r in regions], clock)
            runs.append(run)
            handled += run.report.objects
            check(run.report.events_archived == 0, run.report)  # every event was there
            if run.report.readback_deferred == 0 and handled >= copies:
                break
            check(len(runs) < 20, "catch-up does not converge")
        total, distinct = exactly_once(central_objects(), events)
    return {
        "regions": len(regions),
        "per_hour": per_hour,
        "records": records,
        "archive_objects": len(hours) * per_hour,
        "events": events,
        "build_wall": build.wall,
        "runs": runs,
        "copies": copies,
        "decoded": total,
        "distinct": distinct,
    }


# ----------------------------------------------------------------------- output


def spread(xs: list[float]) -> str:
    lo, hi = min(xs), max(xs)
    return f"{lo:.2f}" if len(xs) == 1 else f"{lo:.2f} (max {hi:.2f})"


def print_late(results: list[dict[str, Any]]) -> None:
    print("late hour: copies of one hour arrive after the window forgot it (one account-region)")
    head = (
        f"{'objects/h':>9} {'archive':>8} {'late hour':<24} {'wall s':>16} {'CPU s':>16} "
        f"{'GET':>5} {'LIST':>5} {'read-back objects':>18}"
    )
    print(head)
    by: dict[tuple[int, int], list[dict[str, Any]]] = {}
    for r in results:
        by.setdefault((r["per_hour"], r["archive_objects"]), []).append(r)
    for (per_hour, objs), rs in by.items():
        for i, what in enumerate(("first of the day (cold)", "second, same day")):
            runs: list[Run] = [r["late"][i] for r in rs]
            print(
                f"{per_hour:>9} {objs:>8} {what:<24} {spread([x.wall for x in runs]):>16} "
                f"{spread([x.cpu for x in runs]):>16} {runs[0].central_get:>5} "
                f"{runs[0].central_list:>5} {runs[0].report.readback_objects:>18}"
            )
        print(
            f"{'':>9} {'':>8} archive built at "
            f"{max(r['build_eps'] for r in rs):,.0f} events/s (best); every central object "
            f"the source's bytes: {all(r['byte_for_byte'] for r in rs)}; exactly once: True"
        )


def print_catch_up(r: dict[str, Any]) -> None:
    print(
        f"catch-up: fresh state beside a 7-day archive of {r['archive_objects']} objects "
        f"({r['regions']} regions × 168 h × {r['per_hour']} × {r['records']} records, "
        f"{r['events']:,} events; built in {r['build_wall']:.1f} s)"
    )
    print(
        f"{'cycle':>5} {'wall s':>8} {'CPU s':>8} {'objects':>8} {'deferred':>8} "
        f"{'read back':>9} {'days':>5} {'GET':>6} {'LIST':>5} {'src GET':>7} {'archived':>8}"
    )
    runs: list[Run] = r["runs"]
    for i, x in enumerate(runs, 1):
        rep = x.report
        print(
            f"{i:>5} {x.wall:>8.2f} {x.cpu:>8.2f} {rep.objects:>8} {rep.readback_deferred:>8} "
            f"{rep.readback_objects:>9} {rep.readback_days:>5} {x.central_get:>6} "
            f"{x.central_list:>5} {x.source_get:>7} {rep.events_archived:>8}"
        )
    print(
        f"{'total':>5} {sum(x.wall for x in runs):>8.2f} {sum(x.cpu for x in runs):>8.2f} "
        f"{sum(x.report.objects for x in runs):>8} {'':>8} "
        f"{sum(x.report.readback_objects for x in runs):>9} "
        f"{sum(x.report.readback_days for x in runs):>5} "
        f"{sum(x.central_get for x in runs):>6} {sum(x.central_list for x in runs):>5}"
    )
    print(
        f"      {len(runs)} cycle(s) with readback_max_objects=2000; central bucket decoded: "
        f"{r['decoded']:,} events, {r['distinct']:,} distinct of {r['events']:,} planted"
    )


def as_json(x: Any) -> Any:
    if isinstance(x, Run):
        return {
            "wall": round(x.wall, 3),
            "cpu": round(x.cpu, 3),
            "central_get": x.central_get,
            "central_list": x.central_list,
            "central_put": x.central_put,
            "source_get": x.source_get,
            "objects": x.report.objects,
            "readback_objects": x.report.readback_objects,
            "readback_days": x.report.readback_days,
            "readback_deferred": x.report.readback_deferred,
            "events_archived": x.report.events_archived,
        }
    if isinstance(x, dict):
        return {k: as_json(v) for k, v in x.items()}
    if isinstance(x, list):
        return [as_json(v) for v in x]
    if isinstance(x, float):
        return round(x, 3)
    return x


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="a smoke run: small archives")
    ap.add_argument("--densities", default="12,60", help="objects per hour (late hour)")
    ap.add_argument("--hours", type=int, default=12, help="hours archived (late hour)")
    ap.add_argument("--records", type=int, default=1000, help="records per object (late hour)")
    ap.add_argument("--repeat", type=int, default=1, help="late-hour runs per density")
    ap.add_argument("--catchup-regions", type=int, default=3)
    ap.add_argument("--catchup-per-hour", type=int, default=4)
    ap.add_argument("--catchup-records", type=int, default=250)
    ap.add_argument("--only", choices=("late", "catchup"), default=None)
    args = ap.parse_args()
    if args.quick:
        args.densities, args.hours, args.records = "4", 4, 200
        args.catchup_regions, args.catchup_per_hour, args.catchup_records = 1, 1, 50
    densities = [int(d) for d in args.densities.split(",")]
    regions = ["us-east-1", "us-west-2", "eu-west-1", "eu-central-1", "ap-southeast-2"]

    proc, url = start_moto()
    try:
        use_moto(url)
        tune_gc()  # the GC thresholds the service runs with (App() sets them)
        result: dict[str, Any] = {}
        if args.only in (None, "late"):
            late = []
            for _ in range(args.repeat):  # densities in turns
                for d in densities:
                    late.append(late_hour(url, d, args.hours, args.records))
            print_late(late)
            result["late_hour"] = late
        if args.only in (None, "catchup"):
            r = catch_up(
                url, regions[: args.catchup_regions], args.catchup_per_hour, args.catchup_records
            )
            print_catch_up(r)
            result["catch_up"] = r
        print(json.dumps(as_json(result)))
        return 0
    finally:
        proc.terminate()
        proc.wait(timeout=10)


if __name__ == "__main__":
    raise SystemExit(main())
