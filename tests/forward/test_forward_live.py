"""Opt-in: forwarding into a real OpenSearch and a real Splunk (``docker compose up -d``).

Skipped unless ``CTAGG_LIVE=1``. Endpoints: ``CTAGG_LIVE_OPENSEARCH_URL`` (default
http://127.0.0.1:9200), ``CTAGG_LIVE_HEC_URL`` (default https://127.0.0.1:8088) and
``CTAGG_LIVE_HEC_TOKEN`` (the compose file's default token).
"""

from __future__ import annotations

import contextlib
import json
import os
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from aggregator.config import ForwardSettings
from aggregator.forward.documents import default_normalizer
from aggregator.forward.forwarder import Forwarder
from aggregator.ingest.dedupe import record_key_text
from aggregator.state import CentralObject, ObjectOutcome, SourceRef, State
from tests.fakes.events import stratus_records

pytestmark = [
    pytest.mark.live,
    pytest.mark.skipif(os.environ.get("CTAGG_LIVE") != "1", reason="set CTAGG_LIVE=1"),
]
OS_URL = os.environ.get("CTAGG_LIVE_OPENSEARCH_URL", "http://127.0.0.1:9200")
HEC_URL = os.environ.get("CTAGG_LIVE_HEC_URL", "https://127.0.0.1:8088")
HEC_TOKEN = os.environ.get("CTAGG_LIVE_HEC_TOKEN", "5f0c1a2e-7d3b-4c59-9e2a-0b1c2d3e4f50")


class MemoryArchive:
    def __init__(self) -> None:
        self.objects: dict[str, list[dict[str, Any]]] = {}

    async def read_records(
        self, central_key: str, sha256: str | None = None
    ) -> list[dict[str, Any]]:
        return self.objects[central_key]


def _ledger(state: State, testdata: Path) -> tuple[MemoryArchive, set[str]]:
    archive = MemoryArchive()
    recs = stratus_records(testdata)
    for i in range(0, len(recs), 100):
        part = recs[i : i + 100]
        key = f"AWSLogs/live/{i}.json.gz"
        archive.objects[key] = part
        times = sorted(r["eventTime"] for r in part)
        state.commit_object(
            ObjectOutcome(
                source=SourceRef("s", "111111111111", "us-east-1", "b", "AWSLogs/"),
                key=f"src{i}", day_prefix="AWSLogs/d/", kind="log_file", etag=None, size=1,
                central=CentralObject(key, 1, "0" * 64, len(part), times[0], times[-1]),
            )
        )  # fmt: skip
    return archive, {record_key_text(r) for r in recs}


def _os(method: str, path: str) -> Any:
    req = urllib.request.Request(OS_URL + path, method=method)
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


async def test_live_opensearch_doc_count_equals_unique_events(
    tmp_path: Path, testdata: Path
) -> None:
    index = "ctagg-live-%Y.%m.%d"
    with contextlib.suppress(urllib.error.HTTPError):
        _os("DELETE", "/ctagg-live-*")
    state = State(tmp_path / "s.db")
    archive, unique = _ledger(state, testdata)
    conn = {"name": "os", "type": "opensearch", "hosts": [OS_URL], "index": index,
            "template_name": "ctagg-live", "retention_days": 30}  # fmt: skip
    for _ in range(2):  # the second run replays everything: still one doc per event
        fwd = Forwarder(
            ForwardSettings.model_validate({"connectors": [conn]}),
            state,
            archive,
            bucket="b",
            normalize=default_normalizer("b"),
        )
        await fwd.drain()
        assert fwd.store.dead_letters("os") == []
        state.conn.execute("DELETE FROM forward_cursors")
    _os("POST", "/ctagg-live-*/_refresh")
    assert _os("GET", "/ctagg-live-*/_count")["count"] == len(unique)
    assert _os("GET", "/_plugins/_ism/policies/ctagg-live-retention")["policy"]


async def test_live_splunk_hec_accepts_the_batch(tmp_path: Path, testdata: Path) -> None:
    state = State(tmp_path / "s.db")
    archive, unique = _ledger(state, testdata)
    conn = {"name": "hec", "type": "splunk_hec", "url": HEC_URL, "token": HEC_TOKEN,
            "verify_tls": False}  # fmt: skip
    fwd = Forwarder(
        ForwardSettings.model_validate({"connectors": [conn]}),
        state,
        archive,
        bucket="b",
        normalize=default_normalizer("b"),
    )
    await fwd.drain()
    assert fwd.store.counts("hec") == (sum(len(v) for v in archive.objects.values()), 0)
    assert unique
