"""Central key layout and deterministic bytes."""

from __future__ import annotations

import asyncio
import gzip

import orjson
import pytest

from aggregator.archive.codec import decode_records, encode_records
from aggregator.archive.store import Archive, KeyParts, central_key, object_id, parse_source_name
from aggregator.config import ArchiveSettings
from aggregator.ingest.collect import BadObject, ObjectKind, classify, decode_log, stream_prefixes


def test_parse_real_source_name() -> None:
    """The trailscraper sample's real object name parses into account, region and time."""
    parts = parse_source_name(
        "AWSLogs/111111111111/CloudTrail/eu-central-1/2017/12/11/"
        "111111111111_CloudTrail_eu-central-1_20171211T1505Z_A6kvhMoVeCsc7v8U.json.gz"
    )
    assert parts == KeyParts("111111111111", "eu-central-1", "20171211T1505Z", False)
    assert parse_source_name("AWSLogs/x/ConfigWritabilityCheckFile") is None


def test_central_key_is_standard_layout_and_depends_only_on_source() -> None:
    parts = KeyParts("111111111111", "us-east-1", "20240501T0905Z", False)
    k1 = central_key(
        "", parts, "org-bucket", "AWSLogs/o-1/111111111111/CloudTrail/us-east-1/x.json.gz"
    )
    k2 = central_key(
        "", parts, "org-bucket", "AWSLogs/o-1/111111111111/CloudTrail/us-east-1/x.json.gz"
    )
    k3 = central_key(
        "", parts, "acct-bucket", "AWSLogs/o-1/111111111111/CloudTrail/us-east-1/x.json.gz"
    )
    assert k1 == k2 != k3
    assert k1.startswith(
        "AWSLogs/111111111111/CloudTrail/us-east-1/2024/05/01/111111111111_CloudTrail_us-east-1_20240501T0905Z_"
    )
    assert parse_source_name(k1) == parts
    assert len(object_id("b", "k")) == 16


def test_encoding_is_deterministic_and_round_trips() -> None:
    recs = [{"eventID": str(i), "n": i} for i in range(100)]
    parts = [orjson.dumps(r) for r in recs]
    a = encode_records(parts, 1)
    assert a == encode_records(parts, 1)
    assert gzip.decompress(a).startswith(b'{"Records":[')
    assert decode_records(a) == recs


def test_classify_and_streams() -> None:
    base = "AWSLogs/o-abc/111111111111/CloudTrail/us-east-1/"
    assert stream_prefixes(base) == [
        base,
        "AWSLogs/o-abc/111111111111/CloudTrail-Insight/us-east-1/",
        "AWSLogs/o-abc/111111111111/CloudTrail-Digest/us-east-1/",
    ]
    assert (
        classify(base + "2024/01/01/111111111111_CloudTrail_us-east-1_20240101T0000Z_a.json.gz")
        is ObjectKind.LOG
    )
    assert (
        classify("AWSLogs/1/CloudTrail-Digest/us-east-1/2024/01/01/1_CloudTrail-Digest_x.json.gz")
        is ObjectKind.DIGEST
    )
    assert (
        classify("AWSLogs/1/CloudTrail-Insight/us-east-1/2024/01/01/1_CloudTrail-Insight_x.json.gz")
        is ObjectKind.INSIGHT
    )
    assert classify(base + "ConfigWritabilityCheckFile") is ObjectKind.OTHER


def test_decode_log_rejects_gzip_bomb() -> None:
    bomb = gzip.compress(b'{"Records":[' + b" " * 5_000_000 + b"]}")
    with pytest.raises(BadObject, match="too large"):
        decode_log(bomb, max_object_bytes=1_000_000, max_record_bytes=1024)


def test_decode_real_trailscraper_object(testdata) -> None:  # type: ignore[no-untyped-def]
    """A real CloudTrail object (gzip, as delivered) decodes with one key per record."""
    path = next((testdata / "trailscraper").glob("*.json.gz"))
    decoded = decode_log(path.read_bytes(), max_object_bytes=1 << 20, max_record_bytes=1 << 20)
    assert len(decoded.keys) == 2
    assert len(set(decoded.keys)) == 2


