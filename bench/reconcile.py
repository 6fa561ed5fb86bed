"""Reconcile benchmark: ``ctagg reconcile`` over N central objects in a moto server.

    .venv/bin/python bench/reconcile.py [--objects 10000] [--records 20] [--planted 100]

A moto server runs in its own process (pinned to the other core when there are two), so this
process measures ctagg's own work on one core. The central bucket is filled directly (objects
in the CloudTrail layout, spread over accounts × regions × 2 days, each with its ledger row, as
ingest writes them); ``--planted`` of them are then copied under other keys of the layout (each
an unknown object whose events are all elsewhere). Reported:

* the report-only run (what the daemon does daily): wall time, objects/s, events/s, CPU seconds,
  peak RSS, and the findings (the planted copies must be found, nothing else)
* moto's limit: every object of the range read with a bare aioboto3 GetObject at the same
  concurrency (no listing, no decoding, no state): reconcile cannot beat it here
* the ``--repair`` run that removes the copies, and a second report that must find nothing
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import resource
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from pathlib import Path
from typing import Any

import boto3

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from aggregator.archive.codec import encode_records
from aggregator.archive.store import KeyParts, central_key, opened
from aggregator.aws.clients import Aws
from aggregator.config import parse_settings
from aggregator.ingest.dedupe import key_and_bytes
from aggregator.integrity.reconcile import reconcile
from aggregator.state import State
from bench.ingest import start_moto, use_moto

CENTRAL = "bench-central"
ACCOUNTS = [f"1000000000{i:02d}" for i in range(5)]
REGIONS = ["us-east-1", "eu-west-1"]
DAYS = ["20240501", "20240502"]


def record(account: str, region: str, day: str, n: int, j: int) -> dict[str, Any]:
    minute = n % 1440
    t = f"{day[:4]}-{day[4:6]}-{day[6:]}T{minute // 60:02d}:{minute % 60:02d}:{j % 60:02d}Z"
    return {
        "eventVersion": "1.08",
        "userIdentity": {"type": "IAMUser", "accountId": account, "userName": f"u{j}"},
        "eventTime": t,
        "eventSource": "ec2.amazonaws.com",
        "eventName": "DescribeInstances",
        "awsRegion": region,
        "sourceIPAddress": "198.51.100.7",
        "userAgent": "aws-cli/2",
        "requestParameters": {"instancesSet": {"items": [{"instanceId": f"i-{n:08x}{j:04x}"}]}},
        "responseElements": None,
        "requestID": f"req-{account}-{region}-{day}-{n}-{j}",
        "eventID": f"ev-{account}-{region}-{day}-{n}-{j}",
        "eventType": "AwsApiCall",
        "recipientAccountId": account,
    }


def build(n_objects: int, per: int) -> list[tuple[str, bytes, str, str, int]]:
    """(central key, body, account, region, events) of n objects over the groups and days."""
    out = []
    slots = [(a, r, d) for a in ACCOUNTS for r in REGIONS for d in DAYS]
    for i in range(n_objects):
        a, r, d = slots[i % len(slots)]
        n = i // len(slots)
        ts = f"{d}T{(n % 1440) // 60:02d}{n % 60:02d}Z"
        key = central_key("", KeyParts(a, r, ts, False), "bench-trail", f"src/{i}")
        recs = [record(a, r, d, n, j) for j in range(per)]
        body = encode_records([key_and_bytes(dict(x))[1] for x in recs], 1)
        out.append((key, body, a, r, per))
    return out


def fill(objects: list[tuple[str, bytes, str, str, int]], state_path: str) -> None:
    s3 = boto3.client("s3", region_name="us-east-1")
    with ThreadPoolExecutor(8) as ex:
        list(ex.map(lambda o: s3.put_object(Bucket=CENTRAL, Key=o[0], Body=o[1]), objects))
    state = State(state_path)
    with state.transaction() as c:
        for key, body, a, r, events in objects:
            c.execute(
                "INSERT INTO ledger (central_key, source_bucket, source_key, account_id, region, "
                "events, bytes, sha256, written_at) VALUES (?,?,?,?,?,?,?,?,?)",
                (
                    key,
                    "bench-trail",
                    key,
                    a,
                    r,
                    events,
                    len(body),
                    hashlib.sha256(body).hexdigest(),
                    time.time(),
                ),
            )
    state.close()


async def get_limit(keys: list[str], concurrency: int) -> float:
    """Seconds to GET every key with a bare aioboto3 client (moto's limit, as reconcile reads)."""
    import aioboto3

    sem = asyncio.Semaphore(concurrency)
    async with aioboto3.Session().client("s3", region_name="us-east-1") as s3:

        async def one(key: str) -> None:
            async with sem:
                resp = await s3.get_object(Bucket=CENTRAL, Key=key)
                async with resp["Body"] as body:
                    await body.read()

        t0 = time.perf_counter()
        await asyncio.gather(*(one(k) for k in keys))
        return time.perf_counter() - t0


async def one_run(cfg: Any, *, repair: bool) -> tuple[Any, float, float]:
    state = State(cfg.state.path)
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        async with opened(cfg, Aws(cfg.aws)) as archive:
            rep = await reconcile(
                archive,
                state,
                since=date(2024, 5, 1),
                until=date(2024, 5, 2),
                repair=repair,
                concurrency=cfg.integrity.reconcile.concurrency,
            )
    finally:
        state.close()
    return rep, time.perf_counter() - t0, time.process_time() - c0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--objects", type=int, default=10_000)
    ap.add_argument("--records", type=int, default=20)
    ap.add_argument("--planted", type=int, default=100, help="copies planted under other keys")
    ap.add_argument("--concurrency", type=int, default=16)
    args = ap.parse_args()

    proc, url = start_moto()
    tmp = tempfile.mkdtemp(prefix="ctagg-bench-reconcile-")
    try:
        use_moto(url)
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket=CENTRAL)
        cfg = parse_settings(
            {
                "state": {"path": f"{tmp}/state.db"},
                "archive": {"bucket": CENTRAL},
                "integrity": {"reconcile": {"concurrency": args.concurrency}},
            }
        )
        t0 = time.perf_counter()
        objects = build(args.objects, args.records)
        fill(objects, cfg.state.path)
        for i in range(args.planted):  # a copy of object i under another key of its day
            key, body = objects[i][0], objects[i][1]
            name = key.rsplit("/", 1)[-1].split("_")
            copy = central_key("", KeyParts(name[0], name[2], name[3], False), "x", f"c{i}")
            s3.put_object(Bucket=CENTRAL, Key=copy, Body=body)
        setup = time.perf_counter() - t0
        keys = [o[0] for o in objects]
        del objects
        limit = asyncio.run(get_limit(keys, args.concurrency))

        rep, wall, cpu = asyncio.run(one_run(cfg, repair=False))
        assert rep.counts["unknown_objects"] == args.planted, rep.counts
        assert rep.counts["duplicate_events"] == args.planted * args.records, rep.counts
        assert sum(rep.counts.values()) == args.planted * (1 + args.records), rep.counts
        fixed, repair_wall, _ = asyncio.run(one_run(cfg, repair=True))
        assert fixed.repaired["deleted"] == args.planted, fixed.repaired
        clean, clean_wall, _ = asyncio.run(one_run(cfg, repair=False))
        assert not clean.found, clean.counts
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        result = {
            "objects": rep.objects,
            "events": rep.events,
            "groups": len(ACCOUNTS) * len(REGIONS),
            "days": len(DAYS),
            "concurrency": args.concurrency,
            "setup_secs": round(setup, 1),
            "report_wall_secs": round(wall, 2),
            "report_objects_per_sec": round(rep.objects / wall),
            "report_events_per_sec": round(rep.events / wall),
            "report_cpu_secs": round(cpu, 2),
            "moto_get_limit_objects_per_sec": round(len(keys) / limit),
            "report_vs_moto_get_limit": round((rep.objects / wall) / (len(keys) / limit), 2),
            "repair_wall_secs": round(repair_wall, 2),
            "repair_deleted": fixed.repaired["deleted"],
            "clean_wall_secs": round(clean_wall, 2),
            "clean_objects_per_sec": round(clean.objects / clean_wall),
            "peak_rss_mb": round(rss),
            "findings": rep.counts,
        }
        print(f"{'objects checked (report-only)':40} {rep.objects:12,}")
        print(f"{'events decoded':40} {rep.events:12,}")
        print(f"{'report-only wall':40} {wall:12.2f} s")
        print(f"{'report-only rate':40} {rep.objects / wall:12,.0f} objects/s")
        print(f"{'report-only CPU':40} {cpu:12.2f} s")
        print(f"{'moto GET limit (bare aioboto3)':40} {len(keys) / limit:12,.0f} objects/s")
        print(f"{'repair (delete the planted copies)':40} {repair_wall:12.2f} s")
        print(f"{'second report (clean)':40} {clean_wall:12.2f} s")
        print(f"{'peak RSS':40} {rss:12.0f} MB")
        print(json.dumps(result))
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
