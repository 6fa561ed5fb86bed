"""Golden tests: our OCSF 1.1 output matches Amazon Security Lake's expected output for every
raw → OCSF pair in the shared testdata, on the fields the issue names.

Differences we translate (1.0.0-rc.2 pairs only): API Activity was class 3005 in category 3
(IAM) and is 6003 in category 6 (Application Activity) in 1.1, so type_uid 3005xx → 6003xx;
rc.2 ``actor.user`` had ``uid`` = principalId, ``uuid`` = ARN, ``account_uid``, renamed in 1.1
to ``uid_alt``, ``uid`` and ``account.uid``.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from aggregator.ingest.envelopes import Parsed, iter_records
from aggregator.normalize import normalize
from tests.normalize.corpus import TESTDATA
from tests.normalize.ocsf_compare import compare, dig, expected_fields

NOW = datetime(2026, 1, 1, tzinfo=UTC)
ASL = TESTDATA / "aws-security-lake-ocsf"


def _pairs() -> list[dict[str, Any]]:
    with (ASL / "pairs.jsonl").open() as f:
        return [json.loads(line) for line in f]


PAIRS = _pairs()


def _input_record(pair: dict[str, Any]) -> dict[str, Any]:
    """The pair's input read from its file on disk, through the envelope parser (single
    record JSON for 1.1.0, a gzip ``{"Records": [...]}`` log file for rc.2)."""
    version_dir = "ocsf-" + pair["ocsf_version"]
    name = pair["pair_id"].split(f"-{pair['category_dir']}-", 1)[1]
    folder = ASL / version_dir / pair["category_dir"]
    path = next(p for p in folder.iterdir() if p.name.startswith(f"{name}.input."))
    items = list(iter_records(path.read_bytes(), str(path)))
    assert len(items) == 1, items
    assert isinstance(items[0], Parsed), items
    assert items[0].record == (
        pair["input"]["Records"][0] if "Records" in pair["input"] else pair["input"]
    )
    return items[0].record


def test_all_41_pairs_present() -> None:
    assert len(PAIRS) == 41
    assert {p["ocsf_version"] for p in PAIRS} == {"1.1.0", "1.0.0-rc.2"}


@pytest.mark.parametrize("pair", PAIRS, ids=[p["pair_id"] for p in PAIRS])
def test_ocsf_matches_security_lake(pair: dict[str, Any]) -> None:
    """Class, activity, type, category, api.operation, api.service.name, actor.user,
    src_endpoint.ip, cloud.region, time and metadata.uid equal Security Lake's."""
    record = _input_record(pair)
    doc = normalize(record, "ocsf", now=NOW)
    assert compare(pair, doc) == {}
    # The comparison is not vacuous: the expected side really carries these values.
    exp = expected_fields(pair)
    assert exp["class_uid"] in (3001, 3002, 6003)
    assert exp["metadata.uid"]
    assert exp["time"]
    assert exp["api.operation"]


def test_rc2_api_activity_is_translated_to_6003() -> None:
    """rc.2 samples say 3005; we emit the OCSF 1.1 class 6003 for the same records."""
    rc2 = [p for p in PAIRS if p["expected_ocsf"]["class_uid"] == 3005]
    assert len(rc2) == 7
    for pair in rc2:
        doc = normalize(_input_record(pair), "ocsf", now=NOW)
        assert doc["class_uid"] == 6003
        assert doc["category_uid"] == 6
        assert doc["type_uid"] == 600300 + pair["expected_ocsf"]["activity_id"]


def test_comparison_detects_a_difference() -> None:
    """The golden comparison fails when one field differs (guards against a vacuous test)."""
    pair = PAIRS[0]
    doc = normalize(_input_record(pair), "ocsf", now=NOW)
    doc["actor"]["user"]["uid"] = "arn:aws:iam::000000000000:user/someone-else"
    assert set(compare(pair, doc)) == {"actor.user"}
    doc = normalize(_input_record(pair), "ocsf", now=NOW)
    doc["time"] += 1000
    assert set(compare(pair, doc)) == {"time"}


def _status(doc: dict[str, Any]) -> str | None:
    return doc.get("status")


def test_status_agreement_is_reported() -> None:
    """Status is not in the golden set: Security Lake says 'Other' for successful AssumeRole
    calls; we say 'Success' (no errorCode means the call succeeded). Every other pair agrees."""
    disagree = []
    for pair in PAIRS:
        doc = normalize(_input_record(pair), "ocsf", now=NOW)
        if pair["expected_ocsf"].get("status") != _status(doc):
            disagree.append((pair["pair_id"], pair["expected_ocsf"].get("status"), doc["status"]))
    assert all(exp == "Other" and ours == "Success" for _, exp, ours in disagree), disagree
    assert all("AssumeRole" in pid or "CheckMfa" in pid for pid, _, _ in disagree), disagree


# Beyond the list: attributes Security Lake's 1.1.0 samples also fill. Not compared:
# `status` (see above) and `api.request.uid`, which the samples set to the literal "''" when the
# record has no requestID (we leave it out).
MORE_FIELDS = (
    "severity_id",
    "metadata.product.version",
    "metadata.event_code",
    "http_request.user_agent",
    "src_endpoint.domain",
    "api.response.error",
    "actor.invoked_by",
    "actor.session.issuer",
    "actor.session.is_mfa",
    "user.uid",
    "user.name",
    "policy.uid",
    "session.uid",
    "session.credential_uid",
    "is_mfa",
    "dst_endpoint.svc_name",
)


def test_more_fields_agree_on_1_1_pairs() -> None:
    compared = 0
    for pair in PAIRS:
        if pair["ocsf_version"] != "1.1.0":
            continue
        doc = normalize(_input_record(pair), "ocsf", now=NOW)
        for field in MORE_FIELDS:
            expected = dig(pair["expected_ocsf"], field)
            if expected is None:
                continue
            compared += 1
            assert dig(doc, field) == expected, (pair["pair_id"], field)
    assert compared >= 130