def test_archive_takes_a_client_or_a_connect_not_both() -> None:
    settings = ArchiveSettings(bucket="central")

    async def connect() -> object:
        return object()

    for args, kw in (((), {}), ((object(),), {"connect": connect})):
        with pytest.raises(ValueError, match="exactly one"):
            Archive(settings, *args, **kw)


async def test_archive_connects_once_for_concurrent_first_reads_and_again_after_a_failure() -> None:
    """Eight first uses at once share one connect; a connect that failed is tried again on the
    next use, and the client made then is kept."""
    calls: list[int] = []
    fail = [True]

    async def connect() -> object:
        calls.append(1)
        await asyncio.sleep(0.01)  # making a client waits (credentials, STS)
        if fail[0]:
            raise PermissionError("AccessDenied")
        return object()

    archive = Archive(ArchiveSettings(bucket="central"), connect=connect)
    got = await asyncio.gather(*(archive.client() for _ in range(8)), return_exceptions=True)
    assert len(calls) == 1 + 7  # each waiting use retries once the first failed
    assert all(isinstance(g, PermissionError) for g in got)
    fail[0] = False
    calls.clear()
    clients = await asyncio.gather(*(archive.client() for _ in range(8)))
    assert len(calls) == 1
    assert len({id(c) for c in clients}) == 1
    assert await archive.client() is clients[0]


async def test_check_writable_names_the_bucket_and_the_permission_and_writes_nothing(
    moto: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The start-of-cycle check: a writable bucket passes without any object written; one the
    identity may not write fails once, naming the bucket and the permission to grant."""
    import boto3
    from orgseed import hub_user, iam_enforced, make_settings

    from aggregator.archive.store import ArchiveUnavailable, check_writable
    from aggregator.aws.clients import Aws, ClientPool
    from aggregator.aws.credentials import CredentialBroker

    boto3.client("s3", region_name="us-east-1").create_bucket(Bucket="central-archive")
    settings = make_settings(moto)

    async def check() -> None:
        aws = Aws(settings.aws)
        async with ClientPool(aws) as pool:
            await check_writable(settings, CredentialBroker(settings, aws), pool)

    await check()
    listed = boto3.client("s3", region_name="us-east-1").list_objects_v2(Bucket="central-archive")
    assert listed["KeyCount"] == 0

    key_id, secret = hub_user(
        [{"Effect": "Allow", "Action": ["s3:ListBucket", "s3:GetObject"], "Resource": "*"}]
    )
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    monkeypatch.delenv("AWS_SESSION_TOKEN")
    with iam_enforced(), pytest.raises(ArchiveUnavailable) as info:
        await check()
    assert info.value.what.startswith(
        "central archive s3://central-archive cannot be written: PutObject denied: AccessDenied"
    )
    assert info.value.hint.startswith(
        "grant s3:PutObject on arn:aws:s3:::central-archive/* to the base identity"
    )


async def test_children_lists_one_level_over_every_page(moto: str) -> None:
    """Archive.children: the common prefixes and the objects directly under a prefix, in key
    order, over more than one page (moto pages at 1000), nothing deeper."""
    import aioboto3
    import boto3

    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket="central")
    for i in range(1003):
        s3.put_object(Bucket="central", Key=f"AWSLogs/d{i:04d}/x", Body=b"")
    s3.put_object(Bucket="central", Key="AWSLogs/top.txt", Body=b"abc")

    async with aioboto3.Session().client("s3", region_name="us-east-1") as c:
        archive = Archive(ArchiveSettings(bucket="central"), c)
        dirs, objs = await archive.children("AWSLogs/")
        inner = await archive.children("AWSLogs/d0007/")

    assert dirs == [f"AWSLogs/d{i:04d}/" for i in range(1003)]
    assert [(o.key, o.size) for o in objs] == [("AWSLogs/top.txt", 3)]
    assert inner[0] == []
    assert [o.key for o in inner[1]] == ["AWSLogs/d0007/x"]
