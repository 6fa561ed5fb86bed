"""Ingest benchmark: `ctagg once` end to end vs the decode limit of the same objects.

    .venv/bin/python bench/ingest.py [--objects 200] [--records 1000]

A moto server runs in its own process (pinned to the other core when there are two), so this
process measures only ctagg's own work on one core. Objects hold realistic records built from
shared/testdata (each given a unique eventID). Reported:

* decode limit: gunzip (ISA-L, as the pipeline) + orjson.loads of the same object bytes, and the
  stdlib gzip variant for reference
* end to end: discovery (static), listing, GetObject, decode, dedupe against SQLite, encode,
  PutObject to the central bucket, commit — events/s over wall time, plus CPU seconds and peak RSS
* the ingest cycle alone (the same run without process start-up and discovery)
* the key ceiling: ``collect.decode_log`` alone over the same objects (gunzip, parse, and the
  canonical serialization and digest that the dedupe key needs; no I/O, no SQLite). No pipeline
  built on it can beat this rate, so its ratio to the decode limit bounds the end-to-end ratio
* with ``--io-bound``, the other bound: an end-to-end run whose ``decode_log`` is answered from
  memory (listing, GET, SQLite, PUT, commit only). No faster decoder or keyer can beat it

The decode limit and the end-to-end run are each the best of three (``--repeat``), measured
in turns; each end-to-end run starts from an empty state and an empty central bucket. moto's
EC2 backend is warmed first: its one-second start-up is moto's, not ctagg's.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import multiprocessing
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from aggregator.archive.codec import maybe_gunzip
from aggregator.config import CollectSettings, parse_settings
from aggregator.ingest.collect import decode_log
from aggregator.service.app import App
from aggregator.service.demo import find_testdata, load_records
from aggregator.service.runtime import tune_gc

ACCOUNT = "123456789012"  # moto's default identity: read with the base session
BUCKET = "bench-trail"
CENTRAL = "bench-central"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_moto() -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    cores = sorted(os.sched_getaffinity(0))

    def pin() -> None:
        if len(cores) > 1:
            os.sched_setaffinity(0, {cores[-1]})

    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=pin,  # noqa: PLW1509
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            urllib.request.urlopen(url + "/moto-api/", timeout=1)
            break
        except OSError:
            time.sleep(0.1)
    return proc, url


def use_moto(url: str) -> None:
    """This process on the first core (moto has the other one) and its AWS clients on moto."""
    cores = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cores[0]})
    os.environ.update(
        AWS_ENDPOINT_URL=url,
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_EC2_METADATA_DISABLED="true",
    )


def build_objects(n: int, per: int, *, scatter_times: bool = False) -> list[tuple[str, bytes]]:
    """n log files of one account and region; file i is stamped minute i of the day and, as
    CloudTrail writes them, holds events of the five minutes before it. ``scatter_times``
    keeps the sample records' own times instead (years apart: a worst case for the window)."""
    testdata = find_testdata(ROOT)
    if testdata is None:
        raise SystemExit("shared/testdata not found")
    base = [r for r in load_records(testdata) if len(orjson.dumps(r)) < 8000]
    out = []
    day = datetime(2024, 5, 1, tzinfo=UTC)
    for i in range(n):
        stamp = day + timedelta(minutes=i)
        recs = []
        for j in range(per):
            r = dict(base[(i * per + j) % len(base)])
            r["eventID"] = f"bench-{i:05d}-{j:05d}"
            r["recipientAccountId"] = ACCOUNT
            r["awsRegion"] = "us-east-1"
            if not scatter_times:
                at = stamp - timedelta(seconds=300 * (per - j) / per)
                r["eventTime"] = at.strftime("%Y-%m-%dT%H:%M:%SZ")
            recs.append(r)
        ts = stamp.strftime("%Y%m%dT%H%MZ")
        key = (
            f"AWSLogs/{ACCOUNT}/CloudTrail/us-east-1/2024/05/01/"
            f"{ACCOUNT}_CloudTrail_us-east-1_{ts}_B{i:05d}.json.gz"
        )
        out.append((key, gzip.compress(json.dumps({"Records": recs}).encode(), 6)))
    return out


