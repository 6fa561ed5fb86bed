"""The detector: rules over one record at a time, deduplicated into alerts.

One alert per (rule, event key): the event key is :func:`aggregator.ingest.dedupe.record_key_text`,
equal for the two copies of one event delivered by an organization trail and an account trail,
so a duplicate delivery never raises a second alert.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

from aggregator.detect.alerts import Alert, ArchivePointer, actor_of
from aggregator.detect.rules import Rule, RuleSet
from aggregator.ingest.dedupe import record_key_text
from aggregator.normalize.derive import DERIVED_KEY, with_derived


class AlertLog(Protocol):
    """Remembers raised alerts. ``record`` returns those of ``alerts`` not raised before (one per
    rule x event key) and remembers them; :class:`~aggregator.detect.store.DetectStore` also
    queues them for delivery in the same transaction."""

    def record(self, alerts: Sequence[Alert]) -> list[Alert]: ...


class MemoryAlertLog:
    """In-process memory of raised alerts (the CLI; tests). Alerts are rare, so a set is fine."""

    def __init__(self) -> None:
        self._seen: set[tuple[str, str]] = set()

    def record(self, alerts: Sequence[Alert]) -> list[Alert]:
        out = []
        for a in alerts:
            k = (a.rule_id, a.event_key)
            if k not in self._seen:
                self._seen.add(k)
                out.append(a)
        return out


def _s(v: Any) -> str | None:
    return v if isinstance(v, str) and v else None


def alert_for(
    rule: Rule,
    record: dict[str, Any],
    key: str,
    now: float,
    archive: ArchivePointer | None = None,
    *,
    derived: dict[str, Any] | None = None,
) -> Alert:
    """The alert ``rule`` raises on ``record``; ``derived`` (the record's derived fields) is kept
    under ``extra["ctagg"]``."""
    return Alert(
        rule_id=rule.id,
        title=rule.title,
        severity=rule.level,
        description=rule.description,
        cis=rule.cis,
        attack=rule.attack,
        event_key=key,
        event_id=_s(record.get("eventID")),
        event_name=_s(record.get("eventName")),
        event_source=_s(record.get("eventSource")),
        event_time=_s(record.get("eventTime")),
        account_id=_s(record.get("recipientAccountId"))
        or _s((record.get("userIdentity") or {}).get("accountId")),
        region=_s(record.get("awsRegion")),
        actor=actor_of(record),
        source_ip=_s(record.get("sourceIPAddress")),
        detected_at=now,
        archive=archive,
        request_id=_s(record.get("requestID")),
        extra={DERIVED_KEY: dict(derived)} if derived else {},
    )


class Detector:
    def __init__(
        self,
        rules: RuleSet | Iterable[Rule],
        log: AlertLog | None = None,
        clock: Callable[[], float] = time.time,
        *,
        redact: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    ) -> None:
        """``redact``: the configured redaction (``aggregator.normalize.redactor_for``),
        applied to what an alert copies from its record."""
        self.redact = redact
        self.rules = rules if isinstance(rules, RuleSet) else RuleSet(list(rules))
        self.log: AlertLog = log if log is not None else MemoryAlertLog()
        self.clock = clock
        self.records = 0
        self.matches = 0
        self.duplicates = 0

    def detect(self, record: dict[str, Any], archive: ArchivePointer | None = None) -> list[Alert]:
        """Alerts this record raises that were not raised before (empty for most records)."""
        self.records += 1
        view = with_derived(record)
        hits = self.rules.match_view(view)
        if not hits:
            return []
        key = record_key_text(record)
        now = self.clock()
        self.matches += len(hits)
        derived = view.get(DERIVED_KEY) if view is not record else None
        # Rules see the whole record; what an alert carries out of ctagg (actor, source IP,
        # derived fields) comes from the redacted one, as forwarded events do.
        shown = self.redact(record) if self.redact is not None else record
        if shown is not record:
            again = with_derived(shown)
            derived = again.get(DERIVED_KEY) if again is not shown else None
        out = self.log.record(
            [alert_for(r, shown, key, now, archive, derived=derived) for r in hits]
        )
        self.duplicates += len(hits) - len(out)
        return out
