"""State snapshots and the import of a snapshot's slots (issue 14: resizing a sharded
installation).

A snapshot is a consistent copy of a state file (``VACUUM INTO`` from a read-only connection
of its own, so the writer goes on meanwhile). When the shard count changes, each new shard
starts from an empty state and imports from the snapshots of the old shards everything of the
(account, region) pairs it now owns:

=========================================  ==================================================
tables                                     imported
=========================================  ==================================================
``sources``, ``lookup_cursor``,            rows of owned pairs (their ``account_id`` and
``digest_expected``, ``digest_results``,   ``region``)
``central_intents``, ``archive_known``,
``archive_coverage``, ``ledger``
``objects``, ``prefixes``,                 rows whose key or prefix is of an owned pair (the
``backfill_days``, ``stream_walks``,       CloudTrail layout ``AWSLogs/[o-…/]ACCOUNT/
``quarantine``, ``retry_queue``,           CloudTrail*/REGION/``, or ``lookup/ACCOUNT/
``retention_log``, ``forward_dead_letters``  REGION/``); keys of no pair: by shard 0 only
``dedupe``                                 keys whose account/region tag is one an owned pair
                                           has, or that no pair of the snapshot has (a
                                           superset: a key of another pair is never asked for)
``forward_cursors``                        translated: what each connector had delivered of
                                           the imported ledger rows stays delivered
                                           (``forward_delivered`` holds rows beyond the new
                                           cursor that were delivered, see below)
``forward_accounts``, ``detect_alerts``    all of them (enrichment; an alert is raised once)
``detect_outbox``                          by shard 0 only (each alert delivered once)
=========================================  ==================================================

Not imported: ``failures`` and ``job_runs`` (this process's own), ``archive_digests`` (each
shard keeps its own digest chain), ``detect_counts`` (anomaly baselines are rebuilt) and
``state_meta`` (the new state has its own identity; the snapshot's generation, trust and
window floor are returned to the caller, who decides what the new state may trust).

Ledger rows get new ids, in the order of the snapshots given and, within one, of their old
ids. A connector's cursor is one position in that order, so when rows of two snapshots were
delivered unevenly, the rows past the new cursor that were already delivered (in whole or
their first records) are kept in ``forward_delivered``, and the lanes skip them.
"""

from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from hashlib import blake2b
from pathlib import Path
from urllib.parse import quote

from aggregator.state.db import Database, StorageError

# (account, region) in a CloudTrail key or prefix, or in a LookupEvents pseudo source
_PAIR = re.compile(
    r"AWSLogs/(?:o-[a-z0-9]+/)?(\d{12})/CloudTrail(?:-Insight|-Digest)?/([a-z0-9-]+)/"
    r"|(?:^|/)lookup/(\d{12})/([a-z0-9-]+)/"
)
# detection's follower position in detect_meta (aggregator.detect.follow.CURSOR)
FOLLOW_CURSOR = "ledger_cursor"
# the tables whose rows belong to one pair by their account_id and region columns
_PAIR_TABLES = (
    "sources",
    "lookup_cursor",
    "digest_expected",
    "digest_results",
    "central_intents",
    "archive_known",
    "archive_coverage",
)
# the tables whose rows belong to one pair by a key or prefix column
_KEY_TABLES = (
    ("objects", "prefix"),
    ("prefixes", "prefix"),
    ("backfill_days", "prefix"),
    ("stream_walks", "source_id"),
    ("quarantine", "key"),
    ("retry_queue", "key"),
)
# tables of the schema an import leaves alone (and ones it handles by hand below)
_NOT_IMPORTED = frozenset(
    {
        "failures",
        "job_runs",
        "archive_digests",
        "detect_counts",
        "detect_meta",
        "state_meta",
        "schema_migrations",
        "sqlite_sequence",
        "forward_delivered",  # an imported state's own: rows of its ledger, not of ours
    }
)


def pair_of_key(key: str) -> tuple[str, str] | None:
    """The (account, region) a source key, day prefix, central key or LookupEvents pseudo key
    belongs to, or None for a key outside those layouts."""
    m = _PAIR.search(key)
    if m is None:
        return None
    return (m[1], m[2]) if m[1] else (m[3], m[4])


def pair_tag(account: str, region: str) -> bytes:
    """The 2-byte account/region tag in an event key (``aggregator.ingest.dedupe``)."""
    return blake2b(f"{account}\x1f{region}".encode(), digest_size=2).digest()


def take(path: str, dest: str | Path) -> None:
    """Write a consistent copy of the state file at ``path`` to ``dest`` (replaced if there):
    ``VACUUM INTO`` through a read-only connection of its own, beside the writer's."""
    dest = Path(dest)
    dest.unlink(missing_ok=True)
    uri = f"file:{quote(str(Path(path).resolve()))}?mode=ro"
    try:
        conn = sqlite3.connect(uri, uri=True, isolation_level=None)
        try:
            conn.execute("PRAGMA busy_timeout=10000")
            conn.execute("VACUUM INTO ?", (str(dest),))
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise StorageError(path, f"cannot snapshot into {dest}: {exc}") from exc


