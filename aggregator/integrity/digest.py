"""CloudTrail log file integrity: parse, sign-check and chain-check digest files, and check
every log file a digest lists.

What CloudTrail does (user guide, "CloudTrail digest file structure" and "Custom implementations
of CloudTrail log file integrity validation"; the AWS CLI's ``validate-logs`` is the reference
implementation and agrees):

* A digest (``.../CloudTrail-Digest/<region>/Y/M/D/<acct>_CloudTrail-Digest_<region>_<trail>_
  <home-region>_<YYYYMMDDTHHMMSSZ>[_backfill].json.gz``) is gzip JSON listing the log files
  delivered in one hour, each with ``hashValue`` = hex SHA-256 of the log file's
  **uncompressed** content.
* Its signature (hex) is in the S3 object metadata ``signature`` (``x-amz-meta-signature``),
  the algorithm in ``signature-algorithm`` (``SHA256withRSA``: RSASSA-PKCS1-v1_5 with SHA-256).
* The signed string is four lines joined by ``\\n``: ``digestEndTime``,
  ``digestS3Bucket/digestS3Object``, hex SHA-256 of the digest's uncompressed content, and
  ``previousDigestSignature`` (the text ``null`` for the first digest of a chain).
* The chain: ``previousDigestSignature`` is the previous digest's signature and
  ``previousDigestHashValue`` the SHA-256 of its uncompressed content.
* The public key is the one whose fingerprint is ``digestPublicKeyFingerprint``; CloudTrail
  publishes them through ``ListPublicKeys`` (DER, per region, for a time range).

Pure parsing and checking are plain functions; :class:`DigestValidator` does the S3 reads.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
import zlib
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from aggregator.aws.clients import error_code, is_not_found
from aggregator.log import get_logger

log = get_logger("aggregator.digest")

SIGNATURE_ALGORITHM = "SHA256withRSA"
MAX_DIGEST_BYTES = 64 * 1024 * 1024

DIGEST_KEY_RE = re.compile(
    r"^(?P<prefix>(?:.*/)?)AWSLogs/(?:(?P<org>o-[a-z0-9]+)/)?(?P<account>\d{12})/CloudTrail-Digest/"
    r"(?P<region>[a-z0-9-]+)/(?P<y>\d{4})/(?P<m>\d{2})/(?P<d>\d{2})/"
    r"(?P=account)_CloudTrail-Digest_(?P=region)_(?P<trail>.+)_(?P<home>[a-z0-9-]+)_"
    r"(?P<ts>\d{8}T\d{6}Z)(?P<backfill>_backfill)?\.json\.gz$"
)
LOG_KEY_TS_RE = re.compile(r"_(\d{8}T\d{4}Z)_[^/]*\.json\.gz$")


class DigestStatus(StrEnum):
    """Per digest outcome; when several apply, the most serious (first here) is the status."""

    INVALID_FORMAT = "invalid_format"
    SIGNATURE_INVALID = "signature_invalid"
    CHAIN_BROKEN = "chain_broken"
    LOG_FILE_MODIFIED = "log_file_modified"
    LOG_FILE_MISSING = "log_file_missing"
    VALID = "valid"


_SEVERITY = {s: i for i, s in enumerate(DigestStatus)}


class DigestFormatError(ValueError):
    """A digest object that is not a CloudTrail digest (bad gzip/JSON/fields/metadata)."""


# ---------------------------------------------------------------------------- parsing


@dataclass(frozen=True)
class LogFileRef:
    bucket: str
    key: str
    hash_value: str
    hash_algorithm: str
    oldest_event_time: str | None
    newest_event_time: str | None


@dataclass(frozen=True)
class Digest:
    """One digest object as read from S3: its uncompressed body, fields and signature."""

    bucket: str
    key: str
    body: bytes  # uncompressed JSON, exactly as stored
    doc: dict[str, Any]
    signature: str  # hex, from metadata
    signature_algorithm: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.body).hexdigest()

    @property
    def end_time(self) -> str:
        return str(self.doc["digestEndTime"])

    @property
    def start_time(self) -> str:
        return str(self.doc["digestStartTime"])

    @property
    def fingerprint(self) -> str:
        return str(self.doc["digestPublicKeyFingerprint"])

    @property
    def account_id(self) -> str:
        return str(self.doc.get("awsAccountId") or "")

    @property
    def region(self) -> str:
        m = DIGEST_KEY_RE.match(self.key)
        return m.group("region") if m else ""

    @property
    def previous(self) -> tuple[str, str] | None:
        b, k = self.doc.get("previousDigestS3Bucket"), self.doc.get("previousDigestS3Object")
        return (str(b), str(k)) if b and k else None

    @property
    def log_files(self) -> list[LogFileRef]:
        out = []
        for lf in self.doc.get("logFiles") or []:
            out.append(
                LogFileRef(
                    bucket=str(lf["s3Bucket"]),
                    key=str(lf["s3Object"]),
                    hash_value=str(lf["hashValue"]).lower(),
                    hash_algorithm=str(lf.get("hashAlgorithm") or "SHA-256"),
                    oldest_event_time=lf.get("oldestEventTime"),
                    newest_event_time=lf.get("newestEventTime"),
                )
            )
        return out


REQUIRED_FIELDS = (
    "digestStartTime",
    "digestEndTime",
    "digestS3Bucket",
    "digestS3Object",
    "digestPublicKeyFingerprint",
    "previousDigestSignature",
    "logFiles",
)


def parse_digest(bucket: str, key: str, raw: bytes, metadata: Mapping[str, str]) -> Digest:
    """A Digest from the stored object (gzip bytes) and its S3 user metadata."""
    try:
        d = zlib.decompressobj(wbits=31)
        body = d.decompress(raw, MAX_DIGEST_BYTES)
        if d.unconsumed_tail or not d.eof:
            raise DigestFormatError("truncated or oversized gzip")
        doc = orjson.loads(body)
    except (zlib.error, orjson.JSONDecodeError) as exc:
        raise DigestFormatError(f"not gzip JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise DigestFormatError("not a JSON object")
    missing = [f for f in REQUIRED_FIELDS if f not in doc]
    if missing:
        raise DigestFormatError(f"missing fields {missing}")
    if not isinstance(doc["logFiles"], list):
        raise DigestFormatError("'logFiles' is not a list")
    for i, lf in enumerate(doc["logFiles"]):
        if not isinstance(lf, dict) or not {"s3Bucket", "s3Object", "hashValue"} <= set(lf):
            raise DigestFormatError(f"logFiles[{i}] lacks s3Bucket/s3Object/hashValue")
    meta = {k.lower(): v for k, v in metadata.items()}
    if "signature" not in meta or "signature-algorithm" not in meta:
        raise DigestFormatError("no signature / signature-algorithm in object metadata")
    return Digest(bucket, key, body, doc, meta["signature"], meta["signature-algorithm"])


def signing_string(doc: Mapping[str, Any], body_sha256: str) -> bytes:
    """The data CloudTrail signs for one digest."""
    previous = doc.get("previousDigestSignature")
    return "\n".join(
        (
            str(doc["digestEndTime"]),
            f"{doc['digestS3Bucket']}/{doc['digestS3Object']}",
            body_sha256,
            "null" if previous is None else str(previous),
        )
    ).encode()


def digest_key_time(key: str) -> str:
    """The end timestamp in a digest key (``20150817T150131Z``), '' when the key is not one."""
    m = DIGEST_KEY_RE.match(key)
    return m.group("ts") if m else ""


def log_key_time(key: str) -> datetime | None:
    m = LOG_KEY_TS_RE.search(key)
    if not m:
        return None
    return datetime.strptime(m.group(1), "%Y%m%dT%H%MZ").replace(tzinfo=UTC)


def parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


# ---------------------------------------------------------------------------- keys


def load_public_key(data: bytes) -> rsa.RSAPublicKey:
    """An RSA public key from PEM or DER (PKCS#1 RSAPublicKey or SubjectPublicKeyInfo)."""
    key: Any
    if data.lstrip().startswith(b"-----BEGIN"):
        key = serialization.load_pem_public_key(data)
    else:
        key = serialization.load_der_public_key(data)
    if not isinstance(key, rsa.RSAPublicKey):
        raise ValueError("not an RSA public key")
    return key


def public_key_fingerprint(key: rsa.RSAPublicKey) -> str:
    """Our fingerprint for a local key: hex MD5 of its DER PKCS#1 form (32 hex digits, the shape
    CloudTrail uses). A key file named ``<32 hex>.pem|.der`` uses its name instead, so keys saved
    from ListPublicKeys keep CloudTrail's own fingerprint."""
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.PKCS1)
    return hashlib.md5(der, usedforsecurity=False).hexdigest()


