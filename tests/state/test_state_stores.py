"""SQLite state: versioned migrations, WAL, failures logged once, compaction keeps key names."""

from __future__ import annotations

from pathlib import Path

from aggregator.state import MIGRATIONS, ObjectOutcome, SourceRef, State

SRC = SourceRef(
    "b/AWSLogs/1/CloudTrail/us-east-1/",
    "111111111111",
    "us-east-1",
    "b",
    "AWSLogs/1/CloudTrail/us-east-1/",
)


def test_migrations_apply_once(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    s = State(path)
    assert s.schema_version() == max(v for v, _, _ in MIGRATIONS)
    assert s.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    s.close()
    s2 = State(path)
    assert s2.migrate() == []
    s2.close()


def test_migration_versions_are_unique_and_ordered() -> None:
    versions = [v for v, _, _ in MIGRATIONS]
    assert len(versions) == len(set(versions))


def test_failure_is_new_only_once_per_reason(tmp_path: Path) -> None:
    s = State(tmp_path / "s.db")
    assert s.failures.record("111111111111", "assume_role", "AccessDenied: x") is True
    assert s.failures.record("111111111111", "assume_role", "AccessDenied: x") is False
    assert s.failures.record("111111111111", "assume_role", "NoSuchEntity: y") is True
    assert s.failures.rows()[0]["count"] == 3
    s.close()


def test_close_prefixes_compacts_and_remembers(tmp_path: Path) -> None:
    s = State(tmp_path / "s.db")
    stream = "b/AWSLogs/1/CloudTrail/us-east-1/"
    day = "AWSLogs/1/CloudTrail/us-east-1/2024/01/01/"
    s.checkpoints.see_prefix(stream, "b", day, "2024-01-01")
    keys = [f"{day}k{i}.json.gz" for i in range(100)]
    for k in keys:
        s.commit_object(ObjectOutcome(SRC, k, day, "log", None, 1))
    assert s.checkpoints.close_prefixes(stream, "2024-01-02") == 1
    assert s.count("objects") == 0
    assert s.checkpoints.prefix_state("b", day) == (True, set())
    assert s.checkpoints.handled_keys("b", day) == set(keys)
    size = s.conn.execute("SELECT length(keys_z) FROM prefixes").fetchone()[0]
    assert size < 100 * 15  # compact: well under the key text itself
    s.close()
