"""Recognise every shape CloudTrail records arrive in, and yield the records.

Accepted: a bare record, a ``{"Records": [...]}`` log file (plain or gzip), an EventBridge
event whose ``detail`` is a CloudTrail record (API calls, console sign-in, service events,
Insights), a CloudWatch Logs subscription payload whose log events are CloudTrail records,
NDJSON (one of the above per line), concatenated JSON documents (``cat *.json``: pretty-printed
objects one after another), a JSON array of the above, and CloudTrail Insights events.
Digest files are recognised and reported as such, never mistaken for events; S3/SQS/SNS
notifications (which also use ``Records``) are reported as problems, not read as events.
Pure code: bytes in, records out.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, cast

import orjson
from isal import isal_zlib

from aggregator.archive.codec import maybe_gunzip

_ISAL_ERROR = cast("type[Exception]", isal_zlib.error)  # mistyped in the stubs

# EventBridge detail-types that carry a CloudTrail record in ``detail``.
CLOUDTRAIL_DETAIL_TYPES = frozenset(
    {
        "AWS API Call via CloudTrail",
        "AWS Console Sign In via CloudTrail",
        "AWS Console Action via CloudTrail",
        "AWS Service Event via CloudTrail",
        "AWS Insight via CloudTrail",
    }
)


class Kind(StrEnum):
    RECORD = "record"
    LOG_FILE = "log_file"
    EVENTBRIDGE = "eventbridge"
    INSIGHT = "insight"
    DIGEST = "digest"


@dataclass(frozen=True)
class Parsed:
    """One CloudTrail record (or a recognised digest, whose ``record`` is the digest body)."""

    record: dict[str, Any]
    kind: Kind
    where: str


@dataclass(frozen=True)
class Problem:
    where: str
    reason: str


Item = Parsed | Problem


def is_digest(doc: dict[str, Any]) -> bool:
    return "digestSignatureAlgorithm" in doc or ("digestStartTime" in doc and "logFiles" in doc)


def is_record(doc: dict[str, Any]) -> bool:
    return "eventName" in doc or "eventID" in doc or ("eventType" in doc and "eventTime" in doc)


def is_notification(doc: dict[str, Any]) -> bool:
    """An S3/SQS/SNS notification record (``eventSource: aws:s3``), not CloudTrail."""
    src = doc.get("eventSource", doc.get("EventSource"))
    return isinstance(src, str) and src.startswith("aws:")


def _log_events(doc: dict[str, Any], where: str) -> Iterator[Item]:
    """CloudWatch Logs subscription data: each ``logEvents[].message`` is one JSON record."""
    events = doc.get("logEvents")
    if not isinstance(events, list):
        yield Problem(where, "'logEvents' is not a list")
        return
    for i, event in enumerate(events):
        here = f"{where}:logEvents[{i}]"
        message = event.get("message") if isinstance(event, dict) else None
        if not isinstance(message, str):
            yield Problem(here, "log event has no string 'message'")
            continue
        try:
            value = orjson.loads(message)
        except orjson.JSONDecodeError as exc:
            yield Problem(here, f"message is not JSON: {exc}")
            continue
        yield from _classify(value, here)


def _classify(doc: Any, where: str) -> Iterator[Item]:
    if isinstance(doc, list):
        for i, element in enumerate(doc):
            yield from _classify(element, f"{where}[{i}]")
        return
    if not isinstance(doc, dict):
        yield Problem(where, f"expected a JSON object, got {type(doc).__name__}")
        return
    if "Records" in doc:
        records = doc["Records"]
        if not isinstance(records, list):
            yield Problem(where, "'Records' is not a list")
            return
        for i, rec in enumerate(records):
            if isinstance(rec, dict) and is_notification(rec):
                yield Problem(
                    f"{where}:Records[{i}]",
                    f"{rec.get('eventSource', rec.get('EventSource'))} notification, "
                    "not a CloudTrail record",
                )
            elif isinstance(rec, dict):
                yield Parsed(rec, Kind.LOG_FILE, f"{where}:Records[{i}]")
            else:
                yield Problem(f"{where}:Records[{i}]", "record is not a JSON object")
        return
    if is_digest(doc):
        yield Parsed(doc, Kind.DIGEST, where)
        return
    if "logEvents" in doc and "messageType" in doc:
        if doc["messageType"] == "DATA_MESSAGE":
            yield from _log_events(doc, where)
        return  # CONTROL_MESSAGE: a CloudWatch Logs health check, no events
    if "detail-type" in doc and "detail" in doc:
        detail = doc["detail"]
        if doc["detail-type"] in CLOUDTRAIL_DETAIL_TYPES and isinstance(detail, dict):
            kind = Kind.INSIGHT if detail.get("eventType") == "AwsCloudTrailInsight" else None
            yield Parsed(detail, kind or Kind.EVENTBRIDGE, where)
        else:
            yield Problem(
                where, f"EventBridge event of type {doc['detail-type']!r} is not CloudTrail"
            )
        return
    if is_record(doc):
        kind = Kind.INSIGHT if doc.get("eventType") == "AwsCloudTrailInsight" else Kind.RECORD
        yield Parsed(doc, kind, where)
        return
    yield Problem(where, "not a CloudTrail record, log file, EventBridge event or digest")


def iter_items(data: bytes, where: str = "<stdin>") -> Iterator[Item]:
    """Every record in ``data`` in input order, with a Problem for each part that is not one."""
    try:
        data = maybe_gunzip(data)
    except (OSError, ValueError, EOFError, zlib.error, _ISAL_ERROR) as exc:
        yield Problem(where, f"bad gzip: {exc}")
        return
    stripped = data.strip()
    if not stripped:
        return
    try:
        doc = orjson.loads(stripped)
    except orjson.JSONDecodeError:
        doc = None
    else:
        yield from _classify(doc, where)
        return
    # Not one JSON document: NDJSON (one per line), or documents one after another.
    lines: list[tuple[int, Any]] = []
    broken = False
    for lineno, line in enumerate(stripped.split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            lines.append((lineno, orjson.loads(line)))
        except orjson.JSONDecodeError:
            broken = True
            break
    if not broken:
        for lineno, value in lines:
            yield from _classify(value, f"{where}:{lineno}")
        return
    del lines
    docs = _concatenated(stripped)
    if docs is not None:
        for lineno, value in docs:
            yield from _classify(value, f"{where}:{lineno}")
        return
    for lineno, line in enumerate(stripped.split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            value = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            yield Problem(f"{where}:{lineno}", f"invalid JSON: {exc}")
            continue
        yield from _classify(value, f"{where}:{lineno}")


def _concatenated(data: bytes) -> list[tuple[int, Any]] | None:
    """JSON documents one after another (``cat a.json b.json``), each with the line it starts
    on; None when the text is not only that (then each line is judged on its own)."""
    import json

    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    decoder = json.JSONDecoder()
    out: list[tuple[int, Any]] = []
    pos, line, n = 0, 1, len(text)
    while pos < n:
        while pos < n and text[pos] in " \t\r\n":
            if text[pos] == "\n":
                line += 1
            pos += 1
        if pos >= n:
            break
        try:
            value, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError:
            return None
        out.append((line, value))
        line += text.count("\n", pos, end)
        pos = end
    return out if len(out) > 1 else None


def iter_records(data: bytes, where: str = "<stdin>") -> Iterator[Item]:
    """Like :func:`iter_items` but without digests (they are not events)."""
    for item in iter_items(data, where):
        if isinstance(item, Parsed) and item.kind is Kind.DIGEST:
            continue
        yield item
