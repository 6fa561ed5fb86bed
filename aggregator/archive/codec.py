"""gzip in and out: the bounded gunzip every reader of a CloudTrail object uses (source objects,
input files, central objects; a gzip bomb is an error, not an OOM), and the central object's
own encoding (``{"Records":[...]}``, gzip with a fixed header, so equal records give equal
bytes)."""

from __future__ import annotations

import gzip
from typing import Any

import orjson
from isal import igzip, isal_zlib

GZIP_MAGIC = b"\x1f\x8b"


def maybe_gunzip(data: bytes, max_bytes: int = 1 << 30) -> bytes:
    """Decompress gzip data (ISA-L, all members), bounded so a gzip bomb is an error, not an
    OOM. Data without the gzip magic is returned as is."""
    return gunzip_checked(data, max_bytes)[0]


def gunzip_checked(data: bytes, max_bytes: int = 1 << 30) -> tuple[bytes, bool]:
    """:func:`maybe_gunzip`, and whether ``data`` is clean gzip: every byte belongs to a gzip
    member (no zero padding after the last one; such data is accepted, but not passed on)."""
    if not data.startswith(GZIP_MAGIC):
        return data, False
    parts: list[bytes] = []
    total = 0
    rest = data
    clean = True
    while rest:
        d = isal_zlib.decompressobj(wbits=31)
        chunk = d.decompress(rest, max_bytes - total + 1)
        total += len(chunk)
        if total > max_bytes or d.unconsumed_tail:
            raise ValueError(f"decompressed size exceeds {max_bytes} bytes")
        if not d.eof:
            raise gzip.BadGzipFile("truncated gzip stream")
        parts.append(chunk)
        rest = d.unused_data
        if rest and not rest.startswith(GZIP_MAGIC):
            if rest.strip(b"\x00"):
                raise gzip.BadGzipFile("trailing garbage after gzip data")
            clean = False
            break
    return (parts[0] if len(parts) == 1 else b"".join(parts)), clean


def encode_records(parts: list[bytes], level: int) -> bytes:
    """``{"Records":[...]}`` from already-serialized records, gzip with fixed header."""
    body = b'{"Records":[' + b",".join(parts) + b"]}"
    return igzip.compress(body, compresslevel=min(level, 3), mtime=0)


def decode_records(data: bytes) -> list[dict[str, Any]]:
    doc = orjson.loads(maybe_gunzip(data))
    records = doc.get("Records") if isinstance(doc, dict) else None
    if not isinstance(records, list):
        raise ValueError("central object has no Records list")
    return records
