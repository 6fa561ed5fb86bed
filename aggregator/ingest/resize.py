"""The shard layout in the central bucket, state snapshots, and resizing (issue 14).

* **The layout record.** ``_ctagg/installation.json`` holds the slot count, the shard count and
  an ``epoch`` that goes up by one per resize, with the layout before it (``previous``). The
  first sharded process writes it (If-None-Match); a process that starts with another shard
  count than the record's *resizes* the installation: it writes the next epoch (If-Match on
  the record it read) and retires the old layout's writer markers (they keep their state id
  and generation, marked ``retired``). A process that finds the count changed while it was
  running stops (:class:`InstallationMismatch`): the installation was resized under it. The
  slot count never changes.
* **Snapshots.** With ``shard.snapshots`` (on by default with more than one shard) a shard
  uploads a consistent copy of its state (``VACUUM INTO``, gzip) to
  ``_ctagg/snapshots/shard-I-of-N.db.gz`` between cycles every
  ``shard.snapshot_interval_secs``, after ``ctagg once`` and at shutdown. The upload is
  conditional on the ETag of its own last one; the object's metadata names the state and its
  generation.
* **Taking over after a resize.** A state of the new layout starts empty (or is emptied: a
  state file of an earlier layout is superseded) and imports from the old shards' snapshots
  everything of the (account, region) pairs it now owns (:mod:`aggregator.state.snapshot`):
  checkpoints, the dedupe window, the ledger with the forwarding cursors, the read-back, the
  intents. When every snapshot it needs is *current* (its generation is the one in the old
  shard's writer marker: taken after that shard's last cycle), the window is trusted as the old
  shards trusted theirs. Otherwise (a snapshot missing or older than its shard's last cycle)
  the new state trusts its window only for days after now: the archive is read back before
  an event of an earlier day is archived (:mod:`aggregator.ingest.truth`), so nothing is
  archived twice, and relisting finds what the snapshot missed. Objects the old shard wrote
  after a stale snapshot are then not on the new ledger: they are in the archive, but not
  forwarded by the new shard (``ctagg replay`` sends them; the import says so).

A resize is offline: scale to zero, change the count, start. Old processes that still run
refuse to go on at their next cycle.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import os
import shutil
import socket
import tempfile
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from aggregator.archive import store as central
from aggregator.aws.slots import owned_slots, owns, shard_of
from aggregator.config import Settings
from aggregator.log import get_logger
from aggregator.state import State
from aggregator.state import snapshot as snapshots

log = get_logger("aggregator.ingest")

MARKER_KEY = "_ctagg/writer.json"
# the slot and shard counts of a sharded installation and its resizes
INSTALLATION_KEY = "_ctagg/installation.json"
SNAPSHOT_PREFIX = "_ctagg/snapshots/"


class InstallationMismatch(Exception):
    """The config's slot or shard count does not fit the one recorded in the central bucket."""


class SnapshotConflict(Exception):
    """Another process uploads this shard's snapshots (another state of the same shard)."""


@dataclass(frozen=True)
class Published:
    """A snapshot uploaded: its key and its compressed size."""

    key: str
    bytes: int


def label(index: int, count: int) -> str:
    return f"shard-{index}-of-{count}"


def marker_key_of(prefix: str, index: int, count: int) -> str:
    """The writer marker of shard ``index`` of ``count``: ``_ctagg/writer.json`` for one shard,
    ``_ctagg/writer.shard-I-of-N.json`` otherwise (one writer per shard)."""
    name = MARKER_KEY if count <= 1 else f"_ctagg/writer.{label(index, count)}.json"
    return f"{prefix}{name}"


def snapshot_key_of(prefix: str, index: int, count: int) -> str:
    return f"{prefix}{SNAPSHOT_PREFIX}{label(index, count)}.db.gz"


