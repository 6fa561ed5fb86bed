"""Idle-cycle benchmark: ``ctagg once`` when nothing is new, polling vs hint mode, at up to
1,000 accounts × 17 regions; and what each mode costs in requests per million events.

    .venv/bin/python bench/idle.py [--accounts 1000] [--regions 17] [--mode both|poll|hints]
        [--cycles 2] [--busy-files 100] [--interval 60] [--files-per-hour 12]
        [--events-per-file 50] [--no-relist] [--profile]

An organization trail covers every (account, region) pair; each pair has ``--objects`` log
files of yesterday in it (in the log archive account's bucket, as CloudTrail writes them). The
state is seeded as a first cycle leaves it, through ctagg's own state API (each stream walked,
yesterday's prefix listed, every object committed as handled) instead of a real first cycle:
that would be ~15 LISTs and a GET + PUT per pair, about 15 minutes against moto here. The
measured cycles are the real thing: ``ctagg once --json CONFIG`` as a process (discovery, the
writer marker, listing or the queue, the Ingestor), timed from its start to its exit. An idle
cycle that fetches or archives a log object fails the benchmark.

Per mode (each with its own state file and central bucket):

* ``poll``: ``--cycles`` idle cycles (every one lists), then a busy cycle: one new log file in
  each of ``--busy-files`` pairs, every one checked archived in the central bucket;
* ``hints`` (``collect.notifications``: an SQS queue of the log archive account that the trail
  bucket notifies through moto's own S3 → SQS notifications): ``--cycles`` idle cycles between
  two relists (the state says the last relist just ran: they list nothing and read the queue),
  one idle cycle with the relist due (``--no-relist`` skips it: it is a full listing, too slow
  against moto at 1,000 × 17), and a busy cycle fed by the notifications.

The busy cycle minus an idle one is the cost of one new file. With ``--interval`` (seconds
between cycles), the relist interval, and an assumed delivery rate (``--files-per-hour`` per
pair, ``--events-per-file``), the table gives LIST, GET, PUT and SQS requests per hour and per
million events, and dollars at list prices (``PRICE_PER_1K``). S3's own SendMessage of each
notification is not a request moto can count; it is added (one per new file).

Requests are counted at moto (``bench/motoserver.py``: a counting WSGI middleware in moto's
own process), by service and S3 operation; requests for ctagg's ``_ctagg/`` objects are
counted apart. moto runs in its own process, not pinned, and its CPU seconds are reported:
moto's ``ListObjectsV2`` scans every key of the bucket, so at this size much of a polling
cycle's wall time is moto's, not ctagg's. The portable numbers are the request counts and
ctagg's own CPU. ``--profile`` runs one more idle cycle per mode under cProfile and prints its
own time per package and the top functions. The 1-minute load average is printed with each
cycle: others run tests on the build machine.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import os
import pstats
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from aggregator.config import parse_settings
from aggregator.ingest.collect import ObjectKind, day_prefix, stream_prefixes
from aggregator.ingest.hints import RELISTED_AT
from aggregator.state import ObjectOutcome, SourceRef, State
from bench import motoserver
from bench.scale import ALL_REGIONS, accounts_of, assumed

LOG_ARCHIVE = "222222222222"
ORG = "o-benchidle01"
BUCKET = "org-trail"
CENTRAL = "central"


def config(
    tmp: Path,
    accounts: list[str],
    regions: list[str],
    mode: str,
    queue_url: str | None = None,
) -> tuple[Path, dict[str, Any]]:
    """The config of one mode: its own state file and its own central bucket."""
    cfg: dict[str, Any] = {
        "state": {"path": str(tmp / f"{mode}.db")},
        "aws": {"region": "us-east-1", "max_attempts": 3},
        "credentials": {"role_arn_template": "arn:aws:iam::{account_id}:role/ctagg-member"},
        "discovery": {
            "accounts": {"source": "static", "static": [{"id": a} for a in accounts]},
            "regions": {"include": regions},
            "trails": {
                "discover": False,
                "static_sources": [
                    {"bucket": BUCKET, "organization_id": ORG, "reader_account_id": LOG_ARCHIVE}
                ],
            },
        },
        "integrity": {"lookup": {"mode": "off"}},
        "archive": {"bucket": f"{CENTRAL}-{mode}"},
    }
    if queue_url is not None:
        # the queue is the log archive account's (S3 notifies a queue of the bucket's account)
        notif = {"queue_url": queue_url, "reader_account_id": LOG_ARCHIVE}
        cfg["collect"] = {"notifications": notif}
    path = tmp / f"{mode}.yaml"
    path.write_text(json.dumps(cfg))
    return path, cfg


Planted = list[tuple[str, str, str, str, int]]  # (account, region, key, etag, size)


def plant(s3: Any, pairs: list[tuple[str, str]], indexes: range) -> Planted:
    """Small log files of yesterday, numbered ``indexes``, in each pair of ``pairs``."""
    day = datetime.now(UTC) - timedelta(days=1)
    jobs = []
    for account, region in pairs:
        for i in indexes:
            ts = f"{day:%Y%m%d}T{i % 24:02d}{(5 * i) % 60:02d}Z"
            key = (
                f"AWSLogs/{ORG}/{account}/CloudTrail/{region}/{day:%Y/%m/%d}/"
                f"{account}_CloudTrail_{region}_{ts}_I{i:011d}.json.gz"
            )
            rec = {
                "eventVersion": "1.09",
                "eventID": f"idle-{account}-{region}-{i}",
                "eventTime": f"{day:%Y-%m-%d}T{i % 24:02d}:00:00Z",
                "eventSource": "s3.amazonaws.com",
                "eventName": "GetObject",
                "awsRegion": region,
                "recipientAccountId": account,
            }
            jobs.append((account, region, key, gzip.compress(orjson.dumps({"Records": [rec]}))))

    def put(job: tuple[str, str, str, bytes]) -> tuple[str, str, str, str, int]:
        account, region, key, body = job
        etag = s3.put_object(Bucket=BUCKET, Key=key, Body=body)["ETag"]
        return account, region, key, etag, len(body)

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(put, jobs))


def seed_state(cfg: dict[str, Any], planted: Planted, *, relisted_at: float | None) -> float:
    """The state a first cycle leaves: every stream walked, yesterday's log prefix listed, every
    object handled (committed through ``State.commit_object``, as the Ingestor does); in hint
    mode also when the last full listing ran (``relisted_at``)."""
    started = time.perf_counter()
    settings = parse_settings(cfg, {})
    state = State(settings.state.path)
    try:
        day = (datetime.now(UTC) - timedelta(days=1)).date()
        by_pair: dict[tuple[str, str], list[tuple[str, str, int]]] = {}
        for account, region, key, etag, size in planted:
            by_pair.setdefault((account, region), []).append((key, etag, size))
        for (account, region), objs in by_pair.items():
            prefix = f"AWSLogs/{ORG}/{account}/CloudTrail/{region}/"
            src = SourceRef(f"{BUCKET}/{prefix}", account, region, BUCKET, prefix)
            for stream in stream_prefixes(prefix):
                stream_id = f"{BUCKET}/{stream}"
                is_log = stream == prefix
                days = {day.isoformat(): day_prefix(stream, day)} if is_log else {}
                state.checkpoints.record_walk(stream_id, BUCKET, days)
                for d, p in days.items():
                    state.checkpoints.mark_listed(stream_id, BUCKET, p, d, True)
            for key, etag, size in objs:
                state.commit_object(
                    ObjectOutcome(
                        src, key, day_prefix(prefix, day), ObjectKind.LOG, etag, size, events_in=1
                    )
                )
        if relisted_at is not None:
            state.meta.set(**{RELISTED_AT: repr(relisted_at)})
    finally:
        state.close()
    return time.perf_counter() - started


def run_once(
    config_path: Path, url: str, moto_pid: int, tmp: Path, profile: Path | None = None
) -> dict[str, Any]:
    env = dict(os.environ, AWS_ENDPOINT_URL=url, HOSTNAME="bench-host")
    cmd = [sys.executable]
    if profile is not None:
        cmd += ["-m", "cProfile", "-o", str(profile)]
    cmd += ["-m", "aggregator", "once", "--json", str(config_path)]
    loadavg = motoserver.load()
    motoserver.counts(url, reset=True)
    moto0 = motoserver.cpu_secs(moto_pid)
    t0 = time.perf_counter()
    with (tmp / "out").open("w") as out, (tmp / "err").open("w") as err:
        p = subprocess.Popen(cmd, env=env, stdout=out, stderr=err, cwd=ROOT)
        _, status, usage = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"ctagg once exited {code}: {(tmp / 'err').read_text()[-3000:]}")
    report = json.loads((tmp / "out").read_text().strip().splitlines()[-1])
    requests = motoserver.counts(url)
    return {
        "load": loadavg,
        "wall_secs": wall,
        "cpu_secs": usage.ru_utime + usage.ru_stime,
        "peak_rss_mb": usage.ru_maxrss / 1024,
        "moto_cpu_secs": motoserver.cpu_secs(moto_pid) - moto0,
        "cycle_secs": report["duration_secs"],
        "requests": requests,
        "report": report,
    }


# Request prices (us-east-1 list prices, S3 Standard and SQS standard queues, no free tier): an
# assumption stated with the table, not a measurement.
PRICE_PER_1K = {"LIST": 0.005, "GET": 0.0004, "PUT": 0.005, "SQS": 0.0004}


def set_relisted(cfg: dict[str, Any], at: float) -> None:
    """When the last full listing ran, as hint mode keeps it (0: a relist is due now)."""
    state = State(parse_settings(cfg, {}).state.path)
    try:
        state.meta.set(**{RELISTED_AT: repr(at)})
    finally:
        state.close()


def s3_ops(requests: dict[str, int]) -> dict[str, int]:
    """LIST, GET, PUT of source and central log objects, ctagg's ``_ctagg/`` objects included
    (the writer marker, the layout record, snapshots: they are requests too), and SQS."""
    out = {"LIST": 0, "GET": 0, "PUT": 0, "SQS": requests.get("sqs", 0)}
    for kind, n in requests.items():
        op = kind.removeprefix("s3:").split(" ")[0]
        if kind.startswith("s3:") and op in ("LIST", "GET", "PUT", "HEAD"):
            out["GET" if op == "HEAD" else op] += n
    return out


def hourly(
    mode: str,
    *,
    idle: dict[str, int],
    relist: dict[str, int] | None,
    per_file: dict[str, float],
    interval_secs: float,
    relist_secs: float,
    files_per_hour: float,
) -> dict[str, float]:
    """Requests per hour of steady state, from measured counts.

    ``idle`` is what one idle cycle costs (polling: a full listing; hints: a hint-only cycle),
    ``relist`` (hints) what an idle cycle with the full listing costs, ``per_file`` what one new
    log file adds to a cycle (measured: a busy cycle minus an idle one, divided by its files).
    In hint mode S3 also sends one SQS message per new object (S3 → SQS, not counted at moto:
    added here, as the queue owner pays for it).
    """
    cycles = 3600 / interval_secs
    out: dict[str, float] = {}
    for op in ("LIST", "GET", "PUT", "SQS"):
        if mode == "poll":
            base = idle[op] * cycles
        else:
            assert relist is not None
            relists = min(cycles, 3600 / relist_secs) if relist_secs else cycles
            base = relist[op] * relists + idle[op] * (cycles - relists)
        out[op] = base + per_file[op] * files_per_hour
    if mode == "hints":
        out["SQS"] += files_per_hour  # S3's SendMessage of each notification
    return out


def owner_of(filename: str, function: str = "") -> str:
    """Who a profiled function belongs to: ``aggregator``, a site-package, the stdlib or C
    (cProfile times are wall time: the event loop's epoll wait for answers is apart)."""
    if "select.epoll" in function:
        return "waiting for answers (epoll)"
    if "_GuardedConnection.execute" in function or "sqlite3" in function:
        return "sqlite (ctagg's state)"
    if "/site-packages/" in filename:
        return filename.split("/site-packages/", 1)[1].split("/", 1)[0].removesuffix(".py")
    if f"{ROOT}/aggregator/" in filename:
        return "aggregator (ctagg)"
    if filename.startswith("~") or filename == "":
        return "built-in (C: sockets, ...)"
    return "stdlib (asyncio, ssl, json, ...)"


def top_of(profile: Path, n: int = 25) -> str:
    """Own time (tottime) per package, then the top functions by own and cumulative time."""
    buf = io.StringIO()
    stats = pstats.Stats(str(profile), stream=buf)
    by: dict[str, float] = {}
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    for (filename, _, function), (_, _, tottime, _, _) in raw.items():
        owner = owner_of(filename, function)
        by[owner] = by.get(owner, 0.0) + tottime
    total = sum(by.values()) or 1.0
    buf.write("own time by package:\n")
    for name, secs in sorted(by.items(), key=lambda kv: -kv[1])[:12]:
        buf.write(f"  {secs:8.1f} s  {100 * secs / total:4.0f}%  {name}\n")
    stats.sort_stats("tottime").print_stats(n)
    stats.sort_stats("cumulative").print_stats(n)
    return buf.getvalue()


def show(name: str, c: dict[str, Any]) -> None:
    r = c["report"]
    print(
        f"{name}: wall {c['wall_secs']:.1f} s (ingest cycle {c['cycle_secs']:.1f} s, relisted "
        f"{r.get('relisted')}, objects {r.get('objects')})  ctagg CPU {c['cpu_secs']:.1f} s  "
        f"moto CPU {c['moto_cpu_secs']:.1f} s  peak RSS {c['peak_rss_mb']:.0f} MB  requests "
        f"{json.dumps(c['requests'], sort_keys=True)}  load {c['load']}",
        flush=True,
    )


def idle(name: str, config_path: Path, url: str, pid: int, tmp: Path) -> dict[str, Any]:
    """One idle cycle; one that fetched or archived anything fails the benchmark."""
    c = run_once(config_path, url, pid, tmp)
    busy = c["requests"].get("s3:GET", 0) + c["requests"].get("s3:PUT", 0)
    if c["report"].get("objects", 0) or c["report"].get("events_archived", 0) or busy:
        raise SystemExit(f"{name} was not idle: {c['report']} {c['requests']}")
    show(name, c)
    return c


def busy(
    name: str, s3: Any, pairs: list[tuple[str, str]], index: int, run: Any, central: str
) -> tuple[dict[str, Any], Planted]:
    """A cycle with one new log file in each of ``pairs``; every one must be archived."""
    new = plant(s3, pairs, range(index, index + 1))
    c = run()
    got = central_keys(central)
    if c["report"].get("objects") != len(new) or len(got) != len(new):
        raise SystemExit(f"{name}: {len(new)} new files, {c['report']} central {len(got)}")
    show(name, c)
    return c, new


def central_keys(bucket: str) -> list[str]:
    s3 = boto3.client("s3", region_name="us-east-1")
    keys: list[str] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="AWSLogs/"):
        keys += [o["Key"] for o in page.get("Contents", [])]
    return keys


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--accounts", type=int, default=1000)
    ap.add_argument("--regions", type=int, default=17)
    ap.add_argument("--objects", type=int, default=1, help="handled log files per pair")
    ap.add_argument("--cycles", type=int, default=2, help="idle cycles measured per mode")
    ap.add_argument(
        "--busy-files",
        type=int,
        default=100,
        help="new files of the busy cycle (0: none, no table)",
    )
    ap.add_argument("--profile", action="store_true", help="one more idle cycle under cProfile")
    ap.add_argument("--mode", choices=["poll", "hints", "both"], default="both")
    ap.add_argument(
        "--no-relist",
        action="store_true",
        help="hints: skip the relist cycle (a full listing: what polling measures; too slow "
        "against moto at 1,000 x 17). No cost table then.",
    )
    ap.add_argument("--interval", type=float, default=60.0, help="cycle interval (secs)")
    ap.add_argument("--files-per-hour", type=float, default=12.0, help="per pair (assumed)")
    ap.add_argument("--events-per-file", type=float, default=50.0, help="assumed")
    args = ap.parse_args()
    accounts = accounts_of(args.accounts)
    regions = ALL_REGIONS[: args.regions]
    pairs = [(a, r) for a in accounts for r in regions]
    modes = ["poll", "hints"] if args.mode == "both" else [args.mode]

    proc, url = motoserver.start()
    os.environ.update(
        AWS_ENDPOINT_URL=url,
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_EC2_METADATA_DISABLED="true",
    )
    summary: dict[str, Any] = {"pairs": len(pairs), "load_start": motoserver.load()}
    measured: dict[str, dict[str, Any]] = {}
    try:
        with tempfile.TemporaryDirectory() as tmp_:
            tmp = Path(tmp_)
            base = boto3.client("s3", region_name="us-east-1")
            trail = assumed(LOG_ARCHIVE)
            sqs = assumed(LOG_ARCHIVE, "sqs")
            trail.create_bucket(Bucket=BUCKET)
            t = time.perf_counter()
            planted = plant(trail, pairs, range(args.objects))
            print(f"planted {len(planted):,} objects for {len(pairs):,} pairs in "
                  f"{time.perf_counter() - t:.0f} s", flush=True)  # fmt: skip
            busy_pairs = pairs[:: max(1, len(pairs) // max(1, args.busy_files))][: args.busy_files]
            index = args.objects
            relist_secs = 3600.0
            for mode in modes:
                base.create_bucket(Bucket=f"{CENTRAL}-{mode}")
                queue_url = None
                if mode == "hints":
                    queue_url = sqs.create_queue(QueueName="ctagg-hints")["QueueUrl"]
                config_path, cfg = config(tmp, accounts, regions, mode, queue_url)
                if mode == "hints":
                    notif = parse_settings(cfg, {}).collect.notifications
                    assert notif is not None
                    relist_secs = notif.relist_interval_secs
                seeded = seed_state(cfg, planted, relisted_at=time.time() if queue_url else None)
                print(f"{mode}: seeded the state in {seeded:.0f} s", flush=True)
                if queue_url is not None:
                    arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])
                    trail.put_bucket_notification_configuration(
                        Bucket=BUCKET,
                        NotificationConfiguration={
                            "QueueConfigurations": [
                                {
                                    "QueueArn": arn["Attributes"]["QueueArn"],
                                    "Events": ["s3:ObjectCreated:*"],
                                }
                            ]
                        },
                    )
                    sqs.purge_queue(QueueUrl=queue_url)  # the s3:TestEvent of the set-up

                def run(path: Path = config_path) -> dict[str, Any]:
                    return run_once(path, url, proc.pid, tmp)

                m: dict[str, Any] = {"idle": []}
                for k in range(args.cycles):
                    if queue_url is not None:
                        set_relisted(cfg, time.time())  # hint-only: the relist ran just now
                    m["idle"].append(
                        idle(f"{mode} idle cycle {k}", config_path, url, proc.pid, tmp)
                    )
                if queue_url is not None and not args.no_relist:
                    set_relisted(cfg, 0.0)
                    m["relist"] = idle(f"{mode} relist idle cycle", config_path, url, proc.pid, tmp)
                    set_relisted(cfg, time.time())
                if args.busy_files:
                    m["busy"], new = busy(
                        f"{mode} busy cycle", trail, busy_pairs, index, run, f"{CENTRAL}-{mode}"
                    )
                    # the busy files leave the bucket: the next mode's state never saw them
                    for _, _, key, _, _ in new:
                        trail.delete_object(Bucket=BUCKET, Key=key)
                if queue_url is not None:
                    trail.put_bucket_notification_configuration(
                        Bucket=BUCKET, NotificationConfiguration={}
                    )
                index += 1
                measured[mode] = m
                if args.profile:
                    prof = tmp / "idle.prof"
                    c = run_once(config_path, url, proc.pid, tmp, profile=prof)
                    show(f"{mode} idle cycle under cProfile", c)
                    print(top_of(prof))

        table = {}
        if args.busy_files and not (args.no_relist and "hints" in measured):
            table = cost_table(measured, args, len(pairs), relist_secs)
        summary["modes"] = {
            mode: {
                name: [slim(c) for c in v] if isinstance(v, list) else slim(v)
                for name, v in m.items()
            }
            for mode, m in measured.items()
        }
        summary["per_hour"] = table
        print(json.dumps(summary))
        return 0
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def slim(c: dict[str, Any]) -> dict[str, Any]:
    return {k: (round(v, 2) if isinstance(v, float) else v) for k, v in c.items() if k != "report"}


