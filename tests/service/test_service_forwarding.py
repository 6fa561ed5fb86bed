"""What /readyz says about the connectors: fatal and failing ones are named with their reason;
``forward.not_ready_when`` decides which of them make the service not ready."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from aggregator.service.forwarding import ConnectorsReady
from aggregator.service.health import Health
from aggregator.state import State
from tests.forward.test_forward_forwarder import (
    MemoryArchive,
    fwd_of,
    hec_conn,
    load_ledger,
    os_conn,
    settings,
)


@pytest.mark.parametrize(
    ("mode", "ready_when_fatal", "ready_when_failing"),
    [("fatal", False, True), ("failing", False, False), ("never", True, True)],
)
def test_readyz_names_fatal_and_failing_connectors(
    tmp_path: Path, testdata: Path, mode: str, ready_when_fatal: bool, ready_when_failing: bool
) -> None:
    state = State(tmp_path / "s.db")
    archive = MemoryArchive()
    load_ledger(state, archive, testdata)
    fwd = fwd_of(
        settings(os_conn("http://127.0.0.1:9"), hec_conn("http://127.0.0.1:9"),
                 max_backlog_objects=3),
        state, archive, bucket="c",
    )  # fmt: skip
    health = Health()
    health.add_ready(ConnectorsReady(fwd, mode))
    ok, report = health.readiness()
    assert ok
    assert report["connectors"]["reason"] == "2 connector(s) ok"

    os_status = fwd.lanes["os"].status
    os_status.failing_since, os_status.warned = time.time() - 75, True
    os_status.last_error = "connection: ConnectionError"
    ok, report = health.readiness()
    assert ok is ready_when_failing
    assert "os failing for 75s: connection: ConnectionError" in report["connectors"]["reason"]

    fwd.lanes["hec"].status.fatal = "splunk_hec hec: HEC 403 code 4: Invalid token"
    assert fwd.backpressure()  # the failing (not fatal) one still holds collection back
    ok, report = health.readiness()
    reason = report["connectors"]["reason"]
    assert ok is (ready_when_fatal and ready_when_failing)
    assert "hec fatal: splunk_hec hec: HEC 403 code 4: Invalid token" in reason
    assert "collection paused: backlog full for os" in reason
    state.close()