@dataclass(frozen=True)
class Layout:
    """The installation record: what the central bucket says the shards are."""

    slots: int
    shards: int
    epoch: int
    previous: tuple[int, int] | None  # (shards, epoch) of the layout before this one
    etag: str | None = None

    @classmethod
    def parse(cls, body: bytes, etag: str | None, where: str) -> Layout:
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError:
            doc = None
        if not isinstance(doc, dict) or not isinstance(doc.get("shards"), int):
            raise InstallationMismatch(f"{where} is not a ctagg installation record")
        prev = doc.get("previous")
        previous = (int(prev["shards"]), int(prev["epoch"])) if isinstance(prev, dict) else None
        return cls(
            int(doc.get("slots") or 0),
            int(doc["shards"]),
            int(doc.get("epoch") or 1),
            previous,
            etag,
        )


def retired(marker: dict[str, Any] | None) -> bool:
    return bool(marker and marker.get("retired"))


def names(marker: dict[str, Any] | None, state_id: str | None, generation: int) -> bool:
    """Whether a writer marker (retired or not) names this state at this generation."""
    return (
        isinstance(marker, dict)
        and state_id is not None
        and marker.get("state_id") == state_id
        and marker.get("generation") == generation
    )


def holds(marker: dict[str, Any] | None, state_id: str, generation: int) -> bool:
    """Whether this state at this generation is the writer a live marker names."""
    return not retired(marker) and names(marker, state_id, generation)


Fetched = tuple[bytes, str | None]


async def read_marker(
    archive: central.Archive, key: str
) -> tuple[Fetched | None, dict[str, Any] | None]:
    """A writer marker: (what S3 returned, its document; ``{}`` when unreadable), or
    ``(None, None)`` when there is none."""
    got = await archive.fetch(key)
    if got is None:
        return None, None
    try:
        doc = orjson.loads(got[0])
    except orjson.JSONDecodeError:
        return got, {}
    return got, doc if isinstance(doc, dict) else {}


async def shard_owners(settings: Settings, archive: central.Archive) -> dict[str, Any]:
    """What the central bucket says about the shards, for ``ctagg status``: the layout record
    (None before a sharded process wrote one) and, for every shard of the recorded layout (of
    the config without one), its slot count, its writer marker (who wrote it, when, at which
    generation; retired by a resize) and its snapshot (when taken, at which generation).
    2N + 1 small requests, made together."""
    shard, prefix = settings.shard, settings.archive.prefix
    where = f"s3://{settings.archive.bucket}/{prefix}{INSTALLATION_KEY}"
    got = await archive.fetch(f"{prefix}{INSTALLATION_KEY}")
    layout = None if got is None else Layout.parse(got[0], got[1], where)
    count = layout.shards if layout is not None else shard.count
    markers = await asyncio.gather(
        *(read_marker(archive, marker_key_of(prefix, i, count)) for i in range(count))
    )
    snaps = await asyncio.gather(
        *(archive.head(snapshot_key_of(prefix, i, count)) for i in range(count))
    )
    slots = [0] * count
    for s in range(shard.slots):
        slots[shard_of(s, count)] += 1
    owners = []
    for i, ((_, marker), snap) in enumerate(zip(markers, snaps, strict=True)):
        owner: dict[str, Any] = {
            "index": i,
            "slots": slots[i],
            "marker": marker_key_of(prefix, i, count),
            "writer": None,
            "snapshot": None,
        }
        if marker is not None:
            owner["writer"] = {
                k: marker.get(k)
                for k in (
                    "host",
                    "pid",
                    "generation",
                    "written_at",
                    "renewed_at",
                    "stopped_at",
                    "retired",
                )
            }
        if snap is not None:
            meta = snap[1]
            owner["snapshot"] = {
                "key": snapshot_key_of(prefix, i, count),
                "generation": int(meta["generation"]) if meta.get("generation") else None,
                "taken_at": meta.get("taken-at"),
            }
        owners.append(owner)
    record = None
    if layout is not None:
        record = {
            "key": f"{prefix}{INSTALLATION_KEY}",
            "slots": layout.slots,
            "shards": layout.shards,
            "epoch": layout.epoch,
            "previous": None
            if layout.previous is None
            else {"shards": layout.previous[0], "epoch": layout.previous[1]},
            "agrees": layout.slots == shard.slots and layout.shards == shard.count,
        }
    return {"layout": record, "shards": owners}


