"""Static shards as real processes against moto: for N in {1, 2, 3}, ``ctagg once --shard
I/N`` for every I, run concurrently over an organization trail and account trails that
overlap, archives every planted event exactly once; each source object is handled by exactly
one shard (the shard state files' ``objects`` tables are disjoint and cover every object);
each shard has its own writer marker; the slot and shard counts are recorded once, and a
changed slot count is refused before anything is written (a changed shard count resizes:
tests/service/test_service_resize.py). ``ctagg run --shards N`` starts N
shard processes and passes SIGTERM on to them."""

from __future__ import annotations

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
from typing import Any

import pytest
from archivecheck import assert_exactly_once, central_bodies
from awsfixtures import client, log_key, log_object, record

from aggregator.aws.slots import owned_slots, owns
from aggregator.cli import main
from aggregator.config import ShardSettings

ROOT = Path(__file__).resolve().parents[2]
LOG_ARCHIVE = "222222222222"
ORG = "o-abcdefghij"
ACCOUNTS = ["111111111111", "333333333333", "444444444444", "555555555555"]
REGIONS = ["us-east-1", "eu-west-1", "ap-south-1"]
PAIRS = [(a, r) for a in ACCOUNTS for r in REGIONS]


def write_config(tmp_path: Path, health_port: int = 0) -> Path:
    cfg: dict[str, Any] = {
        "state": {"path": str(tmp_path / "state.db")},
        "aws": {"region": "us-east-1", "max_attempts": 2},
        "credentials": {"role_arn_template": "arn:aws:iam::{account_id}:role/ctagg-member"},
        "discovery": {
            "accounts": {"source": "static", "static": [{"id": a} for a in ACCOUNTS]},
            "regions": {"include": REGIONS},
            "trails": {
                "discover": False,
                "static_sources": [
                    {
                        "bucket": "org-trail",
                        "organization_id": ORG,
                        "reader_account_id": LOG_ARCHIVE,
                    },
                    {"bucket": "acct-trails", "reader_account_id": LOG_ARCHIVE},
                ],
            },
        },
        "integrity": {"lookup": {"mode": "off"}},
        "collect": {"max_concurrency": 2},
        "archive": {"bucket": "central"},
        "service": {
            "health_host": "127.0.0.1",
            "health_port": health_port,
            "ingest_interval_secs": 3600,
        },
    }
    path = tmp_path / "config.yaml"
    path.write_text(json.dumps(cfg))
    return path


@pytest.fixture
def planted(moto: str) -> dict[str, Any]:
    """Per (account, region): two organization-trail objects of 3 events, and an
    account-trail object repeating one of them (an overlapping trail) with one event of its
    own. Returns the planted events and every source object (bucket, key)."""
    client("s3").create_bucket(Bucket="central")
    s3 = client("s3", LOG_ARCHIVE)
    for b in ("org-trail", "acct-trails"):
        s3.create_bucket(Bucket=b)
    today = time.strftime("%Y%m%d", time.gmtime())
    day = f"{today[:4]}-{today[4:6]}-{today[6:]}"
    events: list[dict[str, Any]] = []
    objects: set[tuple[str, str]] = set()
    for n, (account, region) in enumerate(PAIRS):
        org_base = f"AWSLogs/{ORG}/{account}/CloudTrail/{region}/"
        recs = []
        for i in range(2):
            batch = [
                record(f"ev-{account}-{region}-{i}-{j}", account, region, f"{day}T00:0{i}:0{j}Z")
                for j in range(3)
            ]
            key = log_key(org_base, account, region, f"{today}T000{i}Z", f"O{n:03d}{i:012d}")
            s3.put_object(Bucket="org-trail", Key=key, Body=log_object(batch))
            objects.add(("org-trail", key))
            recs += batch
        own = record(f"ev-{account}-{region}-acct", account, region, f"{day}T00:05:00Z")
        acct_base = f"AWSLogs/{account}/CloudTrail/{region}/"
        key = log_key(acct_base, account, region, f"{today}T0005Z", f"A{n:03d}000000000000")
        s3.put_object(Bucket="acct-trails", Key=key, Body=log_object([recs[1], own]))
        objects.add(("acct-trails", key))
        events += [*recs, own]
    return {"events": events, "objects": objects}


