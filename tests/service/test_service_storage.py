"""`ctagg run` whose state's disk fills up while it runs (a real, small tmpfs): the ingest job
fails fast with the state's path and SQLite's reason in its log, /readyz is 503 and says why,
the job is retried with backoff (service.retry_initial_secs doubling up to retry_max_secs),
nothing is committed by half (once space returns, the next cycle archives every event exactly
once, judged from the central bucket), and SIGTERM / SIGINT stop the process within
service.shutdown_timeout_secs while the disk is still full.

Mounting needs root with CAP_SYS_ADMIN (the build machine has both); where it is refused those
tests skip, and the in-process test at the end still covers failure, readiness and recovery
with SQLite's own limit (`PRAGMA max_page_count`: the real SQLITE_FULL)."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from awsfixtures import client, log_key, log_object, record

from aggregator.state import State
from tests.archivecheck import assert_exactly_once, central_bodies
from tests.service.test_service_daemon_subprocess import free_port, http_get

ROOT = Path(__file__).resolve().parents[2]
A1 = "111111111111"
LOG_ARCHIVE = "222222222222"
ORG = "o-abcdefghij"
SHUTDOWN_SECS = 4.0
FULL = "database or disk is full"


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    """A 24 MiB tmpfs of its own for the state (a filesystem that really fills up)."""
    where = tmp_path / "disk"
    where.mkdir()
    try:
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=24m,mode=0700", "tmpfs", str(where)],
            check=True,
            capture_output=True,
            timeout=30,
        )
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", b"") or str(exc)
        pytest.skip(f"cannot mount a tmpfs here (needs root and CAP_SYS_ADMIN): {detail!r}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False, timeout=30)


def fill(where: Path) -> Path:
    """Write a file until the filesystem has no byte left; returns it."""
    filler = where / "filler"
    chunk = b"\0" * 65536
    with filler.open("wb", buffering=0) as f:
        for size in (65536, 4096, 512, 1):
            while True:
                try:
                    f.write(chunk[:size])
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
    assert os.statvfs(where).f_bavail == 0
    return filler


class Trail:
    """The organization trail bucket in moto; plants source objects of today."""

    def __init__(self) -> None:
        client("s3").create_bucket(Bucket="central")
        self.s3 = client("s3", LOG_ARCHIVE)
        self.s3.create_bucket(Bucket="org-trail")
        self.today = time.strftime("%Y%m%d", time.gmtime())
        self.planted: list[dict[str, Any]] = []
        self.objects = 0

    def plant(self, objects: int, per: int) -> None:
        day = f"{self.today[:4]}-{self.today[4:6]}-{self.today[6:]}"
        base = f"AWSLogs/{ORG}/{A1}/CloudTrail/us-east-1/"
        for _ in range(objects):
            i = self.objects
            self.objects += 1
            recs = [
                record(f"ev-{i}-{j}", A1, time=f"{day}T00:{i % 60:02d}:00Z",
                       requestParameters={"pad": "x" * 200, "n": j})
                for j in range(per)
            ]  # fmt: skip
            ts = f"{self.today}T00{i % 60:02d}Z"
            key = log_key(base, A1, "us-east-1", ts, f"S{i:015d}")
            self.s3.put_object(Bucket="org-trail", Key=key, Body=log_object(recs))
            self.planted.extend(recs)


@pytest.fixture
def trail(moto: str) -> Trail:
    return Trail()


def config(tmp_path: Path, state: Path, port: int) -> Path:
    cfg = {
        "state": {"path": str(state)},
        "aws": {"region": "us-east-1", "max_attempts": 2},
        "credentials": {"role_arn_template": "arn:aws:iam::{account_id}:role/ctagg-member"},
        "discovery": {
            "accounts": {"source": "static", "static": [{"id": A1}]},
            "regions": {"include": ["us-east-1"]},
            "trails": {
                "discover": False,
                "static_sources": [
                    {"bucket": "org-trail", "organization_id": ORG,
                     "reader_account_id": LOG_ARCHIVE}
                ],
            },
        },
        "collect": {"max_concurrency": 2},
        "archive": {"bucket": "central"},
        "detect": {"enabled": False},
        "integrity": {"validate_digests": False},
        "service": {
            "health_host": "127.0.0.1",
            "health_port": port,
            "ingest_interval_secs": 5,
            "ready_max_cycle_age_secs": 600,  # readiness must not go red for age alone
            "retry_initial_secs": 0.5,
            "retry_max_secs": 2,
            "shutdown_timeout_secs": SHUTDOWN_SECS,
        },
    }  # fmt: skip
    path = tmp_path / "config.yaml"
    path.write_text(json.dumps(cfg))
    return path


class Daemon:
    """`ctagg run` as a real process; its JSON log lines go to a file on the real disk."""

    def __init__(self, cfg: Path, moto: str, log: Path, port: int) -> None:
        self.log = log
        self.base = f"http://127.0.0.1:{port}"
        env = {**os.environ, "AWS_ENDPOINT_URL": moto, "PYTHONPATH": str(ROOT)}
        self._out = log.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "aggregator", "--log-format", "json", "run", str(cfg)],
            env=env,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=ROOT,
        )

    def lines(self, event: str | None = None) -> list[dict[str, Any]]:
        out = []
        for line in self.log.read_text().splitlines():
            if line.startswith("{"):
                doc = json.loads(line)
                if event is None or doc.get("event") == event:
                    out.append(doc)
        return out

    def ingest(self, event: str) -> list[dict[str, Any]]:
        return [x for x in self.lines(event) if x.get("job") == "ingest"]

    def wait(self, what: str, pred: Callable[[], bool], secs: float = 60) -> None:
        deadline = time.monotonic() + secs
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            if pred():
                return
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}: {self.log.read_text()[-3000:]}")

    def ready(self) -> tuple[int, dict[str, Any]]:
        """/readyz (0 before the health server listens)."""
        try:
            status, body = http_get(self.base + "/readyz")
        except urllib.error.URLError:
            return 0, {}
        return status, json.loads(body)

    def stop(self, sig: int = signal.SIGTERM) -> float:
        """Send ``sig``; the seconds until the process exited."""
        t0 = time.monotonic()
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=SHUTDOWN_SECS + 30)
        finally:
            self._out.close()
        return time.monotonic() - t0

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)
        self._out.close()


def running_full(tmp_path: Path, disk: Path, trail: Trail, moto: str) -> tuple[Daemon, Path]:
    """A daemon that finished a cycle, then its state's disk filled up and a large batch of
    source objects arrived; returns it and the filler file (delete it to free the space)."""
    trail.plant(2, 5)
    port = free_port()
    d = Daemon(config(tmp_path, disk / "state.db", port), moto, tmp_path / "daemon.log", port)
    d.wait("the first cycle", lambda: d.ready()[0] == 200)
    assert len(d.ingest("scheduler.job_done")) == 1
    filler = fill(disk)
    # more than the WAL's slack can hold: the commits of this cycle need new space
    trail.plant(6, 1500)
    return d, filler


@pytest.mark.timeout(240)
def test_a_full_state_fails_the_cycle_fast_readyz_says_why_retries_with_backoff(
    tmp_path: Path, disk: Path, trail: Trail, moto: str
) -> None:
    """Each ingest run fails within seconds, logging ERROR with the state's path and SQLite's
    "database or disk is full"; retries come after 0.5, 1, 2 s; /readyz is 503 with a
    `state_writable` check saying why (the last good cycle is recent, so only that check is
    red); once the space is back the next run archives every planted event exactly once, each
    ledger row matching its central object; SIGTERM then stops the daemon in time."""
    d, filler = running_full(tmp_path, disk, trail, moto)
    try:
        state = str(disk / "state.db")
        d.wait("three failed ingest runs", lambda: len(d.ingest("scheduler.job_failed")) >= 3)
        failed = d.ingest("scheduler.job_failed")
        for f in failed:
            assert f["level"] == "error"
            assert state in f["reason"], f
            assert FULL in f["reason"], f
        # fast: no run hangs on the full disk
        assert all(f["duration_ms"] < 15_000 for f in failed), failed
        # backoff: retry_initial_secs doubling, capped at retry_max_secs
        assert [f["retry_in_secs"] for f in failed[:3]] == [0.5, 1.0, 2.0]
        status, body = d.ready()
        assert status == 503, body
        check = body["checks"]["state_writable"]
        assert check["ok"] is False
        assert state in check["reason"]
        assert FULL in check["reason"]
        # the space comes back: the next run archives every event exactly once
        filler.unlink()
        d.wait("a good cycle", lambda: d.ready()[0] == 200, secs=90)
        assert_exactly_once(trail.planted)
        assert d.ready()[1]["checks"]["state_writable"]["ok"] is True
        bodies = central_bodies()
        st = State(state, read_only=True)
        try:
            rows = st.ledger.rows(limit=10_000)
        finally:
            st.close()
        assert sorted(r["central_key"] for r in rows) == sorted(bodies)
        for r in rows:
            assert hashlib.sha256(bodies[r["central_key"]]).hexdigest() == r["sha256"]
        elapsed = d.stop()
        assert d.proc.returncode == 0, d.log.read_text()[-3000:]
        assert elapsed < SHUTDOWN_SECS
    finally:
        d.kill()


@pytest.mark.timeout(240)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_stops_the_daemon_within_the_shutdown_timeout_while_the_state_is_full(
    tmp_path: Path, disk: Path, trail: Trail, moto: str, sig: int
) -> None:
    """SIGTERM or SIGINT while ingest fails and retries on the full disk: exit 0 well within
    service.shutdown_timeout_secs; then, with the space back, `ctagg once` completes the
    archive with every planted event exactly once (nothing was committed by half)."""
    d, filler = running_full(tmp_path, disk, trail, moto)
    try:
        d.wait("a failed ingest run", lambda: bool(d.ingest("scheduler.job_failed")))
        # the next (retried) run in flight on the full disk, if it is quick enough to catch
        d.wait(
            "a retried ingest run",
            lambda: (
                len(d.ingest("scheduler.job_started")) > 1 + len(d.ingest("scheduler.job_done"))
            ),
        )
        elapsed = d.stop(sig)
        assert d.proc.returncode == 0, d.log.read_text()[-3000:]
        assert elapsed < SHUTDOWN_SECS, elapsed
        assert d.lines("scheduler.stopped")
    finally:
        d.kill()
    # nothing by half: with the space back, one `ctagg once` completes the archive exactly once
    filler.unlink()
    cfg = tmp_path / "config.yaml"
    env = {**os.environ, "AWS_ENDPOINT_URL": moto, "PYTHONPATH": str(ROOT)}
    once = subprocess.run(
        [sys.executable, "-m", "aggregator", "--log-format", "json", "once", str(cfg)],
        env=env, capture_output=True, text=True, cwd=ROOT, timeout=180, check=False,
    )  # fmt: skip
    assert once.returncode == 0, once.stderr[-3000:]
    assert_exactly_once(trail.planted)


async def test_in_process_sqlite_full_makes_readyz_red_until_a_cycle_commits(
    moto: str, tmp_path: Path
) -> None:
    """The same path where no filesystem can be mounted: SQLite's own limit
    (`PRAGMA max_page_count` on the daemon's connection) gives the real SQLITE_FULL. Ingest
    fails with the path and reason, is retried with backoff, `/readyz` is 503 through
    `state_writable`; with the limit lifted, the next run archives every event exactly once
    and readiness is green again."""
    import asyncio

    import aiohttp
    from awsfixtures import make_source

    from aggregator.aws.inventory import Account, Inventory
    from aggregator.service.daemon import Daemon as ServiceDaemon
    from tests.service.test_service_daemon import PipelineApp, settings

    s3 = client("s3")
    s3.create_bucket(Bucket="central")
    s3.create_bucket(Bucket="org-trail")
    src = make_source("org-trail", A1)
    today = time.strftime("%Y%m%d", time.gmtime())
    day = f"{today[:4]}-{today[4:6]}-{today[6:]}"
    planted: list[dict[str, Any]] = []

    def plant(first: int, objects: int, per: int) -> None:
        for i in range(first, first + objects):
            recs = [record(f"ev-{i}-{j}", A1, time=f"{day}T00:{i:02d}:00Z") for j in range(per)]
            key = log_key(src.prefix, A1, "us-east-1", f"{today}T00{i:02d}Z", f"P{i:015d}")
            s3.put_object(Bucket="org-trail", Key=key, Body=log_object(recs))
            planted.extend(recs)

    plant(0, 2, 5)
    inv = Inventory([Account(A1)], {A1: ["us-east-1"]}, [], [src], [])
    cfg = settings(
        tmp_path,
        service={"ingest_interval_secs": 3, "retry_initial_secs": 0.2, "retry_max_secs": 0.8,
                 "ready_max_cycle_age_secs": 600},
        detect={"enabled": False},
        integrity={"validate_digests": False},
    )  # fmt: skip
    app = PipelineApp(cfg, inv, discovery_delay=0)
    daemon = ServiceDaemon(app)
    run = asyncio.create_task(daemon.run(install_signals=False))

    async def readyz() -> tuple[int, dict[str, Any]]:
        url = f"http://127.0.0.1:{daemon.server.port}/readyz"
        async with aiohttp.ClientSession() as s, s.get(url) as r:
            return r.status, json.loads(await r.text())

    async def until(pred: Callable[[], Any], what: str, secs: float = 60) -> None:
        deadline = time.monotonic() + secs
        while not await pred():
            assert time.monotonic() < deadline, what
            await asyncio.sleep(0.1)

    async def ready() -> bool:
        return daemon.server.port != 0 and (await readyz())[0] == 200

    try:
        await until(ready, "the first cycle")
        conn = app.state.conn
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        assert conn.execute(f"PRAGMA max_page_count = {pages}").fetchone()[0] == pages
        plant(2, 4, 1500)
        stats = daemon.scheduler.stats["ingest"]

        async def failed_twice() -> bool:
            return stats.consecutive_failures >= 2

        await until(failed_twice, "two failed ingest runs")
        assert str(cfg.state.path) in (stats.last_error or "")
        assert FULL in (stats.last_error or "")
        status, body = await readyz()
        assert status == 503
        check = body["checks"]["state_writable"]
        assert check["ok"] is False
        assert FULL in check["reason"]
        conn.execute("PRAGMA max_page_count = 1073741823")
        await until(ready, "a good cycle after the limit was lifted")
        assert_exactly_once(planted)
    finally:
        daemon.scheduler.request_stop("test")
        assert await asyncio.wait_for(run, timeout=20) == 0
