"""The crash matrix of issue 13 (exactly once by construction), against moto's S3 over HTTP.

A forked child is killed with SIGKILL (tests/crashkit.py) at each step of an object's path:
after the source GET, after the central PUT (before the commit), after the commit, inside
retention and inside a LookupEvents window. The restart is combined with the order in which the
copies of the events are reprocessed (the organization trail's first, the account trail's
first, late keys after the rest), with a state file deleted before it, and with a state restored
from an older copy. The orphan of the issue (a PUT that reached S3 without its commit, whose
events another object then archived) and events older than the dedupe window arriving again
after a crash are cases of their own; a Hypothesis state machine interleaves all of it.

Every test is judged only by listing and decoding the central bucket
(:func:`archivecheck.assert_exactly_once`), never by the ledger.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from archivecheck import archived, assert_exactly_once, central_bodies, decode
from awsfixtures import StsSessions, client, log_key, log_object, make_source, record
from crashkit import Step, run_child
from hypothesis import HealthCheck
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from aggregator.archive import store as central
from aggregator.archive.retention import Retention
from aggregator.aws.clients import Aws
from aggregator.aws.inventory import Account, Inventory, Source
from aggregator.config import Settings, parse_settings
from aggregator.ingest import cycle as cycle_module
from aggregator.ingest.cycle import Ingestor
from aggregator.ingest.truth import ArchiveTruth
from aggregator.ingest.windows import LookupWindows
from aggregator.ingest.work import CycleReport
from aggregator.state import State
from aggregator.state.integrity import LookupCursors
from aggregator.state.truth import ArchiveKnown
from aggregator.state.window import DedupeWindow
from tests.ingest.test_ingest_lookup import item

A1 = "111111111111"
R = "us-east-1"
ORG = "o-abcdefghij"
NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC).timestamp()
ORG_SRC = make_source("org-trail", A1, org_id=ORG)
ACCT_SRC = make_source("a1-trail", A1, reader=A1)
BOTH = (ORG_SRC, ACCT_SRC)

Rec = dict[str, Any]


# ---------------------------------------------------------------- fixtures and helpers


def settings(tmp_path: Path, **sections: Any) -> Settings:
    doc: dict[str, Any] = {
        "state": {"path": str(tmp_path / "state.db")},
        "archive": {"bucket": "central"},
        "collect": {"max_concurrency": 1, "relist_days": 7},
        "aws": {"max_attempts": 2},
    }
    doc.update(sections)
    return parse_settings(doc)


def inventory(*sources: Source) -> Inventory:
    return Inventory([Account(A1)], {A1: [R]}, [], list(sources), [])


async def _cycle(
    cfg: Settings, sources: tuple[Source, ...], clock: float, cloudtrail: Any = None
) -> CycleReport:
    state = State(cfg.state.path, writer="test")
    try:
        kwargs: dict[str, Any] = {"clock": lambda: clock}
        if cloudtrail is not None:  # its fake clock moves with LookupEvents' pacing
            kwargs = {"cloudtrail_client": cloudtrail.factory, "sleep": cloudtrail.sleep}
            kwargs["clock"] = cloudtrail.now
        ing = Ingestor(cfg, state, StsSessions(), Aws(cfg.aws), **kwargs)
        return await ing.run(inventory(*sources))
    finally:
        state.close()


def cycle(
    cfg: Settings, *sources: Source, clock: float = NOW, cloudtrail: Any = None
) -> CycleReport:
    """One ingest cycle in this process (a fresh event loop)."""
    return asyncio.run(_cycle(cfg, sources or BOTH, clock, cloudtrail))


def crash(cfg: Settings, step: Step, *sources: Source, **kw: Any) -> None:
    """One ingest cycle in a forked child killed at ``step``; it must have died there."""
    died = run_child(lambda: cycle(cfg, *sources, **kw), step)
    assert died.killed, f"the child was not killed {step.label()} (exit {died.exit_code})"


def retention(cfg: Settings, clock: float) -> None:
    async def go() -> None:
        state = State(cfg.state.path, writer="test")
        try:
            await Retention(cfg, state, StsSessions(), Aws(cfg.aws), clock=lambda: clock).run()
        finally:
            state.close()

    asyncio.run(go())


@pytest.fixture
def buckets(moto: str) -> None:
    make_buckets()


def make_buckets() -> None:
    client("s3").create_bucket(Bucket="central")
    client("s3").create_bucket(Bucket="org-trail")
    client("s3", A1).create_bucket(Bucket="a1-trail")


def events(
    prefix: str, n: int, day: str = "2024-05-01", hour: int = 10, minute: int = 0
) -> list[Rec]:
    return [
        record(f"{prefix}-{i}", A1, time=f"{day}T{hour:02d}:{minute + i:02d}:00Z") for i in range(n)
    ]


def put(src: Source, recs: list[Rec], ts: str, rand: str) -> str:
    key: str = log_key(src.prefix, A1, R, ts, rand)
    s3 = client("s3") if src is ORG_SRC else client("s3", A1)
    s3.put_object(Bucket=src.bucket, Key=key, Body=log_object(recs))
    return key


def lose_state(cfg: Settings) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(cfg.state.path + suffix).unlink(missing_ok=True)


def backup_state(cfg: Settings, to: Path) -> None:
    state = State(cfg.state.path)
    try:  # a consistent copy, WAL included
        state.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        state.close()
    shutil.copy(cfg.state.path, to)


def restore_state(cfg: Settings, backup: Path) -> None:
    lose_state(cfg)
    shutil.copy(backup, cfg.state.path)


def unique(*groups: list[Rec]) -> list[Rec]:
    out: dict[str, Rec] = {}
    for g in groups:
        for r in g:
            out[r["eventID"]] = r
    return list(out.values())


# ---------------------------------------------------------------- the crash matrix

# Two copies of most events: the organization trail's and the account trail's.
X = events("x", 10)  # 10:00 - 10:09
P = events("p", 3, hour=9)  # archived before the backup
Q = events("q", 3, hour=9, minute=30)  # archived after the backup, before the crash
O1 = X[0:6]
O2 = [*X[6:10], *events("o", 2, minute=40)]
C1 = [*X[3:8], *events("c", 2, minute=30)]
C2 = [*X[8:10], *events("d", 2, minute=35)]
LATE = [*X[0:2], *events("late", 2, minute=50)]


def put_org_objects() -> None:
    put(ORG_SRC, O1, "20240501T1010Z", "OrgOne")
    put(ORG_SRC, O2, "20240501T1020Z", "OrgTwo")


def put_acct_objects() -> None:
    put(ACCT_SRC, C1, "20240501T1012Z", "AccOne")
    put(ACCT_SRC, C2, "20240501T1022Z", "AccTwo")


def put_both_objects() -> None:
    put_org_objects()
    put_acct_objects()


def put_late_object() -> None:
    # its key sorts before every key already handled on that day of the org trail
    put(ORG_SRC, LATE, "20240501T1005Z", "LateOne")


@dataclass(frozen=True)
class Order:
    """Which copies exist in the cycle that dies and which arrive after it."""

    name: str
    before: Callable[[], None]
    crash_sources: tuple[Source, ...]
    after: Callable[[], None]


ORDERS = [
    Order("org-first", put_org_objects, (ORG_SRC,), put_acct_objects),
    Order("acct-first", put_acct_objects, (ACCT_SRC,), put_org_objects),
    Order("late-keys", put_both_objects, BOTH, put_late_object),
]

# Archive.write #1 of every cycle is the writer marker; #2 and #3 are the first two objects'
# PUTs. The cycle that dies always has at least two objects to handle.
STEPS = {
    "after-source-get": Step(cycle_module, "fetch", nth=1, after=True),  # first object
    "after-put-before-commit": Step(central.Archive, "write", nth=3, after=True),  # second
    "before-commit": Step(State, "commit_object", nth=1, after=False),  # first, PUT done
    "after-commit": Step(State, "commit_object", nth=2, after=True),  # second, committed
}
STATES = ["kept", "deleted", "restored"]


def _matrix() -> list[Any]:
    """A pairwise product: every step with every order, every step and every order with
    every state treatment (12 cases, not 36)."""
    cases = []
    for i, step in enumerate(STEPS):
        for j, order in enumerate(ORDERS):
            state = STATES[(i + j) % len(STATES)]
            cases.append(pytest.param(step, order, state, id=f"{step}-{order.name}-{state}"))
    return cases


@pytest.mark.parametrize(("step", "order", "treatment"), _matrix())
def test_sigkill_at_each_step_then_restart_archives_every_event_once(
    buckets: None, tmp_path: Path, step: str, order: Order, treatment: str
) -> None:
    """kill -9 at one step of an object's path; the state is kept, deleted or restored from a
    copy older than the last good cycle; the other copies (or a late key) arrive; two restarts
    over both trails. The archive holds every event once and nothing twice."""
    cfg = settings(tmp_path)
    put(ORG_SRC, P, "20240501T0910Z", "Base")
    cycle(cfg, ORG_SRC)
    backup_state(cfg, tmp_path / "older.db")
    put(ORG_SRC, Q, "20240501T0935Z", "Next")
    cycle(cfg, ORG_SRC)
    assert_exactly_once([*P, *Q])

    order.before()
    crash(cfg, STEPS[step], *order.crash_sources)
    if treatment == "deleted":
        lose_state(cfg)
    elif treatment == "restored":
        restore_state(cfg, tmp_path / "older.db")
    order.after()

    first = cycle(cfg)
    assert first.errors == 0
    planted = unique(P, Q, O1, O2, C1, C2, LATE if order.name == "late-keys" else [])
    assert_exactly_once(planted)
    again = cycle(cfg)
    assert again.events_archived == 0
    assert_exactly_once(planted)


# ---------------------------------------------------------------- the orphan


class PutLostForClient(OSError):
    """The PUT reached S3; the client saw a reset (a timeout, a dropped connection)."""


def _orphan_child(cfg: Settings) -> Callable[[], None]:
    """A cycle in which A's PUT reaches S3 but fails for the client, B (handled next) archives
    its events, and the process is killed before the cycle's end settles A."""

    def go() -> None:
        real = central.Archive.write
        lost: list[str] = []

        async def write(self: central.Archive, key: str, body: bytes, **kw: Any) -> Any:
            stored = await real(self, key, body, **kw)
            if "_ctagg/" not in key and not lost:
                lost.append(key)
                raise PutLostForClient("connection reset after the request was sent")
            return stored

        central.Archive.write = write  # type: ignore[method-assign]
        cycle(cfg)

    return go


