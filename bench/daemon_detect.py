"""The daemon's detection job: records/s through the ledger follower (rules + anomaly counts +
cursor moves in SQLite), and how long the event loop is held meanwhile (what ingest, forwarding
and /metrics would wait), with the rules inline and offloaded to a worker thread (the daemon's
choice).

Central objects are gzip bytes in memory (decompressed per read like the S3 path, no network):
N objects of R records made from the Stratus detonation logs with distinct eventIDs.

    .venv/bin/python bench/daemon_detect.py [OBJECTS] [RECORDS_PER_OBJECT]
"""

from __future__ import annotations

import asyncio
import gzip
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from aggregator.archive.codec import decode_records
from aggregator.config import parse_settings
from aggregator.detect.follow import DetectionFollower
from aggregator.detect.service import DetectionService
from aggregator.state import CentralObject, ObjectOutcome, SourceRef, State

ROOT = Path(__file__).resolve().parent.parent
TESTDATA = next(
    p / "shared" / "testdata" for p in ROOT.parents if (p / "shared" / "testdata").exists()
)


class GzArchive:
    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}

    async def read_records(self, key: str) -> list[dict[str, Any]]:
        return decode_records(self.objects[key])


def stratus_records() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for p in sorted((TESTDATA / "stratus-red-team" / "detonation-logs").glob("*.json")):
        data = json.loads(p.read_text())
        out += data if isinstance(data, list) else data.get("Records", [])
    return out


async def run(objects: int, per_object: int, offload: bool) -> tuple[float, float, int, int]:
    base = stratus_records()
    with tempfile.TemporaryDirectory() as tmp:
        state = State(Path(tmp) / "s.db")
        archive = GzArchive()
        src = SourceRef("s", "111111111111", "us-east-1", "trail", "AWSLogs/")
        n = 0
        for o in range(objects):
            recs = []
            for i in range(per_object):
                r = dict(base[(o * per_object + i) % len(base)])
                r["eventID"] = f"bench-{o}-{i}"
                recs.append(r)
            key = f"c/{o}.json.gz"
            archive.objects[key] = gzip.compress(orjson.dumps({"Records": recs}), 6)
            state.commit_object(
                ObjectOutcome(src, f"src/{key}", "AWSLogs/d/", "log", None, 1, len(recs),
                              central=CentralObject(key, 1, "0" * 64, len(recs), None, None))
            )  # fmt: skip
            n += len(recs)
        settings = parse_settings({"archive": {"bucket": "central"}}, {})
        service = DetectionService(settings.detect, state, [])
        follower = DetectionFollower(service, state, archive, "central", offload=offload)
        worst = 0.0
        done = asyncio.Event()

        async def ticker() -> None:
            nonlocal worst
            while not done.is_set():
                t = time.perf_counter()
                await asyncio.sleep(0.005)
                worst = max(worst, time.perf_counter() - t - 0.005)

        tick = asyncio.create_task(ticker())
        await asyncio.sleep(0.01)  # the ticker is running
        t0 = time.perf_counter()
        _, alerts = await follower.catch_up(32)
        elapsed = time.perf_counter() - t0
        done.set()
        await tick
        state.close()
        return n / elapsed, worst, alerts, n


def main() -> None:
    objects = int(sys.argv[1]) if len(sys.argv) > 1 else 100
    per_object = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
    for offload in (False, True):
        rate, worst, alerts, n = asyncio.run(run(objects, per_object, offload))
        print(
            f"offload={offload!s:5}  {n} records in {objects} objects: {rate:,.0f} records/s, "
            f"{alerts} alerts, longest event-loop stall {worst * 1000:.1f} ms"
        )


if __name__ == "__main__":
    main()
