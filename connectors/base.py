"""The connector contract: one destination's wire protocol behind four calls.

A connector has a ``name``, a ``default_schema`` (``ecs`` | ``ocsf`` | ``raw``), ``open()``,
``send(batch) -> outcomes`` and ``close()``. ``send`` answers *per event*, in batch order:

* :class:`Delivered`       the sink acknowledged it (a cursor may move past it)
* :class:`Retry` (reason)  transient: send it again later (busy, 429, 5xx, connection lost)
* :class:`Rejected` (reason) permanent for this event: it goes to the dead-letter store

A connector raises :class:`Fatal` when no event can ever succeed until an operator acts
(invalid token, unknown index): that connector stops, loudly; the others keep going.

The forwarder, not the connector, owns batching, backoff, the dead-letter store and the
cursor. Connectors never import boto3, ``aggregator.state``, the scheduler or each other
(``tests/connectors/test_imports.py`` holds that line).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, model_validator

Schema = Literal["ecs", "ocsf", "raw"]
SCHEMAS: tuple[Schema, ...] = ("ecs", "ocsf", "raw")


@dataclass(slots=True)
class OutEvent:
    """One normalized event on its way to a sink (read-only for connectors; not frozen only
    because a frozen dataclass costs a microsecond per event to build).

    ``id`` is the dedupe key text (``aggregator.ingest.dedupe.record_key_text``): stable across
    resends, so sinks that can (OpenSearch ``_id``) overwrite instead of duplicating; empty
    for a connector that declares it does not use it (:attr:`Connector.uses_event_id`).
    ``pointer`` names where the original record lives in the central archive
    (``s3://bucket/key#index``), for operators and for truncation markers.
    """

    id: str
    doc: dict[str, Any] | None  # None: only ``data`` was produced (use ``document()``)
    time: float  # event time, epoch seconds (0.0 when the record had none)
    account_id: str
    region: str
    pointer: str
    event_name: str = ""
    data: bytes = b""  # the document as compact JSON when the forwarder already serialized it
    body: bytes = b""  # the record inside an envelope ``doc``, serialized by the forwarder

    def json(self) -> bytes:
        """The document as compact UTF-8 JSON (serialized once by the forwarder)."""
        return self.data or orjson.dumps(self.doc)

    def document(self) -> dict[str, Any]:
        """The document as a dict (parsed from ``data`` when only the bytes were kept)."""
        if self.doc is not None:
            return self.doc
        doc: dict[str, Any] = orjson.loads(self.data)
        return doc

    def record_json(self) -> bytes:
        """The document for sinks without an envelope: the document, or the record inside a
        Splunk-style envelope."""
        if self.body:
            return self.body
        inner = envelope_event(self.doc) if self.doc is not None else None
        return self.json() if inner is None else orjson.dumps(inner)

    def size(self) -> int:
        """Serialized bytes (what batching counts)."""
        return len(self.body or self.data) or len(self.json())


HEC_ENVELOPE_KEYS = frozenset({"time", "host", "source", "sourcetype", "index", "event", "fields"})


def envelope_event(doc: dict[str, Any]) -> dict[str, Any] | None:
    """The record inside a Splunk-style envelope (``aggregator.normalize``'s ``raw`` schema:
    ``{"time", "sourcetype", "source", "event", "fields"}``), or None for any other document.
    Sinks other than Splunk send the record itself."""
    inner = doc.get("event")
    if "sourcetype" in doc and isinstance(inner, dict) and doc.keys() <= HEC_ENVELOPE_KEYS:
        return inner
    return None


@dataclass(frozen=True, slots=True)
class Delivered:
    """The sink acknowledged the event."""


@dataclass(frozen=True, slots=True)
class Retry:
    """Transient failure: send again later."""

    reason: str


@dataclass(frozen=True, slots=True)
class Rejected:
    """Permanent failure for this event: dead-letter it with the reason."""

    reason: str


Outcome = Delivered | Retry | Rejected
DELIVERED = Delivered()


class Fatal(Exception):
    """No event can succeed until an operator acts (bad credentials, missing index...)."""


class EventCondition(BaseModel):
    """One condition over an event's fields; every field given must match (AND). Strings are
    shell-style patterns (``Describe*``, ``*.amazonaws.com``), a list matches when any item
    does. ``ou`` matches the account's OU path (``Root/Prod/*``) or one of its OU ids
    (``ou-ab12-*``); ``tag`` matches an account tag as ``key=value`` (``env=prod``,
    ``env=*``) or a bare key that must be present."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    event_source: str | list[str] | None = Field(
        default=None, description="CloudTrail eventSource, e.g. ec2.amazonaws.com."
    )
    event_name: str | list[str] | None = Field(
        default=None, description="CloudTrail eventName, e.g. Describe*."
    )
    read_only: bool | None = Field(default=None, description="CloudTrail readOnly.")
    account_id: str | list[str] | None = Field(
        default=None, description="recipientAccountId (the account that logged the event)."
    )
    region: str | list[str] | None = Field(default=None, description="CloudTrail awsRegion.")
    event_type: str | list[str] | None = Field(
        default=None, description="CloudTrail eventType, e.g. AwsApiCall, AwsServiceEvent."
    )
    error_code: str | list[str] | None = Field(
        default=None, description="CloudTrail errorCode ('' matches events without one)."
    )
    ou: str | list[str] | None = Field(
        default=None, description="The account's OU path (Root/Prod/*) or an OU id, from discovery."
    )
    tag: str | list[str] | None = Field(
        default=None, description="An account tag key=value (or a key), from discovery."
    )

    @model_validator(mode="after")
    def _not_empty(self) -> EventCondition:
        if all(getattr(self, name) is None for name in type(self).model_fields):
            raise ValueError("a condition needs at least one field")
        return self


