"""Digest validation against real objects in moto S3, with digests signed by our own RSA keys."""

from __future__ import annotations

import gzip
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aioboto3
import orjson
import pytest
from botocore.stub import Stubber
from cryptography.hazmat.primitives import serialization
from hypothesis import given, settings
from hypothesis import strategies as st
from trailgen import ACCOUNT, REGION, new_key, write_trail

from aggregator.archive.signing import (
    DigestFormatError,
    public_key_fingerprint,
    rsa_signer,
    signing_string,
    verify_signature,
)
from aggregator.integrity.digest import build_digest, parse_digest
from aggregator.integrity.public_keys import PublicKeyStore, cloudtrail_key_lister
from aggregator.integrity.validator import DigestStatus, DigestValidator


@pytest.fixture
async def s3(moto: str) -> AsyncIterator[Any]:
    async with aioboto3.Session().client("s3", region_name="us-east-1", endpoint_url=moto) as c:
        yield c


KEY = new_key()
OTHER_KEY = new_key()


def store_with(key: Any = KEY, fingerprint: str | None = None) -> PublicKeyStore:
    store = PublicKeyStore()
    store.add(key.public_key(), fingerprint)
    return store


async def test_valid_chain_validates_every_digest_and_log(s3: Any, testdata: Path) -> None:
    trail = await write_trail(s3, testdata, key=KEY)
    report = await DigestValidator(s3, store_with()).validate(trail.bucket, trail.prefix)
    assert [r.status for r in report.digests] == [DigestStatus.VALID] * 3
    assert all(r.logs_valid == 2 and r.log_files == 2 for r in report.digests)
    assert report.not_in_any_digest == []
    assert set(report.expected) == set(trail.logs)
    assert report.ok
    assert report.digests[0].account_id == ACCOUNT
    assert report.digests[0].region == REGION


async def test_tampered_log_is_reported_modified(s3: Any, testdata: Path) -> None:
    trail = await write_trail(s3, testdata, key=KEY)
    victim = trail.digest_hours[1][0]
    doc = orjson.loads(gzip.decompress(trail.logs[victim]))
    doc["Records"][0]["sourceIPAddress"] = "198.51.100.66"
    await s3.put_object(Bucket=trail.bucket, Key=victim, Body=gzip.compress(orjson.dumps(doc)))
    report = await DigestValidator(s3, store_with()).validate(trail.bucket, trail.prefix)
    statuses = [r.status for r in report.digests]
    assert statuses == [DigestStatus.VALID, DigestStatus.LOG_FILE_MODIFIED, DigestStatus.VALID]
    assert report.digests[1].modified == [victim]
    assert not report.ok


async def test_recompressed_but_identical_log_is_still_valid(s3: Any, testdata: Path) -> None:
    """CloudTrail hashes the uncompressed content: a different gzip of the same bytes is fine."""
    trail = await write_trail(s3, testdata, key=KEY, hours=1)
    k = trail.digest_hours[0][0]
    await s3.put_object(
        Bucket=trail.bucket,
        Key=k,
        Body=gzip.compress(gzip.decompress(trail.logs[k]), compresslevel=1, mtime=12345),
    )
    report = await DigestValidator(s3, store_with()).validate(trail.bucket, trail.prefix)
    assert report.digests[0].status is DigestStatus.VALID


async def test_deleted_log_is_reported_missing(s3: Any, testdata: Path) -> None:
    trail = await write_trail(s3, testdata, key=KEY)
    victim = trail.digest_hours[2][1]
    await s3.delete_object(Bucket=trail.bucket, Key=victim)
    report = await DigestValidator(s3, store_with()).validate(trail.bucket, trail.prefix)
    assert report.digests[2].status is DigestStatus.LOG_FILE_MISSING
    assert report.digests[2].missing == [victim]
    assert report.counts()["log_file_missing"] == 1
    assert report.counts()["valid"] == 2


async def test_deleted_digest_breaks_the_chain(s3: Any, testdata: Path) -> None:
    trail = await write_trail(s3, testdata, key=KEY)
    await s3.delete_object(Bucket=trail.bucket, Key=trail.digests[1].key)
    report = await DigestValidator(s3, store_with()).validate(trail.bucket, trail.prefix)
    by_key = {r.key: r for r in report.digests}
    assert by_key[trail.digests[2].key].status is DigestStatus.CHAIN_BROKEN
    assert "previous digest missing" in by_key[trail.digests[2].key].details[0]
    assert by_key[trail.digests[0].key].status is DigestStatus.VALID
    # the two logs only the deleted digest listed are now in no digest
    assert report.not_in_any_digest == sorted(trail.digest_hours[1])


