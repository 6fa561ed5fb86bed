"""The central archive is the truth; the SQLite window is a cache of it.

The window answers "is this event archived?" for what this state wrote while it was the
archive's only writer and while the keys are younger than the window's retention. Everything
else is answered from the archive itself before an event is archived:

* **Read-back.** A central object lives under its account, region, kind and day (the CloudTrail
  layout), and a copy of an event lives under the event's day or up to
  ``dedupe.readback_lag_days`` after it. So before an object with events the window cannot
  vouch for is archived, those day prefixes are read back once: one LIST each, and a GET
  (eight at a time) of every object there this state does not have in its window (objects it
  wrote itself are not read again while their keys are in the window). Their keys join the
  window; the prefix is *covered* (``archive_coverage``) until the window forgets its hours.
  At most ``dedupe.readback_max_objects`` GETs per cycle: what a day needs beyond that waits
  for the next cycle (counted as deferred; what was read is kept), never archived unchecked.
* **Which days need it.** Days up to the day of ``trusted_since`` (the archive may hold objects
  of another state from before then: a state that is new beside an existing archive, was
  restored from an older copy, or replaced another one), and every day of an event older than
  the window's floor (keys pruned by retention).
* **The writer marker.** ``_ctagg/writer.json`` in the central bucket names the state that
  writes the archive and its generation (one per cycle, written with If-Match/If-None-Match
  before the cycle's first central PUT). A state whose identity or generation differs from the
  marker is not the archive's latest writer: it says so, forgets its coverage, and trusts its
  window only for days after now. An empty state beside a non-empty archive is said out loud
  (``state.empty_beside_archive``) and counted (``ctagg_state_behind_archive``).
* **Intents.** A central PUT is preceded by a committed intent and followed by the object's
  commit, which ends it. An intent left behind (a crash, a PUT that reached S3 but failed for
  the client) is settled from the archive at the start and end of a cycle: an object that is
  there joins the ledger with only the events archived nowhere else (rewritten with If-Match,
  or deleted when it contributes nothing); one that is not there is forgotten. So any order of
  crashes and re-reads ends with the archive a crash-free run gives.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from aggregator.archive import store as central
from aggregator.archive.codec import encode_records
from aggregator.aws.errors import error_message
from aggregator.config import Settings
from aggregator.ingest.collect import BadObject, Decoded, decode_log
from aggregator.ingest.resize import (
    Fetched,
    InstallationMismatch,
    Resizer,
    holds,
    marker_key_of,
    read_marker,
    retired,
)
from aggregator.log import get_logger
from aggregator.state import CentralObject, ObjectOutcome, State

log = get_logger("aggregator.ingest")


def marker_key(settings: Settings) -> str:
    """This writer's marker under ``archive.prefix``: ``_ctagg/writer.json`` for one shard,
    ``_ctagg/writer.shard-I-of-N.json`` for shard I of N (one writer per shard)."""
    shard = settings.shard
    return marker_key_of(settings.archive.prefix, shard.ordinal, shard.count)


# Central objects read back at once (each decoded as it arrives: at most this many bodies held).
_READBACK_GETS = 8
# A source object's name carries AWS's clock; ours may be behind it by this much.
_SKEW_SECS = 3600


class ReadbackDeferred(Exception):
    """The cycle's read-back budget is spent: the object waits for the next cycle."""


class ArchiveWriterConflict(Exception):
    """Another state wrote the archive's writer marker during this cycle's start."""


class Fenced(Exception):
    """This process may have lost its writer marker (no renewal within ``shard.fence_secs``,
    or another process wrote it): its cycle writes nothing more to the central bucket."""


