"""Hint mode (collect.notifications) against moto's S3 and SQS over real HTTP: the three body
shapes, garbage, exactly once with duplicated, re-ordered and dropped hints, foreign slots
between two shards, the visibility heartbeat, the dead-letter queue, and the LIST count."""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

import aioboto3
import pytest
from archivecheck import archived, assert_exactly_once
from awsfixtures import StsSessions, client, log_key, log_object, make_source, record

from aggregator.aws.clients import Aws
from aggregator.aws.inventory import Account, Inventory, Source
from aggregator.aws.slots import for_shard, owns
from aggregator.config import Settings, parse_settings
from aggregator.ingest.cycle import Ingestor
from aggregator.ingest.hints import Unparseable, locate, parse_body, s3_event_body
from aggregator.ingest.work import CycleReport, Job
from aggregator.state import State

ORG = "o-abcdefghij"
NOW = 1714564800.0  # 2024-05-01T12:00:00Z
A1, A2, A3, A4 = "111111111111", "222222222222", "333333333333", "444444444444"
TRAIL = "org-trail"

# ---------------------------------------------------------------- bodies


def s3_event(bucket: str, key: str, size: int = 100, name: str = "ObjectCreated:Put") -> str:
    """What S3 puts in the queue: the key URL-encoded, ``+`` for a space."""
    rec = {
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "awsRegion": "us-east-1",
        "eventName": name,
        "s3": {
            "s3SchemaVersion": "1.0",
            "bucket": {"name": bucket, "arn": f"arn:aws:s3:::{bucket}"},
            "object": {"key": quote_plus(key, safe="/"), "size": size},
        },
    }
    return json.dumps({"Records": [rec]})


def sns_wrap(body: str) -> str:
    return json.dumps(
        {"Type": "Notification", "MessageId": "m-1", "TopicArn": "arn:t", "Message": body}
    )


def eventbridge(bucket: str, key: str, detail_type: str = "Object Created") -> str:
    return json.dumps(
        {
            "version": "0",
            "source": "aws.s3",
            "detail-type": detail_type,
            "detail": {"bucket": {"name": bucket}, "object": {"key": key, "size": 7}},
        }
    )


TEST_EVENT = json.dumps(
    {"Service": "Amazon S3", "Event": "s3:TestEvent", "Time": "2024-05-01T12:00:00Z", "Bucket": "b"}
)


def test_raw_s3_event_keys_are_url_decoded() -> None:
    key = "p r/AWSLogs/111111111111/CloudTrail/us-east-1/2024/05/01/a+b c.json.gz"
    (hint,) = parse_body(s3_event("bkt", key)).hints
    assert (hint.bucket, hint.key, hint.size) == ("bkt", key, 100)
    # S3 writes a space as "+" and a literal plus as %2B
    body = json.dumps(
        {"Records": [{"s3": {"bucket": {"name": "b"}, "object": {"key": "a+b%2Bc%20d"}}}]}
    )
    assert parse_body(body).hints[0].key == "a b+c d"


def test_sns_wrapped_and_eventbridge_bodies() -> None:
    key = "AWSLogs/111111111111/CloudTrail/us-east-1/2024/05/01/x+y.json.gz"
    assert parse_body(sns_wrap(s3_event("b", key))).hints[0].key == key
    # EventBridge keys are not encoded: a "+" stays a "+"
    (hint,) = parse_body(eventbridge("b", key)).hints
    assert (hint.bucket, hint.key) == ("b", key)
    assert parse_body(eventbridge("b", key, "Object Deleted")).hints == []


def test_test_events_and_other_event_types_are_ignored_not_unparseable() -> None:
    assert parse_body(TEST_EVENT).ignored == "s3:TestEvent"
    assert parse_body(sns_wrap(TEST_EVENT)).ignored == "s3:TestEvent"
    removed = parse_body(s3_event("b", "k", name="ObjectRemoved:Delete"))
    assert removed.hints == []
    assert removed.ignored


