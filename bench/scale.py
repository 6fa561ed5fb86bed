"""Scale-out benchmark: the same source objects through one ``ctagg once`` and through two
``ctagg once --shard i/2`` running side by side (real processes), on this machine's cores.

    .venv/bin/python bench/scale.py [--accounts 30] [--regions 4] [--objects 3] [--records 1000]
                                    [--runs 3]

Sources: an organization trail (every account × region, ``--objects`` log files of
``--records`` realistic records each, built from shared/testdata) and account trails for every
other pair, each holding one file that repeats half of an organization-trail file's events and
adds as many of its own (overlapping trails: dedupe must keep one copy). moto runs in its own
process (``bench/motoserver.py``, not pinned: it shares the cores with the shards, as it has
to); the shards are not pinned either.

Each run starts from fresh state files and an empty central bucket (the installation record
and writer markers too); runs alternate 1 shard, 2 shards, ``--runs`` times each. Reported per
run, with the load average when it started (others run tests here: the numbers are noisy):

* aggregate events/s: distinct events in the central bucket after the run / wall time from
  the start of the first shard process to the end of the last (start-up and discovery
  included, as an operator sees it)
* CPU seconds of each shard process (``wait4`` rusage) and of the moto process over the run
  (``/proc/PID/stat``), and S3 requests by type counted at moto
* the ratio of the 2-shard rate to the 1-shard rate (median over the runs)

Every run is verified from outside: the central bucket is listed and decoded, no event is in it
twice, and its distinct events are the planted ones (the same set for 1 and 2 shards). A fast
and wrong run fails the benchmark.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from aggregator.aws.slots import owns
from aggregator.config import ShardSettings
from aggregator.ingest.dedupe import DELIVERY_METADATA
from aggregator.service.demo import find_testdata, load_records
from bench import motoserver

LOG_ARCHIVE = "222222222222"
ORG = "o-benchscale1"
CENTRAL = "central"
ORG_BUCKET = "org-trail"
ACCT_BUCKET = "acct-trails"
ALL_REGIONS = [
    "us-east-1", "us-east-2", "us-west-1", "us-west-2", "eu-west-1", "eu-west-2", "eu-west-3",
    "eu-central-1", "eu-north-1", "ap-south-1", "ap-northeast-1", "ap-northeast-2",
    "ap-northeast-3", "ap-southeast-1", "ap-southeast-2", "ca-central-1", "sa-east-1",
]  # fmt: skip


def accounts_of(n: int) -> list[str]:
    return [f"{100000000000 + 7919 * i:012d}" for i in range(1, n + 1)]


def assumed(account: str, service: str = "s3") -> Any:
    creds = boto3.client("sts", region_name="us-east-1").assume_role(
        RoleArn=f"arn:aws:iam::{account}:role/OrganizationAccountAccessRole",
        RoleSessionName="bench",
    )["Credentials"]
    return boto3.client(
        service,
        region_name="us-east-1",
        aws_access_key_id=creds["AccessKeyId"],
        aws_secret_access_key=creds["SecretAccessKey"],
        aws_session_token=creds["SessionToken"],
    )


def content(rec: dict[str, Any]) -> bytes:
    """An event's identity as tests/archivecheck.py judges it: the record minus delivery
    metadata, sorted keys."""
    body = {k: v for k, v in rec.items() if k not in DELIVERY_METADATA}
    return orjson.dumps(body, option=orjson.OPT_SORT_KEYS)


def plant(
    accounts: list[str], regions: list[str], n_objects: int, per: int
) -> tuple[set[bytes], dict[tuple[str, str], int]]:
    """Put the trail objects (into the log archive account's buckets); returns the distinct
    planted events (by content) and the events per (account, region)."""
    testdata = find_testdata(ROOT)
    if testdata is None:
        raise SystemExit("shared/testdata not found")
    base = [r for r in load_records(testdata) if len(orjson.dumps(r)) < 8000]
    s3 = assumed(LOG_ARCHIVE)
    for b in (ORG_BUCKET, ACCT_BUCKET):
        s3.create_bucket(Bucket=b)
    day = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=1)
    planted: set[bytes] = set()
    per_pair: dict[tuple[str, str], int] = {}
    n = 0
    for p, (account, region) in enumerate((a, r) for a in accounts for r in regions):
        first: list[dict[str, Any]] = []
        for i in range(n_objects):
            stamp = day + timedelta(minutes=5 * (i + 1))
            recs = []
            for j in range(per):
                r = dict(base[n % len(base)])
                n += 1
                r.update(
                    eventID=f"scale-{p:05d}-{i:03d}-{j:05d}",
                    recipientAccountId=account,
                    awsRegion=region,
                    eventTime=(stamp - timedelta(seconds=300 * (per - j) / per)).strftime(
                        "%Y-%m-%dT%H:%M:%SZ"
                    ),
                )
                recs.append(r)
            first = first or recs
            ts = stamp.strftime("%Y%m%dT%H%MZ")
            key = (
                f"AWSLogs/{ORG}/{account}/CloudTrail/{region}/{stamp:%Y/%m/%d}/"
                f"{account}_CloudTrail_{region}_{ts}_O{p:05d}{i:03d}.json.gz"
            )
            s3.put_object(
                Bucket=ORG_BUCKET, Key=key, Body=gzip.compress(orjson.dumps({"Records": recs}), 6)
            )
            planted.update(content(r) for r in recs)
        count = n_objects * per
        if p % 2 == 0:  # an account trail too: half of the first org file again, half its own
            own = [
                dict(first[j], eventID=f"scale-{p:05d}-acct-{j:05d}", eventName="GetObject")
                for j in range(per // 2)
            ]
            recs = first[: per // 2] + own
            stamp = day + timedelta(minutes=5)
            ts = stamp.strftime("%Y%m%dT%H%MZ")
            key = (
                f"AWSLogs/{account}/CloudTrail/{region}/{stamp:%Y/%m/%d}/"
                f"{account}_CloudTrail_{region}_{ts}_A{p:05d}.json.gz"
            )
            s3.put_object(
                Bucket=ACCT_BUCKET, Key=key, Body=gzip.compress(orjson.dumps({"Records": recs}), 6)
            )
            planted.update(content(r) for r in own)
            count += len(own)
        per_pair[(account, region)] = count
    return planted, per_pair


def write_config(path: Path, accounts: list[str], regions: list[str], state: Path) -> Path:
    cfg: dict[str, Any] = {
        "state": {"path": str(state)},
        "aws": {"region": "us-east-1", "max_attempts": 3},
        "credentials": {"role_arn_template": "arn:aws:iam::{account_id}:role/ctagg-member"},
        "discovery": {
            "accounts": {"source": "static", "static": [{"id": a} for a in accounts]},
            "regions": {"include": regions},
            "trails": {
                "discover": False,
                "static_sources": [
                    {
                        "bucket": ORG_BUCKET,
                        "organization_id": ORG,
                        "reader_account_id": LOG_ARCHIVE,
                    },
                    {"bucket": ACCT_BUCKET, "reader_account_id": LOG_ARCHIVE},
                ],
            },
        },
        "integrity": {"lookup": {"mode": "off"}},
        "archive": {"bucket": CENTRAL},
    }
    path.write_text(json.dumps(cfg))
    return path


def empty_central() -> None:
    s3 = boto3.client("s3", region_name="us-east-1")
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=CENTRAL):
        keys = [{"Key": o["Key"]} for o in page.get("Contents", ())]
        if keys:
            s3.delete_objects(Bucket=CENTRAL, Delete={"Objects": keys, "Quiet": True})


def archived() -> Counter[bytes]:
    """Every event in the central bucket's AWSLogs/ (listed and decoded), by content."""
    s3 = boto3.client("s3", region_name="us-east-1")
    out: Counter[bytes] = Counter()
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=CENTRAL, Prefix="AWSLogs/"):
        for obj in page.get("Contents", ()):
            body = s3.get_object(Bucket=CENTRAL, Key=obj["Key"])["Body"].read()
            data = gzip.decompress(body) if body[:2] == b"\x1f\x8b" else body
            out.update(content(r) for r in orjson.loads(data)["Records"])
    return out


