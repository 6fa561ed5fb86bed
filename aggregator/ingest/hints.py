"""Hint mode: S3 event notifications in an SQS queue say which source objects are new.

A message is a hint, never the truth. Each hinted key is mapped to its source (the bucket and
stream prefix of one of the inventory's sources; account and region from the CloudTrail key
layout) and handled through the path a listed key takes: the per-key checkpoints decide, so a
duplicated, re-ordered or stale hint changes nothing, and a dropped one is found by the full
listing, which still runs every ``collect.notifications.relist_interval_secs``.

Three body shapes are read (:func:`parse_body`): the raw S3 event (``Records[].s3``, keys
URL-encoded with ``+`` for a space; ``s3:TestEvent`` is ignored), the same wrapped by SNS
(``Type: Notification``, the event as the ``Message`` string) and EventBridge's "Object
Created" (``detail.bucket.name``, ``detail.object.key``, not encoded).

A message's life:

* unparseable (not JSON, the wrong shape, a missing field): logged ``hint.unparseable``,
  counted, deleted; a test event or another event type, a non-CloudTrail key, a key no known
  source covers: logged, counted, deleted (nothing ever blocks the queue);
* a pair this shard does not own: sent to its owner's queue (``shard_queue_url``), then
  deleted here (no per-shard queue: deleted, the owner reads its own copy);
* otherwise each key is queued for the cycle's workers unless the checkpoints say it was
  handled; while it is in work the message's visibility timeout is extended at half of it
  (ChangeMessageVisibility), so a slow object is not delivered again meanwhile;
* deleted once every key of it is committed (or known handled); a key that failed (a
  transient error, a read-back deferred, a stop) leaves the message, so SQS delivers it again
  and, after the queue's maxReceiveCount, its redrive policy moves it to the dead-letter queue.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote_plus, unquote_plus

import orjson

from aggregator.aws.clients import ClientPool, SessionProvider
from aggregator.aws.errors import error_code, error_message
from aggregator.aws.inventory import Inventory, Source
from aggregator.aws.slots import owns, shard_of, slot_of
from aggregator.config import Settings
from aggregator.ingest.collect import classify, stream_prefixes
from aggregator.ingest.work import Cycle, Job
from aggregator.log import get_logger
from aggregator.state import State, StorageError

log = get_logger("aggregator.ingest")

# Job outcomes (cycle.Ingestor._handle) after which a hint's message may be deleted: the key
# is committed, recorded, quarantined, gone from the bucket, or a gap LookupEvents fills.
SETTLED = frozenset({"done", "recorded", "quarantined", "missing", "gap", "handled"})
FORWARDED = "ctagg-forwarded-from"  # message attribute of a hint one shard sent another
RELISTED_AT = "hints_relisted_at"  # state_meta: when the last full listing of a hint cycle ran
SQS_DEFAULT_VISIBILITY = 30

_KEY = re.compile(
    r"^(?P<stream>(?:.*/)?AWSLogs/(?:o-[a-z0-9]{10,32}/)?(?P<account>\d{12})/"
    r"(?:CloudTrail|CloudTrail-Insight|CloudTrail-Digest)/(?P<region>[a-z]{2}(?:-[a-z]+)+-\d+)/)"
    r"(?P<day>\d{4}/\d{2}/\d{2}/)[^/]+$"
)
_SQS_HOST = re.compile(r"^https?://sqs[.-]([a-z]{2}(?:-[a-z]+)+-\d+)\.amazonaws\.com")


class Unparseable(ValueError):
    """A message body that is no S3 or EventBridge notification (the reason says why)."""


@dataclass(frozen=True)
class Hint:
    bucket: str
    key: str  # decoded
    size: int = 0


@dataclass(frozen=True)
class Parsed:
    hints: list[Hint]
    ignored: str | None = None  # why a well-formed message holds no hint (a test event)


def _field(doc: Any, *path: str) -> Any:
    for name in path:
        if not isinstance(doc, dict) or name not in doc:
            raise Unparseable(f"missing {'.'.join(path)}")
        doc = doc[name]
    return doc


def _text(doc: Any, *path: str) -> str:
    value = _field(doc, *path)
    if not isinstance(value, str) or not value:
        raise Unparseable(f"{'.'.join(path)} is not a non-empty string")
    return value


def _size(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def parse_body(body: str | bytes, *, _wrapped: bool = False) -> Parsed:
    """The hints of one message body; raises :class:`Unparseable`."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise Unparseable(f"not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise Unparseable(f"a JSON {type(doc).__name__}, not an object")
    if doc.get("Type") in ("Notification", "SubscriptionConfirmation", "UnsubscribeConfirmation"):
        if _wrapped:
            raise Unparseable("an SNS notification inside an SNS notification")
        if doc["Type"] != "Notification":
            return Parsed([], f"SNS {doc['Type']} (confirm the subscription)")
        return parse_body(_text(doc, "Message"), _wrapped=True)
    if doc.get("Event") == "s3:TestEvent":
        return Parsed([], "s3:TestEvent")
    if "Records" in doc:
        records = doc["Records"]
        if not isinstance(records, list) or not records:
            raise Unparseable("Records is not a non-empty list")
        hints: list[Hint] = []
        for i, rec in enumerate(records):
            if not isinstance(rec, dict):
                raise Unparseable(f"Records[{i}] is not an object")
            name = rec.get("eventName")
            if isinstance(name, str) and not name.startswith("ObjectCreated:"):
                continue  # ObjectRemoved, Restore, ...: nothing new to read
            bucket = _text(rec, "s3", "bucket", "name")
            key = unquote_plus(_text(rec, "s3", "object", "key"))
            hints.append(Hint(bucket, key, _size(rec["s3"]["object"].get("size"))))
        return Parsed(hints, None if hints else "no ObjectCreated record")
    if "detail-type" in doc:
        if doc.get("source") != "aws.s3":
            raise Unparseable(f"an EventBridge event of source {doc.get('source')!r}")
        if doc["detail-type"] != "Object Created":
            return Parsed([], f"EventBridge {doc['detail-type']!r}")
        bucket = _text(doc, "detail", "bucket", "name")
        key = _text(doc, "detail", "object", "key")  # EventBridge keys are not URL-encoded
        return Parsed([Hint(bucket, key, _size(doc["detail"]["object"].get("size")))])
    raise Unparseable("neither an S3 event (Records), SNS (Type) nor EventBridge (detail-type)")


