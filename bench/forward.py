"""Forwarding throughput per connector, one core for the forwarder, in two modes in one run.

* ``memory``  the real Forwarder (ledger -> cursor -> filters -> the config's normalizer ->
              batch -> connector.send -> ack -> commit; pipelined as in the service) over
              records held in memory (parsed once before the clock starts)
* ``e2e``     the same, reading the central archive as the daemon does: S3 GET from a moto
              server (in another process), gunzip, orjson, then the rest as above

against:

* OpenSearch: the local _bulk server (tests/fakes/opensearch.py) in another process
* Splunk HEC: the local HEC server (tests/fakes/splunk_hec.py) in another process
* syslog TCP (octet counting): a real rsyslogd writing every message to a file

Prints events/s (wall) and events per CPU-second of the forwarder process per sink and mode,
and the ratio e2e / memory. ``--profile`` prints where the e2e CPU goes (cProfile, by
function, cumulative). The machine is shared: numbers are noisy, ratios less so.
Usage: .venv/bin/python bench/forward.py [--events 100000] [--batch 2000] [--mode both]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing as mp
import os
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from aggregator.archive.codec import decode_records, encode_records
from aggregator.config import Settings, parse_settings
from aggregator.forward.forwarder import Forwarder, forwarder_for
from aggregator.state import CentralObject, ObjectOutcome, SourceRef, State
from tests.fakes.events import stratus_records

TESTDATA = ROOT.parent / "shared" / "testdata"
for parent in ROOT.parents:
    if (parent / "shared" / "testdata").exists():
        TESTDATA = parent / "shared" / "testdata"
        break
TESTDATA = Path(os.environ.get("CTAGG_TESTDATA", TESTDATA))
SCHEMA: str | None = None
PROFILE = False
STAGES = False
SYS: dict[str, float] = {}  # kernel CPU seconds of the last timed run, per connector
TOKEN = "11111111-2222-3333-4444-555555555555"
PER_OBJECT = 1000
ACCOUNT = "111111111111"


class MemoryArchive:
    def __init__(self) -> None:
        self.objects: dict[str, list[dict[str, Any]]] = {}

    async def read_records(
        self, central_key: str, sha256: str | None = None
    ) -> list[dict[str, Any]]:
        return self.objects.pop(central_key)  # read once per run, as a lane does


def _serve(kind: str, q: Any) -> None:
    if kind == "moto":
        import logging

        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)

        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        q.put(f"http://{host}:{port}")
        while True:
            time.sleep(3600)
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
            # items received (a resend by _id overwrites a document but is counted here)
            count = server.items_seen if kind == "opensearch" else len(server.indexed)
            q.put(("count", count))

    asyncio.run(main())


@contextlib.contextmanager
def serving(kind: str) -> Any:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    proc = ctx.Process(target=_serve, args=(kind, q), daemon=True)
    proc.start()
    try:
        url = q.get(timeout=60)
        yield url, q
    finally:
        proc.terminate()
        proc.join(5)


def central_objects(n: int) -> list[tuple[str, bytes, int, str, str]]:
    """(key, gzip body, events, first, last) per central object, as ingest writes them."""
    base = stratus_records(TESTDATA)
    if not base:
        raise SystemExit(f"no test data under {TESTDATA} (set CTAGG_TESTDATA)")
    out = []
    for start in range(0, n, PER_OBJECT):
        recs = [
            {**base[i % len(base)], "eventID": f"bench-{i:09d}"}
            for i in range(start, min(n, start + PER_OBJECT))
        ]
        key = f"AWSLogs/{ACCOUNT}/CloudTrail/us-east-1/2024/05/01/bench_{start:09d}.json.gz"
        body = encode_records([orjson.dumps(r, option=orjson.OPT_SORT_KEYS) for r in recs], 1)
        times = sorted(r["eventTime"] for r in recs)
        out.append((key, body, len(recs), times[0], times[-1]))
    return out


def ledger(state: State, objects: list[tuple[str, bytes, int, str, str]]) -> None:
    src = SourceRef("s", ACCOUNT, "us-east-1", "b", "AWSLogs/")
    for key, body, events, first, last in objects:
        state.commit_object(
            ObjectOutcome(
                source=src,
                key=f"src/{key}",
                day_prefix="AWSLogs/d/",
                kind="log_file",
                etag=None,
                size=len(body),
                central=CentralObject(key, len(body), "0" * 64, events, first, last),
            )
        )


def settings_for(conn: dict[str, Any], batch: int, tmp: Path, tag: str) -> Settings:
    return parse_settings(
        {
            "state": {"path": str(tmp / f"{conn['name']}-{tag}.db")},
            "archive": {"bucket": "central"},
            "aws": {"region": "us-east-1"},
            "forward": {"connectors": [conn], "batch_max_events": batch, "batch_max_wait_secs": 0},
        }
    )


async def timed(fwd: Forwarder, name: str, sample: dict[str, Any]) -> tuple[float, float, Any]:
    lane = fwd.lanes[name]
    await lane._ensure_open()  # open (template install) outside the timing
    # steady state, as a daemon is after its first event: the user-agent parser compiles its
    # regexes on first use (~0.2 s once), not per event
    fwd.normalize(dict(sample), lane.connector.schema, "AWSLogs/warm-up")
    prof = None
    if PROFILE:
        import cProfile

        prof = cProfile.Profile()
        prof.enable()
    cpu0, t0, os0 = time.process_time(), time.perf_counter(), os.times()
    await lane.pump()  # what the service runs: pipelined, batches committed in order
    wall, cpu, os1 = time.perf_counter() - t0, time.process_time() - cpu0, os.times()
    SYS[name] = os1.system - os0.system
    if prof is not None:
        prof.disable()
    await lane.connector.close()
    assert fwd.backlog(name) == 0
    return wall, cpu, prof


@contextlib.asynccontextmanager
async def e2e_archive(settings: Settings, objects: list[Any]) -> AsyncIterator[Any]:
    from aggregator.archive import store as archive
    from aggregator.aws.clients import Aws

    async with archive.opened(settings, Aws(settings.aws)) as central:
        s3 = await central.client()
        with contextlib.suppress(Exception):
            await s3.create_bucket(Bucket="central")
        for key, body, *_ in objects:
            await s3.put_object(Bucket="central", Key=key, Body=body)
        yield central


async def run_mode(
    conn: dict[str, Any], mode: str, objects: list[Any], batch: int, tmp: Path
) -> tuple[float, float, Any]:
    settings = settings_for(conn, batch, tmp, mode)
    state = State(settings.state.path)
    ledger(state, objects)
    sample = decode_records(objects[0][1])[0]
    try:
        if mode == "memory":
            mem = MemoryArchive()
            for key, body, *_ in objects:
                mem.objects[key] = decode_records(body)
            return await timed(forwarder_for(settings, state, mem), conn["name"], sample)
        async with e2e_archive(settings, objects) as central:
            return await timed(forwarder_for(settings, state, central), conn["name"], sample)
    finally:
        state.close()


def counted(q: Any, n: int) -> int:
    got = 0
    deadline = time.monotonic() + 60
    while got < n and time.monotonic() < deadline:
        msg = q.get(timeout=60)
        if isinstance(msg, tuple):
            got = msg[1]
    return got


def bench_sink(kind: str, modes: list[str], objects: list[Any], batch: int, tmp: Path) -> None:
    n = sum(o[2] for o in objects)
    results: dict[str, tuple[float, float]] = {}
    rs = None
    with contextlib.ExitStack() as stack:
        if kind == "syslog":
            from tests.fakes.rsyslog import Rsyslog

            rs = Rsyslog(tmp / "rsyslog")
            rs.root.mkdir(exist_ok=True)
            rs.start()
            stack.callback(rs.stop)
            conn: dict[str, Any] = {
                "name": "sl", "type": "syslog", "host": "127.0.0.1", "port": rs.tcp,
                "transport": "tcp", "max_message_bytes": 65536,
            }  # fmt: skip
            q = None
        else:
            url, q = stack.enter_context(serving(kind))
            if kind == "opensearch":
                conn = {"name": "os", "type": "opensearch", "hosts": [url]}
            else:
                conn = {"name": "hec", "type": "splunk_hec", "url": url, "token": TOKEN}
        if SCHEMA:
            conn["schema"] = SCHEMA
        for i, mode in enumerate(modes):
            wall, cpu, prof = asyncio.run(run_mode(conn, mode, objects, batch, tmp))
            results[mode] = (wall, cpu)
            if q is not None:
                note = f"receiver counted {counted(q, n * (i + 1)) - n * i}"
            else:
                assert rs is not None
                note = f"rsyslog wrote {rsyslog_lines(rs, n * (i + 1)) - n * i}"
            sys_share = SYS.get(conn["name"], 0.0) / max(cpu, 1e-9)
            report(kind, mode, n, wall, cpu, f"{note}; {sys_share:.0%} of the CPU in the kernel")
            if prof is not None:
                import pstats

                print(f"--- where the {mode} CPU goes ({kind}) ---")
                pstats.Stats(prof).sort_stats("tottime").print_stats(22)
    if len(results) == 2:
        ratio = results["memory"][1] / max(results["e2e"][1], 1e-9)
        print(f"{kind:12s} e2e / memory = {ratio:.2f} (events per CPU-second)")
    if STAGES:
        stages(kind, conn, objects, results["e2e"][1] if "e2e" in results else None)


def stages(kind: str, conn: dict[str, Any], objects: list[Any], e2e_cpu: float | None) -> None:
    """Where the time of one event goes, stage by stage, on the same objects (µs/event, one
    core): the archive decode, the normalizer, the event id, the connector's framing, and
    what is left of the end-to-end figure (lane, commit, HTTP client or socket)."""
    from isal import igzip

    from aggregator.forward.documents import default_normalizer, to_out_event
    from aggregator.ingest.dedupe import record_key_text
    from connectors import build

    n = sum(o[2] for o in objects)
    settings = settings_for(conn, 2000, Path(tempfile.gettempdir()), "stages")
    connector = build(settings.forward.connectors[0])
    schema = connector.schema
    norm = default_normalizer("central", settings.normalize)
    norm(decode_records(objects[0][1])[0], schema, "AWSLogs/warm-up")
    out: dict[str, float] = {}

    def clock(name: str, fn: Any) -> Any:
        c = time.process_time()
        result = fn()
        out[name] = (time.process_time() - c) / n * 1e6
        return result

    records = clock("archive decode (gunzip + orjson)", lambda: [
        (key, r) for key, body, *_ in objects for r in decode_records(body)
    ])  # fmt: skip
    docs = clock(f"normalize ({schema})", lambda: [norm(r, schema, k) for k, r in records])
    if connector.uses_event_id:
        clock("event id (dedupe key)", lambda: [record_key_text(r) for _, r in records])

    def events() -> list[Any]:
        evs = []
        for i, ((k, r), d) in enumerate(zip(records, docs, strict=True)):
            if type(d) is bytes:
                evs.append(to_out_event(r, None, "central", k, i, data=d, with_id=False))
            else:
                body = orjson.dumps(d["event"])
                evs.append(to_out_event(r, d, "central", k, i, body=body, with_id=False))
        return evs

    evs = clock("OutEvent (+ record serialization for raw)", events)
    if kind == "syslog":
        clock("syslog framing (RFC 5424, octet counting)", lambda: [connector.messages(e)  # type: ignore[attr-defined]
                                                                   for e in evs])  # fmt: skip
    elif kind == "opensearch":
        clock("_bulk body + gzip", lambda: [
            igzip.compress(connector.bulk_body(evs[i : i + 2000]), compresslevel=1)  # type: ignore[attr-defined]
            for i in range(0, n, 2000)
        ])  # fmt: skip
    else:
        clock("HEC payload + gzip", lambda: [
            igzip.compress(connector.payload(evs[i : i + 2000]), compresslevel=1)  # type: ignore[attr-defined]
            for i in range(0, n, 2000)
        ])  # fmt: skip
    total = sum(out.values())
    print(f"--- {kind}: where an event's CPU goes (µs/event) ---")
    for name, us in out.items():
        print(f"  {name:44s} {us:6.2f}")
    if e2e_cpu is not None:
        e2e = e2e_cpu / n * 1e6
        print(f"  {'the rest (lane, batching, commit, I/O)':44s} {e2e - total:6.2f}")
        print(f"  {'end to end':44s} {e2e:6.2f}")


def rsyslog_lines(rs: Any, want: int) -> int:
    deadline = time.monotonic() + 60
    lines = 0
    while time.monotonic() < deadline:
        with rs.out.open("rb") as f:
            lines = sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))
        if lines >= want:
            break
        time.sleep(0.2)
    return lines


def report(kind: str, mode: str, n: int, wall: float, cpu: float, note: str) -> None:
    print(
        f"{kind:12s} {mode:6s} {n:>8d} events  {wall:6.2f}s wall  {n / wall:>9,.0f} events/s  "
        f"forwarder CPU {cpu:5.2f}s ({n / max(cpu, 1e-9):>9,.0f} events/CPU-s)  {note}",
        flush=True,
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--batch", type=int, default=2000)
    ap.add_argument("--only", choices=["opensearch", "splunk_hec", "syslog"], default=None)
    ap.add_argument("--mode", choices=["memory", "e2e", "both"], default="both")
    ap.add_argument(
        "--schema",
        choices=["ecs", "ocsf", "raw"],
        default=None,
        help="override every connector's schema (default: each one's own)",
    )
    ap.add_argument(
        "--gc",
        choices=["tuned", "default", "off"],
        default="tuned",
        help="tuned = what the daemon sets before its forwarder starts (service.runtime.tune_gc); "
        "off = no cyclic GC at all (to see its share)",
    )
    ap.add_argument("--profile", action="store_true", help="cProfile each timed run")
    ap.add_argument(
        "--stages", action="store_true", help="time each stage of an event on the same objects"
    )
    args = ap.parse_args()
    global SCHEMA, PROFILE, STAGES
    SCHEMA, PROFILE, STAGES = args.schema, args.profile, args.stages
    if args.gc == "tuned":
        from aggregator.service.runtime import tune_gc

        tune_gc()
    elif args.gc == "off":
        __import__("gc").disable()
    print(f"gc thresholds: {__import__('gc').get_threshold()}")
    from aggregator import log

    log.configure("WARNING")
    modes = ["memory", "e2e"] if args.mode == "both" else [args.mode]
    objects = central_objects(args.events)
    with contextlib.ExitStack() as stack:
        if "e2e" in modes:
            url, _ = stack.enter_context(serving("moto"))
            os.environ["AWS_ENDPOINT_URL"] = url
            os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
            os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
        with tempfile.TemporaryDirectory() as d:
            tmp = Path(d)
            for kind in ("opensearch", "splunk_hec", "syslog"):
                if args.only in (None, kind):
                    bench_sink(kind, modes, objects, args.batch, tmp)


if __name__ == "__main__":
    main()
