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

This module is the digest *format*: parse, check a log file's bytes, and (for the archive's
own digests and for tests) produce one. The signature scheme is
:mod:`aggregator.archive.signing`; keys are :mod:`aggregator.integrity.public_keys`;
:class:`aggregator.integrity.validator.DigestValidator` does the S3 reads.
"""

from __future__ import annotations

import hashlib
import re
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from aggregator.archive.signing import (
    SIGNATURE_ALGORITHM,
    DigestFormatError,
    Signer,
    signing_string,
)

MAX_DIGEST_BYTES = 64 * 1024 * 1024

DIGEST_KEY_RE = re.compile(
    r"^(?P<prefix>(?:.*/)?)AWSLogs/(?:(?P<org>o-[a-z0-9]+)/)?(?P<account>\d{12})/CloudTrail-Digest/"
    r"(?P<region>[a-z0-9-]+)/(?P<y>\d{4})/(?P<m>\d{2})/(?P<d>\d{2})/"
    r"(?P=account)_CloudTrail-Digest_(?P=region)_(?P<trail>.+)_(?P<home>[a-z0-9-]+)_"
    r"(?P<ts>\d{8}T\d{6}Z)(?P<backfill>_backfill)?\.json\.gz$"
)
LOG_KEY_TS_RE = re.compile(r"_(\d{8}T\d{4}Z)_[^/]*\.json\.gz$")


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


# ---------------------------------------------------------------------------- results


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


# ---------------------------------------------------------------------------- producing


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
