"""The gate before each queued object: a pause is said once when it starts (and again at a
bounded rate while it lasts), once when it ends, and to whoever watches (``on_change``);
``pace`` is awaited for every object."""

from __future__ import annotations

import asyncio
import io
import json

from aggregator import log
from aggregator.ingest.work import Gate


async def test_a_pause_is_said_once_by_many_waiters_and_repeated_at_a_bounded_rate() -> None:
    captured = io.StringIO()
    log.configure("INFO", json=True, stream=captured)
    full = True
    changes: list[tuple[bool, str]] = []
    gate = Gate(lambda: full, repeat_secs=0.9)
    gate.pause_reason = lambda: "forward backlog full: splunk 5000/5000 objects behind"
    gate.on_change = lambda paused, why: changes.append((paused, why))

    async def release() -> None:
        nonlocal full
        await asyncio.sleep(2.5)
        full = False

    try:
        await asyncio.gather(*(gate.wait_unpaused() for _ in range(8)), release())
    finally:
        log.configure("INFO")

    events = [json.loads(x) for x in captured.getvalue().splitlines()]
    paused = [e for e in events if e["event"] == "ingest.paused"]
    resumed = [e for e in events if e["event"] == "ingest.resumed"]
    assert 2 <= len(paused) <= 4  # the start, then about every 0.9 s: bounded, not per waiter
    assert paused[0]["reason"] == "forward backlog full: splunk 5000/5000 objects behind"
    assert paused[0]["level"] == "warning"
    assert len(resumed) == 1
    assert resumed[0]["duration_secs"] >= 2
    assert changes == [(True, "forward backlog full: splunk 5000/5000 objects behind"), (False, "")]
    assert gate.pauses == 1
    assert gate.paused_since is None


async def test_pace_is_awaited_per_object_and_not_after_stop() -> None:
    calls = 0

    async def pace() -> None:
        nonlocal calls
        calls += 1

    gate = Gate()
    gate.pace = pace
    for _ in range(3):
        await gate.wait_unpaused()
    gate.stop.set()
    await gate.wait_unpaused()
    assert calls == 3
