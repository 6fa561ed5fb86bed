"""The hint-mode counters in /metrics come from the cycle report (aggregator/ingest/hints.py)."""

from __future__ import annotations

from aggregator.ingest.work import CycleReport
from aggregator.service.metrics import Metrics


def test_hint_counts_reach_metrics_and_nothing_without_hint_mode() -> None:
    m = Metrics()
    m.cycle_hints(CycleReport(hints_unparseable=5))  # relisted None: hint mode off
    assert b"ctagg_hints_unparseable_total 0.0" in m.exposition()
    report = CycleReport(
        relisted=True,
        hint_messages_deleted=7,
        hint_messages_left=1,
        hints_unparseable=2,
        hints_queued=4,
        hints_forwarded=3,
    )
    m.cycle_hints(report)
    m.cycle_hints(report)
    text = m.exposition().decode()
    assert "ctagg_hints_unparseable_total 4.0" in text
    assert 'ctagg_hint_messages_total{outcome="deleted"} 14.0' in text
    assert 'ctagg_hint_messages_total{outcome="left"} 2.0' in text
    assert 'ctagg_hints_total{outcome="queued"} 8.0' in text
    assert 'ctagg_hints_total{outcome="forwarded"} 6.0' in text
    assert "ctagg_relists_total 2.0" in text
