"""Validate CloudTrail digests as read from a trail bucket: each digest's signature, the chain
to its predecessor, and every log file it lists (present, and its uncompressed SHA-256 as
listed). The outcome per digest is a :class:`DigestStatus`; when several problems apply, the
most serious is the status.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from enum import StrEnum
from typing import Any

from aggregator.archive.signing import (
    SIGNATURE_ALGORITHM,
    DigestFormatError,
    signing_string,
    verify_signature,
)
from aggregator.aws.errors import error_code, is_not_found
from aggregator.integrity.digest import (
    Digest,
    LogFileRef,
    check_log_bytes,
    digest_key_time,
    digest_prefix,
    log_key_time,
    parse_digest,
    parse_time,
)
from aggregator.integrity.public_keys import PublicKeyStore
from aggregator.log import get_logger

log = get_logger("aggregator.digest")


class DigestStatus(StrEnum):
    """Per digest outcome; when several apply, the most serious (first here) is the status."""

    INVALID_FORMAT = "invalid_format"
    SIGNATURE_INVALID = "signature_invalid"
    CHAIN_BROKEN = "chain_broken"
    LOG_FILE_MODIFIED = "log_file_modified"
    LOG_FILE_MISSING = "log_file_missing"
    VALID = "valid"


_SEVERITY = {s: i for i, s in enumerate(DigestStatus)}


@dataclass
class DigestResult:
    bucket: str
    key: str
    account_id: str = ""
    region: str = ""
    start_time: str | None = None
    end_time: str | None = None
    problems: list[DigestStatus] = field(default_factory=list)
    details: list[str] = field(default_factory=list)
    log_files: int = 0
    logs_valid: int = 0
    modified: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)

    @property
    def status(self) -> DigestStatus:
        return min(self.problems, key=_SEVERITY.__getitem__, default=DigestStatus.VALID)

    def flag(self, problem: DigestStatus, detail: str) -> None:
        if problem not in self.problems:
            self.problems.append(problem)
        self.details.append(detail)

    def as_dict(self) -> dict[str, Any]:
        return {
            "bucket": self.bucket,
            "key": self.key,
            "account_id": self.account_id,
            "region": self.region,
            "start_time": self.start_time,
            "end_time": self.end_time,
            "status": self.status.value,
            "problems": [p.value for p in self.problems],
            "details": self.details,
            "log_files": self.log_files,
            "logs_valid": self.logs_valid,
            "modified": self.modified,
            "missing": self.missing,
        }


@dataclass
class ValidationReport:
    digests: list[DigestResult] = field(default_factory=list)
    not_in_any_digest: list[str] = field(default_factory=list)
    # every log key a signature-valid digest lists -> (expected hash, digest key)
    expected: dict[str, tuple[str, str]] = field(default_factory=dict)
    skipped: int = 0  # digests passed in ``skip`` (validated before), not read again
    # log files but not one digest file under the prefix (with check_logs): the trail has no
    # log file validation, or its digests were removed. Its files are not each "in no digest".
    without_digests: bool = False

    def counts(self) -> dict[str, int]:
        out = {s.value: 0 for s in DigestStatus}
        for r in self.digests:
            out[r.status.value] += 1
        out["not_in_any_digest"] = len(self.not_in_any_digest)
        return out

    @property
    def ok(self) -> bool:
        return not self.not_in_any_digest and all(
            r.status is DigestStatus.VALID for r in self.digests
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "counts": self.counts(),
            "digests": [r.as_dict() for r in self.digests],
            "not_in_any_digest": self.not_in_any_digest,
            "without_digests": self.without_digests,
        }


class DigestValidator:
    """Validate every digest under a source prefix, its chain, and the log files it lists.

    ``s3`` is an (aio)botocore S3 client able to read the trail bucket.
    """

    def __init__(
        self,
        s3: Any,
        keys: PublicKeyStore,
        *,
        max_concurrency: int = 8,
        grace: timedelta = timedelta(hours=1),
    ) -> None:
        self.s3 = s3
        self.keys = keys
        self._sem = asyncio.Semaphore(max_concurrency)
        self.grace = grace

    async def _list(self, bucket: str, prefix: str, start_after: str = "") -> list[str]:
        keys: list[str] = []
        kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix}
        if start_after:
            kwargs["StartAfter"] = start_after
        while True:
            resp = await self.s3.list_objects_v2(**kwargs)
            keys.extend(o["Key"] for o in resp.get("Contents") or [])
            if not resp.get("IsTruncated"):
                return keys
            kwargs["ContinuationToken"] = resp["NextContinuationToken"]

    async def fetch_digest(self, bucket: str, key: str) -> Digest:
        async with self._sem:
            resp = await self.s3.get_object(Bucket=bucket, Key=key)
            async with resp["Body"] as body:
                raw = await body.read()
        return parse_digest(bucket, key, raw, resp.get("Metadata") or {})

    async def _read(self, bucket: str, key: str) -> bytes:
        async with self._sem:
            resp = await self.s3.get_object(Bucket=bucket, Key=key)
            async with resp["Body"] as body:
                data: bytes = await body.read()
                return data

    async def validate(
        self,
        bucket: str,
        log_prefix: str,
        *,
        days: Iterable[str] | None = None,
        check_logs: bool = True,
        read_log: Callable[[str, str], Awaitable[bytes]] | None = None,
        skip: Collection[str] = (),
    ) -> ValidationReport:
        """Validate ``log_prefix`` (``[P/]AWSLogs/[o-x/]<acct>/CloudTrail/<region>/``).

        ``days`` (``YYYY/MM/DD``) limits the digests and log files looked at; default: all.
        ``read_log`` replaces the S3 read of a log file (e.g. bytes ingest already holds).
        ``skip``: digest keys already validated; not read again (a digest after one of them
        still has its chain link checked, by reading that one previous digest).
        """
        dprefix = digest_prefix(log_prefix)
        day_list = sorted(set(days)) if days is not None else None
        digest_keys: list[str] = []
        log_keys: list[str] = []
        for sub in day_list or [""]:
            digest_keys += await self._list(bucket, dprefix + (f"{sub}/" if sub else ""))
            if check_logs:
                log_keys += await self._list(bucket, log_prefix + (f"{sub}/" if sub else ""))
        skipped = set(skip)
        listed_any_digest = bool(digest_keys)
        n_skipped = sum(1 for k in digest_keys if k in skipped)
        digest_keys = sorted(
            (k for k in digest_keys if digest_key_time(k) and k not in skipped),
            key=lambda k: (digest_key_time(k), k),
        )
        report = ValidationReport(skipped=n_skipped)
        digests: dict[str, Digest] = {}
        results: dict[str, DigestResult] = {}
        for key in digest_keys:
            res = DigestResult(bucket=bucket, key=key)
            results[key] = res
            report.digests.append(res)
            try:
                dg = await self.fetch_digest(bucket, key)
            except DigestFormatError as exc:
                res.flag(DigestStatus.INVALID_FORMAT, str(exc))
                continue
            except Exception as exc:
                if is_not_found(exc):
                    res.flag(DigestStatus.INVALID_FORMAT, "digest vanished while reading")
                    continue
                raise
            digests[key] = dg
            res.account_id, res.region = dg.account_id, dg.region
            res.start_time, res.end_time = dg.start_time, dg.end_time
            await self._check_signature(dg, res)
        for key, dg in digests.items():
            await self._check_chain(dg, results[key], digests)
        signed_ok = [
            d
            for k, d in digests.items()
            if DigestStatus.SIGNATURE_INVALID not in results[k].problems
        ]
        listed: set[str] = set()
        for dg in digests.values():
            listed.update(lf.key for lf in dg.log_files if lf.bucket == bucket)
        for dg in signed_ok:
            for lf in dg.log_files:
                report.expected[lf.key] = (lf.hash_value, dg.key)
        if check_logs:
            await asyncio.gather(
                *(
                    self._check_logs(dg, results[dg.key], read_log)
                    for dg in digests.values()
                    if results[dg.key].status is not DigestStatus.INVALID_FORMAT
                )
            )
            if listed_any_digest:
                report.not_in_any_digest = self._unlisted(log_keys, listed, digests.values())
            else:
                report.without_digests = any(k.endswith(".json.gz") for k in log_keys)
        for res in report.digests:
            log.info(
                "digest.validated",
                bucket=res.bucket,
                key=res.key,
                status=res.status.value,
                log_files=res.log_files,
                modified=len(res.modified),
                missing=len(res.missing),
            )
        return report

    async def _check_signature(self, dg: Digest, res: DigestResult) -> None:
        if dg.signature_algorithm != SIGNATURE_ALGORITHM:
            res.flag(
                DigestStatus.SIGNATURE_INVALID,
                f"unsupported signature algorithm {dg.signature_algorithm!r}",
            )
            return
        if dg.doc["digestS3Bucket"] != dg.bucket or dg.doc["digestS3Object"] != dg.key:
            res.flag(DigestStatus.SIGNATURE_INVALID, "digest moved from its original location")
            return
        try:
            when = parse_time(dg.end_time)
        except ValueError:
            res.flag(DigestStatus.INVALID_FORMAT, "digestEndTime is not a timestamp")
            return
        try:
            key = await self.keys.get(dg.fingerprint, dg.region, when)
        except Exception as exc:
            res.flag(
                DigestStatus.SIGNATURE_INVALID,
                f"public key {dg.fingerprint} unavailable: {error_code(exc)}",
            )
            return
        if key is None:
            res.flag(DigestStatus.SIGNATURE_INVALID, f"public key {dg.fingerprint} not found")
            return
        if not verify_signature(key, signing_string(dg.doc, dg.sha256), dg.signature):
            res.flag(DigestStatus.SIGNATURE_INVALID, "signature does not verify")

    async def _check_chain(
        self, dg: Digest, res: DigestResult, digests: Mapping[str, Digest]
    ) -> None:
        prev_ref = dg.previous
        if prev_ref is None:
            if dg.doc.get("previousDigestSignature") not in (None, "null"):
                res.flag(DigestStatus.CHAIN_BROKEN, "previous signature without previous digest")
            return
        pbucket, pkey = prev_ref
        prev = digests.get(pkey) if pbucket == dg.bucket else None
        if prev is None:
            try:
                prev = await self.fetch_digest(pbucket, pkey)
            except DigestFormatError as exc:
                res.flag(DigestStatus.CHAIN_BROKEN, f"previous digest unreadable: {exc}")
                return
            except Exception as exc:
                if is_not_found(exc):
                    res.flag(DigestStatus.CHAIN_BROKEN, f"previous digest missing: {pkey}")
                    return
                raise
        if dg.doc.get("previousDigestSignature") != prev.signature:
            res.flag(DigestStatus.CHAIN_BROKEN, "previousDigestSignature differs from previous")
        algo = str(dg.doc.get("previousDigestHashAlgorithm") or "SHA-256").upper()
        want = dg.doc.get("previousDigestHashValue")
        if algo.replace("-", "") != "SHA256":
            res.flag(DigestStatus.CHAIN_BROKEN, f"unsupported previous hash algorithm {algo}")
        elif want is not None and str(want).lower() != prev.sha256:
            res.flag(DigestStatus.CHAIN_BROKEN, "previousDigestHashValue differs from previous")

    async def _check_logs(
        self,
        dg: Digest,
        res: DigestResult,
        read_log: Callable[[str, str], Awaitable[bytes]] | None,
    ) -> None:
        refs = dg.log_files
        res.log_files = len(refs)

        async def one(ref: LogFileRef) -> None:
            try:
                raw = await (read_log or self._read)(ref.bucket, ref.key)
            except Exception as exc:
                if is_not_found(exc):
                    res.missing.append(ref.key)
                    return
                raise
            if ref.hash_algorithm.upper().replace("-", "") != "SHA256":
                res.modified.append(ref.key)
                return
            if check_log_bytes(ref, raw):
                res.logs_valid += 1
            else:
                res.modified.append(ref.key)

        await asyncio.gather(*(one(r) for r in refs))
        res.modified.sort()
        res.missing.sort()
        if res.modified:
            res.flag(DigestStatus.LOG_FILE_MODIFIED, f"{len(res.modified)} log file(s) modified")
        if res.missing:
            res.flag(DigestStatus.LOG_FILE_MISSING, f"{len(res.missing)} log file(s) missing")

    def _unlisted(
        self, log_keys: Sequence[str], listed: set[str], digests: Iterable[Digest]
    ) -> list[str]:
        """Log files no digest lists although one covering their time should have."""
        dl = list(digests)
        ends = [parse_time(d.end_time) for d in dl]
        starts = [parse_time(d.start_time) for d in dl]
        if not ends:
            return sorted(k for k in log_keys if k.endswith(".json.gz"))
        lo, hi = min(starts), max(ends) - self.grace
        out = []
        for k in log_keys:
            t = log_key_time(k)
            if k in listed or t is None:
                continue
            if lo <= t <= hi:
                out.append(k)
        return sorted(out)