class ConnectorSettings(BaseModel):
    """Fields every connector entry in ``forward.connectors`` has."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    name: str = Field(
        pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$",
        description="Unique connector name: the cursor and the dead letters are kept under it.",
    )
    enabled: bool = True
    start_from: Literal["oldest", "newest"] = Field(
        default="oldest",
        description="Where a new connector's cursor starts: the oldest central object "
        "(forward all history) or after the newest (only what comes next).",
    )
    schema_: Schema | None = Field(
        default=None,
        alias="schema",
        description="Output schema; null = the connector's default (OpenSearch: ecs, "
        "Splunk HEC: raw, syslog: ocsf).",
    )
    include: list[EventCondition] = Field(
        default_factory=list,
        description="Forward only events matching one of these conditions (empty = all).",
    )
    exclude: list[EventCondition] = Field(
        default_factory=list,
        description="Never forward events matching one of these conditions (the archive "
        "keeps them; they count as handled).",
    )
    block_ingest_when_fatal: bool | None = Field(
        default=None,
        description="While this connector is stopped by a fatal error, a full backlog still "
        "pauses collection (true) or not (false); null = forward.block_ingest_when_fatal.",
    )


class Connector(ABC):
    """Base class of every connector. Subclasses set ``type_name``, ``default_schema`` and
    ``settings_model`` and implement the three coroutines."""

    type_name: ClassVar[str]
    default_schema: ClassVar[Schema]
    settings_model: ClassVar[type[ConnectorSettings]]

    def __init__(self, settings: ConnectorSettings) -> None:
        self.settings = settings
        self.name = settings.name

    @property
    def schema(self) -> Schema:
        return self.settings.schema_ or self.default_schema

    uses_event_id: ClassVar[bool] = True
    """False when the sink never sees ``OutEvent.id`` (the forwarder then skips computing it)."""

    @property
    def max_in_flight(self) -> int:
        """How many ``send`` calls the forwarder may run at once (each on its own batch;
        commits stay in order). 1 unless the connector is safe to call concurrently."""
        return 1

    @abstractmethod
    async def open(self) -> None:
        """Connect, check credentials, install what the sink needs (templates, policies)."""

    @abstractmethod
    async def send(self, batch: Sequence[OutEvent]) -> list[Outcome]:
        """Send a batch; one outcome per event, in order. Raises :class:`Fatal` only."""

    @abstractmethod
    async def close(self) -> None:
        """Release connections. Safe to call twice and after a failed ``open``."""

    async def __aenter__(self) -> Connector:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def all_retry(n: int, reason: str) -> list[Outcome]:
    r = Retry(reason)
    return [r] * n


def all_rejected(n: int, reason: str) -> list[Outcome]:
    r = Rejected(reason)
    return [r] * n
