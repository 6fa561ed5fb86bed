"""Detection follows the ledger (every archived event once) and alerts reach a connector."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from aggregator.config import parse_settings
from aggregator.detect.follow import ConnectorAlertSink, DetectionFollower
from aggregator.detect.service import DetectionService
from aggregator.envelopes import Parsed, iter_records
from aggregator.state import CentralObject, ObjectOutcome, SourceRef, State
from connectors import build
from tests.fakes.opensearch import FakeOpenSearch

STOP_LOGGING = "stratus-red-team/detonation-logs/aws.defense-evasion.cloudtrail-stop.json"


class MemoryArchive:
    def __init__(self) -> None:
        self.objects: dict[str, list[dict[str, Any]]] = {}

    async def read_records(self, central_key: str) -> list[dict[str, Any]]:
        return json.loads(json.dumps(self.objects[central_key]))


def archive_object(
    state: State, archive: MemoryArchive, key: str, recs: list[dict[str, Any]]
) -> None:
    archive.objects[key] = recs
    src = SourceRef("s", "111111111111", "us-east-1", "trail", "AWSLogs/")
    state.commit_object(
        ObjectOutcome(src, f"src/{key}", "AWSLogs/d/", "log", None, 1, len(recs),
                      central=CentralObject(key, 1, "0" * 64, len(recs), None, None))
    )  # fmt: skip


def records(testdata: Path, rel: str) -> list[dict[str, Any]]:
    data = (testdata / rel).read_bytes()
    return [i.record for i in iter_records(data, rel) if isinstance(i, Parsed)]


async def test_follower_raises_each_alert_once_and_delivers_through_opensearch(
    tmp_path: Path, testdata: Path
) -> None:
    settings = parse_settings({"archive": {"bucket": "central"}}, {})
    state = State(tmp_path / "s.db")
    archive = MemoryArchive()
    server = FakeOpenSearch()
    await server.start()
    conn = build(parse_settings(
        {"archive": {"bucket": "central"},
         "forward": {"connectors": [{"name": "os", "type": "opensearch", "hosts": [server.url]}]}},
        {},
    ).forward.connectors[0])  # fmt: skip
    sink = ConnectorAlertSink(conn)
    service = DetectionService(settings.detect, state, [sink])
    follower = DetectionFollower(service, state, archive, "central")
    try:
        archive_object(state, archive, "c1.json.gz", records(testdata, STOP_LOGGING))
        archive_object(
            state,
            archive,
            "c2.json.gz",
            records(
                testdata,
                "trailscraper/" + next(p.name for p in (testdata / "trailscraper").glob("*.json")),
            ),
        )
        assert follower.backlog() == 2

        objects, alerts = await follower.catch_up()

        assert objects == 2
        assert alerts >= 1
        assert follower.backlog() == 0
        # Reading the same objects again (a crash before the cursor moved) raises nothing new.
        service.store.set_meta("ledger_cursor", "0")
        assert (await follower.catch_up())[1] == 0
        await sink.open()
        sent = await service.deliver()
        assert sent == alerts
        docs = [d for idx in server.indices.values() for d in idx.values()]
        assert any(d.get("class_uid") == 2004 for d in docs)
        assert any("StopLogging" in json.dumps(d) for d in docs)
    finally:
        await service.close()
        await server.stop()
        state.close()