@pytest.mark.parametrize(
    "body",
    [
        "not json at all",
        "",
        "[1, 2]",
        '"a string"',
        "{}",
        '{"Records": []}',
        '{"Records": "x"}',
        '{"Records": [42]}',
        '{"Records": [{"s3": {"bucket": {"name": "b"}}}]}',  # no object key
        '{"Records": [{"s3": {"bucket": {}, "object": {"key": "k"}}}]}',  # no bucket name
        '{"Records": [{"s3": {"bucket": {"name": "b"}, "object": {"key": 5}}}]}',
        '{"Type": "Notification"}',  # SNS without a Message
        '{"Type": "Notification", "Message": "{broken"}',
        '{"source": "aws.ec2", "detail-type": "Object Created", "detail": {}}',
        '{"source": "aws.s3", "detail-type": "Object Created", "detail": {"bucket": {}}}',
    ],
)
def test_garbage_is_unparseable(body: str) -> None:
    with pytest.raises(Unparseable):
        parse_body(body)


def test_locate_reads_account_and_region_from_the_layout() -> None:
    org = f"logs/AWSLogs/{ORG}/{A1}/CloudTrail/eu-west-1/2024/05/01/{A1}_CloudTrail_x.json.gz"
    where = locate(org)
    assert where is not None
    assert (where.account_id, where.region) == (A1, "eu-west-1")
    assert where.stream == f"logs/AWSLogs/{ORG}/{A1}/CloudTrail/eu-west-1/"
    assert where.day_prefix == where.stream + "2024/05/01/"
    digest = f"AWSLogs/{A2}/CloudTrail-Digest/us-east-1/2024/05/01/d.json.gz"
    assert locate(digest) is not None
    for other in ("AWSLogs/123/CloudTrail/us-east-1/2024/05/01/x", "random/file.txt", ""):
        assert locate(other) is None


def test_forwarded_body_round_trips() -> None:
    from aggregator.ingest.hints import Hint

    hint = Hint("b", "AWSLogs/111111111111/CloudTrail/us-east-1/2024/05/01/a b+c.json.gz", 9)
    assert parse_body(s3_event_body(hint)).hints == [hint]


# ---------------------------------------------------------------- moto


def settings(tmp_path: Path, queue_url: str | None, name: str = "state", **notif: Any) -> Settings:
    shard = notif.pop("_shard", None)
    collect: dict[str, Any] = {"max_concurrency": 4, "relist_days": 2}
    if queue_url is not None:
        collect["notifications"] = {"queue_url": queue_url, "wait_time_secs": 0, **notif}
    return parse_settings(
        {
            "state": {"path": str(tmp_path / f"{name}.db")},
            "archive": {"bucket": "central"},
            "collect": collect,
            **({"shard": shard} if shard else {}),
        }
    )


def inventory(*sources: Source) -> Inventory:
    accounts = sorted({s.account_id for s in sources})
    return Inventory(
        accounts=[Account(a) for a in accounts],
        regions={a: sorted({s.region for s in sources if s.account_id == a}) for a in accounts},
        trails=[],
        sources=list(sources),
        failures=[],
    )


class CountingSessions(StsSessions):
    """Counts the HTTP requests each session's clients send, by service and operation
    (botocore's ``before-send``: once per request on the wire, retries included)."""

    def __init__(self) -> None:
        super().__init__()
        self.requests: dict[str, int] = {}

    async def session_for(self, account_id: str | None) -> aioboto3.Session:
        fresh = account_id not in self._cache
        session = await super().session_for(account_id)
        if fresh:
            session.events.register("before-send", self._count)
        return session

    def _count(self, request: Any, **kw: Any) -> None:
        name = kw.get("event_name", "")  # before-send.<service>.<Operation>
        op = ".".join(name.split(".")[1:3])
        self.requests[op] = self.requests.get(op, 0) + 1

    def count(self, op: str) -> int:
        return self.requests.get(op, 0)


