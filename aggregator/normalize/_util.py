"""Small, fast helpers shared by the schema mappers. Pure functions, bounded caches."""

from __future__ import annotations

import ipaddress
import json
import re
from datetime import UTC, datetime
from typing import Any

import orjson

_CACHE_MAX = 16384

_ip_cache: dict[str, bool] = {}


def is_ip(value: str) -> bool:
    """True when ``value`` is a valid IPv4/IPv6 address (leading zeros are not valid)."""
    hit = _ip_cache.get(value)
    if hit is not None:
        return hit
    try:
        ipaddress.ip_address(value)
        ok = True
    except ValueError:
        ok = False
    if len(_ip_cache) >= _CACHE_MAX:
        _ip_cache.clear()
    _ip_cache[value] = ok
    return ok


_HOST_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-")


def is_hostname(value: str) -> bool:
    """A DNS-name-shaped value (``cloudformation.amazonaws.com``), not an IP."""
    if "." not in value or len(value) > 253 or not _HOST_CHARS.issuperset(value):
        return False
    tld = value.rsplit(".", 1)[1]
    return any(c.isalpha() for c in tld)  # 225.01.00.16 is a broken IP, not a name


_SPLIT = re.compile(r"[,\s]+")


def split_source(value: Any) -> tuple[list[str], str | None]:
    """``sourceIPAddress`` → (valid IPs in order, the raw value if it is a string).

    Handles a single IP, several IPs separated by commas/spaces, service names
    (``AWS Internal``, ``*.amazonaws.com``) and invalid values (``225.01.00.16``).
    """
    if not isinstance(value, str) or not value:
        return [], None
    if is_ip(value):
        return [value], value
    if "," in value or " " in value:
        ips = [p for p in _SPLIT.split(value) if p and is_ip(p)]
        return ips, value
    return [], value


_time_cache: dict[Any, tuple[int, str] | None] = {}


def parse_time(value: Any) -> tuple[int, str] | None:
    """CloudTrail ``eventTime`` → (epoch milliseconds, ISO-8601 UTC with ``Z``), or None."""
    if not isinstance(value, str):
        return None
    hit = _time_cache.get(value, False)
    if hit is not False:
        return hit  # type: ignore[return-value]
    out: tuple[int, str] | None
    try:
        dt = datetime.fromisoformat(value)
    except ValueError:
        out = None
    else:
        dt = dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)
        ms = int(dt.timestamp() * 1000)
        iso = dt.strftime("%Y-%m-%dT%H:%M:%S")
        iso += f".{dt.microsecond // 1000:03d}Z" if dt.microsecond else "Z"
        out = (ms, iso)
    if len(_time_cache) >= _CACHE_MAX:
        _time_cache.clear()
    _time_cache[value] = out
    return out


def iso_z(dt: datetime) -> str:
    """A datetime as ISO-8601 UTC with millisecond precision and ``Z``."""
    dt = dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def epoch_ms(dt: datetime) -> int:
    dt = dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt
    return int(dt.timestamp() * 1000)


TOO_DEEP = '"[ctagg: nested too deeply to encode]"'
MAX_DEPTH = 32  # flattened copies and type-stable objects stop descending here


def json_text(value: Any) -> str:
    """Compact JSON text; values orjson cannot encode natively become strings. Integers beyond
    64 bits and nesting beyond orjson's limit use the stdlib encoder; nesting beyond Python's
    recursion limit gives a JSON string placeholder (the full record is in the archive)."""
    try:
        return orjson.dumps(value, default=str, option=orjson.OPT_NON_STR_KEYS).decode()
    except TypeError:
        try:
            return json.dumps(value, default=str, ensure_ascii=False, separators=(",", ":"))
        except (RecursionError, ValueError, TypeError):
            return TOO_DEEP


def as_str(value: Any) -> str:
    """A scalar as the string a search index would store (bools as ``true``/``false``)."""
    if isinstance(value, str):
        return value
    if value is True:
        return "true"
    if value is False:
        return "false"
    if value is None:
        return "null"
    if isinstance(value, int | float):
        return repr(value) if isinstance(value, float) else str(value)
    return json_text(value)


