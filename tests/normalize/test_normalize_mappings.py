"""The OpenSearch index template: generated from ECS 8.11 (the checked-in file is fresh), the
mapping fixes the issue names, and the whole shared testdata indexed through the template's
rules in every schema with zero rejections and under the field limit."""

from __future__ import annotations

import copy
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from aggregator.ingest.envelopes import Kind
from aggregator.normalize import SCHEMAS, EventContext, Normalizer
from aggregator.normalize.mappings import generate, render
from connectors.base import envelope_event
from connectors.opensearch import ECS_MAPPINGS, TOTAL_FIELDS_LIMIT
from tests.connectors.opensearch_rules import Index
from tests.normalize.corpus import corpus_records
from tests.normalize.ecs_schema import ECS_FLAT

ROOT = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 1, 1, tzinfo=UTC)
CTX = EventContext(
    account_name="prod",
    ou_path="Root/Prod",
    ou_ids=("ou-1",),
    account_tags={"env": "prod"},
    organization_id="o-abcdefghij",
    archive_bucket="central",
    archive_key="k.json.gz",
)


def _prop(path: str, mappings: dict[str, Any] = ECS_MAPPINGS) -> dict[str, Any]:
    node: dict[str, Any] = mappings
    for part in path.split("."):
        node = node["properties"][part]
    return node


def test_checked_in_mappings_are_fresh() -> None:
    """connectors/opensearch_mappings.json is what the generator makes from ecs_flat.yml."""
    text = (ROOT / "connectors" / "opensearch_mappings.json").read_text()
    assert text == render(generate(ECS_FLAT)), (
        "regenerate: python -m aggregator.normalize.mappings ecs_flat.yml "
        "connectors/opensearch_mappings.json"
    )


def test_the_fixes_of_the_issue() -> None:
    ua = _prop("user_agent.original")
    assert ua["type"] == "keyword"
    assert ua["fields"]["text"]["type"] == "text"
    assert _prop("aws.cloudtrail.user_identity.user_name")["type"] == "keyword"
    rp = _prop("aws.cloudtrail.request_parameters")
    assert (rp["type"], rp["ignore_above"], rp["fields"]["text"]["type"]) == (
        "keyword",
        1024,
        "text",
    )
    assert _prop("unmapped")["type"] == "flat_object"
    assert _prop("eventTime") == {"type": "date", "ignore_malformed": True}
    assert _prop("source.ip")["type"] == "ip"
    assert _prop("source.geo.location")["type"] == "geo_point"
    assert _prop("source.as.number")["type"] == "long"


def _docs(schema: str, testdata: Path) -> list[tuple[str, dict[str, Any]]]:
    norm = Normalizer()
    out = []
    for where, record, kind in corpus_records(testdata):
        if kind is Kind.DIGEST:
            continue
        doc = norm.normalize(record, schema, now=NOW, context=CTX)  # type: ignore[arg-type]
        out.append((where, envelope_event(doc) or doc))  # what the connector sends
    return out


def _index_all(
    mappings: dict[str, Any], docs: list[tuple[str, dict[str, Any]]]
) -> tuple[Counter[str], Index]:
    index = Index(mappings, TOTAL_FIELDS_LIMIT)
    rejected: Counter[str] = Counter()
    for _, doc in docs:
        err = index.index(doc)
        if err:
            rejected[err[:150]] += 1
    return rejected, index


@pytest.mark.parametrize("schema", SCHEMAS)
def test_whole_testdata_indexes_with_zero_rejections(schema: str, testdata: Path) -> None:
    """Every document of every schema is accepted (types, malformed values, field limit); one
    index holds each schema, as a connector's per-day indices do."""
    docs = _docs(schema, testdata)
    rejected, index = _index_all(ECS_MAPPINGS, docs)
    print(f"{schema}: {len(docs)} documents, {sum(rejected.values())} rejected, "
          f"{index.fields}/{TOTAL_FIELDS_LIMIT} fields")  # fmt: skip
    assert len(docs) > 1100
    assert rejected == Counter(), rejected.most_common(10)
    assert index.fields <= TOTAL_FIELDS_LIMIT


def test_the_rules_reject_what_the_old_template_got_wrong(testdata: Path) -> None:
    """The check can fail: without unmapped as flat_object OCSF documents clash (a key an
    object in one record and a value in another) and nearly fill the field limit; with a
    strict eventTime date raw documents with a non-ISO eventTime are rejected."""
    no_flat = copy.deepcopy(ECS_MAPPINGS)
    del no_flat["properties"]["unmapped"]
    rejected, index = _index_all(no_flat, _docs("ocsf", testdata))
    assert any(r.startswith("mapper_parsing_exception: ") and "[unmapped." in r for r in rejected)
    assert index.fields > 1500
    strict = copy.deepcopy(ECS_MAPPINGS)
    strict["properties"]["eventTime"] = {"type": "date"}
    rejected, _ = _index_all(strict, _docs("raw", testdata))
    assert any("eventTime" in r for r in rejected)


def test_rules_follow_opensearch_semantics() -> None:
    mappings = {
        "dynamic": True,
        "dynamic_templates": ECS_MAPPINGS["dynamic_templates"],
        "properties": {"a": {"type": "ip"}, "o": {"properties": {}}, "f": {"type": "flat_object"}},
    }
    index = Index(mappings, 5)
    assert index.index({"a": "10.0.0.1", "f": {"x": {"y": 1}}}) is None
    assert "type [ip]" in (index.index({"a": "10.0.0.01"}) or "")
    assert "object mapping" in (index.index({"o": "value"}) or "")
    assert index.index({"n": 1}) is None  # a new field: keyword by the dynamic template
    assert index.index({"n": "text later"}) is None  # still a keyword: accepted
    assert "failed to parse" in (index.index({"n": {"now": "an object"}}) or "")
    assert "Limit of total fields" in (index.index({"p": 1, "q": 2}) or "")
