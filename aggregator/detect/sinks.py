"""Where alerts go: a small protocol, plus SNS and a generic (Slack-compatible) webhook.

The forwarding connectors (OpenSearch / Splunk HEC / syslog) can carry alerts too: wrap one in
an :class:`AlertSink` that sends ``alert.to_ocsf()`` documents through it.

A sink raises :class:`AlertDeliveryError` when an alert could not be delivered after its own
retries, so the caller can keep it for later; it never logs an alert's content or a secret
(the webhook URL is one: Slack's carries its token).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from contextlib import AsyncExitStack
from typing import Any, Protocol, runtime_checkable

import aiohttp
import orjson

from aggregator.aws.clients import Aws
from aggregator.aws.errors import error_code, is_aws_error
from aggregator.detect.alerts import Alert
from aggregator.log import get_logger

log = get_logger("aggregator.detect")

SNS_SUBJECT_MAX = 100
SNS_MESSAGE_MAX = 256 * 1024


class AlertDeliveryError(Exception):
    def __init__(self, sink: str, reason: str, failed: Sequence[Alert] = ()) -> None:
        self.sink = sink
        self.reason = reason
        self.failed = list(failed)
        super().__init__(f"{sink}: {reason}")


@runtime_checkable
class AlertSink(Protocol):
    """A destination for alerts. ``send`` delivers every alert or raises AlertDeliveryError."""

    name: str

    async def open(self) -> None: ...

    async def send(self, alerts: Sequence[Alert]) -> None: ...

    async def close(self) -> None: ...


def _json(doc: Any) -> str:
    return orjson.dumps(doc).decode()


# --------------------------------------------------------------------------- SNS


class SnsSink:
    """Publishes each alert to an SNS topic: the OCSF finding as the message body."""

    name = "sns"

    def __init__(self, aws: Aws, topic_arn: str) -> None:
        self.aws = aws
        self.topic_arn = topic_arn
        self.region = topic_arn.split(":")[3] if topic_arn.count(":") >= 5 else None
        self._stack = AsyncExitStack()
        self._client: Any = None

    async def open(self) -> None:
        if self._client is None:
            session = self.aws.base_session()
            self._client = await self._stack.enter_async_context(
                self.aws.client(session, "sns", self.region)
            )

    async def send(self, alerts: Sequence[Alert]) -> None:
        await self.open()
        failed: list[Alert] = []
        reason = ""
        for alert in alerts:
            body = _json(alert.to_ocsf())
            if len(body.encode()) > SNS_MESSAGE_MAX:
                body = _json(alert.to_line())
            try:
                await self._client.publish(
                    TopicArn=self.topic_arn,
                    Subject=_subject(alert),
                    Message=body,
                    MessageAttributes={
                        "severity": {"DataType": "String", "StringValue": alert.severity},
                        "rule_id": {"DataType": "String", "StringValue": alert.rule_id},
                    },
                )
            except Exception as exc:
                if not is_aws_error(exc):
                    raise
                failed.append(alert)
                reason = error_code(exc)
        log.info("detect.alerts_sent", connector=self.name, count=len(alerts) - len(failed))
        if failed:
            log.error(
                "detect.alerts_failed", connector=self.name, error_type=reason, count=len(failed)
            )
            raise AlertDeliveryError(self.name, reason, failed)

    async def close(self) -> None:
        self._client = None
        await self._stack.aclose()


def _subject(alert: Alert) -> str:
    # SNS subjects: ASCII, no newlines, at most 100 characters.
    text = f"[{alert.severity.upper()}] {alert.title}"
    text = text.encode("ascii", "replace").decode().replace("\n", " ")
    return text[:SNS_SUBJECT_MAX]


# --------------------------------------------------------------------------- webhook


class WebhookSink:
    """POSTs one JSON document per alert: Slack's ``{"text": ...}`` plus structured fields.

    Retries connection errors, HTTP 429 and 5xx with exponential backoff; other statuses are
    permanent failures.
    """

    name = "webhook"

    def __init__(
        self,
        url: str,
        *,
        timeout_secs: float = 10.0,
        attempts: int = 3,
        backoff_secs: float = 0.5,
    ) -> None:
        self._url = url
        self.timeout = aiohttp.ClientTimeout(total=timeout_secs)
        self.attempts = attempts
        self.backoff_secs = backoff_secs
        self._session: aiohttp.ClientSession | None = None

    async def open(self) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self.timeout)

    @staticmethod
    def payload(alert: Alert) -> dict[str, Any]:
        return {"text": alert.summary(), "alert": alert.to_line(), "finding": alert.to_ocsf()}

    async def _post(self, body: bytes) -> str | None:
        """None when delivered, else the reason of the last failure."""
        assert self._session is not None
        reason = ""
        for attempt in range(self.attempts):
            if attempt:
                await asyncio.sleep(self.backoff_secs * 2 ** (attempt - 1))
            try:
                async with self._session.post(
                    self._url, data=body, headers={"Content-Type": "application/json"}
                ) as resp:
                    await resp.read()
                    if 200 <= resp.status < 300:
                        return None
                    reason = f"HTTP {resp.status}"
                    if resp.status != 429 and resp.status < 500:
                        return reason
            except (aiohttp.ClientError, TimeoutError) as exc:
                reason = type(exc).__name__
        return reason

    async def send(self, alerts: Sequence[Alert]) -> None:
        await self.open()
        failed: list[Alert] = []
        reason = ""
        for alert in alerts:
            why = await self._post(orjson.dumps(self.payload(alert)))
            if why is not None:
                failed.append(alert)
                reason = why
        log.info("detect.alerts_sent", connector=self.name, count=len(alerts) - len(failed))
        if failed:
            log.error(
                "detect.alerts_failed", connector=self.name, error_type=reason, count=len(failed)
            )
            raise AlertDeliveryError(self.name, reason, failed)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
