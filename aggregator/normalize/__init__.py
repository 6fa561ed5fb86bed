"""One normalizer, three schemas: ECS 8.x, OCSF 1.1.0 and raw CloudTrail.

Pure code (no I/O; the caller passes ``now``). Use :class:`Normalizer` built from the
``normalize:`` config section; :func:`normalize` uses a default one (built-in redaction rules,
default size cap).

Per record: redaction (by CloudTrail field path) → schema mapping → enrichment (from the
:class:`EventContext`) → oversize policy (above ``max_event_bytes`` the output is a size-capped
projection carrying a pointer to the full record in the central archive; never dropped).

Outputs may share unchanged sub-objects with the input record, and memoized ones with other
outputs: treat both as read-only.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from datetime import datetime
from typing import Any, Literal, cast, get_args

import orjson

from aggregator.config.normalize import NormalizeSettings
from aggregator.normalize._util import Flattener, epoch_ms, iso_z
from aggregator.normalize.context import EventContext
from aggregator.normalize.derive import derive
from aggregator.normalize.ecs import POLYMORPHIC, to_ecs
from aggregator.normalize.geoip import GeoIP
from aggregator.normalize.ocsf import to_ocsf
from aggregator.normalize.raw import to_raw
from aggregator.normalize.redact import DEFAULT_RULES, Redactor

Schema = Literal["ecs", "ocsf", "raw"]
SCHEMAS: tuple[str, ...] = get_args(Schema)

__all__ = [
    "SCHEMAS",
    "EventContext",
    "Normalizer",
    "Redactor",
    "Schema",
    "normalize",
    "redactor_for",
    "serialized_size",
    "to_json",
]

_dumps = orjson.dumps
_MAX_STR = 1024
_MAX_LIST = 20
_MAX_NEST = 16
_ECS_KEEP: tuple[str, ...] = ("@timestamp", "ecs", "event", "cloud", "source", "user")
_OCSF_KEEP: tuple[str, ...] = (
    "class_uid", "class_name", "category_uid", "category_name", "activity_id", "activity_name",
    "type_uid", "type_name", "severity_id", "severity", "metadata", "time", "cloud", "api",
    "status", "status_id", "actor", "src_endpoint", "user", "service", "dst_endpoint",
)  # fmt: skip
# What OCSF 1.1.0 requires of the three classes (and Authentication's service/dst_endpoint):
# kept, cut, even by the last-resort projection.
_OCSF_REQUIRED: tuple[str, ...] = (
    "class_uid", "category_uid", "activity_id", "type_uid", "severity_id", "time", "cloud",
    "actor", "src_endpoint", "user", "service", "dst_endpoint",
)  # fmt: skip
_RAW_KEEP: tuple[str, ...] = (
    "eventVersion", "eventTime", "eventSource", "eventName", "awsRegion", "eventID",
    "eventType", "recipientAccountId", "errorCode",
)  # fmt: skip


def to_json(doc: Any) -> bytes:
    """Compact JSON bytes (UTF-8); the stdlib encoder only for integers beyond 64 bits."""
    try:
        return _dumps(doc, default=str)
    except TypeError:
        return json.dumps(doc, default=str, separators=(",", ":"), ensure_ascii=False).encode()


def serialized_size(doc: Any) -> int:
    """Bytes of ``doc`` as compact JSON (``sys.maxsize`` when it is nested beyond what can be
    encoded, so the size policy replaces it by a projection)."""
    try:
        return len(to_json(doc))
    except (RecursionError, ValueError):
        return sys.maxsize


def _shrink(value: Any, depth: int = 0) -> Any:
    """Strings cut to 1 KiB, lists to 20 items, nesting to 16 levels, recursively."""
    if isinstance(value, str):
        return value if len(value) <= _MAX_STR else value[:_MAX_STR]
    if isinstance(value, dict | list) and depth >= _MAX_NEST:
        return "[cut]"
    if isinstance(value, dict):
        return {k: _shrink(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [_shrink(v, depth + 1) for v in value[:_MAX_LIST]]
    return value


def redactor_for(settings: NormalizeSettings | None = None) -> Redactor:
    """The redaction rules of the ``normalize:`` section (built-in rules unless switched off,
    plus the configured ones): what every output of ctagg applies, events and alerts alike."""
    red = (settings or NormalizeSettings()).redaction
    rules: list[tuple[str, str]] = list(DEFAULT_RULES) if red.defaults else []
    rules += [(r.path, r.action) for r in red.rules]
    key = red.hmac_key.get_secret_value().encode() if red.hmac_key is not None else None
    return Redactor(rules, mask=red.mask, hmac_key=key)


class Normalizer:
    """Redaction, mapping, enrichment and the oversize policy, configured once."""

    def __init__(self, settings: NormalizeSettings | None = None) -> None:
        s = settings or NormalizeSettings()
        self.settings = s
        self.redactor = redactor_for(s)
        self._redact = self.redactor.apply
        self.flattener = Flattener(
            max_fields=s.flatten_max_fields, max_chars=s.flatten_max_bytes, max_value_chars=1024
        )
        self.max_event_bytes = s.max_event_bytes
        self.parse_user_agent = s.parse_user_agent
        geo = s.geoip
        # The user's MaxMind-format files, opened once (memory-mapped); optional.
        self.geoip = GeoIP(geo.city_db, geo.asn_db) if geo.city_db or geo.asn_db else None
        en = s.enrichment
        self._enrich_all = en.enabled and all(
            (en.account_name, en.ou_path, en.account_tags, en.organization_id)
        )
        self._last_now: datetime | None = None
        self._now_iso = ""
        self._now_ms = 0
        self._last_ctx: EventContext | None = None
        self._last_ctx_out: EventContext | None = None

    # ------------------------------------------------------------------ helpers

    def _context(self, ctx: EventContext | None) -> EventContext | None:
        if ctx is None or self._enrich_all:
            return ctx
        if ctx is self._last_ctx:
            return self._last_ctx_out
        en = self.settings.enrichment
        out = dataclasses.replace(
            ctx,
            account_name=ctx.account_name if en.enabled and en.account_name else "",
            ou_path=ctx.ou_path if en.enabled and en.ou_path else "",
            ou_ids=ctx.ou_ids if en.enabled and en.ou_path else (),
            account_tags=ctx.account_tags if en.enabled and en.account_tags else {},
            organization_id=(ctx.organization_id if en.enabled and en.organization_id else None),
        )
        self._last_ctx, self._last_ctx_out = ctx, out
        return out

    # ------------------------------------------------------------------ API

    def _map(
        self, record: dict[str, Any], schema: str, now: datetime, context: EventContext | None
    ) -> tuple[dict[str, Any], dict[str, Any], EventContext | None]:
        """(output, redacted record, effective context) — mapping without the size policy."""
        if not isinstance(record, dict):
            raise TypeError(f"record must be a JSON object, got {type(record).__name__}")
        if now is not self._last_now:
            self._last_now = now
            self._now_iso = iso_z(now)
            self._now_ms = epoch_ms(now)
        rec = self._redact(record)
        ctx = context if context is None or self._enrich_all else self._context(context)
        if schema == "ecs":
            out = to_ecs(
                rec,
                now_iso=self._now_iso,
                context=ctx,
                flattener=self.flattener,
                geoip=self.geoip,
                user_agents=self.parse_user_agent,
            )
        elif schema == "ocsf":
            out = to_ocsf(rec, now_ms=self._now_ms, context=ctx)
        elif schema == "raw":
            out = to_raw(rec, now_ms=self._now_ms, now_iso=self._now_iso, context=ctx)
        else:
            raise ValueError(f"unknown schema {schema!r}; expected one of {', '.join(SCHEMAS)}")
        # Detection's derived fields (docs/detect.md), when they say something: no "public: false".
        derived = {k: v for k, v in (derive(record) or {}).items() if v is not False}
        if derived and schema == "ecs":
            out["ctagg"] = {**out.get("ctagg", {}), **derived}
        elif derived and schema == "ocsf":
            unmapped = out.get("unmapped", {})
            out["unmapped"] = {**unmapped, "ctagg": {**unmapped.get("ctagg", {}), **derived}}
        return out, rec, ctx

    def normalize(
        self,
        record: dict[str, Any],
        schema: Schema,
        *,
        now: datetime,
        context: EventContext | None = None,
    ) -> dict[str, Any]:
        """One CloudTrail record → one event in ``schema``. Never drops the event.

        Pass the same ``now`` object for a batch: its text forms are computed once per object.
        """
        out, rec, ctx = self._map(record, schema, now, context)
        try:
            size = len(_dumps(out, default=str))
        except TypeError:  # what orjson cannot encode (big integers, deep nesting)
            size = serialized_size(out)
        if size > self.max_event_bytes:
            out = self._capped(out, rec, schema, size, ctx)
        return out

    def encode(
        self,
        record: dict[str, Any],
        schema: Schema,
        *,
        now: datetime,
        context: EventContext | None = None,
    ) -> bytes:
        """Like :meth:`normalize`, serialized to compact JSON bytes (what a sink sends). The
        size policy is checked on these bytes, so nothing is serialized twice."""
        out, rec, ctx = self._map(record, schema, now, context)
        try:
            data = _dumps(out, default=str)
        except TypeError:  # what orjson cannot encode: the stdlib encoder, else a projection
            try:
                data = to_json(out)
            except (RecursionError, ValueError):  # nested beyond what can be encoded
                return to_json(self._capped(out, rec, schema, sys.maxsize, ctx))
        if len(data) > self.max_event_bytes:
            data = to_json(self._capped(out, rec, schema, len(data), ctx))
        return data

    def _capped(
        self,
        out: dict[str, Any],
        record: dict[str, Any],
        schema: str,
        size: int,
        ctx: EventContext | None,
    ) -> dict[str, Any]:
        out = self._oversize(out, record, schema, size, ctx)
        if serialized_size(out) > self.max_event_bytes:
            out = _last_resort(out, schema)
        return out

    def _oversize(
        self,
        out: dict[str, Any],
        record: dict[str, Any],
        schema: str,
        size: int,
        ctx: EventContext | None,
    ) -> dict[str, Any]:
        """A size-capped projection of ``out`` plus a pointer to the full archived record."""
        pointer = {
            "bucket": ctx.archive_bucket if ctx is not None else None,
            "key": ctx.archive_key if ctx is not None else None,
            "event_id": record.get("eventID"),
        }
        original = None if size == sys.maxsize else size  # None: nested too deeply to encode
        marker = _shrink({"truncated": True, "original_bytes": original, "archive": pointer})
        if schema == "ecs":
            ct = out.get("aws", {}).get("cloudtrail", {})
            for name in (*POLYMORPHIC.values(), "unmapped", "flattened", "flattened_truncated"):
                ct.pop(name, None)
            proj: dict[str, Any] = _shrink(out)
            proj["ctagg"] = marker
            if serialized_size(proj) > self.max_event_bytes:
                proj = {k: _shrink(out[k]) for k in _ECS_KEEP if k in out}
                proj["ctagg"] = marker
            return proj
        if schema == "ocsf":
            out.pop("unmapped", None)
            proj = _shrink(out)
            proj["unmapped"] = {"ctagg": marker}
            if serialized_size(proj) > self.max_event_bytes:
                proj = {k: _shrink(out[k]) for k in _OCSF_KEEP if k in out}
                proj["unmapped"] = {"ctagg": marker}
            return proj
        # raw: the record without its bulky polymorphic parts; the pointer in indexed fields.
        event = {k: v for k, v in record.items() if k not in POLYMORPHIC}
        proj = dict(out)
        proj["event"] = _shrink(event)
        fields = dict(out.get("fields", {}))
        fields["ctagg_truncated"] = "true"
        fields["ctagg_original_bytes"] = str(size)
        fields["ctagg_archive_bucket"] = str(pointer["bucket"] or "")
        fields["ctagg_archive_key"] = str(pointer["key"] or "")
        fields["ctagg_archive_event_id"] = str(pointer["event_id"] or "")
        proj["fields"] = fields
        if serialized_size(proj) > self.max_event_bytes:
            proj["event"] = {k: _shrink(record[k]) for k in _RAW_KEEP if k in record}
        return proj


def _last_resort(proj: dict[str, Any], schema: str) -> dict[str, Any]:
    """Identifiers and the pointer only, each cut to 256 characters (a projection of a record
    with absurd keys or values can still exceed the cap)."""

    def cut(value: Any, depth: int = 0) -> Any:
        if isinstance(value, str):
            return value[:256]
        if isinstance(value, dict | list) and depth >= 4:
            return "[cut]"
        if isinstance(value, dict):
            return {str(k)[:64]: cut(v, depth + 1) for k, v in list(value.items())[:16]}
        if isinstance(value, list):
            return [cut(v, depth + 1) for v in value[:4]]
        return value

    if schema == "ecs":
        event = proj.get("event", {})
        keep = {k: event[k] for k in ("id", "action", "provider", "kind") if k in event}
        return cast(
            dict[str, Any],
            cut({"@timestamp": proj.get("@timestamp"), "event": keep, "ctagg": proj["ctagg"]}),
        )
    if schema == "ocsf":
        head: dict[str, Any] = {k: proj[k] for k in _OCSF_REQUIRED if k in proj}
        meta = proj.get("metadata", {})
        head["metadata"] = {
            k: meta[k] for k in ("uid", "version", "product", "profiles") if k in meta
        }
        api = proj.get("api")
        if isinstance(api, dict) and "operation" in api:
            head["api"] = {"operation": api["operation"]}
        head["unmapped"] = proj["unmapped"]
        return cast(dict[str, Any], cut(head))
    event = proj.get("event", {})
    keep = {k: event[k] for k in ("eventID", "eventName", "eventSource") if k in event}
    rest = {k: v for k, v in proj.items() if k != "event"}
    return cast(dict[str, Any], cut({**rest, "event": keep}))


_DEFAULT: Normalizer | None = None


def normalize(
    record: dict[str, Any],
    schema: Schema,
    *,
    now: datetime,
    context: EventContext | None = None,
) -> dict[str, Any]:
    """Normalize with the default settings (built-in redaction rules, default size cap)."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = Normalizer()
    return _DEFAULT.normalize(record, schema, now=now, context=context)
