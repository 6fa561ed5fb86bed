"""Route and filter before sinks: a connector's ``include`` / ``exclude`` conditions.

An event goes to a connector when it matches one of its ``include`` conditions (or there are
none) and none of its ``exclude`` conditions. A condition matches when every field it names
matches (shell-style patterns, lists = any of). Filtered events are *handled*: the cursor
moves past them and they are counted (``ctagg_forward_filtered_total``); the archive keeps
everything, so a replay with other conditions can still send them.

Matching runs before normalization, on the archived record (and discovery's view of the
account, for ``ou`` and ``tag``), so a dropped event costs a few dictionary lookups.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from aggregator.aws.inventory import Account
    from connectors.base import ConnectorSettings, EventCondition

AccountOf = Callable[[dict[str, Any]], "Account | None"]
Test = Callable[[dict[str, Any], "Account | None"], bool]


def _patterns(value: str | list[str]) -> Callable[[str], bool]:
    items = [value] if isinstance(value, str) else list(value)
    exact = {p for p in items if not any(ch in p for ch in "*?[")}
    globs = [p for p in items if p not in exact]
    rx = re.compile("|".join(fnmatch.translate(p) for p in globs)) if globs else None

    def match(text: str) -> bool:
        return text in exact or (rx is not None and rx.match(text) is not None)

    return match


def _field(name: str, value: str | list[str]) -> Test:
    match = _patterns(value)

    def test(record: dict[str, Any], _: Account | None) -> bool:
        v = record.get(name)
        return match(v if isinstance(v, str) else "" if v is None else str(v))

    return test


def _read_only(want: bool) -> Test:
    def test(record: dict[str, Any], _: Account | None) -> bool:
        v = record.get("readOnly")
        if isinstance(v, str):  # older records carry "true" / "false"
            v = v.lower() == "true"
        return v is want

    return test


def _ou(value: str | list[str]) -> Test:
    match = _patterns(value)

    def test(_: dict[str, Any], account: Account | None) -> bool:
        if account is None:
            return False
        return match(account.ou_path) or any(match(i) for i in account.ou_ids)

    return test


def _tag(value: str | list[str]) -> Test:
    items = [value] if isinstance(value, str) else list(value)
    pairs = []
    for item in items:
        key, sep, val = item.partition("=")
        pairs.append((_patterns(key), _patterns(val) if sep else None))

    def test(_: dict[str, Any], account: Account | None) -> bool:
        if account is None:
            return False
        for key_match, val_match in pairs:
            for k, v in account.tags.items():
                if key_match(k) and (val_match is None or val_match(v)):
                    return True
        return False

    return test


def compile_condition(cond: EventCondition) -> tuple[Test, bool]:
    """(test, needs the account) for one condition."""
    tests: list[Test] = []
    for option, field in (
        ("event_source", "eventSource"),
        ("event_name", "eventName"),
        ("account_id", "recipientAccountId"),
        ("region", "awsRegion"),
        ("event_type", "eventType"),
        ("error_code", "errorCode"),
    ):
        value = getattr(cond, option)
        if value is not None:
            tests.append(_field(field, value))
    if cond.read_only is not None:
        tests.append(_read_only(cond.read_only))
    needs_account = False
    if cond.ou is not None:
        tests.append(_ou(cond.ou))
        needs_account = True
    if cond.tag is not None:
        tests.append(_tag(cond.tag))
        needs_account = True

    def all_of(record: dict[str, Any], account: Account | None) -> bool:
        return all(t(record, account) for t in tests)

    return all_of, needs_account


class EventFilter:
    """A connector's include / exclude conditions, compiled once. ``accept(record)`` is True
    when the event goes to the connector."""

    def __init__(
        self,
        include: Sequence[EventCondition],
        exclude: Sequence[EventCondition],
        account_of: AccountOf | None = None,
    ) -> None:
        inc = [compile_condition(c) for c in include]
        exc = [compile_condition(c) for c in exclude]
        self._include = [t for t, _ in inc]
        self._exclude = [t for t, _ in exc]
        self._needs_account = any(n for _, n in (*inc, *exc))
        self._account_of = account_of
        self.active = bool(inc or exc)

    @classmethod
    def for_connector(
        cls, settings: ConnectorSettings, account_of: AccountOf | None = None
    ) -> EventFilter:
        return cls(settings.include, settings.exclude, account_of)

    def accept(self, record: dict[str, Any]) -> bool:
        if not self.active:
            return True
        account = (
            self._account_of(record)
            if self._needs_account and self._account_of is not None
            else None
        )
        if self._include and not any(t(record, account) for t in self._include):
            return False
        return not any(t(record, account) for t in self._exclude)
