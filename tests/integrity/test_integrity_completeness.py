"""Completeness: digests (written by our stand-in for CloudTrail) against what the real ingest
cycle handled; a withheld file is found missing, queued, and filled by the next cycle."""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aioboto3
import pytest
from awsfixtures import StsSessions, client
from prometheus_client import CollectorRegistry
from trailgen import ACCOUNT, REGION, new_key, write_trail

from aggregator.aws.clients import Aws
from aggregator.aws.inventory import Account, Inventory, Source
from aggregator.cli.integrity import completeness_csv, completeness_json, print_completeness_table
from aggregator.config import Settings, parse_settings
from aggregator.ingest.cycle import Ingestor
from aggregator.integrity.completeness import (
    completeness_metrics,
    compute,
    digest_metrics,
    hour_of,
    queue_missing,
    refresh_expected,
)
from aggregator.integrity.public_keys import PublicKeyStore
from aggregator.state import CentralObject, ObjectOutcome, State

KEY = new_key()
NOW = datetime(2024, 5, 1, 16, 0, tzinfo=UTC).timestamp()
SINCE = datetime(2024, 5, 1, 0, tzinfo=UTC)
UNTIL = datetime(2024, 5, 2, 0, tzinfo=UTC)


@pytest.fixture
async def s3(moto: str) -> AsyncIterator[Any]:
    async with aioboto3.Session().client("s3", region_name="us-east-1") as c:
        yield c


def settings(tmp_path: Path) -> Settings:
    return parse_settings(
        {
            "state": {"path": str(tmp_path / "state.db")},
            "archive": {"bucket": "central"},
            "collect": {"max_concurrency": 4, "relist_days": 2},
        }
    )


def source(bucket: str) -> Source:
    prefix = f"AWSLogs/{ACCOUNT}/CloudTrail/{REGION}/"
    return Source(f"{bucket}/{prefix}", ACCOUNT, REGION, bucket, prefix)


def inventory(src: Source) -> Inventory:
    return Inventory([Account(ACCOUNT)], {ACCOUNT: [REGION]}, [], [src], [])


async def cycle(cfg: Settings, state: State, src: Source) -> Any:
    ing = Ingestor(cfg, state, StsSessions(), Aws(cfg.aws), clock=lambda: NOW)
    return await ing.run(inventory(src))


async def test_withheld_file_is_found_missing_then_filled(
    s3: Any, testdata: Path, tmp_path: Path
) -> None:
    client("s3").create_bucket(Bucket="central")
    trail = await write_trail(s3, testdata, key=KEY, bucket="trail-bucket", hours=3)
    withheld = trail.digest_hours[1][1]
    await s3.delete_object(Bucket=trail.bucket, Key=withheld)
    cfg = settings(tmp_path)
    state = State(cfg.state.path)
    src = source(trail.bucket)
    store = PublicKeyStore()
    store.add(KEY.public_key())

    async def s3_for(_: Source) -> Any:
        return s3

    try:
        first = await cycle(cfg, state, src)
        assert first.objects == 5
        ref = await refresh_expected(state, [src], s3_for, store)
        assert ref.expected_recorded == 6
        assert ref.statuses == {"valid": 3}
        report = compute(state, SINCE, UNTIL, now=NOW)
        assert report.expected == 6
        assert [k for _, k in report.missing] == [withheld]
        (row,) = [h for h in report.hours if h.missing]
        assert (row.account_id, row.region, row.hour) == (ACCOUNT, REGION, "2024-05-01T11")
        assert queue_missing(state, report) == 1
        assert queue_missing(state, report) == 0  # queued once
        (item,) = state.retry.items(src.source_id)
        assert (item.bucket, item.key) == (trail.bucket, withheld)
        # the file turns up (late delivery / restored): the next cycle fetches it
        await s3.put_object(Bucket=trail.bucket, Key=withheld, Body=trail.logs[withheld])
        second = await cycle(cfg, state, src)
        assert second.objects == 1
        again = compute(state, SINCE, UNTIL, now=NOW)
        assert again.missing == []
        assert again.ratio == 1.0
        queue_missing(state, again)
        assert state.retry.items() == []
        # the digests are not validated twice
        ref2 = await refresh_expected(state, [src], s3_for, store)
        assert ref2.digests_skipped == 3
    finally:
        state.close()