def free_port_pair() -> int:
    """A port P with P and P + 1 free on 127.0.0.1 (for two shards' health ports)."""
    for _ in range(50):
        with socket.socket() as a:
            a.bind(("127.0.0.1", 0))
            port = int(a.getsockname()[1])
            with socket.socket() as b:
                try:
                    b.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
                return port
    raise AssertionError("no two adjacent free ports")


def env(moto: str) -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if k not in ("CTAGG_SHARD_INDEX", "POD_NAME")}
    e.update(AWS_ENDPOINT_URL=moto, PYTHONPATH=str(ROOT), HOSTNAME="test-host")
    return e


def ctagg(moto: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "aggregator", *args],
        env=env(moto),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )


def handled(state: Path) -> set[tuple[str, str]]:
    conn = sqlite3.connect(f"file:{state}?mode=ro", uri=True)
    try:
        return {(b, k) for b, k in conn.execute("SELECT bucket, key FROM objects")}
    finally:
        conn.close()


def readyz(port: int, secs: float = 30) -> dict[str, Any]:
    """/readyz of the daemon on ``port`` once it says 200 (its last answer after ``secs``)."""
    deadline = time.monotonic() + secs
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as r:
                doc: dict[str, Any] = json.loads(r.read())
                return doc
        except urllib.error.HTTPError as exc:
            doc = json.loads(exc.read())
            if time.monotonic() > deadline:
                return doc
        time.sleep(0.2)


def run_shards(config: Path, moto: str, n: int) -> list[tuple[int, str, str]]:
    procs = [ctagg(moto, "once", "--json", str(config), "--shard", f"{i}/{n}") for i in range(n)]
    return [(p.wait(timeout=120), *p.communicate()) for p in procs]