@pytest.mark.parametrize(
    ("overlap", "treatment"),
    [("all", "kept"), ("all", "deleted"), ("all", "restored"), ("half", "deleted")],
)
def test_a_put_lost_for_the_client_then_a_crash_never_leaves_a_duplicate(
    buckets: None, tmp_path: Path, overlap: str, treatment: str
) -> None:
    """Issue 13's orphan in the making: A's central PUT reaches S3 but fails for the client (so
    no commit); B, overlapping A, is handled next in the same cycle; the process is killed
    before the cycle's end settles A. The archive must hold no duplicate at that moment (a
    deleted or restored state would never settle A: B must not have archived A's events), and
    after the restart (state kept, deleted or restored from an older copy) every event once.

    Found a bug: B archived every event of A (A's claims were released when its write failed),
    so with the state deleted before the restart A's copies stayed in the archive for good."""
    cfg = settings(tmp_path)
    base = events("base", 2, hour=8)
    put(ORG_SRC, base, "20240501T0810Z", "Base")
    cycle(cfg, ORG_SRC)
    backup_state(cfg, tmp_path / "older.db")

    a = X[0:6] if overlap == "all" else X[0:8]
    b = [*X[0:6], *events("b", 3, minute=30)]
    put(ORG_SRC, a, "20240501T1010Z", "AAAA")  # the org trail's copy, listed first
    put(ACCT_SRC, b, "20240501T1020Z", "BBBB")
    # the cycle's end settles the intents (ArchiveTruth.settle #2): die before it
    died = run_child(_orphan_child(cfg), Step(ArchiveTruth, "settle", nth=2, after=False))
    assert died.killed
    ids = [e["eventID"] for e in archived()]
    assert len(ids) == len(set(ids)), f"duplicates in the archive after the crash: {sorted(ids)}"
    if treatment == "deleted":
        lose_state(cfg)
    elif treatment == "restored":
        restore_state(cfg, tmp_path / "older.db")

    cycle(cfg)
    planted = unique(base, a, b)
    assert_exactly_once(planted)
    cycle(cfg)
    assert_exactly_once(planted)


