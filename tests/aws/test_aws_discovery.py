"""discover() against moto's Organizations / STS / EC2 / CloudTrail over real HTTP."""

from __future__ import annotations

from typing import Any

import pytest

from aggregator.aws.clients import Aws
from aggregator.aws.credentials import CredentialBroker
from aggregator.aws.discovery import discover
from aggregator.aws.inventory import (
    Account,
    Inventory,
    Trail,
    account_is_active,
    account_selected,
    build_sources,
    own_trails,
    select_regions,
)
from aggregator.config import AccountDiscovery, Settings
from tests.orgseed import (
    MGMT,
    client,
    hub_user,
    iam_enforced,
    make_settings,
    make_trail,
    put_role,
    seed_org,
)

REGIONS = ["eu-west-1", "us-east-1"]
LAYOUT = {
    "Root/Prod": [("prod-a", {"env": "prod", "team": "pay"}), ("prod-b", {"env": "prod"})],
    "Root/Prod/Payments": [("pay-a", {"env": "prod", "pci": "yes"})],
    "Root/Dev": [("dev-a", {"env": "dev"})],
}


async def _discover(settings: Settings) -> Inventory:
    aws = Aws(settings.aws)
    return await discover(settings, CredentialBroker(settings, aws), aws)


def _settings(moto: str, **discovery: Any) -> Settings:
    doc: dict[str, Any] = {"regions": {"include": REGIONS}, **discovery}
    return make_settings(moto, discovery=doc)


def _by_name(inv: Inventory) -> dict[str, Account]:
    return {a.name: a for a in inv.accounts}


# --------------------------------------------------------------------------- accounts


async def test_multi_account_discovery_ou_paths_tags_regions(moto: str) -> None:
    """Every ACTIVE account of the organization with its OU path, OU ids and tags, and the
    enabled regions narrowed by regions.include."""
    org = seed_org(LAYOUT)

    inv = await _discover(_settings(moto))

    accounts = _by_name(inv)
    assert set(accounts) == {"master", "prod-a", "prod-b", "pay-a", "dev-a"}
    assert inv.organization_id == org.org_id
    assert accounts["master"].ou_path == "Root"
    assert accounts["master"].ou_ids == (org.root_id,)
    assert accounts["prod-a"].ou_path == "Root/Prod"
    assert accounts["pay-a"].ou_path == "Root/Prod/Payments"
    assert accounts["pay-a"].ou_ids == (
        org.root_id,
        org.ou("Root/Prod"),
        org.ou("Root/Prod/Payments"),
    )
    assert accounts["dev-a"].ou_path == "Root/Dev"
    assert dict(accounts["prod-a"].tags) == {"env": "prod", "team": "pay"}
    assert accounts["prod-a"].id == org.accounts["prod-a"]
    assert inv.regions == {a.id: REGIONS for a in inv.accounts}
    assert inv.failures == []
    assert inv.trails == []
    assert inv.sources == []


RULE_CASES: list[tuple[dict[str, Any], set[str]]] = [
    ({}, {"master", "prod-a", "prod-b", "pay-a", "dev-a"}),
    ({"include_ous": ["Root/Prod"]}, {"prod-a", "prod-b", "pay-a"}),
    ({"include_ous": ["Root/Prod/Payments"]}, {"pay-a"}),
    ({"include_ous": ["Root/Pro"]}, set()),  # a path prefix is whole OU names
    ({"include_ous": ["@Root/Dev"]}, {"dev-a"}),  # '@' = replaced by the OU id below
    (
        {"include_ous": ["Root/Prod"], "exclude_ous": ["Root/Prod/Payments"]},
        {"prod-a", "prod-b"},
    ),
    ({"exclude_ous": ["@Root/Prod"]}, {"master", "dev-a"}),
    ({"include_ids": ["#dev-a", "#prod-b"]}, {"dev-a", "prod-b"}),
    ({"exclude_ids": ["#master"]}, {"prod-a", "prod-b", "pay-a", "dev-a"}),
    ({"include_tags": {"env": "prod"}}, {"prod-a", "prod-b", "pay-a"}),
    ({"include_tags": {"pci": "*"}}, {"pay-a"}),
    ({"include_tags": {"env": "prod"}, "exclude_tags": {"team": "pay"}}, {"prod-b", "pay-a"}),
    ({"include_ids": ["#master"], "include_tags": {"env": "dev"}}, {"master", "dev-a"}),
]


