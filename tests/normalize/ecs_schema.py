"""An ECS checker built from the official field list (../shared/reference/ecs-8.11/ecs_flat.yml).

A document's leaves are walked by dotted name. A field is valid when it sits under ``aws.*`` or
``ctagg.*`` (ctagg's own namespaces), or when ecs_flat.yml defines it and its value fits:

* the type (keyword-like types take strings, ``date`` an ISO 8601 string, ``ip`` an address,
  ``long`` an integer, ``boolean`` a boolean, ``geo_point`` ``{lat, lon}``, ``object`` /
  ``flattened`` any object);
* ``normalize: array`` fields are arrays, the others are not;
* ``allowed_values`` (``event.kind``, ``event.category``, ``event.type``, ``event.outcome``),
  and each ``event.type`` is one the ECS definition expects for one of the event's categories.
"""

from __future__ import annotations

import ipaddress
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from tests.normalize.corpus import TESTDATA

ECS_FLAT = TESTDATA.parent / "reference" / "ecs-8.11" / "ecs_flat.yml"
CUSTOM = ("aws.", "ctagg.")
_TEXT = frozenset({"keyword", "constant_keyword", "wildcard", "match_only_text", "text"})
_WHOLE = frozenset({"object", "flattened", "geo_point", "nested"})


@cache
def ecs_fields(path: Path = ECS_FLAT) -> dict[str, dict[str, Any]]:
    data = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    assert isinstance(data, dict)
    return data


def leaves(doc: dict[str, Any], fields: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Dotted name → value; objects are descended unless the field itself is an object type."""
    out: dict[str, Any] = {}

    def walk(value: Any, prefix: str) -> None:
        if isinstance(value, dict) and value:
            spec = fields.get(prefix) if prefix else None
            if spec is not None and spec["type"] in _WHOLE:
                out[prefix] = value
                return
            if prefix.startswith(CUSTOM):
                out[prefix] = value  # ctagg's own subtree: not descended
                return
            for k, v in value.items():
                walk(v, f"{prefix}.{k}" if prefix else k)
        else:
            out[prefix] = value

    walk(doc, "")
    return out


def _fits(value: Any, ftype: str) -> bool:
    if ftype in _TEXT:
        return isinstance(value, str)
    if ftype == "date":
        if not isinstance(value, str):
            return False
        try:
            datetime.fromisoformat(value)
        except ValueError:
            return False
        return True
    if ftype == "ip":
        try:
            ipaddress.ip_address(value)
        except (ValueError, TypeError):
            return False
        return True
    if ftype == "long":
        return isinstance(value, int) and not isinstance(value, bool)
    if ftype in ("float", "scaled_float", "double"):
        return isinstance(value, int | float) and not isinstance(value, bool)
    if ftype == "boolean":
        return isinstance(value, bool)
    if ftype == "geo_point":
        return (
            isinstance(value, dict)
            and set(value) == {"lat", "lon"}
            and all(isinstance(v, int | float) for v in value.values())
        )
    if ftype in ("object", "flattened", "nested"):
        return isinstance(value, dict)
    return False


def problems(doc: dict[str, Any], fields: dict[str, dict[str, Any]] | None = None) -> list[str]:
    fields = fields or ecs_fields()
    out: list[str] = []
    flat = leaves(doc, fields)
    for name, value in flat.items():
        if name.startswith(CUSTOM):
            continue
        spec = fields.get(name)
        if spec is None:
            out.append(f"{name}: not an ECS 8.11 field")
            continue
        is_array = "array" in (spec.get("normalize") or [])
        if isinstance(value, list):
            if not is_array:
                out.append(f"{name}: an array, ECS has a single value")
            values = value
        else:
            if is_array:
                out.append(f"{name}: ECS normalizes it to an array")
            values = [value]
        for v in values:
            if not _fits(v, spec["type"]):
                out.append(f"{name}: {v!r} is not a {spec['type']}")
        allowed = spec.get("allowed_values")
        if allowed:
            names = {a["name"] for a in allowed}
            out.extend(f"{name}: {v!r} not allowed" for v in values if v not in names)
    cats = flat.get("event.category") or []
    types = flat.get("event.type") or []
    if cats and types:
        spec = {a["name"]: a for a in fields["event.category"]["allowed_values"]}
        expected = {t for c in cats for t in spec.get(c, {}).get("expected_event_types", [])}
        out.extend(f"event.type: {t!r} not expected for {cats}" for t in types if t not in expected)
    return out


def ecs_names(doc: dict[str, Any], fields: dict[str, dict[str, Any]] | None = None) -> set[str]:
    """The ECS field names (not aws.* / ctagg.*) a document sets."""
    fields = fields or ecs_fields()
    return {n for n in leaves(doc, fields) if not n.startswith(CUSTOM)}
