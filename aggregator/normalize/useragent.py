"""``userAgent`` → ECS ``user_agent.*`` (name, version, os, device) with ``ua-parser``.

The regexes are uap-core's (``ua-parser-builtins``), the same family of rules Elastic's
``user_agent`` processor uses; ``ua-parser-rs`` makes an uncached parse ~50 µs. User agents
repeat, so results are memoized (bounded) and shared between outputs (read-only).
"""

from __future__ import annotations

from typing import Any

_cache: dict[str, dict[str, Any]] = {}
_CACHE_MAX = 16384
_parse: Any = None


def _version(*parts: str | None) -> str | None:
    out: list[str] = []
    for p in parts:
        if not p:
            break
        out.append(p)
    return ".".join(out) or None


def _uncached(ua: str) -> dict[str, Any]:
    global _parse
    if _parse is None:
        from ua_parser import parse

        _parse = parse
    r = _parse(ua)
    out: dict[str, Any] = {"original": ua}
    agent = r.user_agent
    out["name"] = agent.family if agent is not None else "Other"
    if agent is not None:
        v = _version(agent.major, agent.minor, agent.patch, agent.patch_minor)
        if v:
            out["version"] = v
    os_ = r.os
    if os_ is not None and os_.family and os_.family != "Other":
        os_out: dict[str, Any] = {"name": os_.family}
        v = _version(os_.major, os_.minor, os_.patch, os_.patch_minor)
        if v:
            os_out["version"] = v
            os_out["full"] = f"{os_.family} {v}"
        out["os"] = os_out
    dev = r.device
    out["device"] = {"name": dev.family if dev is not None and dev.family else "Other"}
    return out


def user_agent(ua: str) -> dict[str, Any]:
    """ECS ``user_agent`` for one user agent string (memoized; treat as read-only)."""
    hit = _cache.get(ua)
    if hit is None:
        hit = _uncached(ua)
        if len(_cache) >= _CACHE_MAX:
            _cache.clear()
        _cache[ua] = hit
    return hit
