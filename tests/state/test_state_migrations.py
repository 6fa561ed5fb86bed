"""Migration 45 recounts what older states recorded: digests apart from log objects, and a last
object that was a digest becomes the newest log object on record."""

from __future__ import annotations

from pathlib import Path

import pytest

from aggregator.state import MIGRATIONS, State
from aggregator.state import db as state_db
from tests.state.test_state_sources import DIGEST_DAY, SRC, digest, log


def test_old_counts_are_split_into_logs_and_digests(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "s.db"
    monkeypatch.setattr(state_db, "MIGRATIONS", [m for m in MIGRATIONS if m[0] <= 40])
    old = State(path)
    with old.transaction() as c:  # what the code before migration 45 recorded
        for o in (log(1), log(2), digest(1), digest(2)):
            c.execute(
                "INSERT INTO objects (bucket, key, prefix, kind, processed_at) VALUES (?,?,?,?,?)",
                ("b", o.key, o.day_prefix, o.kind, {"log": 1.0, "digest": 2.0}[o.kind]),
            )
        c.execute(
            "INSERT INTO prefixes (bucket, prefix, source_id, day, closed, objects) "
            "VALUES ('b', ?, ?, '2024-04-30', 1, 24)",
            (DIGEST_DAY.replace("05/01", "04/30"), "b/" + DIGEST_DAY[: -len("2024/05/01/")]),
        )
        c.execute(
            "INSERT INTO sources (source_id, account_id, region, bucket, prefix, last_key, "
            "objects, events) VALUES (?,?,?,?,?,?,?,?)",
            (SRC.source_id, SRC.account_id, SRC.region, "b", SRC.prefix, digest(2).key, 28, 6),
        )
    old.close()
    monkeypatch.undo()

    state = State(path)
    try:
        (row,) = state.sources.status()
    finally:
        state.close()
    assert row.digests == 26  # 24 in a closed digest day + 2 still open
    assert row.objects == 2
    assert row.last_key in (log(1).key, log(2).key)
