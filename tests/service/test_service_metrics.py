"""Metrics live on their own registry, follow Prometheus naming, and the freshness gauges are
computed from the state per account × region."""

from __future__ import annotations

from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from aggregator.service.metrics import Metrics, parse_event_time
from aggregator.state import CentralObject, ObjectOutcome, SourceRef, State


def samples(m: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for fam in text_string_to_metric_families(m.exposition().decode()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def outcome(account: str, region: str, key: str, newest: str, events: int) -> ObjectOutcome:
    src = SourceRef(
        source_id=f"trail-bucket/AWSLogs/{account}/CloudTrail/{region}/",
        account_id=account,
        region=region,
        bucket="trail-bucket",
        prefix=f"AWSLogs/{account}/CloudTrail/{region}/",
    )
    return ObjectOutcome(
        source=src,
        key=key,
        day_prefix=src.prefix + "2024/05/01/",
        kind="log",
        etag="e",
        size=10,
        events_in=events,
        central=CentralObject("c/" + key, 10, "00", events, newest, newest),
        newest_event_time=newest,
    )


def test_registries_are_independent() -> None:
    """Two Metrics objects never share series (no global registry)."""
    a, b = Metrics(), Metrics()
    a.object_archived("111111111111", "us-east-1", events=5)
    assert (
        samples(a)[
            ("ctagg_events_total", (("account_id", "111111111111"), ("region", "us-east-1")))
        ]
        == 5
    )
    assert not any(name == "ctagg_events_total" for name, _ in samples(b))


def test_names_follow_prometheus_conventions() -> None:
    """Every family is ctagg_-prefixed; counters end in _total; durations are in seconds."""
    m = Metrics()
    m.job_finished("ingest", "ok", 1.5, now=1000.0)
    fams = list(text_string_to_metric_families(m.exposition().decode()))
    assert fams
    for fam in fams:
        assert fam.name.startswith("ctagg_"), fam.name
        if fam.type == "counter":
            assert all(s.name.endswith(("_total", "_created")) for s in fam.samples), fam.name
        if fam.type == "histogram":
            assert fam.name.endswith("_seconds"), fam.name


def test_counters_carry_account_region_and_connector_labels() -> None:
    """Ingest counters are per account and region, forward counters per connector."""
    m = Metrics()
    m.object_archived("111111111111", "eu-west-1", events=10, duplicates=3)
    m.object_archived("111111111111", "eu-west-1", events=2)
    m.object_quarantined("222222222222", "us-east-1")
    m.assume_role_failed("333333333333")
    s = samples(m)
    ar = (("account_id", "111111111111"), ("region", "eu-west-1"))
    assert s[("ctagg_objects_total", ar)] == 2
    assert s[("ctagg_events_total", ar)] == 12
    assert s[("ctagg_duplicates_total", ar)] == 3
    q = (("account_id", "222222222222"), ("region", "us-east-1"))
    assert s[("ctagg_quarantined_total", q)] == 1
    assert s[("ctagg_assume_role_failures_total", (("account_id", "333333333333"),))] == 1


def test_forward_series_are_read_live_from_the_lanes() -> None:
    """Per connector series come from the lanes at each scrape (no sampling job): counters,
    backlog, up, state, seconds since the last delivery and whether it holds ingest back."""
    from types import SimpleNamespace

    from aggregator.forward.lanes import LaneStatus

    ok = LaneStatus("splunk", delivered=7, retries=2, rejected=1, filtered=5)
    ok.last_delivered_at = 1000.0
    dead = LaneStatus("os", fatal="opensearch os: 401 check credentials", started_at=900.0)
    lanes = {
        "splunk": SimpleNamespace(status=ok, connector=SimpleNamespace(resent_events=3)),
        "os": SimpleNamespace(status=dead, connector=SimpleNamespace()),
    }
    backlog = {"splunk": 4, "os": 9}
    fwd = SimpleNamespace(
        lanes=lanes, store=SimpleNamespace(backlog=backlog.__getitem__), paused_by=("os",)
    )
    m = Metrics()
    m.forward.forwarder, m.forward.now = fwd, 1030.0
    s = samples(m)
    c = (("connector", "splunk"),)
    assert s[("ctagg_forward_delivered_total", c)] == 7
    assert s[("ctagg_forward_retried_total", c)] == 2
    assert s[("ctagg_forward_rejected_total", c)] == 1
    assert s[("ctagg_forward_filtered_total", c)] == 5
    assert s[("ctagg_forward_resent_total", c)] == 3
    assert s[("ctagg_forward_backlog_objects", c)] == 4
    assert s[("ctagg_forward_up", c)] == 1
    assert s[("ctagg_forward_seconds_since_last_delivery", c)] == 30
    assert s[("ctagg_forward_holding_ingest", c)] == 0
    o = (("connector", "os"),)
    assert s[("ctagg_forward_up", o)] == 0
    assert s[("ctagg_forward_state", (("connector", "os"), ("state", "fatal")))] == 1
    assert s[("ctagg_forward_state", (("connector", "os"), ("state", "ok")))] == 0
    assert s[("ctagg_forward_seconds_since_last_delivery", o)] == 130  # since start
    assert s[("ctagg_forward_holding_ingest", o)] == 1
    ok.delivered += 1  # live: the next scrape sees it
    assert samples(m)[("ctagg_forward_delivered_total", c)] == 8


def test_freshness_gauges_come_from_state(tmp_path: Path) -> None:
    """Age of the newest eventTime and newest object per account × region is computed from the
    state at refresh time; an account that leaves the state leaves the output."""
    state = State(tmp_path / "s.db")
    state.commit_object(outcome("111111111111", "us-east-1", "a", "2024-05-01T10:00:00Z", 3))
    state.commit_object(outcome("111111111111", "us-east-1", "b", "2024-05-01T11:00:00Z", 1))
    state.commit_object(outcome("222222222222", "eu-west-1", "c", "2024-05-01T09:00:00Z", 1))
    now = parse_event_time("2024-05-01T12:00:00Z")
    assert now is not None
    m = Metrics()
    m.refresh_from_state(state, now=now)
    s = samples(m)
    a = (("account_id", "111111111111"), ("region", "us-east-1"))
    b = (("account_id", "222222222222"), ("region", "eu-west-1"))
    assert s[("ctagg_newest_event_age_seconds", a)] == 3600
    assert s[("ctagg_newest_event_age_seconds", b)] == 3 * 3600
    assert ("ctagg_newest_object_age_seconds", a) in s
    assert s[("ctagg_sources_failing", a)] == 0

    state.conn.execute("DELETE FROM sources WHERE account_id='222222222222'")
    m.refresh_from_state(state, now=now + 60)
    s = samples(m)
    assert s[("ctagg_newest_event_age_seconds", a)] == 3660
    assert ("ctagg_newest_event_age_seconds", b) not in s
    state.close()
