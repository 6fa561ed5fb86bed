"""The App the daemon and ``once`` drive: discovery's coverage warnings are logged every
discovery (the daemon's log says when filters drop the organization trail)."""

from __future__ import annotations

import io
import json
from pathlib import Path

from aggregator import log
from aggregator.service.app import App
from tests.aws.test_aws_discovery import LAYOUT, REGIONS
from tests.orgseed import MGMT, make_settings, make_trail, seed_org


async def test_the_daemon_logs_lost_org_trail_coverage(moto: str, tmp_path: Path) -> None:
    seed_org(LAYOUT)
    make_trail(MGMT, "us-east-1", "org-trail", "org-logs", organization=True, multi_region=True)
    settings = make_settings(
        moto,
        state={"path": str(tmp_path / "s.db")},
        discovery={"regions": {"include": REGIONS}, "accounts": {"include_tags": {"env": "dev"}}},
    )
    captured = io.StringIO()
    log.configure("INFO", json=True, stream=captured)
    app = App(settings)
    try:
        await app.refresh_discovery()
    finally:
        await app.close()
        log.configure("INFO")

    lines = [json.loads(x) for x in captured.getvalue().splitlines()]
    (lost,) = [x for x in lines if x["event"] == "discovery.coverage_lost"]
    assert lost["level"] == "warning"
    assert "organization_trail_owner_ids" in lost["reason"]
