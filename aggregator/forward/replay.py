"""``ctagg replay`` and ``ctagg dead-letters --retry``: re-send archived events to one
connector through its lane (filters, the config's normalizer, batching, retries, dead letters),
without touching its cursor.

Both build their forwarder with :func:`~aggregator.forward.forwarder.forwarder_for`, so the
documents are the daemon's: the same redaction, the same schema, and the same enrichment (the
account snapshot the daemon saved after its last discovery; a discovery of their own when
there is none). A dead letter whose event a replay or a retry delivered is marked resolved.

Both check each central object's bytes against the ledger's SHA-256 first: a modified object
is refused (named in the report, none of its events sent) and the rest goes on.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aggregator.archive import store as archive
from aggregator.archive.store import ObjectModified
from aggregator.aws.clients import Aws
from aggregator.aws.inventory import Account
from aggregator.config import Settings
from aggregator.forward.documents import AccountLookup, event_time
from aggregator.forward.forwarder import Forwarder, forwarder_for
from aggregator.forward.lanes import OBJECT_INDEX, GaveUp, Item, Lane
from aggregator.forward.store import DeadLetter, ForwardStore
from aggregator.log import get_logger
from aggregator.state import State
from connectors.base import Fatal

log = get_logger("aggregator.forward")

# A one-shot command gives up on a sink that stays down (about a minute of backoff by default)
# instead of waiting forever as the daemon does.
ONE_SHOT_ATTEMPTS = 8


@dataclass
class ReplayReport:
    objects: int = 0
    events: int = 0
    delivered: int = 0
    rejected: int = 0
    filtered: int = 0
    resolved: int = 0  # dead letters of this connector now delivered
    still_dead: list[dict[str, Any]] = field(default_factory=list)
    modified: list[ObjectModified] = field(default_factory=list)  # objects refused


def _iso(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class _Sender:
    """Batches items for one lane and settles their dead letters."""

    def __init__(self, fwd: Forwarder, lane: Lane, report: ReplayReport, attempts: int | None):
        self.lane, self.store, self.report = lane, fwd.store, report
        self.settings = fwd.settings
        self.attempts = attempts
        self.batch: list[Item] = []
        self.nbytes = 0
        # resolution costs a query per batch only when the connector has open dead letters
        self.has_dead = self.store.open_dead_letters(lane.name) > 0

    async def add(self, got: Item | DeadLetter | None) -> None:
        report = self.report
        report.events += 1
        if got is None:
            report.filtered += 1
            return
        if isinstance(got, DeadLetter):
            self.store.commit(self.lane.name, None, 0, [got])
            report.rejected += 1
            return
        self.batch.append(got)
        self.nbytes += len(got.event.body or got.event.data) + 100
        s = self.settings
        if len(self.batch) >= s.batch_max_events or self.nbytes >= s.batch_max_bytes:
            await self.flush()

    async def flush(self) -> None:
        if not self.batch:
            return
        batch, self.batch, self.nbytes = self.batch, [], 0
        delivered, dead = await self.lane.deliver(batch, max_attempts=self.attempts)
        self.store.commit(self.lane.name, None, 0, dead)
        self.report.delivered += delivered
        self.report.rejected += len(dead)
        if self.has_dead:
            bad = {d.event_id for d in dead}
            ok = [i for i in (it.event_id for it in batch) if i not in bad]
            self.report.resolved += self.store.resolve(self.lane.name, ok)


def _lane(fwd: Forwarder, name: str) -> Lane:
    lane = fwd.lanes.get(name)
    if lane is None:
        raise KeyError(f"no enabled connector named {name!r}")
    lane.persist_state = False  # the daemon's view of the connector is not ours to change
    return lane


Progress = Callable[[int, int | None], None]  # (central objects done, of total)


async def replay(
    fwd: Forwarder,
    name: str,
    since: datetime,
    until: datetime,
    *,
    max_attempts: int | None = None,
    progress: Progress | None = None,
) -> ReplayReport:
    """Re-send events with since <= eventTime < until from the central archive;
    ``progress(done, total)`` after each central object."""
    lane = _lane(fwd, name)
    lo, hi = since.timestamp(), until.timestamp()
    report = ReplayReport()
    sender = _Sender(fwd, lane, report, max_attempts)
    try:
        rows = list(fwd.store.ledger.overlapping(_iso(since), _iso(until)))
        if progress is not None:
            progress(0, len(rows))
        for row in rows:
            key = str(row["central_key"])
            try:
                records = await lane.records(key, row.get("sha256"))
            except ObjectModified as exc:
                lane.refuse(exc)
                report.modified.append(exc)
                report.objects += 1
                if progress is not None:
                    progress(report.objects, len(rows))
                continue
            report.objects += 1
            for i, rec in enumerate(records):
                if not isinstance(rec, dict) or not lo <= event_time(rec) < hi:
                    continue
                await sender.add(lane.item(rec, key, i))
            await sender.flush()
            if progress is not None:
                progress(report.objects, len(rows))
    finally:
        await lane.close()
    return report


async def retry_dead_letters(
    fwd: Forwarder,
    name: str,
    *,
    max_attempts: int | None = ONE_SHOT_ATTEMPTS,
    limit: int | None = None,
) -> ReplayReport:
    """Send the open dead letters of one connector again, from the archive, through the
    normal path. Delivered ones are marked resolved; events the connector's conditions now
    filter out are resolved as ``filtered``; a new rejection keeps them open (one more attempt,
    the newest reason)."""
    lane = _lane(fwd, name)
    store = fwd.store
    report = ReplayReport()
    rows = store.dead_letters(name, limit=limit)
    by_key: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_key.setdefault(str(r["central_key"]), []).append(r)
    sender = _Sender(fwd, lane, report, max_attempts)
    sender.has_dead = True
    filtered: list[str] = []
    try:
        for key, all_letters in by_key.items():
            letters = all_letters
            try:
                records = await lane.records(key, store.ledger.sha256_of(key))
            except ObjectModified as exc:  # still modified: every letter of it stays open
                lane.refuse(exc)
                report.modified.append(exc)
                for r in letters:
                    store.note_retry(name, str(r["event_id"]), str(exc))
                    report.events += 1
                    report.rejected += 1
                continue
            report.objects += 1
            whole = [r for r in letters if int(r["record_index"]) == OBJECT_INDEX]
            if whole:  # the object was restored: every event of it, then its letter resolved
                for j, one in enumerate(records):
                    await sender.add(lane.item(one, key, j))
                await sender.flush()
                report.resolved += store.resolve(name, [str(r["event_id"]) for r in whole])
                letters = [r for r in letters if int(r["record_index"]) != OBJECT_INDEX]
            for r in letters:
                i = int(r["record_index"])
                rec = records[i] if 0 <= i < len(records) else None
                got = lane.item(rec, key, i) if rec is not None else None
                if rec is None or (isinstance(got, Item) and got.event_id != r["event_id"]):
                    store.note_retry(name, str(r["event_id"]), "not found in the archive")
                    report.events += 1
                    report.rejected += 1
                    continue
                if got is None:
                    filtered.append(str(r["event_id"]))
                await sender.add(got)
            await sender.flush()
    finally:
        await lane.close()
    if filtered:
        report.resolved += store.resolve(name, filtered, "filtered")
    report.still_dead = store.dead_letters(name)
    return report


async def account_view(
    settings: Settings, store: ForwardStore, aws: Aws, sessions: Any
) -> tuple[AccountLookup | None, Callable[[], str | None]]:
    """Enrichment as the daemon has it: the account snapshot of its last discovery, or a
    discovery now (saved for next time) when the state has none."""
    accounts, org = store.accounts()
    if not accounts:
        from aggregator.aws.discovery import discover

        try:
            inventory = await discover(settings, sessions, aws)
        except Exception as exc:  # enrichment is worth a warning, not the replay
            log.warning(
                "forward.enrichment_unavailable",
                error_type=type(exc).__name__,
                reason="no account snapshot in the state and discovery failed; events are "
                "sent without account names, OU paths and tags",
            )
            return None, lambda: None
        accounts = {a.id: a for a in inventory.accounts}
        org = inventory.organization_id
        store.save_accounts(inventory.accounts, org)

    def lookup(account_id: str) -> Account | None:
        return accounts.get(account_id)

    return lookup, lambda: org


@asynccontextmanager
async def one_shot_forwarder(settings: Settings) -> AsyncIterator[Forwarder]:
    """A forwarder for a command: the config's normalizer and enrichment, the archive read
    with its own identity (``archive.archive_session``: the writer account's role when
    archive.writer_account_id is set), as ingest writes it."""
    from aggregator.aws.credentials import CredentialBroker

    state = State(settings.state.path)
    try:
        aws = Aws(settings.aws)
        broker = CredentialBroker(settings, aws)
        async with archive.opened(settings, aws, broker) as central:
            try:  # a one-shot command: a refused archive identity ends it, not retried
                await central.client()
            except Exception as exc:
                raise Fatal(f"cannot open the central archive: {exc}") from exc
            accounts, org = await account_view(settings, ForwardStore(state), aws, broker)
            yield forwarder_for(settings, state, central, accounts=accounts, organization_id=org)
    finally:
        state.close()


async def replay_with_settings(
    settings: Settings,
    name: str,
    since: datetime,
    until: datetime,
    *,
    progress: Progress | None = None,
) -> ReplayReport:
    """:func:`replay` for a config."""
    async with one_shot_forwarder(settings) as fwd:
        return await replay(
            fwd, name, since, until, max_attempts=ONE_SHOT_ATTEMPTS, progress=progress
        )


async def retry_with_settings(settings: Settings, name: str) -> ReplayReport:
    """:func:`retry_dead_letters` for a config."""
    async with one_shot_forwarder(settings) as fwd:
        return await retry_dead_letters(fwd, name)


__all__ = [
    "GaveUp",
    "ReplayReport",
    "account_view",
    "one_shot_forwarder",
    "replay",
    "replay_with_settings",
    "retry_dead_letters",
    "retry_with_settings",
]