class Rig:
    """One ingestor over one state, run cycle after cycle on a clock the test moves (what the
    daemon does)."""

    def __init__(
        self,
        cfg: Settings,
        inv: Inventory,
        *,
        sessions: StsSessions | None = None,
        cls: type[Ingestor] = Ingestor,
    ) -> None:
        self.now = NOW
        self.inv = inv
        self.state = State(cfg.state.path)
        self.sessions = sessions or StsSessions()
        self.ing = cls(cfg, self.state, self.sessions, Aws(cfg.aws), clock=lambda: self.now)

    async def cycle(self, advance: float = 0) -> CycleReport:
        self.now += advance
        return await self.ing.run(self.inv)

    def close(self) -> None:
        self.state.close()


@pytest.fixture
def world(moto: str) -> None:
    client("s3").create_bucket(Bucket="central")
    client("s3").create_bucket(Bucket=TRAIL)


def reset_moto() -> None:
    req = urllib.request.Request(f"{os.environ['AWS_ENDPOINT_URL']}/moto-api/reset", method="POST")
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert resp.status == 200
    client("s3").create_bucket(Bucket="central")
    client("s3").create_bucket(Bucket=TRAIL)


def queue(name: str, *, visibility: int = 30, dlq: str | None = None, receives: int = 2) -> str:
    attrs = {"VisibilityTimeout": str(visibility)}
    if dlq is not None:
        arn = client("sqs").get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])
        attrs["RedrivePolicy"] = json.dumps(
            {"deadLetterTargetArn": arn["Attributes"]["QueueArn"], "maxReceiveCount": receives}
        )
    url: str = client("sqs").create_queue(QueueName=name, Attributes=attrs)["QueueUrl"]
    return url


def send(url: str, *bodies: str) -> None:
    for body in bodies:
        client("sqs").send_message(QueueUrl=url, MessageBody=body)


