"""Tamper evidence for the central archive: hourly signed, chained digests of every central
object, optional S3 Object Lock retention, and end-to-end verification.

Each digest covers the ledger rows (``ledger.id``) committed since the previous digest up to
the end of its hour, so every central object is in exactly one digest. Its document mirrors
CloudTrail's digest (same signing string, same chain fields, so the same tools reason about
both), with one difference spelled out in the document: ``objects[].sha256`` is the SHA-256 of
the *stored* object bytes (the ledger's value), not of the uncompressed content::

    [prefix]CTAgg-Digest/YYYY/MM/DD/ctagg-digest_<YYYYMMDDTHH0000Z>_<first-ledger-id>.json.gz

signed (SHA256withRSA) with a local PEM key or a KMS asymmetric key
(``RSASSA_PKCS1_V1_5_SHA_256``); the hex signature is in the object metadata ``signature`` and
in state (``archive_digests``), whose last row is the chain head: deleting the newest digests
is detected too.
"""

from __future__ import annotations

import asyncio
import hashlib
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from aggregator.aws.clients import error_code, is_not_found
from aggregator.config import ArchiveDigestSettings, ArchiveSettings
from aggregator.integrity.digest import (
    SIGNATURE_ALGORITHM,
    DigestFormatError,
    Signer,
    public_key_fingerprint,
    rsa_signer,
    signing_string,
    verify_signature,
)
from aggregator.log import get_logger
from aggregator.state import State
from aggregator.state import integrity as istate

log = get_logger("aggregator.archive_digest")

FORMAT = "ctagg-archive-digest/1"
KMS_ALGORITHM = "RSASSA_PKCS1_V1_5_SHA_256"


# ---------------------------------------------------------------------------- keys


@dataclass
class SigningKey:
    sign: Signer
    public_key: rsa.RSAPublicKey

    @property
    def fingerprint(self) -> str:
        return public_key_fingerprint(self.public_key)


def load_private_key(path: str | Path) -> rsa.RSAPrivateKey:
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise ValueError(f"{path}: cannot load RSA private key: {exc}") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError(f"{path}: not an RSA private key")
    return key


def local_signing_key(path: str | Path) -> SigningKey:
    key = load_private_key(path)
    return SigningKey(rsa_signer(key), key.public_key())


async def kms_signing_key(kms: Any, key_id: str) -> SigningKey:
    """A KMS asymmetric RSA key (KeyUsage SIGN_VERIFY); the message is sent RAW (our signing
    string is ~400 bytes, far under KMS's 4096-byte limit)."""
    pub = await kms.get_public_key(KeyId=key_id)
    public_key = serialization.load_der_public_key(pub["PublicKey"])
    if not isinstance(public_key, rsa.RSAPublicKey):
        raise ValueError(f"KMS key {key_id} is not RSA")

    async def sign(data: bytes) -> bytes:
        resp = await kms.sign(
            KeyId=key_id, Message=data, MessageType="RAW", SigningAlgorithm=KMS_ALGORITHM
        )
        sig: bytes = resp["Signature"]
        return sig

    return SigningKey(sign, public_key)


def load_public_key_file(path: str | Path) -> rsa.RSAPublicKey:
    from aggregator.integrity.digest import load_public_key

    try:
        return load_public_key(Path(path).read_bytes())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: cannot load RSA public key: {exc}") from None


# ---------------------------------------------------------------------------- writing


def digest_key(
    archive: ArchiveSettings, cfg: ArchiveDigestSettings, hour_end: datetime, first_id: int
) -> str:
    """Unique per digest: the hour it closes and the first ledger id it covers (zero-padded, so
    key order is chain order)."""
    return (
        f"{archive.prefix}{cfg.prefix}{hour_end:%Y/%m/%d}/"
        f"ctagg-digest_{hour_end:%Y%m%dT%H%M%SZ}_{first_id:012d}.json.gz"
    )


