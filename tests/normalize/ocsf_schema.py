"""An OCSF validator built from the official schema files (../shared/reference/ocsf-schema-1.1.0).

The schema is compiled with ``ocsf-lib`` (attributes, requirements, types, enums, profiles). One
correction is applied from the raw files: ``constraints`` are taken from the nearest definition
in an object's or class's ``extends`` chain that has them (ocsf-lib 0.10 lets the parent's
constraints win, e.g. ``network_endpoint`` would need ``name`` or ``uid`` like ``_entity``,
where the schema says ``ip``, ``hostname``, ``svc_name``, ...; ``file`` overrides them with
``{}``).

What is checked, per event and recursively per object:

* the class exists; ``category_uid``/``type_uid`` agree with the class and activity;
* every attribute used exists in that class or object (``unmapped`` and other ``object``-typed
  attributes are free-form);
* attributes of a profile are only used when ``metadata.profiles`` names it;
* required attributes are present (non-null);
* constraints: ``at_least_one`` / ``just_one``;
* deprecated attributes are reported apart (``Problem.deprecated``): valid, but to be replaced;
* types: arrays vs scalars, strings, integers, longs, floats, booleans, the ``regex`` of a
  type (``datetime_t``, ``ip_t``, ...), ``max_len``, ``range``; enum values are keys of the
  enum, and a sibling caption (``activity_name`` for ``activity_id``) is the enum's caption
  unless the id is 99 (Other).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from ocsf.compile.compiler import Compilation
from ocsf.compile.options import CompilationOptions
from ocsf.repository import read_repo
from ocsf.schema import to_json

from tests.normalize.corpus import TESTDATA

REFERENCE = TESTDATA.parent / "reference"
OCSF_110 = REFERENCE / "ocsf-schema-1.1.0"

_SCALARS = (str, int, float, bool)


def _raw_constraints(root: Path) -> dict[tuple[str, str], dict[str, Any]]:
    """(kind, name) → constraints, resolved by the nearest definition along ``extends``."""
    raw: dict[tuple[str, str], dict[str, Any]] = {}
    for kind, folder in (("object", "objects"), ("class", "events")):
        for path in sorted((root / folder).rglob("*.json")):
            d = json.loads(path.read_text())
            raw[(kind, d["name"])] = d
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for (kind, name), d in raw.items():
        cur: dict[str, Any] | None = d
        seen = 0
        while cur is not None and "constraints" not in cur and seen < 16:
            parent = cur.get("extends")
            cur = raw.get((kind, parent)) if parent else None
            seen += 1
        out[(kind, name)] = dict(cur["constraints"]) if cur is not None else {}
    return out


@cache
def compiled(root: Path = OCSF_110) -> dict[str, Any]:
    options = CompilationOptions()
    options.ignore_extensions = ["linux", "windows"]
    repo = read_repo(str(root), preserve_raw_data=False)
    schema: dict[str, Any] = json.loads(to_json(Compilation(repo, options).build()))
    fixed = _raw_constraints(root)
    for kind, table in (("object", schema["objects"]), ("class", schema["classes"])):
        for name, d in table.items():
            d["constraints"] = fixed.get((kind, name), d.get("constraints") or {})
    return schema


@dataclass
class Problem:
    path: str
    what: str
    deprecated: bool = False  # valid, but the attribute is deprecated in this version

    def __str__(self) -> str:
        return f"{self.path}: {self.what}"


class Validator:
    def __init__(self, schema: dict[str, Any] | None = None) -> None:
        self.schema = schema or compiled()
        self.by_uid = {c["uid"]: c for c in self.schema["classes"].values()}
        self.types = self.schema["types"]
        self._regex: dict[str, re.Pattern[str]] = {}

    # ------------------------------------------------------------------ entry point

    def validate(self, event: dict[str, Any]) -> list[Problem]:
        problems: list[Problem] = []
        cls = self.by_uid.get(event.get("class_uid"))  # type: ignore[arg-type]
        if cls is None:
            return [Problem("class_uid", f"unknown class {event.get('class_uid')!r}")]
        profiles = set((event.get("metadata") or {}).get("profiles") or [])
        self._object(event, cls, "", profiles, problems)
        cat = self.schema["categories"].get(cls.get("category"), {})
        if cat and event.get("category_uid") != cat.get("uid"):
            problems.append(Problem("category_uid", f"is not {cat.get('uid')}"))
        act = event.get("activity_id")
        if isinstance(act, int) and event.get("type_uid") != cls["uid"] * 100 + act:
            problems.append(Problem("type_uid", f"is not {cls['uid'] * 100 + act}"))
        _siblings(self, event, cls, "", problems)
        return problems

    # ------------------------------------------------------------------ recursion

    def _object(
        self,
        value: dict[str, Any],
        spec: dict[str, Any],
        path: str,
        profiles: set[str],
        problems: list[Problem],
    ) -> None:
        attrs: dict[str, Any] = spec.get("attributes") or {}
        for key, v in value.items():
            p = f"{path}{key}"
            a = attrs.get(key)
            if a is None:
                problems.append(Problem(p, f"not an attribute of {spec.get('name')}"))
                continue
            prof = a.get("profile")
            if prof and prof not in profiles:
                problems.append(Problem(p, f"belongs to profile {prof!r}, not in metadata"))
            if a.get("@deprecated"):
                problems.append(Problem(p, f"deprecated: {a['@deprecated']}", deprecated=True))
            if v is None:
                continue
            self._attr(v, a, p, profiles, problems)
        for key, a in attrs.items():
            if a.get("requirement") == "required" and value.get(key) is None:
                prof = a.get("profile")
                if prof and prof not in profiles:
                    continue
                problems.append(Problem(f"{path}{key}", f"required by {spec.get('name')}"))
        cons = spec.get("constraints") or {}
        present = {k for k, v in value.items() if v is not None}
        one = cons.get("at_least_one")
        if one and not present & set(one):
            problems.append(Problem(path or spec["name"], f"needs at least one of {one}"))
        just = cons.get("just_one")
        if just and len(present & set(just)) != 1:
            problems.append(Problem(path or spec["name"], f"needs exactly one of {just}"))

    def _attr(
        self,
        v: Any,
        a: dict[str, Any],
        path: str,
        profiles: set[str],
        problems: list[Problem],
    ) -> None:
        if a.get("is_array"):
            if not isinstance(v, list):
                problems.append(Problem(path, "must be an array"))
                return
            for i, item in enumerate(v):
                if item is None:
                    problems.append(Problem(f"{path}[{i}]", "null in an array"))
                    continue
                self._one(item, a, f"{path}[{i}]", profiles, problems)
            return
        if isinstance(v, list):
            problems.append(Problem(path, "must not be an array"))
            return
        self._one(v, a, path, profiles, problems)

    def _one(
        self,
        v: Any,
        a: dict[str, Any],
        path: str,
        profiles: set[str],
        problems: list[Problem],
    ) -> None:
        t = a.get("object_type") or a.get("type")
        if t in ("object", "object_t"):  # free-form JSON object (unmapped, ...)
            if not isinstance(v, dict):
                problems.append(Problem(path, "must be a JSON object"))
            return
        if t in self.schema["objects"]:
            if not isinstance(v, dict):
                problems.append(Problem(path, f"must be an object ({t})"))
                return
            self._object(v, self.schema["objects"][t], path + ".", profiles, problems)
            return
        if t == "json_t":
            return
        self._scalar(v, t, path, problems)
        enum = a.get("enum")
        if enum and str(v) not in enum:
            problems.append(Problem(path, f"{v!r} is not in the enum {sorted(enum)}"))

    def _base(self, t: str) -> str:
        seen = 0
        while seen < 8:
            parent = (self.types.get(t) or {}).get("type")
            if not parent:
                return t
            t = parent
            seen += 1
        return t

    def _scalar(self, v: Any, t: str, path: str, problems: list[Problem]) -> None:
        base = self._base(t)
        ok = {
            "string_t": isinstance(v, str),
            "integer_t": isinstance(v, int) and not isinstance(v, bool),
            "long_t": isinstance(v, int) and not isinstance(v, bool),
            "float_t": isinstance(v, int | float) and not isinstance(v, bool),
            "boolean_t": isinstance(v, bool),
        }.get(base)
        if ok is None:
            problems.append(Problem(path, f"unknown type {t}"))
            return
        if not ok:
            problems.append(Problem(path, f"{v!r} is not a {t}"))
            return
        spec = self.types.get(t) or {}
        rx = spec.get("regex")
        if rx and isinstance(v, str):
            pat = self._regex.get(rx)
            if pat is None:
                pat = self._regex[rx] = re.compile(rx)
            if not pat.search(v):
                problems.append(Problem(path, f"{v!r} does not match {t}"))
        max_len = spec.get("max_len")
        if max_len and isinstance(v, str) and len(v) > max_len:
            problems.append(Problem(path, f"longer than {max_len} ({t})"))
        rng = spec.get("range")
        if rng and isinstance(v, int | float) and not rng[0] <= v <= rng[1]:
            problems.append(Problem(path, f"{v} outside {rng} ({t})"))


def _siblings(
    validator: Validator, value: dict[str, Any], spec: dict[str, Any], path: str, out: list[Problem]
) -> None:
    """``activity_name`` / ``status`` / ``severity`` / ... name the caption of their ``*_id``
    (any text for 99 Other)."""
    attrs = spec.get("attributes") or {}
    for key, v in value.items():
        a = attrs.get(key)
        if a is None or v is None:
            continue
        t = a.get("object_type") or a.get("type")
        obj = validator.schema["objects"].get(t)
        if obj is not None:
            for i, item in enumerate(v if isinstance(v, list) else [v]):
                if isinstance(item, dict):
                    _siblings(validator, item, obj, f"{path}{key}[{i}].", out)
            continue
        sib, enum = a.get("sibling"), a.get("enum")
        if sib and enum and sib in value and isinstance(v, int) and v != 99:
            want = (enum.get(str(v)) or {}).get("caption")
            if want is not None and value[sib] != want:
                out.append(Problem(f"{path}{sib}", f"{value[sib]!r} is not {want!r} ({key}={v})"))
