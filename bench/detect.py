"""Records/s through the full built-in rule pack on one core, derived fields included.

Every measured path computes each record's derived fields (policy / ACL evaluation, ingress
networks: aggregator.normalize.derive) before the rules run, as the service does.

Records: every CloudTrail record in the shared test data (Panther cases, Stratus detonations,
OTRF, AWS docs, cloud-custodian, trailscraper), replicated with distinct eventIDs to N records.
That mix is alert-heavy (most Panther cases are crafted to trigger rules), so it is a
pessimistic load; real trails are mostly read-only calls that meet few rules.

    .venv/bin/python bench/detect.py [N]
"""

from __future__ import annotations

import gc
import json
import sys
import time
from pathlib import Path
from typing import Any

from aggregator.detect.engine import Detector
from aggregator.detect.rules import RuleSet, load_rules
from aggregator.ingest.envelopes import Parsed, iter_records
from aggregator.normalize.derive import with_derived

ROOT = Path(__file__).resolve().parent.parent
TESTDATA = next(
    p / "shared" / "testdata" for p in ROOT.parents if (p / "shared" / "testdata").exists()
)


def corpus() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for line in (TESTDATA / "panther-analysis" / "detection_cases.jsonl").read_text().splitlines():
        out.append(json.loads(line)["log"])
    for sub in (
        "stratus-red-team",
        "otrf-security-datasets",
        "awsdocs",
        "cloud-custodian",
        "trailscraper",
    ):
        for path in sorted((TESTDATA / sub).rglob("*")):
            if path.suffix not in (".json", ".jsonl", ".gz") or "digest" in path.name:
                continue
            for item in iter_records(path.read_bytes(), str(path)):
                if isinstance(item, Parsed):
                    out.append(item.record)
    return out


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
    base = corpus()
    rules = load_rules()
    rs = RuleSet(rules)
    records = []
    for i in range(n):
        r = dict(base[i % len(base)])
        r["eventID"] = f"bench-{i}"
        records.append(r)
    gc.collect()
    gc.freeze()

    t = time.perf_counter()
    matched = sum(len(rs.match(r)) for r in records)
    match_s = time.perf_counter() - t

    det = Detector(rs)
    t = time.perf_counter()
    alerts = 0
    for r in records:
        alerts += len(det.detect(r))
    detect_s = time.perf_counter() - t

    quiet = [r for r in records if not rs.match(r)]
    t = time.perf_counter()
    for r in quiet:
        rs.match(r)
    quiet_s = time.perf_counter() - t

    t = time.perf_counter()
    for r in records:
        v = with_derived(r)
        [x for x in rules if x.predicate(v)]
    flat_s = time.perf_counter() - t

    t = time.perf_counter()
    derived = sum(with_derived(r) is not r for r in records)
    derive_s = time.perf_counter() - t

    print(
        f"rules: {len(rules)} ({len(rs.always)} unindexed, "
        f"{sum(len(v) for v in rs.by_identity.values())} by userIdentity.type); "
        f"corpus {len(base)} records x{n // len(base)}"
    )
    print(f"match only      : {n / match_s:>10,.0f} records/s  ({matched} rule hits)")
    print(
        f"detect + alerts : {n / detect_s:>10,.0f} records/s  "
        f"({alerts} alerts, {alerts / n:.0%} of records)"
    )
    print(f"no index (every rule on every record): {n / flat_s:>10,.0f} records/s")
    print(
        f"derived fields only: {n / derive_s:>10,.0f} records/s  "
        f"({derived} records with derived fields)"
    )
    print(
        f"quiet records   : {len(quiet) / quiet_s:>10,.0f} records/s  "
        f"({len(quiet)} records that raise nothing)"
    )


if __name__ == "__main__":
    main()