class Flattener:
    """Dotted keys → string values, within a size cap.

    ``{"a": {"b": [1, {"c": true}]}}`` → ``{"a.b": "1", "a.b.c": "true"}``; a key that occurs
    more than once (through lists) gets a list of strings. List indexes are not part of keys,
    so ``items.instanceId`` is searchable whatever the list length. ``None`` values are left
    out. The cap counts key and value characters; a value longer than ``max_value_chars`` is
    cut. Either cut sets the ``truncated`` flag.
    """

    __slots__ = ("max_chars", "max_fields", "max_value_chars", "small")

    def __init__(
        self, max_fields: int = 512, max_chars: int = 32768, max_value_chars: int = 1024
    ) -> None:
        self.max_fields = max_fields
        self.max_chars = max_chars
        self.max_value_chars = max_value_chars
        # A flat string-valued object whose JSON text is at most this long is within every cap
        # (its keys and values are shorter than its text; it has fewer fields than characters).
        self.small = min(max_chars, max_value_chars, max_fields)

    def flatten(self, value: Any) -> tuple[dict[str, Any], bool]:
        """Return (flattened, truncated)."""
        if type(value) is dict:
            # Optimistic pass without per-leaf cap bookkeeping; when the result is within
            # every cap it is exactly what the capped walk produces (same keys, same order,
            # same lists, same cuts), so only an object near a cap is walked twice.
            fast: dict[str, Any] = {}
            cuts: list[str] = []
            try:
                used = _fast_dict(value, "", fast, 0, self.max_value_chars, cuts=cuts)
            except _NeedsCaps:
                pass
            else:
                if used <= self.max_chars and len(fast) <= self.max_fields:
                    return fast, bool(cuts)
        return self.flatten_capped(value)

    def flatten_capped(self, value: Any) -> tuple[dict[str, Any], bool]:
        """:meth:`flatten` by the capped walk alone (the definition the fast pass matches)."""
        out: dict[str, Any] = {}
        state: list[Any] = [self.max_chars, False]
        tv = type(value)
        if tv is dict:
            self._dict(value, "", out, state, 0)
        elif tv is list:
            self._list(value, "value", out, state, 0)
        elif value is not None:
            self._leaf(value, "value", out, state)
        return out, bool(state[1])

    def _dict(
        self, d: dict[Any, Any], prefix: str, out: dict[str, Any], state: list[Any], depth: int
    ) -> None:
        if depth > MAX_DEPTH:
            state[1] = True
            return
        mvc = self.max_value_chars
        for k, v in d.items():
            key = prefix + k if type(k) is str else prefix + str(k)
            tv = type(v)
            if tv is str:
                text = v
            elif tv is dict:
                if v:
                    self._dict(v, key + ".", out, state, depth + 1)
                continue
            elif tv is list:
                if v:
                    self._list(v, key, out, state, depth + 1)
                continue
            elif v is None:
                continue
            elif tv is bool:
                text = "true" if v else "false"
            elif tv is int:
                text = str(v)
            else:
                text = as_str(v)
            # Fast path: a new key, within every cap.
            cost = len(text) + len(key)
            if (
                len(text) <= mvc
                and cost <= state[0]
                and key not in out
                and len(out) < self.max_fields
            ):
                out[key] = text
                state[0] -= cost
            else:
                self._leaf(text, key, out, state)

    def _list(
        self, items: list[Any], key: str, out: dict[str, Any], state: list[Any], depth: int
    ) -> None:
        if depth > MAX_DEPTH:
            state[1] = True
            return
        sub = key + "."
        for v in items:
            tv = type(v)
            if tv is dict:
                if v:
                    self._dict(v, sub, out, state, depth + 1)
            elif tv is list:
                if v:
                    self._list(v, key, out, state, depth + 1)
            elif v is not None:
                self._leaf(v, key, out, state)

    def _leaf(self, v: Any, key: str, out: dict[str, Any], state: list[Any]) -> None:
        text = v if type(v) is str else as_str(v)
        if len(text) > self.max_value_chars:
            text = text[: self.max_value_chars]
            state[1] = True
        cost = len(text) + len(key)
        if cost > state[0]:
            state[0] = 0
            state[1] = True
            return
        prev = out.get(key)
        if prev is None:
            if len(out) >= self.max_fields:
                state[1] = True
                return
            out[key] = text
        elif type(prev) is list:
            prev.append(text)
        else:
            out[key] = [prev, text]
        state[0] -= cost


class _NeedsCaps(Exception):  # control flow, not an error
    """The optimistic flatten met a value, depth or nesting the capped walk must handle."""


