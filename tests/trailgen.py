"""Test helper: stand in for CloudTrail by writing real log files and signed, chained digests
into a (moto) S3 bucket, with our own RSA key."""

from __future__ import annotations

import gzip
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from cryptography.hazmat.primitives.asymmetric import rsa

from aggregator.archive.signing import public_key_fingerprint, rsa_signer
from aggregator.integrity.digest import Digest, build_digest, digest_key_for, uncompressed_sha256

ACCOUNT = "111111111111"
REGION = "eu-central-1"
TRAIL = "org-trail"


def new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def log_prefix(account: str = ACCOUNT, region: str = REGION, prefix: str = "") -> str:
    return f"{prefix}AWSLogs/{account}/CloudTrail/{region}/"


def sample_records(testdata: Path) -> list[dict[str, Any]]:
    src = (
        testdata
        / "trailscraper"
        / ("111111111111_CloudTrail_eu-central-1_20171211T1505Z_A6kvhMoVeCsc7v8U.json.gz")
    )
    records: list[dict[str, Any]] = orjson.loads(gzip.decompress(src.read_bytes()))["Records"]
    return records


@dataclass
class Trail:
    bucket: str
    prefix: str
    logs: dict[str, bytes] = field(default_factory=dict)  # key -> stored gzip bytes
    digests: list[Digest] = field(default_factory=list)
    digest_hours: list[list[str]] = field(default_factory=list)  # log keys per digest


async def write_trail(
    s3: Any,
    testdata: Path,
    *,
    bucket: str = "trail-bucket",
    hours: int = 3,
    files_per_hour: int = 2,
    start: datetime = datetime(2024, 5, 1, 10, 1, 31, tzinfo=UTC),
    key: rsa.RSAPrivateKey,
    fingerprint: str | None = None,
    create_bucket: bool = True,
) -> Trail:
    """``hours`` hourly digests, each listing ``files_per_hour`` log files delivered in it."""
    if create_bucket:
        await s3.create_bucket(
            Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": REGION}
        )
    fp = fingerprint or public_key_fingerprint(key.public_key())
    prefix = log_prefix()
    trail = Trail(bucket, prefix)
    records = sample_records(testdata)
    previous: Digest | None = None
    for h in range(hours):
        d_start = start + timedelta(hours=h)
        d_end = d_start + timedelta(hours=1)
        refs = []
        keys = []
        for i in range(files_per_hour):
            t = d_start + timedelta(minutes=5 + 20 * i)
            lkey = (
                f"{prefix}{t:%Y/%m/%d}/{ACCOUNT}_CloudTrail_{REGION}_{t:%Y%m%dT%H%MZ}_"
                f"h{h}f{i}abcdefgh.json.gz"
            )
            recs = [dict(r, eventID=f"{r['eventID']}-{h}-{i}") for r in records]
            raw = gzip.compress(orjson.dumps({"Records": recs}))
            await s3.put_object(Bucket=bucket, Key=lkey, Body=raw)
            trail.logs[lkey] = raw
            keys.append(lkey)
            refs.append(
                {"s3Bucket": bucket, "s3Object": lkey, "hashValue": uncompressed_sha256(raw)}
            )
        dkey = digest_key_for(
            prefix, account_id=ACCOUNT, region=REGION, trail=TRAIL, home_region=REGION, end=d_end
        )
        raw_d, meta, dg = await build_digest(
            bucket=bucket,
            key=dkey,
            account_id=ACCOUNT,
            start=d_start,
            end=d_end,
            log_files=refs,
            fingerprint=fp,
            signer=rsa_signer(key),
            previous=previous,
        )
        await s3.put_object(Bucket=bucket, Key=dkey, Body=raw_d, Metadata=meta)
        trail.digests.append(dg)
        trail.digest_hours.append(keys)
        previous = dg
    return trail
