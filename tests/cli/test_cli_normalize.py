"""``ctagg normalize``: files or stdin in, one JSON line per event out, in input order; bad
input on stderr with path and reason, good events still printed, exit 4 (partial) if anything
failed."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from aggregator.cli import main

ROOT = Path(__file__).resolve().parents[2]


def _rec(event_id: str, **over: object) -> dict[str, object]:
    rec: dict[str, object] = {
        "eventVersion": "1.08",
        "eventTime": "2024-01-01T00:00:00Z",
        "eventSource": "sts.amazonaws.com",
        "eventName": "AssumeRole",
        "eventID": event_id,
        "responseElements": {"credentials": {"sessionToken": "IQoJ-very-secret-token"}},
    }
    rec.update(over)
    return rec


def test_files_in_order_with_bad_input_reported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "a.json.gz"
    log.write_bytes(gzip.compress(json.dumps({"Records": [_rec("1"), _rec("2")]}).encode()))
    nd = tmp_path / "b.ndjson"
    nd.write_text(json.dumps(_rec("3")) + "\n{oops\n" + json.dumps(_rec("4")) + "\n")
    missing = tmp_path / "missing.json"
    code = main(["normalize", "--schema", "ecs", str(log), str(missing), str(nd)])
    out, err = capsys.readouterr()
    ids = [json.loads(line)["event"]["id"] for line in out.splitlines()]
    assert ids == ["1", "2", "3", "4"]
    assert code == 4
    assert f"{missing}: cannot read" in err
    assert f"{nd}:2: invalid JSON" in err
    assert "IQoJ-very-secret-token" not in out  # default redaction applies


def test_all_good_exits_zero_and_digest_is_skipped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], testdata: Path
) -> None:
    digest_line = (testdata / "awsdocs/aws-cloudtrail-user-guide/digest_examples.jsonl").read_text()
    digest = tmp_path / "digest.json"
    digest.write_text(json.dumps(json.loads(digest_line.splitlines()[0])["json"]))
    good = tmp_path / "r.json"
    good.write_text(json.dumps(_rec("9")))
    code = main(["normalize", "--schema", "raw", str(digest), str(good)])
    out, err = capsys.readouterr()
    assert code == 0
    lines = out.splitlines()
    assert len(lines) == 1
    assert json.loads(lines[0])["sourcetype"] == "aws:cloudtrail"
    assert "digest file, not events" in err


def test_stdin_and_config(tmp_path: Path) -> None:
    """Reads stdin when no path is given; --config applies the normalize section."""
    config = tmp_path / "c.yaml"
    config.write_text(
        "archive: {bucket: central-bucket}\n"
        "normalize:\n"
        "  redaction:\n"
        "    rules: [{path: eventName, action: drop}]\n"
    )
    data = b"\n".join(orjson.dumps(_rec(str(i))) for i in range(3)) + b"\nnot json\n"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "aggregator",
            "normalize",
            "--schema",
            "ocsf",
            "--config",
            str(config),
        ],
        input=data,
        capture_output=True,
        cwd=ROOT,
        check=False,
        timeout=60,
    )
    assert proc.returncode == 4
    docs = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [d["metadata"]["uid"] for d in docs] == ["0", "1", "2"]
    assert {d["api"]["operation"] for d in docs} == {"Unknown"}  # eventName dropped first
    assert b"<stdin>:4: invalid JSON" in proc.stderr


def test_bad_config_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("archive: {bucket: central-bucket}\nnormalize: {max_event_bytes: 1}\n")
    with pytest.raises(SystemExit) as exc:
        main(["normalize", "--schema", "ecs", "--config", str(config), "-"])
    assert exc.value.code == 2
    assert "normalize.max_event_bytes" in capsys.readouterr().err