async def test_account_include_exclude(moto: str) -> None:
    """Include/exclude by account id, OU path prefix, OU id and tag; exclude wins; include
    rules of different kinds add up. One organization, every rule set in turn ('@path' stands
    for that OU's id, '#name' for that account's id)."""
    org = seed_org(LAYOUT)
    ids = {**org.accounts, "master": MGMT}
    aws = Aws(make_settings(moto).aws)
    broker = CredentialBroker(make_settings(moto), aws)  # one broker across runs, as in service
    for rules, expected in RULE_CASES:
        resolved: dict[str, Any] = {}
        for key, value in rules.items():
            if isinstance(value, list):
                resolved[key] = [
                    org.ou(v[1:]) if v.startswith("@") else ids[v[1:]] if v.startswith("#") else v
                    for v in value
                ]
            else:
                resolved[key] = value
        settings = _settings(
            moto, accounts=resolved, regions={"include": ["us-east-1"]}, trails={"discover": False}
        )

        inv = await discover(settings, broker, aws)

        assert {a.name for a in inv.accounts} == expected, rules
        assert set(inv.regions) == {ids[n] for n in expected}, rules


def test_account_selected_rules_unit() -> None:
    """The pure rule on a hand-made account: path prefixes match whole names only."""
    a = Account(
        id="111111111111",
        ou_path="Root/Prod/Payments",
        ou_ids=("r-ab12", "ou-ab12-11111111", "ou-ab12-22222222"),
        tags={"env": "prod"},
    )
    assert account_selected(a, AccountDiscovery(include_ous=["Root/Prod"]))
    assert account_selected(a, AccountDiscovery(include_ous=["/Root/Prod/"]))
    assert not account_selected(a, AccountDiscovery(include_ous=["Root/Prod/Pay"]))
    assert account_selected(a, AccountDiscovery(include_ous=["ou-ab12-11111111"]))
    assert not account_selected(a, AccountDiscovery(include_ous=["ou-ab12-33333333"]))
    assert not account_selected(
        a, AccountDiscovery(include_ous=["ou-ab12-11111111"], exclude_tags={"env": "*"})
    )
    assert not account_selected(a, AccountDiscovery(include_tags={"env": "dev"}))


def test_account_state_wins_over_status() -> None:
    """The newer State field decides; Status is used only when State is absent."""
    assert account_is_active({"Status": "ACTIVE", "State": "ACTIVE"})
    assert not account_is_active({"Status": "ACTIVE", "State": "PENDING_CLOSURE"})
    assert not account_is_active({"Status": "SUSPENDED", "State": "CLOSED"})
    assert account_is_active({"Status": "ACTIVE"})
    assert not account_is_active({"Status": "SUSPENDED"})
    assert not account_is_active({})