@pytest.mark.parametrize("n", [1, 2, 3])
def test_shards_together_archive_every_event_exactly_once(
    tmp_path: Path,
    moto: str,
    planted: dict[str, Any],
    n: int,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """N concurrent ``ctagg once --shard I/N``: exactly once in the central bucket, each
    source object handled by exactly one shard, one writer marker per shard."""
    # every shard has work (so the test shows a split, not one shard doing it all)
    for i in range(n):
        assert any(owns(ShardSettings(index=i, count=n), a, r) for a, r in PAIRS)
    config = write_config(tmp_path)

    results = run_shards(config, moto, n)

    for code, out, err in results:
        assert code == 0, err[-3000:]
        assert json.loads(out.strip().splitlines()[-1])["errors"] == 0
    assert_exactly_once(planted["events"])
    states = (
        [tmp_path / "state.db"]
        if n == 1
        else [tmp_path / f"state.shard-{i}-of-{n}.db" for i in range(n)]
    )
    per_shard = [handled(s) for s in states]
    assert sum(len(h) for h in per_shard) == len(planted["objects"])  # disjoint ...
    assert set().union(*per_shard) == planted["objects"]  # ... and covering
    for i, h in enumerate(per_shard):
        shard = ShardSettings(index=i, count=n)
        for _bucket, key in h:  # the pair is in the object's name: <account>_CloudTrail_<region>
            name = key.rsplit("/", 1)[-1]
            account, _, region = name.split("_")[:3]
            assert owns(shard, account, region), (i, key)
    for i, h in enumerate(per_shard):  # ctagg status --shard I/N reads that shard's state
        assert main(["status", str(config), "--json", "--shard", f"{i}/{n}"]) == 0
        lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        rows = [doc for doc in lines if "account_id" in doc]
        assert sum(r["objects"] for r in rows) == len(h)
        if n > 1:
            assert lines[0]["shard"]["index"] == i
            assert lines[0]["shard"]["count"] == n
            assert lines[0]["shard"]["slots_owned"] == owned_slots(ShardSettings(index=i, count=n))
            # the layout and every shard's slots, writer and snapshot, from the central bucket
            (layout,) = [d["layout"] for d in lines if "layout" in d]
            assert (layout["slots"], layout["shards"], layout["epoch"]) == (256, n, 1)
            assert layout["agrees"] is True
            owners = [d["shard_owner"] for d in lines if "shard_owner" in d]
            assert [o["index"] for o in owners] == list(range(n))
            assert [o["slots"] for o in owners] == [
                len(owned_slots(ShardSettings(index=j, count=n))) for j in range(n)
            ]
            bodies = central_bodies(prefix="_ctagg/")
            for o in owners:
                marker = json.loads(bodies[o["marker"]])
                w = o["writer"]
                assert (w["host"], w["pid"], w["generation"], w["written_at"]) == (
                    marker["host"],
                    marker["pid"],
                    marker["generation"],
                    marker["written_at"],
                )
                assert 0 <= w["age_secs"] < 300
                # `ctagg once` uploads its snapshot after the cycle: current with the marker
                assert o["snapshot"]["generation"] == marker["generation"]
            assert len({o["writer"]["pid"] for o in owners}) == n  # one process per shard
        else:
            assert "shard" not in lines[0]
            assert not [d for d in lines if "shard_owner" in d or "layout" in d]
    markers = set(central_bodies(prefix="_ctagg/"))
    if n == 1:
        assert markers == {"_ctagg/writer.json"}
    else:
        assert markers == {
            "_ctagg/installation.json",
            *(f"_ctagg/writer.shard-{i}-of-{n}.json" for i in range(n)),
            *(f"_ctagg/snapshots/shard-{i}-of-{n}.db.gz" for i in range(n)),
        }
        record_ = json.loads(
            central_bodies(prefix="_ctagg/installation.json")["_ctagg/installation.json"]
        )
        assert (record_["slots"], record_["shards"]) == (256, n)


def test_a_changed_slot_count_is_refused_before_anything_is_written(
    tmp_path: Path, moto: str, planted: dict[str, Any]
) -> None:
    """Two shards record the installation; a later ``--shard 0/2`` with another slot count
    exits 2 naming both counts, and archives nothing more (a changed shard count resizes:
    tests/ingest/test_ingest_resize.py)."""
    config = write_config(tmp_path)
    assert all(code == 0 for code, _, _ in run_shards(config, moto, 2))
    before = central_bodies()
    doc = json.loads(config.read_text())
    doc["shard"] = {"slots": 128}
    other = tmp_path / "other.yaml"
    other.write_text(json.dumps(doc))

    proc = ctagg(moto, "once", str(other), "--shard", "0/2")
    code = proc.wait(timeout=120)
    _, err = proc.communicate()
    assert code == 2, err[-2000:]
    assert "the slot count of an installation never changes" in err, err[-2000:]
    assert central_bodies() == before


def test_run_shards_starts_n_shard_processes_and_forwards_sigterm(
    tmp_path: Path, moto: str, planted: dict[str, Any]
) -> None:
    """``ctagg run CONFIG --shards 2``: two daemons (shard 0/2 and 1/2, each its own state)
    archive everything exactly once; SIGTERM to the parent stops both, and it exits 0."""
    base = free_port_pair()
    config = write_config(tmp_path, health_port=base)
    proc = ctagg(moto, "run", str(config), "--shards", "2")
    states = [tmp_path / f"state.shard-{i}-of-2.db" for i in range(2)]
    deadline = time.monotonic() + 90
    done: set[tuple[str, str]] = set()
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        try:
            done = set().union(*(handled(s) for s in states))
        except sqlite3.OperationalError:  # not created yet
            done = set()
        if done == planted["objects"]:
            break
        time.sleep(0.3)
    assert done == planted["objects"]
    for i in range(2):  # shard I serves /metrics on health_port + I
        with urllib.request.urlopen(f"http://127.0.0.1:{base + i}/metrics", timeout=10) as r:
            body = r.read().decode()
        assert f'ctagg_shard_info{{count="2",shard="{i}"}} 1.0' in body
        slots = len(owned_slots(ShardSettings(index=i, count=2)))
        assert f'ctagg_shard_slots{{shard="{i}"}} {slots}.0' in body
        # ready: the layout fits and it wrote its writer marker
        ready = readyz(base + i)
        assert ready["checks"]["shard_holds_slots"]["ok"] is True, ready
        assert ready["checks"]["shard_holds_slots"]["reason"].startswith(
            f"shard-{i}-of-2 holds {slots} of 256 slots (writer generation "
        )

    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=60)
    _, err = proc.communicate()

    assert code == 0, err[-3000:]
    assert_exactly_once(planted["events"])
    assert handled(states[0]).isdisjoint(handled(states[1]))


