"""``ctagg once`` and the state commands through ``main``: expected failures are one line and
a documented exit code (3 discovery, 4 unusable state, 5 another writer), never a
traceback; read-only commands work beside a writer."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from awsfixtures import client
from fakes.faultproxy import Fault, FaultProxy, any_request

from aggregator.cli import main
from aggregator.state import State
from aggregator.state.lock import WriterLock


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
    """While another process holds the state (the daemon), `ctagg once` exits 5 and says who
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

    assert rc == 5
    assert f"pid {os.getpid()}" in err
    assert "(ctagg run)" in err
    assert " since 20" in err
    assert status_rc == 0


def test_once_on_an_unusable_state_names_the_path(
    moto: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A state path that cannot be opened (here: a directory): exit 4, the path and the reason
    in one line."""
    bad = tmp_path / "state-dir"
    bad.mkdir()
    rc = main(["once", config(tmp_path, state_path=str(bad))])

    err = capsys.readouterr().err
    assert rc == 4
    assert f"state {bad}" in err
    assert "Traceback" not in err


def test_read_only_commands_do_not_create_a_state(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`ctagg status` on a path where nothing was collected says so and creates nothing."""
    with pytest.raises(SystemExit) as exited:
        main(["status", config(tmp_path)])

    assert exited.value.code == 4
    assert "no state file" in capsys.readouterr().err
    assert not (tmp_path / "state.db").exists()
