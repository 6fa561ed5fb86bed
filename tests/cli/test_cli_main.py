"""The command table: every read command takes --json (NDJSON: one JSON document per line)."""

from __future__ import annotations

import pytest

from aggregator.cli import COMMANDS, build_parser

READ_COMMANDS = [
    "validate",
    "discover",
    "doctor",
    "once",
    "status",
    "quarantine",
    "audit",
    "completeness",
    "validate-digests",
    "archive-digest",
    "verify-archive",
    "retention",
    "alerts",
]


@pytest.mark.parametrize("command", READ_COMMANDS)
def test_every_read_command_has_json(command: str) -> None:
    args = build_parser().parse_args([command, "CONFIG", "--json"])
    assert args.json is True


def test_the_list_names_real_commands() -> None:
    names = {c[0] for c in COMMANDS}
    assert set(READ_COMMANDS) <= names
    assert "demo" in names
