"""Rate anomalies, CloudTrail-Insights-like: an hour whose count is far above its own past.

For every account we count, per hour of event time:

* ``event:<eventName>``  calls of each API
* ``calls`` / ``errors``  all calls and calls with an ``errorCode`` (for the error rate)

Counts are added to SQLite (``detect_counts``) as records are observed. When an hour is over,
:meth:`RateAnomalies.evaluate` compares each (account, metric) count for that hour with the
trailing ``baseline_hours`` before it (absent hours count as 0), using robust statistics:

    threshold = median + k * max(1.4826 * MAD, sqrt(median), 1)

and raises an alert when the count is above the threshold *and* at least ``min_count``. The
``sqrt(median)`` floor is the Poisson spread of a steady count, so a perfectly flat series does
not alert on a tiny bump. The error rate (errors / calls) uses the same rule over hourly rates
(floor 0.02) and needs ``min_count`` errors. ``k`` comes from the sensitivity: high 3, medium
4.5, low 6. An account is only judged once it has ``min_history_hours`` of history.

Deterministic: time is always passed in.
"""

from __future__ import annotations

import math
import statistics
import uuid
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from aggregator.detect.alerts import Alert
from aggregator.detect.store import DetectStore
from aggregator.ingest.dedupe import event_epoch

Sensitivity = Literal["low", "medium", "high"]
K_BY_SENSITIVITY: dict[str, float] = {"low": 6.0, "medium": 4.5, "high": 3.0}
MAD_SCALE = 1.4826

_NS = uuid.UUID("5b0c3f1e-6a43-4c1e-9d59-0c7a1d2f9e10")
EVENT_RATE_RULE_ID = str(uuid.uuid5(_NS, "anomaly_event_rate"))
ERROR_RATE_RULE_ID = str(uuid.uuid5(_NS, "anomaly_error_rate"))
_META_LAST = "anomaly.last_hour"


@dataclass(frozen=True)
class Baseline:
    median: float
    mad: float
    threshold: float


def baseline(values: list[float], k: float, floor: float) -> Baseline:
    med = statistics.median(values) if values else 0.0
    mad = statistics.median([abs(v - med) for v in values]) if values else 0.0
    spread = max(MAD_SCALE * mad, math.sqrt(med) if floor >= 1 else 0.0, floor)
    return Baseline(med, mad, med + k * spread)