def plant_orphan(cfg: Settings, a: list[Rec]) -> str:
    """What a process killed between A's PUT and its commit leaves when B's copies of A's
    events were committed first: A's central object in the archive and its intent in the
    state. Returns A's central key."""
    akey = put(ORG_SRC, a, "20240501T1010Z", "AAAA")
    parts = central.parse_source_name(akey)
    assert parts is not None
    ckey = central.central_key(cfg.archive.prefix, parts, ORG_SRC.bucket, akey)
    client("s3").put_object(Bucket="central", Key=ckey, Body=log_object(a))
    state = State(cfg.state.path)
    try:
        state.intents.begin(ckey, ORG_SRC, akey)
    finally:
        state.close()
    return ckey


@pytest.mark.parametrize(
    ("overlap", "step"),
    [
        ("all", None),
        ("half", None),
        ("all", Step(central.Archive, "delete", nth=1, after=True)),  # intent not dropped
        ("half", Step(State, "adopt", nth=1, after=False)),  # rewritten, not adopted
        ("half", Step(central.Archive, "write", nth=2, after=False)),  # before the rewrite
    ],
    ids=[
        "keeps-nothing",
        "keeps-half",
        "killed-after-delete",
        "killed-after-rewrite",
        "killed-before-rewrite",
    ],
)
def test_the_orphan_is_deleted_or_rewritten_by_the_settlement(
    buckets: None, tmp_path: Path, overlap: str, step: Step | None
) -> None:
    """Issue 13's orphan: A archived (PUT done), the process died before its commit, and the
    overlapping B was archived with every event before A was settled. A then keeps nothing: its
    central object is deleted (or, when half of it is new, rewritten with only that half), also
    when the settlement itself is killed half-way and done again."""
    cfg = settings(tmp_path)
    b = [*X[0:6], *events("b", 3, minute=30)]
    put(ACCT_SRC, b, "20240501T1020Z", "BBBB")
    cycle(cfg, ACCT_SRC)
    a = X[0:6] if overlap == "all" else X[0:8]
    ckey = plant_orphan(cfg, a)
    ids = [e["eventID"] for e in archived()]
    assert len(ids) != len(set(ids))  # the orphan holds duplicates now

    if step is not None:
        crash(cfg, step)
    report = cycle(cfg)
    assert report.errors == 0
    planted = unique(a, b)
    assert_exactly_once(planted)
    bodies = central_bodies()
    if overlap == "all":
        assert ckey not in bodies, "A contributes nothing: its central object must be gone"
    else:
        assert sorted(r["eventID"] for r in decode(bodies[ckey])) == ["x-6", "x-7"]
    cycle(cfg)
    assert_exactly_once(planted)


