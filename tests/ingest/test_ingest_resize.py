"""Resizing a sharded installation (aggregator/ingest/resize.py), shard by shard in this
process against moto over HTTP: every phase plants new objects for every (account, region)
pair, including account-trail copies of events archived in the phase before (a copy that
crosses the resize), and each shard of the phase's count runs one cycle and publishes its
snapshot. Judged by listing and decoding the central bucket: every planted event once.

Also: a new shard that took over from current snapshots neither fetches an old source object
again nor reads the archive back; a stale or missing snapshot falls back to the read-back (and
says so); a process whose count was changed under it stops; the slot count never changes; a
kill while the snapshot uploads leaves a snapshot the next upload replaces."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from archivecheck import assert_exactly_once, central_bodies
from awsfixtures import StsSessions, client, log_key, log_object, make_source, record
from crashkit import Step, fork_child, run_child

from aggregator.archive import store as central
from aggregator.aws.clients import Aws
from aggregator.aws.inventory import Account, Inventory, Source
from aggregator.aws.slots import for_shard, owns
from aggregator.config import Settings, parse_settings
from aggregator.forward.forwarder import forwarder_for
from aggregator.ingest.cycle import Ingestor
from aggregator.ingest.resize import InstallationMismatch, SnapshotConflict
from aggregator.ingest.truth import Fenced
from aggregator.ingest.work import CycleReport
from aggregator.state import State
from tests.fakes.splunk_hec import FakeSplunkHec

ACCOUNTS = ["111111111111", "333333333333", "444444444444", "555555555555"]
REGIONS = ["us-east-1", "eu-west-1", "ap-south-1"]
PAIRS = [(a, r) for a in ACCOUNTS for r in REGIONS]
ORG = "o-abcdefghij"
DAY = "2024-05-01"
NOW = 1714564800.0 + 12 * 3600  # 2024-05-01T12:00Z

Rec = dict[str, Any]


def org_source(account: str, region: str) -> Source:
    return make_source("org-trail", account, region, org_id=ORG)


def acct_source(account: str, region: str) -> Source:
    return make_source("acct-trails", account, region)


SOURCES = [s for a, r in PAIRS for s in (org_source(a, r), acct_source(a, r))]


HEC_TOKEN = "11111111-2222-3333-4444-555555555555"


def settings(
    tmp_path: Path,
    index: int,
    count: int,
    hec_url: str | None = None,
    max_concurrency: int = 2,
    **shard: Any,
) -> Settings:
    doc: dict[str, Any] = {
        "state": {"path": str(tmp_path / "state.db")},
        "archive": {"bucket": "central"},
        "collect": {"max_concurrency": max_concurrency, "relist_days": 7},
        "aws": {"max_attempts": 2},
        "shard": {"index": index, "count": count, **shard},
    }
    if hec_url is not None:
        doc["forward"] = {
            "batch_max_wait_secs": 0,
            "connectors": [
                {"name": "hec", "type": "splunk_hec", "url": hec_url, "token": HEC_TOKEN}
            ],
        }
    return parse_settings(doc)


def inventory(cfg: Settings) -> Inventory:
    whole = Inventory(
        [Account(a) for a in ACCOUNTS], {a: list(REGIONS) for a in ACCOUNTS}, [], SOURCES, []
    )
    return for_shard(whole, cfg.shard)


# a resize waits this long for an old shard that did not say it stopped (3 ingest intervals)
QUIET = 900.0


async def _shard_cycle(cfg: Settings, release: bool, clock: float) -> CycleReport:
    state = State(cfg.state.path, writer="test")
    try:
        ing = Ingestor(cfg, state, StsSessions(), Aws(cfg.aws), clock=lambda: clock)
        report = await ing.run(inventory(cfg))
        if release:  # as a process stops: the snapshot, and the marker says it stopped
            await ing.release()
        return report
    finally:
        state.close()


def shard_cycle(cfg: Settings, *, release: bool = True, clock: float = NOW) -> CycleReport:
    """One cycle of one shard's process; ``release=False``: it dies after the cycle."""
    return asyncio.run(_shard_cycle(cfg, release, clock))


