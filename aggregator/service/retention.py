"""``ctagg retention``: one retention pass for a config, outside the daemon. Like the daemon's
job, it never deletes what a configured connector has not delivered or what detection (once
started) has not scanned."""

from __future__ import annotations

import os

from aggregator.archive.retention import Retention, RetentionReport
from aggregator.aws.clients import Aws, SessionProvider
from aggregator.aws.credentials import CredentialBroker
from aggregator.config import Settings
from aggregator.detect.follow import detection_floor
from aggregator.forward.store import ForwardStore
from aggregator.state import State


def _open_state(settings: Settings, *, dry_run: bool) -> State:
    """The writer's lock for a real pass; a dry run changes nothing and reads beside a running
    daemon (a state that does not exist yet is made, as before: there is nothing to read)."""
    if dry_run:
        return State(settings.state.path, read_only=os.path.isfile(settings.state.path))
    return State(settings.state.path, writer="ctagg retention")


async def run_once(
    settings: Settings, *, dry_run: bool, sessions: SessionProvider | None = None
) -> RetentionReport:
    aws = Aws(settings.aws)
    state = _open_state(settings, dry_run=dry_run)
    try:
        names = [c.name for c in settings.forward.connectors if c.enabled]
        # detection's cursor, once the daemon's detection has started (it persists the cursor)
        detects = settings.detect.enabled and detection_floor(state, started_only=True) is not None

        def floor() -> int | None:
            floors = [ForwardStore(state).floor(names)] if names else []
            if detects:
                floors.append(int(detection_floor(state) or 1))
            return min(floors) if floors else None

        # the writer account's role when archive.writer_account_id is set, else the base identity
        job = Retention(
            settings,
            state,
            sessions or CredentialBroker(settings, aws),
            aws,
            # never delete what a configured connector has not delivered (or detection has not
            # scanned) yet
            ledger_floor=floor if names or detects else None,
        )
        return await job.run(dry_run=dry_run)
    finally:
        state.close()