async def test_accounts_joining_leaving_and_suspended(moto: str) -> None:
    """The next discover() call sees a new account, and drops a closed (SUSPENDED) one and one
    removed from the organization, with the same broker (no restart)."""
    org = seed_org(LAYOUT)
    settings = _settings(moto, trails={"discover": False})
    aws = Aws(settings.aws)
    broker = CredentialBroker(settings, aws)
    first = await discover(settings, broker, aws)
    orgs = client("organizations")

    new = orgs.create_account(AccountName="late", Email="late@example.com")
    new_id = new["CreateAccountStatus"]["AccountId"]
    orgs.close_account(AccountId=org.accounts["dev-a"])
    orgs.remove_account_from_organization(AccountId=org.accounts["prod-b"])
    states = {a["Id"]: (a["Status"], a.get("State")) for a in orgs.list_accounts()["Accounts"]}
    second = await discover(settings, broker, aws)

    assert {a.name for a in first.accounts} == {"master", "prod-a", "prod-b", "pay-a", "dev-a"}
    assert states[org.accounts["dev-a"]] == ("SUSPENDED", "SUSPENDED")
    assert {a.name for a in second.accounts} == {"master", "prod-a", "pay-a", "late"}
    assert new_id in second.regions
    assert org.accounts["dev-a"] not in second.regions
    assert second.failures == []


async def test_static_account_list(moto: str) -> None:
    """source: static reads no Organizations API; filters apply to the static entries too."""
    settings = _settings(
        moto,
        accounts={
            "source": "static",
            "static": [
                {"id": "222222222222", "name": "one", "ou_path": "Root/Prod", "tags": {"a": "1"}},
                {"id": "333333333333", "name": "two", "ou_path": "Root/Dev"},
            ],
            "exclude_ous": ["Root/Dev"],
        },
    )

    inv = await _discover(settings)

    assert [(a.id, a.name, a.ou_path) for a in inv.accounts] == [
        ("222222222222", "one", "Root/Prod")
    ]
    assert inv.organization_id is None
    assert inv.regions == {"222222222222": REGIONS}


# --------------------------------------------------------------------------- regions


async def test_regions_enabled_only_include_exclude(moto: str) -> None:
    """Only enabled regions (not 'not-opted-in') of the partition; include narrows, exclude
    removes."""
    described = client("ec2").describe_regions()["Regions"]
    not_opted = {r["RegionName"] for r in described if r["OptInStatus"] == "not-opted-in"}
    assert not_opted  # moto lists opt-in regions that are not enabled

    every = select_regions(described, [], [], "us-east-1")
    assert "us-east-1" in every
    assert "eu-west-1" in every
    assert not (set(every) & not_opted)
    assert all(not r.startswith(("cn-", "us-gov-")) for r in every)
    assert select_regions(described, ["us-east-1", "ap-east-1"], [], "us-east-1") == ["us-east-1"]
    assert "us-west-2" not in select_regions(described, [], ["us-west-2"], "us-east-1")

    seed_org({"Root/Prod": [("prod-a", {})]})
    settings = make_settings(
        moto,
        discovery={
            "regions": {"exclude": ["us-west-2", "eu-west-1"]},
            "trails": {"discover": False},
        },
    )
    inv = await _discover(settings)

    expected = sorted(set(every) - {"us-west-2", "eu-west-1"})
    assert all(regions == expected for regions in inv.regions.values())
    assert len(inv.regions) == 2


# --------------------------------------------------------------------------- trails and sources


async def test_shadow_copies_and_foreign_org_trails_ignored(moto: str) -> None:
    """A multi-region trail is found once (in its home region) and its shadow copy in another
    region is ignored; an organization trail seen from a member account is not the member's."""
    org = seed_org({"Root/Prod": [("prod-a", {})]})
    member = org.accounts["prod-a"]
    arn = make_trail(member, "us-east-1", "everywhere", "prod-a-trail", multi_region=True)

    # what describe_trails shows with shadow copies: the us-east-1 trail, seen from eu-west-1
    seen = client("cloudtrail", member, "eu-west-1").describe_trails(includeShadowTrails=True)
    shadow_list = seen["trailList"]
    assert [t["TrailARN"] for t in shadow_list] == [arn]
    assert own_trails(member, "eu-west-1", shadow_list) == []
    org_trail_seen_by_member = {
        "Name": "org",
        "TrailARN": f"arn:aws:cloudtrail:eu-west-1:{MGMT}:trail/org",
        "HomeRegion": "eu-west-1",
        "S3BucketName": "org-bucket",
        "IsOrganizationTrail": True,
        "IsMultiRegionTrail": True,
    }
    assert own_trails(member, "eu-west-1", [org_trail_seen_by_member]) == []

    inv = await _discover(_settings(moto, accounts={"include_ids": [member]}))

    assert inv.trails == [
        Trail(
            arn=arn,
            name="everywhere",
            owner_account_id=member,
            home_region="us-east-1",
            bucket="prod-a-trail",
            key_prefix="",
            is_organization=False,
            is_multi_region=True,
        )
    ]
    assert [s.source_id for s in inv.sources] == [
        f"prod-a-trail/AWSLogs/{member}/CloudTrail/eu-west-1/",
        f"prod-a-trail/AWSLogs/{member}/CloudTrail/us-east-1/",
    ]
    assert {s.reader_account_id for s in inv.sources} == {member}
    assert {s.trail_arn for s in inv.sources} == {arn}


