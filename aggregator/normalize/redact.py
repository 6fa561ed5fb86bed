"""Redaction by field path, applied to the CloudTrail record before any schema mapping.

Rules are compiled into a path trie once; applying them touches only the keys the rules name
and copies only the containers on the path to a changed value (the input is never mutated).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterable
from typing import Any

import orjson

# Built-in rules: secrets CloudTrail can carry in responses (and a few request fields).
DEFAULT_RULES: tuple[tuple[str, str], ...] = (
    ("responseElements.credentials.sessionToken", "mask"),
    ("responseElements.credentials.secretAccessKey", "mask"),
    ("responseElements.accessKey.secretAccessKey", "mask"),
    ("responseElements.accessToken", "mask"),
    ("responseElements.refreshToken", "mask"),
    ("responseElements.idToken", "mask"),
    ("responseElements.tokenValue", "mask"),
    ("responseElements.passwordData", "mask"),
    ("responseElements.authorizationData.authorizationToken", "mask"),
    ("responseElements.pendingModifiedValues.masterUserPassword", "mask"),
    ("requestParameters.clientSecret", "mask"),
    ("requestParameters.password", "mask"),
    ("requestParameters.newPassword", "mask"),
    ("requestParameters.oldPassword", "mask"),
    ("requestParameters.masterUserPassword", "mask"),
    ("requestParameters.tdeCredentialPassword", "mask"),
    ("requestParameters.privateKey", "mask"),
)

ACTIONS = frozenset({"drop", "mask", "hmac"})
_MAX_LIST_NESTING = 8


class _Node:
    __slots__ = ("action", "children", "wildcard")

    def __init__(self) -> None:
        self.children: dict[str, _Node] = {}
        self.wildcard: _Node | None = None
        self.action: str | None = None


class Redactor:
    """Compiled redaction rules. ``apply(record)`` returns the record or a redacted copy."""

    __slots__ = ("_key", "_mask", "_quick", "_root", "rules")

    def __init__(
        self,
        rules: Iterable[tuple[str, str]] = DEFAULT_RULES,
        *,
        mask: str = "[REDACTED]",
        hmac_key: bytes | None = None,
    ) -> None:
        self._root = _Node()
        self._mask = mask
        self._key = hmac_key
        self.rules: list[tuple[str, str]] = []
        for path, action in rules:
            if action not in ACTIONS:
                raise ValueError(f"redaction rule {path!r}: unknown action {action!r}")
            if action == "hmac" and not hmac_key:
                raise ValueError(f"redaction rule {path!r}: action 'hmac' needs a key")
            parts = path.split(".")
            if not path or any(not p for p in parts):
                raise ValueError(f"redaction rule {path!r}: empty path segment")
            node = self._root
            for part in parts:
                if part == "*":
                    if node.wildcard is None:
                        node.wildcard = _Node()
                    node = node.wildcard
                else:
                    node = node.children.setdefault(part, _Node())
            node.action = action
            self.rules.append((path, action))
        # When every top-level rule key leads to plain sub-rules (no action or wildcard on
        # the key itself), a record whose objects there share no key with the rules is
        # returned as is after one set test per rule key, without walking.
        root = self._root
        quick = tuple((key, frozenset(child.children)) for key, child in root.children.items())
        plain = root.wildcard is None and all(
            child.action is None and child.wildcard is None for child in root.children.values()
        )
        self._quick: tuple[tuple[str, frozenset[str]], ...] | None = quick if plain else None

    @property
    def empty(self) -> bool:
        return not self.rules

    def apply(self, record: dict[str, Any]) -> dict[str, Any]:
        quick = self._quick
        if quick is not None and type(record) is dict:
            for key, names in quick:
                value = record.get(key)
                if value is None:
                    continue
                if type(value) is dict:
                    if value.keys().isdisjoint(names):
                        continue
                    break
                if isinstance(value, dict | list):
                    break
            else:
                return record
        out = self._walk(record, self._root, 0)
        return out if isinstance(out, dict) else record

    def _walk(self, value: Any, node: _Node, lists: int) -> Any:
        if isinstance(value, list):
            if lists >= _MAX_LIST_NESTING:  # lists of lists of ...: no field path goes there
                return value
            new_list: list[Any] | None = None
            for i, item in enumerate(value):
                r = self._walk(item, node, lists + 1)
                if r is not item:
                    if new_list is None:
                        new_list = list(value)
                    new_list[i] = r
            return value if new_list is None else new_list
        if not isinstance(value, dict):
            return value
        new: dict[str, Any] | None = None
        children = node.children
        if len(value) < len(children):  # walk the smaller side
            for key in list(value):
                child = children.get(key)
                if child is not None:
                    new = self._one(value, new, key, child)
        else:
            for key, child in children.items():
                if key in value:
                    new = self._one(value, new, key, child)
        if node.wildcard is not None:
            for key in list(value):
                new = self._one(value, new, key, node.wildcard)
        return value if new is None else new

    def _one(
        self, value: dict[str, Any], new: dict[str, Any] | None, key: str, child: _Node
    ) -> dict[str, Any] | None:
        current = value if new is None else new
        if key not in current:
            return new
        old = current[key]
        if child.action == "drop":
            if new is None:
                new = dict(value)
            del new[key]
            return new
        if child.action is not None:
            if old is None:
                return new
            repl = self._replace(old, child.action)
        elif isinstance(old, dict | list):
            repl = self._walk(old, child, 0)
        else:
            return new
        if repl is old:
            return new
        if new is None:
            new = dict(value)
        new[key] = repl
        return new

    def _replace(self, old: Any, action: str) -> Any:
        if action == "mask":
            return self._mask
        if isinstance(old, str):
            data = old.encode()
        else:
            try:
                data = orjson.dumps(old, option=orjson.OPT_SORT_KEYS)
            except TypeError:  # integers beyond 64 bits
                data = json.dumps(old, sort_keys=True, default=str).encode()
        assert self._key is not None
        return "hmac-sha256:" + hmac.new(self._key, data, hashlib.sha256).hexdigest()
