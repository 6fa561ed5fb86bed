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


# ---------------------------------------------------------------------------- ctagg alerts


def _raise_alerts(testdata: Path, tmp_path: Path) -> tuple[Path, str]:
    """What the daemon's detection does with no sink configured: alerts are stored (and a
    WARNING says they reach nobody). Returns the config and the captured log."""
    import yaml

    from aggregator import log
    from aggregator.config import DetectSettings
    from aggregator.detect.alerts import ArchivePointer
    from aggregator.detect.service import DetectionService
    from aggregator.state import State

    captured = io.StringIO()
    log.configure("INFO", json=True, stream=captured)
    state = State(tmp_path / "state.db")
    try:
        service = DetectionService(DetectSettings(), state, sinks=[])
        stratus = testdata / "stratus-red-team/detonation-logs"
        for name in ("defense-evasion.cloudtrail-stop", "defense-evasion.cloudtrail-delete"):
            records = json.loads((stratus / f"aws.{name}.json").read_text())
            service.process(records, ArchivePointer("central", f"AWSLogs/x/{name}.json.gz"))
    finally:
        state.close()
        log.configure("INFO")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "state": {"path": str(tmp_path / "state.db")},
                "archive": {"bucket": "central"},
                "forward": {
                    "connectors": [
                        {"name": "s", "type": "splunk_hec", "url": "https://x", "token": "${NOPE}"}
                    ]
                },
            }
        )
    )
    return cfg, captured.getvalue()


def test_alerts_with_no_sink_are_stored_listed_and_warned_about(
    testdata: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from aggregator.cli import main

    cfg, logged = _raise_alerts(testdata, tmp_path)
    warned = [json.loads(x) for x in logged.splitlines() if "alerts_unrouted" in x]
    assert len(warned) == 1  # bounded: one line for both scans
    assert warned[0]["level"] == "warning"
    assert "ctagg alerts CONFIG" in warned[0]["reason"]

    assert main(["alerts", str(cfg), "--json"]) == 0  # the sink's token is not needed
    docs = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert len(docs) >= 2
    assert all(d["raised_at"].endswith("Z") for d in docs)
    stop = [d for d in docs if d["event_name"] == "StopLogging"]
    assert stop
    assert stop[0]["archive"]["key"].endswith("cloudtrail-stop.json.gz")
    rule = stop[0]["rule_id"]

    assert main(["alerts", str(cfg), "--json", "--rule", rule]) == 0
    only = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert {d["rule_id"] for d in only} == {rule}
    title_word = stop[0]["title"].split()[-1].upper()
    assert main(["alerts", str(cfg), "--json", "--rule", title_word]) == 0
    assert rule in {json.loads(x)["rule_id"] for x in capsys.readouterr().out.splitlines()}
    assert main(["alerts", str(cfg), "--json", "--since", "2999-01-01"]) == 0
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("width", [80, 100, 120])
def test_alerts_table_fits_the_terminal(
    width: int, testdata: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rich.console import Console

    from aggregator.cli import detect as detect_cli
    from aggregator.cli import main

    cfg, _ = _raise_alerts(testdata, tmp_path)
    console = Console(width=width, record=True, force_terminal=True, color_system=None)
    monkeypatch.setattr("aggregator.cli._table.console_for", lambda out=None: console)

    assert main(["alerts", str(cfg)]) == 0

    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= width
    header = next(line for line in text.splitlines() if "┃" in line)
    for col in ("raised (UTC)", "severity", "account", "region"):
        assert col in header
    assert detect_cli.ALERT_COLUMNS[0].header == "raised (UTC)"


def test_concatenated_json_documents_on_stdin(stop_record: dict[str, Any]) -> None:
    """`cat a.json b.json | ctagg detect`: pretty-printed documents one after another (a bare
    record, then a log file) are read like any other input; nothing is reported as broken."""
    log_file = {"Records": [dict(stop_record, eventID="second-copy")]}
    data = (json.dumps(stop_record, indent=2) + "\n" + json.dumps(log_file, indent=2)).encode()

    code, lines, err = run_cli(["-"], stdin=data)

    assert code == 0, err
    assert err == ""
    assert {line["event_id"] for line in lines} == {stop_record["eventID"], "second-copy"}
