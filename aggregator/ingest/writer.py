"""The archive step of one source object: read-back → dedupe claim → intent → central write
→ commit.

What the window cannot answer is first read back from the archive
(:mod:`aggregator.ingest.truth`). The check "is this key archived?" (the window) and the
in-memory claim of the new keys happen with no ``await`` between them, so the same event in an
organization-trail object and an account-trail object handled at the same time is kept by
exactly one. A failed write releases its claims; the object is retried and nothing is lost. A
failure after the intent (the PUT may have reached S3) holds them until the intent is settled,
so no other object archives a second copy in the meantime.

The central key is derived from the source object alone. Before the PUT an intent is committed;
the commit (event keys, ledger row, checkpoint, the end of the intent) is one SQLite
transaction after it. A new object is written with If-None-Match: an object already there is
either this writer's own PUT retried (same bytes) or one this state never saw, whose events are
then kept and the new ones added (If-Match). A source object that brings events its committed
central object lacks rewrites it with them added (If-Match; the object takes a new ledger id so
the forwarders send it). A crash between PUT and commit leaves the intent, settled from the
archive before the next objects (``ArchiveTruth.settle``).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from aggregator.archive import store as central
from aggregator.archive.codec import encode_records
from aggregator.config import Settings
from aggregator.ingest.collect import BadObject, Decoded, ObjectKind
from aggregator.ingest.truth import ArchiveTruth, TruthReport, object_record
from aggregator.ingest.work import CycleReport, Job
from aggregator.log import get_logger
from aggregator.state import CentralObject, ObjectOutcome, State

log = get_logger("aggregator.ingest")


class CentralUnreadable(Exception):
    """A central object this write must extend cannot be decoded (``ctagg reconcile`` reports
    it); the source object is tried again, never quarantined for it."""


class CentralWriter:
    def __init__(
        self, settings: Settings, state: State, clock: Callable[[], float] = time.time
    ) -> None:
        self.settings = settings
        self.state = state
        self.truth = ArchiveTruth(settings, state, clock)
        # Event keys claimed by objects in flight: two copies of one event in two objects
        # handled at the same time must not both be archived.
        self._claimed: set[bytes] = set()
        # Event keys of objects whose central PUT may have reached S3 without their commit (the
        # write or the commit failed after the intent): held until the intent is settled at the
        # next cycle's start, so no other object archives a second copy meanwhile (a crash or a
        # lost state before the settlement would leave it in the archive).
        self._in_doubt: set[bytes] = set()

    async def begin(self, archive: central.Archive) -> TruthReport:
        """A cycle's start (:meth:`ArchiveTruth.begin`): the writer marker claimed, the intents
        settled, so the keys held in doubt are free again."""
        report = await self.truth.begin(archive)
        self._in_doubt.clear()
        return report

    def parts(self, job: Job, decoded: Decoded) -> central.KeyParts:
        """Where the object's central key sits: from its name, or (LookupEvents windows, other
        names) from the job and its events' earliest time."""
        src = job.source
        if job.parts is not None:
            return job.parts
        named = central.parse_source_name(job.key)
        if named is not None:
            return named
        times = [t for t in decoded.times if t]
        return central.KeyParts(
            src.account_id,
            src.region,
            central.ts_from_event_time(min(times, default=None)) or "19700101T0000Z",
            job.kind == ObjectKind.INSIGHT,
        )

    async def write(
        self,
        job: Job,
        decoded: Decoded,
        archive: central.Archive,
        report: CycleReport,
        started: float,
        *,
        source: bytes | None = None,
    ) -> None:
        """Read back, dedupe, write the central object, commit. ``source``: the object's bytes
        as fetched, archived as they are when every record is new and they are clean gzip.
        ``report`` counts what was archived. Raises ``truth.ReadbackDeferred`` (nothing done)
        when the object needs a read-back the cycle has no budget left for."""
        src = job.source
        parts = self.parts(job, decoded)
        await self.truth.ensure(archive, parts, decoded.times)
        known = self.state.window.known(decoded.keys)
        # Claim synchronously (no await between check and claim) so concurrent objects holding
        # the same event cannot both keep it.
        keep: list[int] = []
        seen_here: set[bytes] = set()
        for i, k in enumerate(decoded.keys):
            if k in known or k in self._claimed or k in self._in_doubt or k in seen_here:
                continue
            seen_here.add(k)
            keep.append(i)
        self._claimed.update(seen_here)
        intent = False
        try:
            ce: CentralObject | None = None
            new_keys = [decoded.keys[i] for i in keep]
            rewrite = False
            if keep:
                key = central.central_key(self.settings.archive.prefix, parts, src.bucket, job.key)
                prior = self.state.archive_known.lookup(key)
                self.state.intents.begin(key, src, job.key)
                intent = True
                if prior is None:
                    if source is not None and decoded.verbatim and len(keep) == len(decoded.keys):
                        body = source
                    else:
                        body = encode_records(
                            [decoded.record_bytes(i) for i in keep],
                            self.settings.archive.compress_level,
                        )
                    try:
                        stored = await archive.write(key, body, if_absent=True)
                        ce = object_record(
                            key, body, stored.etag, decoded, keep, sha256=stored.sha256
                        )
                    except central.PreconditionFailed:
                        ce, new_keys = await self._onto_existing(archive, key, decoded, keep)
                else:
                    ce, new_keys = await self._onto_existing(archive, key, decoded, keep)
                    rewrite = prior.in_ledger
            outcome = ObjectOutcome(
                source=src,
                key=job.key,
                day_prefix=job.day_prefix,
                kind=job.kind,
                etag=job.etag,
                size=job.size,
                events_in=len(decoded.keys),
                duplicates=len(decoded.keys) - len(keep),
                new_keys=new_keys,
                central=ce,
                newest_event_time=max(decoded.times, default=None) or None,
                rewrite=rewrite,
            )
            self.state.commit_object(outcome)
        except BaseException:
            if intent:  # the PUT may be in the archive: its events wait for the settlement
                self._in_doubt.update(seen_here)
            raise
        finally:
            self._claimed.difference_update(seen_here)
        report.objects += 1
        report.events_in += len(decoded.keys)
        report.duplicates += len(decoded.keys) - len(keep)
        report.events_archived += len(keep)
        report.central_objects += 1 if keep else 0
        log.debug(
            "ingest.object_done",
            account_id=src.account_id,
            region=src.region,
            bucket=src.bucket,
            key=job.key,
            events=len(decoded.keys),
            duplicates=len(decoded.keys) - len(keep),
            duration_ms=round((time.perf_counter() - started) * 1000, 1),
        )

    async def _onto_existing(
        self, archive: central.Archive, key: str, decoded: Decoded, keep: list[int]
    ) -> tuple[CentralObject, list[bytes]]:
        """The central object ``key`` is already in the archive: a PUT of this writer retried
        after S3 took it, an object of a state this one never saw, or an earlier version of
        this source's own. Its events stay and the kept ones it lacks are added (If-Match on
        what was read). Returns the object as it now is and every key it holds."""
        got = await archive.fetch(key)
        if got is None:  # gone since: write it new
            body = encode_records(
                [decoded.record_bytes(i) for i in keep], self.settings.archive.compress_level
            )
            stored = await archive.write(key, body, if_absent=True)
            ce = object_record(key, body, stored.etag, decoded, keep, sha256=stored.sha256)
            return ce, [decoded.keys[i] for i in keep]
        there, etag = got
        try:
            held = self.truth.decode(there)
        except BadObject as exc:  # the central object's fault, not the source's: retried
            raise CentralUnreadable(f"central object {key} cannot be read: {exc}") from exc
        have = set(held.keys)
        extra = [i for i in keep if decoded.keys[i] not in have]
        if not extra:
            log.info("archive.object_found", key=key, events=len(held.keys))
            return object_record(key, there, etag, held), list(held.keys)
        parts = [held.record_bytes(i) for i in range(len(held.keys))]
        parts.extend(decoded.record_bytes(i) for i in extra)
        body = encode_records(parts, self.settings.archive.compress_level)
        stored = await archive.write(key, body, if_match=etag)
        log.info("archive.object_extended", key=key, events=len(held.keys), added=len(extra))
        times = [t for t in (*held.times, *(decoded.times[i] for i in extra)) if t]
        ce = CentralObject(
            key,
            len(body),
            stored.sha256,
            len(parts),
            min(times, default=None),
            max(times, default=None),
            stored.etag,
        )
        return ce, [*held.keys, *(decoded.keys[i] for i in extra)]
