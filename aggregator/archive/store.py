"""The central archive: CloudTrail key layout, deterministic keys and bytes, write and read.

A central key is derived only from its source object (bucket + key), and its bytes only from
the source object: its own bytes when every record in it is new (ingest passes them through),
else the records kept, re-encoded (gzip with mtime 0, no file name). A crash between "write"
and "commit" rewrites the same bytes to the same key: never a second copy.

Layout (the standard CloudTrail one, so Athena, the Splunk add-on or Filebeat read the archive
as if it were a trail bucket)::

    [prefix]AWSLogs/<account>/CloudTrail/<region>/YYYY/MM/DD/
        <account>_CloudTrail_<region>_<YYYYMMDDTHHMMZ>_<id>.json.gz
    [prefix]AWSLogs/<account>/CloudTrail-Insight/<region>/YYYY/MM/DD/... (Insights events)
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from aggregator.archive.codec import decode_records
from aggregator.aws.clients import Aws, ClientPool, SessionProvider
from aggregator.aws.errors import error_code, is_not_found
from aggregator.aws.objects import read_object
from aggregator.config import ArchiveSettings, Settings

# <acct>_CloudTrail_<region>_<YYYYMMDDTHHMMZ>_<random>.json.gz (also CloudTrail-Insight)
SOURCE_NAME = re.compile(
    r"(?P<account>\d{12})_(?P<kind>CloudTrail(?:-Insight|-Digest)?)_(?P<region>[a-z0-9-]+)_"
    r"(?P<ts>\d{8}T\d{4}Z)_(?P<rand>[A-Za-z0-9]+)\.json(?:\.gz)?$"
)
_EVENT_TIME = re.compile(r"^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2})")


@dataclass(frozen=True)
class KeyParts:
    account: str
    region: str
    ts: str  # YYYYMMDDTHHMMZ
    insight: bool


def parse_source_name(key: str) -> KeyParts | None:
    """Account, region and time from a CloudTrail object name, or None if not standard."""
    m = SOURCE_NAME.search(key.rsplit("/", 1)[-1])
    if not m:
        return None
    return KeyParts(m["account"], m["region"], m["ts"], m["kind"] == "CloudTrail-Insight")


def ts_from_event_time(event_time: str | None) -> str | None:
    m = _EVENT_TIME.match(event_time or "")
    if not m:
        return None
    y, mo, d, h, mi = m.groups()
    return f"{y}{mo}{d}T{h}{mi}Z"


def object_id(source_bucket: str, source_key: str) -> str:
    """16 URL-safe characters derived from the source object; stable across runs and hosts."""
    digest = hashlib.blake2b(f"{source_bucket}/{source_key}".encode(), digest_size=12).digest()
    return base64.b32encode(digest).decode().rstrip("=")[:16]


def central_key(prefix: str, parts: KeyParts, source_bucket: str, source_key: str) -> str:
    kind = "CloudTrail-Insight" if parts.insight else "CloudTrail"
    name = (
        f"{parts.account}_{kind}_{parts.region}_{parts.ts}_{object_id(source_bucket, source_key)}"
    )
    return f"{day_prefix(prefix, parts.account, parts.region, kind, parts.ts[:8])}{name}.json.gz"


def day_prefix(prefix: str, account: str, region: str, kind: str, day: str) -> str:
    """The archive's prefix of one account, region, kind (``CloudTrail`` or
    ``CloudTrail-Insight``) and day (``YYYYMMDD``), ending in ``/``."""
    return f"{prefix}AWSLogs/{account}/{kind}/{region}/{day[0:4]}/{day[4:6]}/{day[6:8]}/"


@dataclass(frozen=True)
class CentralParts:
    """Where a central key sits in the layout."""

    account: str
    region: str
    kind: str  # CloudTrail | CloudTrail-Insight
    day: str  # YYYYMMDD
    ts: str  # YYYYMMDDTHHMMZ, from the object's name


_CENTRAL = re.compile(
    r"AWSLogs/(?P<account>\d{12})/(?P<kind>CloudTrail(?:-Insight)?)/(?P<region>[a-z0-9-]+)/"
    r"(?P<y>\d{4})/(?P<mo>\d{2})/(?P<d>\d{2})/"
    r"(?P=account)_(?P=kind)_(?P=region)_(?P<ts>\d{8}T\d{4}Z)_[A-Z2-7]{16}\.json\.gz"
)


def parse_central_key(prefix: str, key: str) -> CentralParts | None:
    """The parts of a key this archive writes (:func:`central_key`), or None for a key outside
    the layout (a stray upload, a renamed copy, a key of another tool)."""
    if not key.startswith(prefix):
        return None
    m = _CENTRAL.fullmatch(key, len(prefix))
    if not m or m["ts"][:8] != m["y"] + m["mo"] + m["d"]:
        return None
    return CentralParts(m["account"], m["region"], m["kind"], m["ts"][:8], m["ts"])


@dataclass(frozen=True)
class Stored:
    """A central object as written or found: its SHA-256 (hex) and its S3 ETag."""

    sha256: str
    etag: str | None


@dataclass(frozen=True)
class Listed:
    key: str
    etag: str | None
    size: int


class ObjectModified(Exception):
    """A central object's bytes are not the ones the ledger recorded (their SHA-256 differs):
    it was overwritten or altered after ingest. Its events must not be trusted or sent; reading
    it again does not help."""

    def __init__(self, key: str, expected: str, actual: str) -> None:
        super().__init__(f"central object modified: sha256 {actual} != ledger {expected}")
        self.key = key
        self.expected = expected
        self.actual = actual


def verify_sha256(key: str, data: bytes, expected: str | None) -> None:
    """Raise :class:`ObjectModified` unless ``data`` hashes to ``expected`` (hex; None or
    empty: nothing to check against)."""
    if not expected:
        return
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected.lower():
        raise ObjectModified(key, expected, actual)


class PreconditionFailed(Exception):
    """A conditional write or delete lost: the central object is not what the writer expected
    (it exists where none was expected, or changed since it was read)."""

    def __init__(self, key: str, expected: str) -> None:
        super().__init__(f"central object {key}: precondition failed ({expected})")
        self.key = key
        self.expected = expected


def _precondition_failed(exc: Exception) -> bool:
    return error_code(exc) in ("PreconditionFailed", "412", "ConditionalRequestConflict", "409")


class Archive:
    """Writes and reads central objects through an S3 client (from aggregator.aws): ``s3``, or
    the one ``connect`` makes on first use. A connect that fails is tried again on the next
    use; a client once made is kept."""

    def __init__(
        self,
        settings: ArchiveSettings,
        s3: Any = None,
        *,
        connect: Callable[[], Awaitable[Any]] | None = None,
    ) -> None:
        if (s3 is None) == (connect is None):
            raise ValueError("Archive takes exactly one of an S3 client and connect")
        self.settings = settings
        self._s3 = s3
        self._connect = connect
        self._connecting = asyncio.Lock()
        # called right before every PUT and DELETE; raises to refuse it (the ingest cycle's
        # fence: no central write once this process may have lost its writer marker)
        self.guard: Callable[[], None] | None = None

    async def client(self) -> Any:
        """The S3 client (connecting on first use; concurrent first uses share one connect)."""
        if self._s3 is not None:
            return self._s3
        async with self._connecting:
            if self._s3 is None:
                assert self._connect is not None
                self._s3 = await self._connect()
        return self._s3

    async def put(self, key: str, body: bytes) -> str:
        """Write one central object unconditionally; returns its hex SHA-256."""
        return (await self.write(key, body)).sha256

    async def write(
        self, key: str, body: bytes, *, if_absent: bool = False, if_match: str | None = None
    ) -> Stored:
        """Write one central object: ``if_absent`` only where none exists (If-None-Match),
        ``if_match`` only over the object with that ETag (If-Match); either raises
        :class:`PreconditionFailed` when S3 refuses it. The conditions apply only with
        ``archive.conditional_writes``."""
        sha = hashlib.sha256(body).hexdigest()
        return await self._put(
            key, body, sha, content_type="application/json", if_absent=if_absent, if_match=if_match
        )

    async def write_file(
        self,
        key: str,
        path: str,
        sha256: str,
        *,
        metadata: dict[str, str],
        if_absent: bool = False,
        if_match: str | None = None,
    ) -> Stored:
        """:meth:`write` of a file's bytes (``sha256``: their hex SHA-256), streamed from disk,
        with S3 user ``metadata`` (a state snapshot: aggregator/ingest/resize.py)."""
        body = await asyncio.to_thread(open, path, "rb")
        try:
            return await self._put(
                key,
                body,
                sha256,
                content_type="application/octet-stream",
                metadata=metadata,
                if_absent=if_absent,
                if_match=if_match,
            )
        finally:
            body.close()

    async def _put(
        self,
        key: str,
        body: Any,
        sha: str,
        *,
        content_type: str,
        metadata: dict[str, str] | None = None,
        if_absent: bool,
        if_match: str | None,
    ) -> Stored:
        extra: dict[str, Any] = {}
        if self.settings.kms_key_id:
            extra["ServerSideEncryption"] = "aws:kms"
            extra["SSEKMSKeyId"] = self.settings.kms_key_id
        if self.settings.conditional_writes:
            if if_absent:
                extra["IfNoneMatch"] = "*"
            elif if_match is not None:
                extra["IfMatch"] = if_match
        if metadata:
            extra["Metadata"] = metadata
        s3 = await self.client()
        if self.guard is not None:
            self.guard()
        try:
            resp = await s3.put_object(
                Bucket=self.settings.bucket,
                Key=key,
                Body=body,
                ContentType=content_type,
                ChecksumSHA256=base64.b64encode(bytes.fromhex(sha)).decode(),
                **extra,
            )
        except Exception as exc:
            if _precondition_failed(exc):
                wanted = "absent" if if_absent else f"ETag {if_match}"
                raise PreconditionFailed(key, wanted) from exc
            raise
        return Stored(sha, resp.get("ETag"))

    async def head(self, key: str) -> tuple[str | None, dict[str, str]] | None:
        """A central object's ETag and S3 user metadata, or None when there is none."""
        s3 = await self.client()
        try:
            resp = await s3.head_object(Bucket=self.settings.bucket, Key=key)
        except Exception as exc:
            if is_not_found(exc):
                return None
            raise
        return resp.get("ETag"), dict(resp.get("Metadata") or {})

    async def download(
        self, key: str, write: Callable[[bytes], object]
    ) -> tuple[str | None, dict[str, str]] | None:
        """Stream a central object's bytes to ``write`` (a chunk at a time, never whole in
        memory); its ETag and S3 user metadata, or None when there is no such object."""
        s3 = await self.client()
        try:
            resp = await s3.get_object(Bucket=self.settings.bucket, Key=key)
        except Exception as exc:
            if is_not_found(exc):
                return None
            raise
        stream = resp["Body"]
        try:
            while chunk := await stream.read(1 << 20):
                write(chunk)
        finally:
            stream.close()
        return resp.get("ETag"), dict(resp.get("Metadata") or {})

    async def get(self, key: str) -> bytes:
        data, _ = await read_object(await self.client(), self.settings.bucket, key)
        return data

    async def fetch(self, key: str) -> tuple[bytes, str | None] | None:
        """A central object's bytes and ETag, or None when there is no such object."""
        try:
            data, meta = await read_object(await self.client(), self.settings.bucket, key)
        except Exception as exc:
            if is_not_found(exc):
                return None
            raise
        return data, meta.get("ETag")

    async def delete(self, key: str, *, if_match: str | None = None) -> None:
        """Delete one central object (with If-Match under ``archive.conditional_writes``;
        :class:`PreconditionFailed` when it changed). A missing object is not an error."""
        extra: dict[str, Any] = {}
        if self.settings.conditional_writes and if_match is not None:
            extra["IfMatch"] = if_match
        s3 = await self.client()
        if self.guard is not None:
            self.guard()
        try:
            await s3.delete_object(Bucket=self.settings.bucket, Key=key, **extra)
        except Exception as exc:
            if _precondition_failed(exc):
                raise PreconditionFailed(key, f"ETag {if_match}") from exc
            if not is_not_found(exc):
                raise

    async def objects(self, prefix: str) -> AsyncIterator[Listed]:
        """Every object under ``prefix``, in key order (all pages)."""
        s3 = await self.client()
        paginator = s3.get_paginator("list_objects_v2")
        async for page in paginator.paginate(Bucket=self.settings.bucket, Prefix=prefix):
            for o in page.get("Contents", []):
                yield Listed(o["Key"], o.get("ETag"), int(o.get("Size", 0)))

    async def children(self, prefix: str) -> tuple[list[str], list[Listed]]:
        """One level under ``prefix`` (a Delimiter='/' listing, all pages): the common prefixes
        (sub-"directories", each ending in ``/``) and the objects directly under it, in key
        order. Walks the layout without listing the whole bucket."""
        s3 = await self.client()
        paginator = s3.get_paginator("list_objects_v2")
        dirs: list[str] = []
        found: list[Listed] = []
        pages = paginator.paginate(Bucket=self.settings.bucket, Prefix=prefix, Delimiter="/")
        async for page in pages:
            dirs.extend(p["Prefix"] for p in page.get("CommonPrefixes", []))
            for o in page.get("Contents", []):
                found.append(Listed(o["Key"], o.get("ETag"), int(o.get("Size", 0))))
        return dirs, found

    async def read_records(self, key: str, sha256: str | None = None) -> list[dict[str, Any]]:
        """The records of one central object; with ``sha256`` (the ledger's) its bytes are
        checked first, and :class:`ObjectModified` raised when they differ."""
        data = await self.get(key)
        verify_sha256(key, data, sha256)
        return decode_records(data)


