"""``ctagg verify-archive``: the central archive end to end against its own digest chain:
every digest's signature and chain link, each listed object's SHA-256 against the bytes in S3,
and (with the state) the chain head and every ledger row up to it."""

from __future__ import annotations

import asyncio
import hashlib
import zlib
from dataclasses import dataclass, field
from typing import Any

import orjson
from cryptography.hazmat.primitives.asymmetric import rsa

from aggregator.archive.digests import FORMAT
from aggregator.archive.signing import DigestFormatError, signing_string, verify_signature
from aggregator.aws.errors import error_code, is_not_found
from aggregator.config import ArchiveDigestSettings, ArchiveSettings
from aggregator.log import get_logger
from aggregator.state import State

log = get_logger("aggregator.archive_digest")


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
            {r["key"] for r in state.retention_log.rows("deleted") if r["bucket"] == bucket}
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
    head = state.archive_digests.head()
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
    for row in state.ledger.written_between(0, float("inf")):
        if row["id"] > last_id:
            rep.undigested_ledger_rows += 1
        elif listed.get(row["central_key"]) != row["sha256"]:
            rep.ledger_mismatch.append(row["central_key"])