class Resizer:
    """Checks the layout at every cycle start, resizes at a process's first one, publishes
    this shard's snapshots. One per Ingestor."""

    def __init__(
        self, settings: Settings, state: State, clock: Callable[[], float] = time.time
    ) -> None:
        self.settings = settings
        self.state = state
        self.clock = clock
        self.started = False  # a layout check succeeded once (a resize happens before that)
        self.layout: Layout | None = None  # the record as the last check found it
        self._last_snapshot = 0.0

    @property
    def _where(self) -> str:
        return f"s3://{self.settings.archive.bucket}/{self._key}"

    @property
    def _key(self) -> str:
        return f"{self.settings.archive.prefix}{INSTALLATION_KEY}"

    # ------------------------------------------------------------------ the layout

    async def check(self, archive: central.Archive, *, marker_is_ours: bool) -> None:
        """Before the cycle's writer marker is claimed: make sure this config's layout is the
        recorded one (recording it, or resizing at a process's first check), and that this
        state belongs to it (importing the old shards' snapshots when it is new to it).
        One shard whose marker is its own asks nothing: its requests are those of an
        installation that was never sharded. Until a check succeeds every check is the
        process's first: a resize refused (an old shard still runs) or cut short is tried
        again at the next cycle start."""
        await self._check(archive, marker_is_ours=marker_is_ours, first=not self.started)
        self.started = True

    async def _check(self, archive: central.Archive, *, marker_is_ours: bool, first: bool) -> None:
        shard = self.settings.shard
        if shard.count <= 1 and marker_is_ours:
            return
        layout = await self._read(archive)
        if layout is None:
            if shard.count <= 1:
                return
            layout = await self._record_first(archive)
        if layout.slots != shard.slots:
            raise InstallationMismatch(
                f"the config says {shard.slots} slots, but {self._where} records "
                f"{layout.slots}: the slot count of an installation never changes "
                f"(shard.slots: {layout.slots})"
            )
        if layout.shards != shard.count:
            if not first:
                raise InstallationMismatch(
                    f"{self._where} now records {layout.shards} shard(s) (epoch "
                    f"{layout.epoch}); this process runs with {shard.count}: the installation "
                    "was resized while it ran, so it stops (restart it with the new count)"
                )
            await self._old_shards_stopped(archive, layout.shards)
            layout = await self._resize(archive, layout)
        await self._join(archive, layout, first)
        self.layout = layout

    def first_owners(self) -> bool:
        """Whether this shard's pairs have had no other owner: a sharded layout that no resize
        made (its shards were its pairs' first writers). Then an empty state beside the other
        shards' objects has nothing of its own pairs to read back."""
        return (
            self.settings.shard.count > 1
            and self.layout is not None
            and self.layout.previous is None
        )

    async def _read(self, archive: central.Archive) -> Layout | None:
        got = await archive.fetch(self._key)
        return None if got is None else Layout.parse(got[0], got[1], self._where)

    def _doc(self, shards: int, epoch: int, previous: tuple[int, int] | None) -> bytes:
        return orjson.dumps(
            {
                "slots": self.settings.shard.slots,
                "shards": shards,
                "epoch": epoch,
                "previous": None
                if previous is None
                else {"shards": previous[0], "epoch": previous[1]},
                "written_by": self.settings.shard.label,
                "host": socket.gethostname(),
                "written_at": datetime.fromtimestamp(self.clock(), UTC).isoformat(),
            }
        )

    async def _record_first(self, archive: central.Archive) -> Layout:
        """The first sharded process: record the layout (If-None-Match: the first shard wins,
        the others read its record). An archive one unsharded process wrote (its writer
        marker is there) is the layout before it: a resize from one shard."""
        prefix = self.settings.archive.prefix
        unsharded = await archive.fetch(marker_key_of(prefix, 0, 1)) is not None
        previous = (1, 0) if unsharded else None
        if unsharded:
            await self._old_shards_stopped(archive, 1)
        count = self.settings.shard.count
        try:
            await archive.write(self._key, self._doc(count, 1, previous), if_absent=True)
        except central.PreconditionFailed:
            pass  # another shard recorded it first
        else:
            if previous is not None:
                await self._retire(archive, 1, count)
        got = await self._read(archive)
        if got is None:
            raise InstallationMismatch(f"{self._where} vanished right after it was written")
        return got

    async def _old_shards_stopped(self, archive: central.Archive, shards: int) -> None:
        """Refuse a resize while a shard of the old layout may still run: its writer marker
        is live (not retired), does not say it stopped, and is younger than
        ``shard.resize_quiet_secs``. Without this a direct change of the count (a
        ``helm upgrade`` of ``replicas`` without scaling to zero first) would have the old
        processes, restarted with their old count, resize back, and the two layouts would
        take turns; with it the new process exits until the old ones are gone."""
        cfg = self.settings
        # at least twice the fence: an old process silent this long writes nothing more
        quiet = max(
            cfg.shard.resize_quiet_secs or 3 * cfg.service.ingest_interval_secs,
            2 * cfg.shard.fence_secs,
        )
        now = self.clock()
        keys = [marker_key_of(cfg.archive.prefix, i, shards) for i in range(shards)]
        docs = await asyncio.gather(*(read_marker(archive, k) for k in keys))
        running = []
        for i, (_, doc) in enumerate(docs):
            if not doc or retired(doc) or doc.get("stopped_at"):
                continue
            alive = doc.get("renewed_at") or doc.get("written_at")  # its last sign of life
            try:
                age = now - datetime.fromisoformat(str(alive)).timestamp()
            except ValueError:
                continue  # no time to judge by: taken as silent
            if age < quiet:
                running.append(
                    f"{label(i, shards)} (host {doc.get('host')}, pid {doc.get('pid')}, "
                    f"marker written {max(age, 0):.0f}s ago)"
                )
        if running:
            raise InstallationMismatch(
                f"{self._where} records {shards} shard(s); this process runs with "
                f"{cfg.shard.count}, and a resize starts only once every old shard stopped; "
                f"still running: {', '.join(running)}. Stop the old shards first (scale to 0, "
                f"then start the new count), or, after a crash, wait {quiet:.0f}s "
                "(shard.resize_quiet_secs)"
            )

    async def _resize(self, archive: central.Archive, old: Layout) -> Layout:
        count = self.settings.shard.count
        body = self._doc(count, old.epoch + 1, (old.shards, old.epoch))
        try:
            await archive.write(self._key, body, if_match=old.etag)
        except central.PreconditionFailed:
            got = await self._read(archive)  # another new shard resized first
            if got is None or got.shards != count or got.epoch != old.epoch + 1:
                raise InstallationMismatch(
                    f"{self._where} changed while this process resized it; start again"
                ) from None
            return got
        log.warning(
            "installation.resized",
            bucket=self.settings.archive.bucket,
            shards_before=old.shards,
            shards=count,
            epoch=old.epoch + 1,
            shard=self.settings.shard.label,
        )
        await self._retire(archive, old.shards, count)
        got = await self._read(archive)
        assert got is not None
        return got

    async def _retire(self, archive: central.Archive, shards: int, resized_to: int) -> None:
        """Mark the old layout's writer markers retired (their identity and generation kept:
        the new shards compare them with the snapshots): a process of the old layout that
        still runs is then not the archive's latest writer."""
        prefix = self.settings.archive.prefix
        for i in range(shards):
            key = marker_key_of(prefix, i, shards)
            got = await archive.fetch(key)
            if got is None:
                continue
            try:
                doc = orjson.loads(got[0])
            except orjson.JSONDecodeError:
                continue
            if not isinstance(doc, dict) or doc.get("retired"):
                continue
            doc.update(retired=True, resized_to=resized_to, retired_at=self.clock())
            try:
                await archive.write(key, orjson.dumps(doc), if_match=got[1])
            except central.PreconditionFailed:
                log.warning("installation.marker_moved", key=key, reason="an old shard wrote it")

    async def _join(self, archive: central.Archive, layout: Layout, first: bool) -> None:
        """Make this state one of ``layout``'s: nothing to do when it already is; a state new
        to the layout's first epoch just joins it; else (at a process's first check only) the
        state is emptied when it is of an earlier layout and takes over from the old shards'
        snapshots."""
        meta = self.state.meta
        mine = meta.get("layout_epoch")
        if mine is not None and int(mine) == layout.epoch:
            return
        if mine is not None and int(mine) > layout.epoch:
            raise InstallationMismatch(
                f"this state is of layout epoch {mine}, but {self._where} records epoch "
                f"{layout.epoch}: the record was replaced; restore it or start a new state"
            )
        if layout.previous is None:  # the layout's first states (and states from before epochs)
            meta.set(layout_epoch=layout.epoch)
            return
        if not first:
            raise InstallationMismatch(
                f"{self._where} records layout epoch {layout.epoch}, this state is of epoch "
                f"{mine}: the installation was resized while this process ran; it stops"
            )
        await self._take_over(archive, layout)

    async def _take_over(self, archive: central.Archive, layout: Layout) -> None:
        assert layout.previous is not None
        shard = self.settings.shard
        old_count = layout.previous[0]
        prefix = self.settings.archive.prefix
        removed = snapshots.reset(self.state.db)
        if removed:
            log.warning(
                "resize.state_reset",
                state=self.state.path,
                rows=removed,
                reason="this state is of an earlier shard layout; the old shards' snapshots "
                "supersede it",
            )
        wanted = sorted({shard_of(s, old_count) for s in owned_slots(shard)})
        current = True
        trusted = 0.0
        floor, pruned_at = "", 0.0
        with tempfile.TemporaryDirectory(
            prefix=".ctagg-resize-", dir=_state_dir(self.state.path)
        ) as tmp:
            paths: list[str] = []
            for j in wanted:
                path = os.path.join(tmp, f"{label(j, old_count)}.db")
                got = await _download(archive, snapshot_key_of(prefix, j, old_count), path)
                if got is None:
                    current = False
                    log.error(
                        "resize.snapshot_missing",
                        shard=label(j, old_count),
                        bucket=self.settings.archive.bucket,
                        reason="its pairs are relisted and read back from the archive (exactly "
                        "once); what it had not forwarded yet is not forwarded by this shard: "
                        "`ctagg replay` sends it",
                    )
                    continue
                info = snapshots.read_meta(path)
                _, doc = await read_marker(archive, marker_key_of(prefix, j, old_count))
                is_current = names(doc, info.state_id, info.generation)
                if not is_current:
                    current = False
                    log.error(
                        "resize.snapshot_stale",
                        shard=label(j, old_count),
                        snapshot_generation=info.generation,
                        marker_generation=(doc or {}).get("generation"),
                        taken_at=got.get("taken-at"),
                        reason="the old shard ran cycles after this snapshot (it crashed or was "
                        "not stopped cleanly): this state reads the archive back before it "
                        "archives an event up to now; objects the old shard wrote after the "
                        "snapshot are not forwarded by this shard (`ctagg replay --since` the "
                        "snapshot's time sends them)",
                    )
                trusted = max(trusted, info.trusted_since or 0.0)
                floor = max(floor, info.window_floor)
                pruned_at = max(pruned_at, info.window_pruned_at)
                paths.append(path)
            report = snapshots.import_slots(
                self.state.db,
                paths,
                lambda a, r: owns(shard, a, r),
                first_shard=shard.ordinal == 0,
            )
        meta = self.state.meta
        if not current:
            trusted = self.clock()
            self.state.archive_known.uncover_all()
        values: dict[str, Any] = {
            "trusted_since": trusted,
            "imported_at": self.clock(),
            "imported_from": ",".join(label(j, old_count) for j in wanted),
            "layout_epoch": layout.epoch,
        }
        if floor:
            values.update(window_floor=floor, window_pruned_at=pruned_at)
        meta.set(**values)
        self.state.reload_floor()
        # the process that resized may have died before it retired them all
        await self._retire(archive, old_count, shard.count)
        log.info(
            "resize.imported",
            shard=shard.label,
            epoch=layout.epoch,
            from_shards=old_count,
            snapshots=report.snapshots,
            current=current,
            rows=report.rows,
            cursors={k: list(v) for k, v in report.cursors.items()},
        )

    # ------------------------------------------------------------------ snapshots

    def snapshot_due(self) -> bool:
        cfg = self.settings.shard
        return cfg.snapshots_on and (
            self.clock() - self._last_snapshot >= cfg.snapshot_interval_secs
        )

    async def publish(self, archive: central.Archive) -> Published:
        """Upload a snapshot of this state (between cycles only: a snapshot taken while a
        cycle writes would name that cycle's generation without its later objects). Raises
        :class:`SnapshotConflict` unless this state holds the shard's writer marker (a
        process of a retired layout, or one whose state another took over, uploads nothing)."""
        shard = self.settings.shard
        prefix = self.settings.archive.prefix
        key = snapshot_key_of(prefix, shard.ordinal, shard.count)
        meta = self.state.meta
        sid, generation = meta.identity()
        marker_key = marker_key_of(prefix, shard.ordinal, shard.count)
        _, marker = await read_marker(archive, marker_key)
        if not holds(marker, sid, generation):
            raise SnapshotConflict(
                f"this state ({sid}, generation {generation}) is not the writer that "
                f"s3://{self.settings.archive.bucket}/{marker_key} names: it uploads no "
                "snapshot"
            )
        started = time.perf_counter()
        with tempfile.TemporaryDirectory(
            prefix=".ctagg-snapshot-", dir=_state_dir(self.state.path)
        ) as tmp:
            raw = os.path.join(tmp, "state.db")
            snapshots.take(self.state.path, raw)
            packed = raw + ".gz"
            sha, size = _gzip(raw, packed)
            metadata = {
                "state-id": sid,
                "generation": str(generation),
                "taken-at": datetime.fromtimestamp(self.clock(), UTC).isoformat(),
                "host": socket.gethostname(),
                "shard": shard.label,
            }
            last = meta.get("snapshot_etag")
            try:
                stored = await archive.write_file(
                    key, packed, sha, metadata=metadata, if_absent=last is None, if_match=last
                )
            except central.PreconditionFailed:
                # the marker is ours, so the snapshot there is older: our last upload whose
                # answer was lost, an older copy of this state's, or the state this one took
                # over from; replace it
                head = await archive.head(key)
                stored = await archive.write_file(
                    key,
                    packed,
                    sha,
                    metadata=metadata,
                    if_absent=head is None,
                    if_match=head[0] if head else None,
                )
        meta.set(snapshot_etag=stored.etag or "", snapshot_at=self.clock())
        self._last_snapshot = self.clock()
        log.info(
            "snapshot.published",
            key=key,
            generation=generation,
            bytes=size,
            secs=round(time.perf_counter() - started, 3),
        )
        return Published(key, size)


def _state_dir(path: str) -> str | None:
    """Where temporary copies of the state go: beside it (the same disk has room for one
    more copy of it), or the system's temporary directory for an in-memory state."""
    return None if path == ":memory:" else str(Path(path).resolve().parent)


def _gzip(src: str, dest: str) -> tuple[str, int]:
    """Compress ``src`` to ``dest`` a megabyte at a time; (hex SHA-256, bytes) of ``dest``."""
    with open(src, "rb") as fin, gzip.open(dest, "wb", compresslevel=6) as fout:
        shutil.copyfileobj(fin, fout, 1 << 20)
    digest = hashlib.sha256()
    size = 0
    with open(dest, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


async def _download(archive: central.Archive, key: str, dest: str) -> dict[str, str] | None:
    """A snapshot, decompressed to ``dest`` as it arrives; its metadata, or None."""
    inflate = zlib.decompressobj(wbits=31)
    out = await asyncio.to_thread(open, dest, "wb")
    try:
        got = await archive.download(key, lambda chunk: out.write(inflate.decompress(chunk)))
        out.write(inflate.flush())
    finally:
        out.close()
    return None if got is None else got[1]