def test_status_names_every_shards_writer_and_keeps_its_rows_without_the_bucket(
    tmp_path: Path, moto: str, planted: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    """Only shard 0 of 2 ran: ``ctagg status --shard 0/2`` lists both shards with their slot
    counts, shard 0 written by the process that ran (host, pid, generation) with a current
    snapshot, shard 1 never written; ``--local`` reads nothing from the bucket; with the
    central bucket unreachable the state's rows are still printed, the writers are said to be
    unknown, and it exits 3."""
    config = write_config(tmp_path)
    proc = ctagg(moto, "once", "--json", str(config), "--shard", "0/2")
    assert proc.wait(timeout=120) == 0, proc.communicate()
    marker = json.loads(central_bodies(prefix="_ctagg/")["_ctagg/writer.shard-0-of-2.json"])
    slots = [len(owned_slots(ShardSettings(index=j, count=2))) for j in range(2)]

    assert main(["status", str(config), "--json", "--shard", "0/2"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    owners = [d["shard_owner"] for d in lines if "shard_owner" in d]
    assert [(o["index"], o["slots"]) for o in owners] == [(0, slots[0]), (1, slots[1])]
    assert (owners[0]["writer"]["pid"], owners[0]["writer"]["generation"]) == (
        marker["pid"],
        marker["generation"],
    )
    assert (owners[1]["writer"], owners[1]["snapshot"]) == (None, None)

    assert main(["status", str(config), "--shard", "0/2"]) == 0
    text = capsys.readouterr().out
    assert "layout: 2 shard(s) of 256 slots, epoch 1: fits this config" in text
    assert "shards (* this one): slots, writers, snapshots" in text
    table = [[c.strip() for c in line.strip("│ ").split("│")] for line in text.splitlines()]
    rows = {r[0]: r[1:] for r in table if len(r) == 6}
    # `ctagg once` ends by saying it stopped (a resize need not wait for it)
    assert marker["stopped_at"]
    assert rows["0 *"][:3] == [str(slots[0]), f"{marker['host']} ({marker['pid']}) stopped", "1"]
    assert rows["0 *"][3].endswith("ago")
    assert rows["0 *"][4].endswith("ago, generation 1 (current)")
    assert rows["1"] == [str(slots[1]), "-", "-", "never", "none"]

    # the central bucket cannot be reached: the local rows are shown, the writers are not
    cfg = json.loads(config.read_text())
    cfg["aws"]["endpoint_url"] = "http://127.0.0.1:9"
    config.write_text(json.dumps(cfg))
    assert main(["status", str(config), "--json", "--shard", "0/2", "--local"]) == 0
    local = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert not [d for d in local if "shard_owner" in d or "shard_owners_error" in d]
    assert main(["status", str(config), "--json", "--shard", "0/2"]) == 3
    out, err = capsys.readouterr()
    lines = [json.loads(line) for line in out.splitlines()]
    rows_ = [d for d in lines if "account_id" in d]
    assert rows_
    assert sum(r["objects"] for r in rows_) == len(handled(tmp_path / "state.shard-0-of-2.db"))
    (failed,) = [d["shard_owners_error"] for d in lines if "shard_owners_error" in d]
    assert "http://127.0.0.1:9/central/_ctagg/installation.json" in failed
    assert err.startswith(f"ctagg: {failed}")
    assert not [d for d in lines if "shard_owner" in d]
