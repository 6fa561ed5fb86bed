"""The central archive's own signed, chained hourly digests over objects the real ingest cycle
wrote to moto; verify-archive detects a modified, a deleted object and a deleted digest; KMS
signing; Object Lock retention."""

from __future__ import annotations

import gzip
import hashlib
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aioboto3
import orjson
import pytest
from awsfixtures import StsSessions, client, log_key, log_object, make_source, record
from botocore.exceptions import ClientError
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from aggregator.archive.digest_keys import kms_signing_key, load_public_key_file, local_signing_key
from aggregator.archive.digests import ArchiveDigester
from aggregator.archive.signing import signing_string
from aggregator.archive.verify import verify_archive
from aggregator.aws.clients import Aws
from aggregator.aws.inventory import Account, Inventory
from aggregator.config import Settings, parse_settings
from aggregator.ingest.cycle import Ingestor
from aggregator.state import State

A1 = "111111111111"
NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC).timestamp()
LATER = lambda: time.time() + 7200  # noqa: E731  ledger rows are stamped with real time


def write_keypair(tmp_path: Path) -> tuple[Path, Path]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    priv = tmp_path / "archive.pem"
    pub = tmp_path / "archive.pub.pem"
    priv.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    pub.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return priv, pub


def settings(tmp_path: Path, **digest: Any) -> Settings:
    return parse_settings(
        {
            "state": {"path": str(tmp_path / "state.db")},
            "archive": {"bucket": "central"},
            "collect": {"max_concurrency": 4},
            "integrity": {"archive_digest": {"enabled": True, **digest}},
        }
    )


async def ingest(cfg: Settings, state: State, n_objects: int = 3) -> None:
    s3 = client("s3")
    s3.create_bucket(Bucket="trail")
    base = f"AWSLogs/{A1}/CloudTrail/us-east-1/"
    for i in range(n_objects):
        key = log_key(base, A1, "us-east-1", f"20240501T10{i}5Z", rand=f"R{i}abcdefgh")
        recs = [record(f"ev-{i}-{j}", A1, time=f"2024-05-01T10:0{i}:0{j}Z") for j in range(3)]
        s3.put_object(Bucket="trail", Key=key, Body=log_object(recs))
    src = make_source("trail", A1)
    inv = Inventory([Account(A1)], {A1: ["us-east-1"]}, [], [src], [])
    rep = await Ingestor(cfg, state, StsSessions(), Aws(cfg.aws), clock=lambda: NOW).run(inv)
    assert rep.central_objects == n_objects


@pytest.fixture
async def s3(moto: str) -> AsyncIterator[Any]:
    async with aioboto3.Session().client("s3", region_name="us-east-1") as c:
        yield c


async def test_verify_detects_modified_and_missing_objects(s3: Any, tmp_path: Path) -> None:
    priv, pub = write_keypair(tmp_path)
    cfg = settings(tmp_path, signing_key_path=str(priv), public_key_path=str(pub))
    client("s3").create_bucket(Bucket="central")
    state = State(cfg.state.path)
    try:
        await ingest(cfg, state)
        dcfg = cfg.integrity.archive_digest
        digester = ArchiveDigester(
            state, s3, cfg.archive, dcfg, local_signing_key(priv), clock=LATER
        )
        written = await digester.run()
        assert len(written.digests) == 1
        assert written.objects == 3
        assert (await digester.run()).digests == []  # nothing new: no digest
        public = load_public_key_file(pub)
        ok = await verify_archive(s3, cfg.archive, dcfg, public, state=state)
        assert ok.ok, ok.as_dict()
        assert (ok.objects, ok.objects_ok, ok.undigested_ledger_rows) == (3, 3, 0)

        ledger = state.ledger.rows()
        victim, gone = ledger[0]["central_key"], ledger[1]["central_key"]
        body = (await s3.get_object(Bucket="central", Key=victim))["Body"]
        async with body as b:
            data = await b.read()
        await s3.put_object(Bucket="central", Key=victim, Body=data.replace(b"\x00", b"\x01", 1))
        await s3.delete_object(Bucket="central", Key=gone)
        bad = await verify_archive(s3, cfg.archive, dcfg, public, state=state)
        assert not bad.ok
        assert bad.modified == [victim]
        assert bad.missing == [gone]
        assert bad.objects_ok == 1
    finally:
        state.close()