async def archive_session(settings: Settings, sessions: SessionProvider) -> Any:
    """The identity that reads and writes the central bucket: the session ``sessions`` gives
    for ``archive.writer_account_id`` (its role, or the base identity for a hub account or the
    base identity's own), the base identity when unset. Every reader and writer of
    the archive (ingest, forwarding, replay, detection, retention, integrity, doctor) uses it,
    so a bucket whose policy trusts only that role works for all of them."""
    return await sessions.session_for(settings.archive.writer_account_id)


@asynccontextmanager
async def opened(
    settings: Settings, aws: Aws, sessions: SessionProvider | None = None
) -> AsyncIterator[Archive]:
    """The central archive through an S3 client of :func:`archive_session`'s identity
    (``sessions``: a CredentialBroker of its own when not given). The client is made on first
    use: a writer role that cannot be assumed yet (STS unreachable, a trust policy still being
    fixed) fails reads, which the forwarder and detection retry, not the service's start."""
    if sessions is None:
        from aggregator.aws.credentials import CredentialBroker

        sessions = CredentialBroker(settings, aws)
    source = sessions
    async with ClientPool(aws) as pool:

        async def connect() -> Any:
            return await pool.get(await archive_session(settings, source), "s3")

        yield Archive(settings.archive, connect=connect)


