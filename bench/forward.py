"""Forwarding throughput per connector, one core for the forwarder, normalizer in the loop.

Drives the real Forwarder (ledger -> cursor -> normalize -> batch -> connector.send -> ack ->
commit) over N events held in memory (the archive read itself is not measured: see
bench/ingest.py for that), against:

* OpenSearch: the local _bulk server (tests/fakes/opensearch.py) in another process
* Splunk HEC: the local HEC server (tests/fakes/splunk_hec.py) in another process
* syslog TCP (octet counting): a real rsyslogd writing every message to a file

Prints events/s (wall) and the forwarder's CPU seconds. The machine is shared: numbers are
noisy. Usage: .venv/bin/python bench/forward.py [--events 100000] [--batch 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from aggregator.config import ForwardSettings
from aggregator.forward.documents import default_normalizer
from aggregator.forward.forwarder import Forwarder
from aggregator.state import CentralObject, ObjectOutcome, SourceRef, State
from tests.fakes.events import stratus_records

TESTDATA = ROOT.parent / "shared" / "testdata"
for parent in ROOT.parents:
    if (parent / "shared" / "testdata").exists():
        TESTDATA = parent / "shared" / "testdata"
        break
TESTDATA = Path(os.environ.get("CTAGG_TESTDATA", TESTDATA))
SCHEMA: str | None = None
TOKEN = "11111111-2222-3333-4444-555555555555"
PER_OBJECT = 1000


class MemoryArchive:
    def __init__(self) -> None:
        self.objects: dict[str, list[dict[str, Any]]] = {}

    async def read_records(self, central_key: str) -> list[dict[str, Any]]:
        return self.objects[central_key]


def _serve(kind: str, q: Any) -> None:
    from tests.fakes.opensearch import FakeOpenSearch
    from tests.fakes.splunk_hec import FakeSplunkHec

    async def main() -> None:
        server: Any = (
            FakeOpenSearch(check_mappings=False) if kind == "opensearch" else FakeSplunkHec({TOKEN})
        )
        await server.start()
        q.put(server.url)
        while True:
            await asyncio.sleep(0.2)
            count = server.doc_count() if kind == "opensearch" else len(server.indexed)
            q.put(("count", count))

    asyncio.run(main())


def build_ledger(state: State, n: int) -> MemoryArchive:
    base = stratus_records(TESTDATA)
    if not base:
        raise SystemExit(f"no test data under {TESTDATA} (set CTAGG_TESTDATA)")
    archive = MemoryArchive()
    src = SourceRef("s", "111111111111", "us-east-1", "b", "AWSLogs/")
    for start in range(0, n, PER_OBJECT):
        recs = [
            {**base[i % len(base)], "eventID": f"bench-{i:09d}"}
            for i in range(start, min(n, start + PER_OBJECT))
        ]
        key = f"AWSLogs/bench/{start:09d}.json.gz"
        archive.objects[key] = recs
        times = sorted(r["eventTime"] for r in recs)
        state.commit_object(
            ObjectOutcome(
                source=src,
                key=f"src/{start}",
                day_prefix="AWSLogs/d/",
                kind="log_file",
                etag=None,
                size=1,
                central=CentralObject(key, 1, "0" * 64, len(recs), times[0], times[-1]),
            )
        )
    return archive


async def run_forward(conn: dict[str, Any], n: int, batch: int, tmp: Path) -> tuple[float, float]:
    state = State(tmp / f"{conn['name']}.db")
    archive = build_ledger(state, n)
    settings = ForwardSettings.model_validate(
        {"connectors": [conn], "batch_max_events": batch, "batch_max_wait_secs": 0}
    )
    fwd = Forwarder(
        settings, state, archive, bucket="central", normalize=default_normalizer("central")
    )
    # open (template install) outside the timing
    lane = fwd.lanes[conn["name"]]
    await lane._ensure_open()
    cpu0, t0 = time.process_time(), time.perf_counter()
    await lane.pump()  # what the service runs: pipelined, batches committed in order
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    await lane.connector.close()
    assert fwd.backlog(conn["name"]) == 0
    state.close()
    return wall, cpu


def bench_http(kind: str, n: int, batch: int, tmp: Path) -> None:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    proc = ctx.Process(target=_serve, args=(kind, q), daemon=True)
    proc.start()
    try:
        url = q.get(timeout=30)
        if kind == "opensearch":
            conn: dict[str, Any] = {"name": "os", "type": "opensearch", "hosts": [url]}
        else:
            conn = {"name": "hec", "type": "splunk_hec", "url": url, "token": TOKEN}
        if SCHEMA:
            conn["schema"] = SCHEMA
        wall, cpu = asyncio.run(run_forward(conn, n, batch, tmp))
        got = 0
        deadline = time.monotonic() + 30
        while got < n and time.monotonic() < deadline:
            msg = q.get(timeout=30)
            if isinstance(msg, tuple):
                got = msg[1]
        report(kind, n, wall, cpu, f"receiver counted {got}")
    finally:
        proc.terminate()
        proc.join(5)


def bench_syslog(n: int, batch: int, tmp: Path) -> None:
    from tests.fakes.rsyslog import Rsyslog

    rs = Rsyslog(tmp / "rsyslog")
    rs.root.mkdir()
    rs.start()
    try:
        conn = {
            "name": "sl",
            "type": "syslog",
            "host": "127.0.0.1",
            "port": rs.tcp,
            "transport": "tcp",
            "max_message_bytes": 65536,
        }
        if SCHEMA:
            conn["schema"] = SCHEMA
        wall, cpu = asyncio.run(run_forward(conn, n, batch, tmp))
        deadline = time.monotonic() + 60
        lines = 0
        while time.monotonic() < deadline:
            with rs.out.open("rb") as f:
                lines = sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))
            if lines >= n:
                break
            time.sleep(0.2)
        report("syslog-tcp", n, wall, cpu, f"rsyslog wrote {lines}")
    finally:
        rs.stop()


def report(kind: str, n: int, wall: float, cpu: float, note: str) -> None:
    print(
        f"{kind:12s} {n:>8d} events  {wall:6.2f}s wall  {n / wall:>9,.0f} events/s  "
        f"forwarder CPU {cpu:5.2f}s ({n / max(cpu, 1e-9):>9,.0f} events/CPU-s)  {note}"
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--batch", type=int, default=2000)
    ap.add_argument("--only", choices=["opensearch", "splunk_hec", "syslog"], default=None)
    ap.add_argument(
        "--schema",
        choices=["ecs", "ocsf", "raw"],
        default=None,
        help="override every connector's schema (default: each one's own)",
    )
    ap.add_argument(
        "--gc",
        choices=["tuned", "default"],
        default="tuned",
        help="tuned = what the daemon sets before its forwarder starts (service.runtime.tune_gc)",
    )
    args = ap.parse_args()
    global SCHEMA
    SCHEMA = args.schema
    if args.gc == "tuned":
        from aggregator.service.runtime import tune_gc

        tune_gc()
    print(f"gc thresholds: {__import__('gc').get_threshold()}")
    from aggregator import log

    log.configure("WARNING")
    import importlib.util

    real = importlib.util.find_spec("aggregator.normalize") is not None
    print(f"normalizer: {'aggregator.normalize' if real else 'built-in fallback'}")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        if args.only in (None, "opensearch"):
            bench_http("opensearch", args.events, args.batch, tmp)
        if args.only in (None, "splunk_hec"):
            bench_http("splunk_hec", args.events, args.batch, tmp)
        if args.only in (None, "syslog"):
            bench_syslog(args.events, args.batch, tmp)


if __name__ == "__main__":
    main()
