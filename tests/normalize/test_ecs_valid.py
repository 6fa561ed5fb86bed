"""Every field of every ECS document ctagg makes from the shared testdata is an ECS 8.11 field
of the right type (by ../shared/reference/ecs-8.11/ecs_flat.yml) or sits under aws.* / ctagg.*;
and the ECS additions (user agent, TLS, GeoIP, IAM subjects, session context) as Elastic's
users expect them."""

from __future__ import annotations

import copy
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from aggregator.config.normalize import GeoIPSettings, NormalizeSettings
from aggregator.ingest.envelopes import Kind
from aggregator.normalize import EventContext, Normalizer, normalize
from aggregator.normalize.ecs import ECS_FIELDS
from tests.normalize.corpus import corpus_records
from tests.normalize.ecs_schema import ecs_fields, ecs_names, problems
from tests.normalize.mmdb import ASN, CITY, write_mmdb

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


@pytest.fixture(scope="module")
def geo_normalizer(tmp_path_factory: pytest.TempPathFactory) -> Normalizer:
    d = tmp_path_factory.mktemp("mmdb")
    city = write_mmdb(d / "city.mmdb", CITY, "GeoLite2-City")
    asn = write_mmdb(d / "asn.mmdb", ASN, "GeoLite2-ASN")
    return Normalizer(NormalizeSettings(geoip=GeoIPSettings(city_db=str(city), asn_db=str(asn))))


def test_every_emitted_field_is_ecs_or_ours(testdata: Path) -> None:
    """Zero invalid fields over the whole testdata; the ECS names used are exactly those the
    normalizer declares (the template is generated from that list)."""
    norm = Normalizer()
    bad: Counter[str] = Counter()
    names: Counter[str] = Counter()
    n = 0
    for _, record, kind in corpus_records(testdata):
        if kind is Kind.DIGEST:
            continue
        doc = norm.normalize(record, "ecs", now=NOW, context=CTX)
        n += 1
        bad.update(problems(doc))
        names.update(ecs_names(doc))
    print(f"ECS 8.11: {len(names)} ECS fields used over {n} documents, {sum(bad.values())} invalid")
    assert n > 1100
    assert bad == Counter(), bad.most_common(20)
    assert set(names) <= set(ECS_FIELDS)
    assert len(names) >= 40


def test_declared_fields_are_ecs_8_11() -> None:
    fields = ecs_fields()
    assert [f for f in ECS_FIELDS if f not in fields] == []
    assert len(set(ECS_FIELDS)) == len(ECS_FIELDS)


def _rec(**kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "eventVersion": "1.08",
        "eventTime": "2026-01-01T00:00:00Z",
        "eventSource": "iam.amazonaws.com",
        "eventName": "UpdateUser",
        "eventID": "e1",
        "eventType": "AwsApiCall",
        "awsRegion": "eu-west-1",
        "recipientAccountId": "111111111111",
        "sourceIPAddress": "198.51.100.7",
        "userAgent": "aws-cli/2.13.5 Python/3.11.4 Linux/5.10.0 exe/x86_64 prompt/off",
        "userIdentity": {
            "type": "AssumedRole",
            "principalId": "AROAEXAMPLE:alice",
            "arn": "arn:aws:sts::111111111111:assumed-role/Admin/alice",
            "accountId": "111111111111",
            "sessionContext": {
                "attributes": {"mfaAuthenticated": "true", "creationDate": "2026-01-01T00:00:00Z"},
                "sessionIssuer": {
                    "type": "Role",
                    "arn": "arn:aws:iam::111111111111:role/Admin",
                    "userName": "Admin",
                },
            },
        },
        "requestParameters": {"userName": "bob", "newUserName": "robert"},
        "tlsDetails": {
            "tlsVersion": "TLSv1.3",
            "cipherSuite": "TLS_AES_128_GCM_SHA256",
            "clientProvidedHostHeader": "iam.amazonaws.com",
        },
    }
    base.update(kw)
    return base


def test_every_field_valid_with_geoip(testdata: Path, geo_normalizer: Normalizer) -> None:
    """With GeoIP databases, source.geo.* and source.as.* are valid ECS too."""
    doc = geo_normalizer.normalize(_rec(), "ecs", now=NOW)
    assert problems(doc) == []
    assert doc["source"]["geo"] == {
        "city_name": "Linköping",
        "continent_name": "Europe",
        "country_iso_code": "SE",
        "country_name": "Sweden",
        "location": {"lat": 58.4167, "lon": 15.6167},
        "postal_code": "581 00",
        "region_iso_code": "SE-E",
        "region_name": "Östergötland County",
        "timezone": "Europe/Stockholm",
    }
    assert doc["source"]["as"] == {"number": 29518, "organization": {"name": "Bredband2 AB"}}
    v6 = geo_normalizer.normalize(_rec(sourceIPAddress="2001:db8::5"), "ecs", now=NOW)
    assert v6["source"]["geo"]["country_iso_code"] == "GB"
    assert "as" not in v6["source"]
    miss = geo_normalizer.normalize(_rec(sourceIPAddress="203.0.113.9"), "ecs", now=NOW)
    assert "geo" not in miss["source"]
    svc = geo_normalizer.normalize(_rec(sourceIPAddress="AWS Internal"), "ecs", now=NOW)
    assert "geo" not in svc["source"]