def run_layout(
    tmp_path: Path, count: int, hec_url: str | None = None, clock: float = NOW, **shard: Any
) -> list[CycleReport]:
    """One cycle of every shard of ``count`` (one after another: they own disjoint pairs)."""
    reports = [
        shard_cycle(settings(tmp_path, i, count, hec_url, **shard), clock=clock)
        for i in range(count)
    ]
    for r in reports:
        assert (r.errors, r.quarantined) == (0, 0), r
    return reports


@pytest.fixture
def buckets(moto: str) -> None:
    for b in ("central", "org-trail", "acct-trails"):
        client("s3").create_bucket(Bucket=b)


class Planter:
    """Plants one phase at a time: per pair an organization-trail object of three new events
    and an account-trail object with one new event and a copy of an event of the phase before
    (two copies of it, archived once)."""

    def __init__(self) -> None:
        self.events: dict[str, Rec] = {}
        self.phase = 0
        self.last: dict[tuple[str, str], Rec] = {}
        self.objects = 0

    def plant(self) -> int:
        """The phase's new objects; returns how many."""
        p = self.phase
        self.phase += 1
        s3 = client("s3")
        n = 0
        for k, (account, region) in enumerate(PAIRS):
            minute = 10 * p
            recs = [
                record(
                    f"p{p}-{account}-{region}-{j}",
                    account,
                    region,
                    f"{DAY}T10:{minute + j:02d}:00Z",
                )
                for j in range(3)
            ]
            ts = f"20240501T10{minute:02d}Z"
            src = org_source(account, region)
            s3.put_object(
                Bucket="org-trail",
                Key=log_key(src.prefix, account, region, ts, f"Org{p}x{k:03d}"),
                Body=log_object(recs),
            )
            own = record(
                f"p{p}-{account}-{region}-acct", account, region, f"{DAY}T10:{minute + 5:02d}:00Z"
            )
            copies = [own] + (
                [self.last[(account, region)]] if (account, region) in self.last else []
            )
            src = acct_source(account, region)
            s3.put_object(
                Bucket="acct-trails",
                Key=log_key(src.prefix, account, region, ts, f"Acc{p}x{k:03d}"),
                Body=log_object(copies),
            )
            n += 2
            for r in (*recs, own):
                self.events[r["eventID"]] = r
            self.last[(account, region)] = recs[0]
        self.objects += n
        return n

    def all(self) -> list[Rec]:
        return list(self.events.values())


def logged(err: str, event: str) -> list[dict[str, Any]]:
    out = []
    for line in err.splitlines():
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        if doc.get("event") == event:
            out.append(doc)
    return out