async def test_org_trail_and_account_trail_overlap_give_both_sources(moto: str) -> None:
    """The organization trail yields one prefix per account × region (with the org id) read by
    the log-archive account; an overlapping account trail adds its own prefixes; a
    single-region trail covers only its home region; the same prefix reached twice is one
    source."""
    org = seed_org(LAYOUT)
    prod_a, dev_a = org.accounts["prod-a"], org.accounts["dev-a"]
    org_arn = make_trail(
        MGMT,
        "us-east-1",
        "org-trail",
        "org-logs",
        prefix="org/",
        multi_region=True,
        organization=True,
    )
    acct_arn = make_trail(prod_a, "us-east-1", "own", "prod-a-logs", multi_region=True)
    single = make_trail(dev_a, "eu-west-1", "single", "dev-logs", prefix="ct")
    # a second trail of dev-a writing into the same bucket and prefix
    make_trail(dev_a, "eu-west-1", "single-twin", "dev-logs", prefix="ct/")
    archive = org.accounts["prod-b"]
    settings = _settings(moto, trails={"organization_trail_reader_account_id": archive})

    inv = await _discover(settings)

    o = org.org_id
    by_id = {s.source_id: s for s in inv.sources}
    every = {a.id for a in inv.accounts}
    org_ids = {
        f"org-logs/org/AWSLogs/{o}/{acct}/CloudTrail/{region}/"
        for acct in every
        for region in REGIONS
    }
    own_ids = {f"prod-a-logs/AWSLogs/{prod_a}/CloudTrail/{r}/" for r in REGIONS}
    dev_ids = {f"dev-logs/ct/AWSLogs/{dev_a}/CloudTrail/eu-west-1/"}
    assert set(by_id) == org_ids | own_ids | dev_ids
    assert {by_id[i].reader_account_id for i in org_ids} == {archive}
    assert {by_id[i].trail_arn for i in org_ids} == {org_arn}
    assert {by_id[i].reader_account_id for i in own_ids} == {prod_a}
    assert {by_id[i].trail_arn for i in own_ids} == {acct_arn}
    assert by_id[next(iter(dev_ids))].trail_arn == single  # first by ARN wins
    assert len(inv.trails) == 4
    assert inv.failures == []


async def test_static_sources_and_bucket_readers(moto: str) -> None:
    """Static sources cover every account × region; bucket_readers overrides the reader;
    without describe_trails only the static sources remain."""
    org = seed_org({"Root/Prod": [("prod-a", {})]})
    prod_a = org.accounts["prod-a"]
    make_trail(prod_a, "us-east-1", "own", "prod-a-logs", multi_region=True)
    settings = _settings(
        moto,
        regions={"include": ["us-east-1"]},
        trails={
            "discover": False,
            "static_sources": [
                {"bucket": "central-ct", "prefix": "p", "organization_id": "o-abcdefghij"},
                {"bucket": "other", "reader_account_id": "999999999999"},
            ],
            "bucket_readers": {"central-ct": "888888888888"},
        },
    )

    inv = await _discover(settings)

    assert inv.trails == []
    assert {(s.source_id, s.reader_account_id) for s in inv.sources} == {
        (f"central-ct/p/AWSLogs/o-abcdefghij/{a}/CloudTrail/us-east-1/", "888888888888")
        for a in (MGMT, prod_a)
    } | {(f"other/AWSLogs/{a}/CloudTrail/us-east-1/", "999999999999") for a in (MGMT, prod_a)}