def _iso_hour(hour: int) -> str:
    return datetime.fromtimestamp(hour * 3600, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class RateAnomalies:
    def __init__(
        self,
        store: DetectStore,
        *,
        sensitivity: Sensitivity = "medium",
        min_count: int = 20,
        baseline_hours: int = 168,
        min_history_hours: int = 24,
        max_hours_per_run: int = 48,
    ) -> None:
        self.store = store
        self.k = K_BY_SENSITIVITY[sensitivity]
        self.min_count = min_count
        self.baseline_hours = baseline_hours
        self.min_history_hours = min_history_hours
        self.max_hours_per_run = max_hours_per_run
        self._pending: Counter[tuple[str, str, int]] = Counter()

    # ------------------------------------------------------------ counting

    def observe(self, record: dict[str, Any]) -> None:
        account = record.get("recipientAccountId")
        if not isinstance(account, str) or not account:
            ui = record.get("userIdentity")
            account = ui.get("accountId") if isinstance(ui, dict) else None
        epoch = event_epoch(record, -1)
        if not isinstance(account, str) or not account or epoch < 0:
            return
        hour = epoch // 3600
        name = record.get("eventName")
        p = self._pending
        if isinstance(name, str) and name:
            p[(account, "event:" + name, hour)] += 1
        p[(account, "calls", hour)] += 1
        if record.get("errorCode"):
            p[(account, "errors", hour)] += 1

    def observe_many(self, records: Iterable[dict[str, Any]]) -> None:
        for r in records:
            self.observe(r)

    def flush(self) -> int:
        """Write pending counts to SQLite; returns rows written."""
        rows = [(a, m, h, n) for (a, m, h), n in self._pending.items()]
        if rows:
            self.store.add_counts(rows)
        self._pending.clear()
        return len(rows)

    # ------------------------------------------------------------ judging

    def evaluate(self, now: float) -> list[Alert]:
        """Judge every hour completed since the last call (at most ``max_hours_per_run``)."""
        self.flush()
        closed = int(now // 3600) - 1
        last_text = self.store.get_meta(_META_LAST)
        start = closed if last_text is None else int(last_text) + 1
        start = max(start, closed - self.max_hours_per_run + 1)
        out: list[Alert] = []
        for hour in range(start, closed + 1):
            out += self.evaluate_hour(hour, now)
        if start <= closed:
            self.store.set_meta(_META_LAST, str(closed))
        return out

    def evaluate_hour(self, hour: int, now: float) -> list[Alert]:
        rows = self.store.counts_at(hour)
        by_account: dict[str, dict[str, int]] = {}
        for account, metric, n in rows:
            by_account.setdefault(account, {})[metric] = n
        out: list[Alert] = []
        for account, metrics in by_account.items():
            first = self.store.first_hour(account)
            if first is None or hour - first < self.min_history_hours:
                continue
            lo, hi = hour - self.baseline_hours, hour - 1
            for metric, n in metrics.items():
                if not metric.startswith("event:") or n < self.min_count:
                    continue
                got = self.store.series(account, metric, lo, hi)
                values = [float(got.get(h, 0)) for h in range(lo, hi + 1)]
                b = baseline(values, self.k, 1.0)
                if n > b.threshold:
                    alert = self._alert(
                        EVENT_RATE_RULE_ID,
                        title=f"Unusual call rate of {metric[6:]}",
                        account=account,
                        metric=metric,
                        hour=hour,
                        now=now,
                        details={
                            "count": n,
                            "median": b.median,
                            "mad": b.mad,
                            "threshold": round(b.threshold, 2),
                        },
                        event_name=metric[6:],
                    )
                    out.append(alert)
            errors = metrics.get("errors", 0)
            calls = metrics.get("calls", 0)
            if errors >= self.min_count and calls:
                err_s = self.store.series(account, "errors", lo, hi)
                call_s = self.store.series(account, "calls", lo, hi)
                rates = [err_s.get(h, 0) / c for h, c in call_s.items() if c]
                b = baseline(rates, self.k, 0.02)
                rate = errors / calls
                if rate > b.threshold:
                    alert = self._alert(
                        ERROR_RATE_RULE_ID,
                        title="Unusual API error rate",
                        account=account,
                        metric="error_rate",
                        hour=hour,
                        now=now,
                        details={
                            "errors": errors,
                            "calls": calls,
                            "rate": round(rate, 4),
                            "median": round(b.median, 4),
                            "mad": round(b.mad, 4),
                            "threshold": round(b.threshold, 4),
                        },
                    )
                    out.append(alert)
        return self.store.record(out)

    def _alert(
        self,
        rule_id: str,
        *,
        title: str,
        account: str,
        metric: str,
        hour: int,
        now: float,
        details: dict[str, Any],
        event_name: str | None = None,
    ) -> Alert:
        key = f"{account}:{metric}:{hour}"
        details = {"metric": metric, "hour_start": _iso_hour(hour), **details}
        return Alert(
            rule_id=rule_id,
            title=title,
            severity="medium",
            description=(
                "An hourly count far above the account's trailing baseline (median + k x MAD)."
            ),
            cis=(),
            attack=(),
            event_key=key,
            event_id=None,
            event_name=event_name,
            event_source=None,
            event_time=_iso_hour(hour),
            account_id=account,
            region=None,
            actor=None,
            source_ip=None,
            detected_at=now,
            kind="anomaly",
            extra=details,
        )

    def prune(self, now: float) -> int:
        """Forget counts older than the baseline needs."""
        return self.store.prune_counts(int(now // 3600) - self.baseline_hours - 2)