@dataclass(frozen=True)
class SnapshotMeta:
    """What a snapshot says of the state it copies (its ``state_meta``)."""

    state_id: str | None
    generation: int
    trusted_since: float | None
    window_floor: str
    window_pruned_at: float


def read_meta(path: str | Path) -> SnapshotMeta:
    """The identity, generation, trust and window floor of a snapshot (or any state file)."""
    db = Database(path)  # a snapshot of older code: migrated to this one first
    try:
        meta = dict(db.conn.execute("SELECT name, value FROM state_meta").fetchall())
    finally:
        db.close()
    trusted = meta.get("trusted_since")
    return SnapshotMeta(
        meta.get("state_id"),
        int(meta.get("generation") or 0),
        None if trusted is None else float(trusted),
        meta.get("window_floor") or "",
        float(meta.get("window_pruned_at") or 0),
    )


@dataclass
class ImportReport:
    snapshots: int = 0
    rows: dict[str, int] = field(default_factory=dict)
    cursors: dict[str, tuple[int, int]] = field(default_factory=dict)  # connector → position
    delivered_beyond: int = 0  # forward_delivered rows written

    def add(self, table: str, n: int) -> None:
        if n:
            self.rows[table] = self.rows.get(table, 0) + n


@dataclass
class _Delivery:
    """One connector's delivery of the imported ledger rows, in new ids."""

    done: dict[int, int] = field(default_factory=dict)  # new ledger id → records delivered
    counts: list[int] = field(default_factory=lambda: [0, 0, 0])  # delivered, rejected, filtered


def _columns(conn: sqlite3.Connection, table: str) -> list[str]:
    return [r[1] for r in conn.execute(f"PRAGMA main.table_info({table})")]


def import_slots(
    db: Database,
    snapshots: Sequence[str | Path],
    owns: Callable[[str, str], bool],
    *,
    first_shard: bool,
) -> ImportReport:
    """Import into the (empty) state ``db`` what the ``snapshots`` hold of the pairs ``owns``
    accepts (see the module's doc); ``first_shard``: this is shard 0, which also takes the
    rows of no pair and the alerts still to deliver. One transaction per snapshot."""
    report = ImportReport()
    deliveries: dict[str, _Delivery] = {}
    detect_done: list[tuple[int, int]] = []  # (first new id, last new id processed) per snapshot
    conn = db.conn

    def key_owned(key: str | None) -> int:
        pair = pair_of_key(key or "")
        return int(first_shard if pair is None else owns(*pair))

    for snap in snapshots:
        Database(snap).close()  # migrated to this schema (it is our own copy)
        with db.lock:
            conn.create_function("ctagg_owns", 2, lambda a, r: int(owns(a, r)), deterministic=True)
            conn.create_function("ctagg_key_owned", 1, key_owned, deterministic=True)
            conn.execute("ATTACH DATABASE ? AS snap", (str(snap),))
            try:
                with db.transaction() as c:
                    _import_one(c, report, deliveries, detect_done, owns=owns, first=first_shard)
            finally:
                conn.execute("DETACH DATABASE snap")
        report.snapshots += 1
    with db.transaction() as c:
        _write_cursors(c, report, deliveries)
        if detect_done:
            # the follower's cursor: before the first imported row it had not processed (rows
            # after it are processed again; their alerts are known, so none is raised twice)
            first_todo = min(last + 1 for _, last in detect_done)
            c.execute(
                "INSERT OR REPLACE INTO detect_meta (name, value) VALUES (?, ?)",
                (FOLLOW_CURSOR, str(first_todo - 1)),
            )
    return report