def s3_event_body(hint: Hint) -> str:
    """A one-record S3 event for ``hint`` (what a shard sends the owner of a foreign hint)."""
    obj: dict[str, Any] = {"key": quote_plus(hint.key, safe="/")}
    if hint.size:
        obj["size"] = hint.size
    rec = {
        "eventSource": "aws:s3",
        "eventName": "ObjectCreated:Put",
        "s3": {"bucket": {"name": hint.bucket}, "object": obj},
    }
    return orjson.dumps({"Records": [rec]}).decode()


@dataclass(frozen=True)
class Located:
    stream: str  # the stream prefix: [P/]AWSLogs/[o-x/]<acct>/<CloudTrail kind>/<region>/
    account_id: str
    region: str
    day_prefix: str


def locate(key: str) -> Located | None:
    """Where a CloudTrail key sits in the layout; None for any other key."""
    m = _KEY.match(key)
    if m is None:
        return None
    return Located(m["stream"], m["account"], m["region"], m["stream"] + m["day"])


def queue_for(template: str, index: int) -> str:
    return template.replace("{index}", str(index)).replace("{shard}", str(index))


def queue_region(url: str, default: str) -> str:
    m = _SQS_HOST.match(url)
    return m[1] if m else default


Submit = Callable[[Job], Awaitable[bool]]  # queue a job for the workers; False: not queued


@dataclass
class _Drain:
    sqs: Any
    routes: dict[tuple[str, str], Source]
    cycle: Cycle
    submit: Submit
    inflight: dict[tuple[str, str], asyncio.Future[str]] = field(default_factory=dict)


