"""Event keys for the persistent dedupe window. Pure functions.

Why not ``eventID`` alone: eventIDs are unique per event *in practice* for AWS-generated
records, but not by contract across accounts and regions, and public samples (the CloudTrail
user guide's ``EXAMPLE`` ids) reuse one eventID for different events. A key that collapsed
those would silently drop real events, the one thing an archive must never do. So the key is
eventID together with the fields that identify *where and when* the event was recorded:
recipientAccountId (the logging account), awsRegion, eventTime, plus eventSource and
eventName — and a digest of the event's substance (requestParameters, responseElements,
additionalEventData, errorCode). The user guide's two ``CheckMfa`` examples
share eventID, account, region, time and name and differ only in additionalEventData; the
substance digest keeps them apart. Delivery metadata (tlsDetails, eventCategory, addendum,
a shipper's ``@timestamp``) is deliberately left out, so one event delivered through two
channels (organization trail, account trail, LookupEvents) still collapses to one key.

Records without an eventID (hand-made or truncated) fall back to a hash of their canonical
JSON: two records with the same content are the same event.
"""

from __future__ import annotations

from datetime import datetime
from hashlib import blake2b
from typing import Any

import orjson

KEY_BYTES = 16
_SEP = "\x1f"
_SUBSTANCE = (
    "requestParameters",
    "responseElements",
    "additionalEventData",
    "errorCode",
)


def event_key(record: dict[str, Any]) -> bytes:
    """A 16-byte key that is equal for two deliveries of one event and differs otherwise."""
    event_id = record.get("eventID")
    if isinstance(event_id, str) and event_id:
        text = _SEP.join(
            (
                event_id,
                str(record.get("recipientAccountId") or ""),
                str(record.get("awsRegion") or ""),
                str(record.get("eventTime") or ""),
                str(record.get("eventSource") or ""),
                str(record.get("eventName") or ""),
            )
        )
        h = blake2b(text.encode("utf-8", "surrogatepass"), digest_size=KEY_BYTES)
        h.update(orjson.dumps([record.get(f) for f in _SUBSTANCE], option=orjson.OPT_SORT_KEYS))
        return h.digest()
    canonical = orjson.dumps(record, option=orjson.OPT_SORT_KEYS)
    return blake2b(b"content" + canonical, digest_size=KEY_BYTES).digest()


def key_text(key: bytes) -> str:
    """The printable form of a key (used as OpenSearch ``_id``)."""
    return key.hex()


def record_key_text(record: dict[str, Any]) -> str:
    return key_text(event_key(record))


def event_epoch(record: dict[str, Any], default: int = 0) -> int:
    """eventTime as epoch seconds (for the window); ``default`` when missing or malformed."""
    value = record.get("eventTime")
    if not isinstance(value, str):
        return default
    try:
        return int(datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp())
    except ValueError:
        return default
