"""Event keys for the persistent dedupe window. Pure functions.

Why not ``eventID`` alone: eventIDs are unique per event *in practice* for AWS-generated
records, but not by contract, and public samples reuse one eventID for different events: the
CloudTrail user guide's two ``CheckMfa`` examples share eventID, account, region, time and name
and differ only in additionalEventData; Panther's test cases keep an eventID while changing
userIdentity or errorMessage. A key that collapsed those would silently drop real events, the
one thing an archive must never do.

So the key is made of four parts, all taken from the record itself:

* the event's hour (4 bytes, see :func:`event_hour`),
* a 2-byte tag of ``recipientAccountId`` and ``awsRegion`` (the logging account and region),
* the event's minute within the hour (1 byte),
* 9 bytes of SHA-256 over the whole record — eventID, account, region, eventTime,
  eventSource, eventName and everything the event says — *minus delivery metadata* that can
  differ between two deliveries of one event: ``eventVersion`` and ``eventCategory`` (format
  revisions), ``tlsDetails``, ``addendum`` (late delivery notes) and Logstash's
  ``@timestamp``/``@version``. The record is serialized with sorted keys, so key order does
  not matter.

Two copies of one event delivered by an organization trail and an account trail (or fetched
again through LookupEvents) collapse to one key; two different events never do: the digest
covers everything else, and AWS's random eventID (unknown before the event exists) is part of
it, so nobody can craft a second event whose key matches a first one.

Why the prefix: the SQLite window is a B-tree ordered by key. A log file holds minutes of one
account and region, so its thousand keys share a few (hour, tag, minute) prefixes and land in
a few adjacent pages; with the hour alone they scattered over the hour's whole range, and every
commit rewrote hundreds of pages (measured: 2.3 → 1.4 µs per key for lookup, insert and commit
together; see ARCHITECTURE.md). Pruning drops whole hours by a key range. 72 bits of digest
within one account, region and minute leave a chance of a collision below 1e-10 even at a
million events per minute.
"""

from __future__ import annotations

from datetime import UTC, datetime
from hashlib import blake2b, sha256
from typing import Any

import orjson

KEY_BYTES = 16
PREFIX_BYTES = 7  # hour (4) + account/region tag (2) + minute (1)
DELIVERY_METADATA = (
    "eventVersion",
    "eventCategory",
    "tlsDetails",
    "addendum",
    "@timestamp",
    "@version",
)
_SORTED = orjson.OPT_SORT_KEYS
_META = frozenset(DELIVERY_METADATA)
_RARE_META = frozenset(DELIVERY_METADATA[3:])
_ABSENT = object()
_DIGEST_BYTES = KEY_BYTES - PREFIX_BYTES
_NO_HOUR = b"\0\0\0\0"
_HOURS: dict[str, bytes] = {}
_PREFIXES: dict[tuple[str | None, str | None, str | None], bytes] = {}
_MEMO_LIMIT = 100_000


def split_record(record: dict[str, Any]) -> tuple[bytes, bytes, bytes]:
    """The event key, the record without delivery metadata serialized with sorted keys (what
    the key digests), and the metadata serialized (``b""`` when there is none): one
    serialization for both key and bytes (the ingest hot path). The metadata items are removed
    from ``record`` (callers that still need the record whole pass a copy).
    :func:`join_record` puts the two halves together."""
    # Unrolled for the three fields most records carry (a comprehension over all six cost
    # a quarter of this function); the order is DELIVERY_METADATA's.
    pop = record.pop
    meta = {}
    if (v := pop("eventVersion", _ABSENT)) is not _ABSENT:
        meta["eventVersion"] = v
    if (v := pop("eventCategory", _ABSENT)) is not _ABSENT:
        meta["eventCategory"] = v
    if (v := pop("tlsDetails", _ABSENT)) is not _ABSENT:
        meta["tlsDetails"] = v
    if not _RARE_META.isdisjoint(record):
        for k in DELIVERY_METADATA[3:]:
            if k in record:
                meta[k] = pop(k)
    content = orjson.dumps(record, option=_SORTED)
    key = key_prefix(record) + sha256(content).digest()[:_DIGEST_BYTES]
    return key, content, orjson.dumps(meta) if meta else b""


def join_record(content: bytes, head: bytes) -> bytes:
    """One record's JSON from :func:`split_record`'s halves: sorted keys, delivery metadata
    first — the same values as delivered, in a canonical order."""
    if not head:
        return content
    return head if content == b"{}" else head[:-1] + b"," + content[1:]


def joined_size(content: bytes, head: bytes) -> int:
    """``len(join_record(content, head))`` without joining."""
    if not head:
        return len(content)
    return len(head) if content == b"{}" else len(head) + len(content) - 1


def key_and_bytes(record: dict[str, Any]) -> tuple[bytes, bytes]:
    """The event key and the record serialized (:func:`split_record`, joined)."""
    key, content, head = split_record(record)
    return key, join_record(content, head)


def key_prefix(record: dict[str, Any]) -> bytes:
    """The first 7 key bytes: the event hour, a 2-byte tag of recipientAccountId and awsRegion,
    the minute. Memoized: an object's events share one account, one region and a few minutes."""
    get = record.get
    t, a, r = get("eventTime"), get("recipientAccountId"), get("awsRegion")
    if type(t) is str and type(a) is str and type(r) is str:
        memo: tuple[str | None, str | None, str | None] = (t[:16], a, r)
    else:
        memo = (
            t[:16] if type(t) is str else None,
            a if type(a) is str else None,
            r if type(r) is str else None,
        )
    got = _PREFIXES.get(memo)
    if got is None:
        hour = event_hour(memo[0])
        tag = blake2b(f"{memo[1] or ''}\x1f{memo[2] or ''}".encode(), digest_size=2).digest()
        minute = memo[0][14:16] if memo[0] and hour != _NO_HOUR else ""
        got = hour + tag + bytes((int(minute) % 60 if minute.isdecimal() else 0,))
        if len(_PREFIXES) > _MEMO_LIMIT:
            _PREFIXES.clear()
        _PREFIXES[memo] = got
    return got


def event_hour(event_time: Any) -> bytes:
    """The event's UTC hour as 4 big-endian bytes of the integer YYYYMMDDHH (zeros when the
    time is missing or malformed). Keys start with it, so the window is pruned by a key range
    with no second index. Memoized."""
    if not isinstance(event_time, str):
        return _NO_HOUR
    head = event_time[:13]
    got = _HOURS.get(head)
    if got is None:
        digits = head[0:4] + head[5:7] + head[8:10] + head[11:13]
        got = (
            int(digits).to_bytes(4, "big") if len(digits) == 10 and digits.isdecimal() else _NO_HOUR
        )
        if len(_HOURS) > _MEMO_LIMIT:
            _HOURS.clear()
        _HOURS[head] = got
    return got


def hour_floor_key(epoch: float) -> bytes:
    """The smallest key of the hour containing ``epoch`` (for pruning: keys below are older)."""
    return int(datetime.fromtimestamp(epoch, UTC).strftime("%Y%m%d%H")).to_bytes(4, "big")


def event_key(record: dict[str, Any]) -> bytes:
    """A 16-byte key that is equal for two deliveries of one event and differs otherwise.
    The same key :func:`key_and_bytes` gives, without touching ``record``."""
    content = (
        record if _META.isdisjoint(record) else {k: v for k, v in record.items() if k not in _META}
    )
    digest = sha256(orjson.dumps(content, option=_SORTED)).digest()
    return key_prefix(record) + digest[:_DIGEST_BYTES]


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