def test_sigkill_between_put_and_commit_then_the_overlapping_object(
    buckets: None, tmp_path: Path
) -> None:
    """A's PUT is done and the process is killed before its commit; B (a superset of A) is the
    only copy left when it restarts. A is settled from its intent first; B adds only its own."""
    cfg = settings(tmp_path)
    a = X[0:6]
    b = [*X[0:6], *events("b", 3, minute=30)]
    akey = put(ORG_SRC, a, "20240501T1010Z", "AAAA")
    crash(cfg, Step(central.Archive, "write", nth=2, after=True), ORG_SRC)
    client("s3").delete_object(Bucket="org-trail", Key=akey)  # expired from its bucket
    put(ACCT_SRC, b, "20240501T1020Z", "BBBB")
    report = cycle(cfg)
    assert report.intents_settled == 1
    assert_exactly_once(unique(a, b))


# ---------------------------------------------------------------- retention


OLD_DAY = "2024-04-01"
OLD_CLOCK = datetime(2024, 4, 1, 12, tzinfo=UTC).timestamp()
EXPIRED_CLOCK = datetime(2024, 3, 1, 12, tzinfo=UTC).timestamp()


RETENTION_STEPS = {
    "after-s3-deletes": Step(Retention, "_delete_expired", after=True),  # state untouched
    "after-key-prune": Step(DedupeWindow, "prune", after=True),  # keys forgotten
    "before-coverage-prune": Step(ArchiveKnown, "prune_coverage", after=False),
    "after-window-prune": Step(State, "prune_window", after=True),
}