async def test_replaced_digest_is_caught_by_signature_and_chain(s3: Any, testdata: Path) -> None:
    """An attacker who re-signs a digest with their own key (same fingerprint) fails the
    signature, and the next digest's previousDigestSignature/hash no longer match."""
    trail = await write_trail(s3, testdata, key=KEY)
    mid = trail.digests[1]
    forged_doc = dict(mid.doc, logFiles=mid.doc["logFiles"][:1])  # hide one log file
    raw, meta, _ = await build_digest(
        bucket=mid.bucket,
        key=mid.key,
        account_id=ACCOUNT,
        start=datetime.fromisoformat(mid.start_time.replace("Z", "+00:00")),
        end=datetime.fromisoformat(mid.end_time.replace("Z", "+00:00")),
        log_files=forged_doc["logFiles"],
        fingerprint=mid.fingerprint,
        signer=rsa_signer(OTHER_KEY),
        previous=trail.digests[0],
    )
    await s3.put_object(Bucket=mid.bucket, Key=mid.key, Body=raw, Metadata=meta)
    report = await DigestValidator(s3, store_with()).validate(trail.bucket, trail.prefix)
    assert [r.status for r in report.digests] == [
        DigestStatus.VALID,
        DigestStatus.SIGNATURE_INVALID,
        DigestStatus.CHAIN_BROKEN,
    ]
    assert report.not_in_any_digest == [trail.digest_hours[1][1]]  # the file it hid
    assert trail.digest_hours[1][1] not in report.expected


async def test_edited_digest_body_fails_signature(s3: Any, testdata: Path) -> None:
    trail = await write_trail(s3, testdata, key=KEY, hours=2)
    dg = trail.digests[0]
    doc = dict(dg.doc, newestEventTime="2030-01-01T00:00:00Z")
    head = await s3.head_object(Bucket=dg.bucket, Key=dg.key)
    await s3.put_object(
        Bucket=dg.bucket,
        Key=dg.key,
        Body=gzip.compress(orjson.dumps(doc)),
        Metadata=head["Metadata"],
    )
    report = await DigestValidator(s3, store_with()).validate(trail.bucket, trail.prefix)
    assert report.digests[0].status is DigestStatus.SIGNATURE_INVALID
    # and the next one's previousDigestHashValue no longer matches
    assert report.digests[1].status is DigestStatus.CHAIN_BROKEN


async def test_wrong_key_fails_signature(s3: Any, testdata: Path) -> None:
    fp = public_key_fingerprint(KEY.public_key())
    trail = await write_trail(s3, testdata, key=KEY, hours=2)
    wrong = store_with(OTHER_KEY, fingerprint=fp)  # right fingerprint, wrong key
    report = await DigestValidator(s3, wrong).validate(trail.bucket, trail.prefix)
    assert {r.status for r in report.digests} == {DigestStatus.SIGNATURE_INVALID}
    unknown = await DigestValidator(s3, store_with(OTHER_KEY)).validate(trail.bucket, trail.prefix)
    assert all("not found" in r.details[0] for r in unknown.digests)


async def test_log_not_in_any_digest(s3: Any, testdata: Path) -> None:
    trail = await write_trail(s3, testdata, key=KEY)
    extra = trail.digest_hours[1][0].replace("h1f0", "sneaky")
    await s3.put_object(Bucket=trail.bucket, Key=extra, Body=trail.logs[trail.digest_hours[1][0]])
    report = await DigestValidator(s3, store_with()).validate(trail.bucket, trail.prefix)
    assert report.not_in_any_digest == [extra]
    assert all(r.status is DigestStatus.VALID for r in report.digests)
    assert not report.ok


async def test_days_limit_what_is_read(s3: Any, testdata: Path) -> None:
    trail = await write_trail(s3, testdata, key=KEY, hours=2)
    report = await DigestValidator(s3, store_with()).validate(
        trail.bucket, trail.prefix, days=["2024/05/02"]
    )
    assert report.digests == []
    report = await DigestValidator(s3, store_with()).validate(
        trail.bucket, trail.prefix, days=["2024/05/01"]
    )
    assert len(report.digests) == 2


async def test_local_key_directory(tmp_path: Path, s3: Any, testdata: Path) -> None:
    trail = await write_trail(s3, testdata, key=KEY, hours=1)
    pem = KEY.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    (tmp_path / "cloudtrail-eu-central-1.pem").write_bytes(pem)
    (tmp_path / "README.txt").write_text("not a key")
    store = PublicKeyStore()
    assert store.load_dir(tmp_path) == [public_key_fingerprint(KEY.public_key())]
    report = await DigestValidator(s3, store).validate(trail.bucket, trail.prefix)
    assert report.digests[0].status is DigestStatus.VALID
    (tmp_path / "bad.pem").write_text("-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----")
    with pytest.raises(ValueError, match=r"bad\.pem"):
        PublicKeyStore().load_dir(tmp_path)