def _import_one(
    c: sqlite3.Connection,
    report: ImportReport,
    deliveries: dict[str, _Delivery],
    detect_done: list[tuple[int, int]],
    *,
    owns: Callable[[str, str], bool],
    first: bool,
) -> None:
    tables = {r[0] for r in c.execute("SELECT name FROM snap.sqlite_master WHERE type='table'")}
    handled: set[str] = set()

    def copy(table: str, where: str, *, verb: str = "INSERT") -> None:
        cols = ", ".join(_columns(c, table))
        n = c.execute(
            f"{verb} INTO main.{table} ({cols}) SELECT {cols} FROM snap.{table} WHERE {where}"
        ).rowcount
        report.add(table, n)
        handled.add(table)

    for table in _PAIR_TABLES:
        copy(table, "ctagg_owns(account_id, region)")
    for table, column in _KEY_TABLES:
        copy(table, f"ctagg_key_owned({column})")
    copy("retention_log", "ctagg_key_owned(key)")
    copy("forward_dead_letters", "ctagg_key_owned(central_key)", verb="INSERT OR IGNORE")
    copy("forward_accounts", "1", verb="INSERT OR REPLACE")
    copy("detect_alerts", "1", verb="INSERT OR IGNORE")
    if first:
        copy("detect_outbox", "1", verb="INSERT OR IGNORE")
    handled.add("detect_outbox")

    # the window: keys of an owned pair's tag, or of a tag no pair of the snapshot has
    pairs = {
        (str(a), str(r))
        for a, r in c.execute(
            "SELECT account_id, region FROM snap.sources UNION SELECT account_id, region "
            "FROM snap.ledger UNION SELECT account_id, region FROM snap.archive_known "
            "UNION SELECT account_id, region FROM snap.lookup_cursor"
        )
    }
    mine = {pair_tag(a, r) for a, r in pairs if owns(a, r)}
    theirs = {pair_tag(a, r) for a, r in pairs if not owns(a, r)} - mine
    c.create_function(
        "ctagg_key_tag_ok",
        1,
        lambda k: int(bytes(k[4:6]) not in theirs),
        deterministic=True,
    )
    copy("dedupe", "ctagg_key_tag_ok(key)", verb="INSERT OR IGNORE")

    # the ledger, in its old order, with new ids; then what each connector had delivered
    first_new = int(c.execute("SELECT coalesce(max(id), 0) FROM main.ledger").fetchone()[0]) + 1
    cols = [x for x in _columns(c, "ledger") if x != "id"]
    names = ", ".join(cols)
    n = c.execute(
        f"INSERT INTO main.ledger ({names}) SELECT {names} FROM snap.ledger "
        "WHERE ctagg_owns(account_id, region) ORDER BY id"
    ).rowcount
    report.add("ledger", n)
    handled.add("ledger")
    rows = c.execute(
        "SELECT m.id, s.id, s.events FROM main.ledger m JOIN snap.ledger s "
        "ON s.central_key = m.central_key WHERE m.id >= ? ORDER BY m.id",
        (first_new,),
    ).fetchall()
    for connector, old_id, offset, delivered, rejected, filtered in c.execute(
        "SELECT connector, ledger_id, record_offset, delivered, rejected, filtered "
        "FROM snap.forward_cursors"
    ).fetchall():
        d = deliveries.setdefault(str(connector), _Delivery())
        d.counts = [d.counts[0] + delivered, d.counts[1] + rejected, d.counts[2] + filtered]
        for new_id, old, events in rows:
            if old < old_id:
                d.done[new_id] = max(int(events), 1)
            elif old == old_id and offset:
                d.done[new_id] = int(offset)
    handled.add("forward_cursors")
    # the detection follower's position (the last ledger id it processed)
    got = c.execute(f"SELECT value FROM snap.detect_meta WHERE name='{FOLLOW_CURSOR}'").fetchone()
    if rows and got is not None:
        last_done = first_new - 1
        for new_id, old, _ in rows:
            if old > int(got[0]):
                break
            last_done = new_id
        detect_done.append((first_new, last_done))
    # a table this code does not know (a newer schema) is said out loud, never dropped silently
    unknown = tables - handled - _NOT_IMPORTED
    if unknown:
        raise ValueError(f"snapshot has tables an import does not know: {sorted(unknown)}")


def _write_cursors(
    c: sqlite3.Connection, report: ImportReport, deliveries: dict[str, _Delivery]
) -> None:
    rows = c.execute("SELECT id, events FROM ledger ORDER BY id").fetchall()
    now = time.time()
    for connector, d in deliveries.items():
        position = (rows[-1][0] + 1 if rows else 1, 0)
        for new_id, events in rows:
            done = d.done.get(new_id, 0)
            if done < max(int(events), 1):
                position = (new_id, done)
                break
        beyond = [
            (connector, new_id, done)
            for new_id, done in d.done.items()
            if new_id > position[0] and done
        ]
        c.executemany(
            "INSERT INTO forward_delivered (connector, ledger_id, records) VALUES (?, ?, ?)",
            beyond,
        )
        report.delivered_beyond += len(beyond)
        c.execute(
            "INSERT INTO forward_cursors (connector, ledger_id, record_offset, delivered, "
            "rejected, filtered, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (connector, position[0], position[1], *d.counts, now),
        )
        report.cursors[connector] = position


def reset(db: Database) -> int:
    """Empty every table of the state (a state of an earlier shard layout, superseded by the
    snapshots a resize imports). Returns the rows removed, its identity not counted."""
    removed = 0
    with db.transaction() as c:
        names = [
            r[0]
            for r in c.execute(
                "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%'"
            )
        ]
        for name in names:
            if name != "schema_migrations":
                n = c.execute(f"DELETE FROM {name}").rowcount
                removed += n if name != "state_meta" else 0
    return removed


__all__ = [
    "ImportReport",
    "SnapshotMeta",
    "import_slots",
    "pair_of_key",
    "pair_tag",
    "read_meta",
    "reset",
    "take",
]
