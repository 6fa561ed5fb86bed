"""Detection over the archive as it grows: a ledger follower, and alerts through connectors.

The follower reads every central object in ledger order (its own cursor, like a forwarding
connector), runs the rules and the rate counters over its records and advances the cursor.
Running after the central write keeps detection out of the ingest hot path, and "over the same
stream" means every archived event, exactly the ones the archive holds (no duplicates).

A crash between ``process`` and the cursor move repeats one object: alerts are deduplicated per
rule × event key, so none is raised twice (its events are counted twice for the hourly rates,
a bounded overcount of one object).

:class:`ConnectorAlertSink` delivers alerts (OCSF 2004 Detection Finding) through a forwarding
connector (OpenSearch, Splunk HEC, syslog), so alerts land where the events land.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any, Literal, Protocol

import orjson

from aggregator.detect.alerts import Alert, ArchivePointer
from aggregator.detect.service import DetectionService
from aggregator.detect.sinks import AlertDeliveryError
from aggregator.log import get_logger
from aggregator.state import State
from aggregator.state.snapshot import FOLLOW_CURSOR
from connectors.base import Connector, Delivered, OutEvent

log = get_logger("aggregator.detect")

# its position in detect_meta (a resize translates it: aggregator/state/snapshot.py)
CURSOR = FOLLOW_CURSOR


def detection_floor(state: State, *, started_only: bool = False) -> int | None:
    """The lowest ledger id detection has not scanned yet (its persisted cursor + 1), read
    without starting detection, so retention keeps those objects even while detection is down.
    ``started_only``: None when detection never started here (no cursor yet) instead of 1."""
    from aggregator.detect.store import DetectStore

    cursor = DetectStore(state).get_meta(CURSOR)
    if cursor is None and started_only:
        return None
    return int(cursor or 0) + 1


class ArchiveReader(Protocol):
    async def read_records(self, central_key: str) -> list[dict[str, Any]]: ...


class DetectionFollower:
    def __init__(
        self,
        service: DetectionService,
        state: State,
        archive: ArchiveReader,
        bucket: str,
        *,
        offload: bool = False,
    ) -> None:
        """``offload``: run the rules in a worker thread, so a large object never holds the
        event loop (ingest and forwarding keep running; the daemon sets it)."""
        self.service = service
        self.state = state
        self.archive = archive
        self.bucket = bucket
        self.offload = offload

    def initialise(self, start_from: Literal["oldest", "newest"] = "oldest") -> int | None:
        """Persist the cursor on a fresh detection state: 0 with ``oldest`` (scan all archived
        history), the highest ledger id with ``newest`` (scan only objects archived from now
        on). A cursor that exists already is never moved; returns the position set, or None."""
        position = self.service.store.start_cursor(CURSOR, newest=start_from == "newest")
        if position is not None:
            log.info("detect.cursor_initialised", start_from=start_from, position=position)
        return position

    @property
    def position(self) -> int:
        return int(self.service.store.get_meta(CURSOR) or 0)

    def backlog(self) -> int:
        position = self.position
        with self.state.transaction() as c:
            row = c.execute("SELECT count(*) FROM ledger WHERE id > ?", (position,))
            return int(row.fetchone()[0])

    async def step(self, limit: int = 64) -> tuple[int, int]:
        """Process up to ``limit`` central objects; returns (objects, alerts)."""
        objects = alerts = 0
        for row in self.state.ledger.rows(after_id=self.position, limit=limit):
            key = row["central_key"]
            records = await self.archive.read_records(key)
            pointer = ArchivePointer(self.bucket, key)
            if self.offload:
                raised = await asyncio.to_thread(self.service.process, records, pointer)
            else:
                raised = self.service.process(records, pointer)
            alerts += len(raised)
            self.service.store.set_meta(CURSOR, str(row["id"]))
            objects += 1
        return objects, alerts

    async def catch_up(self, batch: int = 64) -> tuple[int, int]:
        """Process everything the ledger holds now."""
        total = (0, 0)
        while True:
            done = await self.step(batch)
            total = (total[0] + done[0], total[1] + done[1])
            if done[0] < batch:
                return total


class ConnectorAlertSink:
    """An AlertSink sending each alert's OCSF Detection Finding through a connector.

    ``account_name`` (discovery's view, as forwarded events are enriched) names the account
    in ``cloud.account.name``."""

    def __init__(
        self, connector: Connector, account_name: Callable[[str], str | None] | None = None
    ) -> None:
        self.connector = connector
        self.name = f"connector:{connector.name}"
        self.account_name = account_name

    def document(self, alert: Alert) -> dict[str, Any]:
        doc = alert.to_ocsf()
        if self.account_name is not None and alert.account_id:
            name = self.account_name(alert.account_id)
            if name:
                doc["cloud"].setdefault("account", {})["name"] = name
        return doc

    async def open(self) -> None:
        await self.connector.open()

    async def send(self, alerts: Sequence[Alert]) -> None:
        batch = [
            OutEvent(
                id=a.uid,
                doc=None,
                data=orjson.dumps(self.document(a)),
                time=float(a.event_epoch),
                account_id=a.account_id or "",
                region=a.region or "",
                pointer=a.archive.url if a.archive else "",
                event_name=f"alert:{a.rule_id}",
            )
            for a in alerts
        ]
        outcomes = await self.connector.send(batch)
        failed = [a for a, o in zip(alerts, outcomes, strict=True) if not isinstance(o, Delivered)]
        if failed:
            reasons = {getattr(o, "reason", type(o).__name__) for o in outcomes}
            reason = "; ".join(sorted(str(r) for r in reasons))[:300]
            raise AlertDeliveryError(self.name, reason, failed)

    async def close(self) -> None:
        await self.connector.close()
