"""The embedded default: `ctagg demo --json` runs discovery and ingest against its own moto
Organization and reports numbers that add up; the state it leaves is readable by the
state-only commands."""

from __future__ import annotations

import contextlib
import gzip
import io
import json
from pathlib import Path
from typing import Any

import pytest

from aggregator.cli import main
from aggregator.cli.demo import render_summary
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


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    from conftest import TESTDATA

    workdir = tmp_path_factory.mktemp("demo")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # the demo sets its own
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            assert (
                main(["demo", "--json", "--workdir", str(workdir), "--testdata", str(TESTDATA)])
                == 0
            )
    return json.loads(out.getvalue().strip().splitlines()[-1]), workdir


def test_demo_numbers_add_up(demo_run: tuple[dict[str, Any], Path]) -> None:
    summary, workdir = demo_run
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
    # "seeded N records" counts the records placed in organization-trail objects
    assert seeded["records"] == summary["events_in"] - seeded["account_trail_records"]
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
        assert len(state.quarantine.rows()) == 1
    finally:
        state.close()


def test_text_summary_says_where_to_look(demo_run: tuple[dict[str, Any], Path]) -> None:
    text = render_summary(demo_run[0])
    assert "duplicates" in text
    assert "Where to look" in text
    assert "ctagg status" in text


def test_status_and_quarantine_read_the_demo_state(
    demo_run: tuple[dict[str, Any], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """`ctagg status --json` lists every account × region with its lag, and `ctagg
    quarantine` names the corrupt object with its reason (state only, no AWS)."""
    config = str(demo_run[1] / "config.yaml")

    assert main(["status", config, "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    sources = [r for r in rows if "source_id" in r]
    assert len({(r["account_id"], r["region"]) for r in sources}) == 8
    assert all(r["lag_secs"] is not None and r["lag_secs"] > 0 for r in sources)
    assert sum(r["errors"] for r in sources) == 1

    assert main(["quarantine", config]) == 0
    assert "corrupt gzip" in capsys.readouterr().out
