"""Route and filter before sinks: include / exclude conditions per connector, matched on the
archived record and discovery's account; filtered events advance the cursor and are counted."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from aggregator.aws.inventory import Account
from aggregator.config import ForwardSettings
from aggregator.forward.filters import EventFilter
from aggregator.state import State
from connectors.base import EventCondition
from tests.fakes.events import stratus_records
from tests.fakes.opensearch import FakeOpenSearch
from tests.forward.test_forward_forwarder import MemoryArchive, add_object, fwd_of, os_conn

PROD = Account("111111111111", name="pay", ou_path="Root/Prod/Payments",
               ou_ids=("r-ab12", "ou-ab12-prod"), tags={"env": "prod", "team": "pay"})  # fmt: skip
DEV = Account("222222222222", name="dev", ou_path="Root/Dev", tags={"env": "dev"})


def conds(*items: dict[str, Any]) -> list[EventCondition]:
    return [EventCondition.model_validate(i) for i in items]


def rec(**kw: Any) -> dict[str, Any]:
    base = {"eventSource": "ec2.amazonaws.com", "eventName": "DescribeInstances",
            "readOnly": True, "recipientAccountId": PROD.id, "awsRegion": "eu-west-1",
            "eventType": "AwsApiCall"}  # fmt: skip
    return {**base, **kw}


def accounts(record: dict[str, Any]) -> Account | None:
    return {PROD.id: PROD, DEV.id: DEV}.get(record.get("recipientAccountId", ""))


def test_exclude_read_only_describe_and_list() -> None:
    """The SIEM does not want read-only Describe*/List* calls; everything else goes."""
    f = EventFilter([], conds({"read_only": True, "event_name": ["Describe*", "List*"]}))
    assert not f.accept(rec())
    assert not f.accept(rec(eventName="ListBuckets"))
    assert not f.accept(rec(readOnly="true"))  # older records spell it as a string
    assert f.accept(rec(eventName="DescribeInstances", readOnly=False))
    assert f.accept(rec(eventName="GetObject"))  # read-only but not Describe/List
    assert f.accept(rec(eventName="RunInstances", readOnly=False))
    assert f.accept({"eventName": "DescribeX"})  # no readOnly at all: not read-only


def test_include_any_condition_and_all_fields_within_one() -> None:
    f = EventFilter(
        conds(
            {"event_source": "iam.amazonaws.com"},
            {"event_source": "ec2.amazonaws.com", "region": ["us-*", "eu-west-1"]},
        ),
        [],
    )
    assert f.accept(rec(eventSource="iam.amazonaws.com", awsRegion="ap-south-1"))
    assert f.accept(rec())
    assert f.accept(rec(awsRegion="us-east-2"))
    assert not f.accept(rec(awsRegion="ap-south-1"))
    assert not f.accept(rec(eventSource="s3.amazonaws.com"))


def test_account_ou_and_tag_conditions_use_discovery() -> None:
    """OU by path pattern or OU id, tags as key=value (patterns) or a bare key; an event of an
    account discovery does not know matches neither."""
    by_ou = EventFilter(conds({"ou": "Root/Prod/*"}), [], accounts)
    assert by_ou.accept(rec())
    assert not by_ou.accept(rec(recipientAccountId=DEV.id))
    assert not by_ou.accept(rec(recipientAccountId="333333333333"))
    assert EventFilter(conds({"ou": "ou-ab12-prod"}), [], accounts).accept(rec())
    tagged = EventFilter([], conds({"tag": ["env=dev", "team"]}), accounts)
    assert not tagged.accept(rec())  # has a team tag
    assert not tagged.accept(rec(recipientAccountId=DEV.id))  # env=dev
    assert tagged.accept(rec(recipientAccountId="333333333333"))
    assert EventFilter(conds({"tag": "env=pr*"}), [], accounts).accept(rec())
    by_id = EventFilter(conds({"account_id": [DEV.id]}), [])
    assert by_id.accept(rec(recipientAccountId=DEV.id))
    assert not by_id.accept(rec())


def test_error_code_and_event_type() -> None:
    f = EventFilter([], conds({"error_code": ["AccessDenied", "*UnauthorizedOperation"]}))
    assert not f.accept(rec(errorCode="Client.UnauthorizedOperation"))
    assert f.accept(rec())
    only_errors = EventFilter([], conds({"error_code": ""}))
    assert not only_errors.accept(rec())
    assert only_errors.accept(rec(errorCode="AccessDenied"))
    svc = EventFilter(conds({"event_type": "AwsServiceEvent"}), [])
    assert svc.accept(rec(eventType="AwsServiceEvent"))
    assert not svc.accept(rec())


def test_conditions_are_validated() -> None:
    with pytest.raises(ValidationError, match="at least one field"):
        EventCondition.model_validate({})
    with pytest.raises(ValidationError, match="Extra inputs"):
        EventCondition.model_validate({"eventName": "x"})  # option names are snake_case
    with pytest.raises(ValidationError):
        ForwardSettings.model_validate(
            {"connectors": [os_conn("http://a", exclude=[{"read_only": "maybe"}])]}
        )


async def test_filtered_events_advance_the_cursor_and_are_counted(
    tmp_path: Path, testdata: Path
) -> None:
    """The sink gets only what passes; the cursor ends past every object; filtered events are
    counted in the cursor's totals and the lane's status (the /metrics counter)."""
    server = FakeOpenSearch()
    await server.start()
    try:
        state = State(tmp_path / "s.db")
        archive = MemoryArchive()
        recs = stratus_records(testdata)
        for i in range(0, len(recs), 50):
            add_object(state, archive, f"AWSLogs/o{i:04d}.json.gz", recs[i : i + 50])
        exclude = [{"read_only": True}]
        settings = ForwardSettings.model_validate(
            {"connectors": [os_conn(server.url, exclude=exclude)], "batch_max_wait_secs": 0}
        )
        fwd = fwd_of(settings, state, archive, bucket="c")
        await fwd.drain()
        read_only = sum(1 for r in recs if r.get("readOnly") is True)
        assert 0 < read_only < len(recs)
        assert server.doc_count() == len(recs) - read_only
        assert fwd.backlog("os") == 0
        (row,) = fwd.store.connectors()
        assert (row.delivered, row.filtered) == (len(recs) - read_only, read_only)
        assert fwd.lanes["os"].status.filtered == read_only
    finally:
        await server.stop()


async def test_a_connector_that_filters_everything_still_moves(
    tmp_path: Path, testdata: Path
) -> None:
    """Nothing passes: no request is sent, yet the cursor reaches the end in bounded steps."""
    state = State(tmp_path / "s.db")
    archive = MemoryArchive()
    recs = stratus_records(testdata)
    for i in range(0, len(recs), 50):
        add_object(state, archive, f"AWSLogs/o{i:04d}.json.gz", recs[i : i + 50])
    settings = ForwardSettings.model_validate(
        {"connectors": [os_conn("http://127.0.0.1:9", include=[{"event_name": "Nope"}])],
         "batch_max_wait_secs": 0, "batch_max_events": 10}
    )  # fmt: skip
    fwd = fwd_of(settings, state, archive, bucket="c")
    lane = fwd.lanes["os"]
    steps = 0
    while await lane.step():
        steps += 1
    assert fwd.backlog("os") == 0
    assert steps >= 1
    assert lane.status.filtered == len(recs)
