"""Process-wide runtime tuning (called once by the entry points that run the pipeline)."""

from __future__ import annotations

import gc

from aggregator.log import get_logger

log = get_logger("aggregator.runtime")

GC_THRESHOLD = (50_000, 20, 100)


def tune_gc() -> None:
    """Raise the cyclic GC thresholds (never lower them).

    Ingest and forwarding allocate many short-lived dicts per event (parsed records,
    normalized docs) while a batch and the current object stay alive; with CPython's default
    threshold (700) the collector rescans those live objects thousands of times per batch.
    Measured: about 40% of the forwarder's CPU (bench/forward.py: syslog, OCSF: 49k -> 84k
    events per CPU-second) and ~10% of an ingest cycle. Idempotent.
    """
    current = gc.get_threshold()
    wanted = tuple(max(a, b) for a, b in zip(current, GC_THRESHOLD, strict=True))
    if wanted != current:
        gc.set_threshold(*wanted)
        log.info("runtime.gc_tuned", threshold=list(wanted))
