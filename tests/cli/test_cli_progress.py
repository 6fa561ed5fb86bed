"""Progress on long work: a rich bar with rate and ETA on a terminal, a periodic log line
otherwise, from a plain ``progress(done, total)`` callback the stages call."""

from __future__ import annotations

import io
import json

from aggregator import log
from aggregator.cli._progress import Progress, progress


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_without_a_terminal_a_progress_line_every_interval_and_one_at_the_end() -> None:
    captured = io.StringIO()
    log.configure("INFO", json=True, stream=captured)
    clock = Clock()
    try:
        with progress("backfill", unit="objects", every_secs=10, terminal=False, clock=clock) as p:
            for done in range(1, 101):
                clock.t += 0.5  # 2 objects a second
                p.report(done, 100)
    finally:
        log.configure("INFO")
    lines = [json.loads(x) for x in captured.getvalue().splitlines()]
    ticks = [x for x in lines if x["event"] == "progress"]
    assert 4 <= len(ticks) <= 5  # 50 s of work, a line every 10 s
    assert ticks[0]["stage"] == "backfill"
    assert ticks[0]["rate_per_sec"] == 2.0
    assert ticks[0]["total"] == 100
    assert 35 <= ticks[0]["eta_secs"] <= 42
    (done,) = [x for x in lines if x["event"] == "progress.done"]
    assert (done["count"], done["total"], done["eta_secs"]) == (100, 100, 0)


def test_on_a_terminal_a_bar_with_rate_and_eta_goes_to_stderr() -> None:
    out = io.StringIO()
    p = Progress("replay to splunk", unit="objects", stream=out, terminal=True).start()
    for done in range(1, 11):
        p.report(done, 10)
    p.close()
    text = out.getvalue()
    assert "replay to splunk" in text
    assert "10/10" in text
    assert "objects/s" in text
    assert "eta" in text


def test_a_stopped_piece_of_work_says_so() -> None:
    captured = io.StringIO()
    log.configure("INFO", json=True, stream=captured)
    try:
        try:
            with progress("replay", terminal=False) as p:
                p.advance(3)
                raise KeyboardInterrupt
        except KeyboardInterrupt:
            pass
    finally:
        log.configure("INFO")
    (stopped,) = [json.loads(x) for x in captured.getvalue().splitlines()]
    assert stopped["event"] == "progress.stopped"
    assert stopped["count"] == 3