def _fmt(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def _hour_floor(epoch: float) -> datetime:
    t = datetime.fromtimestamp(epoch, UTC)
    return t.replace(minute=0, second=0, microsecond=0)


@dataclass
class WriteReport:
    digests: list[str] = field(default_factory=list)
    objects: int = 0
    retained: int = 0


class ArchiveDigester:
    """Writes the archive's hourly digests for every hour that has ended (plus ``settle_secs``),
    from the chain head in state onward. Hours with no new central object get no digest; the
    chain links the previous digest written."""

    def __init__(
        self,
        state: State,
        s3: Any,
        archive: ArchiveSettings,
        cfg: ArchiveDigestSettings,
        key: SigningKey,
        *,
        clock: Callable[[], float],
        settle_secs: int = 300,
    ) -> None:
        self.state = state
        self.s3 = s3
        self.archive = archive
        self.cfg = cfg
        self.key = key
        self.clock = clock
        self.settle_secs = settle_secs

    def _rows_until(self, after_id: int, end: float) -> list[dict[str, Any]]:
        with self.state._lock:
            cur = self.state.conn.execute(
                "SELECT id, central_key, sha256, bytes, events, written_at FROM ledger "
                "WHERE id > ? AND written_at < ? ORDER BY id",
                (after_id, end),
            )
            cols = [d[0] for d in cur.description]
            return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]

    async def run(self) -> WriteReport:
        rep = WriteReport()
        head = istate.archive_digest_head(self.state)
        last_id = int(head["last_ledger_id"] or 0) if head else 0
        prev: dict[str, Any] | None = head
        cutoff = _hour_floor(self.clock() - self.settle_secs)
        rows = self._rows_until(last_id, cutoff.timestamp())
        by_hour: dict[datetime, list[dict[str, Any]]] = {}
        for r in rows:
            by_hour.setdefault(_hour_floor(r["written_at"]), []).append(r)
        for start in sorted(by_hour):
            end = start + timedelta(hours=1)
            objs = by_hour[start]
            key = digest_key(self.archive, self.cfg, end, int(objs[0]["id"]))
            doc: dict[str, Any] = {
                "format": FORMAT,
                "hashOf": "stored object bytes",
                "digestStartTime": _fmt(start),
                "digestEndTime": _fmt(end),
                "digestS3Bucket": self.archive.bucket,
                "digestS3Object": key,
                "digestPublicKeyFingerprint": self.key.fingerprint,
                "digestSignatureAlgorithm": SIGNATURE_ALGORITHM,
                "previousDigestS3Bucket": self.archive.bucket if prev else None,
                "previousDigestS3Object": prev["key"] if prev else None,
                "previousDigestHashValue": prev["sha256"] if prev else None,
                "previousDigestHashAlgorithm": "SHA-256" if prev else None,
                "previousDigestSignature": prev["signature"] if prev else None,
                "firstLedgerId": objs[0]["id"],
                "lastLedgerId": objs[-1]["id"],
                "objects": [
                    {"key": o["central_key"], "sha256": o["sha256"], "bytes": o["bytes"]}
                    for o in objs
                ],
            }
            body = orjson.dumps(doc)
            sha = hashlib.sha256(body).hexdigest()
            sig = (await self.key.sign(signing_string(doc, sha))).hex()
            gz = zlib.compressobj(6, zlib.DEFLATED, 31)
            extra: dict[str, Any] = {}
            if self.cfg.object_lock_mode:
                extra["ObjectLockMode"] = self.cfg.object_lock_mode
                extra["ObjectLockRetainUntilDate"] = self._retain_until()
            await self.s3.put_object(
                Bucket=self.archive.bucket,
                Key=key,
                Body=gz.compress(body) + gz.flush(),
                ContentType="application/json",
                Metadata={"signature": sig, "signature-algorithm": SIGNATURE_ALGORITHM},
                **extra,
            )
            if self.cfg.object_lock_mode:
                rep.retained += await self._retain([o["central_key"] for o in objs])
            istate.record_archive_digest(
                self.state,
                hour=start.strftime("%Y-%m-%dT%H"),
                key=key,
                sha256=sha,
                signature=sig,
                objects=len(objs),
                first_ledger_id=objs[0]["id"],
                last_ledger_id=objs[-1]["id"],
            )
            prev = {"key": key, "sha256": sha, "signature": sig}
            rep.digests.append(key)
            rep.objects += len(objs)
            log.info("archive_digest.written", key=key, objects=len(objs))
        return rep

    def _retain_until(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), UTC) + timedelta(days=self.cfg.object_lock_days)

    async def _retain(self, keys: Sequence[str]) -> int:
        until = self._retain_until()
        sem = asyncio.Semaphore(16)

        async def one(k: str) -> None:
            async with sem:
                await self.s3.put_object_retention(
                    Bucket=self.archive.bucket,
                    Key=k,
                    Retention={"Mode": self.cfg.object_lock_mode, "RetainUntilDate": until},
                )

        await asyncio.gather(*(one(k) for k in keys))
        return len(keys)


# ---------------------------------------------------------------------------- verifying


@dataclass
class ArchiveVerifyReport:
    digests: int = 0
    objects: int = 0
    objects_ok: int = 0
    signature_invalid: list[str] = field(default_factory=list)
    chain_broken: list[str] = field(default_factory=list)
    modified: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    expired: list[str] = field(default_factory=list)  # deleted by retention (retention_log)
    unreadable: list[str] = field(default_factory=list)
    head_problem: str = ""
    undigested_ledger_rows: int = 0
    ledger_mismatch: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (
            self.signature_invalid
            or self.chain_broken
            or self.modified
            or self.missing
            or self.unreadable
            or self.head_problem
            or self.ledger_mismatch
        )

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, **self.__dict__}


async def _list(s3: Any, bucket: str, prefix: str) -> list[str]:
    keys: list[str] = []
    paginator = s3.get_paginator("list_objects_v2")
    async for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
        keys.extend(o["Key"] for o in page.get("Contents", ()))
    return keys


