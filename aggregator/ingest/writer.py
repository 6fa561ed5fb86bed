"""The archive step of one source object: dedupe claim → central write → commit.

The check "is this key archived?" (the window) and the in-memory claim of the new keys happen
with no ``await`` between them, so the same event in an organization-trail object and an
account-trail object handled at the same time is kept by exactly one. A failed write releases
its claims; the object is retried and nothing is lost. The commit (event keys, ledger row,
checkpoint) is one SQLite transaction after the central write: a crash in between repeats the
object and rewrites the same central key.
"""

from __future__ import annotations

import time

from aggregator.archive import store as central
from aggregator.archive.codec import encode_records
from aggregator.config import Settings
from aggregator.ingest.collect import Decoded, ObjectKind
from aggregator.ingest.work import CycleReport, Job
from aggregator.log import get_logger
from aggregator.state import CentralObject, ObjectOutcome, State

log = get_logger("aggregator.ingest")


class CentralWriter:
    def __init__(self, settings: Settings, state: State) -> None:
        self.settings = settings
        self.state = state
        # Event keys claimed by objects in flight: two copies of one event in two objects
        # handled at the same time must not both be archived.
        self._claimed: set[bytes] = set()

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
        """Dedupe, write the central object, commit. ``source``: the object's bytes as fetched,
        archived as they are when every record is new and they are clean gzip. ``report``
        counts what was archived."""
        src = job.source
        known = self.state.window.known(decoded.keys)
        # Claim synchronously (no await between check and claim) so concurrent objects holding
        # the same event cannot both keep it.
        keep: list[int] = []
        mine: list[bytes] = []
        seen_here: set[bytes] = set()
        for i, k in enumerate(decoded.keys):
            if k in known or k in self._claimed or k in seen_here:
                continue
            seen_here.add(k)
            keep.append(i)
        self._claimed.update(seen_here)
        mine.extend(seen_here)
        try:
            ce: CentralObject | None = None
            if keep:
                times = [decoded.times[i] for i in keep if decoded.times[i]]
                kp = (
                    job.parts
                    or central.parse_source_name(job.key)
                    or central.KeyParts(
                        src.account_id,
                        src.region,
                        central.ts_from_event_time(min(times) if times else None)
                        or "19700101T0000Z",
                        job.kind == ObjectKind.INSIGHT,
                    )
                )
                key = central.central_key(self.settings.archive.prefix, kp, src.bucket, job.key)
                if source is not None and decoded.verbatim and len(keep) == len(decoded.keys):
                    body = source
                else:
                    body = encode_records(
                        [decoded.record_bytes(i) for i in keep],
                        self.settings.archive.compress_level,
                    )
                sha = await archive.put(key, body)
                ce = CentralObject(
                    key,
                    len(body),
                    sha,
                    len(keep),
                    min(times, default=None),
                    max(times, default=None),
                )
            outcome = ObjectOutcome(
                source=src,
                key=job.key,
                day_prefix=job.day_prefix,
                kind=job.kind,
                etag=job.etag,
                size=job.size,
                events_in=len(decoded.keys),
                duplicates=len(decoded.keys) - len(keep),
                new_keys=[decoded.keys[i] for i in keep],
                central=ce,
                newest_event_time=max(decoded.times, default=None) or None,
            )
            self.state.commit_object(outcome)
        finally:
            self._claimed.difference_update(mine)
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
