"""``ctagg once | status | quarantine`` against moto: a missing central bucket is said once at
the start, and the cycle's outcome is summed up for people and machines."""

from __future__ import annotations

from pathlib import Path

import pytest
from opworld import CENTRAL, put_logs, write_config

from aggregator.cli import main
from aggregator.state import State


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