def decode_rate(objects: list[tuple[str, bytes]], gunzip: Any) -> float:
    n = 0
    t = time.perf_counter()
    for _, body in objects:
        n += len(orjson.loads(gunzip(body))["Records"])
    return n / (time.perf_counter() - t)


def decode_as_ctagg(body: bytes) -> Any:
    """``decode_log`` (the pipeline's own decode and keying) with ctagg's default limits."""
    cfg = CollectSettings()
    return decode_log(
        body, max_object_bytes=cfg.max_object_bytes, max_record_bytes=cfg.max_record_bytes
    )


def key_ceiling_rate(objects: list[tuple[str, bytes]]) -> float:
    n = 0
    t = time.perf_counter()
    for _, body in objects:
        n += len(decode_as_ctagg(body).keys)
    return n / (time.perf_counter() - t)


def run_once(url: str, events: int) -> tuple[float, float, float, float]:
    """One `ctagg once` (App.run_once: discovery + ingest cycle) on a fresh state:
    (wall seconds, CPU seconds, ingest-cycle seconds, peak RSS MB of the process)."""
    with tempfile.TemporaryDirectory() as tmp:
        settings = parse_settings(
            {
                "state": {"path": f"{tmp}/state.db"},
                "aws": {"endpoint_url": url},
                "discovery": {
                    "accounts": {"source": "static", "static": [{"id": ACCOUNT}]},
                    "regions": {"include": ["us-east-1"]},
                    "trails": {"discover": False, "static_sources": [{"bucket": BUCKET}]},
                },
                "collect": {"max_concurrency": 8},
                "archive": {"bucket": CENTRAL},
            },
            {},
        )

        async def once() -> Any:
            app = App(settings)
            try:
                return await app.run_once()
            finally:
                await app.close()

        cpu0, t0 = time.process_time(), time.perf_counter()
        report = asyncio.run(once())
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    assert report.events_archived == events, report
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return wall, cpu, report.duration_secs, rss


def run_io_bound(
    url: str, events: int, n: int, per: int, scatter_times: bool
) -> tuple[float, float, float, float]:
    """:func:`run_once` with ``decode_log`` answered from memory (computed before the clock
    starts): everything but decoding and keying — listing, GET, dedupe against SQLite, PUT,
    commit. Not a real run: the bound a faster decoder or keyer could approach at best."""
    from aggregator.ingest import cycle as ingest

    # rebuilt here, so gzip headers (mtime) differ from the served objects': keyed by the gzip
    # trailer (CRC-32 and size of the content), which does not
    ready = {
        body[-8:]: decode_as_ctagg(body)
        for _, body in build_objects(n, per, scatter_times=scatter_times)
    }

    def from_memory(data: bytes, **_: Any) -> Any:
        return ready[data[-8:]]

    vars(ingest)["decode_log"] = from_memory  # what Ingestor._handle calls
    return run_once(url, events)


def empty_central() -> None:
    """Delete every object of the central bucket (the writer marker too): each end-to-end run
    starts from an empty archive as from an empty state. A fresh state beside the previous
    run's archive would find every event there (read back, nothing archived): another path."""
    s3 = boto3.client("s3", region_name="us-east-1")
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=CENTRAL):
        keys = [{"Key": o["Key"]} for o in page.get("Contents", ())]
        if keys:
            s3.delete_objects(Bucket=CENTRAL, Delete={"Objects": keys, "Quiet": True})


