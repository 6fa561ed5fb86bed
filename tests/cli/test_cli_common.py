"""Secrets only where used: read commands do not need the sinks' ${VAR}s; the commands that
forward or alert (run, replay) and validate still do."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from opworld import write_config

from aggregator.cli import main
from aggregator.state import State


def with_splunk(cfg: Path) -> Path:
    doc = yaml.safe_load(cfg.read_text())
    doc["forward"] = {
        "connectors": [
            {
                "name": "splunk",
                "type": "splunk_hec",
                "url": "https://splunk.example.com:8088",
                "token": "${SPLUNK_HEC_TOKEN}",
            }
        ]
    }
    doc["detect"] = {"webhook_url": "${CTAGG_ALERT_WEBHOOK}"}
    cfg.write_text(yaml.safe_dump(doc))
    return cfg


@pytest.mark.parametrize(
    ("argv", "code"),
    [
        (["status"], 0),
        (["quarantine"], 0),
        (["retry-quarantined"], 0),
        (["audit", "--json"], None),  # 0 or 1 (findings), never 2
        (["discover", "--json"], 0),
    ],
)
def test_read_commands_do_not_need_the_sinks_secrets(
    argv: list[str],
    code: int | None,
    moto: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.delenv("SPLUNK_HEC_TOKEN", raising=False)
    monkeypatch.delenv("CTAGG_ALERT_WEBHOOK", raising=False)
    cfg = with_splunk(write_config(tmp_path, moto))
    State(yaml.safe_load(cfg.read_text())["state"]["path"]).close()  # read commands need one

    got = main(["--log-level", "ERROR", argv[0], str(cfg), *argv[1:]])

    err = capsys.readouterr().err
    assert "SPLUNK_HEC_TOKEN" not in err
    assert got != 2, err
    if code is not None:
        assert got == code, err


@pytest.mark.parametrize(
    "argv",
    [
        ["validate"],
        ["run"],
        ["replay", "--connector", "splunk", "--since", "2024-01-01", "--until", "2024-01-02"],
    ],
)
def test_commands_that_forward_still_need_them(
    argv: list[str],
    moto: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.delenv("SPLUNK_HEC_TOKEN", raising=False)
    cfg = with_splunk(write_config(tmp_path, moto))

    with pytest.raises(SystemExit) as exc:
        main([argv[0], str(cfg), *argv[1:]])

    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "forward.connectors[0].token: environment variable SPLUNK_HEC_TOKEN is not set" in err