async def test_chain_and_head_catch_deleted_or_forged_digests(s3: Any, tmp_path: Path) -> None:
    priv, pub = write_keypair(tmp_path)
    cfg = settings(tmp_path, signing_key_path=str(priv))
    client("s3").create_bucket(Bucket="central")
    state = State(cfg.state.path)
    try:
        await ingest(cfg, state, n_objects=1)
        dcfg = cfg.integrity.archive_digest
        key = local_signing_key(priv)
        first = await ArchiveDigester(state, s3, cfg.archive, dcfg, key, clock=LATER).run()
        await ingest_more(cfg, state)
        second = await ArchiveDigester(state, s3, cfg.archive, dcfg, key, clock=LATER).run()
        assert len(first.digests) == len(second.digests) == 1
        assert first.digests != second.digests
        public = load_public_key_file(pub)
        good = await verify_archive(s3, cfg.archive, dcfg, public, state=state)
        assert good.ok, good.as_dict()
        assert (good.digests, good.objects_ok) == (2, 2)
        # an attacker drops an object from the first digest and re-signs it with their own key
        dkey = first.digests[0]
        resp = await s3.get_object(Bucket="central", Key=dkey)
        async with resp["Body"] as b:
            doc = orjson.loads(gzip.decompress(await b.read()))
        doc["objects"] = []
        body = orjson.dumps(doc)
        attacker = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        sig = attacker.sign(
            signing_string(doc, hashlib.sha256(body).hexdigest()),
            padding.PKCS1v15(),
            hashes.SHA256(),
        ).hex()
        await s3.put_object(
            Bucket="central",
            Key=dkey,
            Body=gzip.compress(body),
            Metadata={"signature": sig, "signature-algorithm": "SHA256withRSA"},
        )
        rep = await verify_archive(s3, cfg.archive, dcfg, public, state=state)
        assert rep.signature_invalid == [dkey]
        assert len(rep.chain_broken) == 1  # the second digest no longer links to it
        assert rep.ledger_mismatch == [state.ledger.rows()[0]["central_key"]]
        # deleting the newest digest is caught against the head recorded in state
        await s3.delete_object(Bucket="central", Key=second.digests[0])
        rep = await verify_archive(s3, cfg.archive, dcfg, public, state=state)
        assert "gone" in rep.head_problem
        head = state.archive_digests.head()
        assert head is not None
        assert head["key"] == second.digests[0]
    finally:
        state.close()


async def ingest_more(cfg: Settings, state: State) -> None:
    s3 = client("s3")
    base = f"AWSLogs/{A1}/CloudTrail/us-east-1/"
    key = log_key(base, A1, "us-east-1", "20240501T1155Z", rand="Rmoreabcdefgh")
    s3.put_object(Bucket="trail", Key=key, Body=log_object([record("ev-more", A1)]))
    src = make_source("trail", A1)
    inv = Inventory([Account(A1)], {A1: ["us-east-1"]}, [], [src], [])
    await Ingestor(cfg, state, StsSessions(), Aws(cfg.aws), clock=lambda: NOW).run(inv)


async def test_kms_signing_and_object_lock(s3: Any, tmp_path: Path) -> None:
    kms = client("kms")
    key_id = kms.create_key(KeySpec="RSA_2048", KeyUsage="SIGN_VERIFY")["KeyMetadata"]["KeyId"]
    cfg = settings(tmp_path, kms_key_id=key_id, object_lock_mode="COMPLIANCE", object_lock_days=3)
    client("s3").create_bucket(Bucket="central", ObjectLockEnabledForBucket=True)
    state = State(cfg.state.path)
    try:
        await ingest(cfg, state, n_objects=2)
        dcfg = cfg.integrity.archive_digest
        async with aioboto3.Session().client("kms", region_name="us-east-1") as akms:
            key = await kms_signing_key(akms, key_id)
            rep = await ArchiveDigester(state, s3, cfg.archive, dcfg, key, clock=LATER).run()
        assert rep.retained == 2
        ok = await verify_archive(s3, cfg.archive, dcfg, key.public_key, state=state)
        assert ok.ok, ok.as_dict()
        central_key = state.ledger.rows()[0]["central_key"]
        head = await s3.head_object(Bucket="central", Key=central_key)
        assert head["ObjectLockMode"] == "COMPLIANCE"
        with pytest.raises(ClientError):
            await s3.delete_object(Bucket="central", Key=central_key, VersionId=head["VersionId"])
        dhead = await s3.head_object(Bucket="central", Key=rep.digests[0])
        assert dhead["ObjectLockMode"] == "COMPLIANCE"
    finally:
        state.close()


def test_config_needs_one_signer(tmp_path: Path) -> None:
    from aggregator.config import ConfigError

    with pytest.raises(ConfigError, match="signing_key_path or kms_key_id"):
        settings(tmp_path)
    with pytest.raises(ConfigError, match="not both"):
        settings(tmp_path, signing_key_path="a.pem", kms_key_id="k")
