"""OutEvents made from the shared CloudTrail test data (real records, raw schema)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from aggregator.ingest.dedupe import event_epoch, record_key_text
from connectors.base import OutEvent


def stratus_records(testdata: Path) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for f in sorted((testdata / "stratus-red-team" / "detonation-logs").glob("*.json")):
        out.extend(json.loads(f.read_text(encoding="utf-8")))
    return out


def out_event(record: dict[str, Any], pointer: str = "s3://central/k.json.gz#0") -> OutEvent:
    return OutEvent(
        id=record_key_text(record),
        doc=record,
        time=float(event_epoch(record)),
        account_id=str(record.get("recipientAccountId") or ""),
        region=str(record.get("awsRegion") or ""),
        pointer=pointer,
        event_name=str(record.get("eventName") or ""),
    )


def out_events(testdata: Path, n: int | None = None) -> list[OutEvent]:
    recs = stratus_records(testdata)
    if n is not None:
        recs = recs[:n]
    return [out_event(r, f"s3://central/AWSLogs/x.json.gz#{i}") for i, r in enumerate(recs)]
