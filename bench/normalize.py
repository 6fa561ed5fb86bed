"""Records/s per schema on one core, next to orjson.loads of the same records.

Input: every CloudTrail record of the shared testdata (all folders, all envelopes), replicated
to ~100k. Each stage runs over the same list, best of 3. The parsed records are moved out of
the cyclic GC's view (gc.freeze) because the real pipeline streams one object at a time and
never holds 100k parsed records; without it the numbers measure the GC, not the normalizer.
Timing is process CPU time (time.process_time), which is less disturbed than wall time by
other work on a shared machine.

    .venv/bin/python bench/normalize.py [--count 100000]
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import aggregator.normalize.ecs as ecs_mod
from aggregator.ingest.envelopes import Kind
from aggregator.normalize import Normalizer, serialized_size
from aggregator.normalize.ecs import to_ecs
from aggregator.normalize.ocsf import to_ocsf
from tests.normalize.corpus import corpus_records


def _testdata() -> Path:
    for parent in (ROOT, *ROOT.parents):
        if (parent / "shared" / "testdata").exists():
            return parent / "shared" / "testdata"
    raise SystemExit("shared/testdata not found")


def _records() -> list[dict[str, Any]]:
    out = []
    for _, rec, kind in corpus_records(_testdata()):
        if kind is not None and kind is not Kind.DIGEST:
            out.append(rec)
    return out


def _time(fn: Callable[[Any], Any], items: list[Any]) -> float:
    best = float("inf")
    for _ in range(3):
        t0 = time.process_time()
        for it in items:
            fn(it)
        best = min(best, time.process_time() - t0)
    return len(items) / best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=100_000)
    args = ap.parse_args()
    base = _records()
    records = [base[i % len(base)] for i in range(args.count)]
    blobs = [orjson.dumps(r) for r in records]
    avg = sum(len(b) for b in blobs) / len(blobs)
    gc.collect()
    gc.freeze()

    now = datetime.now(UTC)
    norm = Normalizer()
    rows: list[tuple[str, float]] = [("orjson.loads (reference)", _time(orjson.loads, blobs))]
    for schema in ("ecs", "ocsf", "raw"):
        rows.append(
            (
                f"normalize {schema} (dict)",
                _time(lambda r, s=schema: norm.normalize(r, s, now=now), records),  # type: ignore[misc]
            )
        )
    for schema in ("ecs", "ocsf", "raw"):
        rows.append(
            (
                f"encode {schema} (JSON bytes)",
                _time(lambda r, s=schema: norm.encode(r, s, now=now), records),  # type: ignore[misc]
            )
        )
    fl = norm.flattener
    rows.append(
        (
            "  mapping only: to_ecs",
            _time(lambda r: to_ecs(r, now_iso="x", context=None, flattener=fl), records),
        )
    )
    rows.append(
        ("  mapping only: to_ocsf", _time(lambda r: to_ocsf(r, now_ms=0, context=None), records))
    )
    rows.append(("  redaction (defaults)", _time(norm.redactor.apply, records)))
    ecs_docs = [norm.normalize(r, "ecs", now=now) for r in records[: len(base)]]
    rows.append(("  size check (ecs doc)", _time(serialized_size, ecs_docs)))
    # The replicated input repeats each userIdentity ~90 times, so the identity memo hits far
    # more often than in a real stream: this row shows ECS without it.
    memo = ecs_mod._identity
    ecs_mod._identity = ecs_mod._identity_uncached
    rows.append(
        (
            "normalize ecs, identity memo off",
            _time(lambda r: norm.normalize(r, "ecs", now=now), records),
        )
    )
    ecs_mod._identity = memo
    rows.append(
        (
            "loads → encode ecs (bytes to bytes)",
            _time(lambda b: norm.encode(orjson.loads(b), "ecs", now=now), blobs),
        )
    )

    print(f"{len(base)} distinct testdata records replicated to {len(records)}, avg {avg:.0f} B")
    print("process CPU time, best of 3; the machine is shared, so expect noise")
    print(f"{'stage':<38} {'records/s':>12} {'us/record':>10}")
    print("-" * 62)
    for name, rate in rows:
        print(f"{name:<38} {rate:>12,.0f} {1e6 / rate:>10.2f}")


if __name__ == "__main__":
    main()
