"""OpenSearch's documented indexing rules for an index made from a template, without a server:
field types, ``ignore_malformed``, ``dynamic`` (true/false/strict), dynamic templates and the
``index.mapping.total_fields.limit``; an object with ``enabled: false`` takes any value.

What a real OpenSearch rejects with ``mapper_parsing_exception`` / ``illegal_argument_exception``
is rejected here: an object where a value is mapped (and the reverse), a malformed date, IP,
number or boolean in a field that does not ignore malformed values, a new field past the field
limit (objects and multi-fields count; a ``flat_object`` counts once, whatever its keys).
Dynamic mapping updates persist across documents, as in a real index.
"""

from __future__ import annotations

import copy
import ipaddress
import re
from datetime import datetime
from typing import Any

# strict_date_optional_time: a date, optionally a time (with fraction) and a zone.
_ISO = re.compile(r"^\d{4}-\d{2}-\d{2}(T\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?(Z|[+-]\d{2}:?\d{2})?)?$")


def _date_ok(value: Any, fmt: str | None) -> bool:
    for f in (fmt or "strict_date_optional_time||epoch_millis").split("||"):
        if f == "epoch_millis":
            if isinstance(value, int) and not isinstance(value, bool):
                return True
            if isinstance(value, str) and value.isdigit():
                return True
        elif f == "strict_date_optional_time" and isinstance(value, str) and _ISO.match(value):
            try:
                datetime.fromisoformat(value[:10])
            except ValueError:
                continue
            return True
    return False


def count_fields(mapping: dict[str, Any]) -> int:
    n = 0
    for m in (mapping.get("properties") or {}).values():
        n += 1 + len(m.get("fields") or {})
        if m.get("type", "object") == "object":
            n += count_fields(m)
    return n


class Index:
    """One index: its mappings (mutated by dynamic updates) and the field limit."""

    def __init__(self, mappings: dict[str, Any], limit: int) -> None:
        self.mappings = copy.deepcopy(mappings)
        self.limit = limit
        self.fields = count_fields(self.mappings)
        self.templates = self.mappings.get("dynamic_templates", [])

    def index(self, doc: Any) -> str | None:
        """None when the document is indexed, else the reason OpenSearch would give."""
        if not isinstance(doc, dict):
            return "mapper_parsing_exception: not an object"
        return self._object(doc, self.mappings, "", self.mappings.get("dynamic", True))

    # ------------------------------------------------------------------ internals

    def _new_field(self, value: Any) -> dict[str, Any]:
        if isinstance(value, dict):
            return {"properties": {}}
        kind = (
            "boolean"
            if isinstance(value, bool)
            else "long"
            if isinstance(value, int)
            else "double"
            if isinstance(value, float)
            else "string"
        )
        for t in self.templates:
            ((_, spec),) = t.items()
            if spec.get("match_mapping_type") in (kind, "*"):
                return copy.deepcopy(spec["mapping"])
        return {"string": {"type": "text"}, "long": {"type": "long"}, "double": {"type": "float"},
                "boolean": {"type": "boolean"}}[kind]  # fmt: skip

    def _object(
        self, obj: dict[str, Any], mapping: dict[str, Any], prefix: str, dynamic: Any
    ) -> str | None:
        props = mapping.setdefault("properties", {})
        for key, value in obj.items():
            path = prefix + key
            if value is None or value == []:
                continue
            m = props.get(key)
            if m is None:
                if dynamic in (False, "false"):
                    continue
                if dynamic == "strict":
                    return f"strict_dynamic_mapping_exception: [{path}] not allowed"
                first = next(
                    (v for v in (value if isinstance(value, list) else [value]) if v is not None),
                    None,
                )
                if first is None:
                    continue
                m = self._new_field(first)
                added = 1 + len(m.get("fields") or {})
                if self.fields + added > self.limit:
                    return (
                        f"illegal_argument_exception: Limit of total fields [{self.limit}] "
                        "has been exceeded"
                    )
                self.fields += added
                props[key] = m
            err = self._value(value, m, path, m.get("dynamic", dynamic))
            if err:
                return err
        return None

    def _value(self, value: Any, m: dict[str, Any], path: str, dynamic: Any) -> str | None:
        t = m.get("type", "object")
        items = value if isinstance(value, list) else [value]
        for v in items:
            if v is None:
                continue
            if isinstance(v, list):
                err = self._value(v, m, path, dynamic)
                if err:
                    return err
                continue
            if m.get("enabled") is False:  # stored in _source, never parsed: any value
                continue
            if t == "flat_object":
                if not isinstance(v, dict):
                    return f"mapper_parsing_exception: [{path}] of type [flat_object] got a value"
                continue
            if t in ("object", "nested"):
                if not isinstance(v, dict):
                    return f"mapper_parsing_exception: object mapping for [{path}] got a value"
                err = self._object(v, m, path + ".", dynamic)
                if err:
                    return err
                continue
            if t == "geo_point":
                if not (isinstance(v, dict) and {"lat", "lon"} <= set(v)):
                    return f"mapper_parsing_exception: [{path}] is not a geo_point: {v!r}"
                continue
            if isinstance(v, dict):
                return f"mapper_parsing_exception: failed to parse field [{path}] of type [{t}]"
            if not self._scalar_ok(v, t, m) and not m.get("ignore_malformed"):
                why = f"failed to parse field [{path}] of type [{t}]: {v!r}"
                return f"mapper_parsing_exception: {why[:300]}"
        return None

    @staticmethod
    def _scalar_ok(v: Any, t: str, m: dict[str, Any]) -> bool:
        if t in ("keyword", "text"):
            return True
        if t == "date":
            return _date_ok(v, m.get("format"))
        if t == "ip":
            try:
                ipaddress.ip_address(str(v))
            except ValueError:
                return False
            return True
        if t in ("long", "integer"):
            if isinstance(v, bool):
                return False
            if isinstance(v, int):
                return True
            return isinstance(v, str) and v.lstrip("-").isdigit()
        if t in ("float", "double", "scaled_float"):
            try:
                float(v)
            except (TypeError, ValueError):
                return False
            return not isinstance(v, bool)
        if t == "boolean":
            return v in (True, False, "true", "false", "")
        return False
