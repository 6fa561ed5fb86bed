"""Tiny MaxMind-format databases written by the tests themselves (mmdb-writer), so GeoIP
enrichment is tested on a real .mmdb file without downloading anything."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mmdb_writer import MMDBWriter
from netaddr import IPSet


def write_mmdb(path: Path, entries: dict[str, dict[str, Any]], database_type: str) -> Path:
    """``entries``: network (``89.160.20.156/32``, ``2001:db8::/32``) → record."""
    writer = MMDBWriter(ip_version=6, ipv4_compatible=True, database_type=database_type)
    for network, record in entries.items():
        writer.insert_network(IPSet([network]), record)
    writer.to_db_file(str(path))
    return path


CITY = {
    "198.51.100.0/24": {
        "city": {"names": {"en": "Linköping"}},
        "continent": {"code": "EU", "names": {"en": "Europe"}},
        "country": {"iso_code": "SE", "names": {"en": "Sweden"}},
        "location": {"latitude": 58.4167, "longitude": 15.6167, "time_zone": "Europe/Stockholm"},
        "postal": {"code": "581 00"},
        "subdivisions": [{"iso_code": "E", "names": {"en": "Östergötland County"}}],
    },
    "2001:db8::/32": {
        "country": {"iso_code": "GB", "names": {"en": "United Kingdom"}},
        "location": {"latitude": 51.5, "longitude": -0.1},
    },
}
ASN = {
    "198.51.100.0/24": {
        "autonomous_system_number": 29518,
        "autonomous_system_organization": "Bredband2 AB",
    },
}
