"""Load Sigma rule files (the built-in pack plus users' directories) into an indexed RuleSet.

A rule file holds one Sigma rule (or several YAML documents, one rule each) with logsource
``product: aws, service: cloudtrail``, an ``id`` (UUID) and a ``level``. Tags carry the
MITRE ATT&CK ids (``attack.t1562.008``, ``attack.defense-evasion``). The CIS AWS Foundations
Benchmark controls the built-in rules monitor are listed by rule id in ``rules/cis.json`` (SigmaHQ
conventions allow neither a custom attribute nor a ``cis`` tag namespace); users' rules may still
carry ``cis.4.3`` tags or a ``cis: ["4.3"]`` attribute (see docs/detect.md).

Rules match the record with its derived fields (:mod:`aggregator.normalize.derive`) under ``ctagg``.

Every problem of every file is collected and raised together (:class:`RuleLoadError`), each
naming its file, like config errors.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from sigma.collection import SigmaCollection
from sigma.exceptions import SigmaError
from sigma.rule import SigmaRule

from aggregator.detect.compile import Predicate, UnsupportedRule, compile_rule, pinned_values
from aggregator.normalize.derive import with_derived

LEVELS = ("informational", "low", "medium", "high", "critical")


class RuleLoadError(Exception):
    """Rules could not be loaded. ``problems`` names every file and what is wrong with it."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


@dataclass(frozen=True)
class Rule:
    id: str
    title: str
    level: str
    description: str
    path: str
    cis: tuple[str, ...]
    attack: tuple[str, ...]
    tags: tuple[str, ...]
    predicate: Predicate = field(repr=False, compare=False)
    event_names: frozenset[str] | None = None
    event_sources: frozenset[str] | None = None
    identity_types: frozenset[str] | None = None

    def matches(self, record: dict[str, Any]) -> bool:
        """Does the rule match ``record`` (its derived fields included)?"""
        return self.predicate(with_derived(record))


def builtin_rules_dir() -> Path:
    return Path(str(resources.files("aggregator") / "rules"))


def _rule_from_sigma(sr: SigmaRule, where: str) -> Rule:
    ls = sr.logsource
    if (ls.product or "").lower() != "aws" or (ls.service or "").lower() != "cloudtrail":
        raise UnsupportedRule(
            f"logsource must be product: aws, service: cloudtrail "
            f"(got product: {ls.product}, service: {ls.service})"
        )
    if sr.id is None:
        raise UnsupportedRule("missing 'id' (a UUID)")
    if sr.level is None:
        raise UnsupportedRule(f"missing 'level' (one of {', '.join(LEVELS)})")
    predicate, tree = compile_rule(sr)
    tags = tuple(str(t) for t in sr.tags)
    cis = _cis_controls(sr, where)
    attack = tuple(t.name for t in sr.tags if t.namespace == "attack")
    return Rule(
        id=str(sr.id),
        title=sr.title,
        level=str(sr.level.name).lower(),
        description=(sr.description or "").strip(),
        path=where,
        cis=cis,
        attack=attack,
        tags=tags,
        predicate=predicate,
        event_names=pinned_values(tree, "eventName"),
        event_sources=pinned_values(tree, "eventSource"),
        identity_types=pinned_values(tree, "userIdentity.type"),
    )


@cache
def pack_cis_controls() -> dict[str, tuple[str, ...]]:
    """CIS controls of the built-in rules, by rule id (``rules/cis.json``)."""
    doc = json.loads((builtin_rules_dir() / "cis.json").read_text(encoding="utf-8"))
    return {rid: tuple(entry["controls"]) for rid, entry in doc["rules"].items()}


def _cis_controls(sr: SigmaRule, where: str) -> tuple[str, ...]:
    raw = sr.custom_attributes.get("cis", [])
    values = raw if isinstance(raw, list) else [raw]
    if not all(isinstance(v, str | int | float) and not isinstance(v, bool) for v in values):
        raise UnsupportedRule(f"'cis' must be a list of control ids like \"4.3\" (got {raw!r})")
    from_attribute = [str(v) for v in values]
    from_tags = [t.name for t in sr.tags if t.namespace == "cis"]
    from_pack = list(pack_cis_controls().get(str(sr.id), ()))
    return tuple(dict.fromkeys(from_pack + from_attribute + from_tags))


def _rule_problems(sr: SigmaRule, where: str) -> list[str]:
    """Everything wrong with one parsed rule, not only the first thing: pySigma's own errors
    (collected, not raised), then ctagg's requirements (logsource, id, level, CIS ids) and,
    for a rule that has other problems, whether its detection compiles (a rule without
    problems is compiled once, by :func:`_rule_from_sigma`)."""
    problems = [str(e) for e in sr.errors]
    said = " ".join(problems).lower()
    ls = sr.logsource
    if (ls.product or "").lower() != "aws" or (ls.service or "").lower() != "cloudtrail":
        problems.append(
            "unsupported construct: logsource must be product: aws, service: cloudtrail "
            f"(got product: {ls.product}, service: {ls.service})"
        )
    if sr.id is None and "identifier" not in said:
        problems.append("unsupported construct: missing 'id' (a UUID)")
    if sr.level is None and "level" not in said:
        problems.append(f"unsupported construct: missing 'level' (one of {', '.join(LEVELS)})")
    try:
        _cis_controls(sr, where)
    except UnsupportedRule as exc:
        problems.append(f"unsupported construct: {exc}")
    if problems and not sr.errors:  # pySigma read it: its detection may have problems too
        try:
            compile_rule(sr)
        except UnsupportedRule as exc:
            problems.append(f"unsupported construct: {exc}")
        except SigmaError as exc:
            problems.append(str(exc))
    return problems


