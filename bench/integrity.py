"""Integrity benchmark: the CPU cost of proving things, without S3 in the way.

    .venv/bin/python bench/integrity.py [--records 1000] [--files 50] [--expected 100000]

Reported (one core, numbers are noisy on a shared 2-core machine):

* log-file hash check (gunzip + SHA-256 of the uncompressed content, as CloudTrail hashes it):
  MB/s of uncompressed content and records/s, for 1000-record log files
* digest signature check (SHA256withRSA verify, 2048-bit): per digest
* digest build + sign (what the archive digester does per hour): per digest with 500 objects
* completeness compute: expected rows/s from SQLite against handled keys
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cryptography.hazmat.primitives.asymmetric import rsa

from aggregator.archive.signing import (
    public_key_fingerprint,
    rsa_signer,
    signing_string,
    verify_signature,
)
from aggregator.integrity.completeness import compute, hour_of
from aggregator.integrity.digest import (
    LogFileRef,
    build_digest,
    check_log_bytes,
    uncompressed_sha256,
)
from aggregator.state import CentralObject, ObjectOutcome, SourceRef, State

ACCOUNT, REGION = "111111111111", "us-east-1"


def sample_records(n: int) -> list[dict[str, object]]:
    shared = next(p / "shared" for p in ROOT.parents if (p / "shared" / "testdata").exists())
    td = shared / "testdata" / "awsdocs" / "aws-cloudtrail-user-guide"
    base = [json.loads(x)["record"] for x in (td / "records.jsonl").read_text().splitlines()]
    return [dict(base[i % len(base)], eventID=f"bench-{i}") for i in range(n)]


def bench_hash(records: int, files: int) -> None:
    recs = sample_records(records)
    raw = gzip.compress(json.dumps({"Records": recs}).encode(), compresslevel=6)
    plain = len(gzip.decompress(raw))
    ref = LogFileRef("b", "k", uncompressed_sha256(raw), "SHA-256", None, None)
    t = time.perf_counter()
    for _ in range(files):
        assert check_log_bytes(ref, raw)
    dt = time.perf_counter() - t
    print(
        f"log-file hash check: {files * plain / dt / 1e6:.0f} MB/s uncompressed, "
        f"{files * records / dt:,.0f} records/s ({plain / records:.0f} B/record)"
    )


def bench_signatures(n: int) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pub = key.public_key()
    objs = [
        {"s3Bucket": "b", "s3Object": f"AWSLogs/x/{i}.json.gz", "hashValue": "ab" * 32}
        for i in range(500)
    ]
    start = datetime(2024, 5, 1, tzinfo=UTC)

    async def build() -> tuple[float, list[tuple[dict[str, object], str, str]]]:
        out = []
        t = time.perf_counter()
        for i in range(n):
            _, _, dg = await build_digest(
                bucket="b",
                key=f"d{i}",
                account_id=ACCOUNT,
                start=start,
                end=start + timedelta(hours=1),
                log_files=objs,
                fingerprint=public_key_fingerprint(pub),
                signer=rsa_signer(key),
            )
            out.append((dg.doc, dg.sha256, dg.signature))
        return time.perf_counter() - t, out

    dt_build, docs = asyncio.run(build())
    t = time.perf_counter()
    for doc, sha, sig in docs:
        assert verify_signature(pub, signing_string(doc, sha), sig)
    dt = time.perf_counter() - t
    print(f"digest build+sign (500 entries): {dt_build / n * 1000:.2f} ms/digest")
    print(f"digest signature verify: {dt / n * 1e6:.0f} us/digest")


def bench_completeness(expected: int) -> None:
    with tempfile.TemporaryDirectory() as d:
        state = State(Path(d) / "s.db")
        prefix = f"AWSLogs/{ACCOUNT}/CloudTrail/{REGION}/"
        src = SourceRef(f"b/{prefix}", ACCOUNT, REGION, "b", prefix)
        rows = []
        t0 = datetime(2024, 5, 1, tzinfo=UTC)
        for i in range(expected):
            ts = t0 + timedelta(seconds=i * 30)
            key = (
                f"{prefix}{ts:%Y/%m/%d}/{ACCOUNT}_CloudTrail_{REGION}_{ts:%Y%m%dT%H%MZ}_"
                f"r{i:08d}.json.gz"
            )
            rows.append((key, ts))
        state.digests.record_expected(
            [("b", k, src.source_id, ACCOUNT, REGION, hour_of(k), "00", "d") for k, _ in rows],
        )
        for i, (k, _ts) in enumerate(rows):
            if i % 1000 == 0:
                continue  # 0.1 % missing
            state.commit_object(
                ObjectOutcome(
                    src,
                    k,
                    k.rsplit("/", 1)[0] + "/",
                    "log",
                    None,
                    1,
                    1,
                    0,
                    (),
                    CentralObject(f"c{i}", 1, "x", 1, None, None),
                )
            )
        t = time.perf_counter()
        rep = compute(state, t0, rows[-1][1] + timedelta(hours=1), now=time.time())
        dt = time.perf_counter() - t
        print(
            f"completeness compute: {expected / dt:,.0f} expected files/s "
            f"({len(rep.missing)} missing of {rep.expected}, {len(rep.hours)} hours)"
        )
        state.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=1000)
    ap.add_argument("--files", type=int, default=50)
    ap.add_argument("--digests", type=int, default=50)
    ap.add_argument("--expected", type=int, default=100_000)
    a = ap.parse_args()
    bench_hash(a.records, a.files)
    bench_signatures(a.digests)
    bench_completeness(a.expected)


if __name__ == "__main__":
    main()
