"""The schema's history: versioned migrations, applied in order, each once.

Append-only: a migration, once released, is never edited; a new table or column is a new
version. What each table means is written beside the store that reads and writes it
(``aggregator/state/*.py``, ``aggregator/forward/store.py``, ``aggregator/detect/store.py``).
"""

from __future__ import annotations

from collections.abc import Callable

import sqlite_utils

Migration = Callable[[sqlite_utils.Database], None]


def _m1_core(db: sqlite_utils.Database) -> None:
    db.executescript(
        """
        CREATE TABLE objects (
            bucket TEXT NOT NULL,
            key TEXT NOT NULL,
            prefix TEXT NOT NULL,
            kind TEXT NOT NULL,
            etag TEXT,
            size INTEGER,
            events_in INTEGER NOT NULL DEFAULT 0,
            duplicates INTEGER NOT NULL DEFAULT 0,
            central_key TEXT,
            processed_at REAL NOT NULL,
            PRIMARY KEY (bucket, key)
        ) WITHOUT ROWID;
        CREATE INDEX objects_prefix ON objects (bucket, prefix);

        CREATE TABLE prefixes (
            bucket TEXT NOT NULL,
            prefix TEXT NOT NULL,
            source_id TEXT NOT NULL,
            day TEXT NOT NULL,
            closed INTEGER NOT NULL DEFAULT 0,
            objects INTEGER NOT NULL DEFAULT 0,
            events INTEGER NOT NULL DEFAULT 0,
            closed_at REAL,
            keys_z BLOB,
            PRIMARY KEY (bucket, prefix)
        ) WITHOUT ROWID;
        CREATE INDEX prefixes_source ON prefixes (source_id, day);

        CREATE TABLE quarantine (
            bucket TEXT NOT NULL,
            key TEXT NOT NULL,
            source_id TEXT NOT NULL,
            account_id TEXT,
            region TEXT,
            reason TEXT NOT NULL,
            status TEXT NOT NULL DEFAULT 'held',
            attempts INTEGER NOT NULL DEFAULT 1,
            first_at REAL NOT NULL,
            last_at REAL NOT NULL,
            PRIMARY KEY (bucket, key)
        ) WITHOUT ROWID;

        CREATE TABLE ledger (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            central_key TEXT NOT NULL UNIQUE,
            source_bucket TEXT NOT NULL,
            source_key TEXT NOT NULL,
            account_id TEXT NOT NULL,
            region TEXT NOT NULL,
            events INTEGER NOT NULL,
            bytes INTEGER NOT NULL,
            sha256 TEXT NOT NULL,
            first_event_time TEXT,
            last_event_time TEXT,
            written_at REAL NOT NULL
        );
        CREATE INDEX ledger_written ON ledger (written_at);

        CREATE TABLE dedupe (
            key BLOB PRIMARY KEY  -- event hour (4 bytes) + digest: ordered by time
        ) WITHOUT ROWID;

        CREATE TABLE sources (
            source_id TEXT PRIMARY KEY,
            account_id TEXT NOT NULL,
            region TEXT NOT NULL,
            bucket TEXT NOT NULL,
            prefix TEXT NOT NULL,
            trail_arn TEXT,
            last_key TEXT,
            last_object_at REAL,
            newest_event_time TEXT,
            objects INTEGER NOT NULL DEFAULT 0,
            events INTEGER NOT NULL DEFAULT 0,
            errors INTEGER NOT NULL DEFAULT 0,
            last_error TEXT,
            last_cycle_at REAL
        );

        CREATE TABLE failures (
            account_id TEXT NOT NULL,
            stage TEXT NOT NULL,
            reason TEXT NOT NULL,
            count INTEGER NOT NULL DEFAULT 1,
            first_at REAL NOT NULL,
            last_at REAL NOT NULL,
            PRIMARY KEY (account_id, stage)
        );
        """
    )


def _m30_service(db: sqlite_utils.Database) -> None:
    """Scheduler job bookkeeping and the retention log (what retention removed or had to keep),
    so a missing central object is known to be intentional."""
    db.executescript(
        """
        CREATE TABLE job_runs (
            job TEXT PRIMARY KEY,
            runs INTEGER NOT NULL DEFAULT 0,
            failures INTEGER NOT NULL DEFAULT 0,
            last_started_at REAL,
            last_finished_at REAL,
            last_ok_at REAL,
            last_error TEXT
        );
        CREATE TABLE retention_log (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            bucket TEXT NOT NULL,
            key TEXT NOT NULL,
            version_id TEXT,
            action TEXT NOT NULL,
            reason TEXT,
            at REAL NOT NULL
        );
        CREATE INDEX retention_log_key ON retention_log (bucket, key);
        """
    )


