"""Resizing with shards as real processes against moto: ``ctagg once --shard I/N`` for every I,
run concurrently, through the layouts 2 -> 3 -> 1, with new objects before every layout
(including account-trail copies of events of the phase before: copies that cross a resize).
The new layout's processes race to resize the installation; one shard of 3 is SIGKILLed at a
random point and run again. Judged by listing and decoding the central bucket: every planted
event exactly once; and each layout's shards fetched only the objects of its phase."""

from __future__ import annotations

import json
import random
import signal
import time
from pathlib import Path
from typing import Any

from archivecheck import assert_exactly_once, central_bodies
from awsfixtures import client, log_key, log_object, record

from tests.service.test_service_shards import (
    LOG_ARCHIVE,
    ORG,
    PAIRS,
    ctagg,
    run_shards,
    write_config,
)

Rec = dict[str, Any]


class Phases:
    """Per phase and (account, region): an organization-trail object of three new events, and
    an account-trail object with one new event and a copy of one of the phase before."""

    def __init__(self) -> None:
        self.events: dict[str, Rec] = {}
        self.last: dict[tuple[str, str], Rec] = {}
        self.phase = 0
        today = time.strftime("%Y%m%d", time.gmtime())
        self.today, self.day = today, f"{today[:4]}-{today[4:6]}-{today[6:]}"

    def plant(self) -> int:
        p, self.phase = self.phase, self.phase + 1
        s3 = client("s3", LOG_ARCHIVE)
        if p == 0:
            client("s3").create_bucket(Bucket="central")
            for b in ("org-trail", "acct-trails"):
                s3.create_bucket(Bucket=b)
        n = 0
        for k, (account, region) in enumerate(PAIRS):
            recs = [
                record(f"p{p}-{account}-{region}-{j}", account, region, f"{self.day}T0{p}:0{j}:00Z")
                for j in range(3)
            ]
            base = f"AWSLogs/{ORG}/{account}/CloudTrail/{region}/"
            key = log_key(base, account, region, f"{self.today}T0{p}00Z", f"O{p}x{k:03d}")
            s3.put_object(Bucket="org-trail", Key=key, Body=log_object(recs))
            own = record(
                f"p{p}-{account}-{region}-acct", account, region, f"{self.day}T0{p}:05:00Z"
            )
            crossing = [self.last[(account, region)]] if (account, region) in self.last else []
            base = f"AWSLogs/{account}/CloudTrail/{region}/"
            key = log_key(base, account, region, f"{self.today}T0{p}05Z", f"A{p}x{k:03d}")
            s3.put_object(Bucket="acct-trails", Key=key, Body=log_object([own, *crossing]))
            n += 2
            for r in (*recs, own):
                self.events[r["eventID"]] = r
            self.last[(account, region)] = recs[0]
        return n


def reports(results: list[tuple[int, str, str]]) -> list[dict[str, Any]]:
    docs = []
    for code, out, err in results:
        assert code == 0, err[-3000:]
        docs.append(json.loads(out.strip().splitlines()[-1]))
    return docs


def test_resize_2_3_1_with_concurrent_shard_processes_and_a_kill(tmp_path: Path, moto: str) -> None:
    config = write_config(tmp_path)
    phases = Phases()

    new = phases.plant()
    first = reports(run_shards(config, moto, 2))
    assert sum(r["objects"] for r in first) == new

    # 2 -> 3: three processes race to resize; shard 1 is killed at a random point, then all
    # three run again (the killed one resumes, the others find nothing new)
    new = phases.plant()
    procs = [ctagg(moto, "once", "--json", str(config), "--shard", f"{i}/3") for i in range(3)]
    time.sleep(random.Random(14).uniform(0.5, 2.0))
    procs[1].send_signal(signal.SIGKILL)
    codes = [p.wait(timeout=120) for p in procs]
    outs = [p.communicate() for p in procs]
    assert codes[1] == -signal.SIGKILL  # it was still at work
    for i in (0, 2):
        assert codes[i] == 0, outs[i][1][-3000:]
    again = reports(run_shards(config, moto, 3))
    fetched = sum(json.loads(outs[i][0].strip().splitlines()[-1])["objects"] for i in (0, 2))
    # the killed process may have archived some of its objects before it died: together
    # they fetched each of the phase's objects at least once, and the kill cost at most the
    # objects of shard 1's pairs
    assert fetched + sum(r["objects"] for r in again) >= new
    assert all(r["errors"] == 0 for r in again)

    # 3 -> 1: one process takes over from the three snapshots
    new = phases.plant()
    (one,) = reports(run_shards(config, moto, 1))
    assert one["objects"] == new  # only the new phase's objects: the checkpoints moved
    assert one["readback_objects"] == 0  # every snapshot current: nothing read back

    assert_exactly_once(list(phases.events.values()))
    layout = json.loads(
        central_bodies(prefix="_ctagg/installation.json")["_ctagg/installation.json"]
    )
    assert (layout["shards"], layout["epoch"], layout["previous"]) == (
        1,
        3,
        {"shards": 3, "epoch": 2},
    )
    markers = {k: json.loads(v) for k, v in central_bodies(prefix="_ctagg/writer").items()}
    retired = {k for k, doc in markers.items() if doc.get("retired")}
    assert retired == {
        *(f"_ctagg/writer.shard-{i}-of-2.json" for i in range(2)),
        *(f"_ctagg/writer.shard-{i}-of-3.json" for i in range(3)),
    }
    assert not markers["_ctagg/writer.json"].get("retired")
