"""What a lane hands a connector: each archived record normalized to the connector's schema
(with the configured redaction and enrichment) and wrapped as an :class:`OutEvent`."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from aggregator.config import Settings
from aggregator.config.normalize import NormalizeSettings
from aggregator.ingest.dedupe import record_key_text
from aggregator.normalize import EventContext, Normalizer
from connectors.base import OutEvent, Schema

if TYPE_CHECKING:
    from aggregator.aws.inventory import Account


# (record, schema, central key) -> the document, or the document already serialized (bytes)
NormalizeFn = Callable[[dict[str, Any], Schema, str], dict[str, Any] | bytes]


AccountLookup = Callable[[str], "Account | None"]
_CENTRAL_ACCOUNT = re.compile(r"AWSLogs/(\d{12})/")


def default_normalizer(
    bucket: str = "",
    settings: NormalizeSettings | None = None,
    *,
    accounts: AccountLookup | None = None,
    organization_id: Callable[[], str | None] | None = None,
) -> NormalizeFn:
    """The forwarding side of ``aggregator.normalize``: redaction and enrichment from config.

    ``ecs`` and ``ocsf`` come back as bytes from ``Normalizer.encode`` (it serializes to apply
    its size policy; serializing again would cost as much as mapping), and ``raw`` as the
    envelope dict (sinks unwrap it). ``now`` (a datetime, reused for a second so its text forms
    are cached) and the ``EventContext`` are kept per second / per central object. The context
    names the archived object and, through ``accounts`` (discovery's view, looked up by the
    account in the central key), the account's name, OU path and tags.
    """
    normalizer = Normalizer(settings)
    encode, as_dict = normalizer.encode, normalizer.normalize
    memo: dict[str, Any] = {"sec": -1, "now": None, "key": None, "ctx": None}

    def context(central_key: str) -> EventContext:
        m = _CENTRAL_ACCOUNT.search(central_key)
        account = accounts(m.group(1)) if (accounts is not None and m) else None
        return EventContext.from_account(
            account,
            organization_id=organization_id() if organization_id else None,
            archive_bucket=bucket or None,
            archive_key=central_key,
        )

    def adapter(record: dict[str, Any], schema: Schema, central_key: str) -> dict[str, Any] | bytes:
        sec = int(time.time())
        if sec != memo["sec"]:
            memo["sec"], memo["now"] = sec, datetime.fromtimestamp(sec, UTC)
        if central_key != memo["key"]:
            memo["key"], memo["ctx"] = central_key, context(central_key)
        fn = as_dict if schema == "raw" else encode
        out: dict[str, Any] | bytes = fn(record, schema, now=memo["now"], context=memo["ctx"])
        return out

    return adapter


def normalizer_for(
    settings: Settings,
    *,
    accounts: AccountLookup | None = None,
    organization_id: Callable[[], str | None] | None = None,
) -> NormalizeFn:
    """The normalizer of a config: the one every path to a sink uses (the daemon's lanes,
    ``ctagg replay``, dead-letter retries), so redaction, enrichment and schema are the same
    whichever path sent an event."""
    return default_normalizer(
        settings.archive.bucket,
        settings.normalize,
        accounts=accounts,
        organization_id=organization_id,
    )


def account_of_record(accounts: AccountLookup | None) -> Callable[[dict[str, Any]], Account | None]:
    """The account of a record (``recipientAccountId``) through ``accounts``, for filters."""

    def lookup(record: dict[str, Any]) -> Account | None:
        if accounts is None:
            return None
        account_id = record.get("recipientAccountId")
        return accounts(account_id) if isinstance(account_id, str) else None

    return lookup


def to_out_event(
    record: dict[str, Any],
    doc: dict[str, Any] | None,
    bucket: str,
    central_key: str,
    index: int,
    *,
    data: bytes = b"",
    body: bytes = b"",
    with_id: bool = True,
) -> OutEvent:
    """The OutEvent of a normalized record; ``with_id=False`` skips the dedupe key (about
    4 µs an event) for a connector that never sends it."""
    account = record.get("recipientAccountId")
    region = record.get("awsRegion")
    name = record.get("eventName")
    return OutEvent(
        record_key_text(record) if with_id else "",
        doc,
        event_time(record),
        account if type(account) is str else str(account or ""),
        region if type(region) is str else str(region or ""),
        f"s3://{bucket}/{central_key}#{index}",
        name if type(name) is str else str(name or ""),
        data,
        body,
    )


_TIMES: dict[str, float] = {}


def event_time(record: dict[str, Any]) -> float:
    """eventTime as epoch seconds (0.0 when missing or malformed); memoized, since the
    events of one object share few distinct seconds."""
    value = record.get("eventTime")
    if not isinstance(value, str):
        return 0.0
    t = _TIMES.get(value)
    if t is None:
        try:
            t = datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError:
            t = 0.0
        if len(_TIMES) > 65536:
            _TIMES.clear()
        _TIMES[value] = t
    return t
