"""Match rate against Elastic's public expected outputs for its CloudTrail pipeline (facts in
elastic/expected.jsonl, see elastic/README.md): on the ECS 8.11 fields Elastic sets, ctagg's
ECS document has the same value for at least 95% of them.

GeoIP comes from a tiny .mmdb the test writes from the records' MaxMind test-database values,
so source.geo.* / source.as.* are compared too (the mapping is ctagg's; the data is given).

Known, deliberate differences: ``cloud.account.id`` when a record has no recipientAccountId
(Elastic falls back to the actor's account; ctagg never merges the actor's account into the
logging account); ``event.type`` ``info`` where Elastic's table has no entry and ctagg names
the verb (DisableKey: change); ``user_agent.version`` of ``Firefox/24.0`` (Elastic ``24.0.``).
"""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from aggregator.config.normalize import GeoIPSettings, NormalizeSettings
from aggregator.normalize import Normalizer
from tests.normalize.ecs_schema import ecs_fields, leaves
from tests.normalize.mmdb import write_mmdb

HERE = Path(__file__).parent / "elastic"
CASES = [json.loads(line) for line in (HERE / "expected.jsonl").read_text().splitlines()]
NOW = datetime(2026, 1, 1, tzinfo=UTC)
TARGET = 0.95


def _same(field: str, got: Any, want: Any, fields: dict[str, dict[str, Any]]) -> bool:
    if fields[field]["type"] == "date":  # a date is an instant, whatever its text form
        try:
            return datetime.fromisoformat(got) == datetime.fromisoformat(want)
        except (TypeError, ValueError):
            return False
    if "array" in (fields[field].get("normalize") or []):  # multi-valued: order is not meaning
        got_l = got if isinstance(got, list) else [got]
        want_l = want if isinstance(want, list) else [want]
        return sorted(map(str, got_l)) == sorted(map(str, want_l))
    return bool(got == want)


@pytest.fixture(scope="module")
def normalizer(tmp_path_factory: pytest.TempPathFactory) -> Normalizer:
    city: dict[str, Any] = {}
    asn: dict[str, Any] = {}
    for case in CASES:
        geo = case["geoip"]
        if geo:
            city[f"{geo['ip']}/32"] = geo["city"]
            if geo["asn"]:
                asn[f"{geo['ip']}/32"] = geo["asn"]
    d = tmp_path_factory.mktemp("elastic-mmdb")
    settings = NormalizeSettings(
        geoip=GeoIPSettings(
            city_db=str(write_mmdb(d / "city.mmdb", city, "GeoLite2-City")),
            asn_db=str(write_mmdb(d / "asn.mmdb", asn, "GeoLite2-ASN")),
        )
    )
    return Normalizer(settings)


def test_match_rate_on_fields_elastic_sets(normalizer: Normalizer) -> None:
    fields = ecs_fields()
    compared = matched = 0
    misses: Counter[str] = Counter()
    detail: list[str] = []
    for case in CASES:
        doc = normalizer.normalize(case["input"], "ecs", now=NOW)
        got = leaves(doc, fields)
        for field, want in case["expected"].items():
            if field not in fields:  # a field of a later ECS version (related.entity, ...)
                continue
            compared += 1
            if field in got and _same(field, got[field], want, fields):
                matched += 1
            else:
                misses[field] += 1
                where = case["source"].rsplit("/", 1)[-1]
                detail.append(f"{where} {field}: {got.get(field)!r} != {want!r}")
    rate = matched / compared
    print(f"Elastic match: {matched}/{compared} = {rate:.3f} over {len(CASES)} records")
    print("misses by field:", dict(misses.most_common()))
    print("\n".join(detail))
    assert len(CASES) >= 10
    assert compared > 300
    assert rate >= TARGET, detail