def test_build_sources_unknown_regions_fall_back_for_org_trail() -> None:
    """An account whose own role failed (no regions) is still covered by the organization
    trail over the fallback regions, but gets nothing from account trails."""
    settings = Settings.model_validate({"archive": {"bucket": "central"}})
    org_trail = Trail(
        "arn:aws:cloudtrail:us-east-1:111111111111:trail/o",
        "o",
        "111111111111",
        "us-east-1",
        "b",
        "",
        True,
        True,
    )

    sources = build_sources(
        ["111111111111", "222222222222"],
        {"111111111111": ["us-east-1"]},
        [org_trail],
        settings,
        organization_id="o-abcdefghij",
        fallback_regions=["us-east-1"],
    )

    assert [(s.account_id, s.region) for s in sources] == [
        ("111111111111", "us-east-1"),
        ("222222222222", "us-east-1"),
    ]
    assert build_sources(["1"], {}, [org_trail], settings, organization_id=None) == []


# --------------------------------------------------------------------------- failures


async def test_access_denied_in_one_account_is_isolated(moto: str, monkeypatch: Any) -> None:
    """With moto evaluating IAM policies: the hub may not assume one account's role, and another
    account's role may not call DescribeRegions. Both become AccountFailures with their codes;
    every other account is fully discovered; the denied account is still covered by the
    organization trail (read by the trail owner, not by the denied role)."""
    org = seed_org({"Root/Prod": [("good-1", {}), ("good-2", {}), ("denied", {}), ("no-ec2", {})]})
    a = org.accounts
    for name in ("good-1", "good-2"):
        make_trail(a[name], "us-east-1", f"{name}-trail", f"{name}-logs", multi_region=True)
    org_arn = make_trail(
        MGMT, "us-east-1", "org-trail", "org-logs", multi_region=True, organization=True
    )
    reader = ["ec2:DescribeRegions", "cloudtrail:DescribeTrails"]
    for name in ("good-1", "good-2", "denied"):
        put_role(a[name], "OrganizationAccountAccessRole", reader)
    put_role(a["no-ec2"], "OrganizationAccountAccessRole", ["cloudtrail:DescribeTrails"])
    allowed = [
        f"arn:aws:iam::{a[n]}:role/OrganizationAccountAccessRole"
        for n in ("good-1", "good-2", "no-ec2")
    ]
    key_id, secret = hub_user(
        [
            {"Effect": "Allow", "Action": "sts:AssumeRole", "Resource": allowed},
            {"Effect": "Allow", "Action": "sts:GetCallerIdentity", "Resource": "*"},
            {
                "Effect": "Allow",
                "Action": [
                    "organizations:Describe*",
                    "organizations:List*",
                    "ec2:DescribeRegions",
                    "cloudtrail:DescribeTrails",
                ],
                "Resource": "*",
            },
        ]
    )
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    monkeypatch.delenv("AWS_SESSION_TOKEN")
    settings = _settings(moto, regions={"include": ["us-east-1"]})

    with iam_enforced():
        inv = await _discover(settings)

    failures = {f.account_id: f for f in inv.failures}
    assert set(failures) == {a["denied"], a["no-ec2"]}
    denied = failures[a["denied"]]
    assert denied.stage == "assume_role"
    assert denied.code == "AccessDenied"
    assert "sts:AssumeRole" in denied.reason
    assert failures[a["no-ec2"]].stage == "describe_regions"
    assert failures[a["no-ec2"]].code == "AccessDenied"
    assert {x.name for x in inv.accounts} == {"master", "good-1", "good-2", "denied", "no-ec2"}
    assert set(inv.regions) == {MGMT, a["good-1"], a["good-2"]}
    assert {t.name for t in inv.trails} == {"good-1-trail", "good-2-trail", "org-trail"}
    own = {s.source_id for s in inv.sources if s.trail_arn != org_arn}
    assert own == {f"{n}-logs/AWSLogs/{a[n]}/CloudTrail/us-east-1/" for n in ("good-1", "good-2")}
    org_covered = {s.account_id for s in inv.sources if s.trail_arn == org_arn}
    assert org_covered == {MGMT, *a.values()}