def _m20_forward(db: sqlite_utils.Database) -> None:
    """Forwarding (aggregator/forward/store.py): one cursor per connector over the ledger, and the
    dead letters (events a sink rejected for good), with the reason."""
    db.executescript(
        """
        CREATE TABLE forward_cursors (
            connector TEXT PRIMARY KEY,
            ledger_id INTEGER NOT NULL DEFAULT 0,
            record_offset INTEGER NOT NULL DEFAULT 0,
            delivered INTEGER NOT NULL DEFAULT 0,
            rejected INTEGER NOT NULL DEFAULT 0,
            updated_at REAL NOT NULL
        );
        CREATE TABLE forward_dead_letters (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            connector TEXT NOT NULL,
            event_id TEXT NOT NULL,
            central_key TEXT NOT NULL,
            record_index INTEGER NOT NULL,
            event_time TEXT,
            reason TEXT NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 1,
            created_at REAL NOT NULL,
            last_at REAL NOT NULL,
            UNIQUE (connector, event_id)
        );
        CREATE INDEX forward_dead_letters_at ON forward_dead_letters (connector, created_at);
        """
    )


def _m21_forward_health(db: sqlite_utils.Database) -> None:
    """Forwarding, visible and resolvable (aggregator/forward/store.py): each connector's state
    (ok, failing, fatal) with its reason and last delivery, for ``ctagg status`` in another
    process; dead letters that a retry or a replay delivered are marked resolved; and
    discovery's view of the accounts (name, OU path, tags), so replay and dead-letter retries
    enrich events as the daemon does."""
    db.executescript(
        """
        ALTER TABLE forward_cursors ADD COLUMN state TEXT NOT NULL DEFAULT 'ok';
        ALTER TABLE forward_cursors ADD COLUMN state_reason TEXT;
        ALTER TABLE forward_cursors ADD COLUMN state_since REAL;
        ALTER TABLE forward_cursors ADD COLUMN last_delivered_at REAL;
        ALTER TABLE forward_cursors ADD COLUMN filtered INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE forward_dead_letters ADD COLUMN resolved_at REAL;
        ALTER TABLE forward_dead_letters ADD COLUMN resolution TEXT;
        CREATE INDEX forward_dead_letters_open
            ON forward_dead_letters (connector, resolved_at, id);
        CREATE TABLE forward_accounts (
            account_id TEXT PRIMARY KEY,
            name TEXT NOT NULL DEFAULT '',
            ou_path TEXT NOT NULL DEFAULT '',
            ou_ids TEXT NOT NULL DEFAULT '[]',
            tags TEXT NOT NULL DEFAULT '{}',
            organization_id TEXT,
            seen_at REAL NOT NULL
        );
        """
    )


def _m10_detect(db: sqlite_utils.Database) -> None:
    """Detection: raised alerts (dedupe per rule x event key), hourly counts for rate anomalies,
    and the outbox of alerts not yet delivered to each sink."""
    db.executescript(
        """
        CREATE TABLE detect_alerts (
            rule_id TEXT NOT NULL,
            event_key TEXT NOT NULL,
            event_epoch INTEGER NOT NULL,
            created_at REAL NOT NULL,
            PRIMARY KEY (rule_id, event_key)
        ) WITHOUT ROWID;
        CREATE INDEX detect_alerts_created ON detect_alerts (created_at);
        CREATE TABLE detect_counts (
            account_id TEXT NOT NULL,
            metric TEXT NOT NULL,
            hour INTEGER NOT NULL,
            count INTEGER NOT NULL,
            PRIMARY KEY (account_id, metric, hour)
        ) WITHOUT ROWID;
        CREATE INDEX detect_counts_hour ON detect_counts (hour);
        CREATE TABLE detect_meta (
            name TEXT PRIMARY KEY,
            value TEXT NOT NULL
        );
        CREATE TABLE detect_outbox (
            alert_uid TEXT NOT NULL,
            sink TEXT NOT NULL,
            alert TEXT NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            next_at REAL NOT NULL,
            last_error TEXT,
            created_at REAL NOT NULL,
            PRIMARY KEY (alert_uid, sink)
        ) WITHOUT ROWID;
        """
    )


