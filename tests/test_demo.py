"""The embedded default: `ctagg demo --json` runs discovery and ingest against its own moto
Organization and reports numbers that add up."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from aggregator.cli import main
from aggregator.state import State

KEYS = {
    "accounts",
    "regions",
    "objects",
    "events_in",
    "duplicates",
    "events_archived",
    "quarantined",
}


def test_demo_json(
    tmp_path: Path,
    testdata: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # the demo sets its own
    workdir = tmp_path / "demo"

    assert main(["demo", "--json", "--workdir", str(workdir), "--testdata", str(testdata)]) == 0

    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary.keys() >= KEYS
    assert summary["accounts"] >= 3
    assert summary["regions"] == 2
    seeded = summary["seeded"]
    # every object read once; the corrupt one quarantined
    assert summary["objects"] == seeded["org_trail_objects"] + seeded["account_trail_objects"] + 1
    assert summary["quarantined"] == 1
    # the account trail repeats events the org trail already has: each is dropped once
    assert summary["duplicates"] >= seeded["account_trail_records"] > 0
    assert summary["events_in"] == summary["events_archived"] + summary["duplicates"]
    assert summary["second_cycle_objects"] == 0
    # the exported archive holds exactly the archived events, no two alike
    events = [
        rec
        for p in (workdir / "archive").rglob("*.json.gz")
        for rec in json.loads(gzip.decompress(p.read_bytes()))["Records"]
    ]
    assert len(events) == summary["events_archived"]
    state = State(workdir / "state.db")
    try:
        assert state.count("dedupe") == len(events)
        assert len(state.quarantined()) == 1
    finally:
        state.close()


def test_demo_text_summary_says_where_to_look(
    tmp_path: Path,
    testdata: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    assert main(["demo", "--workdir", str(tmp_path / "d"), "--testdata", str(testdata)]) == 0
    out = capsys.readouterr().out
    assert "duplicates" in out
    assert "Where to look" in out
    assert "ctagg status" in out
