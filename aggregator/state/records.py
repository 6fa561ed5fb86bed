"""The values the stores take and give: plain dataclasses, no SQLite."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class SourceRef:
    """Where a source object came from; enough to report and to commit progress."""

    source_id: str
    account_id: str
    region: str
    bucket: str
    prefix: str
    trail_arn: str | None = None


@dataclass(frozen=True)
class CentralObject:
    key: str
    size: int
    sha256: str
    events: int
    first_event_time: str | None
    last_event_time: str | None
    etag: str | None = None  # S3's, for If-Match on a rewrite


@dataclass
class ObjectOutcome:
    """What handling one source object produced; committed atomically."""

    source: SourceRef
    key: str
    day_prefix: str
    kind: str
    etag: str | None
    size: int
    events_in: int = 0
    duplicates: int = 0
    new_keys: Sequence[bytes] = ()
    central: CentralObject | None = None
    newest_event_time: str | None = None
    # the central object replaces an earlier version of itself: it takes a new ledger id, so
    # the forwarders send it (again)
    rewrite: bool = False


@dataclass
class QuarantineRow:
    bucket: str
    key: str
    source_id: str
    account_id: str | None
    region: str | None
    reason: str
    status: str
    attempts: int
    first_at: float
    last_at: float


@dataclass
class StatusRow:
    source_id: str
    account_id: str
    region: str
    bucket: str
    prefix: str
    last_key: str | None
    last_object_at: float | None
    newest_event_time: str | None
    objects: int
    events: int
    errors: int
    last_error: str | None
    digests: int = 0  # digest files, counted apart from the log objects above
    trail_arn: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
