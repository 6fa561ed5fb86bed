"""Alert delivery: SNS over a moto server, and a Slack-compatible webhook on 127.0.0.1."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import boto3
import pytest
from aiohttp import web

from aggregator.aws.clients import Aws
from aggregator.config import AwsSettings
from aggregator.detect.alerts import Alert, ArchivePointer
from aggregator.detect.sinks import AlertDeliveryError, AlertSink, SnsSink, WebhookSink


def make_alert(n: int = 0, severity: str = "critical") -> Alert:
    return Alert(
        rule_id="0b9d7a55-1a50-4f43-8d3c-1a6f2a1c0009",
        title="CloudTrail logging stopped or trail deleted",
        severity=severity,
        description="A trail was stopped.",
        cis=("4.5",),
        attack=("defense-evasion", "t1562.008"),
        event_key=f"{n:032x}",
        event_id=f"event-{n}",
        event_name="StopLogging",
        event_source="cloudtrail.amazonaws.com",
        event_time="2024-07-30T21:31:21Z",
        account_id="111122223333",
        region="us-east-1",
        actor="arn:aws:iam::111122223333:user/mallory",
        source_ip="198.51.100.7",
        detected_at=1_722_375_100.0,
        archive=ArchivePointer("central", "AWSLogs/111122223333/CloudTrail/x.json.gz"),
    )


def test_sinks_follow_the_protocol() -> None:
    """Both sinks satisfy AlertSink, the hook other connectors will be wired through."""
    assert isinstance(WebhookSink("http://127.0.0.1:1/x"), AlertSink)
    assert isinstance(
        SnsSink(Aws(AwsSettings()), "arn:aws:sns:us-east-1:111122223333:t"), AlertSink
    )


async def test_sns_delivers_ocsf_findings(moto: str) -> None:
    """Alerts published to SNS reach a subscribed SQS queue as OCSF findings with attributes."""
    sns = boto3.client("sns", region_name="us-east-1", endpoint_url=moto)
    sqs = boto3.client("sqs", region_name="us-east-1", endpoint_url=moto)
    topic = sns.create_topic(Name="ctagg-alerts")["TopicArn"]
    queue_url = sqs.create_queue(QueueName="alerts")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])[
        "Attributes"
    ]["QueueArn"]
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=queue_arn)

    sink = SnsSink(Aws(AwsSettings(endpoint_url=moto, max_attempts=1)), topic)
    try:
        await sink.send([make_alert(1), make_alert(2, "high")])
    finally:
        await sink.close()

    msgs = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10)["Messages"]
    envelopes = [json.loads(m["Body"]) for m in msgs]
    assert len(envelopes) == 2
    findings = sorted((json.loads(e["Message"]) for e in envelopes), key=lambda f: f["time"])
    assert {f["class_uid"] for f in findings} == {2004}
    assert {f["finding_info"]["src_url"] for f in findings} == {
        "s3://central/AWSLogs/111122223333/CloudTrail/x.json.gz"
    }
    subjects = {e["Subject"] for e in envelopes}
    assert "[CRITICAL] CloudTrail logging stopped or trail deleted" in subjects
    assert {e["MessageAttributes"]["severity"]["Value"] for e in envelopes} == {"critical", "high"}


async def test_sns_missing_topic_is_a_delivery_error(moto: str) -> None:
    """A topic that does not exist fails every alert with the AWS error code, nothing hidden."""
    sink = SnsSink(
        Aws(AwsSettings(endpoint_url=moto, max_attempts=1)),
        "arn:aws:sns:us-east-1:123456789012:nope",
    )
    try:
        with pytest.raises(AlertDeliveryError) as info:
            await sink.send([make_alert(1)])
    finally:
        await sink.close()
    assert info.value.sink == "sns"
    assert len(info.value.failed) == 1
    assert info.value.reason == "NotFound"


class Receiver:
    def __init__(self, statuses: list[int]) -> None:
        self.statuses = statuses
        self.bodies: list[dict[str, Any]] = []
        self.calls = 0

    async def handle(self, request: web.Request) -> web.Response:
        self.calls += 1
        status = self.statuses.pop(0) if self.statuses else 200
        if status == 200:
            self.bodies.append(await request.json())
        return web.Response(status=status, text="ok")


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[Receiver, str]]:
    rec = Receiver([])
    app = web.Application()
    app.router.add_post("/hook", rec.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield rec, f"http://127.0.0.1:{port}/hook"
    await runner.cleanup()


async def test_webhook_posts_slack_text_and_structure(receiver: tuple[Receiver, str]) -> None:
    """Each alert is one POST with Slack's 'text' plus the flat alert and the OCSF finding."""
    rec, url = receiver
    sink = WebhookSink(url, backoff_secs=0.01)
    try:
        await sink.send([make_alert(1), make_alert(2)])
    finally:
        await sink.close()
    assert len(rec.bodies) == 2
    body = rec.bodies[0]
    assert body["text"].startswith(
        "[CRITICAL] CloudTrail logging stopped or trail deleted (CIS 4.5)"
    )
    assert "mallory" in body["text"]
    assert body["alert"]["event_id"] == "event-1"
    assert body["alert"]["cis"] == ["4.5"]
    assert body["finding"]["class_uid"] == 2004


async def test_webhook_retries_transient_and_fails_permanent(
    receiver: tuple[Receiver, str],
) -> None:
    """429/5xx are retried; a 4xx is a permanent failure reported with its status."""
    rec, url = receiver
    rec.statuses[:] = [503, 429]
    sink = WebhookSink(url, backoff_secs=0.01, attempts=3)
    try:
        await sink.send([make_alert(1)])
        assert rec.calls == 3
        assert len(rec.bodies) == 1
        rec.statuses[:] = [400]
        with pytest.raises(AlertDeliveryError) as info:
            await sink.send([make_alert(2)])
    finally:
        await sink.close()
    assert info.value.reason == "HTTP 400"
    assert rec.calls == 4


async def test_webhook_unreachable_is_a_delivery_error() -> None:
    """Nobody listening: the alert is reported failed after the retries, not lost silently."""
    sink = WebhookSink("http://127.0.0.1:9/hook", backoff_secs=0.01, attempts=2, timeout_secs=2)
    try:
        with pytest.raises(AlertDeliveryError) as info:
            await sink.send([make_alert(1)])
    finally:
        await sink.close()
    assert info.value.failed[0].event_id == "event-1"
    assert "url" not in info.value.reason.lower()
