"""Retention throughput against an embedded moto server (plain script, prints numbers).

Puts N expired central objects (plus N/10 recent ones) into a plain and into an Object Lock
bucket, then times a dry run and a real run of the delete mode. moto is the bottleneck here
(it serves one request at a time); against S3, DeleteObjects removes 1000 keys per request.
Usage: python bench/retention.py [N]
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import boto3
from moto.server import ThreadedMotoServer

from aggregator.archive.retention import BaseSessions, Retention
from aggregator.aws.clients import Aws
from aggregator.config import parse_settings
from aggregator.state import State

A = "111111111111"


def key(day: str, i: int) -> str:
    y, m, d = day.split("-")
    return (
        f"AWSLogs/{A}/CloudTrail/us-east-1/{y}/{m}/{d}/"
        f"{A}_CloudTrail_us-east-1_{y}{m}{d}T0000Z_{i:016d}.json.gz"
    )


async def run(bucket: str, n: int, lock: bool, url: str) -> None:
    s3 = boto3.client("s3", endpoint_url=url, region_name="us-east-1")
    if lock:
        s3.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
    else:
        s3.create_bucket(Bucket=bucket)
    keys = [key("2020-01-01", i) for i in range(n)] + [key("2099-01-01", i) for i in range(n // 10)]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda k: s3.put_object(Bucket=bucket, Key=k, Body=b"{}"), keys))
    put = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        cfg = parse_settings(
            {
                "state": {"path": str(Path(tmp) / "s.db")},
                "archive": {"bucket": bucket},
                "retention": {"archive_days": 365},
            }
        )
        state = State(cfg.state.path)
        aws = Aws(cfg.aws)
        job = Retention(cfg, state, BaseSessions(aws), aws)
        t0 = time.perf_counter()
        dry = await job.run(dry_run=True)
        t_dry = time.perf_counter() - t0
        t0 = time.perf_counter()
        real = await job.run()
        t_real = time.perf_counter() - t0
        state.close()
    print(
        f"{'object-lock' if lock else 'plain'} bucket: {len(keys)} objects ({put:.1f} s to put); "
        f"dry run {t_dry:.2f} s ({len(dry.deleted)} would go); real run {t_real:.2f} s "
        f"({len(real.deleted)} deleted, {len(real.locked)} locked, "
        f"{len(real.deleted) / t_real:.0f} objects/s)"
    )


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    os.environ.update(
        AWS_ENDPOINT_URL=url,
        AWS_ACCESS_KEY_ID="x",
        AWS_SECRET_ACCESS_KEY="x",
        AWS_DEFAULT_REGION="us-east-1",
    )
    try:
        asyncio.run(run("bench-plain", n, False, url))
        asyncio.run(run("bench-locked", n, True, url))  # HEAD per expired version
    finally:
        server.stop()


if __name__ == "__main__":
    main()
