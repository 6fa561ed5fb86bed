"""Tamper evidence for the central archive: hourly signed, chained digests of every central
object, with optional S3 Object Lock retention (verified by :mod:`aggregator.archive.verify`).

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
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from aggregator.archive.digest_keys import SigningKey, client_and_key
from aggregator.archive.signing import SIGNATURE_ALGORITHM, signing_string
from aggregator.aws.clients import Aws, ClientPool, SessionProvider
from aggregator.config import ArchiveDigestSettings, ArchiveSettings, Settings
from aggregator.log import get_logger
from aggregator.state import State

log = get_logger("aggregator.archive_digest")

FORMAT = "ctagg-archive-digest/1"


# ---------------------------------------------------------------------------- keys


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

    async def run(self) -> WriteReport:
        rep = WriteReport()
        head = self.state.archive_digests.head()
        last_id = int(head["last_ledger_id"] or 0) if head else 0
        prev: dict[str, Any] | None = head
        cutoff = _hour_floor(self.clock() - self.settle_secs)
        rows = self.state.ledger.written_after(last_id, before=cutoff.timestamp())
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
            self.state.archive_digests.record(
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


async def write_archive_digests(
    settings: Settings,
    state: State,
    *,
    aws: Aws | None = None,
    sessions: SessionProvider | None = None,
    clock: Callable[[], float] = time.time,
) -> WriteReport:
    """Write the archive digests due now (``ctagg archive-digest`` and the daemon's job)."""
    async with ClientPool(aws or Aws(settings.aws)) as pool:
        s3, key = await client_and_key(settings, pool, for_signing=True, sessions=sessions)
        return await ArchiveDigester(
            state, s3, settings.archive, settings.integrity.archive_digest, key, clock=clock
        ).run()
