"""``ctagg backfill`` against moto: it collects the window on a stream already collected (and
only the window), keeps to --rate, and an interrupted run continues where it stopped."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from awsfixtures import client
from opworld import CENTRAL, put_logs, write_config

from aggregator.cli import main

ROOT = Path(__file__).resolve().parents[2]
TODAY = datetime.now(UTC).date()


def central_days() -> dict[str, int]:
    """Central objects per day (YYYY/MM/DD)."""
    out: dict[str, int] = {}
    for page in client("s3").get_paginator("list_objects_v2").paginate(Bucket=CENTRAL):
        for o in page.get("Contents", ()):
            if o["Key"].startswith("AWSLogs/"):
                day = "/".join(o["Key"].split("/")[4:7])
                out[day] = out.get(day, 0) + 1
    return out


def test_backfill_collects_the_window_of_a_stream_already_collected(
    moto: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = write_config(tmp_path, moto, collect={"backfill_days": 2, "max_concurrency": 4})
    put_logs(2, day=TODAY.isoformat(), tag="t")
    for day in ("2024-05-01", "2024-05-02", "2024-05-03"):
        put_logs(5, records_per=3, day=day)
    assert main(["--log-level", "ERROR", "once", str(cfg), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["objects"] == 2  # history is past the horizon

    code = main(
        ["--log-level", "ERROR", "backfill", str(cfg), "--since", "2024-05-01", "--until",
         "2024-05-03", "--json"]
    )  # fmt: skip

    report = json.loads(capsys.readouterr().out)
    assert code == 0
    assert report["objects"] == 10
    assert report["events_archived"] == 30
    assert report["days_opened"] == 2
    assert central_days() == {
        "2024/05/01": 5,
        "2024/05/02": 5,
        TODAY.strftime("%Y/%m/%d"): 2,
    }
    again = main(["--log-level", "ERROR", "backfill", str(cfg), "--since", "2024-05-01",
                  "--until", "2024-05-03", "--json"])  # fmt: skip
    second = json.loads(capsys.readouterr().out)
    assert again == 0
    assert (second["objects"], second["days_opened"]) == (0, 0)
    assert second["days_closed_before"] == 2


def test_backfill_keeps_to_the_rate(
    moto: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = write_config(tmp_path, moto, collect={"backfill_days": 1, "max_concurrency": 1})
    put_logs(30, records_per=100, day="2024-05-01")  # 3,000 events

    t0 = time.monotonic()
    code = main(["--log-level", "ERROR", "backfill", str(cfg), "--since", "2024-05-01",
                 "--rate", "1000", "--json"])  # fmt: skip
    elapsed = time.monotonic() - t0

    report = json.loads(capsys.readouterr().out)
    assert code == 0
    assert report["events_archived"] == 3000
    # 3,000 events at 1,000/s: one second of burst and the 4 objects the queue holds ahead
    # go at once, the rest waits
    assert elapsed >= 1.4
    assert report["waited_secs"] > 0.3  # less when the machine is slow: the rate holds anyway


def test_an_interrupted_backfill_continues_where_it_stopped(moto: str, tmp_path: Path) -> None:
    cfg = write_config(tmp_path, moto, collect={"backfill_days": 1, "max_concurrency": 2})
    put_logs(40, records_per=25, day="2024-05-01")  # 1,000 events
    state_db = tmp_path / "state" / "ctagg.db"
    ctagg = Path(sys.executable).with_name("ctagg")
    argv = [str(ctagg), "--log-level", "ERROR", "backfill", str(cfg), "--since", "2024-05-01"]
    proc = subprocess.Popen(
        [*argv, "--rate", "100", "--json"],
        cwd=ROOT,
        env=os.environ.copy(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )

    def handled() -> int:
        if not state_db.exists():
            return 0
        with sqlite3.connect(state_db, timeout=10) as db:
            try:
                return int(db.execute("SELECT count(*) FROM ledger").fetchone()[0])
            except sqlite3.OperationalError:
                return 0

    deadline = time.monotonic() + 60
    while handled() < 6:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)

    first = json.loads(out)
    assert proc.returncode == 130, err
    assert first["stopped"] is True
    assert 6 <= first["objects"] < 40
    assert "run the same command again to continue" in err
    done_before = handled()
    assert done_before == first["objects"]

    rerun = subprocess.run(
        [*argv, "--json"], cwd=ROOT, env=os.environ.copy(), capture_output=True, text=True,
        timeout=120, check=False,
    )  # fmt: skip

    second = json.loads(rerun.stdout)
    assert rerun.returncode == 0, rerun.stderr
    assert second["objects"] == 40 - done_before  # nothing handled twice
    assert handled() == 40
    assert central_days() == {"2024/05/01": 40}
    assert first["events_archived"] + second["events_archived"] == 1000


def test_backfill_window_errors_are_usage_errors(
    tmp_path: Path, moto: str, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = write_config(tmp_path, moto)
    code = main(["backfill", str(cfg), "--since", "2024-05-02", "--until", "2024-05-01"])
    assert code == 2
    assert "is not after --since" in capsys.readouterr().err
    assert main(["backfill", str(cfg), "--since", "2024-05-02", "--rate", "0"]) == 2
    assert (TODAY - timedelta(days=1)) < TODAY
