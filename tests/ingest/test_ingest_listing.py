"""Listing a stream's first backfill is resumable and complete (issue 19): a SIGKILL at any day
boundary, a day whose LIST fails every retry, or a page sequence cut short leaves the day
pending, and later cycles list it. Judged by decoding the central bucket."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from archivecheck import assert_exactly_once
from awsfixtures import StsSessions, client, log_key, log_object, make_source, record
from crashkit import Step, run_child
from fakes.faultproxy import Fault, FaultProxy, is_list

from aggregator.aws.clients import Aws
from aggregator.aws.inventory import Account, Inventory, Source
from aggregator.config import Settings, parse_settings
from aggregator.ingest import collect
from aggregator.ingest.cycle import Ingestor
from aggregator.ingest.work import CycleReport
from aggregator.state import State
from aggregator.state.checkpoints import Checkpoints

A1 = "111111111111"
ORG = "o-abcdefghij"
NOW = 1714564800.0  # 2024-05-01T12:00:00Z
OLD_DAYS = ["20240426", "20240427", "20240428", "20240429"]  # outside the re-list window
DAYS = [*OLD_DAYS, "20240430", "20240501"]


def settings(tmp_path: Path, endpoint: str | None = None, **collect_cfg: Any) -> Settings:
    doc: dict[str, Any] = {
        "state": {"path": str(tmp_path / "state.db")},
        "archive": {"bucket": "central"},
        "collect": {"max_concurrency": 4, "relist_days": 2, **collect_cfg},
        "aws": {"max_attempts": 2},
    }
    if endpoint:
        doc["aws"]["endpoint_url"] = endpoint
    return parse_settings(doc)


def inventory(src: Source) -> Inventory:
    return Inventory([Account(A1)], {A1: ["us-east-1"]}, [], [src], [])


def cycle(cfg: Settings, src: Source) -> CycleReport:
    async def go() -> CycleReport:
        state = State(cfg.state.path, writer="test")
        try:
            ing = Ingestor(cfg, state, StsSessions(), Aws(cfg.aws), clock=lambda: NOW)
            return await ing.run(inventory(src))
        finally:
            state.close()

    return asyncio.run(go())


def plant(src: Source, per_day: int = 2) -> list[dict[str, Any]]:
    s3 = client("s3")
    s3.create_bucket(Bucket="central")
    s3.create_bucket(Bucket="org-trail")
    planted = []
    for day in DAYS:
        for f in range(per_day):
            ts = f"{day}T1{f}05Z"
            t = f"{day[:4]}-{day[4:6]}-{day[6:]}T1{f}:0"
            recs = [record(f"{day}-{f}-{i}", A1, time=f"{t}{i}:00Z") for i in range(3)]
            s3.put_object(
                Bucket="org-trail",
                Key=log_key(src.prefix, A1, "us-east-1", ts, f"F{f}"),
                Body=log_object(recs),
            )
            planted.extend(recs)
    return planted


def unlisted(cfg: Settings) -> list[str]:
    state = State(cfg.state.path, read_only=True)
    try:
        return [str(r["day"]) for r in state.checkpoints.unlisted_days()]
    finally:
        state.close()


@pytest.mark.parametrize("boundary", range(1, len(DAYS) + 1))
def test_sigkill_at_each_day_boundary_of_the_first_backfill_loses_nothing(
    moto: str, tmp_path: Path, boundary: int
) -> None:
    """kill -9 right after the n-th day of the first backfill was listed: later cycles list
    every day the dead one had not reached (before, the days after the oldest recorded one and
    outside the re-list window were never listed again)."""
    cfg = settings(tmp_path)
    src = make_source("org-trail", A1, org_id=ORG)
    planted = plant(src)

    died = run_child(lambda: cycle(cfg, src), Step(Checkpoints, "mark_listed", nth=boundary))
    assert died.killed
    assert unlisted(cfg) == [f"{d[:4]}-{d[4:6]}-{d[6:]}" for d in DAYS[boundary:]]

    first = cycle(cfg, src)
    second = cycle(cfg, src)

    assert first.errors == 0
    assert second.objects == 0
    assert unlisted(cfg) == []
    assert_exactly_once(planted)


def test_a_day_whose_list_fails_every_retry_is_the_streams_error_until_it_lists(
    moto: str, tmp_path: Path
) -> None:
    """Nine 500s in a row on one day's LIST (botocore makes three attempts per cycle with
    aws.max_attempts 2, each failing): three cycles report the
    error (never a clean cycle; the source's last_error says so; the day is reported as never
    listed), the fourth lists it; every event is archived once."""
    src = make_source("org-trail", A1, org_id=ORG)
    planted = plant(src)
    bad_day = "2024/04/27/"
    with FaultProxy(moto, [Fault("error_before", is_list(bad_day), times=9)]) as proxy:
        cfg = settings(tmp_path, endpoint=proxy.url)
        reports = [cycle(cfg, src) for _ in range(4)]
        assert proxy.injected["error_before"] == 9

    assert [r.errors for r in reports] == [1, 1, 1, 0]
    state = State(cfg.state.path, read_only=True)
    try:
        (row,) = state.sources.status()
        assert row.last_error is None  # cleared by the clean cycle
    finally:
        state.close()
    assert unlisted(cfg) == []
    assert_exactly_once(planted)


def test_failing_day_is_visible_while_it_fails(moto: str, tmp_path: Path) -> None:
    """While a day's LIST fails: the cycle counts an error, status shows it, coverage names
    the day."""
    src = make_source("org-trail", A1, org_id=ORG)
    plant(src)
    with FaultProxy(moto, [Fault("error_before", is_list("2024/04/28/"))]) as proxy:
        cfg = settings(tmp_path, endpoint=proxy.url)
        report = cycle(cfg, src)

    assert report.errors == 1
    assert unlisted(cfg) == ["2024-04-28"]
    state = State(cfg.state.path, read_only=True)
    try:
        (row,) = state.sources.status()
        assert row.last_error is not None
        assert "InternalError" in row.last_error
    finally:
        state.close()


def test_a_page_sequence_cut_short_leaves_the_day_pending(
    moto: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The second page of a day's listing fails every retry: the day stays pending and the next
    cycle lists it from the start."""
    monkeypatch.setattr(collect, "LIST_PAGE_SIZE", 2)
    src = make_source("org-trail", A1, org_id=ORG)
    planted = plant(src, per_day=3)
    second_page = is_list("continuation-token")
    with FaultProxy(moto, [Fault("error_before", second_page, times=3)]) as proxy:
        cfg = settings(tmp_path, endpoint=proxy.url)
        first = cycle(cfg, src)
        assert first.errors == 1
        assert unlisted(cfg) == ["2024-04-26"]
        again = cycle(cfg, src)

    assert again.errors == 0
    assert unlisted(cfg) == []
    assert_exactly_once(planted)


def test_completeness_reports_backfill_days_never_listed(moto: str, tmp_path: Path) -> None:
    """The coverage check: a day of the backfill range whose listing never went through is
    named by completeness (and makes it fail) until a listing completes."""
    import time
    from datetime import UTC, datetime

    from aggregator.integrity.completeness import compute

    src = make_source("org-trail", A1, org_id=ORG)
    plant(src)
    with FaultProxy(moto, [Fault("error_before", is_list("2024/04/28/"))]) as proxy:
        cfg = settings(tmp_path, endpoint=proxy.url)
        cycle(cfg, src)
    window = (datetime(2024, 4, 25, tzinfo=UTC), datetime(2024, 5, 2, tzinfo=UTC))

    state = State(cfg.state.path, read_only=True)
    try:
        soon = compute(state, *window, now=time.time())
        later = compute(state, *window, now=time.time() + 7200)
    finally:
        state.close()

    assert soon.unlisted_days == []  # found just now: within the grace
    assert [d["day"] for d in later.unlisted_days] == ["2024-04-28"]
    assert later.as_dict()["unlisted_days"][0]["stream"] == f"org-trail/{src.prefix}"