def test_iam_user_change_fields() -> None:
    """UpdateUser: user.target.name, user.changes.name, related.user; the actor's user.name is
    the session issuer's userName; the session context under Elastic's names."""
    doc = normalize(_rec(), "ecs", now=NOW)
    assert doc["user"]["name"] == "Admin"
    assert doc["user"]["target"] == {"name": "bob"}
    assert doc["user"]["changes"] == {"name": "robert"}
    assert doc["related"]["user"] == ["Admin", "bob", "robert"]
    assert doc["event"]["category"] == ["iam"]
    assert doc["event"]["type"] == ["user", "change"]
    sc = doc["aws"]["cloudtrail"]["user_identity"]["session_context"]
    assert sc["mfa_authenticated"] == "true"
    assert sc["creation_date"] == "2026-01-01T00:00:00Z"
    assert sc["session_issuer"]["arn"] == "arn:aws:iam::111111111111:role/Admin"
    assert "attributes" not in sc


def test_iam_group_and_created_user_ids() -> None:
    created = _rec(
        eventName="CreateGroup",
        requestParameters={"groupName": "admins"},
        responseElements={"group": {"groupName": "admins", "groupId": "AGPAEXAMPLE"}},
    )
    assert normalize(created, "ecs", now=NOW)["group"] == {"name": "admins", "id": "AGPAEXAMPLE"}
    user = _rec(
        eventName="CreateUser",
        requestParameters={"userName": "bob"},
        responseElements={"user": {"userName": "bob", "userId": "AIDAEXAMPLE"}},
    )
    assert normalize(user, "ecs", now=NOW)["user"]["target"] == {"name": "bob", "id": "AIDAEXAMPLE"}


@pytest.mark.parametrize(
    ("identity", "name"),
    [
        ({"type": "IAMUser", "userName": "alice", "arn": "arn:aws:iam::1:user/x"}, "alice"),
        (
            {
                "type": "AssumedRole",
                "arn": "arn:aws:sts::1:assumed-role/R/s",
                "sessionContext": {"sessionIssuer": {"userName": "R"}},
            },
            "R",
        ),
        ({"type": "AssumedRole", "arn": "arn:aws:sts::1:assumed-role/R/sess"}, "sess"),
        ({"type": "Root", "arn": "arn:aws:iam::1:root"}, "root"),
        ({"type": "AWSService", "invokedBy": "ec2.amazonaws.com"}, "ec2.amazonaws.com"),
    ],
)
def test_user_name_precedence(identity: dict[str, Any], name: str) -> None:
    """userName, then the session issuer's userName, then the ARN's last part."""
    doc = normalize(_rec(eventName="ListUsers", userIdentity=identity), "ecs", now=NOW)
    assert doc["user"]["name"] == name


def test_user_agent_and_tls() -> None:
    doc = normalize(_rec(), "ecs", now=NOW)
    ua = doc["user_agent"]
    assert ua["name"] == "aws-cli"
    assert ua["version"] == "2.13.5"
    assert ua["original"].startswith("aws-cli/2.13.5")
    assert doc["tls"] == {
        "version": "1.3",
        "version_protocol": "tls",
        "cipher": "TLS_AES_128_GCM_SHA256",
        "client": {"server_name": "iam.amazonaws.com"},
    }
    plain = Normalizer(NormalizeSettings(parse_user_agent=False)).normalize(_rec(), "ecs", now=NOW)
    assert plain["user_agent"] == {"original": ua["original"]}


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        (lambda d: d["event"].__setitem__("category", ["cloud"]), "not allowed"),
        (lambda d: d["event"].__setitem__("type", ["start"]), "not expected"),
        (lambda d: d["event"].__setitem__("outcome", ["success"]), "an array"),
        (lambda d: d["source"].__setitem__("ip", "225.01.00.16"), "is not a ip"),
        (lambda d: d["user"].__setitem__("full_nam", "x"), "not an ECS 8.11 field"),
        (lambda d: d.__setitem__("@timestamp", "yesterday"), "is not a date"),
        (lambda d: d.__setitem__("tags", "a"), "array"),
    ],
)
def test_checker_catches_planted_defects(change: Any, needle: str) -> None:
    doc = copy.deepcopy(normalize(_rec(), "ecs", now=NOW))
    assert problems(doc) == []
    change(doc)
    assert any(needle in p for p in problems(doc)), problems(doc)
