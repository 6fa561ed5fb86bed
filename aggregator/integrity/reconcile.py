"""``ctagg reconcile``: the central archive checked against the state, by listing and decoding
the archive itself (it is the truth), over a range of days; with ``repair``, what is provably
redundant is removed.

Findings (``FINDING_KINDS``):

* ``unknown_objects``   a central object in neither the ledger, ``archive_known`` nor
                        ``central_intents`` (a key there is a write in flight: never a finding)
* ``missing_objects``   a ledger or ``archive_known`` row whose object is gone
* ``sha_mismatch``      a row whose object's SHA-256 is not the one recorded (modified)
* ``duplicate_events``  an event (``dedupe.event_key``) in more than one central object, or
                        twice in one
* ``outside_layout``    a key under ``AWSLogs/`` that is not a central key of the layout
                        (``_ctagg/`` and the digests are ours, outside ``AWSLogs/``)
* ``unreadable``        a central object that does not decode

Enumeration never lists the whole bucket: Delimiter='/' listings walk ``AWSLogs/`` → accounts
→ kinds → regions → ``YYYY/`` → ``MM/`` → ``DD/``, descending only into the years, months and
days of the range; a directory that does not fit the layout is listed whole (its keys are
findings). Objects are grouped by (account, region): a copy of an event lives under its own
account and region (the event key's tag is theirs), so duplicates are looked for within a group
and memory is bounded by one group's events, not the range's.

Races with a running writer (the daemon's ingest, report-only beside it): rows are read after
the listing, intents before rows, so an object PUT and committed meanwhile is never "unknown";
a row whose object was not listed is fetched once more before it counts as missing.

Repair (``repair=True``, under the state's writer lock) removes only what is provably redundant:
for an event in several objects one keeper holds it — the object with the lowest ledger id,
else (no ledger object holds it) the first by key among ``archive_known`` and unknown objects —
and every other object is rewritten without it (If-Match its ETag), or deleted (If-Match) when
nothing is left, its row following (updated in place, or deleted). An object whose SHA-256 does
not match its row, or that does not decode, is never a keeper and never rewritten: its copies
are not trusted, so the copies elsewhere stay. Objects are repaired in keeper order (lowest
first); an object whose repair fails (it changed meanwhile: ``PreconditionFailed``) is skipped
with a message, and no other object then drops an event that object was to keep. So the last
copy of an event is never removed. An unknown object whose events are all unique is adopted
into ``archive_known`` with its event keys in the dedupe window. Missing objects, SHA
mismatches, unreadable objects and keys outside the layout are reported only.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

from aggregator.archive.codec import decode_records, encode_records
from aggregator.archive.store import Archive, Listed, PreconditionFailed, day_prefix
from aggregator.archive.store import parse_central_key as _parse
from aggregator.ingest.dedupe import event_key, key_and_bytes, key_text
from aggregator.log import get_logger
from aggregator.state import State
from aggregator.state.reconcile import Adopted, KnownRow, ReconcileRows

log = get_logger("aggregator.reconcile")

KINDS = ("CloudTrail", "CloudTrail-Insight")
FINDING_KINDS = (
    "unknown_objects",
    "missing_objects",
    "sha_mismatch",
    "duplicate_events",
    "outside_layout",
    "unreadable",
)
EXAMPLES = 20  # examples kept per finding kind (counts are always whole)
GROUPS_AT_ONCE = 4  # (account, region) groups checked at the same time

_ACCOUNT = re.compile(r"\d{12}")
_REGION = re.compile(r"[a-z0-9-]+")
_YEAR = re.compile(r"\d{4}")
_TWO = re.compile(r"\d{2}")

Progress = Callable[[int, "int | None"], None]


def days_between(since: date, until: date) -> list[str]:
    """``YYYYMMDD`` of every day from ``since`` to ``until``, both included."""
    out = []
    d = since
    while d <= until:
        out.append(d.strftime("%Y%m%d"))
        d += timedelta(days=1)
    return out


@dataclass
class ReconcileReport:
    since: str  # YYYY-MM-DD
    until: str
    repair: bool
    objects: int = 0  # central objects examined (listed in range, or looked for)
    events: int = 0  # events decoded
    in_flight: int = 0  # objects of central_intents (never findings)
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FINDING_KINDS, 0))
    examples: dict[str, list[dict[str, Any]]] = field(
        default_factory=lambda: {k: [] for k in FINDING_KINDS}
    )
    repaired: dict[str, int] = field(
        default_factory=lambda: {
            "rewritten": 0,
            "deleted": 0,
            "adopted": 0,
            "events_removed": 0,
            "rows_updated": 0,
            "rows_deleted": 0,
        }
    )
    skipped: list[str] = field(default_factory=list)  # repairs not done, and why
    duration_secs: float = 0.0

    @property
    def found(self) -> bool:
        return any(self.counts.values())

    def add(self, kind: str, example: dict[str, Any], n: int = 1) -> None:
        self.counts[kind] += n
        if len(self.examples[kind]) < EXAMPLES:
            self.examples[kind].append(example)

    def skip(self, message: str) -> None:
        log.warning("reconcile.repair_skipped", detail=message)
        self.skipped.append(message)

    def as_dict(self) -> dict[str, Any]:
        return {
            "since": self.since,
            "until": self.until,
            "repair": self.repair,
            "found": self.found,
            "objects": self.objects,
            "events": self.events,
            "in_flight": self.in_flight,
            "counts": dict(self.counts),
            "examples": {k: list(v) for k, v in self.examples.items()},
            "repaired": dict(self.repaired) if self.repair else None,
            "skipped_count": len(self.skipped),
            "skipped": self.skipped[:EXAMPLES],
            "duration_secs": round(self.duration_secs, 3),
        }


@dataclass
class _Object:
    """One central object of a group, as checked."""

    key: str
    kind: str
    day: str
    etag: str | None
    row: KnownRow | None
    sha256: str = ""
    size: int = 0
    keys: list[bytes] = field(default_factory=list)
    trusted: bool = True  # decoded, and its SHA-256 is the one its row records

    def rank(self) -> tuple[int, int, str]:
        """Keeper order: ledger objects by id, then the others by key."""
        if self.row is not None and self.row.ledger_id is not None:
            return (0, self.row.ledger_id, "")
        return (1, 0, self.key)


Group = tuple[str, str]  # (account, region)


class Reconciler:
    """One reconcile run (see the module). ``archive``: the central store; ``state``: its
    state (read-only is enough without ``repair``)."""

    def __init__(
        self,
        archive: Archive,
        state: State,
        *,
        since: date,
        until: date,
        repair: bool = False,
        compress_level: int = 1,
        concurrency: int = 16,
        progress: Progress | None = None,
    ) -> None:
        if since > until:
            raise ValueError(f"since {since} is after until {until}")
        self.archive = archive
        self.prefix = archive.settings.prefix
        self.rows = ReconcileRows(state.db)
        self.days = days_between(since, until)
        self.repair = repair
        self.level = compress_level
        self.sem = asyncio.Semaphore(concurrency)
        self.progress = progress
        self.report = ReconcileReport(since.isoformat(), until.isoformat(), repair)
        self._done = 0
        self._total: int | None = None

    # ------------------------------------------------------------------ the run

    async def run(self) -> ReconcileReport:
        """The run; a failure (the bucket denied, unreachable) is raised as itself, not as the
        task group that met it, so the CLI says it in one line with its exit code."""
        try:
            return await self._run()
        except BaseExceptionGroup as group:
            raise _leaf(group) from None

    async def _run(self) -> ReconcileReport:
        t0 = time.monotonic()
        listed = await self._walk()
        groups = set(listed) | self.rows.account_regions()
        self._total = sum(len(v) for v in listed.values())
        self._tick(0)
        gate = asyncio.Semaphore(GROUPS_AT_ONCE)

        async def one(g: Group) -> None:
            async with gate:
                await self._group(g, listed.get(g, []))

        async with asyncio.TaskGroup() as tg:
            for g in sorted(groups):
                tg.create_task(one(g))
        rep = self.report
        rep.duration_secs = time.monotonic() - t0
        log.info(
            "reconcile.done",
            count=rep.objects,
            events=rep.events,
            findings=sum(rep.counts.values()),
            duration_ms=int(rep.duration_secs * 1000),
            **{k: v for k, v in rep.counts.items() if v},
        )
        return rep

    def _tick(self, n: int = 1) -> None:
        self._done += n
        if self.progress is not None:
            self.progress(self._done, self._total)

    # ------------------------------------------------------------------ listing

    async def _ls(self, prefix: str) -> tuple[list[str], list[Listed]]:
        async with self.sem:
            return await self.archive.children(prefix)

    def _outside(self, key: str) -> None:
        self.report.add("outside_layout", {"key": key})

    async def _stray(self, prefix: str) -> None:
        """A directory that does not fit the layout: every key under it is a finding."""
        async with self.sem:
            async for o in self.archive.objects(prefix):
                self._outside(o.key)

    async def _walk(self) -> dict[Group, list[tuple[str, str, Listed]]]:
        """The central objects of the range, per (account, region), as (kind, day, listed)."""
        days = set(self.days)
        months = {d[:6] for d in days}
        years = {d[:4] for d in days}
        out: dict[Group, list[tuple[str, str, Listed]]] = {}

        async def level(
            prefix: str,
            fits: Callable[[str], object],
            inner: Callable[[str, str], Coroutine[Any, Any, None]],
        ) -> None:
            dirs, objs = await self._ls(prefix)
            for o in objs:
                self._outside(o.key)
            async with asyncio.TaskGroup() as tg:
                for d in dirs:
                    name = d[len(prefix) : -1]
                    tg.create_task(inner(d, name) if fits(name) else self._stray(d))

        async def day(prefix: str, account: str, kind: str, region: str, dd: str) -> None:
            dirs, objs = await self._ls(prefix)
            for d in dirs:
                await self._stray(d)
            for o in objs:
                parts = _parse(self.prefix, o.key)
                if (
                    parts is None
                    or parts.day != dd
                    or (parts.account, parts.kind, parts.region) != (account, kind, region)
                ):
                    self._outside(o.key)
                else:
                    out.setdefault((account, region), []).append((kind, dd, o))

        async def on_region(p: str, account: str, kind: str, region: str) -> None:
            async def on_year(py: str, y: str) -> None:
                if y not in years:
                    return

                async def on_month(pm: str, m: str) -> None:
                    if y + m not in months:
                        return

                    async def on_day(pd: str, d: str) -> None:
                        if y + m + d in days:
                            await day(pd, account, kind, region, y + m + d)

                    await level(pm, _TWO.fullmatch, on_day)

                await level(py, _TWO.fullmatch, on_month)

            await level(p, _YEAR.fullmatch, on_year)

        async def on_kind(p: str, account: str, kind: str) -> None:
            await level(
                p, _REGION.fullmatch, lambda pr, region: on_region(pr, account, kind, region)
            )

        async def on_account(p: str, account: str) -> None:
            await level(p, KINDS.__contains__, lambda pk, kind: on_kind(pk, account, kind))

        await level(f"{self.prefix}AWSLogs/", _ACCOUNT.fullmatch, on_account)
        return out

    # ------------------------------------------------------------------ one group

    def _range(self, account: str, region: str, kind: str) -> tuple[str, str]:
        lo = day_prefix(self.prefix, account, region, kind, self.days[0])
        hi = day_prefix(self.prefix, account, region, kind, self.days[-1])[:-1] + "0"
        return lo, hi

    async def _group(self, g: Group, listed: list[tuple[str, str, Listed]]) -> None:
        account, region = g
        rep = self.report
        intents: set[str] = set()
        known: dict[str, KnownRow] = {}
        for kind in KINDS:
            lo, hi = self._range(account, region, kind)
            intents |= self.rows.intents(lo, hi)  # intents first: see the module
            known.update(self.rows.known(lo, hi))
        objs: list[_Object] = []
        seen: set[str] = set()
        for kind, dd, o in listed:
            seen.add(o.key)
            if o.key in intents:
                rep.in_flight += 1
                self._tick()
                continue
            objs.append(_Object(o.key, kind, dd, o.etag, known.get(o.key)))
        for key in sorted(set(known) - seen - intents):  # rows whose object was not listed
            parts = _parse(self.prefix, key)
            if parts is None or parts.day not in self.days:
                continue
            objs.append(_Object(key, parts.kind, parts.day, None, known[key]))
            if self._total is not None:
                self._total += 1
        async with asyncio.TaskGroup() as tg:
            for ob in objs:
                tg.create_task(self._check(ob))
        checked = [ob for ob in objs if ob.sha256]
        dups = self._duplicates(checked)
        if self.repair:
            await self._repair(g, checked, dups)

    async def _check(self, ob: _Object) -> None:
        rep = self.report
        try:
            async with self.sem:
                got = await self.archive.fetch(ob.key)
        finally:
            self._tick()
        rep.objects += 1
        if got is None:
            # a second look at the row: it may have gone meanwhile (a convergent rewrite)
            if ob.row is not None and self.rows.row(ob.key) is not None:
                rep.add("missing_objects", {"key": ob.key, "table": ob.row.table})
            return
        data, ob.etag = got
        ob.sha256, ob.size = hashlib.sha256(data).hexdigest(), len(data)
        if ob.row is None:
            if self.rows.in_flight(ob.key):
                rep.in_flight += 1
                ob.sha256 = ""
                return
            ob.row = self.rows.row(ob.key)  # committed since the group's rows were read
        if ob.row is None:
            rep.add("unknown_objects", {"key": ob.key, "bytes": ob.size})
        elif ob.row.sha256 != ob.sha256:
            rep.add(
                "sha_mismatch",
                {
                    "key": ob.key,
                    "table": ob.row.table,
                    "recorded": ob.row.sha256,
                    "found": ob.sha256,
                },
            )
            ob.trusted = False
        try:
            records = decode_records(data)
            ob.keys = [event_key(r) for r in records]
        except Exception as exc:
            rep.add("unreadable", {"key": ob.key, "error": f"{type(exc).__name__}: {exc}"[:200]})
            ob.trusted = False
            ob.keys = []
        rep.events += len(ob.keys)

    def _duplicates(self, objs: list[_Object]) -> dict[bytes, list[int]]:
        """Event keys held more than once (in several objects, or twice in one), with the
        indexes into ``objs`` of every copy."""
        first: dict[bytes, int] = {}
        more: dict[bytes, list[int]] = {}
        for i, ob in enumerate(objs):
            for k in ob.keys:
                j = first.get(k)
                if j is None:
                    first[k] = i
                else:  # every copy after the first, also a second one in the same object
                    more.setdefault(k, [j]).append(i)
        rep = self.report
        for k, where in sorted(more.items()):
            copies = sorted({objs[i].key for i in where})
            rep.add(
                "duplicate_events",
                {"event_key": key_text(k), "copies": len(where), "objects": copies[:10]},
            )
        return more

    # ------------------------------------------------------------------ repair

    async def _repair(self, g: Group, objs: list[_Object], dups: dict[bytes, list[int]]) -> None:
        keeper: dict[bytes, int] = {}
        for k, where in dups.items():
            trusted = sorted({i for i in where if objs[i].trusted}, key=lambda i: objs[i].rank())
            if trusted:
                keeper[k] = trusted[0]
        failed: set[int] = set()
        order = sorted(range(len(objs)), key=lambda i: objs[i].rank())
        for i in order:
            ob = objs[i]
            if not ob.trusted:
                continue
            drop: list[int] = []
            held: set[bytes] = set()
            for pos, k in enumerate(ob.keys):
                if k in held:  # twice in this object: the first stays
                    drop.append(pos)
                    continue
                held.add(k)
                kept_by = keeper.get(k, i)
                if kept_by != i and kept_by not in failed:
                    drop.append(pos)
            if not drop and ob.row is not None:
                continue
            try:
                await self._fix(g, ob, drop)
            except PreconditionFailed as exc:
                failed.add(i)
                self.report.skip(f"{ob.key}: changed since it was read ({exc.expected}); skipped")

    async def _fix(self, g: Group, ob: _Object, drop: list[int]) -> None:
        done = self.report.repaired
        async with self.sem:
            got = await self.archive.fetch(ob.key)
        if got is None or got[1] != ob.etag:
            raise PreconditionFailed(ob.key, f"ETag {ob.etag}")
        records = decode_records(got[0])
        if len(records) != len(ob.keys):
            raise PreconditionFailed(ob.key, f"ETag {ob.etag}")
        gone = set(drop)
        kept = [r for pos, r in enumerate(records) if pos not in gone]
        if not kept:
            async with self.sem:
                await self.archive.delete(ob.key, if_match=ob.etag)
            done["deleted"] += 1
            done["events_removed"] += len(records)
            if ob.row is not None:
                self.rows.removed(ob.row)
                done["rows_deleted"] += 1
            log.info("reconcile.deleted", key=ob.key, events=len(records))
            return
        times = sorted(t for r in kept if isinstance(t := r.get("eventTime"), str))
        first, last = (times[0], times[-1]) if times else (None, None)
        sha, size, etag = ob.sha256, ob.size, ob.etag
        keys = [k for pos, k in enumerate(ob.keys) if pos not in gone]
        if drop:
            body = encode_records([key_and_bytes(dict(r))[1] for r in kept], self.level)
            async with self.sem:
                stored = await self.archive.write(ob.key, body, if_match=ob.etag)
            sha, size, etag = stored.sha256, len(body), stored.etag
            done["rewritten"] += 1
            done["events_removed"] += len(drop)
            log.info("reconcile.rewritten", key=ob.key, events=len(kept), count=len(drop))
            if ob.row is not None:
                self.rows.rewritten(
                    ob.row,
                    sha256=sha,
                    size=size,
                    events=len(kept),
                    etag=etag,
                    first_event_time=first,
                    last_event_time=last,
                )
                done["rows_updated"] += 1
                return
        # an unknown object that keeps events of its own: counted as known from now on
        self.rows.adopt(
            Adopted(ob.key, g[0], g[1], ob.kind, ob.day, etag, sha, size, len(kept), first, last),
            keys,
        )
        done["adopted"] += 1
        log.info("reconcile.adopted", key=ob.key, events=len(kept))


def _leaf(exc: BaseException) -> BaseException:
    """The first exception inside (nested) exception groups."""
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


async def reconcile(
    archive: Archive,
    state: State,
    *,
    since: date,
    until: date,
    repair: bool = False,
    compress_level: int = 1,
    concurrency: int = 16,
    progress: Progress | None = None,
) -> ReconcileReport:
    """Check (and with ``repair``, repair) the central archive's days ``since``..``until``."""
    return await Reconciler(
        archive,
        state,
        since=since,
        until=until,
        repair=repair,
        compress_level=compress_level,
        concurrency=concurrency,
        progress=progress,
    ).run()


def recent_days(days: int, today: date) -> tuple[date, date]:
    """The last ``days`` days up to ``today`` (included)."""
    return today - timedelta(days=days - 1), today