# ---------------------------------------------------------------- can the archive be written?

# ``ctagg doctor``'s probe: created once with If-None-Match, so later probes get 412
# Precondition Failed, which S3 answers only to an authorized writer (the first write also
# proves the KMS key). Nothing else is ever written for it, and nothing needs deleting (Object
# Lock may forbid it). Retention and verification never look outside AWSLogs/ and the digests.
PROBE_KEY = "_ctagg/doctor-probe"
# The check before each ingest start writes nothing: a PutObject with If-Match on a key that
# does not exist is answered 404 NoSuchKey, after S3 authorized the write (403 otherwise, and
# NoSuchBucket for a missing bucket).
PREFLIGHT_KEY = "_ctagg/write-check"
_NO_ETAG = '"00000000000000000000000000000000"'


class ArchiveUnavailable(Exception):
    """The central bucket cannot be written (missing, denied, unreachable): said once, at the
    start, instead of once per source object. ``what`` names the bucket, ``hint`` what to do."""

    def __init__(self, what: str, hint: str, code: str) -> None:
        super().__init__(what)
        self.what = what
        self.hint = hint
        self.code = code


def probe_params(cfg: ArchiveSettings) -> dict[str, Any]:
    """The PutObject of doctor's write probe (with the archive's KMS key, which it checks)."""
    params: dict[str, Any] = {
        "Bucket": cfg.bucket,
        "Key": f"{cfg.prefix}{PROBE_KEY}",
        "Body": b"ctagg doctor probe\n",
        "IfNoneMatch": "*",
    }
    if cfg.kms_key_id:
        params["ServerSideEncryption"] = "aws:kms"
        params["SSEKMSKeyId"] = cfg.kms_key_id
    return params