@pytest.mark.parametrize(
    ("step", "ingest_first"),
    [
        *(pytest.param(s, True, id=f"{s}-ingest-first") for s in RETENTION_STEPS),
        *(
            pytest.param(s, False, id=f"{s}-retention-first")
            for s in ("after-s3-deletes", "after-key-prune")
        ),
    ],
)
def test_sigkill_during_retention_then_old_events_arrive_again(
    buckets: None, tmp_path: Path, step: str, ingest_first: bool
) -> None:
    """Retention expires a month-old day from the archive and prunes a week-old window; it is
    killed inside. Then the account trail's copies of events older than the window arrive (a
    bucket that was AccessDenied is fixed), before or after a retention that completes."""
    cfg = settings(
        tmp_path,
        retention={"archive_days": 45, "closed_prefix_days": None},
        dedupe={"window_days": 7},
    )
    expired = events("exp", 3, day="2024-03-01")
    put(ORG_SRC, expired, "20240301T1010Z", "Exp1")
    cycle(cfg, ORG_SRC, clock=EXPIRED_CLOCK)
    old = events("old", 6, day=OLD_DAY)
    put(ORG_SRC, old, "20240401T1010Z", "Old1")
    cycle(cfg, ORG_SRC, clock=OLD_CLOCK)

    died = run_child(lambda: retention(cfg, NOW), RETENTION_STEPS[step])
    assert died.killed
    again = [*old[2:], *events("new", 2, day=OLD_DAY, minute=30)]
    put(ACCT_SRC, again, "20240401T1035Z", "Acc1")
    if not ingest_first:
        retention(cfg, NOW)
    cycle(cfg)
    retention(cfg, NOW)
    cycle(cfg)

    keys = central_bodies()
    assert not any("/2024/03/01/" in k for k in keys), "the expired day is gone"
    assert_exactly_once(unique(old, again))


def test_events_older_than_the_window_arriving_after_a_crash(buckets: None, tmp_path: Path) -> None:
    """The window is pruned (State.prune_window); a cycle is killed after the PUT of an
    object whose events are partly older than the window and partly new; a restart with the
    state deleted; the old events come a third time. Each event once."""
    cfg = settings(tmp_path)
    old = events("old", 6, day=OLD_DAY)
    put(ORG_SRC, old, "20240401T1010Z", "Old1")
    cycle(cfg, ORG_SRC, clock=OLD_CLOCK)
    state = State(cfg.state.path)
    try:
        assert state.prune_window(NOW - 7 * 86400, cfg.dedupe.readback_lag_days) == 6
    finally:
        state.close()

    mixed = [*old[:4], *events("mix", 2, day=OLD_DAY, minute=40)]
    put(ACCT_SRC, mixed, "20240401T1045Z", "Acc1")
    crash(cfg, Step(central.Archive, "write", nth=2, after=True))
    cycle(cfg)
    assert_exactly_once(unique(old, mixed))
    lose_state(cfg)
    third = [*old[3:], *mixed[4:]]
    put(ACCT_SRC, third, "20240401T1150Z", "Acc2")
    cycle(cfg)
    assert_exactly_once(unique(old, mixed))


# ---------------------------------------------------------------- LookupEvents windows