class HintIntake:
    """The queue side of hint mode: when the full listing is due, which sources are listed
    anyway, and one drain of the queue per cycle (:meth:`drain`)."""

    def __init__(self, settings: Settings, state: State, clock: Callable[[], float]) -> None:
        cfg = settings.collect.notifications
        assert cfg is not None
        self.cfg = cfg
        self.shard = settings.shard
        self.state = state
        self.clock = clock
        self.region = cfg.region or queue_region(cfg.queue_url, settings.aws.region)
        self.queue_url = queue_for(cfg.queue_url, self.shard.ordinal)
        self.force_relist = False  # the queue failed: the next cycle lists everything
        self._visibility: dict[str, int] = {}
        self.max_in_flight = max(settings.collect.max_concurrency * 4, cfg.batch_size)

    # ------------------------------------------------------------------ the slow relist

    def relist_due(self) -> bool:
        if self.force_relist or self.cfg.relist_interval_secs == 0:
            return True
        at = self.state.meta.get(RELISTED_AT)
        return at is None or self.clock() - float(at) >= self.cfg.relist_interval_secs

    def relisted(self) -> None:
        self.state.meta.set(**{RELISTED_AT: repr(self.clock())})
        self.force_relist = False

    def must_list(self, src: Source) -> bool:
        """Listed in a hints-only cycle too: a bucket that does not notify, a stream whose
        history was never walked (a new source: its backfill does not wait for the relist)."""
        if self.cfg.buckets and src.bucket not in self.cfg.buckets:
            return True
        checkpoints = self.state.checkpoints
        return not all(checkpoints.walked(f"{src.bucket}/{s}") for s in stream_prefixes(src.prefix))

    # ------------------------------------------------------------------ the queue

    def read_urls(self) -> list[str]:
        urls = [self.queue_url]
        if self.cfg.shard_queue_url and self.shard.count > 1:
            own = queue_for(self.cfg.shard_queue_url, self.shard.ordinal)
            if own != self.queue_url:
                urls.append(own)
        return urls

    @staticmethod
    def routes(inventory: Inventory) -> dict[tuple[str, str], Source]:
        """(bucket, stream prefix) → its source, for the log, Insights and digest streams."""
        out: dict[tuple[str, str], Source] = {}
        for src in inventory.sources:
            for stream in stream_prefixes(src.prefix):
                out.setdefault((src.bucket, stream), src)
        return out

    def _failed(self, cycle: Cycle, url: str, exc: Exception, what: str) -> None:
        self.force_relist = True
        cycle.report.errors += 1
        log.warning(
            "hint.queue_failed",
            queue_url=url,
            stage=what,
            error_type=error_code(exc),
            reason=f"{error_message(exc)}; the next cycle lists every source",
        )

    async def _visibility_of(self, sqs: Any, url: str) -> int:
        if self.cfg.visibility_timeout_secs is not None:
            return self.cfg.visibility_timeout_secs
        if url not in self._visibility:
            resp = await sqs.get_queue_attributes(
                QueueUrl=url, AttributeNames=["VisibilityTimeout"]
            )
            got = resp.get("Attributes", {}).get("VisibilityTimeout")
            self._visibility[url] = int(got) if got else SQS_DEFAULT_VISIBILITY
        return self._visibility[url]

    async def drain(
        self,
        pool: ClientPool,
        sessions: SessionProvider,
        inventory: Inventory,
        cycle: Cycle,
        submit: Submit,
        *,
        stop: asyncio.Event,
    ) -> None:
        """Receive until the queue is empty (or ``max_messages_per_cycle``, or a stop), and
        wait until every received message is deleted or left."""
        try:
            session = await sessions.session_for(self.cfg.reader_account_id)
            sqs = await pool.get(session, "sqs", self.region)
        except Exception as exc:
            self._failed(cycle, self.queue_url, exc, "client")
            return
        d = _Drain(sqs, self.routes(inventory), cycle, submit)
        tasks: set[asyncio.Task[None]] = set()
        report = cycle.report
        try:
            for url in self.read_urls():
                try:
                    visibility = await self._visibility_of(sqs, url)
                except Exception as exc:
                    self._failed(cycle, url, exc, "GetQueueAttributes")
                    continue
                while not stop.is_set() and cycle.broken is None:
                    room = self.cfg.max_messages_per_cycle - report.hint_messages
                    if room <= 0:
                        break
                    while len(tasks) > self.max_in_flight - self.cfg.batch_size:
                        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                    kw: dict[str, Any] = {}
                    if self.cfg.visibility_timeout_secs is not None:
                        kw["VisibilityTimeout"] = visibility
                    try:
                        resp = await sqs.receive_message(
                            QueueUrl=url,
                            MaxNumberOfMessages=min(self.cfg.batch_size, room),
                            WaitTimeSeconds=self.cfg.wait_time_secs,
                            MessageAttributeNames=[FORWARDED],
                            **kw,
                        )
                    except Exception as exc:
                        self._failed(cycle, url, exc, "ReceiveMessage")
                        break
                    messages = resp.get("Messages") or []
                    if not messages:
                        break
                    for m in messages:
                        report.hint_messages += 1
                        task = asyncio.create_task(self._message(d, url, m, visibility))
                        tasks.add(task)
                        task.add_done_callback(tasks.discard)
            if tasks:
                await asyncio.gather(*tasks)
        finally:
            for task in list(tasks):
                task.cancel()

    async def _message(self, d: _Drain, url: str, m: dict[str, Any], visibility: int) -> None:
        heartbeat = asyncio.create_task(self._heartbeat(d, url, m["ReceiptHandle"], visibility))
        try:
            settled = await self._resolve(d, m)
        finally:
            heartbeat.cancel()
        report = d.cycle.report
        if not settled:
            report.hint_messages_left += 1
            log.info(
                "hint.left",
                message_id=m.get("MessageId"),
                reason="an object of it is not handled yet: SQS delivers it again (after "
                "maxReceiveCount the queue's redrive policy moves it to its dead-letter queue)",
            )
            return
        try:
            await d.sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])
            report.hint_messages_deleted += 1
        except Exception as exc:  # delivered again: the checkpoints then say it is handled
            log.warning(
                "hint.delete_failed",
                message_id=m.get("MessageId"),
                error_type=error_code(exc),
                reason=error_message(exc),
            )

    async def _heartbeat(self, d: _Drain, url: str, receipt: str, visibility: int) -> None:
        """While the message is in work: extend its visibility timeout at half of it."""
        while True:
            await asyncio.sleep(visibility / 2)
            try:
                await d.sqs.change_message_visibility(
                    QueueUrl=url, ReceiptHandle=receipt, VisibilityTimeout=visibility
                )
                d.cycle.report.hint_extensions += 1
            except Exception as exc:
                log.warning(
                    "hint.heartbeat_failed", error_type=error_code(exc), reason=error_message(exc)
                )

    async def _resolve(self, d: _Drain, m: dict[str, Any]) -> bool:
        """True when the message may be deleted."""
        report = d.cycle.report
        try:
            parsed = parse_body(m.get("Body") or "")
        except Unparseable as exc:
            report.hints_unparseable += 1
            log.warning(
                "hint.unparseable",
                message_id=m.get("MessageId"),
                reason=str(exc),
                body=str(m.get("Body"))[:200],
            )
            return True
        if parsed.ignored:
            report.hints_ignored += 1
            log.info("hint.ignored", message_id=m.get("MessageId"), reason=parsed.ignored)
            return True
        forwarded = FORWARDED in (m.get("MessageAttributes") or {})
        outcomes = await asyncio.gather(*(self._one(d, h, forwarded) for h in parsed.hints))
        return all(outcomes)

    async def _one(self, d: _Drain, hint: Hint, forwarded: bool) -> bool:
        report = d.cycle.report
        report.hints += 1
        where = locate(hint.key)
        if where is None:
            report.hints_ignored += 1
            log.warning(
                "hint.not_cloudtrail",
                bucket=hint.bucket,
                key=hint.key,
                reason="not a CloudTrail log, Insights or digest key",
            )
            return True
        if not owns(self.shard, where.account_id, where.region):
            return await self._foreign(d, hint, where, forwarded)
        src = d.routes.get((hint.bucket, where.stream))
        if src is None:
            report.hints_ignored += 1
            log.warning(
                "hint.unknown_source",
                bucket=hint.bucket,
                key=hint.key,
                account_id=where.account_id,
                region=where.region,
                reason="no discovered source covers this bucket and prefix",
            )
            return True
        if src.reader_account_id in d.cycle.failed:
            return False  # its role cannot be assumed now: delivered again later
        ref = (hint.bucket, hint.key)
        fut = d.inflight.get(ref)
        if fut is None:
            if self.state.checkpoints.is_handled(hint.bucket, where.day_prefix, hint.key):
                report.hints_handled_before += 1
                return True
            fut = asyncio.get_running_loop().create_future()
            d.inflight[ref] = fut

            def done(outcome: str, fut: asyncio.Future[str] = fut) -> None:
                if not fut.done():
                    fut.set_result(outcome)

            job = Job(
                src,
                f"{src.bucket}/{where.stream}",
                hint.key,
                where.day_prefix,
                classify(hint.key),
                hint.size,
                None,
                done=done,
            )
            try:
                queued = await d.submit(job)
            except StorageError:
                raise
            except Exception:
                queued = False
            if not queued:
                done("abandoned")
            else:
                report.hints_queued += 1
        return (await asyncio.shield(fut)) in SETTLED

    async def _foreign(self, d: _Drain, hint: Hint, where: Located, forwarded: bool) -> bool:
        report = d.cycle.report
        slot = slot_of(where.account_id, where.region, self.shard.slots)
        owner = shard_of(slot, self.shard.count)
        template = self.cfg.shard_queue_url
        if forwarded or template is None:
            report.hints_foreign_dropped += 1
            say = log.warning if forwarded else log.info
            say(
                "hint.foreign_dropped",
                bucket=hint.bucket,
                key=hint.key,
                account_id=where.account_id,
                region=where.region,
                owner=owner,
                reason="forwarded here by another shard, yet not this shard's (shard counts "
                "differ?)"
                if forwarded
                else "another shard's pair and no shard_queue_url: its owner reads its own copy",
            )
            return True
        try:
            await d.sqs.send_message(
                QueueUrl=queue_for(template, owner),
                MessageBody=s3_event_body(hint),
                MessageAttributes={
                    FORWARDED: {"DataType": "String", "StringValue": str(self.shard.ordinal)}
                },
            )
        except Exception as exc:
            log.warning(
                "hint.forward_failed",
                key=hint.key,
                owner=owner,
                error_type=error_code(exc),
                reason=error_message(exc),
            )
            return False
        report.hints_forwarded += 1
        return True
