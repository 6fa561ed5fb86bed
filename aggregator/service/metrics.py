"""Every Prometheus metric of ctagg, in one place, on one registry object passed around.

Names follow Prometheus conventions: ``ctagg_`` prefix, ``_total`` for counters, base units
(``_seconds``). Per account × region series carry ``account_id`` and ``region`` labels (the same
field names as the log vocabulary). Nothing here registers on prometheus-client's global
registry, so tests and embedded uses never collide.

Freshness gauges (age of the newest event / object per account × region) are recomputed from
the state (:meth:`Metrics.refresh_from_state`) after each cycle and on every scrape, so a stuck
process shows growing ages instead of frozen ones.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from aggregator import __version__

CONTENT_TYPE = CONTENT_TYPE_LATEST

# Cycle durations: seconds to an hour.
DURATION_BUCKETS = (0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600, float("inf"))


def parse_event_time(value: str | None) -> float | None:
    """Epoch seconds of a CloudTrail eventTime (``2024-05-01T12:00:00Z``), None if unparsable."""
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


class FreshnessCollector(Collector):
    """Per account × region gauges read from the state on every collect: ages grow while a
    stuck process is scraped, accounts that leave the state leave the output, and no gauge
    children are kept in memory (tens of thousands in a large organization)."""

    def __init__(self) -> None:
        self.state: Any = None
        self.now: float | None = None

    def describe(self) -> Iterator[Metric]:
        yield from self._families()

    def _families(self) -> tuple[GaugeMetricFamily, ...]:
        ar = ["account_id", "region"]
        return (
            GaugeMetricFamily(
                "ctagg_newest_event_age_seconds",
                "Seconds between now and the newest archived eventTime of this account and region.",
                labels=ar,
            ),
            GaugeMetricFamily(
                "ctagg_newest_object_age_seconds",
                "Seconds since the newest source object of this account and region was archived.",
                labels=ar,
            ),
            GaugeMetricFamily(
                "ctagg_sources_failing",
                "Sources of this account and region whose last attempt failed.",
                labels=ar,
            ),
            GaugeMetricFamily(
                "ctagg_quarantine_objects",
                "Source objects in quarantine, by status (held, retry).",
                labels=["status"],
            ),
        )

    def collect(self) -> Iterator[Metric]:
        event_age, object_age, failing, quarantine = self._families()
        state = self.state
        rows: list[tuple[Any, ...]] = []
        counts: dict[str, int] = {}
        if state is not None:
            try:
                rows, counts = list(state.sources.freshness()), state.quarantine.counts()
            except Exception:  # closed at shutdown, or busy: serve the rest of the metrics
                state = None
        if state is not None:
            now = time.time() if self.now is None else self.now
            for account_id, region, newest_event, last_object_at, errors in rows:
                t = parse_event_time(newest_event)
                if t is not None:
                    event_age.add_metric([account_id, region], max(0.0, now - t))
                if last_object_at:
                    object_age.add_metric(
                        [account_id, region], max(0.0, now - float(last_object_at))
                    )
                failing.add_metric([account_id, region], int(errors or 0))
            for status, n in sorted({"held": 0, "retry": 0, **counts}.items()):
                quarantine.add_metric([status], n)
        yield from (event_age, object_age, failing, quarantine)


class ForwardCollector(Collector):
    """Per connector series read from the forwarder's lanes on every collect (live: nothing
    is sampled on a timer). Counters count since the process started, from the lanes' commits;
    the backlog is read from the state."""

    def __init__(self) -> None:
        self.forwarder: Any = None
        self.now: float | None = None

    def describe(self) -> Iterator[Metric]:
        gauges, counters = self._families()
        yield from gauges
        yield from counters

    def _families(self) -> tuple[list[GaugeMetricFamily], list[CounterMetricFamily]]:
        c = ["connector"]
        gauges = [
            GaugeMetricFamily(
                "ctagg_forward_backlog_objects",
                "Central objects written but not yet acknowledged by this connector.",
                labels=c,
            ),
            GaugeMetricFamily(
                "ctagg_forward_up",
                "1 when the connector delivers (or has nothing to deliver); 0 when it is fatal "
                "or has failed to deliver for longer than forward.warn_after_secs.",
                labels=c,
            ),
            GaugeMetricFamily(
                "ctagg_forward_state",
                "1 for the connector's current state (ok, failing, fatal).",
                labels=["connector", "state"],
            ),
            GaugeMetricFamily(
                "ctagg_forward_seconds_since_last_delivery",
                "Seconds since the sink last acknowledged an event (since ctagg started when "
                "it has not yet); alert on it together with a backlog above 0.",
                labels=c,
            ),
            GaugeMetricFamily(
                "ctagg_forward_holding_ingest",
                "1 while this connector's full backlog pauses collection (backpressure).",
                labels=c,
            ),
        ]
        counters = [
            CounterMetricFamily(
                "ctagg_forward_delivered", "Events acknowledged by a sink.", labels=c
            ),
            CounterMetricFamily(
                "ctagg_forward_retried",
                "Events a sink asked to retry (transient failures).",
                labels=c,
            ),
            CounterMetricFamily(
                "ctagg_forward_rejected",
                "Events a sink rejected permanently (sent to the dead-letter store).",
                labels=c,
            ),
            CounterMetricFamily(
                "ctagg_forward_filtered",
                "Events a connector's include / exclude conditions kept from its sink.",
                labels=c,
            ),
            CounterMetricFamily(
                "ctagg_forward_resent",
                "Events sent again by a connector itself after a broken connection (syslog's "
                "unconfirmed tail): possible duplicates at the receiver.",
                labels=c,
            ),
            CounterMetricFamily(
                "ctagg_forward_objects_modified",
                "Central objects refused because their bytes no longer match the SHA-256 the "
                "ledger recorded (none of their events sent; a dead letter each).",
                labels=c,
            ),
        ]
        return gauges, counters

    def collect(self) -> Iterator[Metric]:
        gauges, counters = self._families()
        fwd = self.forwarder
        if fwd is not None:
            self._fill(fwd, gauges, counters)
        yield from gauges
        yield from counters

    def _fill(
        self, fwd: Any, gauges: list[GaugeMetricFamily], counters: list[CounterMetricFamily]
    ) -> None:
        backlog, up, state, since, holding = gauges
        delivered, retried, rejected, filtered, resent, modified = counters
        now = time.time() if self.now is None else self.now
        paused = set(getattr(fwd, "paused_by", ()))
        for name, lane in list(fwd.lanes.items()):
            st = lane.status
            # closed at shutdown, or busy: serve the rest of the metrics
            with contextlib.suppress(Exception):
                backlog.add_metric([name], fwd.store.backlog(name))
            up.add_metric([name], 1 if st.up else 0)
            for s in ("ok", "failing", "fatal"):
                state.add_metric([name, s], 1 if st.state == s else 0)
            since.add_metric([name], max(0.0, now - (st.last_delivered_at or st.started_at)))
            holding.add_metric([name], 1 if name in paused else 0)
            delivered.add_metric([name], st.delivered)
            retried.add_metric([name], st.retries)
            rejected.add_metric([name], st.rejected)
            filtered.add_metric([name], st.filtered)
            resent.add_metric([name], int(getattr(lane.connector, "resent_events", 0)))
            modified.add_metric([name], st.modified_objects)


class Metrics:
    """All metric objects. ``Metrics()`` makes its own :class:`CollectorRegistry`."""

    def set_shard(
        self, index: int, count: int, slots: int, holds: Callable[[], bool] | None = None
    ) -> None:
        """Which shard this process is (1 on ``ctagg_shard_info{shard, count}``), how many
        slots it owns and, read at each scrape, whether it holds them (its writer marker)."""
        self._shard = str(index)
        self.shard_info.labels(self._shard, str(count)).set(1)
        self.shard_slots.labels(self._shard).set(slots)
        if holds is not None:
            self.shard_holds.labels(self._shard).set_function(lambda: float(holds()))

    def set_shard_pairs(self, pairs: int) -> None:
        """The (account, region) pairs of this shard's slots in the last discovery."""
        self.shard_pairs.labels(self._shard).set(pairs)

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        # No *_created series: they double every counter's output for no use in alerting.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        ar = ("account_id", "region")

        self.build_info = Gauge(
            "ctagg_build_info", "Version of the running ctagg.", ["version"], registry=r
        )
        self.build_info.labels(__version__).set(1)
        self.shard_info = Gauge(
            "ctagg_shard_info",
            "This process's shard of a sharded installation (shard index, shard count).",
            ["shard", "count"],
            registry=r,
        )
        # one series per process, labelled by its shard: never one per slot (a slot's pairs
        # are in the per (account, region) series, whose owner is the pod that reports them)
        self._shard = "0"
        self.shard_slots = Gauge(
            "ctagg_shard_slots",
            "Slots this shard owns (all of shard.slots for one shard).",
            ["shard"],
            registry=r,
        )
        self.shard_pairs = Gauge(
            "ctagg_shard_pairs",
            "(account, region) pairs in this shard's slots at the last discovery.",
            ["shard"],
            registry=r,
        )
        self.shard_holds = Gauge(
            "ctagg_shard_holds_slots",
            "1 while this shard holds its slots (it wrote its writer marker at the latest cycle "
            "start and no other state or layout refused it since), else 0.",
            ["shard"],
            registry=r,
        )

        # ---- freshness, per account x region: computed from the state at scrape time
        self.freshness = FreshnessCollector()
        r.register(self.freshness)

        # ---- ingest counters, per account x region
        self.objects = Counter("ctagg_objects_total", "Source objects archived.", ar, registry=r)
        self.events = Counter(
            "ctagg_events_total", "Events written to the central archive.", ar, registry=r
        )
        self.duplicates = Counter(
            "ctagg_duplicates_total", "Events dropped as already archived.", ar, registry=r
        )
        self.quarantined = Counter(
            "ctagg_quarantined_total", "Source objects put into quarantine.", ar, registry=r
        )
        self.assume_role_failures = Counter(
            "ctagg_assume_role_failures_total",
            "Failed role assumptions into member accounts.",
            ["account_id"],
            registry=r,
        )

        # ---- jobs and cycles
        self.job_duration = Histogram(
            "ctagg_job_duration_seconds",
            "Duration of one run of a scheduled job (ingest cycle, discovery, ...).",
            ["job_name"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.job_runs = Counter(
            "ctagg_job_runs_total",
            "Runs of a scheduled job by outcome (ok, error, skipped).",
            ["job_name", "outcome"],
            registry=r,
        )
        self.job_last_success = Gauge(
            "ctagg_job_last_success_timestamp_seconds",
            "Unix time the job last finished without error.",
            ["job_name"],
            registry=r,
        )
        self.discovered_accounts = Gauge(
            "ctagg_discovered_accounts", "Accounts in the last discovery.", registry=r
        )
        self.discovered_sources = Gauge(
            "ctagg_discovered_sources", "Log prefixes (sources) in the last discovery.", registry=r
        )
        self.discovery_failures = Gauge(
            "ctagg_discovery_account_failures",
            "Accounts discovery could not fully read, by stage.",
            ["stage"],
            registry=r,
        )

        self.ingest_paused = Gauge(
            "ctagg_ingest_paused",
            "1 while collection is paused because a sink's backlog is full (backpressure).",
            registry=r,
        )
        self.ingest_pauses = Counter(
            "ctagg_ingest_pauses_total",
            "Times collection paused because a sink's backlog was full.",
            registry=r,
        )

        # ---- the archive as the truth (aggregator/ingest/truth.py)
        self.readback_objects = Counter(
            "ctagg_readback_objects_total",
            "Central objects read back from the archive to answer what the window could not.",
            registry=r,
        )
        self.readback_days = Counter(
            "ctagg_readback_days_total", "Day prefixes of the archive read back.", registry=r
        )
        self.readback_deferred = Counter(
            "ctagg_readback_deferred_total",
            "Source objects left for a later cycle: the read-back budget "
            "(dedupe.readback_max_objects) was spent.",
            registry=r,
        )
        self.intents_settled = Counter(
            "ctagg_intents_settled_total",
            "Central PUTs found without their commit and settled from the archive.",
            registry=r,
        )
        self.state_behind_archive = Gauge(
            "ctagg_state_behind_archive",
            "1 when the last cycle found an empty state beside a non-empty archive (a lost or "
            "new state file): what the archive holds is read back, never archived twice.",
            registry=r,
        )

        # ---- hint mode (collect.notifications, aggregator/ingest/hints.py)
        self.hint_messages = Counter(
            "ctagg_hint_messages_total",
            "SQS hint messages received, by what became of them (deleted; left: delivered "
            "again, in the end to the queue's dead-letter queue).",
            ["outcome"],
            registry=r,
        )
        self.hints_unparseable = Counter(
            "ctagg_hints_unparseable_total",
            "Hint messages that are no S3, SNS or EventBridge notification (deleted).",
            registry=r,
        )
        self.hints = Counter(
            "ctagg_hints_total",
            "Object keys named by hint messages, by outcome (queued, handled_before, ignored, "
            "forwarded, foreign_dropped).",
            ["outcome"],
            registry=r,
        )
        self.relists = Counter(
            "ctagg_relists_total",
            "Full listings of every source run in hint mode (every relist_interval_secs).",
            registry=r,
        )

        self.snapshots = Counter(
            "ctagg_snapshots_total",
            "State snapshots for a resize (shard.snapshots), by outcome (published, failed).",
            ["outcome"],
            registry=r,
        )
        self.snapshot_last_success = Gauge(
            "ctagg_snapshot_last_success_timestamp_seconds",
            "When this shard's last state snapshot was uploaded (Unix time).",
            registry=r,
        )
        self.snapshot_bytes = Gauge(
            "ctagg_snapshot_bytes",
            "The compressed size of this shard's last state snapshot.",
            registry=r,
        )

        # ---- forwarding, per connector: read from the running lanes at scrape time
        self.forward = ForwardCollector()
        r.register(self.forward)

        # ---- retention
        self.retention_deleted = Counter(
            "ctagg_retention_deleted_objects_total",
            "Central archive objects (versions) deleted by retention.",
            registry=r,
        )
        self.retention_locked = Counter(
            "ctagg_retention_locked_objects_total",
            "Expired central objects skipped because S3 Object Lock protects them.",
            registry=r,
        )
        self.retention_pruned = Counter(
            "ctagg_retention_pruned_rows_total",
            "State rows pruned by retention, by table.",
            ["table"],
            registry=r,
        )

        # ---- detection (the daemon's ledger follower)
        self.detect_alerts = Counter(
            "ctagg_detect_alerts_total",
            "Alerts raised, by kind (rule, anomaly); each rule x event key alerts once.",
            ["kind"],
            registry=r,
        )
        self.detect_backlog = Gauge(
            "ctagg_detect_backlog_objects",
            "Central objects (ledger rows) written but not yet scanned by detection.",
            registry=r,
        )
        self.detect_delivered = Counter(
            "ctagg_detect_alerts_delivered_total",
            "Alert deliveries acknowledged by an alert sink (one per alert and sink).",
            registry=r,
        )
        self.detect_outbox = Gauge(
            "ctagg_detect_outbox_alerts",
            "Alert deliveries queued (not yet acknowledged), over all alert sinks.",
            registry=r,
        )

        # ---- reconcile (the daemon's daily check of the archive against the state)
        self.reconcile_findings = Gauge(
            "ctagg_reconcile_findings",
            "Findings of the last reconcile run, by kind (unknown_objects, missing_objects, "
            "sha_mismatch, duplicate_events, outside_layout, unreadable).",
            ["kind"],
            registry=r,
        )
        self.reconcile_last_run = Gauge(
            "ctagg_reconcile_last_run_timestamp_seconds",
            "Unix time the last reconcile run finished.",
            registry=r,
        )

    # ------------------------------------------------------------------ recording helpers

    def reconcile_done(self, counts: dict[str, int], now: float) -> None:
        for kind, n in counts.items():
            self.reconcile_findings.labels(kind).set(n)
        self.reconcile_last_run.set(now)

    def object_archived(
        self, account_id: str, region: str, *, events: int, duplicates: int = 0
    ) -> None:
        self.objects.labels(account_id, region).inc()
        if events:
            self.events.labels(account_id, region).inc(events)
        if duplicates:
            self.duplicates.labels(account_id, region).inc(duplicates)

    def cycle_truth(self, report: Any) -> None:
        """The read-back and settlement counts of one ingest cycle (its CycleReport)."""
        self.readback_objects.inc(report.readback_objects)
        self.readback_days.inc(report.readback_days)
        self.readback_deferred.inc(report.readback_deferred)
        self.intents_settled.inc(report.intents_settled)
        self.state_behind_archive.set(1 if report.behind_archive else 0)

    def cycle_hints(self, report: Any) -> None:
        """The hint counts of one ingest cycle (nothing when hint mode is off)."""
        if getattr(report, "relisted", None) is None:
            return
        self.hint_messages.labels("deleted").inc(report.hint_messages_deleted)
        self.hint_messages.labels("left").inc(report.hint_messages_left)
        self.hints_unparseable.inc(report.hints_unparseable)
        for outcome in ("queued", "handled_before", "ignored", "forwarded", "foreign_dropped"):
            self.hints.labels(outcome).inc(getattr(report, f"hints_{outcome}"))
        if report.relisted:
            self.relists.inc()

    def snapshot(self, size: int | None, now: float) -> None:
        """A snapshot uploaded (``size`` its bytes), or one that failed (``size`` None)."""
        if size is None:
            self.snapshots.labels("failed").inc()
            return
        self.snapshots.labels("published").inc()
        self.snapshot_last_success.set(now)
        self.snapshot_bytes.set(size)

    def object_quarantined(self, account_id: str, region: str) -> None:
        self.quarantined.labels(account_id, region).inc()

    def ingest_pause(self, paused: bool) -> None:
        self.ingest_paused.set(1 if paused else 0)
        if paused:
            self.ingest_pauses.inc()

    def assume_role_failed(self, account_id: str) -> None:
        self.assume_role_failures.labels(account_id).inc()

    def job_finished(self, job: str, outcome: str, duration_secs: float, now: float) -> None:
        self.job_runs.labels(job, outcome).inc()
        if outcome != "skipped":
            self.job_duration.labels(job).observe(duration_secs)
        if outcome == "ok":
            self.job_last_success.labels(job).set(now)

    def detection(
        self,
        *,
        rule_alerts: int = 0,
        anomaly_alerts: int = 0,
        delivered: int = 0,
        backlog: int | None = None,
        outbox: int | None = None,
    ) -> None:
        self.detect_alerts.labels("rule").inc(rule_alerts)
        self.detect_alerts.labels("anomaly").inc(anomaly_alerts)
        self.detect_delivered.inc(delivered)
        if backlog is not None:
            self.detect_backlog.set(backlog)
        if outbox is not None:
            self.detect_outbox.set(outbox)

    def set_inventory(
        self, accounts: int, sources: int, failures_by_stage: dict[str, int] | None = None
    ) -> None:
        self.discovered_accounts.set(accounts)
        self.discovered_sources.set(sources)
        self.discovery_failures.clear()
        for stage, n in (failures_by_stage or {}).items():
            self.discovery_failures.labels(stage).set(n)

    # ------------------------------------------------------------------ from state

    def refresh_from_state(self, state: Any, now: float | None = None) -> None:
        """Serve the per account × region gauges from ``state`` (read at each scrape, with the
        time of the scrape, or the fixed ``now`` given here)."""
        self.freshness.state = state
        self.freshness.now = now

    # ------------------------------------------------------------------ exposition

    def exposition(self, before: Callable[[], None] | None = None) -> bytes:
        """The text format for ``/metrics``; ``before`` refreshes gauges first."""
        if before is not None:
            before()
        return bytes(generate_latest(self.registry))
