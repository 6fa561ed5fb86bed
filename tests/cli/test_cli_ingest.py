"""``ctagg once | status | quarantine`` through ``main`` against moto: a missing central bucket
is said once at the start, the cycle's outcome is summed up for people and machines, expected
failures are one line and a shared exit code (3 discovery, 6 unusable state, 7 another
writer), never a traceback; read-only commands work beside a writer."""

from __future__ import annotations

import io
import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from awsfixtures import client
from fakes.faultproxy import Fault, FaultProxy, any_request
from opworld import A1, BASE, CENTRAL, REGION, TRAIL_BUCKET, put_logs, write_config
from rich.console import Console

from aggregator.cli import main
from aggregator.cli.ingest import print_status
from aggregator.state import State, StatusRow
from aggregator.state.lock import WriterLock


def test_missing_central_bucket_is_reported_once_before_any_object_is_read(
    moto: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = write_config(tmp_path, moto, central=False)
    put_logs(12)

    code = main(["--log-level", "WARNING", "once", str(cfg)])

    err = capsys.readouterr().err
    assert code == 3
    assert err.count("NoSuchBucket") == 1, err
    assert err.strip().splitlines()[-1] == (
        f"ctagg once: central archive s3://{CENTRAL} does not exist (NoSuchBucket); "
        "create the bucket, or correct archive.bucket"
    )
    assert "ingest.object_failed" not in err
    state = State(tmp_path / "state" / "ctagg.db")
    try:
        assert state.count("objects") == 0
        assert all(r.errors == 0 for r in state.sources.status())
    finally:
        state.close()


def _rows(now: float) -> list[StatusRow]:
    org_prefix = f"AWSLogs/o-abc1234567/{A1}/CloudTrail/ap-southeast-2/"
    acct_prefix = f"AWSLogs/{A1}/CloudTrail/ap-southeast-2/"
    last = f"{org_prefix}2024/05/01/{A1}_CloudTrail_ap-southeast-2_20240501T1005Z_AbCd0123.json.gz"
    return [
        StatusRow(
            f"central-organization-trail-logs/{org_prefix}",
            A1,
            "ap-southeast-2",
            "central-organization-trail-logs",
            org_prefix,
            last,
            now - 60,
            "2024-05-01T10:05:00Z",
            1234,
            567890,
            2,
            "AccessDenied: [GetObject] denied",
            96,
        ),
        StatusRow(
            f"payments-account-trail/{acct_prefix}",
            A1,
            "ap-southeast-2",
            "payments-account-trail",
            acct_prefix,
            None,
            None,
            None,
            0,
            0,
            0,
            None,
            0,
        ),
    ]


@pytest.mark.parametrize("width", [80, 100, 120])
def test_status_table_fits_by_priority(width: int) -> None:
    """No line wider than the terminal; account, region, source, lag and counts always show
    (never squeezed to nothing); org-trail and account-trail rows differ; long names are
    elided in the middle; at 100 columns and more the errors and digests show too."""
    now = 1_714_600_000.0
    console = Console(width=width, record=True, force_terminal=True, color_system=None)

    print_status(console, _rows(now), [], now)

    text = console.export_text()
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= width
    header = next(line for line in lines if "┃" in line)
    for col in ("account", "region", "source", "lag", "logs", "events"):
        assert f" {col} " in header
    if width >= 100:
        assert " errors " in header
        assert " digests " in header
    body = [line for line in lines if line.startswith("│")]
    org, acct = body
    assert "org:" in org
    assert "acct:" in acct
    assert "567890" in org
    assert "1234" in org
    assert "…" in org  # central-organization-trail-logs does not fit: elided, both ends kept
    cell = org.split("│")[3].strip()
    assert cell.startswith("org:c")
    assert cell.endswith("logs")


def test_status_on_a_pipe_has_every_column_whole() -> None:
    now = 1_714_600_000.0
    out = io.StringIO()
    console = Console(file=out, width=80)

    print_status(console, _rows(now), [], now)

    text = out.getvalue()
    assert max(len(line) for line in text.splitlines()) > 120
    assert "…" not in text
    for whole in (
        "org:central-organization-trail-logs",
        "acct:payments-account-trail",
        "AccessDenied: [GetObject] denied",
        f"{A1}_CloudTrail_ap-southeast-2_20240501T1005Z_AbCd0123.json.gz",
        "last log object",
        "digests",
    ):
        assert whole in text


def test_status_command_counts_logs_and_digests_apart(
    moto: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """End to end: after a cycle, `ctagg status` (on a pipe) shows the log objects and events
    of the source, its digests apart, and `--json` carries the same with the source label."""
    cfg = write_config(tmp_path, moto)
    put_logs(3, records_per=4)
    digest_key = BASE.replace("/CloudTrail/", "/CloudTrail-Digest/") + (
        f"2024/05/01/{A1}_CloudTrail-Digest_{REGION}_t_{REGION}_20240501T0100Z.json.gz"
    )
    client("s3").put_object(Bucket=TRAIL_BUCKET, Key=digest_key, Body=b"{}")
    assert main(["--log-level", "ERROR", "once", str(cfg), "--json"]) == 0
    capsys.readouterr()

    assert main(["status", str(cfg)]) == 0
    text = capsys.readouterr().out
    row = next(line for line in text.splitlines() if line.startswith("│"))
    cells = [c.strip() for c in row.split("│")[1:-1]]
    assert cells[:3] == [A1, REGION, f"acct:{TRAIL_BUCKET}"]
    assert cells[4:8] == ["3", "12", "0", "1"]  # logs, events, errors, digests
    assert cells[-1].endswith(".json.gz")
    assert "Digest" not in cells[-1]

    assert main(["status", str(cfg), "--json"]) == 0
    (doc,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert doc["source"] == f"acct:{TRAIL_BUCKET}"
    assert (doc["objects"], doc["digests"], doc["events"]) == (3, 1, 12)


def test_once_prints_a_short_summary_on_a_terminal_and_json_on_a_pipe(
    moto: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = write_config(tmp_path, moto)
    today = datetime.now(UTC).date().isoformat()
    put_logs(4, records_per=3, day=today)

    monkeypatch.setattr("sys.stdout.isatty", lambda: True)
    assert main(["--log-level", "ERROR", "once", str(cfg)]) == 0
    text = capsys.readouterr().out
    monkeypatch.undo()
    put_logs(1, records_per=2, day=today, tag="b")
    assert main(["--log-level", "ERROR", "once", str(cfg)]) == 0
    piped = capsys.readouterr().out

    lines = text.splitlines()
    assert lines[0].startswith("ctagg once: cycle done in ")
    assert "4 log objects, 0 digests, 0 quarantined" in text
    assert "12 read, 0 duplicates dropped, 12 archived in 4 central objects" in text
    assert "0 errors" in text
    assert len(lines) <= 6
    assert "{" not in text
    report = json.loads(piped)
    assert (report["objects"], report["events_archived"]) == (1, 2)


def config(tmp_path: Path, state_path: str | None = None, **extra: Any) -> str:
    doc: dict[str, Any] = {
        "state": {"path": state_path or str(tmp_path / "state.db")},
        "archive": {"bucket": "central"},
        "aws": {"max_attempts": 2},
        "integrity": {"validate_digests": False, "lookup": {"mode": "off"}},
    }
    for k, v in extra.items():
        doc[k] = {**doc.get(k, {}), **v}
    path = tmp_path / "ctagg.yaml"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def test_once_says_discovery_failed_in_one_line(
    moto: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Organizations ListAccounts out of retries: exit 3, one line, no traceback (as discover
    and doctor handle it)."""
    client("organizations").create_organization(FeatureSet="ALL")
    client("s3").create_bucket(Bucket="central")  # checked before discovery
    fault = Fault("error_before", any_request(), target="ListAccounts")
    with FaultProxy(moto, [fault]) as proxy:
        rc = main(["once", config(tmp_path, aws={"endpoint_url": proxy.url})])
        assert proxy.injected["error_before"] >= 2

    err = capsys.readouterr().err
    assert rc == 3
    lines = [ln for ln in err.splitlines() if ln.startswith("ctagg once:")]
    assert len(lines) == 1
    assert "discovery failed" in lines[0]
    assert "InternalError" in lines[0]
    assert "Traceback" not in err


def test_a_second_writer_exits_at_once_naming_the_holder(
    moto: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """While another process holds the state (the daemon), `ctagg once` exits 7 and says who
    holds it; `ctagg status` reads beside it."""
    cfg = config(tmp_path)
    state_path = str(tmp_path / "state.db")
    State(state_path).close()
    held = WriterLock(state_path, "ctagg run").acquire()
    try:
        rc = main(["once", cfg])
        err = capsys.readouterr().err
        status_rc = main(["status", cfg, "--json"])
    finally:
        held.release()

    assert rc == 7
    assert f"pid {os.getpid()}" in err
    assert "(ctagg run)" in err
    assert " since 20" in err
    assert status_rc == 0


def test_once_on_an_unusable_state_names_the_path(
    moto: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A state path that cannot be opened (here: a directory): exit 6, the path and the reason
    in one line."""
    bad = tmp_path / "state-dir"
    bad.mkdir()
    rc = main(["once", config(tmp_path, state_path=str(bad))])

    err = capsys.readouterr().err
    assert rc == 6
    assert f"state {bad}" in err
    assert "Traceback" not in err


def test_read_only_commands_do_not_create_a_state(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`ctagg status` on a path where nothing was collected says so and creates nothing."""
    assert main(["status", config(tmp_path)]) == 6
    assert "no state file" in capsys.readouterr().err
    assert not (tmp_path / "state.db").exists()
