"""Completeness: per account × region × hour, the log files CloudTrail says it delivered (the
digests) against the ones we ingested (``State.handled_keys``), with the missing keys.

1. :func:`refresh_expected` validates the digests of each source not validated yet
   (signature and chain, :mod:`aggregator.digest`) and records every log file a digest with a
   valid signature lists (``digest_expected``) and each digest's outcome (``digest_results``).
2. :func:`compute` compares, hour by hour, what digests list with what ingest handled, from state
   only (no AWS): compacted day prefixes keep their key names, so old days still count.
3. :func:`queue_missing` puts every missing file in ``retry_queue`` (bucket, key, source_id,
   reason) so the next ingest cycle fetches it by key, even from a day prefix already closed;
   entries handled since are dropped.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from aggregator.aws.inventory import Source
from aggregator.integrity.digest import log_key_time
from aggregator.integrity.public_keys import PublicKeyStore
from aggregator.integrity.validator import DigestValidator
from aggregator.log import get_logger
from aggregator.state import State

log = get_logger("aggregator.completeness")

S3For = Callable[[Source], Awaitable[Any]]


def hour_of(key: str, fallback: str = "") -> str:
    """'YYYY-MM-DDTHH' of a log file from its name (the end of the 5-minute window it covers)."""
    t = log_key_time(key)
    return t.strftime("%Y-%m-%dT%H") if t else fallback


def day_prefix_of(key: str) -> str:
    return key.rsplit("/", 1)[0] + "/"


# ---------------------------------------------------------------------------- refresh


@dataclass
class RefreshReport:
    sources: int = 0
    digests_checked: int = 0
    digests_skipped: int = 0
    expected_recorded: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    not_in_any_digest: list[str] = field(default_factory=list)  # only with check_logs
    # sources with log files but no digest file at all (only with check_logs): their trail has
    # no log file validation (or its digests were removed); said once, not per log file
    without_digests: list[str] = field(default_factory=list)


async def refresh_expected(
    state: State,
    sources: Sequence[Source],
    s3_for: S3For,
    keys: PublicKeyStore,
    *,
    days: Iterable[str] | None = None,
    check_logs: bool = False,
    progress: Callable[[int, int | None], None] | None = None,
) -> RefreshReport:
    """Validate new digests under each source and record what they list; ``progress(done,
    total)`` after each source.

    ``days`` (``YYYY/MM/DD``) limits the day prefixes read; default: all. ``check_logs`` also
    reads every listed log file and checks its hash (doubles the S3 reads; ``ctagg
    validate-digests`` style)."""
    rep = RefreshReport()
    day_list = list(days) if days is not None else None
    todo = [src for src in sources if "/CloudTrail/" in src.prefix]
    for done, src in enumerate(todo):
        if progress is not None:
            progress(done, len(todo))
        rep.sources += 1
        try:
            s3 = await s3_for(src)
            validator = DigestValidator(s3, keys)
            skip = set() if check_logs else state.digests.valid_keys(src.source_id)
            report = await validator.validate(
                src.bucket, src.prefix, days=day_list, check_logs=check_logs, skip=skip
            )
            rep.digests_skipped += report.skipped
        except Exception as exc:
            rep.errors.append(f"{src.source_id}: {type(exc).__name__}: {exc}")
            log.warning(
                "completeness.refresh_failed",
                account_id=src.account_id,
                region=src.region,
                bucket=src.bucket,
                error_type=type(exc).__name__,
            )
            continue
        rep.not_in_any_digest.extend(report.not_in_any_digest)
        if report.without_digests:
            rep.without_digests.append(f"s3://{src.bucket}/{src.prefix}")
        expected_rows = []
        result_rows = []
        for res in report.digests:
            rep.statuses[res.status.value] = rep.statuses.get(res.status.value, 0) + 1
            rep.digests_checked += 1
            result_rows.append(
                (
                    src.bucket,
                    res.key,
                    src.source_id,
                    res.account_id or src.account_id,
                    res.region or src.region,
                    res.end_time,
                    res.status.value,
                    "; ".join(res.details)[:1000],
                )
            )
        for key, (hash_value, digest_key) in report.expected.items():
            expected_rows.append(
                (
                    src.bucket,
                    key,
                    src.source_id,
                    src.account_id,
                    src.region,
                    hour_of(key),
                    hash_value,
                    digest_key,
                )
            )
        state.digests.record_results(result_rows)
        state.digests.record_expected(expected_rows)
        rep.expected_recorded += len(expected_rows)
    if progress is not None:
        progress(len(todo), len(todo))
    return rep


# ---------------------------------------------------------------------------- compute


@dataclass
class HourRow:
    account_id: str
    region: str
    hour: str
    expected: int
    ingested: int
    missing: list[str]

    @property
    def complete(self) -> bool:
        return not self.missing


@dataclass
class CompletenessReport:
    since: str
    until: str
    hours: list[HourRow] = field(default_factory=list)
    pending: int = 0  # expected files too recent to count as missing yet
    # coverage: days of a stream's backfill range that no listing went through (a backfill
    # interrupted by a crash or failing LISTs), found longer than the grace ago
    unlisted_days: list[dict[str, Any]] = field(default_factory=list)

    @property
    def expected(self) -> int:
        return sum(h.expected for h in self.hours)

    @property
    def missing(self) -> list[tuple[HourRow, str]]:
        return [(h, k) for h in self.hours for k in h.missing]

    @property
    def ratio(self) -> float:
        return 1.0 if not self.expected else 1 - len(self.missing) / self.expected

    def per_account_region(self) -> dict[tuple[str, str], tuple[int, int]]:
        out: dict[tuple[str, str], tuple[int, int]] = {}
        for h in self.hours:
            e, m = out.get((h.account_id, h.region), (0, 0))
            out[(h.account_id, h.region)] = (e + h.expected, m + len(h.missing))
        return out

    def as_dict(self) -> dict[str, Any]:
        return {
            "since": self.since,
            "until": self.until,
            "expected": self.expected,
            "missing": len(self.missing),
            "pending": self.pending,
            "ratio": round(self.ratio, 6),
            "unlisted_days": self.unlisted_days,
            "hours": [asdict(h) for h in self.hours],
        }


def _hour(dt: datetime) -> str:
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H")


def compute(
    state: State,
    since: datetime,
    until: datetime,
    *,
    now: float | None = None,
    grace_secs: int = 3600,
) -> CompletenessReport:
    """Expected (digests) against handled (ingest) per account × region × hour in
    [since, until). A file counts as missing only once its hour ended ``grace_secs`` ago
    (ingest runs every few minutes; a file the digest lists now may be fetched next cycle)."""
    now = time.time() if now is None else now
    report = CompletenessReport(_hour(since), _hour(until))
    rows = state.digests.expected_between(report.since, report.until)
    handled_cache: dict[tuple[str, str], set[str]] = {}
    groups: dict[tuple[str, str, str], HourRow] = {}
    for r in rows:
        hour_end = datetime.strptime(r["hour"], "%Y-%m-%dT%H").replace(tzinfo=UTC) + timedelta(
            hours=1
        )
        if hour_end.timestamp() + grace_secs > now:
            report.pending += 1
            continue
        dp = day_prefix_of(r["key"])
        ck = (r["bucket"], dp)
        if ck not in handled_cache:
            handled_cache[ck] = state.checkpoints.handled_keys(r["bucket"], dp)
        g = groups.setdefault(
            (r["account_id"], r["region"], r["hour"]),
            HourRow(r["account_id"], r["region"], r["hour"], 0, 0, []),
        )
        g.expected += 1
        if r["key"] in handled_cache[ck]:
            g.ingested += 1
        else:
            g.missing.append(r["key"])
    report.hours = [groups[k] for k in sorted(groups)]
    report.unlisted_days = [
        {"stream": r["source_id"], "day": r["day"], "prefix": r["prefix"]}
        for r in state.checkpoints.unlisted_days()
        if float(str(r["found_at"])) + grace_secs <= now
    ]
    if report.unlisted_days:
        log.warning("completeness.days_never_listed", count=len(report.unlisted_days))
    log.info(
        "completeness.computed",
        since=report.since,
        until=report.until,
        expected=report.expected,
        missing=len(report.missing),
        pending=report.pending,
    )
    return report


def queue_missing(state: State, report: CompletenessReport) -> int:
    """Queue every missing file for the next ingest cycle; drop queued files handled since.
    Returns how many were newly queued."""
    sources = state.digests.sources_of([k for _, k in report.missing])
    items = [
        (
            b,
            k,
            sid,
            f"completeness: listed in a CloudTrail digest for {h.hour}, not ingested",
        )
        for h, k in report.missing
        for b, sid in [sources.get(k, ("", ""))]
        if b
    ]
    new = state.retry.queue(items)
    for item in state.retry.items():
        if item.key in state.checkpoints.handled_keys(item.bucket, day_prefix_of(item.key)):
            state.retry.done(item.bucket, item.key)
    if new:
        log.warning("completeness.queued_missing", count=new)
    return new


def completeness_families(report: CompletenessReport) -> list[GaugeMetricFamily]:
    """Per account-region gauges over the report's window."""
    exp = GaugeMetricFamily(
        "ctagg_completeness_expected_files",
        "Log files CloudTrail digests list in the window",
        labels=["account_id", "region"],
    )
    miss = GaugeMetricFamily(
        "ctagg_completeness_missing_files",
        "Log files digests list that were not ingested",
        labels=["account_id", "region"],
    )
    ratio = GaugeMetricFamily(
        "ctagg_completeness_ratio", "Ingested / expected log files in the window (1 = complete)"
    )
    for (a, r), (e, m) in sorted(report.per_account_region().items()):
        exp.add_metric([a, r], e)
        miss.add_metric([a, r], m)
    ratio.add_metric([], report.ratio)
    unlisted = GaugeMetricFamily(
        "ctagg_backfill_unlisted_days",
        "Days of a stream's backfill range no listing went through yet (older than the grace)",
    )
    unlisted.add_metric([], len(report.unlisted_days))
    return [exp, miss, ratio, unlisted]