def _fast_dict(
    d: dict[Any, Any], prefix: str, out: dict[str, Any], depth: int, mvc: int, *, cuts: list[str]
) -> int:
    """``Flattener._dict`` without the field and character caps: fills ``out``, returns the
    characters used (keys + values). A value over ``mvc`` is cut as the capped walk cuts it
    and its key noted in ``cuts``; nesting past MAX_DEPTH raises :class:`_NeedsCaps`."""
    if depth > MAX_DEPTH:
        raise _NeedsCaps
    used = 0
    for k, v in d.items():
        key = prefix + k if type(k) is str else prefix + str(k)
        tv = type(v)
        if tv is str:
            text = v
        elif tv is dict:
            if v:
                used += _fast_dict(v, key + ".", out, depth + 1, mvc, cuts=cuts)
            continue
        elif tv is list:
            if v:
                used += _fast_list(v, key, out, depth + 1, mvc, cuts=cuts)
            continue
        elif v is None:
            continue
        elif tv is bool:
            text = "true" if v else "false"
        elif tv is int:
            text = str(v)
        else:
            text = as_str(v)
        if len(text) > mvc:
            text = text[:mvc]
            cuts.append(key)
        if key in out:
            prev = out[key]
            if type(prev) is list:
                prev.append(text)
            else:
                out[key] = [prev, text]
        else:
            out[key] = text
        used += len(text) + len(key)
    return used


def _fast_list(
    items: list[Any], key: str, out: dict[str, Any], depth: int, mvc: int, *, cuts: list[str]
) -> int:
    """``Flattener._list`` without caps (see :func:`_fast_dict`)."""
    if depth > MAX_DEPTH:
        raise _NeedsCaps
    used = 0
    sub = key + "."
    for v in items:
        tv = type(v)
        if tv is dict:
            if v:
                used += _fast_dict(v, sub, out, depth + 1, mvc, cuts=cuts)
        elif tv is list:
            if v:
                used += _fast_list(v, key, out, depth + 1, mvc, cuts=cuts)
        elif v is not None:
            text = v if tv is str else as_str(v)
            if len(text) > mvc:
                text = text[:mvc]
                cuts.append(key)
            if key in out:
                prev = out[key]
                if type(prev) is list:
                    prev.append(text)
                else:
                    out[key] = [prev, text]
            else:
                out[key] = text
            used += len(text) + len(key)
    return used


_snake_cache: dict[str, str] = {}
_SNAKE_1 = re.compile(r"([A-Z]+)([A-Z][a-z])")
_SNAKE_2 = re.compile(r"([a-z0-9])([A-Z])")


def snake(name: str) -> str:
    """``sessionContext`` → ``session_context``; ``ARN`` → ``arn``; ``sAMLAssertionID`` works."""
    hit = _snake_cache.get(name)
    if hit is not None:
        return hit
    s = _SNAKE_2.sub(r"\1_\2", _SNAKE_1.sub(r"\1_\2", name)).lower()
    if len(_snake_cache) >= _CACHE_MAX:
        _snake_cache.clear()
    _snake_cache[name] = s
    return s


def stable(value: Any) -> Any:
    """A nested object with snake_case keys and every leaf a string (type-stable for indexes).

    Lists of scalars become lists of strings; lists containing objects or lists become JSON
    text. ``None`` values are left out.
    """
    tv = type(value)
    if tv is dict:
        return stable_dict(value)
    if tv is list:
        return _stable_list(value)
    return value if tv is str else as_str(value)


def stable_dict(d: dict[Any, Any], depth: int = 0) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if v is None:
            continue
        key = k if type(k) is str else str(k)
        sk = _snake_cache.get(key) or snake(key)
        tv = type(v)
        if tv is str:
            out[sk] = v
        elif tv is dict:
            out[sk] = stable_dict(v, depth + 1) if depth < MAX_DEPTH else json_text(v)
        elif tv is list:
            out[sk] = _stable_list(v)
        else:
            out[sk] = as_str(v)
    return out


def _stable_list(items: list[Any]) -> Any:
    for v in items:
        if type(v) is dict or type(v) is list:
            return json_text(items)
    return [v if type(v) is str else as_str(v) for v in items if v is not None]


def arn_tail(arn: Any) -> str | None:
    """The last path segment of an ARN (``.../assumed-role/Admin/alice`` → ``alice``)."""
    if not isinstance(arn, str) or not arn:
        return None
    tail = arn.rsplit("/", 1)[-1] if "/" in arn else None
    return tail or None