class History:
    """CloudTrail's event history for LookupEvents (moto has none): every event whose time is
    in [StartTime, EndTime), one page. Used through the ``cloudtrail_client`` hook."""

    def __init__(self, recs: list[Rec]) -> None:
        self.recs = recs
        self.t = NOW

    def now(self) -> float:
        return self.t

    async def factory(self, account: str, region: str) -> History:
        return self

    async def sleep(self, d: float) -> None:
        self.t += d

    async def lookup_events(self, **kw: Any) -> dict[str, Any]:
        start, end = kw["StartTime"], kw["EndTime"]
        hits = [
            item(r)
            for r in self.recs
            if start <= datetime.fromisoformat(r["eventTime"].replace("Z", "+00:00")) < end
        ]
        return {"Events": hits}


def lookup_settings(tmp_path: Path) -> Settings:
    return settings(
        tmp_path,
        integrity={
            "lookup": {"mode": "always", "window_secs": 1800, "overlap_secs": 300, "lag_secs": 0}
        },
    )


def lk(prefix: str, n: int, minute: int) -> list[Rec]:
    return events(prefix, n, hour=11, minute=minute)


@pytest.mark.parametrize(
    "step",
    [
        Step(central.Archive, "write", nth=2, after=True),  # window 1 PUT, no commit
        Step(State, "commit_object", nth=1, after=True),  # window 1 committed, cursor not moved
        Step(LookupCursors, "advance", nth=1, after=True),  # cursor past window 1
        Step(LookupWindows, "_archive_window", nth=2, after=False),  # before window 2
    ],
    ids=["after-window-put", "after-window-commit", "after-cursor", "before-second-window"],
)
@pytest.mark.parametrize("treatment", ["kept", "deleted"])
def test_sigkill_during_a_lookup_window(
    buckets: None, tmp_path: Path, step: Step, treatment: str
) -> None:
    """An account-region read from LookupEvents and from its trail: kill -9 inside the windows
    (10:55-11:30, 11:25-12:00, overlapping); the trail's object repeats events of both windows
    and arrives after the crash. Every event once."""
    cfg = lookup_settings(tmp_path)
    state = State(cfg.state.path)
    state.lookup.advance(A1, R, NOW - 3600)
    state.close()
    history = [*lk("w1", 4, 0), *lk("both", 2, 27), *lk("w2", 4, 40)]
    crash(cfg, step, ORG_SRC, cloudtrail=History(history))
    if treatment == "deleted":
        lose_state(cfg)
        state = State(cfg.state.path)
        state.lookup.advance(A1, R, NOW - 3600)  # a new state's first run reads the same hour
        state.close()
    trail = [*history[2:8], *lk("trail", 2, 50)]
    put(ORG_SRC, trail, "20240501T1155Z", "Trail1")
    cycle(cfg, ORG_SRC, cloudtrail=History(history))
    cycle(cfg, ORG_SRC, cloudtrail=History(history))
    assert_exactly_once(unique(history, trail))


# ---------------------------------------------------------------- the state machine


class Crash(BaseException):
    """An in-process crash injected at a step: not an Exception, so nothing in the cycle
    catches it; the State is closed (cycle's finally) without the commit."""


class Fault(Exception):
    """A failure injected at a step that the cycle survives (the object is retried)."""