def digest_families(state: State) -> list[GaugeMetricFamily]:
    """``ctagg_digest_results{account_id,region,status}``: validated digests by outcome."""
    g = GaugeMetricFamily(
        "ctagg_digest_results",
        "CloudTrail digests by validation outcome",
        labels=["account_id", "region", "status"],
    )
    counts: dict[tuple[str, str, str], int] = {}
    for row in state.digests.results():
        k = (row["account_id"], row["region"], row["status"])
        counts[k] = counts.get(k, 0) + 1
    for (a, r, s), n in sorted(counts.items()):
        g.add_metric([a, r, s], n)
    return [g]


class CompletenessCollector(Collector):
    """Serves the completeness and digest gauges from the last report and the state: register
    it once (the daemon's registry), then set :attr:`report` after each run; nothing is
    registered again, and series of accounts that leave the report leave the output."""

    def __init__(
        self, state: State | None = None, report: CompletenessReport | None = None
    ) -> None:
        self.state = state
        self.report = report

    def collect(self) -> Iterator[Metric]:
        if self.report is not None:
            yield from completeness_families(self.report)
        if self.state is not None:
            try:
                fams = digest_families(self.state)
            except Exception:  # closed at shutdown, or busy: serve the rest of the metrics
                return
            yield from fams


def completeness_metrics(report: CompletenessReport, registry: CollectorRegistry) -> None:
    """Per account-region gauges over the report's window, on ``registry``."""
    registry.register(CompletenessCollector(report=report))


def digest_metrics(state: State, registry: CollectorRegistry) -> None:
    """``ctagg_digest_results{account_id,region,status}`` read from ``state`` at each collect."""
    registry.register(CompletenessCollector(state=state))
