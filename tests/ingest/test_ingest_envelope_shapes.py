"""More input shapes: EventBridge sign-in and Insights events, CloudWatch Logs subscription
payloads, S3 notifications (not CloudTrail), NDJSON of mixed envelopes in gzip — each yielding
its records in input order."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

from aggregator.ingest.envelopes import Kind, Parsed, Problem, iter_items, iter_records


def _login(testdata: Path) -> dict[str, Any]:
    line = (
        (testdata / "awsdocs/aws-cloudtrail-user-guide/records.jsonl").read_text().splitlines()[0]
    )
    rec: dict[str, Any] = json.loads(line)["record"]
    assert rec["eventName"] == "ConsoleLogin"
    return rec


def _insight(testdata: Path) -> dict[str, Any]:
    path = testdata / "awsdocs/aws-cloudtrail-user-guide/insights_examples.jsonl"
    rec: dict[str, Any] = json.loads(path.read_text().splitlines()[0])["json"]
    return rec


def test_eventbridge_sign_in_and_insight_events(testdata: Path) -> None:
    login, insight = _login(testdata), _insight(testdata)
    events = [
        {
            "detail-type": "AWS Console Sign In via CloudTrail",
            "source": "aws.signin",
            "detail": login,
        },
        {
            "detail-type": "AWS Insight via CloudTrail",
            "source": "aws.cloudtrail",
            "detail": insight,
        },
    ]
    items = list(iter_items(b"\n".join(json.dumps(e).encode() for e in events), "eb.ndjson"))
    assert [(i.kind, i.record) for i in items if isinstance(i, Parsed)] == [
        (Kind.EVENTBRIDGE, login),
        (Kind.INSIGHT, insight),
    ]


def test_eventbridge_of_another_kind_is_a_problem() -> None:
    (item,) = iter_items(json.dumps({"detail-type": "EC2 Instance State", "detail": {}}).encode())
    assert isinstance(item, Problem)
    assert "not CloudTrail" in item.reason


def test_cloudwatch_logs_subscription_payload(testdata: Path) -> None:
    """CloudTrail delivered through CloudWatch Logs (subscription filter / Firehose): each
    log event's message is one record; a control message carries none."""
    login = _login(testdata)
    payload = {
        "messageType": "DATA_MESSAGE",
        "owner": "111122223333",
        "logGroup": "aws-cloudtrail-logs",
        "logEvents": [
            {"id": "1", "timestamp": 1, "message": json.dumps(login)},
            {"id": "2", "timestamp": 2, "message": "not json"},
            {"id": "3", "timestamp": 3, "message": json.dumps(dict(login, eventID="x"))},
        ],
    }
    items = list(iter_items(gzip.compress(json.dumps(payload).encode()), "cwl.gz"))
    assert isinstance(items[0], Parsed)
    assert items[0].record == login
    assert isinstance(items[1], Problem)
    assert items[1].where == "cwl.gz:logEvents[1]"
    assert isinstance(items[2], Parsed)
    assert items[2].record["eventID"] == "x"
    control = {"messageType": "CONTROL_MESSAGE", "logEvents": [{"message": "CWL CONTROL"}]}
    assert list(iter_items(json.dumps(control).encode())) == []


def test_s3_notifications_are_not_cloudtrail() -> None:
    notification = {
        "Records": [
            {"eventVersion": "2.1", "eventSource": "aws:s3", "eventName": "ObjectCreated:Put"}
        ]
    }
    (item,) = iter_items(json.dumps(notification).encode(), "sqs.json")
    assert isinstance(item, Problem)
    assert item.where == "sqs.json:Records[0]"
    assert "aws:s3 notification" in item.reason


def test_gzip_ndjson_of_mixed_envelopes_keeps_order(testdata: Path) -> None:
    login = _login(testdata)
    lines = [
        json.dumps({"Records": [dict(login, eventID="a"), dict(login, eventID="b")]}),
        json.dumps(dict(login, eventID="c")),
        json.dumps(
            {"detail-type": "AWS API Call via CloudTrail", "detail": dict(login, eventID="d")}
        ),
    ]
    data = gzip.compress("\n".join(lines).encode())
    ids = [i.record["eventID"] for i in iter_records(data) if isinstance(i, Parsed)]
    assert ids == ["a", "b", "c", "d"]


def test_trailscraper_log_file_plain_and_gzip_are_equal(testdata: Path) -> None:
    base = (
        testdata
        / "trailscraper/111111111111_CloudTrail_eu-central-1_20171211T1505Z_A6kvhMoVeCsc7v8U.json"
    )
    plain = [i.record for i in iter_records(base.read_bytes()) if isinstance(i, Parsed)]
    gz = [
        i.record
        for i in iter_records(base.with_suffix(".json.gz").read_bytes())
        if isinstance(i, Parsed)
    ]
    assert len(plain) == 2
    assert plain == gz
