"""Every record in the shared testdata (all folders, all envelopes) normalizes to all three
schemas with zero exceptions, and every output serializes."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import orjson

from aggregator.ingest.envelopes import Kind
from aggregator.normalize import SCHEMAS, EventContext, Normalizer
from tests.normalize.corpus import corpus_records

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def test_whole_testdata_through_all_schemas(testdata: Path) -> None:
    norm = Normalizer()
    ctx = EventContext(account_name="a", archive_bucket="b", archive_key="k")
    kinds: Counter[str] = Counter()
    failures: list[str] = []
    for where, record, kind in corpus_records(testdata):
        kinds[str(kind)] += 1
        if kind is Kind.DIGEST:
            continue  # digests are recognised and are not events
        for schema in SCHEMAS:
            try:
                orjson.dumps(norm.normalize(record, schema, now=NOW, context=ctx))  # type: ignore[arg-type]
            except Exception as exc:  # report all, not just the first
                failures.append(f"{where} [{schema}]: {exc!r}")
    assert failures == []
    # The corpus really covers every envelope and record kind.
    assert kinds["record"] > 1000
    assert kinds["log_file"] >= 40
    assert kinds["eventbridge"] >= 10
    assert kinds["insight"] == 3
    assert kinds["digest"] == 2
    assert kinds["None"] >= 1  # objects the envelope parser rejects still normalize