class Fence:
    """The time this process may still write the central bucket for: ``fence_secs`` from the
    start of its last successful claim or renewal of its writer marker (a monotonic clock,
    so a paused process sees the whole pause), until a renewal finds the marker lost."""

    def __init__(self, secs: float, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.secs = secs
        self.monotonic = monotonic
        self.confirmed_at: float | None = None
        self.lost: str | None = None

    def confirm(self, at: float) -> None:
        self.confirmed_at, self.lost = at, None

    def check(self) -> None:
        """Raise :class:`Fenced` unless a central write may go out now."""
        if self.lost is not None:
            raise Fenced(self.lost)
        if self.confirmed_at is None:
            raise Fenced("this process has not claimed its writer marker")
        age = self.monotonic() - self.confirmed_at
        if age >= self.secs:
            raise Fenced(
                f"the writer marker was last confirmed {age:.1f}s ago (shard.fence_secs "
                f"{self.secs:g}): this process may have lost it (paused, cut off), so it writes "
                "nothing more this cycle"
            )


@dataclass
class TruthReport:
    readback_days: int = 0
    readback_objects: int = 0
    deferred: int = 0
    settled: int = 0  # intents settled (adopted, rewritten, deleted or absent)
    behind_archive: bool = False  # an empty state beside a non-empty archive
    not_latest: bool = False  # the marker names another state or generation


def kind_of(insight: bool) -> str:
    return "CloudTrail-Insight" if insight else "CloudTrail"


def _day(event_time: str) -> str | None:
    """YYYYMMDD of an ISO 8601 eventTime, or None."""
    d = event_time[0:4] + event_time[5:7] + event_time[8:10]
    return d if len(d) == 8 and d.isdecimal() else None


def days_between(first: str, last: str) -> list[str]:
    """Every YYYYMMDD from ``first`` to ``last`` (at most 400 days)."""
    a = datetime.strptime(first, "%Y%m%d")
    b = datetime.strptime(last, "%Y%m%d")
    n = min((b - a).days, 400)
    return [(a + timedelta(days=i)).strftime("%Y%m%d") for i in range(n + 1)]


def object_record(
    key: str,
    body: bytes,
    etag: str | None,
    decoded: Decoded,
    keep: Sequence[int] | None = None,
    *,
    sha256: str | None = None,
) -> CentralObject:
    """The ledger's record of central object ``key`` holding ``body``: the records ``keep``
    (ascending, distinct indexes of ``decoded``; None: all of them). ``sha256``: the body's
    hex SHA-256 when the caller has it already (``Stored.sha256`` of the write)."""
    if keep is None or len(keep) == len(decoded.keys):  # every record: no indexing
        times = [t for t in decoded.times if t]
        events = len(decoded.keys)
    else:
        times = [decoded.times[i] for i in keep if decoded.times[i]]
        events = len(keep)
    return CentralObject(
        key,
        len(body),
        sha256 or hashlib.sha256(body).hexdigest(),
        events,
        min(times, default=None),
        max(times, default=None),
        etag,
    )


class ArchiveTruth:
    """Answers from the archive what the window cannot. One per Ingestor; one cycle at a time."""

    def __init__(
        self, settings: Settings, state: State, clock: Callable[[], float] = time.time
    ) -> None:
        self.settings = settings
        self.state = state
        self.clock = clock
        self.report = TruthReport()
        self._locks: dict[tuple[str, str, str, str], asyncio.Lock] = {}
        self._trusted_day = "19700101"
        self.resizer = Resizer(settings, state, clock)
        # this process's hold on its slots, as /readyz reads it: the writer marker it last
        # wrote (None until a cycle start claims it, and again once a claim is refused: the
        # layout does not fit, or another state writes this shard) and why the latest claim
        # failed (a transient fault keeps the hold: nobody else is known to have it)
        self.held: dict[str, Any] | None = None
        self.claim_error: str | None = None
        self.fence = Fence(settings.shard.fence_secs)

    def decode(self, body: bytes) -> Decoded:
        """A central object, decoded as a source object is (the same keys, the same limits)."""
        cfg = self.settings.collect
        return decode_log(
            body, max_object_bytes=cfg.max_object_bytes, max_record_bytes=cfg.max_record_bytes
        )

    # ------------------------------------------------------------------ cycle start and end

    async def begin(self, archive: central.Archive) -> TruthReport:
        """Before a cycle's first central PUT: check the writer marker, take the next
        generation, settle what an earlier cycle left in flight."""
        self.report = TruthReport()
        self._locks.clear()
        started = self.fence.monotonic()
        try:
            self.held = await self._claim_marker(archive)
            self.fence.confirm(started)
        except Exception as exc:
            self.claim_error = error_message(exc)
            if isinstance(exc, InstallationMismatch | ArchiveWriterConflict):
                self.held = None
            raise
        self.claim_error = None
        meta = self.state.meta
        trusted = meta.trusted_since() or 0.0
        self._trusted_day = datetime.fromtimestamp(trusted + _SKEW_SECS, UTC).strftime("%Y%m%d")
        await self.settle(archive)
        return self.report

    async def _marker(
        self, archive: central.Archive
    ) -> tuple[Fetched | None, dict[str, Any] | None]:
        """This writer's marker: (what S3 returned, its document; ``{}`` when unreadable)."""
        return await read_marker(archive, marker_key(self.settings))

    async def check_installation(self, archive: central.Archive, marker: Any = False) -> None:
        """The shard layout recorded in the central bucket fits this config and this state
        belongs to it (:class:`~aggregator.ingest.resize.Resizer`: recorded, resized or taken
        over at a process's first check; raises :class:`InstallationMismatch`)."""
        if marker is False:
            marker = (await self._marker(archive))[1]
        sid, generation = self.state.meta.identity()
        await self.resizer.check(archive, marker_is_ours=holds(marker, sid, generation))

    async def _claim_marker(self, archive: central.Archive) -> dict[str, Any]:
        """Check the layout, then write this shard's writer marker at the next generation
        (conditionally on the one read); returns what it wrote."""
        meta = self.state.meta
        got, marker = await self._marker(archive)
        await self.check_installation(archive, marker)
        sid, generation = meta.identity()  # after a take-over: the new state's
        trusted = meta.trusted_since()
        key = marker_key(self.settings)
        # a state that took over a resized layout's pairs and has not written yet trusts what
        # its import allowed, beside the old (retired) marker of its name or none
        taken_over = generation == 0 and meta.get("imported_at") is not None
        if taken_over and (marker is None or retired(marker)):
            marker = {"state_id": sid, "generation": generation}
        now = self.clock()
        fresh = self.state.ledger.max_id() == 0
        if marker is None:
            if trusted is None:
                # the other shards' objects are not this one's (its pairs had no other owner)
                has_objects = not self.resizer.first_owners() and await self._archive_has_objects(
                    archive
                )
                trusted = now if has_objects else 0.0
                if has_objects:
                    self.report.behind_archive = fresh
                    log.warning(
                        "state.empty_beside_archive" if fresh else "archive.no_writer_marker",
                        state=self.state.path,
                        bucket=self.settings.archive.bucket,
                        reason="the archive has objects this state did not write; they are "
                        "read back before an event of their days is archived",
                    )
            else:
                trusted = now
                self.state.archive_known.uncover_all()
                log.warning(
                    "archive.writer_marker_missing",
                    state=self.state.path,
                    bucket=self.settings.archive.bucket,
                    reason="the writer marker is gone; the archive is read back before events "
                    "up to now are archived",
                )
        elif holds(marker, sid, generation):
            trusted = 0.0 if trusted is None else trusted
        else:
            self.report.not_latest = True
            self.report.behind_archive = fresh
            same = marker.get("state_id") == sid
            trusted = now
            self.state.archive_known.uncover_all()
            log.warning(
                "state.empty_beside_archive" if fresh else "state.not_latest_writer",
                state=self.state.path,
                bucket=self.settings.archive.bucket,
                state_generation=generation,
                marker_state=marker.get("state_id"),
                marker_generation=marker.get("generation"),
                marker_host=marker.get("host"),
                reason=(
                    "this state is an older copy of the archive's writer (restored?)"
                    if same
                    else "another state wrote the archive last"
                )
                + "; the archive is read back before events up to now are archived",
            )
        meta.set(generation=generation + 1, trusted_since=trusted)
        doc = {
            "state_id": sid,
            "generation": generation + 1,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "state": self.state.path,
            "written_at": datetime.fromtimestamp(now, UTC).isoformat(),
        }
        body = orjson.dumps(doc)
        try:
            await archive.write(key, body, if_absent=got is None, if_match=got and got[1])
        except central.PreconditionFailed as exc:
            again = await archive.fetch(key)
            other = orjson.loads(again[0]) if again else {}
            if other.get("state_id") == sid and other.get("generation") == generation + 1:
                return doc  # our own write, retried after S3 had taken it
            meta.set(generation=generation)
            raise ArchiveWriterConflict(
                f"another ctagg state wrote s3://{self.settings.archive.bucket}/{key} just now "
                f"(host {other.get('host')}, state {other.get('state')}): one archive has one "
                "writer (or one per shard)"
            ) from exc
        except BaseException:
            meta.set(generation=generation)  # the marker still says the old one
            raise
        return doc

    async def _stamp(self, archive: central.Archive, field: str) -> dict[str, Any]:
        """Rewrite the writer marker this state holds with ``field`` set to now (If-Match on
        what was read); what it wrote. Raises :class:`ArchiveWriterConflict` when the marker
        no longer names this state at its generation, ``PreconditionFailed`` when another
        process wrote it in between."""
        key = marker_key(self.settings)
        sid, generation = self.state.meta.identity()
        got, doc = await read_marker(archive, key)
        if not holds(doc, sid, generation):
            now = "retired" if retired(doc) else f"generation {(doc or {}).get('generation')}"
            raise ArchiveWriterConflict(
                f"s3://{self.settings.archive.bucket}/{key} no longer names this state "
                f"(now: host {(doc or {}).get('host')}, {now})"
            )
        new = {**(doc or {}), field: datetime.fromtimestamp(self.clock(), UTC).isoformat()}
        await archive.write(key, orjson.dumps(new), if_match=got[1] if got else None)
        return new

    async def renew(self, archive: central.Archive) -> None:
        """During a cycle: confirm this process still holds its writer marker and rewrite it
        with ``renewed_at``, the sign of life a resize looks for; then the fence runs from
        this renewal's start. A marker another process wrote loses the hold
        (:class:`Fenced` from every later write); a failed request changes nothing (the fence
        lapses if renewals keep failing)."""
        if self.held is None:
            return
        key, started = marker_key(self.settings), self.fence.monotonic()
        try:
            self.fence.check()  # lapsed: no renewal either, the next cycle start claims anew
            self.held = await self._stamp(archive, "renewed_at")
        except (ArchiveWriterConflict, central.PreconditionFailed) as exc:
            why = f"the writer marker was lost: {exc}"
            self.fence.lost, self.held, self.claim_error = why, None, why
            log.error("writer.marker_lost", key=key, reason=why)
            return
        except Fenced as exc:
            log.warning("writer.fenced", key=key, reason=str(exc))
            return
        except Exception as exc:
            log.warning("writer.renew_failed", key=key, error=error_message(exc))
            return
        self.fence.confirm(started)

    async def mark_stopped(self, archive: central.Archive) -> bool:
        """The writer marker this process holds says it stopped writing (``stopped_at``): a
        resize waits for every old shard to have stopped, or to have been silent for
        ``shard.resize_quiet_secs``. The next cycle start's claim clears it. False (logged)
        when it holds no marker, another process wrote it since, or S3 refused: a resize then
        waits out the quiet time."""
        if self.held is None:
            return False
        try:
            self.held = await self._stamp(archive, "stopped_at")
        except Exception as exc:
            log.warning(
                "writer.stop_not_marked",
                key=marker_key(self.settings),
                error=error_message(exc),
                reason="a resize waits shard.resize_quiet_secs for this shard",
            )
            return False
        return True

    async def _archive_has_objects(self, archive: central.Archive) -> bool:
        s3 = await archive.client()
        resp = await s3.list_objects_v2(
            Bucket=self.settings.archive.bucket,
            Prefix=f"{self.settings.archive.prefix}AWSLogs/",
            MaxKeys=1,
        )
        return bool(resp.get("Contents"))

    # ------------------------------------------------------------------ read-back

    async def ensure(
        self,
        archive: central.Archive,
        parts: central.KeyParts,
        times: Sequence[str],
    ) -> None:
        """Make the window answer for the events of an object about to be archived under
        ``parts`` (its central key's account, region, kind and time) with these eventTimes:
        read back every day prefix where a copy of them could be that the window cannot vouch
        for. Raises :class:`ReadbackDeferred` when the cycle's budget is spent."""
        # the window's floor moves when retention prunes it (a daemon job beside this cycle)
        floor = self.state.window_floor
        own = parts.ts[:8]
        stamped = [t for t in times if t]
        first = min(stamped, default="")
        last = max(stamped, default="")
        lo = _day(first) or own
        hi = _day(last) or own
        old = bool(floor) and first[:13] < floor
        if not old and own > self._trusted_day and lo > self._trusted_day:
            return  # the fast path: everything is this state's own, in the window
        lag = self.settings.dedupe.readback_lag_days
        hi_lag = (datetime.strptime(hi, "%Y%m%d") + timedelta(days=lag)).strftime("%Y%m%d")
        days = set(days_between(min(lo, own), max(hi_lag, own)))
        need = sorted(d for d in days if old or d <= self._trusted_day)
        if not need:
            return
        kind = kind_of(parts.insight)
        covered = self.state.archive_known.covered(parts.account, parts.region, kind, need)
        for day in need:
            if day not in covered:
                await self._read_day(archive, parts.account, parts.region, kind, day)

    async def _read_day(
        self, archive: central.Archive, account: str, region: str, kind: str, day: str
    ) -> None:
        lock = self._locks.setdefault((account, region, kind, day), asyncio.Lock())
        async with lock:
            if self.state.archive_known.covered(account, region, kind, [day]):
                return  # another worker read it while this one waited
            budget = self.settings.dedupe.readback_max_objects
            if self.report.readback_objects >= budget:  # spent: not even a LIST
                self.report.deferred += 1
                raise ReadbackDeferred(
                    f"read-back budget of {budget} central objects this cycle is spent"
                )
            prefix = central.day_prefix(self.settings.archive.prefix, account, region, kind, day)
            known = self.state.archive_known.in_prefix(prefix, account, region, kind, day)
            in_flight = self.state.intents.keys()
            pruned_at = float(self.state.meta.get("window_pruned_at") or 0)
            floor = self.state.window_floor
            objects = 0
            todo: list[str] = []
            async for listed in archive.objects(prefix):
                objects += 1
                k = known.get(listed.key)
                if k is not None and (k.etag is None or k.etag == listed.etag):
                    intact = k.recorded_at > pruned_at or (
                        not floor or (k.first_event_time or "")[:13] >= floor
                    )
                    if intact:
                        continue  # its keys are in the window
                if (
                    listed.key in in_flight
                    or central.parse_central_key(self.settings.archive.prefix, listed.key) is None
                ):
                    continue  # settled from its intent; outside the layout (reconcile says)
                todo.append(listed.key)
            # what the budget allows is read (and kept: the next cycle skips it), the rest waits
            room = max(0, budget - self.report.readback_objects)
            take, left = todo[:room], todo[room:]
            self.report.readback_objects += len(take)
            gets = asyncio.Semaphore(_READBACK_GETS)

            async def one(key: str) -> None:
                async with gets:
                    got = await archive.fetch(key)
                if got is None:
                    return  # deleted since the listing
                body, etag = got
                try:
                    decoded = self.decode(body)
                except BadObject as exc:
                    log.error(
                        "archive.readback_unreadable",
                        key=key,
                        reason=str(exc),
                        hint="ctagg reconcile reports it; its events cannot be deduplicated",
                    )
                    return
                ce = object_record(key, body, etag, decoded)
                self.state.read_back(
                    ce, decoded.keys, account=account, region=region, kind=kind, day=day
                )

            done = await asyncio.gather(*(one(k) for k in take), return_exceptions=True)
            failed = next((r for r in done if isinstance(r, BaseException)), None)
            if failed is not None:
                raise failed
            if left:
                self.report.deferred += 1
                raise ReadbackDeferred(
                    f"read-back budget of {budget} central objects this cycle is spent"
                )
            self.state.archive_known.cover(account, region, kind, day, objects)
            self.report.readback_days += 1
            log.info(
                "archive.read_back",
                account_id=account,
                region=region,
                kind=kind,
                day=day,
                objects=objects,
            )

    # ------------------------------------------------------------------ intents

    async def settle(self, archive: central.Archive) -> None:
        """Settle every central intent left without a commit (see the module's doc)."""
        for intent in self.state.intents.pending():
            key = intent.central_key
            got = await archive.fetch(key)
            self.report.settled += 1
            if got is None:
                self.state.intents.drop(key)
                continue
            body, etag = got
            try:
                decoded = self.decode(body)
            except BadObject as exc:
                log.error("archive.intent_unreadable", key=key, reason=str(exc))
                self.state.intents.drop(key)
                continue
            prior = self.state.archive_known.lookup(key)
            if prior is not None and prior.in_ledger:
                # a rewrite of a committed object: the new version holds the old one's events
                if prior.sha256 != hashlib.sha256(body).hexdigest():
                    self._adopt(intent, object_record(key, body, etag, decoded), decoded.keys, True)
                else:
                    self.state.intents.drop(key)
                continue
            known = self.state.window.known(decoded.keys)
            keep: list[int] = []
            seen: set[bytes] = set()
            for i, k in enumerate(decoded.keys):
                if k not in known and k not in seen:
                    seen.add(k)
                    keep.append(i)
            try:
                if len(keep) == len(decoded.keys):
                    ce = object_record(key, body, etag, decoded)
                elif not keep:
                    await archive.delete(key, if_match=etag)
                    self.state.intents.drop(key)
                    log.info("archive.orphan_deleted", key=key, source_key=intent.source_key)
                    continue
                else:
                    new_body = encode_records(
                        [decoded.record_bytes(i) for i in keep],
                        self.settings.archive.compress_level,
                    )
                    stored = await archive.write(key, new_body, if_match=etag)
                    ce = object_record(
                        key, new_body, stored.etag, decoded, keep, sha256=stored.sha256
                    )
                    log.info(
                        "archive.orphan_rewritten",
                        key=key,
                        kept=len(keep),
                        dropped=len(decoded.keys) - len(keep),
                    )
            except central.PreconditionFailed:
                log.warning("archive.intent_changed", key=key, reason="settled next cycle")
                continue
            self._adopt(intent, ce, [decoded.keys[i] for i in keep], False)

    def _adopt(self, intent: Any, ce: CentralObject, keys: Sequence[bytes], rewrite: bool) -> None:
        self.state.adopt(
            ObjectOutcome(
                source=intent.source,
                key=intent.source_key,
                day_prefix="",
                kind="log",
                etag=None,
                size=0,
                new_keys=keys,
                central=ce,
                rewrite=rewrite,
            )
        )
        log.info("archive.intent_adopted", key=ce.key, events=ce.events)
