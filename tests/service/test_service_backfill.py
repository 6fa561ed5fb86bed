"""The backfill layer: a token bucket over archived events, and opening a window's day
prefixes in the state (seen streams: the window only; new streams: also their first sight)."""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any

from aggregator.aws.inventory import Inventory
from aggregator.service.backfill import BackfillReport, EventRate, open_window
from aggregator.state import State
from tests.awsfixtures import make_source
from tests.orgseed import make_settings


class FakeTime:
    def __init__(self) -> None:
        self.t = 0.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.t

    async def sleep(self, secs: float) -> None:
        self.slept.append(secs)
        self.t += secs


async def test_event_rate_holds_the_average_and_allows_one_second_of_burst() -> None:
    ft = FakeTime()
    rate = EventRate(100, clock=ft.clock, sleep=ft.sleep)
    await rate.wait()
    assert ft.slept == []  # a full bucket
    for _ in range(10):  # 10 objects of 50 events: 500 events at 100/s
        await rate.wait()
        rate.spend(50)
    await rate.wait()
    assert 3.9 <= ft.t <= 4.1  # 500 events - 100 of burst = 4 s
    assert rate.waited_secs == sum(ft.slept)


class Walker:
    """An S3 client answering the delimiter listings walk_day_prefixes makes."""

    def __init__(self, days: list[str], stream: str) -> None:
        self.days = days
        self.stream = stream

    def get_paginator(self, _: str) -> Any:
        walker = self

        class Pages:
            def paginate(self, Bucket: str, Prefix: str, Delimiter: str) -> Any:
                async def gen() -> Any:
                    rest = (
                        Prefix[len(walker.stream) :] if Prefix.startswith(walker.stream) else None
                    )
                    found = set()
                    for d in walker.days if rest is not None else []:
                        parts = d.split("-")
                        path = "/".join(parts) + "/"
                        if path.startswith(rest):
                            nxt = path[len(rest) :].split("/", 1)[0]
                            found.add(Prefix + nxt + "/")
                    yield {"CommonPrefixes": [{"Prefix": p} for p in sorted(found)]}

                return gen()

        return Pages()


async def test_open_window_opens_only_unclosed_days_of_the_window(tmp_path: Path) -> None:
    settings = make_settings("http://127.0.0.1:9", collect={"backfill_days": 2})
    src = make_source("trail", "111111111111")
    log_stream = src.prefix
    days = ["2024-04-30", "2024-05-01", "2024-05-02", "2024-05-03", "2026-12-01", "2026-12-02"]
    state = State(tmp_path / "s.db")
    stream_id = f"trail/{log_stream}"
    # seen before: 2024-05-02 was collected and closed; 2026-12-02 is open
    state.checkpoints.see_prefix(stream_id, "trail", f"{log_stream}2024/05/02/", "2024-05-02")
    state.checkpoints.close_prefixes(stream_id, "2024-05-03")
    state.checkpoints.see_prefix(stream_id, "trail", f"{log_stream}2026/12/02/", "2026-12-02")
    inventory = Inventory([], {}, [], [src], [])
    report = BackfillReport("2024-05-01", "2024-05-03")

    async def s3_for(_: Any) -> Any:
        return Walker(days, log_stream)

    await open_window(
        settings,
        state,
        inventory,
        s3_for,
        since=date(2024, 5, 1),
        until=date(2024, 5, 3),
        report=report,
        today=date(2026, 12, 2),
    )

    _, open_days = state.checkpoints.stream_days(stream_id)
    state.close()
    assert sorted(open_days) == ["2024-05-01", "2026-12-02"]  # not 04-30, 05-03 nor 12-01
    assert report.days_opened == 1
    assert report.days_closed_before == 1
    assert report.streams == 3  # log, Insights and digest streams of the source


async def test_a_new_stream_also_gets_its_first_sight_days(tmp_path: Path) -> None:
    settings = make_settings("http://127.0.0.1:9", collect={"backfill_days": 2})
    src = make_source("trail", "111111111111")
    days = ["2024-05-01", "2024-05-02", "2026-11-01", "2026-12-01", "2026-12-02"]
    state = State(tmp_path / "s.db")
    report = BackfillReport("2024-05-02", "2024-05-03")

    async def s3_for(_: Any) -> Any:
        return Walker(days, src.prefix)

    await open_window(
        settings,
        state,
        Inventory([], {}, [], [src], []),
        s3_for,
        since=date(2024, 5, 2),
        until=date(2024, 5, 3),
        report=report,
        today=date(2026, 12, 2),
    )

    _, open_days = state.checkpoints.stream_days(f"trail/{src.prefix}")
    state.close()
    # the window, and what first sight takes (collect.backfill_days: 2); 05-01 and 11-01 not
    assert sorted(open_days) == ["2024-05-02", "2026-12-01", "2026-12-02"]
