"""How long one /metrics scrape takes for a large organization (plain script, prints numbers).

Builds a state with ACCOUNTS × REGIONS sources (each with a committed object, so every account ×
region has freshness gauges and counters), then times ``refresh_from_state`` + exposition, which
is what every Prometheus scrape pays. Usage: python bench/metrics_scrape.py [accounts] [regions]
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from aggregator.service.metrics import Metrics
from aggregator.state import CentralObject, ObjectOutcome, SourceRef, State

REGIONS = [
    "us-east-1",
    "us-east-2",
    "us-west-1",
    "us-west-2",
    "eu-west-1",
    "eu-west-2",
    "eu-west-3",
    "eu-central-1",
    "eu-north-1",
    "ap-south-1",
    "ap-northeast-1",
    "ap-northeast-2",
    "ap-northeast-3",
    "ap-southeast-1",
    "ap-southeast-2",
    "ca-central-1",
    "sa-east-1",
]


def main() -> None:
    accounts = int(sys.argv[1]) if len(sys.argv) > 1 else 500
    regions = REGIONS[: int(sys.argv[2]) if len(sys.argv) > 2 else 17]
    with tempfile.TemporaryDirectory() as tmp:
        state = State(Path(tmp) / "s.db")
        metrics = Metrics()
        t0 = time.perf_counter()
        for a in range(accounts):
            acct = f"{100000000000 + a}"
            for r in regions:
                src = SourceRef(f"b/{acct}/{r}/", acct, r, "b", f"AWSLogs/{acct}/CloudTrail/{r}/")
                o = ObjectOutcome(
                    src,
                    f"k/{acct}/{r}",
                    "p/",
                    "log",
                    None,
                    1,
                    events_in=10,
                    central=CentralObject(f"c/{acct}/{r}", 1, "00", 10, None, None),
                    newest_event_time="2024-05-01T10:00:00Z",
                )
                state.commit_object(o)
                metrics.object_archived(acct, r, events=10, duplicates=1)
        setup = time.perf_counter() - t0
        times = []
        size = 0
        for _ in range(5):
            t0 = time.perf_counter()
            body = metrics.exposition(lambda: metrics.refresh_from_state(state))
            times.append(time.perf_counter() - t0)
            size = len(body)
        series = sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))
        state.close()
    print(f"accounts={accounts} regions={len(regions)} sources={accounts * len(regions)}")
    print(f"setup (commit + count per source): {setup:.1f} s")
    print(
        f"scrape: best {min(times) * 1000:.0f} ms, worst {max(times) * 1000:.0f} ms "
        f"over {len(times)} runs; {series} samples, {size / 1e6:.1f} MB of text"
    )


if __name__ == "__main__":
    main()