class ArchiveMachine(RuleBasedStateMachine):
    """Source objects with overlapping events in both trails (and late keys), cycles, cycles
    that crash at a random step, a lost state and a state restored from an older copy. After
    every completed cycle: every event of the objects handled is archived once, none twice."""

    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(_MACHINE_DIR[0]) / f"m{len(_MACHINE_RUNS)}"
        _MACHINE_RUNS.append(1)
        self.tmp.mkdir(parents=True)
        self.cfg = settings(self.tmp)
        self.pool = events("h", 30)
        self.planted: dict[str, Rec] = {}
        self.backups: list[Path] = []
        self.serial = 0
        self.clean = False  # a cycle completed since the last source object

    @initialize()
    def reset(self) -> None:
        _reset_moto()
        make_buckets()

    @rule(
        trail=st.sampled_from(["org", "acct"]),
        picks=st.sets(st.integers(0, 29), min_size=1, max_size=8),
        late=st.booleans(),
    )
    def put_object(self, trail: str, picks: set[int], late: bool) -> None:
        self.serial += 1
        recs = [self.pool[i] for i in sorted(picks)]
        minute = 1 if late else 10 + self.serial  # a late key sorts before the handled ones
        ts = f"20240501T11{minute:02d}Z"
        put(ORG_SRC if trail == "org" else ACCT_SRC, recs, ts, f"K{self.serial}x{int(late)}")
        for r in recs:
            self.planted[r["eventID"]] = r
        self.clean = False

    @rule()
    def run_cycle(self) -> None:
        report = cycle(self.cfg)
        assert report.errors == 0
        self.clean = True

    @rule(
        where=st.sampled_from(
            [
                ("write", True),
                ("write", False),
                ("commit_object", False),
                ("commit_object", True),
            ]
        ),
        nth=st.integers(1, 4),
        dies=st.booleans(),
    )
    def crashing_cycle(self, where: tuple[str, bool], nth: int, dies: bool) -> None:
        name, after = where
        boom: type[BaseException] = Crash if dies else Fault
        owner: Any = central.Archive if name == "write" else State
        real = getattr(owner, name)
        calls = [0]

        def hit() -> bool:
            calls[0] += 1
            return calls[0] == nth

        if name == "write":

            async def awrap(self_: Any, *a: Any, **kw: Any) -> Any:
                fire = hit()
                if fire and not after:
                    raise boom
                result = await real(self_, *a, **kw)
                if fire:
                    raise boom
                return result

            setattr(owner, name, awrap)
        else:

            def wrap(self_: Any, *a: Any, **kw: Any) -> Any:
                fire = hit()
                if fire and not after:
                    raise boom
                result = real(self_, *a, **kw)
                if fire:
                    raise boom
                return result

            setattr(owner, name, wrap)
        try:
            cycle(self.cfg)
        except (Crash, Fault):
            pass  # State.close() ran in cycle's finally; nothing else is committed
        finally:
            setattr(owner, name, real)
        self.clean = False

    @rule()
    def take_backup(self) -> None:
        if Path(self.cfg.state.path).exists():
            to = self.tmp / f"backup{len(self.backups)}.db"
            backup_state(self.cfg, to)
            self.backups.append(to)

    @rule()
    def lose_the_state(self) -> None:
        lose_state(self.cfg)
        self.clean = False

    @rule(which=st.integers(0, 3))
    def restore_an_older_copy(self, which: int) -> None:
        if self.backups:
            restore_state(self.cfg, self.backups[which % len(self.backups)])
            self.clean = False

    @invariant()
    def never_a_duplicate(self) -> None:
        ids = [e["eventID"] for e in archived()]
        assert len(ids) == len(set(ids)), "an event archived twice"
        assert set(ids) <= set(self.planted)

    @invariant()
    def complete_after_a_clean_cycle(self) -> None:
        if self.clean:
            assert_exactly_once(list(self.planted.values()))


_MACHINE_DIR: list[str] = []
_MACHINE_RUNS: list[int] = []
_MOTO_URL: list[str] = []


def _reset_moto() -> None:
    import urllib.request

    req = urllib.request.Request(f"{_MOTO_URL[0]}/moto-api/reset", method="POST")
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert resp.status == 200


def test_state_machine_crashes_losses_and_restores(moto: str, tmp_path: Path) -> None:
    """Hypothesis interleaves source objects, cycles, crashing cycles, lost and restored
    states; the archive never holds a duplicate and, after a clean cycle, every event."""
    _MACHINE_DIR[:] = [str(tmp_path)]
    _MOTO_URL[:] = [moto]
    run_state_machine_as_test(
        ArchiveMachine,
        settings=hsettings(
            max_examples=int(os.environ.get("CTAGG_MACHINE_EXAMPLES", "10")),
            stateful_step_count=12,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        ),
    )
