"""Detection follows the ledger (every archived event once) and alerts reach a connector."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from structlog.testing import capture_logs

from aggregator.config import parse_settings
from aggregator.detect.follow import ConnectorAlertSink, DetectionFollower, detection_floor
from aggregator.detect.service import DetectionService
from aggregator.ingest.envelopes import Parsed, iter_records
from aggregator.state import CentralObject, ObjectOutcome, SourceRef, State
from connectors import build
from tests.fakes.opensearch import FakeOpenSearch

STOP_LOGGING = "stratus-red-team/detonation-logs/aws.defense-evasion.cloudtrail-stop.json"


class MemoryArchive:
    def __init__(self) -> None:
        self.objects: dict[str, list[dict[str, Any]]] = {}
        self.read: list[str] = []  # central keys in the order the follower read them

    async def read_records(self, central_key: str) -> list[dict[str, Any]]:
        self.read.append(central_key)
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


# ---------------------------------------------------------------- where a new cursor starts


def new_service(state: State) -> DetectionService:
    return DetectionService(
        parse_settings({"archive": {"bucket": "central"}}, {}).detect, state, []
    )


async def test_start_from_newest_scans_only_objects_archived_afterwards(
    tmp_path: Path, testdata: Path
) -> None:
    """On a state with archived history and no detection cursor, ``newest`` persists the cursor
    at the newest ledger id: the old objects (StopLogging ones) are never read and raise nothing,
    an object archived afterwards is scanned, and retention's floor is past the history."""
    state = State(tmp_path / "s.db")
    archive = MemoryArchive()
    service = new_service(state)
    try:
        archive_object(state, archive, "old1.json.gz", records(testdata, STOP_LOGGING))
        archive_object(state, archive, "old2.json.gz", records(testdata, STOP_LOGGING))
        newest = state.ledger.max_id()
        assert detection_floor(state, started_only=True) is None  # detection never started
        follower = DetectionFollower(service, state, archive, "central")

        with capture_logs() as logs:
            position = follower.initialise("newest")

        assert position == newest == 2
        assert follower.position == newest
        assert follower.backlog() == 0
        assert detection_floor(state) == newest + 1
        assert detection_floor(state, started_only=True) == newest + 1
        assert [e for e in logs if e["event"] == "detect.cursor_initialised"] == [
            {
                "event": "detect.cursor_initialised",
                "log_level": "info",
                "start_from": "newest",
                "position": newest,
            }
        ]
        assert await follower.catch_up() == (0, 0)
        assert archive.read == []

        archive_object(state, archive, "new.json.gz", records(testdata, STOP_LOGGING))
        objects, alerts = await follower.catch_up()

        assert objects == 1
        assert alerts >= 1  # the same events, never scanned before, alert now
        assert archive.read == ["new.json.gz"]
        assert detection_floor(state) == state.ledger.max_id() + 1
    finally:
        await service.close()
        state.close()


async def test_start_from_oldest_scans_all_archived_history(tmp_path: Path, testdata: Path) -> None:
    """``oldest`` (the default) persists the cursor before the first ledger row: every archived
    object is scanned, and retention keeps them all until it is."""
    state = State(tmp_path / "s.db")
    archive = MemoryArchive()
    service = new_service(state)
    try:
        archive_object(state, archive, "old1.json.gz", records(testdata, STOP_LOGGING))
        archive_object(state, archive, "old2.json.gz", records(testdata, STOP_LOGGING))
        follower = DetectionFollower(service, state, archive, "central")

        assert follower.initialise() == 0
        assert detection_floor(state, started_only=True) == 1  # started, nothing scanned
        assert follower.backlog() == 2
        objects, alerts = await follower.catch_up()

        assert objects == 2
        assert alerts >= 1
        assert archive.read == ["old1.json.gz", "old2.json.gz"]
        assert detection_floor(state) == 3
    finally:
        await service.close()
        state.close()


async def test_an_existing_cursor_is_never_moved_by_a_restart(
    tmp_path: Path, testdata: Path
) -> None:
    """Once detection has a cursor, ``start_from`` has no effect: a restart with ``newest`` does
    not skip the objects archived while detection was down, nor does ``oldest`` rescan history."""
    state = State(tmp_path / "s.db")
    archive = MemoryArchive()
    service = new_service(state)
    try:
        archive_object(state, archive, "old.json.gz", records(testdata, STOP_LOGGING))
        assert DetectionFollower(service, state, archive, "central").initialise("newest") == 1
        archive_object(state, archive, "while-down.json.gz", records(testdata, STOP_LOGGING))

        with capture_logs() as logs:
            again = DetectionFollower(service, state, archive, "central")
            moved = [again.initialise("newest"), again.initialise("oldest")]

        assert moved == [None, None]
        assert not [e for e in logs if e["event"] == "detect.cursor_initialised"]
        assert again.position == 1
        assert detection_floor(state) == 2
        assert (await again.catch_up())[0] == 1
        assert archive.read == ["while-down.json.gz"]
    finally:
        await service.close()
        state.close()