def run_apart(fn: Any, *args: Any) -> tuple[float, float, float, float]:
    """``fn`` (:func:`run_once`, :func:`run_io_bound`) in a fresh process (inheriting the
    environment and the core), so its peak RSS is ctagg's own, not this benchmark's objects."""
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1) as pool:
        result: tuple[float, float, float, float] = pool.apply(fn, args)
        return result


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--objects", type=int, default=400)
    ap.add_argument("--records", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=3, help="end-to-end runs (the best counts)")
    ap.add_argument(
        "--scatter-times",
        action="store_true",
        help="keep the samples' own eventTimes (years apart) instead of the file's 5 minutes",
    )
    ap.add_argument(
        "--io-bound",
        action="store_true",
        help="also time a run with decode_log answered from memory (what is left without "
        "decoding and keying: the bound of any faster decoder or keyer)",
    )
    args = ap.parse_args()

    proc, url = start_moto()
    try:
        use_moto(url)
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket=BUCKET)
        s3.create_bucket(Bucket=CENTRAL)
        objects = build_objects(args.objects, args.records, scatter_times=args.scatter_times)
        for key, body in objects:
            s3.put_object(Bucket=BUCKET, Key=key, Body=body)
        # moto builds its EC2 backend on first use (about 1 s here); discovery's
        # describe_regions would otherwise time moto's start-up, not ctagg.
        boto3.client("ec2", region_name="us-east-1").describe_regions()
        events = args.objects * args.records
        raw_mb = sum(len(b) for _, b in objects) / 1e6

        # The decode limit runs under the GC thresholds ctagg itself sets (App() calls
        # tune_gc). Under CPython's defaults gunzip + orjson.loads alone is about half as fast
        # (190k vs 360k events/s here): the collector keeps rescanning the objects just built,
        # and a limit measured that way would flatter the ratio twofold.
        tune_gc()
        decode_std = max(decode_rate(objects, gzip.decompress) for _ in range(3))
        # Interleaved, so a slower or faster spell of the machine touches both alike; the
        # best of each counts.
        limits, ceilings, runs, bounds = [], [], [], []
        for _ in range(args.repeat):
            limits.append(decode_rate(objects, maybe_gunzip))
            ceilings.append(key_ceiling_rate(objects))
            empty_central()
            runs.append(run_apart(run_once, url, events))
            if args.io_bound:
                empty_central()
                bounds.append(
                    run_apart(
                        run_io_bound, url, events, args.objects, args.records, args.scatter_times
                    )
                )
        decode_isal = max(limits)
        ceiling = max(ceilings)
        del objects
        wall, cpu, cycle_secs, rss = min(runs)  # the best run, as for the decode limit
        e2e = events / wall
        cycle = events / cycle_secs
        bound = events / min(bounds)[0] if bounds else None
        result = {
            "objects": args.objects,
            "records_per_object": args.records,
            "compressed_mb": round(raw_mb, 1),
            "decode_limit_isal_eps": round(decode_isal),
            "decode_limit_stdlib_eps": round(decode_std),
            "end_to_end_eps": round(e2e),
            "end_to_end_vs_decode_limit": round(e2e / decode_isal, 2),
            "key_ceiling_eps": round(ceiling),
            "key_ceiling_vs_decode_limit": round(ceiling / decode_isal, 2),
            "io_bound_eps": round(bound) if bound else None,
            "io_bound_vs_decode_limit": round(bound / decode_isal, 2) if bound else None,
            "ingest_cycle_eps": round(cycle),
            "ingest_cycle_vs_decode_limit": round(cycle / decode_isal, 2),
            "end_to_end_eps_runs": [round(events / r[0]) for r in runs],
            "decode_limit_isal_eps_runs": [round(x) for x in limits],
            "wall_secs": round(wall, 2),
            "cpu_secs": round(cpu, 2),
            "peak_rss_mb": round(rss),
        }
        print(f"{'decode limit (isal gunzip + orjson)':40} {decode_isal:12,.0f} events/s")
        print(f"{'decode limit (stdlib gzip + orjson)':40} {decode_std:12,.0f} events/s")
        print(
            f"{'decode + dedupe key alone (no I/O)':40} {ceiling:12,.0f} events/s "
            f"({ceiling / decode_isal:.0%}: the ceiling of any end-to-end run)"
        )
        print(
            f"{'ctagg once, end to end':40} {e2e:12,.0f} events/s "
            f"({e2e / decode_isal:.0%} of the decode limit)"
        )
        print(
            f"{'  of which the ingest cycle':40} {cycle:12,.0f} events/s "
            f"({cycle / decode_isal:.0%}; the rest is start-up and discovery)"
        )
        if bound:
            print(
                f"{'  without decode and key (--io-bound)':40} {bound:12,.0f} events/s "
                f"({bound / decode_isal:.0%}: the bound of any faster decoder or keyer)"
            )
        print(f"{'':40} {wall:.2f} s wall, {cpu:.2f} s CPU, peak RSS {result['peak_rss_mb']} MB")
        print(f"{'':40} best of {args.repeat} runs: {result['end_to_end_eps_runs']} events/s")
        print(json.dumps(result))
        return 0
    finally:
        proc.terminate()
        proc.wait(timeout=10)


if __name__ == "__main__":
    raise SystemExit(main())