def test_compute_on_state_rows_incl_compacted_prefix_and_grace(tmp_path: Path) -> None:
    """The computation alone, on rows put in state directly; closed (compacted) prefixes still
    count as ingested, and a too-recent hour is pending, not missing."""
    state = State(tmp_path / "s.db")
    bucket = "b"
    prefix = f"AWSLogs/{ACCOUNT}/CloudTrail/{REGION}/"
    src = Source(f"{bucket}/{prefix}", ACCOUNT, REGION, bucket, prefix)
    day = f"{prefix}2024/05/01/"
    keys = [
        f"{day}{ACCOUNT}_CloudTrail_{REGION}_20240501T{hh}05Z_k{hh}.json.gz"
        for hh in ("09", "10", "15")
    ]
    state.digests.record_expected(
        [(bucket, k, src.source_id, ACCOUNT, REGION, hour_of(k), "00", "d") for k in keys],
    )
    assert hour_of(keys[0]) == "2024-05-01T09"
    state.commit_object(
        ObjectOutcome(
            src, keys[0], day, "log", None, 1, 1, 0, [], CentralObject("c0", 1, "x", 1, None, None)
        )
    )
    report = compute(state, SINCE, UNTIL, now=NOW)
    assert report.pending == 1  # the 15:xx file: hour ended less than an hour before NOW
    assert [k for _, k in report.missing] == [keys[1]]
    state.checkpoints.see_prefix(f"{bucket}/{prefix}", bucket, day, "2024-05-01")
    state.checkpoints.close_prefixes(f"{bucket}/{prefix}", "2024-05-02")
    assert state.count("objects") == 0
    again = compute(state, SINCE, UNTIL, now=NOW)
    assert [k for _, k in again.missing] == [keys[1]]
    assert again.hours[0].ingested == 1
    # outputs and metrics
    doc = json.loads(completeness_json(again))
    assert doc["missing"] == 1
    assert doc["expected"] == 2
    assert keys[1] in completeness_csv(again)
    buf = io.StringIO()
    print_completeness_table(again, buf)
    assert "1 missing" in buf.getvalue()
    reg = CollectorRegistry()
    completeness_metrics(again, reg)
    digest_metrics(state, reg)
    labels = {"account_id": ACCOUNT, "region": REGION}
    assert reg.get_sample_value("ctagg_completeness_missing_files", labels) == 1.0
    assert reg.get_sample_value("ctagg_completeness_expected_files", labels) == 2.0
    assert reg.get_sample_value("ctagg_completeness_ratio") == 0.5
    state.close()


def test_retry_queue_api_for_ingest(tmp_path: Path) -> None:
    """What ingest uses: items per source, an attempt counter, and removal when handled."""

    state = State(tmp_path / "s.db")
    assert state.retry.queue([("b", "k1", "b/src", "why"), ("b", "k2", "b/other", "why")]) == 2
    assert state.retry.queue([("b", "k1", "b/src", "again")]) == 0
    (item,) = state.retry.items("b/src")
    assert (item.key, item.reason, item.attempts) == ("k1", "why", 0)
    state.retry.attempted("b", "k1")
    assert state.retry.items("b/src")[0].attempts == 1
    state.retry.done("b", "k1")
    assert [i.key for i in state.retry.items()] == ["k2"]
    state.close()


async def test_missing_file_in_closed_prefix_is_refetched_via_retry_queue(
    s3: Any, testdata: Path, tmp_path: Path
) -> None:
    """A file missing from a day prefix that ingest already closed is only found again through
    the retry queue (normal listing never revisits a closed prefix)."""
    client("s3").create_bucket(Bucket="central")
    trail = await write_trail(s3, testdata, key=KEY, hours=3)
    withheld = trail.digest_hours[1][1]
    await s3.delete_object(Bucket=trail.bucket, Key=withheld)
    cfg = settings(tmp_path)
    state = State(cfg.state.path)
    src = source(trail.bucket)
    later = datetime(2024, 5, 5, 16, tzinfo=UTC).timestamp()

    async def run_at(t: float) -> Any:
        ing = Ingestor(cfg, state, StsSessions(), Aws(cfg.aws), clock=lambda: t)
        return await ing.run(inventory(src))

    async def s3_for(_: Source) -> Any:
        return s3

    try:
        await run_at(NOW)
        await run_at(later)
        assert state.checkpoints.closed_days(f"{trail.bucket}/{src.prefix}") == {"2024-05-01"}
        store = PublicKeyStore()
        store.add(KEY.public_key())
        await refresh_expected(state, [src], s3_for, store)
        report = compute(state, SINCE, UNTIL, now=later)
        assert [k for _, k in report.missing] == [withheld]
        assert queue_missing(state, report) == 1
        await s3.put_object(Bucket=trail.bucket, Key=withheld, Body=trail.logs[withheld])
        third = await run_at(later)
        assert third.objects == 1
        assert compute(state, SINCE, UNTIL, now=later).missing == []
    finally:
        state.close()


@pytest.mark.parametrize("width", [80, 100, 120, None])
def test_completeness_table_fits_a_terminal_and_is_whole_on_a_pipe(width: int | None) -> None:
    """At 80, 100 and 120 columns no line is wider than the terminal and account, region,
    hour and counts are shown; on a pipe (None) every missing name is there in full."""
    from rich.console import Console

    from aggregator.integrity.completeness import CompletenessReport, HourRow

    name = "111111111111_CloudTrail_ap-southeast-2_20240501T1005Z_AbCdEf0123456789.json.gz"
    report = CompletenessReport(
        "2024-05-01T00", "2024-05-02T00",
        [HourRow("111111111111", "ap-southeast-2", "2024-05-01T10", 12, 11, [f"x/{name}"])],
    )  # fmt: skip
    buf = io.StringIO()
    if width is None:
        print_completeness_table(report, buf)
        text = buf.getvalue()
        assert name in text
        assert max(len(line) for line in text.splitlines()) > 80
        return
    console = Console(width=width, record=True, force_terminal=True, color_system=None)
    print_completeness_table(report, None, console=console)
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= width
    header = next(line for line in text.splitlines() if "┃" in line)
    for col in ("account", "region", "hour", "expected", "ingested"):
        assert col in header
