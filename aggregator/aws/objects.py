"""Reading an S3 object whole, with the body's own retries.

botocore retries a request until its response headers arrive (5xx, throttling, connection
errors, within ``aws.max_attempts``), but not a body that breaks off after them: a connection
reset mid-body or a body shorter than its Content-Length raised out of the first read, and the
object then failed for the whole cycle (at a 20% fault rate a day took five cycles to settle).
:func:`read_object` asks again, a bounded number of times with a short jittered backoff, before
the error counts.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from botocore.exceptions import (
    ConnectionClosedError,
    IncompleteReadError,
    ReadTimeoutError,
    ResponseStreamingError,
)

BODY_ATTEMPTS = 4  # one read and up to three more when the body breaks off
BACKOFF_SECS = 0.2

_CUT = (
    IncompleteReadError,
    ResponseStreamingError,
    ConnectionClosedError,
    ReadTimeoutError,
    aiohttp.ClientPayloadError,
    aiohttp.ClientConnectionError,
    ConnectionError,
    TimeoutError,
)


def is_cut_short(exc: BaseException) -> bool:
    """The response broke off after its headers: a reset connection, a body shorter than its
    Content-Length, a read timeout. (Server errors and throttling are botocore's to retry.)"""
    return isinstance(exc, _CUT)


Sleep = Callable[[float], Awaitable[None]]


async def read_object(
    s3: Any,
    bucket: str,
    key: str,
    *,
    attempts: int = BODY_ATTEMPTS,
    sleep: Sleep = asyncio.sleep,
    **kwargs: Any,
) -> tuple[bytes, dict[str, Any]]:
    """(body, response metadata without the body) of ``s3.get_object``; a response cut short
    (:func:`is_cut_short`) is asked again up to ``attempts`` times in all."""
    for attempt in range(1, attempts + 1):
        try:
            resp = await s3.get_object(Bucket=bucket, Key=key, **kwargs)
            async with resp["Body"] as stream:
                data: bytes = await stream.read()
            expected = resp.get("ContentLength")
            if isinstance(expected, int) and len(data) != expected:
                raise IncompleteReadError(actual_bytes=len(data), expected_bytes=expected)
        except Exception as exc:
            if attempt >= attempts or not is_cut_short(exc):
                raise
            await sleep(BACKOFF_SECS * 2 ** (attempt - 1) * (0.5 + random.random()))  # noqa: S311
            continue
        meta = {k: v for k, v in resp.items() if k != "Body"}
        return data, meta
    raise AssertionError("unreachable")