def run(config: Path, url: str, moto_pid: int, shards: int, tmp: Path) -> dict[str, Any]:
    """``shards`` concurrent ``ctagg once`` processes; their wall time, CPU and reports."""
    env = {k: v for k, v in os.environ.items() if k not in ("CTAGG_SHARD_INDEX", "POD_NAME")}
    env.update(AWS_ENDPOINT_URL=url, HOSTNAME="bench-host")
    loadavg = motoserver.load()
    motoserver.counts(url, reset=True)
    moto0 = motoserver.cpu_secs(moto_pid)
    t0 = time.perf_counter()
    procs = []
    for i in range(shards):
        shard = ["--shard", f"{i}/{shards}"] if shards > 1 else []
        out = (tmp / f"out-{i}").open("w")
        err = (tmp / f"err-{i}").open("w")
        cmd = [sys.executable, "-m", "aggregator", "once", "--json", str(config), *shard]
        procs.append((subprocess.Popen(cmd, env=env, stdout=out, stderr=err, cwd=ROOT), out, err))
    cpu, ends = [], []
    for p, out, err in procs:
        _, status, usage = os.wait4(p.pid, 0)
        ends.append(time.perf_counter())
        p.returncode = os.waitstatus_to_exitcode(status)
        out.close()
        err.close()
        cpu.append(usage.ru_utime + usage.ru_stime)
    wall = max(ends) - t0
    moto_cpu = motoserver.cpu_secs(moto_pid) - moto0
    requests = motoserver.counts(url)
    reports = []
    for i, (p, _, _) in enumerate(procs):
        if p.returncode != 0:
            raise SystemExit(
                f"shard {i} exited {p.returncode}: {(tmp / f'err-{i}').read_text()[-3000:]}"
            )
        reports.append(json.loads((tmp / f"out-{i}").read_text().strip().splitlines()[-1]))
    return {
        "shards": shards,
        "load": loadavg,
        "wall_secs": wall,
        "cpu_secs": cpu,
        "moto_cpu_secs": moto_cpu,
        "requests": requests,
        "reports": reports,
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--accounts", type=int, default=30)
    ap.add_argument("--regions", type=int, default=4)
    ap.add_argument("--objects", type=int, default=3, help="organization-trail files per pair")
    ap.add_argument("--records", type=int, default=1000, help="records per file")
    ap.add_argument("--runs", type=int, default=3, help="runs of each (1 and 2 shards)")
    args = ap.parse_args()
    accounts = accounts_of(args.accounts)
    regions = ALL_REGIONS[: args.regions]

    proc, url = motoserver.start()
    os.environ.update(
        AWS_ENDPOINT_URL=url,
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_EC2_METADATA_DISABLED="true",
    )
    try:
        boto3.client("s3", region_name="us-east-1").create_bucket(Bucket=CENTRAL)
        planted, per_pair = plant(accounts, regions, args.objects, args.records)
        split = [
            sum(n for (a, r), n in per_pair.items() if owns(ShardSettings(index=i, count=2), a, r))
            for i in range(2)
        ]
        print(
            f"{len(per_pair)} pairs, {len(planted):,} distinct events "
            f"(shard 0/2 owns {split[0]:,}, 1/2 owns {split[1]:,})"
        )
        # moto builds its backends (STS, S3 of each account) on first use: one unmeasured run
        with tempfile.TemporaryDirectory() as tmp:
            empty_central()
            config = write_config(Path(tmp) / "config.yaml", accounts, regions, Path(tmp) / "s.db")
            run(config, url, proc.pid, 1, Path(tmp))
        results: list[dict[str, Any]] = []
        for k in range(args.runs):
            for shards in (1, 2):
                with tempfile.TemporaryDirectory() as tmp:
                    empty_central()
                    config = write_config(
                        Path(tmp) / "config.yaml", accounts, regions, Path(tmp) / "state.db"
                    )
                    r = run(config, url, proc.pid, shards, Path(tmp))
                got = archived()
                twice = sum(1 for n in got.values() if n > 1)
                if twice or set(got) != planted:
                    raise SystemExit(
                        f"run {k} with {shards} shard(s) is WRONG: {twice} events archived "
                        f"twice, {len(planted - set(got))} missing, {len(set(got) - planted)} "
                        "unexpected"
                    )
                r["events"] = len(got)
                r["eps"] = len(got) / r["wall_secs"]
                results.append(r)
                print(
                    f"run {k} {shards} shard(s): {r['eps']:9,.0f} events/s  wall "
                    f"{r['wall_secs']:5.2f} s  CPU {'+'.join(f'{c:.2f}' for c in r['cpu_secs'])}"
                    f" s  moto CPU {r['moto_cpu_secs']:.2f} s  "
                    f"cycle {'/'.join(str(x['duration_secs']) for x in r['reports'])} s  "
                    f"S3 {r['requests'].get('s3:LIST', 0)} LIST "
                    f"{r['requests'].get('s3:GET', 0)} GET {r['requests'].get('s3:PUT', 0)} PUT"
                    f"  load {r['load']}"
                )
        one = [r["eps"] for r in results if r["shards"] == 1]
        two = [r["eps"] for r in results if r["shards"] == 2]
        ratios = [b / a for a, b in zip(one, two, strict=True)]
        summary = {
            "pairs": len(per_pair),
            "events": len(planted),
            "events_per_shard_of_2": split,
            "one_shard_eps": [round(x) for x in one],
            "two_shard_eps": [round(x) for x in two],
            "ratio_per_run": [round(x, 2) for x in ratios],
            "ratio_median": round(statistics.median(ratios), 2),
            "ratio_of_medians": round(statistics.median(two) / statistics.median(one), 2),
            "cpu_one_shard": [round(sum(r["cpu_secs"]), 2) for r in results if r["shards"] == 1],
            "cpu_two_shards": [
                [round(c, 2) for c in r["cpu_secs"]] for r in results if r["shards"] == 2
            ],
            "moto_cpu_one_shard": [
                round(r["moto_cpu_secs"], 2) for r in results if r["shards"] == 1
            ],
            "moto_cpu_two_shards": [
                round(r["moto_cpu_secs"], 2) for r in results if r["shards"] == 2
            ],
            "load": [r["load"] for r in results],
            "cores": len(os.sched_getaffinity(0)),
        }
        print(
            f"2-shard / 1-shard: {summary['ratio_median']}x (median of per-run ratios; target "
            f">= 1.7x on 2 cores); moto's CPU shares the same cores"
        )
        print(json.dumps(summary))
        return 0
    finally:
        proc.terminate()
        proc.wait(timeout=10)


if __name__ == "__main__":
    raise SystemExit(main())
