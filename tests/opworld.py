"""A small world for the operator-facing tests (commands, daemon): one static account, one
region, a trail bucket named as a static source, log objects in it, and a config file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from awsfixtures import client, log_key, log_object, record

A1 = "111111111111"
REGION = "us-east-1"
TRAIL_BUCKET = "trail-bucket"
CENTRAL = "central"
BASE = f"AWSLogs/{A1}/CloudTrail/{REGION}/"


def put_logs(
    n_objects: int,
    records_per: int = 5,
    *,
    day: str = "2024-05-01",
    bucket: str = TRAIL_BUCKET,
    tag: str = "",
) -> list[str]:
    """``n_objects`` log objects of distinct events under one day; returns their keys."""
    s3 = client("s3")
    keys = []
    ymd = day.replace("-", "")
    for i in range(n_objects):
        minute = i % 60
        hour = (i // 60) % 24
        ts = f"{ymd}T{hour:02d}{minute:02d}Z"
        recs = [
            record(
                f"{tag}{day}-{i}-{j}",
                A1,
                time=f"{day}T{hour:02d}:{minute:02d}:{j % 60:02d}Z",
            )
            for j in range(records_per)
        ]
        key = log_key(BASE, A1, REGION, ts, rand=f"R{tag}{i:015d}"[-16:])
        s3.put_object(Bucket=bucket, Key=key, Body=log_object(recs))
        keys.append(key)
    return keys


def write_config(tmp_path: Path, moto: str, *, central: bool = True, **sections: Any) -> Path:
    """The config file (and the buckets: the trail bucket always, the central one when asked)."""
    s3 = client("s3")
    s3.create_bucket(Bucket=TRAIL_BUCKET)
    if central:
        s3.create_bucket(Bucket=CENTRAL)
    doc: dict[str, Any] = {
        "state": {"path": str(tmp_path / "state" / "ctagg.db")},
        "aws": {"endpoint_url": moto, "max_attempts": 1},
        "archive": {"bucket": CENTRAL},
        "discovery": {
            "accounts": {"source": "static", "static": [{"id": A1, "name": "prod-one"}]},
            "regions": {"include": [REGION]},
            "trails": {"discover": False, "static_sources": [{"bucket": TRAIL_BUCKET}]},
        },
        "collect": {"max_concurrency": 4},
        "integrity": {"lookup": {"mode": "off"}},
    }
    for name, value in sections.items():
        doc[name] = {**doc.get(name, {}), **value}
    p = tmp_path / "ctagg.yaml"
    p.write_text(yaml.safe_dump(doc))
    return p
