"""``ctagg detect``: every envelope in, one JSON alert per line out, problems on stderr."""

from __future__ import annotations

import gzip
import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from aggregator.cli import build_parser

STRATUS = "stratus-red-team/detonation-logs"


def run_cli(argv: list[str], stdin: bytes = b"") -> tuple[int, list[dict[str, Any]], str]:
    from aggregator.cli.detect import run

    args = build_parser().parse_args(["detect", *argv])
    out, err = io.StringIO(), io.StringIO()
    code = run(args, stdin=io.BytesIO(stdin), stdout=out, stderr=err)
    lines = [json.loads(x) for x in out.getvalue().splitlines()]
    return code, lines, err.getvalue()


@pytest.fixture
def stop_record(testdata: Path) -> dict[str, Any]:
    (rec,) = json.loads(
        (testdata / STRATUS / "aws.defense-evasion.cloudtrail-stop.json").read_text()
    )
    return dict(rec)


def titles(lines: list[dict[str, Any]]) -> set[str]:
    return {x["title"] for x in lines}


def test_every_envelope(tmp_path: Path, stop_record: dict[str, Any]) -> None:
    """Bare record, gzip log file, EventBridge event and NDJSON all yield the same alerts."""
    bare = tmp_path / "bare.json"
    bare.write_text(json.dumps(stop_record))
    logfile = tmp_path / "log.json.gz"
    logfile.write_bytes(gzip.compress(json.dumps({"Records": [stop_record]}).encode()))
    eb = tmp_path / "eb.json"
    eb.write_text(
        json.dumps(
            {
                "detail-type": "AWS API Call via CloudTrail",
                "source": "aws.cloudtrail",
                "detail": stop_record,
            }
        )
    )
    nd = tmp_path / "records.ndjson"
    nd.write_text(
        json.dumps(stop_record) + "\n" + json.dumps(dict(stop_record, eventID="e2")) + "\n"
    )
    for path, n_events in ((bare, 1), (logfile, 1), (eb, 1), (nd, 2)):
        code, lines, err = run_cli([str(path)])
        assert code == 0, err
        assert err == ""
        assert len(lines) == 2 * n_events
        assert titles(lines) == {
            "CloudTrail Logging Stopped or Trail Deleted",
            "CloudTrail Configuration Changed",
        }
        for line in lines:
            for field in ("rule_id", "title", "severity", "event_id", "account_id", "region"):
                assert line[field], field
            assert line["event_name"] == "StopLogging"
            assert line["event_time"] == stop_record["eventTime"]
            assert isinstance(line["cis"], list)


def test_stdin_and_dedupe_across_inputs(stop_record: dict[str, Any]) -> None:
    """Records come from stdin; the same event read twice raises its alerts once."""
    data = json.dumps({"Records": [stop_record, stop_record]}).encode()
    code, lines, _ = run_cli([], stdin=data)
    assert code == 0
    assert len(lines) == 2


def test_bad_inputs_go_to_stderr_and_exit_4(tmp_path: Path, stop_record: dict[str, Any]) -> None:
    """Unreadable files and non-records are reported with a reason; good records still alert;
    exit 4 (partial failure)."""
    nd = tmp_path / "mixed.ndjson"
    nd.write_text(json.dumps(stop_record) + "\n{not json\n" + json.dumps({"hello": 1}) + "\n")
    code, lines, err = run_cli([str(nd), str(tmp_path / "missing.json")])
    assert code == 4
    assert len(lines) == 2
    assert f"{nd}:2: invalid JSON" in err
    assert f"{nd}:3: not a CloudTrail record" in err
    assert "missing.json: cannot read" in err


def test_user_rules_and_no_builtin(tmp_path: Path, stop_record: dict[str, Any]) -> None:
    """--rules adds a directory; --no-builtin runs only it; a broken rule: exit 2 (config),
    file named."""
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "stop.yml").write_text(
        """
title: Any trail change by christophe
id: 7c4e1b5a-2f0d-4b6e-9a8c-5d3e2f1a0b0c
level: informational
tags: [attack.t1562.008]
logsource: {product: aws, service: cloudtrail}
detection:
  sel:
    eventSource: cloudtrail.amazonaws.com
    userIdentity.userName|startswith: chris
  condition: sel
"""
    )
    data = json.dumps(stop_record).encode()
    code, lines, _ = run_cli(["--rules", str(rules), "--no-builtin", "-"], stdin=data)
    assert code == 0
    assert titles(lines) == {"Any trail change by christophe"}
    code, lines, _ = run_cli(["--rules", str(rules)], stdin=data)
    assert len(lines) == 3
    (rules / "bad.yml").write_text(
        "title: b\nid: 7c4e1b5a-2f0d-4b6e-9a8c-5d3e2f1a0b0d\nlevel: low\n"
        "logsource: {product: aws, service: cloudtrail}\n"
        "detection: {sel: {eventName|base64offset: x}, condition: sel}\n"
    )
    code, lines, err = run_cli(["--rules", str(rules)], stdin=data)
    assert code == 2
    assert lines == []
    assert "bad.yml" in err
    assert "modifier 'base64offset'" in err


def test_ocsf_output(stop_record: dict[str, Any]) -> None:
    """--ocsf prints Detection Findings instead of flat alert lines."""
    code, lines, _ = run_cli(["--ocsf"], stdin=json.dumps(stop_record).encode())
    assert code == 0
    assert {x["class_uid"] for x in lines} == {2004}


def test_entry_point_over_stratus_files(testdata: Path) -> None:
    """The installed command runs over real detonation logs and a broken rule is reported."""
    files = sorted(str(p) for p in (testdata / STRATUS).glob("*.json"))
    proc = subprocess.run(
        [sys.executable, "-m", "aggregator", "detect", *files],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(x) for x in proc.stdout.splitlines()]
    assert "Account Tried to Leave the Organization" in titles(lines)
    assert len({x["alert_id"] for x in lines}) == len(lines)