async def test_describe_trails_denied_is_per_region(moto: str, monkeypatch: Any) -> None:
    """A role that may list regions but not describe trails: one failure per region, the
    account's regions are kept (organization trails still cover it) and the other account is
    untouched."""
    org = seed_org({"Root/Prod": [("blind", {}), ("fine", {})]})
    blind, fine = org.accounts["blind"], org.accounts["fine"]
    make_trail(blind, "us-east-1", "hidden", "blind-logs")
    make_trail(fine, "eu-west-1", "seen", "fine-logs")
    put_role(blind, "OrganizationAccountAccessRole", ["ec2:DescribeRegions"])
    put_role(fine, "OrganizationAccountAccessRole", ["ec2:Describe*", "cloudtrail:Describe*"])
    key_id, secret = hub_user([{"Effect": "Allow", "Action": "*", "Resource": "*"}])
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    monkeypatch.delenv("AWS_SESSION_TOKEN")
    settings = _settings(moto, accounts={"include_ids": [blind, fine]})

    with iam_enforced():
        inv = await _discover(settings)

    assert [(f.account_id, f.stage, f.region) for f in inv.failures] == [
        (blind, "describe_trails", "eu-west-1"),
        (blind, "describe_trails", "us-east-1"),
    ]
    # moto answers this JSON-protocol denial without an error code, so botocore reports the
    # HTTP status; AWS itself says AccessDeniedException
    assert {f.code for f in inv.failures} <= {"AccessDeniedException", "403"}
    assert inv.regions == {blind: REGIONS, fine: REGIONS}
    assert [t.name for t in inv.trails] == ["seen"]


@pytest.mark.parametrize("limit", [1, 3])
async def test_max_concurrency_bounds_aws_calls(moto: str, limit: int) -> None:
    """No more than discovery.max_concurrency AWS calls are in flight at once (every account is
    read through the hooked base session here, so every call is seen)."""
    org = seed_org(LAYOUT)
    settings = _settings(moto, max_concurrency=limit)
    settings = settings.model_copy(
        update={
            "credentials": settings.credentials.model_copy(
                update={"hub_account_ids": list(org.accounts.values())}
            )
        }
    )
    aws = Aws(settings.aws)
    broker = CredentialBroker(settings, aws)
    inflight = {"now": 0, "peak": 0, "calls": 0}

    def start(**_: Any) -> None:
        inflight["now"] += 1
        inflight["calls"] += 1
        inflight["peak"] = max(inflight["peak"], inflight["now"])

    def end(**_: Any) -> None:
        inflight["now"] -= 1

    calls = {
        "ec2": ["DescribeRegions"],
        "cloudtrail": ["DescribeTrails"],
        "organizations": ["ListParents", "DescribeOrganizationalUnit", "ListTagsForResource"],
    }
    for svc, names in calls.items():
        for name in names:
            broker.base_session().events.register(f"before-send.{svc}.{name}", start)
            broker.base_session().events.register(f"after-call.{svc}.{name}", end)

    inv = await discover(settings, broker, aws)

    assert inv.failures == []
    # parents, tags, regions per account; trails per account × region
    assert inflight["calls"] >= 5 * 3 + 5 * 2
    assert inflight["now"] == 0
    assert inflight["peak"] == limit