def _m40_integrity(db: sqlite_utils.Database) -> None:
    """Integrity (aggregator/state/integrity.py reads and writes these)."""
    db.executescript(
        """
        CREATE TABLE lookup_cursor (
            account_id TEXT NOT NULL,
            region TEXT NOT NULL,
            done_until REAL NOT NULL,
            updated_at REAL NOT NULL,
            PRIMARY KEY (account_id, region)
        ) WITHOUT ROWID;

        CREATE TABLE retry_queue (
            bucket TEXT NOT NULL,
            key TEXT NOT NULL,
            source_id TEXT NOT NULL,
            reason TEXT NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            queued_at REAL NOT NULL,
            last_at REAL NOT NULL,
            PRIMARY KEY (bucket, key)
        ) WITHOUT ROWID;
        CREATE INDEX retry_queue_source ON retry_queue (source_id);

        CREATE TABLE digest_expected (
            bucket TEXT NOT NULL,
            key TEXT NOT NULL,
            source_id TEXT NOT NULL,
            account_id TEXT NOT NULL,
            region TEXT NOT NULL,
            hour TEXT NOT NULL,
            hash TEXT NOT NULL,
            digest_key TEXT NOT NULL,
            PRIMARY KEY (bucket, key)
        ) WITHOUT ROWID;
        CREATE INDEX digest_expected_hour ON digest_expected (hour);

        CREATE TABLE digest_results (
            bucket TEXT NOT NULL,
            key TEXT NOT NULL,
            source_id TEXT NOT NULL,
            account_id TEXT NOT NULL,
            region TEXT NOT NULL,
            end_time TEXT,
            status TEXT NOT NULL,
            detail TEXT NOT NULL DEFAULT '',
            checked_at REAL NOT NULL,
            PRIMARY KEY (bucket, key)
        ) WITHOUT ROWID;

        CREATE TABLE archive_digests (
            hour TEXT PRIMARY KEY,
            key TEXT NOT NULL,
            sha256 TEXT NOT NULL,
            signature TEXT NOT NULL,
            objects INTEGER NOT NULL,
            first_ledger_id INTEGER,
            last_ledger_id INTEGER,
            written_at REAL NOT NULL
        );
        """
    )


def _m50_backfill(db: sqlite_utils.Database) -> None:
    """Resumable backfills (aggregator/state/checkpoints.py): which streams had their day
    prefixes walked, and per stream which days of the backfill range were listed completely.
    A day stays pending (``listed_at`` NULL) until one listing of it went through every page."""
    db.executescript(
        """
        CREATE TABLE stream_walks (
            source_id TEXT PRIMARY KEY,
            walked_at REAL NOT NULL,
            days INTEGER NOT NULL
        );
        CREATE TABLE backfill_days (
            source_id TEXT NOT NULL,
            day TEXT NOT NULL,
            bucket TEXT NOT NULL,
            prefix TEXT NOT NULL,
            found_at REAL NOT NULL,
            listed_at REAL,
            PRIMARY KEY (source_id, day)
        ) WITHOUT ROWID;
        """
    )


# Append-only: a migration, once released, is never edited. Other rooms add theirs here.
def _m45_operator(db: sqlite_utils.Database) -> None:
    """Operator views (issue 17): digests counted apart from log objects per source, and the
    body of every raised alert (``ctagg alerts`` reads them).

    Existing rows are recounted once: a source's digests are those of its digest stream (closed
    day prefixes keep their counts; open ones still have their object rows), and its last
    object, when that was a digest, becomes its newest log object still on record (else
    unknown until the next log)."""
    db.executescript(
        """
        ALTER TABLE sources ADD COLUMN digests INTEGER NOT NULL DEFAULT 0;
        UPDATE sources SET digests =
            (SELECT coalesce(sum(p.objects), 0) FROM prefixes p
              WHERE p.closed = 1
                AND p.source_id = replace(sources.source_id, '/CloudTrail/', '/CloudTrail-Digest/'))
          + (SELECT count(*) FROM objects o
              WHERE o.bucket = sources.bucket AND o.kind = 'digest'
                AND substr(o.prefix, 1, length(replace(sources.prefix, '/CloudTrail/',
                    '/CloudTrail-Digest/'))) = replace(sources.prefix, '/CloudTrail/',
                    '/CloudTrail-Digest/'));
        UPDATE sources SET objects = max(0, objects - digests);
        UPDATE sources SET last_key =
            (SELECT o.key FROM objects o
              WHERE o.bucket = sources.bucket AND o.kind IN ('log', 'insight')
                AND substr(o.prefix, 1, length(sources.prefix)) = sources.prefix
              ORDER BY o.processed_at DESC LIMIT 1)
          WHERE last_key LIKE '%/CloudTrail-Digest/%';

        ALTER TABLE detect_alerts ADD COLUMN alert TEXT;
        CREATE INDEX detect_alerts_rule ON detect_alerts (rule_id, created_at);
        """
    )


