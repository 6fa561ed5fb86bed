"""Compile a parsed Sigma rule into a fast in-process predicate over one CloudTrail record.

pySigma parses the YAML and resolves the condition (``1 of selection_*``, ``all of them``,
parentheses, ``not``) into a tree of AND/OR/NOT nodes whose leaves are ``field = value``
expressions with modifiers already applied. This module turns that tree into nested Python
closures. No query language, no backend: the record dict is tested directly.

Field paths are dotted (``userIdentity.type``); a list met anywhere on the way fans out, so
``requestParameters.ipPermissions.items.ipRanges.items.cidrIp`` tests every CIDR of every
permission. A leaf matches when *any* value reached matches.

String matching is case-insensitive (Sigma's default) unless the ``cased`` modifier is used.
``re`` searches anywhere in the value (anchor with ``^``/``$`` when needed).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from functools import lru_cache
from typing import Any

from sigma.conditions import (
    ConditionAND,
    ConditionFieldEqualsValueExpression,
    ConditionNOT,
    ConditionOR,
    ConditionValueExpression,
)
from sigma.modifiers import reverse_modifier_mapping
from sigma.rule import SigmaDetection, SigmaDetectionItem, SigmaRule
from sigma.types import (
    CompareOperators,
    SigmaBool,
    SigmaCasedString,
    SigmaCIDRExpression,
    SigmaCompareExpression,
    SigmaExists,
    SigmaFieldReference,
    SigmaNull,
    SigmaNumber,
    SigmaRegularExpression,
    SigmaRegularExpressionFlag,
    SigmaString,
    SpecialChars,
)

Record = dict[str, Any]
Predicate = Callable[[Record], bool]
Getter = Callable[[Record], list[Any]]

# Modifiers this engine evaluates (pySigma identifiers). Anything else is refused by name.
SUPPORTED_MODIFIERS = frozenset(
    {
        "contains",
        "startswith",
        "endswith",
        "all",
        "re",
        "i",
        "ignorecase",
        "m",
        "multiline",
        "s",
        "dotall",
        "cased",
        "cidr",
        "exists",
        "fieldref",
        "gt",
        "gte",
        "lt",
        "lte",
        "neq",
    }
)


class UnsupportedRule(Exception):
    """A rule uses something this engine does not evaluate; the message names the construct."""


# --------------------------------------------------------------------------- field access


def make_getter(path: str) -> Getter:
    """A function returning every value at a dotted path (lists fan out at every level)."""
    parts = path.split(".")
    if len(parts) == 1:
        (p,) = parts

        def get1(rec: Record) -> list[Any]:
            v = rec.get(p)
            if v is None:
                return []
            return v if isinstance(v, list) else [v]

        return get1

    def fanout(rec: Record) -> list[Any]:
        cur: list[Any] = [rec]
        for p in parts:
            nxt: list[Any] = []
            for c in cur:
                if isinstance(c, dict):
                    v = c.get(p)
                    if v is None:
                        continue
                    if isinstance(v, list):
                        nxt.extend(v)
                    else:
                        nxt.append(v)
            if not nxt:
                return nxt
            cur = nxt
        return cur

    def get(rec: Record) -> list[Any]:
        # Most paths meet only dicts: walk them directly, fan out only when a list shows up.
        v: Any = rec
        for p in parts:
            if isinstance(v, dict):
                v = v.get(p)
                if v is None:
                    return []
            else:
                return fanout(rec) if isinstance(v, list) else []
        return v if isinstance(v, list) else [v]

    return get


def _text(v: Any) -> str | None:
    """A scalar as text for string matching (bools as CloudTrail writes them); None otherwise."""
    if isinstance(v, str):
        return v
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return str(v)
    return None


def _lower(v: Any) -> str | None:
    if isinstance(v, str):
        return v.lower()
    t = _text(v)
    return None if t is None else t.lower()


@lru_cache(maxsize=65536)
def _as_network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    try:
        return ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        return None


def _number(v: Any) -> float | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, int | float):
        return float(v)
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            return None
    return None


# --------------------------------------------------------------------------- value matchers

ValueMatch = Callable[[Any], bool]


def _plain(s: SigmaString) -> str | None:
    """The string if it has no wildcards, else None."""
    if s.contains_special():
        return None
    return s.to_plain()


def _string_matcher(s: SigmaString, cased: bool) -> ValueMatch:
    norm = _text if cased else _lower
    parts = s.s
    plain_parts = [p for p in parts if isinstance(p, str)]
    specials = [p for p in parts if not isinstance(p, str)]
    if not specials:
        want = s.to_plain() if cased else s.to_plain().lower()
        return lambda v: norm(v) == want
    multi = SpecialChars.WILDCARD_MULTI
    only_multi = all(p is multi for p in specials)
    if only_multi and len(plain_parts) == 1:
        text = plain_parts[0] if cased else plain_parts[0].lower()
        starts, ends = parts[0] is multi, parts[-1] is multi
        if starts and ends and len(parts) == 3:

            def contains(v: Any) -> bool:
                t = norm(v)
                return t is not None and text in t

            return contains
        if ends and not starts and len(parts) == 2:

            def startswith(v: Any) -> bool:
                t = norm(v)
                return t is not None and t.startswith(text)

            return startswith
        if starts and not ends and len(parts) == 2:

            def endswith(v: Any) -> bool:
                t = norm(v)
                return t is not None and t.endswith(text)

            return endswith
    pattern = ""
    for p in parts:
        if p is multi:
            pattern += ".*"
        elif p is SpecialChars.WILDCARD_SINGLE:
            pattern += "."
        elif isinstance(p, str):
            pattern += re.escape(p)
        else:
            raise UnsupportedRule(f"placeholder {p!r} in value {s.original!r} (expand modifier)")
    rx = re.compile(pattern, re.DOTALL | (0 if cased else re.IGNORECASE))

    def wildcard(v: Any) -> bool:
        t = _text(v)
        return t is not None and rx.fullmatch(t) is not None

    return wildcard


def _regex_matcher(r: SigmaRegularExpression) -> ValueMatch:
    flags = 0
    for f in r.flags:
        flags |= {
            SigmaRegularExpressionFlag.IGNORECASE: re.IGNORECASE,
            SigmaRegularExpressionFlag.MULTILINE: re.MULTILINE,
            SigmaRegularExpressionFlag.DOTALL: re.DOTALL,
        }[f]
    try:
        rx = re.compile(r.regexp.to_plain(), flags)
    except re.error as exc:
        raise UnsupportedRule(
            f"invalid regular expression {r.regexp.to_plain()!r}: {exc}"
        ) from None

    def match(v: Any) -> bool:
        t = _text(v)
        return t is not None and rx.search(t) is not None

    return match


def _cidr_matcher(c: SigmaCIDRExpression) -> ValueMatch:
    net = c.network

    def match(v: Any) -> bool:
        if not isinstance(v, str):
            return False
        got = _as_network(v)
        if got is None or got.version != net.version:
            return False
        return got.subnet_of(net)  # type: ignore[arg-type]

    return match


def _compare_matcher(c: SigmaCompareExpression) -> ValueMatch:
    target = float(c.number.number)
    op = c.op
    ops: dict[CompareOperators, Callable[[float], bool]] = {
        CompareOperators.LT: lambda x: x < target,
        CompareOperators.LTE: lambda x: x <= target,
        CompareOperators.GT: lambda x: x > target,
        CompareOperators.GTE: lambda x: x >= target,
        CompareOperators.NEQ: lambda x: x != target,
    }
    test = ops[op]

    def match(v: Any) -> bool:
        n = _number(v)
        return n is not None and test(n)

    return match


def _value_matcher(value: Any) -> ValueMatch:
    if isinstance(value, SigmaCasedString):
        return _string_matcher(value, cased=True)
    if isinstance(value, SigmaString):
        return _string_matcher(value, cased=False)
    if isinstance(value, SigmaBool):
        want_b = bool(value.boolean)
        want_s = "true" if want_b else "false"
        return lambda v: v is want_b if isinstance(v, bool) else _lower(v) == want_s
    if isinstance(value, SigmaNumber):
        want_n = float(value.number)
        return lambda v: _number(v) == want_n
    if isinstance(value, SigmaRegularExpression):
        return _regex_matcher(value)
    if isinstance(value, SigmaCIDRExpression):
        return _cidr_matcher(value)
    if isinstance(value, SigmaCompareExpression):
        return _compare_matcher(value)
    raise UnsupportedRule(f"value type {type(value).__name__}")


# --------------------------------------------------------------------------- tree compile


def _leaf(node: ConditionFieldEqualsValueExpression) -> Predicate:
    get = make_getter(node.field)
    value = node.value
    if isinstance(value, SigmaExists):
        want = bool(value.exists)
        return lambda r: bool(get(r)) is want
    if isinstance(value, SigmaNull):
        return lambda r: not get(r)
    if isinstance(value, SigmaFieldReference):
        other = make_getter(value.field)

        def fieldref(r: Record) -> bool:
            mine = {_lower(v) for v in get(r)} - {None}
            return any(_lower(v) in mine for v in other(r))

        return fieldref
    m = _value_matcher(value)
    return lambda r: any(m(v) for v in get(r))


def _in_set(field: str, values: frozenset[str]) -> Predicate:
    get = make_getter(field)
    if "." not in field:

        def one(r: Record) -> bool:
            v = r.get(field)
            if isinstance(v, str):
                return v.lower() in values
            if v is None:
                return False
            return any(_lower(x) in values for x in (v if isinstance(v, list) else [v]))

        return one
    return lambda r: any(_lower(v) in values for v in get(r))


def _plain_eq(node: Any) -> tuple[str, str] | None:
    """(field, lowercased value) when node is ``field = plain case-insensitive string``."""
    if (
        isinstance(node, ConditionFieldEqualsValueExpression)
        and isinstance(node.value, SigmaString)
        and not isinstance(node.value, SigmaCasedString)
    ):
        p = _plain(node.value)
        if p is not None:
            return node.field, p.lower()
    return None


def compile_tree(node: Any) -> Predicate:
    if isinstance(node, ConditionFieldEqualsValueExpression):
        return _leaf(node)
    if isinstance(node, ConditionValueExpression):
        raise UnsupportedRule("keyword (field-less) detection values")
    if isinstance(node, ConditionNOT):
        inner = compile_tree(node.args[0])
        return lambda r: not inner(r)
    if isinstance(node, ConditionOR):
        # Many values of one field (a Sigma list) become one set lookup.
        groups: dict[str, set[str]] = {}
        rest: list[Any] = []
        for arg in node.args:
            eq = _plain_eq(arg)
            if eq is None:
                rest.append(arg)
            else:
                groups.setdefault(eq[0], set()).add(eq[1])
        preds = [_in_set(f, frozenset(vs)) for f, vs in groups.items()]
        preds += [compile_tree(a) for a in rest]
        if len(preds) == 1:
            return preds[0]
        if len(preds) == 2:
            a, b = preds
            return lambda r: a(r) or b(r)
        tup = tuple(preds)
        return lambda r: any(p(r) for p in tup)
    if isinstance(node, ConditionAND):
        preds = [compile_tree(a) for a in node.args]
        if len(preds) == 1:
            return preds[0]
        if len(preds) == 2:
            a, b = preds
            return lambda r: a(r) and b(r)
        tup = tuple(preds)
        return lambda r: all(p(r) for p in tup)
    raise UnsupportedRule(f"condition element {type(node).__name__}")


def pinned_values(node: Any, field: str) -> frozenset[str] | None:
    """Lowercased values ``field`` must equal for the tree to match, or None if unconstrained.

    Used to index rules by eventName / eventSource so a record only meets the rules that can
    possibly match it.
    """
    eq = _plain_eq(node)
    if eq is not None:
        return frozenset({eq[1]}) if eq[0] == field else None
    if isinstance(node, ConditionOR):
        out: set[str] = set()
        for arg in node.args:
            sub = pinned_values(arg, field)
            if sub is None:
                return None
            out |= sub
        return frozenset(out)
    if isinstance(node, ConditionAND):
        best: frozenset[str] | None = None
        for arg in node.args:
            sub = pinned_values(arg, field)
            if sub is not None and (best is None or len(sub) < len(best)):
                best = sub
        return best
    return None


# --------------------------------------------------------------------------- rule level


def _check_modifiers(det: SigmaDetection | SigmaDetectionItem, name: str) -> None:
    if isinstance(det, SigmaDetection):
        for item in det.detection_items:
            _check_modifiers(item, name)
        return
    for mod in det.modifiers:
        ident = reverse_modifier_mapping.get(mod.__name__, mod.__name__)
        if ident not in SUPPORTED_MODIFIERS:
            field = det.field or "<keyword>"
            raise UnsupportedRule(f"modifier '{ident}' on field '{field}' in detection '{name}'")


def compile_rule(rule: SigmaRule) -> tuple[Predicate, Any]:
    """(predicate, resolved condition tree) for a rule. Raises UnsupportedRule."""
    if "timeframe" in rule.detection.detections or "timeframe" in rule.custom_attributes:
        raise UnsupportedRule("'timeframe' (aggregation over time)")
    for name, det in rule.detection.detections.items():
        _check_modifiers(det, name)
    if len(rule.detection.parsed_condition) != 1:
        raise UnsupportedRule("more than one condition (use 'or' in a single condition)")
    tree = rule.detection.parsed_condition[0].parse()
    if tree is None:
        raise UnsupportedRule("empty condition")
    return compile_tree(tree), tree