async def test_list_public_keys_through_stubber_is_cached(
    moto: str, s3: Any, testdata: Path
) -> None:
    """moto has no ListPublicKeys: botocore's Stubber stands in on the aioboto3 client."""
    fp = "31e8b5433410dfb61a9dc45cc65b22ff"
    trail = await write_trail(s3, testdata, key=KEY, fingerprint=fp)
    der = KEY.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.PKCS1
    )
    async with aioboto3.Session().client("cloudtrail", region_name=REGION) as ct:
        stub = Stubber(ct)
        stub.add_response(
            "list_public_keys",
            {
                "PublicKeyList": [
                    {"Value": b"junk", "Fingerprint": "00" * 16},
                    {
                        "Value": der,
                        "Fingerprint": fp,
                        "ValidityStartTime": datetime(2024, 1, 1, tzinfo=UTC),
                        "ValidityEndTime": datetime(2025, 1, 1, tzinfo=UTC),
                    },
                ],
                "NextToken": "page2",
            },
        )
        stub.add_response("list_public_keys", {"PublicKeyList": []})
        regions: list[str] = []

        async def client_for(region: str) -> Any:
            regions.append(region)
            return ct

        store = PublicKeyStore(cloudtrail_key_lister(client_for))
        with stub:
            first = await DigestValidator(s3, store).validate(trail.bucket, trail.prefix)
            second = await DigestValidator(s3, store).validate(trail.bucket, trail.prefix)
            stub.assert_no_pending_responses()
    assert {r.status for r in first.digests + second.digests} == {DigestStatus.VALID}
    assert store.api_calls == 1
    assert regions == [REGION]


def test_parse_documented_example_and_signing_string(testdata: Path) -> None:
    line = (testdata / "awsdocs/aws-cloudtrail-user-guide/digest_examples.jsonl").read_text()
    example = json.loads(line.splitlines()[0])["json"]
    raw = gzip.compress(json.dumps(example).encode())
    dg = parse_digest(
        example["digestS3Bucket"],
        example["digestS3Object"],
        raw,
        {"signature": "ab", "Signature-Algorithm": "SHA256withRSA"},
    )
    assert dg.region == "us-east-2"
    assert dg.account_id == "111122223333"
    assert dg.log_files[0].hash_value == example["logFiles"][0]["hashValue"]
    lines = signing_string(dg.doc, dg.sha256).decode().split("\n")
    assert lines == [
        "2015-08-17T15:01:31Z",
        f"S3-bucket-name/{example['digestS3Object']}",
        dg.sha256,
        example["previousDigestSignature"],
    ]
    first = dict(example, previousDigestSignature=None)
    assert signing_string(first, "00").decode().endswith("\nnull")
    with pytest.raises(DigestFormatError, match="metadata"):
        parse_digest("b", "k", raw, {})
    with pytest.raises(DigestFormatError, match="gzip"):
        parse_digest("b", "k", b"\x1f\x8bnot really", {})
    with pytest.raises(DigestFormatError, match="missing fields"):
        parse_digest("b", "k", gzip.compress(b"{}"), {"signature": "", "signature-algorithm": ""})


@settings(max_examples=200, deadline=None)
@given(position=st.integers(min_value=0), bit=st.integers(min_value=0, max_value=7))
def test_any_flipped_bit_in_a_digest_fails_verification(position: int, bit: int) -> None:
    """Property: a digest body changed anywhere no longer verifies (or no longer parses)."""
    import asyncio

    _raw, meta, dg = asyncio.run(
        build_digest(
            bucket="b",
            key="AWSLogs/111111111111/CloudTrail-Digest/us-east-1/2024/05/01/x.json.gz",
            account_id="111111111111",
            start=datetime(2024, 5, 1, 10, tzinfo=UTC),
            end=datetime(2024, 5, 1, 11, tzinfo=UTC),
            log_files=[{"s3Bucket": "b", "s3Object": "k", "hashValue": "ab" * 32}],
            fingerprint=public_key_fingerprint(KEY.public_key()),
            signer=rsa_signer(KEY),
        )
    )
    assert verify_signature(KEY.public_key(), signing_string(dg.doc, dg.sha256), dg.signature)
    body = bytearray(dg.body)
    body[position % len(body)] ^= 1 << bit
    try:
        tampered = parse_digest("b", dg.key, gzip.compress(bytes(body)), meta)
    except DigestFormatError:
        return
    assert not verify_signature(
        KEY.public_key(), signing_string(tampered.doc, tampered.sha256), tampered.signature
    )