def verify_signature(key: rsa.RSAPublicKey, data: bytes, signature_hex: str) -> bool:
    try:
        sig = bytes.fromhex(signature_hex)
    except ValueError:
        return False
    try:
        key.verify(sig, data, padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        return False
    return True


ListPublicKeys = Callable[[str, datetime, datetime], Awaitable[list[dict[str, Any]]]]


class PublicKeyStore:
    """Public keys by fingerprint: local files (offline) plus CloudTrail ``ListPublicKeys``.

    ``list_public_keys(region, start, end)`` returns the API's ``PublicKeyList`` items; its
    result is cached per region, and the API is asked again only for an unknown fingerprint
    and at most once per ``refresh_secs`` per region.
    """

    def __init__(
        self,
        list_public_keys: ListPublicKeys | None = None,
        *,
        refresh_secs: float = 3600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._keys: dict[str, rsa.RSAPublicKey] = {}
        self._list = list_public_keys
        self._refresh_secs = refresh_secs
        self._clock = clock
        self._fetched_at: dict[str, float] = {}
        self._lock = asyncio.Lock()
        self.api_calls = 0

    def add(self, key: rsa.RSAPublicKey, fingerprint: str | None = None) -> str:
        fp = (fingerprint or public_key_fingerprint(key)).lower()
        self._keys[fp] = key
        return fp

    def load_dir(self, path: str | Path) -> list[str]:
        """Load every ``*.pem`` / ``*.der`` / ``*.pub`` file in a directory."""
        added = []
        for p in sorted(Path(path).iterdir()):
            if p.suffix.lower() not in {".pem", ".der", ".pub"} or not p.is_file():
                continue
            try:
                key = load_public_key(p.read_bytes())
            except ValueError as exc:
                raise ValueError(f"{p}: cannot load public key: {exc}") from None
            name = p.stem.lower()
            added.append(self.add(key, name if re.fullmatch(r"[0-9a-f]{32}", name) else None))
        return added

    def known(self) -> set[str]:
        return set(self._keys)

    async def get(self, fingerprint: str, region: str, when: datetime) -> rsa.RSAPublicKey | None:
        fp = fingerprint.lower()
        if fp in self._keys or self._list is None:
            return self._keys.get(fp)
        async with self._lock:
            if fp in self._keys:
                return self._keys[fp]
            last = self._fetched_at.get(region)
            if last is not None and self._clock() - last < self._refresh_secs:
                return None
            self._fetched_at[region] = self._clock()
            self.api_calls += 1
            items = await self._list(region, when - timedelta(days=30), when + timedelta(days=1))
            for item in items:
                value = item.get("Value")
                item_fp = str(item.get("Fingerprint") or "").lower()
                if not isinstance(value, bytes | bytearray) or not item_fp:
                    continue
                try:
                    self._keys[item_fp] = load_public_key(bytes(value))
                except ValueError:
                    log.warning("digest.public_key_unusable", fingerprint=item_fp, region=region)
            return self._keys.get(fp)


def cloudtrail_key_lister(client_for_region: Callable[[str], Awaitable[Any]]) -> ListPublicKeys:
    """A ``ListPublicKeys`` caller over CloudTrail clients (one per region), all pages."""

    async def _list(region: str, start: datetime, end: datetime) -> list[dict[str, Any]]:
        client = await client_for_region(region)
        out: list[dict[str, Any]] = []
        kwargs: dict[str, Any] = {"StartTime": start, "EndTime": end}
        while True:
            resp = await client.list_public_keys(**kwargs)
            out.extend(resp.get("PublicKeyList") or [])
            token = resp.get("NextToken")
            if not token:
                return out
            kwargs["NextToken"] = token

    return _list


# ---------------------------------------------------------------------------- results


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
        }


# ---------------------------------------------------------------------------- checking


def check_log_bytes(ref: LogFileRef, raw: bytes, max_bytes: int = 1 << 31) -> bool:
    """True when the stored object ``raw`` (gzip, or plain) hashes to the digest's value.

    CloudTrail hashes the uncompressed content; the object is inflated in chunks so a large log
    never sits uncompressed in memory."""
    h = hashlib.sha256()
    if raw[:2] == b"\x1f\x8b":
        d = zlib.decompressobj(wbits=31)
        view = memoryview(raw)
        total = 0
        for i in range(0, len(raw), 1 << 20):
            chunk = d.decompress(view[i : i + (1 << 20)])
            total += len(chunk)
            if total > max_bytes:
                return False
            h.update(chunk)
        h.update(d.flush())
    else:
        h.update(raw)
    return h.hexdigest() == ref.hash_value


def digest_prefix(log_prefix: str) -> str:
    """``.../CloudTrail/<region>/`` -> ``.../CloudTrail-Digest/<region>/``."""
    return log_prefix.replace("/CloudTrail/", "/CloudTrail-Digest/", 1)


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
            report.not_in_any_digest = self._unlisted(log_keys, listed, digests.values())
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


# ---------------------------------------------------------------------------- producing


Signer = Callable[[bytes], Awaitable[bytes]]


def rsa_signer(private_key: rsa.RSAPrivateKey) -> Signer:
    async def sign(data: bytes) -> bytes:
        return private_key.sign(data, padding.PKCS1v15(), hashes.SHA256())

    return sign


async def build_digest(
    *,
    bucket: str,
    key: str,
    account_id: str,
    start: datetime,
    end: datetime,
    log_files: Sequence[Mapping[str, Any]],
    fingerprint: str,
    signer: Signer,
    previous: Digest | None = None,
) -> tuple[bytes, dict[str, str], Digest]:
    """A digest in CloudTrail's format: (gzip body, S3 metadata, parsed Digest).

    Used to write the central archive's own digests, and by tests to stand in for CloudTrail.
    ``log_files`` items: ``s3Bucket``, ``s3Object``, ``hashValue`` (+ optional event times).
    """
    fmt = "%Y-%m-%dT%H:%M:%SZ"
    doc: dict[str, Any] = {
        "awsAccountId": account_id,
        "digestStartTime": start.strftime(fmt),
        "digestEndTime": end.strftime(fmt),
        "digestS3Bucket": bucket,
        "digestS3Object": key,
        "digestPublicKeyFingerprint": fingerprint,
        "digestSignatureAlgorithm": SIGNATURE_ALGORITHM,
        "newestEventTime": max(
            (str(f["newestEventTime"]) for f in log_files if f.get("newestEventTime")),
            default=None,
        ),
        "oldestEventTime": min(
            (str(f["oldestEventTime"]) for f in log_files if f.get("oldestEventTime")),
            default=None,
        ),
        "previousDigestS3Bucket": previous.bucket if previous else None,
        "previousDigestS3Object": previous.key if previous else None,
        "previousDigestHashValue": previous.sha256 if previous else None,
        "previousDigestHashAlgorithm": "SHA-256" if previous else None,
        "previousDigestSignature": previous.signature if previous else None,
        "logFiles": [
            {
                "s3Bucket": f["s3Bucket"],
                "s3Object": f["s3Object"],
                "hashValue": f["hashValue"],
                "hashAlgorithm": f.get("hashAlgorithm", "SHA-256"),
                "newestEventTime": f.get("newestEventTime"),
                "oldestEventTime": f.get("oldestEventTime"),
            }
            for f in log_files
        ],
    }
    body = orjson.dumps(doc)
    sig = (await signer(signing_string(doc, hashlib.sha256(body).hexdigest()))).hex()
    meta = {"signature": sig, "signature-algorithm": SIGNATURE_ALGORITHM}
    gz = zlib.compressobj(6, zlib.DEFLATED, 31)
    raw = gz.compress(body) + gz.flush()
    return raw, meta, Digest(bucket, key, body, doc, sig, SIGNATURE_ALGORITHM)


def digest_key_for(
    log_prefix: str, *, account_id: str, region: str, trail: str, home_region: str, end: datetime
) -> str:
    """The key CloudTrail would give the digest for ``log_prefix`` ending at ``end``."""
    return (
        f"{digest_prefix(log_prefix)}{end:%Y/%m/%d}/{account_id}_CloudTrail-Digest_{region}_"
        f"{trail}_{home_region}_{end:%Y%m%dT%H%M%SZ}.json.gz"
    )


def uncompressed_sha256(raw: bytes) -> str:
    """hex SHA-256 of a gzip object's content (what CloudTrail lists as ``hashValue``)."""
    h = hashlib.sha256()
    d = zlib.decompressobj(wbits=31)
    view = memoryview(raw)
    for i in range(0, len(raw), 1 << 20):
        h.update(d.decompress(view[i : i + (1 << 20)]))
    h.update(d.flush())
    return h.hexdigest()
