"""``source.geo.*`` and ``source.as.*`` from MaxMind-format databases the user supplies.

Optional: without a database nothing is looked up, and nothing is ever downloaded. The files
are the GeoLite2/GeoIP2 layouts (City or Country for geo, ASN for the autonomous system), read
with ``maxminddb`` (memory-mapped, opened once per :class:`~aggregator.normalize.Normalizer`).
Results are memoized per IP (bounded) and shared between outputs (read-only).
"""

from __future__ import annotations

from typing import Any

_CACHE_MAX = 16384
_NONE: tuple[dict[str, Any] | None, dict[str, Any] | None] = (None, None)


def _name(node: Any) -> str | None:
    if isinstance(node, dict):
        names = node.get("names")
        if isinstance(names, dict):
            en = names.get("en")
            if isinstance(en, str):
                return en
    return None


def geo_fields(rec: Any) -> dict[str, Any] | None:
    """ECS ``geo`` fields from a City/Country record."""
    if not isinstance(rec, dict):
        return None
    geo: dict[str, Any] = {}
    continent = rec.get("continent")
    if _name(continent):
        geo["continent_name"] = _name(continent)
    country = rec.get("country")
    iso = country.get("iso_code") if isinstance(country, dict) else None
    if isinstance(iso, str):
        geo["country_iso_code"] = iso
    if _name(country):
        geo["country_name"] = _name(country)
    subs = rec.get("subdivisions")
    if isinstance(subs, list) and subs and isinstance(subs[0], dict):
        sub = subs[0]
        if _name(sub):
            geo["region_name"] = _name(sub)
        code = sub.get("iso_code")
        if isinstance(code, str) and isinstance(iso, str):
            geo["region_iso_code"] = f"{iso}-{code}"
    city = rec.get("city")
    if _name(city):
        geo["city_name"] = _name(city)
    loc = rec.get("location")
    if isinstance(loc, dict):
        lat, lon = loc.get("latitude"), loc.get("longitude")
        if isinstance(lat, int | float) and isinstance(lon, int | float):
            geo["location"] = {"lat": lat, "lon": lon}
        tz = loc.get("time_zone")
        if isinstance(tz, str):
            geo["timezone"] = tz
    postal = rec.get("postal")
    code = postal.get("code") if isinstance(postal, dict) else None
    if isinstance(code, str):
        geo["postal_code"] = code
    return geo or None


def as_fields(rec: Any) -> dict[str, Any] | None:
    """ECS ``as`` fields from an ASN record."""
    if not isinstance(rec, dict):
        return None
    out: dict[str, Any] = {}
    number = rec.get("autonomous_system_number")
    if isinstance(number, int):
        out["number"] = number
    org = rec.get("autonomous_system_organization")
    if isinstance(org, str):
        out["organization"] = {"name": org}
    return out or None


class GeoIP:
    """Lookups in a geo database and/or an ASN database (either may be absent)."""

    def __init__(self, city_db: str | None = None, asn_db: str | None = None) -> None:
        import maxminddb

        self._city = maxminddb.open_database(city_db) if city_db else None
        self._asn = maxminddb.open_database(asn_db) if asn_db else None
        self._cache: dict[str, tuple[dict[str, Any] | None, dict[str, Any] | None]] = {}

    def lookup(self, ip: str) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        """(ECS geo, ECS as) for a valid IP address; (None, None) when not found."""
        hit = self._cache.get(ip)
        if hit is not None:
            return hit
        try:
            geo = geo_fields(self._city.get(ip)) if self._city is not None else None
            asn = as_fields(self._asn.get(ip)) if self._asn is not None else None
        except ValueError:  # not an address the database can look up
            geo = asn = None
        hit = (geo, asn) if geo is not None or asn is not None else _NONE
        if len(self._cache) >= _CACHE_MAX:
            self._cache.clear()
        self._cache[ip] = hit
        return hit

    def close(self) -> None:
        for db in (self._city, self._asn):
            if db is not None:
                db.close()
