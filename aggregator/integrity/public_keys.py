"""CloudTrail's digest-signing public keys, by fingerprint: local key files (offline) and
CloudTrail ``ListPublicKeys`` (DER, per region, for a time range)."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import rsa

from aggregator.archive.signing import load_public_key, public_key_fingerprint
from aggregator.log import get_logger

log = get_logger("aggregator.digest")

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
