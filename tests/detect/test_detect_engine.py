"""Detector: deduplicated alerts, their flat and OCSF forms, and persisted dedupe."""

from __future__ import annotations

import copy
import json
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from aggregator.detect.alerts import ArchivePointer
from aggregator.detect.engine import Detector
from aggregator.detect.rules import RuleSet, load_rules
from aggregator.detect.store import DetectStore
from aggregator.ingest.dedupe import record_key_text
from aggregator.state import State


@pytest.fixture(scope="module")
def ruleset() -> RuleSet:
    return RuleSet(load_rules())


@pytest.fixture
def stop_logging(testdata: Path) -> dict[str, Any]:
    path = (
        testdata
        / "stratus-red-team"
        / "detonation-logs"
        / "aws.defense-evasion.cloudtrail-stop.json"
    )
    (rec,) = json.loads(path.read_text())
    return dict(rec)


def test_one_alert_per_rule_and_event(ruleset: RuleSet, stop_logging: dict[str, Any]) -> None:
    """The same event delivered twice (org trail + account trail) raises each rule once."""
    det = Detector(ruleset, clock=lambda: 1_700_000_000.0)
    first = det.detect(stop_logging)
    again = det.detect(copy.deepcopy(stop_logging))
    assert {a.title for a in first} == {
        "CloudTrail Logging Stopped or Trail Deleted",
        "CloudTrail Configuration Changed",
    }
    assert again == []
    assert det.duplicates == 2

    other = dict(stop_logging, eventID="another-event")
    assert len(det.detect(other)) == 2


def test_alert_fields(ruleset: RuleSet, stop_logging: dict[str, Any]) -> None:
    """An alert line carries the rule, the event's identity and place, and the CIS ids."""
    det = Detector(ruleset, clock=lambda: 1_700_000_000.0)
    ptr = ArchivePointer("central", "AWSLogs/o-1/123/CloudTrail/us-east-1/2024/07/30/x.json.gz")
    alerts = {a.title: a for a in det.detect(stop_logging, archive=ptr)}
    line = alerts["CloudTrail Configuration Changed"].to_line()
    assert line["severity"] == "medium"
    assert line["cis"] == ["4.5"]
    assert line["event_id"] == stop_logging["eventID"]
    assert line["event_name"] == "StopLogging"
    assert line["account_id"] == stop_logging["recipientAccountId"]
    assert line["region"] == stop_logging["awsRegion"]
    assert line["event_time"] == stop_logging["eventTime"]
    assert line["event_key"] == record_key_text(stop_logging)
    assert line["archive"] == {"bucket": ptr.bucket, "key": ptr.key}
    crit = alerts["CloudTrail Logging Stopped or Trail Deleted"].to_line()
    assert crit["severity"] == "critical"
    assert crit["cis"] == []
    assert "t1562.008" in crit["attack"]


def test_ocsf_detection_finding(ruleset: RuleSet, stop_logging: dict[str, Any]) -> None:
    """Alerts become OCSF 1.1 Detection Findings (class 2004) with the archive pointer."""
    det = Detector(ruleset, clock=lambda: 1_700_000_000.0)
    ptr = ArchivePointer("central", "AWSLogs/x.json.gz")
    alert = next(a for a in det.detect(stop_logging, archive=ptr) if a.severity == "critical")
    f = alert.to_ocsf()
    assert f["class_uid"] == 2004
    assert f["category_uid"] == 2
    assert f["type_uid"] == 200401
    assert f["activity_id"] == 1
    assert f["severity_id"] == 5
    assert f["severity"] == "Critical"
    assert f["metadata"]["version"] == "1.1.0"
    assert f["finding_info"]["analytic"]["uid"] == alert.rule_id
    assert f["finding_info"]["uid"] == alert.uid
    assert f["finding_info"]["src_url"] == "s3://central/AWSLogs/x.json.gz"
    assert f["finding_info"]["attacks"] == [
        {
            "version": "v17.0",
            "technique": {"uid": "T1562", "name": "Impair Defenses"},
            "sub_technique": {"uid": "T1562.008", "name": "Disable or Modify Cloud Logs"},
            "tactic": {"uid": "TA0005", "name": "Defense Evasion"},
        }
    ]
    assert f["cloud"]["account"]["uid"] == stop_logging["recipientAccountId"]
    assert f["evidences"][0]["api"]["operation"] == "StopLogging"
    want = datetime.fromisoformat(stop_logging["eventTime"].replace("Z", "+00:00"))
    assert f["time"] == int(want.timestamp() * 1000)
    json.dumps(f)  # plain JSON types only


def test_persisted_dedupe_survives_restart(
    ruleset: RuleSet, stop_logging: dict[str, Any], tmp_path: Path
) -> None:
    """With the SQLite store, a restarted detector does not alert again on a replayed event."""
    db = tmp_path / "state.db"
    state = State(db)
    assert 10 in {r[0] for r in state.conn.execute("SELECT version FROM schema_migrations")}
    assert len(Detector(ruleset, log=DetectStore(state)).detect(stop_logging)) == 2
    state.close()
    state = State(db)
    assert Detector(ruleset, log=DetectStore(state)).detect(stop_logging) == []
    assert state.count("detect_alerts") == 2
    state.close()


def test_quiet_records_raise_nothing(ruleset: RuleSet, testdata: Path) -> None:
    """Ordinary read traffic (the OTRF dataset's discovery calls) is mostly quiet."""
    lines = (testdata / "otrf-security-datasets").glob("*.json")
    det = Detector(ruleset)
    n = 0
    for path in lines:
        for line in path.read_text().splitlines():
            if line.strip():
                det.detect(json.loads(line))
                n += 1
    assert n > 50
    assert det.matches < n / 2