async def check_writable(settings: Settings, sessions: SessionProvider, pool: ClientPool) -> None:
    """Raise :class:`ArchiveUnavailable` unless the archive identity may write the central
    bucket. Writes nothing (see ``PREFLIGHT_KEY``)."""
    from aggregator.aws.errors import error_code, error_message, explain

    cfg = settings.archive
    where = f"central archive s3://{cfg.bucket}"
    try:
        s3 = await pool.get(await archive_session(settings, sessions), "s3")
        await s3.put_object(
            Bucket=cfg.bucket, Key=f"{cfg.prefix}{PREFLIGHT_KEY}", Body=b"", IfMatch=_NO_ETAG
        )
    except Exception as exc:
        code = error_code(exc)
        if code in ("NoSuchKey", "PreconditionFailed", "412"):
            return  # authorized; nothing written
        said = explain(exc)
        if code == "NoSuchBucket":
            what = f"{where} does not exist (NoSuchBucket)"
            hint = "create the bucket, or correct archive.bucket"
        elif said is not None and said.kind in ("denied", "credentials"):
            who = (
                f"the role ctagg assumes in {cfg.writer_account_id}"
                if cfg.writer_account_id
                else "the base identity"
            )
            what = f"{where} cannot be written: {said.what}"
            hint = (
                f"grant s3:PutObject on arn:aws:s3:::{cfg.bucket}/* to {who} (ctagg doctor CONFIG)"
            )
        elif said is not None:
            what, hint = f"{where}: {said.what}", said.hint
        else:
            what, hint = f"{where} cannot be written: {error_message(exc)}", ""
        raise ArchiveUnavailable(what, hint, code) from exc
    # Written: a store that ignores If-Match. Harmless (an empty object outside AWSLogs/).