async def verify_archive(
    s3: Any,
    archive: ArchiveSettings,
    cfg: ArchiveDigestSettings,
    public_key: rsa.RSAPublicKey,
    *,
    state: State | None = None,
    check_objects: bool = True,
    max_concurrency: int = 16,
) -> ArchiveVerifyReport:
    """Every archive digest: signature, chain, and each listed object's SHA-256 against the
    bytes in S3. With ``state``: the newest digest is the chain head state recorded, and every
    ledger row up to it is covered by a digest with the same hash."""
    rep = ArchiveVerifyReport()
    bucket = archive.bucket
    keys = sorted(
        k
        for k in await _list(s3, bucket, f"{archive.prefix}{cfg.prefix}")
        if k.endswith(".json.gz")
    )
    docs: dict[str, tuple[dict[str, Any], str, str]] = {}  # key -> (doc, sha, signature)
    for key in keys:
        rep.digests += 1
        try:
            resp = await s3.get_object(Bucket=bucket, Key=key)
            async with resp["Body"] as b:
                raw = await b.read()
            body = zlib.decompress(raw, wbits=31)
            doc = orjson.loads(body)
            meta = {k.lower(): v for k, v in (resp.get("Metadata") or {}).items()}
            sig = meta.get("signature", "")
            if not isinstance(doc, dict) or doc.get("format") != FORMAT:
                raise DigestFormatError("not an archive digest")
        except (zlib.error, orjson.JSONDecodeError, DigestFormatError) as exc:
            rep.unreadable.append(f"{key}: {exc}")
            continue
        sha = hashlib.sha256(body).hexdigest()
        docs[key] = (doc, sha, sig)
        if (
            doc.get("digestS3Object") != key
            or doc.get("digestS3Bucket") != bucket
            or not verify_signature(public_key, signing_string(doc, sha), sig)
        ):
            rep.signature_invalid.append(key)
    for key, (doc, _, _) in docs.items():
        pkey = doc.get("previousDigestS3Object")
        if pkey is None:
            if key != keys[0]:
                rep.chain_broken.append(f"{key}: starts a new chain")
            continue
        prev = docs.get(pkey)
        if prev is None:
            rep.chain_broken.append(f"{key}: previous digest missing ({pkey})")
        elif prev[2] != doc.get("previousDigestSignature") or prev[1] != doc.get(
            "previousDigestHashValue"
        ):
            rep.chain_broken.append(f"{key}: previous digest differs from what was chained")
    if check_objects:
        # objects retention deleted on purpose are expired, not missing
        expired = (
            {r["key"] for r in state.retention_log("deleted") if r["bucket"] == bucket}
            if state is not None
            else set()
        )
        await _check_objects(s3, bucket, docs, rep, max_concurrency, expired=expired)
    if state is not None:
        _check_state(state, docs, keys, rep)
    log.info(
        "archive_digest.verified",
        digests=rep.digests,
        objects=rep.objects,
        ok=rep.ok,
        modified=len(rep.modified),
        missing=len(rep.missing),
        expired=len(rep.expired),
    )
    return rep


async def _check_objects(
    s3: Any,
    bucket: str,
    docs: dict[str, tuple[dict[str, Any], str, str]],
    rep: ArchiveVerifyReport,
    max_concurrency: int,
    *,
    expired: set[str] | frozenset[str] = frozenset(),
) -> None:
    sem = asyncio.Semaphore(max_concurrency)

    async def one(obj: dict[str, Any]) -> None:
        async with sem:
            try:
                resp = await s3.get_object(Bucket=bucket, Key=obj["key"])
                h = hashlib.sha256()
                body = resp["Body"]
                async with body:
                    async for chunk in body.iter_chunks(1 << 20):
                        h.update(chunk)
            except Exception as exc:
                if is_not_found(exc):
                    (rep.expired if obj["key"] in expired else rep.missing).append(obj["key"])
                    return
                rep.unreadable.append(f"{obj['key']}: {error_code(exc)}")
                return
            if h.hexdigest() == obj["sha256"]:
                rep.objects_ok += 1
            else:
                rep.modified.append(obj["key"])

    objs = [o for doc, _, _ in docs.values() for o in doc.get("objects") or []]
    rep.objects = len(objs)
    await asyncio.gather(*(one(o) for o in objs))
    rep.modified.sort()
    rep.missing.sort()
    rep.expired.sort()


def _check_state(
    state: State,
    docs: dict[str, tuple[dict[str, Any], str, str]],
    keys: list[str],
    rep: ArchiveVerifyReport,
) -> None:
    head = istate.archive_digest_head(state)
    if head is not None:
        if head["key"] not in docs:
            rep.head_problem = f"newest digest recorded in state is gone: {head['key']}"
        elif docs[head["key"]][2] != head["signature"]:
            rep.head_problem = "newest digest differs from the one recorded in state"
        elif keys and keys[-1] != head["key"]:
            rep.head_problem = f"digest newer than the recorded head: {keys[-1]}"
    listed = {
        o["key"]: o["sha256"] for doc, _, _ in docs.values() for o in doc.get("objects") or []
    }
    last_id = int(head["last_ledger_id"] or 0) if head else 0
    for row in istate.ledger_between(state, 0, float("inf")):
        if row["id"] > last_id:
            rep.undigested_ledger_rows += 1
        elif listed.get(row["central_key"]) != row["sha256"]:
            rep.ledger_mismatch.append(row["central_key"])
