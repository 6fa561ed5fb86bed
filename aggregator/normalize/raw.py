"""CloudTrail record, unchanged, in the envelope a Splunk HEC sink needs.

``event`` is the record itself (after redaction); ``sourcetype`` is ``aws:cloudtrail`` so the
Splunk Add-on for AWS does the CIM mapping; ``time`` is the event time in epoch seconds;
``fields`` carries the ingest (index) time and enrichment as indexed fields.
"""

from __future__ import annotations

from typing import Any

from aggregator.normalize._util import parse_time
from aggregator.normalize.context import EventContext

SOURCETYPE = "aws:cloudtrail"


def to_raw(
    record: dict[str, Any],
    *,
    now_ms: int,
    now_iso: str,
    context: EventContext | None,
) -> dict[str, Any]:
    t = parse_time(record.get("eventTime"))
    fields: dict[str, Any] = {"ctagg_ingest_time": now_iso}
    out: dict[str, Any] = {
        "time": (t[0] if t is not None else now_ms) / 1000,
        "sourcetype": SOURCETYPE,
        "source": "ctagg",
        "event": record,
        "fields": fields,
    }
    if context is not None:
        if context.archive_bucket is not None or context.archive_key is not None:
            out["source"] = f"s3://{context.archive_bucket or ''}/{context.archive_key or ''}"
        if context.account_name:
            fields["aws_account_name"] = context.account_name
        if context.ou_path:
            fields["aws_ou_path"] = context.ou_path
        if context.organization_id:
            fields["aws_organization_id"] = context.organization_id
        if context.account_tags:
            fields["aws_account_tags"] = [f"{k}={v}" for k, v in context.account_tags.items()]
    return out
