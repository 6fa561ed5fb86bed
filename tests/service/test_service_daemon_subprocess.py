"""`ctagg run` as a real process against moto: SIGTERM in the middle of a cycle exits 0 within
the shutdown timeout, and no checkpoint was advanced past an object that was not finished (every
committed object's central copy exists with the committed hash; the next run completes the rest
exactly once). The same run's logs never contain the planted secrets."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from archivecheck import central_bodies
from awsfixtures import client, log_key, log_object, record

from aggregator.state import State

ROOT = Path(__file__).resolve().parents[2]
A1 = "111111111111"
LOG_ARCHIVE = "222222222222"
ORG = "o-abcdefghij"
N_OBJECTS = 40
PER_OBJECT = 5
EXTERNAL_ID = "planted-ExternalId-7f3a9c1e2b"
WEBHOOK_TOKEN = "planted-webhook-token-5d8e0a"

# Runs the real CLI; only S3 GetObject of source objects is slowed (0.25 s each) so that a
# cycle lasts long enough to be interrupted in the middle.
RUNNER = """
import asyncio, sys
import aggregator.ingest.cycle as ingest
_fetch = ingest.fetch
async def slow_fetch(*a, **kw):
    await asyncio.sleep(0.25)
    return await _fetch(*a, **kw)
ingest.fetch = slow_fetch
# note (for the test) that the planted ExternalId really is used on AssumeRole
import os, aggregator.aws.credentials as creds
_ext = creds.CredentialBroker.external_id
def external_id(self, account_id):
    value = _ext(self, account_id)
    if value:
        open(os.environ["CTAGG_TEST_MARKER"], "a").write("external_id_used\\n")
    return value
creds.CredentialBroker.external_id = external_id
from aggregator.cli import main
sys.exit(main(sys.argv[1:]))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def write_config(tmp_path: Path, shutdown_secs: float, port: int = 0) -> Path:
    cfg = {
        "state": {"path": str(tmp_path / "state.db")},
        "aws": {"region": "us-east-1", "max_attempts": 2},
        "credentials": {
            "role_arn_template": "arn:aws:iam::{account_id}:role/ctagg-member",
            "external_id": "${CTAGG_EXTERNAL_ID}",
        },
        "discovery": {
            "accounts": {"source": "static", "static": [{"id": A1}]},
            "regions": {"include": ["us-east-1"]},
            "trails": {
                "discover": False,
                "static_sources": [
                    {
                        "bucket": "org-trail",
                        "organization_id": ORG,
                        "reader_account_id": LOG_ARCHIVE,
                    }
                ],
            },
        },
        "collect": {"max_concurrency": 2},
        "archive": {"bucket": "central"},
        "detect": {"webhook_url": "${CTAGG_WEBHOOK_URL}"},
        "service": {
            "health_host": "127.0.0.1",
            "health_port": port,
            "ingest_interval_secs": 3600,
            "shutdown_timeout_secs": shutdown_secs,
        },
    }
    path = tmp_path / "config.yaml"
    path.write_text(json.dumps(cfg))
    return path


@pytest.fixture
def trail(moto: str) -> list[str]:
    client("s3").create_bucket(Bucket="central")
    s3 = client("s3", LOG_ARCHIVE)
    s3.create_bucket(Bucket="org-trail")
    today = time.strftime("%Y%m%d", time.gmtime())
    day = f"{today[:4]}-{today[4:6]}-{today[6:]}"
    base = f"AWSLogs/{ORG}/{A1}/CloudTrail/us-east-1/"
    keys = []
    for i in range(N_OBJECTS):
        key = log_key(base, A1, "us-east-1", f"{today}T{i // 60:02d}{i % 60:02d}Z", f"K{i:015d}")
        recs = [record(f"ev-{i}-{j}", A1, time=f"{day}T00:00:00Z") for j in range(PER_OBJECT)]
        s3.put_object(Bucket="org-trail", Key=key, Body=log_object(recs))
        keys.append(key)
    return keys


def env(moto: str, marker: Path) -> dict[str, str]:
    e = dict(os.environ)
    e.update(
        CTAGG_TEST_MARKER=str(marker),
        AWS_ENDPOINT_URL=moto,
        CTAGG_EXTERNAL_ID=EXTERNAL_ID,
        CTAGG_WEBHOOK_URL=f"http://127.0.0.1:9/hook?token={WEBHOOK_TOKEN}",
        PYTHONPATH=str(ROOT),
    )
    return e


