"""Every Detection Finding (2004) that the shipped rules raise over the shared testdata is valid
OCSF 1.1.0 (the same schema validator as the normalizer's test), and so is an anomaly's."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from aggregator.detect.alerts import Alert, ArchivePointer
from aggregator.detect.engine import Detector
from aggregator.detect.rules import RuleSet, load_rules
from aggregator.ingest.envelopes import Kind
from tests.normalize.corpus import corpus_records
from tests.normalize.ocsf_schema import Problem, Validator


@pytest.fixture(scope="module")
def validator() -> Validator:
    return Validator()


def _findings(testdata: Path) -> list[dict[str, Any]]:
    det = Detector(RuleSet(load_rules()), clock=lambda: 1_700_000_000.0)
    ptr = ArchivePointer("central", "AWSLogs/x.json.gz")
    out: list[dict[str, Any]] = []
    for _, record, kind in corpus_records(testdata):
        if kind is Kind.DIGEST or kind is None:
            continue
        out.extend(a.to_ocsf() for a in det.detect(record, archive=ptr))
    return out


def _norm(p: Problem) -> str:
    return re.sub(r"\[\d+\]", "[]", p.path)


def test_every_finding_is_valid_ocsf_1_1_0(testdata: Path, validator: Validator) -> None:
    findings = _findings(testdata)
    invalid: Counter[str] = Counter()
    deprecated: Counter[str] = Counter()
    bad = 0
    for f in findings:
        problems = validator.validate(f)
        hard = [p for p in problems if not p.deprecated]
        bad += bool(hard)
        invalid.update(f"{_norm(p)}: {p.what}"[:120] for p in hard)
        deprecated.update(_norm(p) for p in problems if p.deprecated)
    valid = len(findings) - bad
    print(f"OCSF 1.1.0 validity: {valid}/{len(findings)} Detection Findings")
    print(f"deprecated attributes used: {dict(deprecated)}")
    assert len(findings) > 100
    assert invalid == Counter(), invalid.most_common(20)
    assert deprecated == Counter()  # attacks[].tactic (1.1), never the deprecated tactics


def test_finding_fields_from_the_record(testdata: Path, validator: Validator) -> None:
    """api.request.uid is the requestID (not the eventID); a service source is svc_name, never
    an ip; no null account."""
    record = {
        "eventVersion": "1.08",
        "eventTime": "2026-01-01T00:00:00Z",
        "eventSource": "cloudtrail.amazonaws.com",
        "eventName": "StopLogging",
        "eventID": "event-1",
        "requestID": "request-1",
        "awsRegion": "eu-west-1",
        "sourceIPAddress": "AWS Internal",
        "userIdentity": {"type": "AWSService", "invokedBy": "cloudtrail.amazonaws.com"},
        "requestParameters": {"name": "trail"},
    }
    det = Detector(RuleSet(load_rules()), clock=lambda: 1_700_000_000.0)
    alerts = det.detect(record)
    assert alerts
    for a in alerts:
        f = a.to_ocsf()
        (ev,) = f["evidences"]
        assert ev["api"]["request"] == {"uid": "request-1"}
        assert ev["src_endpoint"] == {"svc_name": "AWS Internal"}
        assert "account" not in f["cloud"]  # no recipientAccountId: no null uid
        assert validator.validate(f) == []


def test_anomaly_finding_is_valid(validator: Validator) -> None:
    """An anomaly alert (no event, no actor, no region) is a valid finding too."""
    alert = Alert(
        rule_id="anomaly.error_rate",
        title="Error rate far above baseline",
        severity="medium",
        description="An hourly count far above the account's trailing baseline.",
        cis=(),
        attack=(),
        event_key="111111111111:errors:490000",
        event_id=None,
        event_name=None,
        event_source=None,
        event_time="2026-01-01T00:00:00Z",
        account_id="111111111111",
        region=None,
        actor=None,
        source_ip=None,
        detected_at=1_700_000_000.0,
        kind="anomaly",
        extra={"metric": "errors"},
    )
    f = alert.to_ocsf()
    assert f["finding_info"]["analytic"]["type"] == "Behavioral"
    assert validator.validate(f) == []