def load_rule_text(text: str, where: str) -> list[Rule]:
    """Rules from one file's text. Raises RuleLoadError naming ``where`` and every problem."""
    try:
        coll = SigmaCollection.from_yaml(text, collect_errors=True)
    except SigmaError as exc:
        raise RuleLoadError([f"{where}: {exc}"]) from None
    except Exception as exc:  # YAML errors and pySigma internals
        raise RuleLoadError([f"{where}: cannot parse: {exc}"]) from None
    out: list[Rule] = []
    problems: list[str] = []
    for item in coll.rules:
        if not isinstance(item, SigmaRule):
            problems.append(
                f"{where}: unsupported construct: {type(item).__name__} (only detection rules)"
            )
            continue
        label = f"{where} ({item.title or item.id})"
        found = _rule_problems(item, where)
        if found:
            problems += [f"{label}: {p}" for p in found]
            continue
        try:
            out.append(_rule_from_sigma(item, where))
        except UnsupportedRule as exc:
            problems.append(f"{label}: unsupported construct: {exc}")
        except SigmaError as exc:
            problems.append(f"{label}: {exc}")
    if not coll.rules:
        problems += [f"{where}: {e}" for e in getattr(coll, "errors", [])]
    if problems:
        raise RuleLoadError(problems)
    return out


def _rule_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.suffix in (".yml", ".yaml") and p.is_file())


def load_rules(
    dirs: Iterable[str | Path] = (),
    *,
    builtin: bool = True,
    disabled_ids: Iterable[str] = (),
) -> list[Rule]:
    """Every rule of the built-in pack (unless ``builtin=False``) and of ``dirs``.

    Raises RuleLoadError listing every bad file, a missing directory, or a duplicate id.
    """
    problems: list[str] = []
    paths: list[Path] = []
    if builtin:
        paths += _rule_files(builtin_rules_dir())
    for d in dirs:
        p = Path(d)
        if p.is_file():
            paths.append(p)
        elif p.is_dir():
            paths += _rule_files(p)
        else:
            problems.append(f"{p}: rule directory not found")
    rules: list[Rule] = []
    seen: dict[str, str] = {}
    for p in paths:
        try:
            text = p.read_text(encoding="utf-8")
            loaded = load_rule_text(text, str(p))
        except OSError as exc:
            problems.append(f"{p}: cannot read: {exc.strerror or exc}")
            continue
        except RuleLoadError as exc:
            problems += exc.problems
            continue
        for r in loaded:
            if r.id in seen:
                problems.append(f"{p}: duplicate rule id {r.id} (also in {seen[r.id]})")
                continue
            seen[r.id] = str(p)
            rules.append(r)
    if problems:
        raise RuleLoadError(problems)
    off = set(disabled_ids)
    return [r for r in rules if r.id not in off]


class RuleSet:
    """Rules indexed by the eventName (or else eventSource, or else userIdentity.type) they pin,
    for few tests per record."""

    def __init__(self, rules: Sequence[Rule]) -> None:
        self.rules = list(rules)
        self.by_name: dict[str, list[Rule]] = {}
        self.by_source: dict[str, list[Rule]] = {}
        self.by_identity: dict[str, list[Rule]] = {}
        self.always: list[Rule] = []
        for r in self.rules:
            if r.event_names is not None:
                for n in r.event_names:
                    self.by_name.setdefault(n, []).append(r)
            elif r.event_sources is not None:
                for s in r.event_sources:
                    self.by_source.setdefault(s, []).append(r)
            elif r.identity_types is not None:  # e.g. the root rules
                for t in r.identity_types:
                    self.by_identity.setdefault(t, []).append(r)
            else:
                self.always.append(r)
        self._empty: list[Rule] = []

    def __len__(self) -> int:
        return len(self.rules)

    def candidates(self, record: dict[str, Any]) -> list[Rule]:
        name = record.get("eventName")
        source = record.get("eventSource")
        a = self.by_name.get(name.lower(), self._empty) if isinstance(name, str) else self._empty
        b = (
            self.by_source.get(source.lower(), self._empty)
            if isinstance(source, str)
            else self._empty
        )
        c = self._empty
        if self.by_identity:
            ui = record.get("userIdentity")
            kind = ui.get("type") if isinstance(ui, dict) else None
            if isinstance(kind, str):
                c = self.by_identity.get(kind.lower(), self._empty)
        if not a and not b and not c:
            return self.always
        return [*a, *b, *c, *self.always]

    def match(self, record: dict[str, Any]) -> list[Rule]:
        """Rules matching ``record``, its derived fields included."""
        return self.match_view(with_derived(record))

    def match_view(self, view: dict[str, Any]) -> list[Rule]:
        """Rules matching a record that already carries its derived fields."""
        return [r for r in self.candidates(view) if r.predicate(view)]
