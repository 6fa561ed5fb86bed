"""The service tables (migration 30) and concurrent opening of one state file."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

from aggregator.state import MIGRATIONS, State


def _open(path: str) -> None:
    State(path).close()


def test_processes_opening_a_new_state_at_once_do_not_collide(tmp_path: Path) -> None:
    """`ctagg status` started next to a starting `ctagg run`: both open (and migrate) the same
    new file; no migration is applied twice and neither fails."""
    path = str(tmp_path / "s.db")
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_open, args=(path,)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    st = State(path)
    try:
        assert st.schema_version() == max(v for v, _, _ in MIGRATIONS)
        n = st.conn.execute("SELECT count(*) FROM schema_migrations").fetchone()[0]
        assert n == len(MIGRATIONS)
    finally:
        st.close()


def test_job_runs_and_retention_log(tmp_path: Path) -> None:
    """Job bookkeeping counts runs and failures; the retention log keeps what was removed."""
    st = State(tmp_path / "s.db")
    st.jobs.started("ingest", 1.0)
    st.jobs.finished("ingest", 2.0)
    st.jobs.finished("ingest", 3.0, "RuntimeError: x")
    row = st.jobs.runs()["ingest"]
    assert (row["runs"], row["failures"], row["last_ok_at"]) == (2, 1, 2.0)
    assert row["last_error"] == "RuntimeError: x"
    st.retention_log.record(
        [("b", "k", "v1", "deleted", "old"), ("b", "k2", None, "locked", "hold")]
    )
    assert [r["key"] for r in st.retention_log.rows("locked")] == ["k2"]
    st.close()