def depth(url: str) -> int:
    attrs = client("sqs").get_queue_attributes(
        QueueUrl=url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return int(attrs["ApproximateNumberOfMessages"]) + int(
        attrs["ApproximateNumberOfMessagesNotVisible"]
    )


def plant(
    src: Source, n: int, tag: str, minute0: int = 0
) -> tuple[list[str], list[dict[str, Any]]]:
    """``n`` log objects of 3 events each in the source's stream (2024-05-01)."""
    keys, events = [], []
    for i in range(n):
        m = minute0 + i
        recs = [
            record(
                f"{tag}-{i}-{j}",
                src.account_id,
                src.region,
                time=f"2024-05-01T{10 + m // 60:02d}:{m % 60:02d}:{j:02d}Z",
            )
            for j in range(3)
        ]
        ts = f"20240501T{10 + m // 60:02d}{m % 60:02d}Z"
        key = log_key(src.prefix, src.account_id, src.region, ts, f"{tag}{i:04d}x")
        client("s3").put_object(Bucket=src.bucket, Key=key, Body=log_object(recs))
        keys.append(key)
        events.extend(recs)
    return keys, events


def org_source(account: str, region: str = "us-east-1") -> Source:
    return make_source(TRAIL, account, region, org_id=ORG)


async def test_hints_dup_reordered_dropped_garbage_archive_exactly_once(
    world: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Hints twice over, in reverse order, 30% dropped, with garbage and test events mixed in:
    the hints-only cycle archives exactly the hinted objects (the dropped ones are not listed
    yet), every message is deleted, and the hourly relist catches the dropped ones."""
    url = queue("hints")
    srcs = [org_source(A1), org_source(A2, "eu-west-1")]
    rig = Rig(settings(tmp_path, url), inventory(*srcs))
    try:
        first = await rig.cycle()  # a fresh state lists everything (empty buckets)
        assert first.relisted is True
        assert first.objects == 0

        rng = random.Random(14)
        keys, events = [], []
        events_of: dict[str, list[dict[str, Any]]] = {}
        for n, src in enumerate(srcs):
            k, e = plant(src, 10, f"s{n}")
            keys += k
            events += e
            for i, key in enumerate(k):
                events_of[key] = e[3 * i : 3 * i + 3]
        dropped = set(rng.sample(keys, k=len(keys) * 3 // 10))
        hinted = [k for k in keys if k not in dropped]
        bodies = []
        for i, key in enumerate(reversed(hinted)):
            shape = (s3_event(TRAIL, key), sns_wrap(s3_event(TRAIL, key)), eventbridge(TRAIL, key))
            bodies += [shape[i % 3], shape[(i + 1) % 3]]  # each hint twice, two shapes
        garbage = ["{nope", "[]", '{"Records": [{"s3": {}}}]}', TEST_EVENT]
        bodies[3:3] = garbage[:2]
        bodies += garbage[2:]
        bodies.append(s3_event(TRAIL, "AWSLogs/readme.txt"))  # not a CloudTrail key
        bodies.append(s3_event("other-bucket", keys[0]))  # no known source covers it
        send(url, *bodies)

        second = await rig.cycle(advance=300)
        assert second.relisted is False
        assert second.hint_messages == len(bodies)
        assert second.hints_unparseable == 2 + 1
        assert second.hint_messages_deleted == len(bodies)
        assert second.hints_queued == len(hinted)  # each key once, however often hinted
        assert depth(url) == 0
        got = [e["eventID"] for e in archived()]
        want = [e["eventID"] for k in hinted for e in events_of[k]]
        assert sorted(got) == sorted(want)  # exactly the hinted ones: the dropped wait
        err = capsys.readouterr().err
        assert err.count('"hint.unparseable"') == 3
        assert '"hint.not_cloudtrail"' in err
        assert '"hint.unknown_source"' in err

        third = await rig.cycle(advance=300)  # hints only, nothing new
        assert third.relisted is False
        assert third.objects == 0

        relist = await rig.cycle(advance=3600)
        assert relist.relisted is True
        assert relist.objects == len(dropped)
        assert_exactly_once(events)

        send(url, *(s3_event(TRAIL, k) for k in keys))  # stale hints of everything
        stale = await rig.cycle(advance=60)
        assert stale.hints_handled_before == len(keys)
        assert stale.objects == 0
        assert depth(url) == 0
        assert_exactly_once(events)
    finally:
        rig.close()


async def test_real_s3_notifications_reach_the_queue_and_are_archived(
    world: None, tmp_path: Path
) -> None:
    """moto's own S3 → SQS notifications (URL-encoded keys, the s3:TestEvent on setup)."""
    url = queue("s3-hints")
    arn = client("sqs").get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
    client("s3").put_bucket_notification_configuration(
        Bucket=TRAIL,
        NotificationConfiguration={
            "QueueConfigurations": [
                {"QueueArn": arn["Attributes"]["QueueArn"], "Events": ["s3:ObjectCreated:*"]}
            ]
        },
    )
    src = make_source(TRAIL, A1, org_id=ORG)
    rig = Rig(settings(tmp_path, url), inventory(src))
    try:
        await rig.cycle()  # relist; drains the test event too
        _, events = plant(src, 4, "n")
        report = await rig.cycle(advance=60)
        assert report.relisted is False
        assert report.hints_queued == 4
        assert report.objects == 4
        assert_exactly_once(events)
        assert depth(url) == 0
    finally:
        rig.close()


def _pairs_by_shard() -> tuple[list[Source], list[Source]]:
    shard0 = parse_settings(
        {"archive": {"bucket": "central"}, "shard": {"count": 2, "index": 0}}
    ).shard
    mine: list[Source] = []
    theirs: list[Source] = []
    for account in (A1, A2, A3, A4):
        for region in ("us-east-1", "eu-west-1"):
            (mine if owns(shard0, account, region) else theirs).append(org_source(account, region))
    assert mine
    assert theirs
    return mine, theirs


async def test_two_shards_each_archive_their_own_and_forward_the_rest(
    world: None, tmp_path: Path
) -> None:
    """One intake queue read by both shards; a hint of the other shard's pair is sent to that
    shard's own queue and deleted; each shard archives only its own pairs."""
    intake = queue("intake")
    q0, q1 = queue("hints-0"), queue("hints-1")
    template = q0[: -len("0")] + "{index}"
    mine, theirs = _pairs_by_shard()
    full = inventory(*mine, *theirs)
    rigs = []
    for index in (0, 1):
        cfg = settings(
            tmp_path,
            intake,
            name=f"s{index}",
            shard_queue_url=template,
            _shard={"count": 2, "index": index},
        )
        rigs.append(Rig(cfg, for_shard(full, cfg.shard)))
    try:
        for rig in rigs:
            await rig.cycle()  # the first cycles list (empty buckets)
        keys, events = [], []
        for n, src in enumerate([*mine, *theirs]):
            k, e = plant(src, 2, f"p{n}")
            keys += k
            events += e
        send(intake, *(s3_event(TRAIL, k) for k in keys), "garbage")

        r0 = await rigs[0].cycle(advance=60)
        assert r0.relisted is False
        assert r0.hints_forwarded == 2 * len(theirs)
        assert r0.objects == 2 * len(mine)
        assert depth(intake) == 0
        assert depth(q1) == 2 * len(theirs)
        assert depth(q0) == 0
        accounts_regions = {(e["recipientAccountId"], e["awsRegion"]) for e in archived()}
        assert accounts_regions == {(s.account_id, s.region) for s in mine}

        r1 = await rigs[1].cycle(advance=60)
        assert r1.relisted is False
        assert r1.objects == 2 * len(theirs)
        assert r1.hints_forwarded == 0
        assert depth(q1) == 0
        assert_exactly_once(events)
    finally:
        for rig in rigs:
            rig.close()


class SlowOnce(Ingestor):
    """Holds one object for ``delay`` seconds after its GET (a slow object)."""

    delay = 5.0
    slow_key = ""

    async def fetched(self, job: Job, data: bytes) -> None:
        if job.key == self.slow_key:
            await asyncio.sleep(self.delay)


async def test_a_slow_object_keeps_its_message_invisible(world: None, tmp_path: Path) -> None:
    """Visibility timeout 2 s, an object in work for 5 s: the heartbeat extends the message,
    so another consumer polling all along never receives it; it is deleted once committed."""
    url = queue("slow", visibility=2)
    src = org_source(A1)
    rig = Rig(settings(tmp_path, url), inventory(src), cls=SlowOnce)
    try:
        await rig.cycle()
        keys, events = plant(src, 1, "slow")
        SlowOnce.slow_key = keys[0]
        send(url, s3_event(TRAIL, keys[0]))
        stolen: list[Any] = []
        done = asyncio.Event()

        async def other_consumer() -> None:
            await asyncio.sleep(0.5)
            while not done.is_set():
                got = await asyncio.to_thread(
                    client("sqs").receive_message, QueueUrl=url, WaitTimeSeconds=0
                )
                stolen.extend(got.get("Messages", []))
                await asyncio.sleep(0.3)

        watcher = asyncio.create_task(other_consumer())
        started = time.monotonic()
        report = await rig.cycle(advance=60)
        done.set()
        await watcher
        assert time.monotonic() - started >= SlowOnce.delay
        assert stolen == []
        assert report.hint_extensions >= 2
        assert report.hint_messages_deleted == 1
        assert depth(url) == 0
        assert_exactly_once(events)
    finally:
        rig.close()


async def test_without_a_heartbeat_moto_does_redeliver(world: None) -> None:
    """The control for the test above: a message not extended comes back after 2 s."""
    url = queue("control", visibility=2)
    send(url, "x")
    sqs = client("sqs")
    assert len(sqs.receive_message(QueueUrl=url)["Messages"]) == 1
    assert "Messages" not in sqs.receive_message(QueueUrl=url)
    await asyncio.sleep(2.5)
    assert len(sqs.receive_message(QueueUrl=url)["Messages"]) == 1


class Failing(Ingestor):
    """Every GET of ``bad_key`` fails like a throttled S3 would, after the fetch."""

    bad_key = ""

    async def fetched(self, job: Job, data: bytes) -> None:
        if job.key == self.bad_key:
            raise ConnectionError("SlowDown: injected transient failure")


async def test_a_failing_object_is_redelivered_then_dead_lettered(
    world: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """maxReceiveCount 2: the message of an object that keeps failing is left twice (not
    deleted), then the queue's redrive policy moves it to the DLQ; the good one is archived."""
    dlq = queue("hints-dlq")
    url = queue("hints-main", visibility=1, dlq=dlq, receives=2)
    src = org_source(A1)
    rig = Rig(settings(tmp_path, url), inventory(src), cls=Failing)
    try:
        await rig.cycle()
        keys, events = plant(src, 2, "f")
        Failing.bad_key = keys[1]
        send(url, s3_event(TRAIL, keys[0]), s3_event(TRAIL, keys[1]))
        r1 = await rig.cycle(advance=60)
        assert (r1.hint_messages, r1.hint_messages_deleted, r1.hint_messages_left) == (2, 1, 1)
        assert r1.errors == 1
        assert r1.objects == 1
        await asyncio.sleep(1.5)
        r2 = await rig.cycle(advance=60)
        assert (r2.hint_messages, r2.hint_messages_left) == (1, 1)
        await asyncio.sleep(1.5)
        r3 = await rig.cycle(advance=60)
        assert r3.hint_messages == 0  # moved to the DLQ on the third receive
        assert depth(url) == 0
        dead = client("sqs").receive_message(QueueUrl=dlq, AttributeNames=["All"])["Messages"]
        assert len(dead) == 1
        assert keys[1].rsplit("/", 1)[1] in dead[0]["Body"]
        assert capsys.readouterr().err.count('"hint.left"') == 2
        assert {e["eventID"] for e in archived()} == {f"f-0-{j}" for j in range(3)}
        # the listing is still the truth: the hourly relist tries it again
        Failing.bad_key = ""
        relist = await rig.cycle(advance=3600)
        assert relist.relisted is True
        assert relist.objects == 1
        assert_exactly_once(events)
    finally:
        rig.close()


async def test_hints_make_a_tenth_of_the_list_calls_of_polling(
    world: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Twelve cycles five minutes apart after a first one, new objects every cycle: polling
    alone LISTs every stream's recent days every cycle; hint mode LISTs only at the hourly
    relist. Counted: ListObjectsV2 requests sent (botocore before-send, retries included)."""
    srcs = [org_source(a) for a in (A1, A2, A3)]
    counts = {}
    for mode in ("poll", "hints"):
        reset_moto()  # each mode starts from empty buckets and an empty archive
        qurl = queue("count") if mode == "hints" else None
        sessions = CountingSessions()
        rig = Rig(settings(tmp_path, qurl, name=mode), inventory(*srcs), sessions=sessions)
        try:
            await rig.cycle()
            base = sessions.count("s3.ListObjectsV2")
            events: list[dict[str, Any]] = []
            for c in range(12):
                for n, src in enumerate(srcs):
                    k, e = plant(src, 1, f"{mode}{c}{n}", minute0=c * 4 + n)
                    events += e
                    if qurl:
                        send(qurl, *(s3_event(TRAIL, key) for key in k))
                await rig.cycle(advance=300)
            counts[mode] = sessions.count("s3.ListObjectsV2") - base
            archived_ids = {e["eventID"] for e in archived()}
            assert {e["eventID"] for e in events} <= archived_ids  # nothing waits for a relist
        finally:
            rig.close()
    capsys.readouterr()
    print(f"ListObjectsV2 over 12 cycles: polling {counts['poll']}, hints {counts['hints']}")
    assert counts["poll"] > 0
    assert counts["hints"] * 10 < counts["poll"], counts
