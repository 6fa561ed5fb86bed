"""Rate anomalies over synthetic hourly series: robust baseline, min count, sensitivity."""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from aggregator.detect.anomaly import (
    ERROR_RATE_RULE_ID,
    EVENT_RATE_RULE_ID,
    RateAnomalies,
    baseline,
)
from aggregator.detect.store import DetectStore
from aggregator.state import State

H0 = 480_000  # an hour number (2024-10-04); everything is relative to it
ACCT = "111122223333"


def records(
    hour: int, name: str, n: int, *, errors: int = 0, account: str = ACCT
) -> Iterator[dict[str, Any]]:
    t = datetime.fromtimestamp(hour * 3600 + 60, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    for i in range(n):
        rec: dict[str, Any] = {"eventName": name, "eventTime": t, "recipientAccountId": account}
        if i < errors:
            rec["errorCode"] = "AccessDenied"
        yield rec


@pytest.fixture
def store(tmp_path: Path) -> Iterator[DetectStore]:
    state = State(tmp_path / "s.db")
    yield DetectStore(state)
    state.close()


def steady(det: RateAnomalies, hours: int, name: str = "GetObject", mean: int = 100) -> None:
    rng = random.Random(7)
    for h in range(H0, H0 + hours):
        det.observe_many(records(h, name, mean + rng.randint(-10, 10), errors=rng.randint(0, 3)))


def at_end_of(hour: int) -> float:
    return float((hour + 1) * 3600 + 5)


def test_baseline_statistics() -> None:
    """Median and MAD are robust to one outlier; the floor is the Poisson spread."""
    b = baseline([10, 10, 11, 9, 10, 500], k=3, floor=1)
    assert b.median == 10
    assert b.mad == 0.5
    assert b.threshold == pytest.approx(10 + 3 * max(1.4826 * 0.5, 10**0.5))


def test_spike_alerts_normal_hour_does_not(store: DetectStore) -> None:
    """A 4x spike in an API's hourly count alerts; an ordinary hour does not."""
    det = RateAnomalies(store, sensitivity="medium", min_count=20, baseline_hours=72)
    steady(det, 72)
    det.observe_many(records(H0 + 72, "GetObject", 105))
    assert det.evaluate(at_end_of(H0 + 72)) == []
    det.observe_many(records(H0 + 73, "GetObject", 400))
    (alert,) = det.evaluate(at_end_of(H0 + 73))
    assert alert.rule_id == EVENT_RATE_RULE_ID
    assert alert.kind == "anomaly"
    assert alert.event_name == "GetObject"
    assert alert.account_id == ACCT
    assert alert.extra["count"] == 400
    assert 90 <= alert.extra["median"] <= 110
    assert alert.event_time == datetime.fromtimestamp((H0 + 73) * 3600, UTC).strftime(
        "%Y-%m-%dT%H:%M:%SZ"
    )
    assert alert.to_ocsf()["finding_info"]["analytic"]["type"] == "Behavioral"


def test_sensitivity_changes_what_alerts(tmp_path: Path) -> None:
    """A moderate bump alerts at high sensitivity but not at low."""
    outcomes = {}
    for level in ("low", "high"):
        state = State(tmp_path / f"{level}.db")
        det = RateAnomalies(DetectStore(state), sensitivity=level, baseline_hours=48)
        steady(det, 48)
        det.observe_many(records(H0 + 48, "GetObject", 150))
        outcomes[level] = len(det.evaluate(at_end_of(H0 + 48)))
        state.close()
    assert outcomes == {"low": 0, "high": 1}


def test_min_count_and_new_apis(store: DetectStore) -> None:
    """A never-seen API alerts only once its hourly count reaches min_count."""
    det = RateAnomalies(store, min_count=20, baseline_hours=48)
    steady(det, 48)
    det.observe_many(records(H0 + 48, "DeleteBucket", 19))
    assert det.evaluate(at_end_of(H0 + 48)) == []
    det.observe_many(records(H0 + 49, "DeleteBucket", 25))
    (alert,) = det.evaluate(at_end_of(H0 + 49))
    assert alert.event_name == "DeleteBucket"
    assert alert.extra["median"] == 0


def test_error_rate(store: DetectStore) -> None:
    """An hour where most calls fail raises the error-rate anomaly, not a per-API one."""
    det = RateAnomalies(store, min_count=20, baseline_hours=48)
    steady(det, 48)
    det.observe_many(records(H0 + 48, "GetObject", 100, errors=60))
    (alert,) = det.evaluate(at_end_of(H0 + 48))
    assert alert.rule_id == ERROR_RATE_RULE_ID
    assert alert.extra["errors"] == 60
    assert alert.extra["calls"] == 100
    assert alert.extra["rate"] == 0.6


def test_young_accounts_are_not_judged(store: DetectStore) -> None:
    """Without min_history_hours of history an account's spikes are not anomalies yet."""
    det = RateAnomalies(store, baseline_hours=48, min_history_hours=24)
    steady(det, 5)
    det.observe_many(records(H0 + 5, "GetObject", 1000))
    assert det.evaluate(at_end_of(H0 + 5)) == []


def test_evaluation_is_idempotent_and_catches_up(store: DetectStore) -> None:
    """Each closed hour is judged once; a later call judges the hours it missed; an alert
    raised once is not raised again even if the hour is judged again."""
    det = RateAnomalies(store, baseline_hours=48)
    steady(det, 48)
    det.observe_many(records(H0 + 48, "GetObject", 500))
    det.observe_many(records(H0 + 49, "ListBuckets", 300))
    det.evaluate(at_end_of(H0 + 47))  # first run: judges hour H0+47 only
    got = det.evaluate(at_end_of(H0 + 49))
    assert sorted(a.event_name or "" for a in got) == ["GetObject", "ListBuckets"]
    assert det.evaluate(at_end_of(H0 + 49)) == []
    assert det.evaluate_hour(H0 + 48, at_end_of(H0 + 49)) == []  # already alerted


def test_accounts_are_separate(store: DetectStore) -> None:
    """A busy account's volume is not another account's baseline."""
    det = RateAnomalies(store, baseline_hours=48)
    steady(det, 48)
    for h in range(H0, H0 + 48):
        det.observe_many(records(h, "GetObject", 2, account="444455556666"))
    det.observe_many(records(H0 + 48, "GetObject", 100, account="444455556666"))
    det.observe_many(records(H0 + 48, "GetObject", 100))
    (alert,) = det.evaluate(at_end_of(H0 + 48))
    assert alert.account_id == "444455556666"


def test_prune_keeps_the_baseline(store: DetectStore) -> None:
    """Pruning forgets only hours older than the baseline window."""
    det = RateAnomalies(store, baseline_hours=24)
    steady(det, 48)
    det.flush()
    det.prune(at_end_of(H0 + 47))
    assert store.series(ACCT, "calls", H0, H0 + 47).keys() == set(range(H0 + 22, H0 + 48))
