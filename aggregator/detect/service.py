"""Detection wired for the running service: rules, anomalies, persisted dedupe, outbox delivery.

The pipeline calls, per central object written (or per forwarded batch):

    alerts = service.process(records, archive=ArchivePointer(bucket, key))

once an hour (any cadence works; each closed hour is judged once):

    service.hourly(now)

and, on its own cadence, ``await service.deliver(now)``, which sends queued alerts to every
sink and keeps the ones that failed for a later attempt (exponential backoff, no limit: an
alert is never dropped silently; ``detect.alerts_failed`` says when a sink keeps failing).

Sinks are anything implementing :class:`~aggregator.detect.sinks.AlertSink`: SNS and a webhook
here; the forwarding connectors (OpenSearch / HEC / syslog) can be adapted to it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from aggregator.aws.clients import Aws
from aggregator.config import DetectSettings
from aggregator.detect.alerts import Alert, ArchivePointer
from aggregator.detect.anomaly import RateAnomalies
from aggregator.detect.engine import Detector
from aggregator.detect.rules import RuleSet, load_rules
from aggregator.detect.sinks import AlertDeliveryError, AlertSink, SnsSink, WebhookSink
from aggregator.detect.store import DetectStore
from aggregator.log import get_logger
from aggregator.state import State

log = get_logger("aggregator.detect")

BACKOFF_BASE_SECS = 30.0
BACKOFF_MAX_SECS = 3600.0
UNROUTED_REPEAT_SECS = 300.0


def sinks_from_settings(settings: DetectSettings, aws: Aws | None) -> list[AlertSink]:
    sinks: list[AlertSink] = []
    if settings.sns_topic_arn:
        if aws is None:
            raise ValueError("detect.sns_topic_arn needs AWS settings")
        sinks.append(SnsSink(aws, settings.sns_topic_arn))
    if settings.webhook_url is not None:
        sinks.append(WebhookSink(settings.webhook_url.get_secret_value()))
    return sinks


class DetectionService:
    def __init__(
        self,
        settings: DetectSettings,
        state: State,
        sinks: Sequence[AlertSink] = (),
        clock: Callable[[], float] = time.time,
        *,
        redact: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    ) -> None:
        """``redact``: the ``normalize:`` section's redaction (the daemon passes it), applied
        to what alerts copy from their events before any sink sees them."""
        self.settings = settings
        self.sinks = {s.name: s for s in sinks}
        self.store = DetectStore(state, sinks=list(self.sinks))
        rules = load_rules(
            settings.rule_dirs,
            builtin=settings.builtin_rules,
            disabled_ids=settings.disabled_rule_ids,
        )
        self.detector = Detector(RuleSet(rules), log=self.store, clock=clock, redact=redact)
        a = settings.anomaly
        self.anomalies: RateAnomalies | None = (
            RateAnomalies(
                self.store,
                sensitivity=a.sensitivity,
                min_count=a.min_count,
                baseline_hours=a.baseline_hours,
                min_history_hours=a.min_history_hours,
            )
            if a.enabled
            else None
        )
        self.clock = clock
        self._unrouted = 0  # alerts raised with no sink since the last warning
        self._unrouted_said: float | None = None
        log.info("detect.rules_loaded", count=len(rules), sinks=sorted(self.sinks))

    def _note_unrouted(self, raised: int) -> None:
        """Alerts with no sink reach nobody: say so at WARNING, at most every five minutes
        (with the count since), pointing at the settings and at ``ctagg alerts``."""
        if self.sinks or not raised:
            return
        self._unrouted += raised
        now = time.monotonic()
        if self._unrouted_said is not None and now - self._unrouted_said < UNROUTED_REPEAT_SECS:
            return
        log.warning(
            "detect.alerts_unrouted",
            count=self._unrouted,
            reason="no alert sink is configured: the alerts are stored and listed by "
            "'ctagg alerts CONFIG'; send them with detect.sns_topic_arn, detect.webhook_url or "
            "detect.connectors",
        )
        self._unrouted, self._unrouted_said = 0, now

    @classmethod
    def from_settings(
        cls, settings: DetectSettings, state: State, aws: Aws | None = None
    ) -> DetectionService:
        return cls(settings, state, sinks_from_settings(settings, aws))

    def process(
        self, records: Iterable[dict[str, Any]], archive: ArchivePointer | None = None
    ) -> list[Alert]:
        """Run rules over records (and count them for anomalies); returns the new alerts."""
        out: list[Alert] = []
        n = 0
        for rec in records:
            n += 1
            out += self.detector.detect(rec, archive)
            if self.anomalies is not None:
                self.anomalies.observe(rec)
        if self.anomalies is not None:
            self.anomalies.flush()
        if out:
            log.info("detect.alerts_raised", count=len(out), events=n)
            self._note_unrouted(len(out))
        return out

    def hourly(self, now: float | None = None) -> list[Alert]:
        """Judge closed hours for rate anomalies; forget old counts and alerts."""
        now = self.clock() if now is None else now
        out = self.anomalies.evaluate(now) if self.anomalies is not None else []
        if self.anomalies is not None:
            self.anomalies.prune(now)
        self.store.prune_alerts(now - self.settings.alert_window_days * 86400)
        if out:
            log.info("detect.anomalies_raised", count=len(out))
            self._note_unrouted(len(out))
        return out

    async def deliver(self, now: float | None = None, limit: int = 100) -> int:
        """Send due alerts to every sink; returns how many deliveries succeeded."""
        now = self.clock() if now is None else now
        sent = 0
        for name, sink in self.sinks.items():
            pending = self.store.due(name, now, limit)
            if not pending:
                continue
            failed: list[Alert] = []
            reason = ""
            try:
                await sink.send([p.alert for p in pending])
            except AlertDeliveryError as exc:
                failed, reason = exc.failed, exc.reason
            failed_uids = {a.uid for a in failed}
            ok = [p.alert.uid for p in pending if p.alert.uid not in failed_uids]
            self.store.delivered(name, ok)
            sent += len(ok)
            for p in pending:
                if p.alert.uid in failed_uids:
                    delay = min(BACKOFF_BASE_SECS * 2**p.attempts, BACKOFF_MAX_SECS)
                    self.store.failed(name, [p.alert.uid], reason, now + delay)
        return sent

    async def close(self) -> None:
        for sink in self.sinks.values():
            await sink.close()