def _m60_truth(db: sqlite_utils.Database) -> None:
    """The archive is the truth, the window its cache (issue 13):

    * ``central_intents``  a central key about to be written, committed before the PUT and
                           removed by the object's commit: what a crash in between left behind
                           (settled from the archive before the next cycle)
    * ``archive_known``    central objects this state did not write, read back from the archive
                           (a lost, replaced or restored state; late hours)
    * ``archive_coverage`` the (account, region, kind, day) prefixes of the archive whose every
                           object's event keys are in the window
    * ``state_meta``       this state's identity and generation, matched against the archive's
                           writer marker
    * ``ledger.etag``      the S3 ETag of the central object (If-Match on a rewrite)
    """
    db.executescript(
        """
        CREATE TABLE central_intents (
            central_key TEXT PRIMARY KEY,
            source_id TEXT NOT NULL,
            source_bucket TEXT NOT NULL,
            source_key TEXT NOT NULL,
            account_id TEXT NOT NULL,
            region TEXT NOT NULL,
            started_at REAL NOT NULL
        );
        CREATE TABLE archive_known (
            central_key TEXT PRIMARY KEY,
            account_id TEXT NOT NULL,
            region TEXT NOT NULL,
            kind TEXT NOT NULL,
            day TEXT NOT NULL,
            etag TEXT,
            sha256 TEXT NOT NULL,
            bytes INTEGER NOT NULL,
            events INTEGER NOT NULL,
            first_event_time TEXT,
            last_event_time TEXT,
            read_at REAL NOT NULL
        );
        CREATE INDEX archive_known_day ON archive_known (account_id, region, kind, day);
        CREATE TABLE archive_coverage (
            account_id TEXT NOT NULL,
            region TEXT NOT NULL,
            kind TEXT NOT NULL,
            day TEXT NOT NULL,
            objects INTEGER NOT NULL,
            read_at REAL NOT NULL,
            PRIMARY KEY (account_id, region, kind, day)
        ) WITHOUT ROWID;
        CREATE TABLE state_meta (
            name TEXT PRIMARY KEY,
            value TEXT NOT NULL
        );
        ALTER TABLE ledger ADD COLUMN etag TEXT;
        """
    )


def _m70_resize(db: sqlite_utils.Database) -> None:
    """Resizing a sharded installation (issue 14, aggregator/state/snapshot.py): imported ledger
    rows past a connector's cursor that the old shard had already delivered (all ``records``
    of the row, or its first ones), which the connector's lane skips."""
    db.executescript(
        """
        CREATE TABLE forward_delivered (
            connector TEXT NOT NULL,
            ledger_id INTEGER NOT NULL,
            records INTEGER NOT NULL,
            PRIMARY KEY (connector, ledger_id)
        ) WITHOUT ROWID;
        """
    )


MIGRATIONS: list[tuple[int, str, Migration]] = [
    (1, "core positions: objects, prefixes, quarantine, ledger, dedupe, sources", _m1_core),
    (10, "detect: alert dedupe, hourly counts for rate anomalies", _m10_detect),
    (20, "forward: per-connector cursors and dead letters", _m20_forward),
    (21, "forward: connector state, resolved dead letters, accounts", _m21_forward_health),
    (30, "service: job runs, retention log", _m30_service),
    (40, "integrity: lookup cursor, retry queue, digest results, archive digests", _m40_integrity),
    (45, "operator: digests per source apart from log objects, stored alert bodies", _m45_operator),
    (50, "ingest: stream walks and the backfill days still to list", _m50_backfill),
    (60, "truth: central intents, archive read-back and coverage, state identity", _m60_truth),
    (70, "resize: imported ledger rows already delivered past a cursor", _m70_resize),
]