def test_resize_2_3_1_archives_every_event_once_and_carries_the_state(
    buckets: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    planter = Planter()
    planter.plant()
    first = run_layout(tmp_path, 2)
    assert sum(r.objects for r in first) == planter.objects
    assert_exactly_once(planter.all())

    for count in (3, 1):
        new = planter.plant()
        capsys.readouterr()
        reports = run_layout(tmp_path, count)
        err = capsys.readouterr().err
        # the new shards took over from current snapshots: only the new objects were
        # fetched, nothing was read back from the archive
        assert sum(r.objects for r in reports) == new, reports
        assert sum(r.readback_objects for r in reports) == 0, reports
        imported = logged(err, "resize.imported")
        assert len(imported) == count
        assert all(doc["current"] for doc in imported), imported
        assert not logged(err, "resize.snapshot_stale")
        assert_exactly_once(planter.all())

    record_ = json.loads(
        central_bodies(prefix="_ctagg/installation.json")["_ctagg/installation.json"]
    )
    assert (record_["shards"], record_["epoch"], record_["previous"]) == (
        1,
        3,
        {"shards": 3, "epoch": 2},
    )
    retired = central_bodies(prefix="_ctagg/writer.shard-")
    assert len(retired) == 5  # 2 + 3 old shards' markers, all retired
    assert all(json.loads(b)["retired"] for b in retired.values())


def test_a_stale_or_missing_snapshot_falls_back_to_reading_the_archive_back(
    buckets: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    planter = Planter()
    planter.plant()
    run_layout(tmp_path, 2)
    # shard 0 runs another cycle without a snapshot after it (a crash, say): its snapshot is
    # stale; shard 1's snapshot is deleted
    planter.plant()
    assert shard_cycle(settings(tmp_path, 0, 2), release=False).errors == 0
    assert shard_cycle(settings(tmp_path, 1, 2)).errors == 0
    client("s3").delete_object(Bucket="central", Key="_ctagg/snapshots/shard-1-of-2.db.gz")
    assert_exactly_once(planter.all())

    planter.plant()
    # shard 0 never said it stopped: a resize waits out the quiet time (it may still run)
    before = central_bodies()
    with pytest.raises(InstallationMismatch, match=r"still running: shard-0-of-2 \(host "):
        shard_cycle(settings(tmp_path, 0, 3), clock=NOW + QUIET - 1)
    assert central_bodies() == before  # nothing written: not even the layout record
    capsys.readouterr()
    reports = run_layout(tmp_path, 3, clock=NOW + QUIET)
    err = capsys.readouterr().err

    assert logged(err, "resize.snapshot_stale")
    assert logged(err, "resize.snapshot_missing")
    assert sum(r.readback_objects for r in reports) > 0
    assert_exactly_once(planter.all())


def test_a_process_whose_count_changed_under_it_stops(buckets: None, tmp_path: Path) -> None:
    """Shard 0 of 2 runs on; a 3-shard process resizes the installation; shard 0 of 2's next
    cycle refuses (InstallationMismatch), writing nothing."""
    planter = Planter()
    planter.plant()
    run_layout(tmp_path, 2)

    async def two_cycles() -> None:
        cfg = settings(tmp_path, 0, 2)
        state = State(cfg.state.path, writer="test")
        try:
            ing = Ingestor(cfg, state, StsSessions(), Aws(cfg.aws), clock=lambda: NOW)
            await ing.run(inventory(cfg))
            # the resize, while this runs (silent for the quiet time: a paused process)
            await asyncio.to_thread(run_layout, tmp_path, 3, None, NOW + QUIET)
            planter.plant()
            before = central_bodies()
            with pytest.raises(InstallationMismatch, match="resized while it ran"):
                await ing.run(inventory(cfg))
            assert central_bodies() == before
        finally:
            state.close()

    asyncio.run(two_cycles())


def test_a_resize_back_waits_for_the_new_shards_to_stop(buckets: None, tmp_path: Path) -> None:
    """A direct change of the count (no scale to zero): a shard of the new count 3 resizes
    (the old shards said they stopped) and runs on; an old shard restarted with its old count
    2 refuses to resize back while the new one may run (else the two layouts would take
    turns), writing nothing; once the new shard stopped, the resize back goes through."""
    planter = Planter()
    planter.plant()
    run_layout(tmp_path, 2)
    markers = central_bodies(prefix="_ctagg/writer.")
    assert all(json.loads(m)["stopped_at"] for m in markers.values())  # released

    planter.plant()
    assert shard_cycle(settings(tmp_path, 2, 3), release=False).errors == 0  # runs on
    record = json.loads(central_bodies(prefix=INSTALLATION)[INSTALLATION])
    assert (record["shards"], record["epoch"]) == (3, 2)
    live = json.loads(central_bodies(prefix=MARKER_2_OF_3)[MARKER_2_OF_3])
    assert "stopped_at" not in live

    before = central_bodies()
    with pytest.raises(InstallationMismatch, match=r"still running: shard-2-of-3 \(host "):
        shard_cycle(settings(tmp_path, 0, 2))
    assert central_bodies() == before

    shard_cycle(settings(tmp_path, 2, 3))  # its next cycle, then it stops
    assert json.loads(central_bodies(prefix=MARKER_2_OF_3)[MARKER_2_OF_3])["stopped_at"]
    planter.plant()
    run_layout(tmp_path, 2)  # shards 0 and 1 of 3 never ran: no markers to wait for
    record = json.loads(central_bodies(prefix=INSTALLATION)[INSTALLATION])
    assert (record["shards"], record["epoch"]) == (2, 3)
    assert_exactly_once(planter.all())


def test_a_refused_resize_is_tried_again_once_the_old_shards_stop(
    buckets: None, tmp_path: Path
) -> None:
    """A one-shard daemon started while shard 1 of 2 still runs (a direct change of the
    count): its cycles are refused ("still running"), not taken for a resize that happened
    under it; once the old shard stopped, its next cycle resizes 2 -> 1 and archives the
    rest, every event once (the bug: every later cycle said "resized while it ran")."""
    planter = Planter()
    planter.plant()
    run_layout(tmp_path, 2)
    planter.plant()
    assert shard_cycle(settings(tmp_path, 1, 2), release=False).errors == 0  # runs on

    async def one_daemon() -> None:
        cfg = settings(tmp_path, 0, 1)
        state = State(cfg.state.path, writer="test")
        try:
            ing = Ingestor(cfg, state, StsSessions(), Aws(cfg.aws), clock=lambda: NOW)
            for _ in range(2):
                with pytest.raises(InstallationMismatch, match="still running: shard-1-of-2"):
                    await ing.run(inventory(cfg))
            await asyncio.to_thread(shard_cycle, settings(tmp_path, 1, 2))  # it stops
            report = await ing.run(inventory(cfg))
            assert report.errors == 0
        finally:
            state.close()

    asyncio.run(one_daemon())
    record = json.loads(central_bodies(prefix=INSTALLATION)[INSTALLATION])
    assert (record["shards"], record["epoch"]) == (1, 2)
    assert_exactly_once(planter.all())


INSTALLATION = "_ctagg/installation.json"
MARKER_2_OF_3 = "_ctagg/writer.shard-2-of-3.json"


def test_the_slot_count_never_changes(buckets: None, tmp_path: Path) -> None:
    Planter().plant()
    run_layout(tmp_path, 2)
    before = central_bodies(prefix="")
    with pytest.raises(InstallationMismatch, match="slot count of an installation never changes"):
        shard_cycle(settings(tmp_path, 0, 2, slots=128))
    assert central_bodies(prefix="") == before


def test_an_unsharded_installation_scales_out_and_its_old_process_stops(
    buckets: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One process with ``shard.snapshots: true``, then two shards: they take over from its
    snapshot; the old process (its marker retired) refuses its next cycle."""
    planter = Planter()
    planter.plant()
    one = settings(tmp_path, 0, 1, snapshots=True)
    assert shard_cycle(one).objects == planter.objects

    new = planter.plant()
    capsys.readouterr()
    reports = run_layout(tmp_path, 2)
    err = capsys.readouterr().err
    assert sum(r.objects for r in reports) == new
    assert sum(r.readback_objects for r in reports) == 0
    assert all(doc["current"] for doc in logged(err, "resize.imported"))
    assert_exactly_once(planter.all())
    marker = json.loads(central_bodies(prefix="_ctagg/writer.json")["_ctagg/writer.json"])
    assert (marker["retired"], marker["resized_to"]) == (True, 2)

    async def old_process_again() -> None:
        state = State(one.state.path, writer="test")
        try:
            ing = Ingestor(one, state, StsSessions(), Aws(one.aws), clock=lambda: NOW)
            ing.writer.truth.resizer.started = True  # it has been running all along
            with pytest.raises(InstallationMismatch, match="resized while it ran"):
                await ing.run(inventory(one))
        finally:
            state.close()

    asyncio.run(old_process_again())


def _publish_killed(cfg: Settings, step: Step) -> None:
    async def go() -> None:
        state = State(cfg.state.path, writer="test")
        try:
            ing = Ingestor(cfg, state, StsSessions(), Aws(cfg.aws), clock=lambda: NOW)
            await ing.run(inventory(cfg))
            await ing.publish_snapshot(force=True)
        finally:
            state.close()

    died = run_child(lambda: asyncio.run(go()), step)
    assert died.killed, step.label()


@pytest.mark.parametrize("after", [False, True], ids=["before-upload", "after-upload"])
def test_sigkill_while_the_snapshot_uploads(
    buckets: None, tmp_path: Path, after: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    """Killed before the upload (the snapshot of the cycle before stays: stale) or right
    after it (S3 has it, the state never recorded its ETag: the next upload must replace it).
    Either way the resize that follows archives every event exactly once."""
    planter = Planter()
    planter.plant()
    run_layout(tmp_path, 2)
    planter.plant()
    _publish_killed(settings(tmp_path, 0, 2), Step(central.Archive, "write_file", after=after))
    if after:  # the next cycle and its upload go through
        planter.plant()
        assert shard_cycle(settings(tmp_path, 0, 2)).errors == 0
    assert shard_cycle(settings(tmp_path, 1, 2)).errors == 0

    planter.plant()
    capsys.readouterr()
    # killed before it said it stopped: the resize waits out the quiet time
    run_layout(tmp_path, 3, clock=NOW + (0 if after else QUIET))
    err = capsys.readouterr().err
    assert bool(logged(err, "resize.snapshot_stale")) is (not after)
    assert_exactly_once(planter.all())


async def _forward(cfg: Settings) -> int:
    """Drain this shard's forwarder (the daemon's, over the central bucket in moto), then
    release the state as the daemon's shutdown does (after its lanes stopped); the rows a
    resize imported as delivered that were left (none once the cursor passed them)."""
    state = State(cfg.state.path)
    try:
        async with central.opened(cfg, Aws(cfg.aws), StsSessions()) as archive:
            await forwarder_for(cfg, state, archive).drain()
        ing = Ingestor(cfg, state, StsSessions(), Aws(cfg.aws), clock=lambda: NOW)
        await ing.release()
        return state.count("forward_delivered")
    finally:
        state.close()


async def test_each_event_reaches_the_sink_once_across_a_resize(
    buckets: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two shards deliver unevenly before the resize to one: shard 0 delivered its first
    phase only, shard 1 everything. The one shard's cursor stops at shard 0's first
    undelivered row, shard 1's rows after it are skipped as delivered: the sink (a Splunk HEC
    server to its wire contract) receives every planted event exactly once."""
    hec = FakeSplunkHec({HEC_TOKEN})
    await hec.start()
    try:
        planter = Planter()
        planter.plant()
        await asyncio.to_thread(run_layout, tmp_path, 2, hec.url)
        for i in range(2):
            await _forward(settings(tmp_path, i, 2, hec.url))
        planter.plant()
        await asyncio.to_thread(run_layout, tmp_path, 2, hec.url)
        await _forward(settings(tmp_path, 1, 2, hec.url))  # shard 0's second phase waits
        sent_before = len(hec.indexed)

        capsys.readouterr()
        await asyncio.to_thread(run_layout, tmp_path, 1, hec.url)
        imported = logged(capsys.readouterr().err, "resize.imported")
        one = settings(tmp_path, 0, 1, hec.url)
        state = State(one.state.path)
        try:  # the translated cursor and the rows beyond it delivered already
            beyond = state.count("forward_delivered")
        finally:
            state.close()
        left = await _forward(one)
    finally:
        await hec.stop()
    received = [str(e["event"]["eventID"]) for e in hec.indexed]
    assert len(received) > sent_before
    assert sorted(received) == sorted(planter.events)  # every event, once
    assert imported[0]["cursors"]["hec"][0] > 1
    assert beyond > 0
    assert left == 0


def test_ownership_of_the_test_pairs_is_spread() -> None:
    """The pairs above give every shard of 2 and 3 something to do (else the tests above
    would show nothing of a handoff)."""
    from aggregator.config import ShardSettings

    for n in (2, 3):
        for i in range(n):
            assert any(owns(ShardSettings(index=i, count=n), a, r) for a, r in PAIRS)


def test_only_the_marker_holder_uploads_the_snapshot(buckets: None, tmp_path: Path) -> None:
    """A state that took the shard over (a lost volume: a new state file for the same shard)
    replaces the old state's snapshot; the old state, no longer the marker's writer, uploads
    nothing (it would hand a resize a copy the shard has moved past)."""
    Planter().plant()
    old = settings(tmp_path, 0, 2)
    shard_cycle(old)
    new = parse_settings(
        {**old.model_dump(mode="json"), "state": {"path": str(tmp_path / "new" / "state.db")}}
    )
    (tmp_path / "new").mkdir()
    shard_cycle(new)  # takes the marker over (reading the archive back), then uploads

    key = "_ctagg/snapshots/shard-0-of-2.db.gz"
    s3 = client("s3")
    by = s3.head_object(Bucket="central", Key=key)["Metadata"]["state-id"]

    async def old_uploads() -> None:
        state = State(old.state.path, writer="test")
        try:
            ing = Ingestor(old, state, StsSessions(), Aws(old.aws), clock=lambda: NOW)
            with pytest.raises(SnapshotConflict, match="is not the writer"):
                await ing.publish_snapshot(force=True)
            assert by != state.meta.identity()[0]
        finally:
            state.close()

    asyncio.run(old_uploads())
    assert s3.head_object(Bucket="central", Key=key)["Metadata"]["state-id"] == by


def _paused_cycle(cfg: Settings, pause_at: int) -> None:
    """A shard's cycle in a forked child that stops itself (SIGSTOP) when it has fetched its
    ``pause_at``-th object, before that object's central PUT: a pod frozen mid-cycle."""

    async def go() -> None:
        fetched = [0]

        async def freeze(job: Any, data: bytes) -> None:
            fetched[0] += 1
            if fetched[0] == pause_at:
                os.kill(os.getpid(), signal.SIGSTOP)

        state = State(cfg.state.path, writer="zombie")
        try:
            ing = Ingestor(cfg, state, StsSessions(), Aws(cfg.aws), clock=lambda: NOW)
            ing.fetched = freeze  # type: ignore[method-assign]
            await ing.run(inventory(cfg))
        finally:
            state.close()

    asyncio.run(go())


def test_a_paused_former_owner_writes_nothing_after_the_resize(
    buckets: None, tmp_path: Path
) -> None:
    """Zombie: shard 0 of 2 freezes mid-cycle (after two objects archived), silent past the
    quiet time; three new shards resize and archive everything. Thawed, the old process finds
    its fence lapsed (no renewal for longer than shard.fence_secs) and ends its cycle with
    Fenced: the central bucket, listed and decoded, is exactly as the new shards left it, and
    holds every event once."""
    planter = Planter()
    planter.plant()
    run_layout(tmp_path, 2)
    planter.plant()
    zombie = settings(tmp_path, 0, 2, max_concurrency=1, fence_secs=3)
    assert zombie.collect.max_concurrency == 1  # no second PUT in flight when it freezes

    def fenced_zombie() -> None:  # the child exits 0 only when its cycle ended Fenced
        try:
            _paused_cycle(zombie, pause_at=3)
        except Fenced:
            return
        raise AssertionError("the thawed cycle was not fenced")

    pid = fork_child(fenced_zombie)
    try:
        _, status = os.waitpid(pid, os.WUNTRACED)
        assert os.WIFSTOPPED(status), status
        frozen_at = time.monotonic()
        during = central_bodies(prefix="AWSLogs/")
        assert during  # it archived before it froze

        reports = run_layout(tmp_path, 3, clock=NOW + QUIET)  # the resize
        assert sum(r.readback_objects for r in reports) > 0  # its snapshot is stale
        assert_exactly_once(planter.all())
        time.sleep(max(0.0, 4 - (time.monotonic() - frozen_at)))  # frozen > fence_secs
        after_resize = central_bodies()
    finally:
        os.kill(pid, signal.SIGCONT)
    _, status = os.waitpid(pid, 0)

    assert os.WIFEXITED(status), status
    assert os.WEXITSTATUS(status) == 0, status  # Fenced
    assert central_bodies() == after_resize  # not one PUT or DELETE after the thaw
    assert_exactly_once(planter.all())


def test_a_cycle_longer_than_the_fence_renews_its_marker(buckets: None, tmp_path: Path) -> None:
    """Every object takes 0.5 s, the fence is 3 s: the cycle (~8 s) renews the writer marker
    every third of it (renewed_at, the same state and generation) and archives everything."""
    planter = Planter()
    planter.plant()
    cfg = settings(tmp_path, 0, 1, max_concurrency=1, fence_secs=3)

    async def slow_cycle() -> CycleReport:
        async def slow(job: Any, data: bytes) -> None:
            await asyncio.sleep(0.5)

        state = State(cfg.state.path, writer="test")
        try:
            ing = Ingestor(cfg, state, StsSessions(), Aws(cfg.aws))
            ing.fetched = slow  # type: ignore[method-assign]
            return await ing.run(inventory(cfg))
        finally:
            state.close()

    started = time.monotonic()
    report = asyncio.run(slow_cycle())
    assert time.monotonic() - started > 2 * cfg.shard.fence_secs
    assert (report.errors, report.objects) == (0, planter.objects)
    marker = json.loads(central_bodies(prefix="_ctagg/writer.json")["_ctagg/writer.json"])
    assert marker["generation"] == 1
    assert marker["renewed_at"] > marker["written_at"]
    assert_exactly_once(planter.all())
