"""The normalizer's fast paths give exactly what the general code gives: the optimistic
flatten pass vs the capped walk, the redaction quick check vs the full walk, and the per-shape
aws.cloudtrail steps of ECS vs the general loop over the record. Compared on the whole shared
testdata and on generated records, byte for byte (key order included)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import aggregator.normalize.ecs as ecs_mod
from aggregator.normalize import Redactor, to_json
from aggregator.normalize._util import Flattener
from aggregator.normalize.ecs import to_ecs
from aggregator.normalize.redact import DEFAULT_RULES
from tests.normalize.corpus import TESTDATA, corpus_records
from tests.normalize.test_properties import json_values, records

NOW = "2026-01-01T00:00:00.000Z"
CORPUS = [rec for _, rec, _ in corpus_records(TESTDATA)]
FLATTENERS = [
    Flattener(),
    Flattener(max_fields=5, max_chars=200, max_value_chars=30),
    Flattener(max_fields=3, max_chars=4096, max_value_chars=1024),
    Flattener(max_fields=512, max_chars=60, max_value_chars=8),
]


def _same_flatten(value: Any) -> None:
    for fl in FLATTENERS:
        fast, fast_cut = fl.flatten(value)
        capped, capped_cut = fl.flatten_capped(value)
        assert (orjson.dumps(fast), fast_cut) == (orjson.dumps(capped), capped_cut)


def test_flatten_fast_pass_matches_capped_walk_on_testdata() -> None:
    objects = [v for rec in CORPUS for v in rec.values() if isinstance(v, dict | list)]
    assert len(objects) > 1000
    for value in objects:
        _same_flatten(value)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=json_values)
def test_flatten_fast_pass_matches_capped_walk(value: Any) -> None:
    _same_flatten(value)


def test_flatten_fast_pass_cuts_like_the_capped_walk() -> None:
    fl = Flattener(max_value_chars=4)
    assert fl.flatten({"a": "abcdefgh", "b": ["xy", "123456"]}) == (
        {"a": "abcd", "b": ["xy", "1234"]},
        True,
    )


REDACTORS = [
    Redactor(),
    Redactor([*DEFAULT_RULES, ("userIdentity.sessionContext.sourceIdentity", "drop")]),
    Redactor([("requestParameters.*", "mask")]),
    Redactor([]),
]


def _same_redaction(record: dict[str, Any]) -> None:
    for red in REDACTORS:
        walked = red._walk(record, red._root, 0)
        expected = walked if isinstance(walked, dict) else record
        got = red.apply(record)
        assert to_json(got) == to_json(expected)
        assert (got is record) == (expected is record)


def test_redaction_quick_check_matches_full_walk_on_testdata() -> None:
    for rec in CORPUS:
        _same_redaction(rec)


@pytest.mark.parametrize(
    "params",
    [
        [{"password": "p"}],  # a list is walked element by element
        [[{"password": "p"}]],
        {"password": None},
        {"password": "p", "x": 1},
        {"other": "p"},
        "password",
        None,
    ],
)
def test_redaction_quick_check_odd_shapes(params: Any) -> None:
    record = {"eventName": "X", "requestParameters": params, "responseElements": params}
    _same_redaction(record)
    if params == [{"password": "p"}]:
        assert Redactor().apply(record)["requestParameters"] == [{"password": "[REDACTED]"}]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(record=records)
def test_redaction_quick_check_matches_full_walk(record: dict[str, Any]) -> None:
    _same_redaction(record)


@pytest.fixture
def general_loop(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Returns a to_ecs that always takes the general loop (no shape plan)."""

    def run(record: dict[str, Any], fl: Flattener) -> bytes:
        with monkeypatch.context() as m:
            m.setattr(ecs_mod, "_plans", {})
            m.setattr(ecs_mod, "_plan", lambda shape: None)
            return to_json(to_ecs(record, now_iso=NOW, context=None, flattener=fl))

    return run


def test_shape_steps_match_general_loop_on_testdata(general_loop: Any) -> None:
    for fl in FLATTENERS[:2]:
        for rec in CORPUS:
            fast = to_json(to_ecs(rec, now_iso=NOW, context=None, flattener=fl))
            assert fast == general_loop(rec, fl)


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    record=records | st.dictionaries(st.text(max_size=20), json_values, max_size=8),
    which=st.sampled_from([0, 1]),
)
def test_shape_steps_match_general_loop(
    general_loop: Any, record: dict[str, Any], which: int
) -> None:
    fl = FLATTENERS[which]
    fast = to_json(to_ecs(record, now_iso=NOW, context=None, flattener=fl))
    assert fast == general_loop(record, fl)
