"""One way to fail: every command turns an expected error into one line with a shared exit code,
``--debug`` adds the traceback, and argument errors (log level, dates) are clear."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import yaml

from aggregator.cli import main
from aggregator.cli._errors import (
    EXIT_ACCESS,
    EXIT_CODES,
    EXIT_CONFIG,
    EXIT_PARTIAL,
    EXIT_STATE,
    CliError,
    explain,
)
from aggregator.state import State
from tests.archive.test_archive_digests import write_keypair


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def unreachable_config(tmp_path: Path) -> Path:
    _, pub = write_keypair(tmp_path)
    p = tmp_path / "ctagg.yaml"
    p.write_text(
        yaml.safe_dump(
            {
                "state": {"path": str(tmp_path / "state.db")},
                "aws": {
                    "endpoint_url": f"http://127.0.0.1:{closed_port()}",
                    "max_attempts": 1,
                    "connect_timeout_secs": 1,
                },
                "archive": {"bucket": "central"},
                "integrity": {"archive_digest": {"public_key_path": str(pub)}},
            }
        )
    )
    return p


COMMANDS = ["once", "audit", "completeness", "validate-digests", "verify-archive"]


@pytest.mark.parametrize("command", [*COMMANDS, "discover", "doctor"])
def test_unreachable_endpoint_is_one_line_and_exit_3(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = unreachable_config(tmp_path)
    State(str(tmp_path / "state.db")).close()  # verify-archive reads an existing state

    code = main(["--log-level", "ERROR", command, str(cfg)])

    err = capsys.readouterr().err
    assert code == EXIT_ACCESS
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"ctagg {command}: ")
    assert "cannot reach the AWS endpoint http://127.0.0.1:" in lines[0]
    assert "aws.endpoint_url" in lines[0]  # what to do


def test_debug_adds_the_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = unreachable_config(tmp_path)

    code = main(["--debug", "--log-level", "ERROR", "discover", str(cfg)])

    err = capsys.readouterr().err
    assert code == EXIT_ACCESS
    assert "Traceback (most recent call last)" in err
    assert "EndpointConnectionError" in err
    assert err.rstrip().splitlines()[-1].startswith("ctagg discover: discovery failed: ")


def test_a_bogus_log_level_is_a_clear_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--log-level", "bogus", "validate", "x.yaml"])

    assert exc.value.code == EXIT_CONFIG
    err = capsys.readouterr().err
    assert "argument --log-level: invalid choice: 'BOGUS'" in err
    assert "KeyError" not in err


def test_log_level_takes_any_case(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("archive: {bucket: central}\n")

    assert main(["--log-level", "warning", "validate", str(cfg)]) == 0


@pytest.mark.parametrize(
    "argv",
    [
        ["replay", "C", "--connector", "x", "--since", "2024-13-01", "--until", "2024-01-02"],
        ["completeness", "C", "--since", "yesterday"],
        ["validate-digests", "C", "--until", "01/02/2024"],
    ],
)
def test_a_bad_date_names_the_argument_and_the_format(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)

    assert exc.value.code == EXIT_CONFIG
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "not a date or date-time" in err
    assert "YYYY-MM-DD" in err
    assert "parse_when" not in err


def test_a_window_that_ends_before_it_starts_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {"state": {"path": str(tmp_path / "s.db")}, "archive": {"bucket": "central"}}
        )
    )

    code = main(
        ["completeness", str(cfg), "--offline", "--since", "2024-02-01", "--until", "2024-01-01"]
    )

    assert code == EXIT_CONFIG
    assert "is not before --until" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["status", "quarantine", "once", "completeness"])
def test_a_state_path_that_cannot_be_opened_is_named(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the state's folder should be")
    state_path = blocker / "state.db"
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        yaml.safe_dump({"state": {"path": str(state_path)}, "archive": {"bucket": "central"}})
    )
    extra = ["--offline"] if command == "completeness" else []

    code = main(["--log-level", "ERROR", command, str(cfg), *extra])

    err = capsys.readouterr().err.strip()
    assert code == EXIT_STATE
    assert len(err.splitlines()) == 1, err
    assert f"state {state_path}: " in err  # read commands: "no state file here"
    assert "state.path" in err
    assert "OperationalError" not in err


def test_a_file_that_is_not_a_database_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state_path = tmp_path / "state.db"
    state_path.write_bytes(b"this is not SQLite" * 100)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        yaml.safe_dump({"state": {"path": str(state_path)}, "archive": {"bucket": "central"}})
    )

    code = main(["status", str(cfg)])

    err = capsys.readouterr().err
    assert code == EXIT_STATE
    assert f"state {state_path}: file is not a database" in err


def test_unexpected_errors_say_so_and_point_at_debug() -> None:
    problem = explain(ZeroDivisionError("division by zero"))

    assert problem.code == 5
    assert problem.line("ctagg x") == (
        "ctagg x: unexpected error: ZeroDivisionError: division by zero; run with --debug for "
        "the traceback, and report it"
    )


def test_exit_codes_are_distinct_and_documented_in_help(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])

    out = capsys.readouterr().out
    assert set(EXIT_CODES) == {0, 1, 2, 3, 4, 5, 6, 7, 130}
    for code, text in EXIT_CODES.items():
        assert f"{code:<4} {text}" in out
    assert CliError("x").code == EXIT_ACCESS
    assert EXIT_PARTIAL == 4


def test_readme_documents_every_exit_code_and_the_new_commands() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    for code in EXIT_CODES:
        assert f"\n| {code} | " in readme
    for command in ("ctagg backfill CONFIG --since DATE", "ctagg alerts CONFIG"):
        assert command in readme