def start(config: Path, moto: str, *args: str) -> subprocess.Popen[str]:
    marker = config.parent / "marker"
    return subprocess.Popen(
        [
            sys.executable,
            "-c",
            RUNNER,
            "--log-level",
            "DEBUG",
            "--log-format",
            "json",
            *args,
            str(config),
        ],
        env=env(moto, marker),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )


def central_objects() -> dict[str, bytes]:
    return central_bodies()


def wait_for_progress(state_path: Path, proc: subprocess.Popen[str], n: int) -> int:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        if state_path.exists():
            # plain sqlite, read only: the test must not race the daemon's own migrations
            conn = sqlite3.connect(f"file:{state_path}?mode=ro", uri=True, timeout=10)
            try:
                done = conn.execute("SELECT count(*) FROM ledger").fetchone()[0]
            except sqlite3.OperationalError:  # tables not created yet
                done = 0
            finally:
                conn.close()
            if done >= n:
                return done
        time.sleep(0.1)
    raise AssertionError("no progress")


def assert_no_secret(text: str) -> None:
    for secret in (EXTERNAL_ID, WEBHOOK_TOKEN):
        assert secret not in text, f"secret {secret[:12]}... leaked into logs"


def test_sigterm_mid_cycle_exits_cleanly_without_advancing_unfinished_objects(
    tmp_path: Path, trail: list[str], moto: str
) -> None:
    """SIGTERM while objects are in flight: exit code 0 within the timeout; each checkpoint
    (ledger row) matches a complete central object; some objects were left for later; a second
    run archives the rest, every event exactly once; logs never show the planted secrets."""
    shutdown = 3.0
    port = free_port()
    config = write_config(tmp_path, shutdown, port)
    proc = start(config, moto, "run")
    done_before = wait_for_progress(tmp_path / "state.db", proc, 3)

    # mid-cycle: alive, discovery done, not ready (no finished cycle), counters moving
    base = f"http://127.0.0.1:{port}"
    assert http_get(base + "/livez")[0] == 200
    status, body = http_get(base + "/readyz")
    assert status == 503
    checks = json.loads(body)["checks"]
    assert checks["discovery_done"]["ok"] is True
    assert checks["ingest_recent"] == {"ok": False, "reason": "no cycle yet"}
    status, text = http_get(base + "/metrics")
    assert status == 200
    label = f'ctagg_objects_total{{account_id="{A1}",region="us-east-1"}} '
    line = next(x for x in text.splitlines() if x.startswith(label))
    assert float(line.split()[-1]) >= done_before
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=shutdown + 20)
    elapsed = time.monotonic() - t0
    assert proc.returncode == 0, err[-3000:]
    assert elapsed < shutdown + 10
    lines = [json.loads(x) for x in err.splitlines() if x.startswith("{")]
    events = [x.get("event") for x in lines]
    assert "scheduler.stop_requested" in events
    assert "scheduler.stopped" in events

    st = State(tmp_path / "state.db")
    try:
        ledger = st.ledger.rows(limit=10_000)
        committed = {r[0] for r in st.conn.execute("SELECT key FROM objects")}
    finally:
        st.close()
    central = central_objects()
    assert done_before <= len(ledger) < N_OBJECTS  # stopped mid-cycle
    for row in ledger:
        body = central[row["central_key"]]
        assert hashlib.sha256(body).hexdigest() == row["sha256"]
        assert len(json.loads(gzip.decompress(body))["Records"]) == row["events"]
    assert committed == {r["source_key"] for r in ledger}

    # the next run picks up exactly what was left
    second = start(config, moto, "once")
    out2, err2 = second.communicate(timeout=120)
    assert second.returncode == 0, err2[-3000:]
    events_seen: list[str] = []
    for body in central_objects().values():
        events_seen += [r["eventID"] for r in json.loads(gzip.decompress(body))["Records"]]
    assert sorted(events_seen) == sorted(
        f"ev-{i}-{j}" for i in range(N_OBJECTS) for j in range(PER_OBJECT)
    )
    assert_no_secret(out + err + out2 + err2)
    # the secret was in play: the broker handed the ExternalId to AssumeRole
    assert "external_id_used" in (tmp_path / "marker").read_text()
    assert any(x.get("event") == "daemon.started" for x in lines)