def cost_table(
    measured: dict[str, dict[str, Any]], args: Any, pairs: int, relist_secs: float
) -> dict[str, dict[str, float]]:
    files_per_hour = pairs * args.files_per_hour
    events_per_hour = files_per_hour * args.events_per_file
    per_m = 1e6 / events_per_hour
    print(
        f"\nsteady state: a cycle every {args.interval:g} s, relist every {relist_secs:g} s "
        f"(hints), {args.files_per_hour:g} files per pair and hour of {args.events_per_file:g} "
        f"events = {events_per_hour:,.0f} events/h over {pairs:,} pairs"
    )
    head = ("mode", "op", "idle cycle", "per hour", "per 1M events", "$/1M ev")
    print(f"{head[0]:6} {head[1]:5} {head[2]:>10} {head[3]:>12} {head[4]:>14} {head[5]:>8}")
    out: dict[str, dict[str, float]] = {}
    for mode, m in measured.items():
        idle_ops = s3_ops(m["idle"][-1]["requests"])  # a state's first cycle lists one more
        relist_ops = s3_ops(m["relist"]["requests"]) if "relist" in m else None
        busy_ops = s3_ops(m["busy"]["requests"])
        files = m["busy"]["report"]["objects"]
        # the busy cycle is an idle one (polling: a full listing; hints: hint-only) plus its files
        per_file = {op: max(0, busy_ops[op] - idle_ops[op]) / files for op in busy_ops}
        h = hourly(
            mode,
            idle=idle_ops,
            relist=relist_ops,
            per_file=per_file,
            interval_secs=args.interval,
            relist_secs=relist_secs,
            files_per_hour=files_per_hour,
        )
        dollars = 0.0
        for op, n in h.items():
            cost = n * per_m * PRICE_PER_1K[op] / 1000
            dollars += cost
            print(
                f"{mode:6} {op:5} {idle_ops[op]:>10,} {n:>12,.0f} {n * per_m:>14,.0f} {cost:>8.3f}"
            )
        print(f"{mode:6} total {'':>10} {'':>12} {'':>14} {dollars:>8.3f}")
        out[mode] = {**{op: round(n, 1) for op, n in h.items()}, "usd_per_million": dollars}
        out[mode]["per_file"] = per_file  # type: ignore[assignment]
    if len(out) == 2:
        ratio = out["poll"]["LIST"] / max(out["hints"]["LIST"], 1e-9)
        print(f"LIST per hour, polling / hints: {ratio:.1f}x")
        out["list_ratio"] = {"poll_over_hints": round(ratio, 1)}
    return out


if __name__ == "__main__":
    raise SystemExit(main())