# --------------------------------------------------------------------------- CLI


def test_cli_discover_text_and_json(moto: str, tmp_path: Any, capsys: Any) -> None:
    """`ctagg discover CONFIG [--json]` prints accounts (id, name, OU path), regions, trails
    and sources; exit 0 when no account failed."""
    import json

    from aggregator.cli import main

    org = seed_org({"Root/Prod": [("prod-a", {"env": "prod"})]})
    prod_a = org.accounts["prod-a"]
    arn = make_trail(prod_a, "us-east-1", "own", "prod-a-logs", prefix="ct")
    config = tmp_path / "ctagg.yaml"
    config.write_text(
        f"aws: {{endpoint_url: '{moto}', max_attempts: 2}}\n"
        "discovery:\n  regions: {include: [us-east-1]}\n"
        "archive: {bucket: central-archive}\n"
    )

    assert main(["--log-level", "ERROR", "discover", str(config)]) == 0
    text = capsys.readouterr().out
    assert f"{prod_a}  prod-a  Root/Prod" in text
    assert "regions: us-east-1" in text
    assert arn in text
    assert f"s3://prod-a-logs/ct/AWSLogs/{prod_a}/CloudTrail/us-east-1/  reader={prod_a}" in text

    assert main(["--log-level", "ERROR", "discover", str(config), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["organization_id"] == org.org_id
    assert {a["id"]: a["ou_path"] for a in doc["accounts"]} == {MGMT: "Root", prod_a: "Root/Prod"}
    assert {a["id"]: a["regions"] for a in doc["accounts"]} == {
        MGMT: ["us-east-1"],
        prod_a: ["us-east-1"],
    }
    assert [t["arn"] for t in doc["trails"]] == [arn]
    assert [s["source_id"] for s in doc["sources"]] == [
        f"prod-a-logs/ct/AWSLogs/{prod_a}/CloudTrail/us-east-1/"
    ]
    assert doc["failures"] == []


def test_cli_discover_reports_failures_with_exit_3(moto: str, tmp_path: Any, capsys: Any) -> None:
    """Without an organization (and no static list), discovery cannot start: exit 3 (access)
    and a one-line reason with what to do on stderr, nothing on stdout."""
    from aggregator.cli import main

    config = tmp_path / "ctagg.yaml"
    config.write_text(
        f"aws: {{endpoint_url: '{moto}', max_attempts: 1}}\narchive: {{bucket: b-1}}\n"
    )

    assert main(["--log-level", "ERROR", "discover", str(config)]) == 3
    out = capsys.readouterr()
    assert out.out == ""
    assert len(out.err.strip().splitlines()) == 1
    assert "discovery failed: " in out.err
    assert "AWSOrganizationsNotInUseException" in out.err
    assert "discovery.accounts.source: static" in out.err


def test_ou_rules_must_be_ids_or_paths_from_root() -> None:
    """An OU rule that can never match (a path not starting at Root) is a config error naming
    its path; ids and Root paths are accepted."""
    from aggregator.config import ConfigError, parse_settings

    ok = {
        "archive": {"bucket": "central"},
        "discovery": {
            "accounts": {
                "include_ous": ["Root", "Root/Prod/Payments", "/Root/Dev/", "ou-ab12-abcdefgh"],
                "exclude_ous": ["r-ab12"],
            }
        },
    }
    parse_settings(ok, env={})
    bad = {
        "archive": {"bucket": "central"},
        "discovery": {"accounts": {"include_ous": ["Prod"], "exclude_ous": ["Root//x"]}},
    }
    with pytest.raises(ConfigError) as info:
        parse_settings(bad, env={})
    assert len(info.value.problems) == 2
    assert info.value.problems[0].startswith("discovery.accounts.include_ous: ")
    assert "['Prod']" in info.value.problems[0]
    assert info.value.problems[1].startswith("discovery.accounts.exclude_ous: ")


# --------------------------------------------------------------------------- coverage


async def test_filters_that_drop_the_org_trail_owner_warn_and_name_the_setting(
    moto: str,
) -> None:
    """include_tags selects the tagged members; the management account (owner of the
    organization trail) is left out, so the trail disappears for every account: discovery
    says so, naming the trail, why its owner is out, and the setting that keeps it."""
    org = seed_org(LAYOUT)
    org_arn = make_trail(
        MGMT, "us-east-1", "org-trail", "org-logs", multi_region=True, organization=True
    )
    settings = _settings(moto, accounts={"include_tags": {"env": "prod"}})

    inv = await _discover(settings)

    assert MGMT not in {a.id for a in inv.accounts}
    assert not [s for s in inv.sources if s.trail_arn == org_arn]
    (warning,) = inv.warnings
    assert f"organization trail {org_arn} is not read for any account" in warning
    assert f"the management account {MGMT}" in warning
    assert "matches none of discovery.accounts.include_tags" in warning
    assert f'discovery.trails.organization_trail_owner_ids: ["{MGMT}"]' in warning
    assert org.accounts["prod-a"]  # the members are still discovered


async def test_organization_trail_owner_ids_keeps_the_trail_but_not_the_owner(moto: str) -> None:
    org = seed_org(LAYOUT)
    org_arn = make_trail(
        MGMT, "us-east-1", "org-trail", "org-logs", multi_region=True, organization=True
    )
    settings = _settings(
        moto,
        accounts={"include_tags": {"env": "prod"}},
        trails={"organization_trail_owner_ids": [MGMT]},
    )

    inv = await _discover(settings)

    assert inv.warnings == []
    covered = {s.account_id for s in inv.sources if s.trail_arn == org_arn}
    prod = {org.accounts[n] for n in ("prod-a", "prod-b", "pay-a")}
    assert covered == prod  # the members the filters chose, not the management account
    assert MGMT not in {a.id for a in inv.accounts}


async def test_no_warning_when_the_owner_is_in_or_has_no_org_trail(moto: str) -> None:
    seed_org(LAYOUT)
    make_trail(MGMT, "us-east-1", "own", "mgmt-logs")  # an account trail only
    left_out = _settings(moto, accounts={"exclude_ids": [MGMT]})
    assert (await _discover(left_out)).warnings == []
    make_trail(MGMT, "us-east-1", "org-trail", "org-logs", organization=True, multi_region=True)
    assert (await _discover(_settings(moto))).warnings == []
    (warning,) = (await _discover(left_out)).warnings
    assert "left out (discovery.accounts.exclude_ids)" in warning


def test_cli_discover_and_doctor_print_the_warning(moto: str, tmp_path: Any, capsys: Any) -> None:
    from aggregator.cli import main

    seed_org(LAYOUT)
    make_trail(MGMT, "us-east-1", "org-trail", "org-logs", organization=True, multi_region=True)
    client("s3").create_bucket(Bucket="central-archive")
    config = tmp_path / "ctagg.yaml"
    config.write_text(
        f"aws: {{endpoint_url: '{moto}', max_attempts: 1}}\n"
        "archive: {bucket: central-archive}\n"
        "state: {path: " + str(tmp_path / "s.db") + "}\n"
        "discovery: {regions: {include: [us-east-1]}, accounts: {include_tags: {env: dev}}}\n"
    )

    main(["--log-level", "ERROR", "discover", str(config)])
    out = capsys.readouterr().out
    main(["--log-level", "ERROR", "doctor", str(config)])
    doctor_out = capsys.readouterr().out

    assert "warning: organization trail arn:aws:cloudtrail:us-east-1:" in out
    assert "organization_trail_owner_ids" in out
    assert "warning: organization trail arn:aws:cloudtrail:us-east-1:" in doctor_out
