"""The snapshot series in /metrics (aggregator/service/metrics.py): uploads and failures
counted, the last good upload's time and size kept through a failure."""

from __future__ import annotations

from aggregator.service.metrics import Metrics


def test_snapshot_outcomes_reach_metrics() -> None:
    m = Metrics()
    m.snapshot(4096, 1714564800.0)
    m.snapshot(None, 1714565100.0)  # a failed upload keeps the last good one's time and size
    text = m.exposition().decode()
    assert 'ctagg_snapshots_total{outcome="published"} 1.0' in text
    assert 'ctagg_snapshots_total{outcome="failed"} 1.0' in text
    assert "ctagg_snapshot_last_success_timestamp_seconds 1.7145648e+09" in text
    assert "ctagg_snapshot_bytes 4096.0" in text
